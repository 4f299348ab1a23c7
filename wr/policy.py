"""How many people a room lets in each tick: the admission policies.

One :class:`Policy` per room lives with the ticker (in the supervisor, or
the only process). It keeps a short history of the room's counters and
turns the room's settings into a number of admissions per tick:

- **rate**: ``rate_per_minute``, carried in fractions between ticks;
- **no-show compensation** (``max_overadmit`` > 1): when some people reach
  the front and never claim their turn, the rate is raised by the inverse of
  the recent claim ratio, at most ``max_overadmit`` times, so the protected
  site sees the configured rate of people who actually arrive;
- **capacity** (``max_active``): no more people inside at once than that,
  counting claimed admissions still within their session (minus those who
  left) and recent admissions not claimed yet (they may still come). Which
  recent admissions are unclaimed is read from the room's claim bits: the
  claim counter alone cannot tell a claim of a recent admission from a late
  claim of an earlier one;
- **passthrough**: while admissions over the last minute are under
  ``rate_per_minute`` (and capacity allows), everyone waiting is let in at
  once; the line only forms when a surge uses that up;
- **paused**, **closed** and a room not yet **opened** admit nobody.

Nothing here reads a clock or does I/O: the time is passed in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from wr.room import CLAIM_WINDOW, Room

__all__ = ["CLAIM_GRACE_S", "NOSHOW_WINDOW_S", "PASSTHROUGH_WINDOW_S", "Policy"]

# Admissions this recent and not yet claimed may still be claimed: capacity
# keeps room for them.
CLAIM_GRACE_S = 60.0
# The claim ratio behind no-show compensation is measured over this window,
# once it holds at least NOSHOW_MIN_ADMISSIONS admissions.
NOSHOW_WINDOW_S = 300.0
NOSHOW_MIN_ADMISSIONS = 20
# Passthrough lets people straight in while the last minute's admissions are
# under the per-minute rate.
PASSTHROUGH_WINDOW_S = 60.0
# History is kept for the longest of the windows above.
HISTORY_S = max(CLAIM_GRACE_S, NOSHOW_WINDOW_S, PASSTHROUGH_WINDOW_S)


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    admitted: int
    claimed: int
    serving: int


class Policy:
    def __init__(self, room: Room, session_s: float) -> None:
        self.room = room
        self.session_s = session_s
        self._history: deque[_Sample] = deque()

    def admissions(self, dt: float, now: float) -> int:
        """People to let in for the ``dt`` seconds that end at ``now``."""
        room = self.room
        self._record(now)
        room.clear_next_bucket(now)
        config = room.config
        if config.closed or config.paused or not room.opened:
            room.reset_credit()
            return 0

        limit = None
        if config.max_active is not None:
            limit = self.free_capacity(now)
        if config.passthrough:
            budget = config.rate_per_minute - self._since(now, PASSTHROUGH_WINDOW_S)[0]
            allowed = int(budget) if limit is None else min(int(budget), limit)
            room.reset_credit()
            return max(0, min(room.waiting, allowed))
        return room.admissions(dt, self.compensation(now), limit)

    def observe(self, now: float) -> None:
        """Sample the room's counters without admitting anyone.

        Hosts that do not lead a shared room (wr.redisbackend) keep the
        history warm this way, so the one that takes over decides as the
        old leader would have.
        """
        self._record(now)

    def compensation(self, now: float) -> float:
        """How much to raise the rate to make up for no-shows (1.0: none)."""
        bound = self.room.config.max_overadmit
        if bound <= 1.0:
            return 1.0
        admitted, claimed = self._since(now, NOSHOW_WINDOW_S)
        if admitted < NOSHOW_MIN_ADMISSIONS:
            return 1.0
        if claimed <= 0:
            return bound
        return max(1.0, min(bound, admitted / claimed))

    def admit_rate(self) -> float:
        """Admissions per second aimed at now (0 when nobody is let in)."""
        config = self.room.config
        if config.closed or config.paused or not self.room.opened:
            return 0.0
        if not self._history:
            return self.room.rate_per_s
        return self.room.rate_per_s * self.compensation(self._history[-1].at)

    def noshow_ratio(self) -> float:
        """Share of the last window's admissions that nobody claimed."""
        if not self._history:
            return 0.0
        admitted, claimed = self._since(self._history[-1].at, NOSHOW_WINDOW_S)
        if admitted <= 0:
            return 0.0
        return max(0.0, 1.0 - claimed / admitted)

    def free_capacity(self, now: float) -> int:
        """Places left inside: ``max_active`` minus inside and expected."""
        room = self.room
        if room.config.max_active is None:
            return room.waiting
        latest, oldest = self._history[-1], self._oldest(now, CLAIM_GRACE_S)
        admitted = latest.admitted - oldest.admitted
        claimed = _claimed(room, oldest.serving + 1, latest.serving + 1)
        expected = max(0, admitted - claimed)
        return room.config.max_active - room.active(now, self.session_s) - expected

    def _record(self, now: float) -> None:
        history = self._history
        room = self.room
        history.append(_Sample(now, room.admitted, room.claimed, room.serving))
        while len(history) > 1 and history[1].at <= now - HISTORY_S:
            history.popleft()

    def _since(self, now: float, window_s: float) -> tuple[int, int]:
        """Admissions and claims over the last ``window_s`` seconds."""
        latest, oldest = self._history[-1], self._oldest(now, window_s)
        return latest.admitted - oldest.admitted, latest.claimed - oldest.claimed

    def _oldest(self, now: float, window_s: float) -> _Sample:
        """The first sample of the last ``window_s`` seconds."""
        oldest = self._history[-1]
        for sample in reversed(self._history):
            if sample.at < now - window_s:
                break
            oldest = sample
        return oldest


def _claimed(room: Room, first: int, end: int) -> int:
    """How many of the ranks ``[first, end)`` were claimed.

    Reads :class:`Room`'s ring of claim bits (bit ``rank % CLAIM_WINDOW``,
    low bit first in each byte). Ranks more than a ring behind ``end`` have
    lost their bits and count as unclaimed.
    """
    ring = room._claims
    first = max(first, end - CLAIM_WINDOW)
    count = 0
    while first < end:
        start = first % CLAIM_WINDOW
        stop = min(CLAIM_WINDOW, start + end - first)
        bits = int.from_bytes(ring[start >> 3 : (stop + 7) >> 3], "little")
        count += ((bits >> (start & 7)) & ((1 << (stop - start)) - 1)).bit_count()
        first += stop - start
    return count
