"""A room's queue as a handful of counters, and the ticker that moves it.

Positions start at 1 and are handed out in order (``next_position``). The
ticker raises ``serving``, the highest position allowed in, at the room's
admission rate; a person whose position is at most ``serving`` may claim
their turn, which is counted once in ``claimed``. Nothing here does I/O or
reads a clock: callers pass the time, so every rule is tested exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from wr.config import RoomConfig
from wr.draw import Draw
from wr.shm import INSIDE_BUCKET_S, INSIDE_BUCKETS, RoomSlot

__all__ = [
    "CLAIM_WINDOW",
    "MAX_TICK_GAP_S",
    "TICK_INTERVAL_S",
    "UNLIMITED",
    "Room",
    "Ticker",
    "next_poll_s",
]

# A reservation without limit, for rooms whose positions are not persisted.
UNLIMITED = 1 << 62

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
    """The counters and admission arithmetic of one room.

    The counters live in a :class:`wr.shm.RoomSlot`, shared by every worker
    of the host; without one, the room gets a private slot. Workers call
    :meth:`join` and :meth:`claim`; only the ticker moves ``serving``.
    """

    def __init__(self, config: RoomConfig, slot: RoomSlot | None = None) -> None:
        self.config = config
        self.name = config.name
        if slot is None:
            slot = RoomSlot.private(CLAIM_WINDOW // 8)
            slot.counters.next_position = 1
            slot.counters.reserved = UNLIMITED
            slot.counters.opened = 1
        self._slot = slot
        self._counters = slot.counters
        self._lock = slot.lock
        self._claims = slot.claims
        self._leaves = slot.leaves
        self._inside = slot.inside
        self._draw: Draw | None = None
        # Admissions earned by the rate but not yet whole (carried between
        # ticks); only the ticker's process uses it.
        self._credit = 0.0
        self._skips: list[tuple[int, int]] = []

    @property
    def next_position(self) -> int:
        return int(self._counters.next_position)

    @property
    def serving(self) -> int:
        return int(self._counters.serving)

    @property
    def reserved(self) -> int:
        """Positions below this may be handed out (see :mod:`wr.state`)."""
        return int(self._counters.reserved)

    @reserved.setter
    def reserved(self, value: int) -> None:
        self._counters.reserved = value

    @property
    def claimed(self) -> int:
        return int(self._counters.claimed)

    @property
    def admitted(self) -> int:
        return int(self._counters.admitted)

    @property
    def rate_per_s(self) -> float:
        return self.config.rate_per_minute / 60.0

    @property
    def opened(self) -> bool:
        """False while the room gathers its pre-queue (before ``opens_at``)."""
        return bool(self._counters.opened)

    @property
    def draw(self) -> Draw | None:
        """The pre-queue's shuffle, once the room has opened with one."""
        counters = self._counters
        if not counters.opened or counters.draw_size <= 0:
            return None
        seed = bytes(counters.draw_seed)
        if self._draw is None or self._draw.seed != seed:
            self._draw = Draw(seed=seed, size=int(counters.draw_size))
        return self._draw

    def open(self, draw: Draw | None) -> None:
        """Start admitting; ``draw`` shuffles the positions handed out so far."""
        counters = self._counters
        if draw is not None:
            counters.draw_seed[:] = draw.seed
            counters.draw_size = draw.size
        counters.opened = 1

    def rank(self, position: int) -> int:
        """The place in the admission order: the drawn one for the pre-queue."""
        draw = self.draw
        return position if draw is None else draw.rank(position)

    def phase(self) -> str:
        """What a person in line is told: closed, prequeue, paused or waiting."""
        if self.config.closed:
            return "closed"
        if not self.opened:
            return "prequeue"
        if self.config.paused:
            return "paused"
        return "waiting"

    def active(self, now: float, session_s: float) -> int:
        """People inside (capacity mode): claimed within the session, not left."""
        newest = int(now) // INSIDE_BUCKET_S
        buckets = min(INSIDE_BUCKETS - 1, math.ceil(session_s / INSIDE_BUCKET_S))
        inside = self._inside
        return sum(inside[(newest - i) % INSIDE_BUCKETS] for i in range(buckets + 1))

    def clear_next_bucket(self, now: float) -> None:
        """Empty the bucket the next seconds will use (the ticker, each tick)."""
        upcoming = (int(now) // INSIDE_BUCKET_S + 1) % INSIDE_BUCKETS
        self._inside[upcoming] = 0

    @property
    def waiting(self) -> int:
        """People given a position and not yet allowed in."""
        last = self.next_position - 1
        return max(0, last - self.serving - self._skipped_before(last + 1))

    @property
    def skips(self) -> list[tuple[int, int]]:
        """Ranges ``[first, end)`` of positions nobody holds, still ahead."""
        return list(self._skips)

    def restore(
        self,
        *,
        next_position: int,
        serving: int,
        claimed: int,
        admitted: int,
        skips: Sequence[tuple[int, int]] = (),
        opened: bool = True,
        draw: Draw | None = None,
    ) -> None:
        """Set the counters from a saved state (before anyone joins)."""
        counters = self._counters
        counters.opened = 0
        if opened:
            self.open(draw)
        counters.next_position = next_position
        counters.reserved = next_position
        counters.serving = serving
        counters.claimed = claimed
        counters.admitted = admitted
        self._skips = sorted((a, b) for a, b in skips if b - 1 > serving and b > a)
        self._publish_skip()

    def skip(self, first: int, end: int) -> None:
        """Mark positions ``[first, end)`` as held by nobody (after a crash)."""
        if end > first and end - 1 > self.serving:
            self._skips = sorted([*self._skips, (first, end)])
            self._publish_skip()

    def _publish_skip(self) -> None:
        first, end = self._skips[0] if self._skips else (0, 0)
        self._counters.skip_from = first
        self._counters.skip_to = end

    def _skipped_before(self, position: int) -> int:
        """Positions between ``serving`` and ``position`` that nobody holds."""
        first = int(self._counters.skip_from)
        end = int(self._counters.skip_to)
        low = max(first, self.serving + 1)
        high = min(end, position)
        return max(0, high - low)

    def join(self) -> int | None:
        """Hand out the next position; None if the reserved range is used up."""
        counters = self._counters
        with self._lock:
            position = counters.next_position
            if position >= counters.reserved:
                return None
            counters.next_position = position + 1
        return int(position)

    def is_admitted(self, position: int) -> bool:
        return self.opened and self.rank(position) <= self.serving

    def ahead(self, position: int) -> int:
        """People still waiting in front of ``position``."""
        rank = self.rank(position)
        return max(0, rank - self.serving - 1 - self._skipped_before(rank))

    def eta_s(self, position: int) -> int | None:
        """Expected seconds until ``position`` is let in; None if never at this rate."""
        rank = self.rank(position)
        behind = rank - self.serving - self._skipped_before(rank)
        if behind <= 0:
            return 0
        rate = self.rate_per_s
        if rate <= 0:
            return None
        return math.ceil(behind / rate)

    def admissions(
        self, dt: float, factor: float = 1.0, limit: int | None = None
    ) -> int:
        """How many people ``dt`` seconds of the rate let in (not yet applied).

        ``factor`` scales the rate (no-show compensation); ``limit`` caps
        the answer (free capacity).
        """
        self._credit += self.rate_per_s * factor * dt
        whole = int(self._credit)
        cap = self.waiting if limit is None else min(self.waiting, max(0, limit))
        if whole > cap:
            # An empty line or a full site does not bank admissions for a
            # later burst.
            whole = cap
            self._credit -= int(self._credit)
        else:
            self._credit -= whole
        return whole

    def reset_credit(self) -> None:
        self._credit = 0.0

    def admit(self, count: int) -> None:
        """Raise ``serving`` by ``count`` (the ticker's process only)."""
        if count <= 0:
            return
        serving = self.serving
        target = self.serving_after(count)
        self._skips = [skip for skip in self._skips if skip[1] - 1 > target]
        self._publish_skip()
        self._forget_claims(serving + 1, target)
        self._counters.admitted += count
        self._counters.serving = target

    def serving_after(self, count: int) -> int:
        """What ``serving`` becomes once ``count`` more people are let in."""
        serving = self.serving
        target = serving + count
        # Ranges nobody holds are passed over without using admissions.
        for first, end in self._skips:
            if first > target + 1:
                break
            if end - 1 > serving:
                target += max(0, end - max(first, serving + 1))
        return target

    def advance(self, dt: float) -> int:
        """Let people in for ``dt`` seconds of the admission rate; return how many."""
        count = self.admissions(dt)
        self.admit(count)
        return count

    def claim(self, position: int, now: float = 0.0) -> bool:
        """Record that ``position`` took its turn; True the first time only."""
        if not self._set_bit(self._claims, position):
            return False
        with self._lock:
            self._counters.claimed += 1
            self._inside[int(now) // INSIDE_BUCKET_S % INSIDE_BUCKETS] += 1
        return True

    def count_inside(self, now: float) -> None:
        """Someone let in without a position (a bypass token) is inside."""
        with self._lock:
            self._inside[int(now) // INSIDE_BUCKET_S % INSIDE_BUCKETS] += 1

    def leave(
        self, position: int, admitted_at: float, now: float, session_s: float
    ) -> bool:
        """A person inside left: free their place now; True the first time only."""
        if now - admitted_at >= session_s or not self._set_bit(self._leaves, position):
            return False
        with self._lock:
            self._inside[int(admitted_at) // INSIDE_BUCKET_S % INSIDE_BUCKETS] -= 1
        return True

    def _set_bit(self, ring: memoryview, position: int) -> bool:
        # Bits are kept by admission rank, the order serving follows.
        rank = self.rank(position)
        serving = self.serving
        if not self.opened or rank > serving or rank <= serving - CLAIM_WINDOW:
            return False
        slot = rank % CLAIM_WINDOW
        byte, bit = slot >> 3, 1 << (slot & 7)
        with self._lock:
            if ring[byte] & bit:
                return False
            ring[byte] |= bit
        return True

    def _forget_claims(self, first: int, last: int) -> None:
        # Slots are reused every CLAIM_WINDOW positions: clear the ones that
        # newly admitted positions will use, before they are admitted.
        with self._lock:
            for ring in (self._claims, self._leaves):
                if last - first + 1 >= CLAIM_WINDOW:
                    ring[:] = bytes(len(ring))
                    continue
                for rank in range(first, last + 1):
                    slot = rank % CLAIM_WINDOW
                    ring[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF


class Ticker:
    """Moves every room forward by the time that passed since the last tick."""

    def __init__(
        self,
        rooms: Iterable[Room],
        now: float,
        admissions: Callable[[Room, float], int] | None = None,
    ) -> None:
        self.rooms = list(rooms)
        self.last = now
        # By default, the plain rate; the steward passes its policies.
        self._admissions = admissions or (lambda room, dt: room.admissions(dt))

    def plan(self, now: float) -> dict[Room, int]:
        """Admissions due in each room at ``now``; apply with :meth:`Room.admit`.

        Planning and applying are separate so that the supervisor can save
        the new ``serving`` before anyone is told about it.
        """
        dt = min(max(0.0, now - self.last), MAX_TICK_GAP_S)
        self.last = now
        return {room: self._admissions(room, dt) for room in self.rooms}

    def tick(self, now: float) -> float:
        """Advance all rooms to ``now``; return the seconds accounted for."""
        dt = min(max(0.0, now - self.last), MAX_TICK_GAP_S)
        for room, count in self.plan(now).items():
            room.admit(count)
        return dt
