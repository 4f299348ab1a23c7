"""A room's queue as a handful of counters, and the ticker that moves it.

Positions start at 1 and are handed out in order (``next_position``). The
ticker raises ``serving``, the highest position allowed in, at the room's
admission rate; a person whose position is at most ``serving`` may claim
their turn, which is counted once in ``claimed``. Nothing here does I/O or
reads a clock: callers pass the time, so every rule is tested exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from wr.config import RoomConfig

__all__ = [
    "CLAIM_WINDOW",
    "MAX_TICK_GAP_S",
    "TICK_INTERVAL_S",
    "Room",
    "Ticker",
    "next_poll_s",
]

# The ticker's period: short enough that a rate of a few thousand a minute
# admits people smoothly, long enough to cost nothing.
TICK_INTERVAL_S = 0.1

# If the process was suspended (SIGSTOP, a VM pause), the time that passed
# is not converted into one giant burst of admissions.
MAX_TICK_GAP_S = 1.0

# Claims are remembered in a ring of one bit per position, so a person who
# asks again is not counted twice. 2**20 positions (128 KiB per room) is
# more than three hours of admissions at 5,000 a minute; a claim for a
# position further behind ``serving`` than that is honoured but not counted.
CLAIM_WINDOW = 1 << 20

# Polling: people near the front ask every few seconds; far back, once a
# minute. Between the two, about four times over the expected wait.
NEAR_POLL_S = 3.0
FAR_POLL_S = 60.0
POLLS_PER_WAIT = 4.0
# Spread polls so that people who joined together do not poll together.
POLL_JITTER = 0.2


def next_poll_s(eta_s: int | None, rand: Callable[[], float]) -> float:
    """Seconds until the client should ask again; ``rand()`` is in [0, 1)."""
    if eta_s is None:
        base = FAR_POLL_S
    else:
        base = min(FAR_POLL_S, max(NEAR_POLL_S, eta_s / POLLS_PER_WAIT))
    return round(base * (1.0 + POLL_JITTER * (2.0 * rand() - 1.0)), 1)


class Room:
    """The counters and admission arithmetic of one room."""

    def __init__(self, config: RoomConfig) -> None:
        self.config = config
        self.name = config.name
        self.next_position = 1
        self.serving = 0
        self.claimed = 0
        self.admitted = 0
        # Admissions earned by the rate but not yet whole (carried between ticks).
        self._credit = 0.0
        self._claims = bytearray(CLAIM_WINDOW // 8)

    @property
    def rate_per_s(self) -> float:
        return self.config.rate_per_minute / 60.0

    @property
    def waiting(self) -> int:
        """People given a position and not yet allowed in."""
        return self.next_position - 1 - self.serving

    def join(self) -> int:
        """Hand out the next position."""
        position = self.next_position
        self.next_position = position + 1
        return position

    def is_admitted(self, position: int) -> bool:
        return position <= self.serving

    def ahead(self, position: int) -> int:
        """People still waiting in front of ``position``."""
        return max(0, position - self.serving - 1)

    def eta_s(self, position: int) -> int | None:
        """Expected seconds until ``position`` is let in; None if never at this rate."""
        behind = position - self.serving
        if behind <= 0:
            return 0
        rate = self.rate_per_s
        if rate <= 0:
            return None
        return math.ceil(behind / rate)

    def advance(self, dt: float) -> int:
        """Let people in for ``dt`` seconds of the admission rate; return how many."""
        self._credit += self.rate_per_s * dt
        whole = int(self._credit)
        waiting = self.waiting
        if whole > waiting:
            # An empty line does not bank admissions for a later burst.
            whole = waiting
            self._credit -= int(self._credit)
        else:
            self._credit -= whole
        if whole > 0:
            self._forget_claims(self.serving + 1, self.serving + whole)
            self.serving += whole
            self.admitted += whole
        return whole

    def claim(self, position: int) -> bool:
        """Record that ``position`` took its turn; True the first time only."""
        if position > self.serving or position <= self.serving - CLAIM_WINDOW:
            return False
        slot = position % CLAIM_WINDOW
        byte, bit = slot >> 3, 1 << (slot & 7)
        if self._claims[byte] & bit:
            return False
        self._claims[byte] |= bit
        self.claimed += 1
        return True

    def _forget_claims(self, first: int, last: int) -> None:
        # Slots are reused every CLAIM_WINDOW positions: clear the ones that
        # newly admitted positions will use.
        if last - first + 1 >= CLAIM_WINDOW:
            self._claims[:] = bytes(len(self._claims))
            return
        claims = self._claims
        for position in range(first, last + 1):
            slot = position % CLAIM_WINDOW
            claims[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF


class Ticker:
    """Moves every room forward by the time that passed since the last tick."""

    def __init__(self, rooms: Iterable[Room], now: float) -> None:
        self.rooms = list(rooms)
        self.last = now

    def tick(self, now: float) -> float:
        """Advance all rooms to ``now``; return the seconds accounted for."""
        dt = min(max(0.0, now - self.last), MAX_TICK_GAP_S)
        self.last = now
        for room in self.rooms:
            room.advance(dt)
        return dt
