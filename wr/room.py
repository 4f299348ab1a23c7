"""A room's queue as a handful of counters, and the ticker that moves it.

Positions start at 1 and are handed out in order (``next_position``). The
ticker raises ``serving``, the highest position allowed in, at the room's
admission rate; a person whose position is at most ``serving`` may claim
their turn, which is counted once in ``claimed``. Nothing here does I/O or
reads a clock: callers pass the time, so every rule is tested exactly.
"""

from __future__ import annotations

import bisect
import ctypes
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from wr.config import RoomConfig
from wr.draw import Draw, Prequeue
from wr.shm import (
    ABANDON_AFTER_S,
    BYPASS_WINDOW,
    INSIDE_BUCKET_S,
    INSIDE_BUCKETS,
    PLACE_BUCKETS,
    SEEN_UNIT_S,
    WAIT_BUCKETS_S,
    RoomSlot,
)

__all__ = [
    "CLAIM_WINDOW",
    "GONE_AFTER_S",
    "MAX_TICK_GAP_S",
    "TICK_INTERVAL_S",
    "UNLIMITED",
    "DropOff",
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

# Claim times are kept as bucket numbers modulo this (see wr.shm), which
# tells them apart for 2**16 - 1 buckets: more than a week.
CLAIMED_AT_MODULUS = (1 << 16) - 1

# Polling: people near the front ask every few seconds; far back, once a
# minute. Between the two, about four times over the expected wait.
NEAR_POLL_S = 3.0
FAR_POLL_S = 60.0
POLLS_PER_WAIT = 4.0
# Spread polls so that people who joined together do not poll together.
POLL_JITTER = 0.2

# Someone whose turn comes after this long without a check-in had gone:
# three of the longest poll intervals the server asks for.
GONE_AFTER_S = 3 * FAR_POLL_S * (1 + POLL_JITTER)
# The ticker settles at most this many positions a tick (a passthrough
# burst); the rest count as untracked.
SETTLE_MAX = 50_000
_UNITS = 1 << 16


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
        self._claimed_at = slot.claimed_at
        self._bypass_leaves = slot.bypass_leaves
        self._joined_units = slot.joined_units
        self._seen_units = slot.seen_units
        self._seen_laps = slot.seen_laps
        self._seen_window = slot.seen_window
        self._prequeue: Prequeue | None = None
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
        prequeue = self.prequeue
        return None if prequeue is None else prequeue.draw

    @property
    def prequeue(self) -> Prequeue | None:
        """The drawn pre-queue, once the room has opened with one."""
        counters = self._counters
        if not counters.opened or counters.draw_size <= 0:
            return None
        seed = bytes(counters.draw_seed)
        cached = self._prequeue
        if cached is None or cached.draw.seed != seed:
            gaps = counters.draw_gaps
            cached = self._prequeue = Prequeue(
                Draw(seed=seed, size=int(counters.draw_size)),
                tuple(
                    (int(gaps[2 * i]), int(gaps[2 * i + 1]))
                    for i in range(counters.draw_gap_count)
                ),
            )
        return cached

    def open(self, prequeue: Prequeue | None) -> None:
        """Start admitting; ``prequeue`` shuffles the positions handed out so far.

        The gaps of the pre-queue stop being skips in position order: after
        the shuffle they are one range of ranks behind the drawn people.
        """
        if prequeue is not None:
            self._set_draw(prequeue)
            self._skips = prequeue.skips_after_opening(self._skips)
            self._publish_skip()
        self._counters.opened = 1

    def _set_draw(self, prequeue: Prequeue | None) -> None:
        counters = self._counters
        if prequeue is None:
            counters.draw_size = 0
            return
        counters.draw_seed[:] = prequeue.draw.seed
        counters.draw_size = prequeue.draw.size
        counters.draw_gap_count = len(prequeue.gaps)
        for i, (first, stop) in enumerate(prequeue.gaps):
            counters.draw_gaps[2 * i] = first
            counters.draw_gaps[2 * i + 1] = stop

    def rank(self, position: int) -> int:
        """The place in the admission order: the drawn one for the pre-queue."""
        prequeue = self.prequeue
        return position if prequeue is None else prequeue.rank(position)

    def phase(self) -> str:
        """What a person in line is told: closed, prequeue, paused or waiting."""
        if self.config.closed:
            return "closed"
        if not self.opened:
            return "prequeue"
        if self.config.paused:
            return "paused"
        return "waiting"

    def state(self) -> str:
        """The room's state as people in line see it: a phase, or ``full``."""
        phase = self.phase()
        max_queue = self.config.max_queue
        if phase == "waiting" and max_queue is not None and self.waiting >= max_queue:
            return "full"
        return phase

    def active(self, now: float, session_s: float) -> int:
        """People inside (capacity mode): claimed within the session, not left."""
        local = sum(self.inside_buckets(now, session_s).values())
        return local + self.others_inside

    @property
    def others_inside(self) -> int:
        """People inside counted by the cluster's other hosts (the redis backend).

        The steward sets it from the store each step, for the leader's
        capacity decision and every worker's ``/metrics``.
        """
        return int(self._counters.others_inside)

    @others_inside.setter
    def others_inside(self, count: int) -> None:
        self._counters.others_inside = count

    def inside_buckets(self, now: float, session_s: float) -> dict[int, int]:
        """This host's count inside per bucket number, over the session."""
        newest = int(now) // INSIDE_BUCKET_S
        buckets = min(INSIDE_BUCKETS - 1, math.ceil(session_s / INSIDE_BUCKET_S))
        inside = self._inside
        return {
            newest - i: int(inside[(newest - i) % INSIDE_BUCKETS])
            for i in range(buckets + 1)
        }

    def clear_next_bucket(self, now: float) -> None:
        """Empty the bucket the next seconds will use (the ticker, each tick)."""
        upcoming = (int(now) // INSIDE_BUCKET_S + 1) % INSIDE_BUCKETS
        self._inside[upcoming] = 0

    @property
    def waiting(self) -> int:
        """People given a position and not yet allowed in."""
        # With the redis backend, other hosts hand out positions too.
        last = max(self.next_position, int(self._counters.cluster_next)) - 1
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
        prequeue: Prequeue | None = None,
        reset_at: int = 0,
        reset_position: int = 0,
    ) -> None:
        """Set the counters from a saved state (before anyone joins)."""
        counters = self._counters
        counters.opened = 0
        counters.reset_at = reset_at
        counters.reset_position = reset_position
        counters.next_position = next_position
        counters.reserved = next_position
        counters.serving = serving
        counters.claimed = claimed
        counters.admitted = admitted
        self._skips = sorted((a, b) for a, b in skips if b - 1 > serving and b > a)
        self._publish_skip()
        # Saved skips are already in admission order: only the draw is set.
        self._set_draw(prequeue)
        counters.opened = int(opened)

    @property
    def reset_at(self) -> int:
        """Tokens issued before this wall-clock second are void (0: never reset)."""
        return int(self._counters.reset_at)

    @property
    def reset_position(self) -> int:
        """The first position of the line since the last reset (0: never reset)."""
        return int(self._counters.reset_position)

    def reset(self, now: float) -> tuple[int, int]:
        """Start a fresh line: every token issued until now stops working.

        Any process may call it. Nothing per person is touched: the room
        records the second from which tokens count and the position the new
        line starts at; the ticker (:meth:`pass_over_reset`) then passes over
        the old line without spending admissions. ``next_position`` never
        goes back, so no position is handed out twice. Tokens carry whole
        seconds, so the void second is the next one: tokens issued from now
        on are dated no earlier (:meth:`issue_time`).
        """
        counters = self._counters
        with self._lock:
            counters.reset_at = max(int(counters.reset_at), int(now) + 1)
            counters.reset_position = int(counters.next_position)
            return int(counters.reset_at), int(counters.reset_position)

    def issue_time(self, now: float) -> float:
        """The time to date a new token with: never before the last reset."""
        return max(now, float(self._counters.reset_at))

    def pass_over_reset(self) -> bool:
        """Skip the old line up to the last reset (the ticker's process only).

        True if the skips changed. The range replaces any skip inside it,
        so no position is passed over twice.
        """
        end = self.rank(self.reset_position) if self.reset_position else 0
        first = self.serving + 1
        if end <= first:
            return False
        skips = [(first, end)] + [(max(a, end), b) for a, b in self._skips if b > end]
        if skips == self._skips:
            return False
        self._skips = skips
        self._publish_skip()
        return True

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
                if counters.block_to <= counters.block_from:
                    counters.joins_refused += 1
                    return None
                # The redis backend's next block, fetched ahead of need.
                position = counters.block_from
                counters.reserved = counters.block_to
                counters.block_from = counters.block_to = 0
            counters.next_position = position + 1
            counters.joins += 1
        return int(position)

    @property
    def stale(self) -> bool:
        """True while the shared store is out of reach: ``serving`` may lag."""
        return bool(self._counters.stale)

    @property
    def joins_held(self) -> bool:
        """True while joins are refused because the shared store is out of reach."""
        return bool(self._counters.joins_held)

    def offer_block(self, first: int, end: int) -> bool:
        """Queue ``[first, end)`` as the next positions to hand out.

        False if a block is already queued. Taken by :meth:`join` once the
        current range is used up; positions are unique across hosts because
        the store handed the block to this host alone.
        """
        counters = self._counters
        with self._lock:
            if counters.block_to > counters.block_from:
                return False
            counters.block_from = first
            counters.block_to = end
        return True

    def take_back(self) -> list[tuple[int, int]]:
        """Stop handing out positions; return the ranges left unused."""
        counters = self._counters
        with self._lock:
            unused = [
                (int(counters.next_position), int(counters.reserved)),
                (int(counters.block_from), int(counters.block_to)),
            ]
            counters.reserved = counters.next_position
            counters.block_from = counters.block_to = 0
        return [(first, end) for first, end in unused if end > first]

    def follow(self, serving: int) -> None:
        """Raise ``serving`` to a value the leader set (the redis backend).

        Unlike :meth:`admit`, the value is taken as it is: the leader has
        already passed over the skips.
        """
        current = self.serving
        if serving <= current:
            return
        self._skips = [skip for skip in self._skips if skip[1] - 1 > serving]
        self._publish_skip()
        self._forget_claims(current + 1, serving)
        self._counters.serving = serving

    @property
    def joins_refused(self) -> int:
        """Joins that found no position left to hand out."""
        return int(self._counters.joins_refused)

    @property
    def block_queued(self) -> bool:
        """True while a block offered by :meth:`offer_block` waits its turn."""
        return bool(self._counters.block_to > self._counters.block_from)

    def set_shared(
        self, *, cluster_next: int, admitted: int, stale: bool, joins_held: bool
    ) -> None:
        """Publish what the shared store says (the redis backend's steward)."""
        counters = self._counters
        counters.cluster_next = cluster_next
        counters.admitted = admitted
        counters.stale = int(stale)
        counters.joins_held = int(joins_held)

    def mark_stale(self, joins_held: bool) -> None:
        self._counters.stale = 1
        self._counters.joins_held = int(joins_held)

    def merge_claims(self, counted: int, total: int) -> None:
        """Make ``claimed`` the cluster's ``total`` plus claims not yet pushed.

        ``counted`` is the local value that ``total`` accounts for; claims
        made since then stay on top (see :mod:`wr.redisbackend`).
        """
        with self._lock:
            self._counters.claimed += total - counted

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

    def admit(self, count: int, now: float | None = None) -> None:
        """Raise ``serving`` by ``count`` (the ticker's process only).

        With ``now`` (wall-clock seconds), the people let in are settled
        for the drop-off figures (:meth:`settle`).
        """
        if count <= 0:
            return
        serving = self.serving
        target = self.serving_after(count)
        if now is not None:
            first = serving + 1
            for skip_first, skip_end in self._skips:
                if skip_first > target:
                    break
                if skip_first > first:
                    self.settle(first, skip_first - 1, now)
                first = max(first, skip_end)
            if first <= target:
                self.settle(first, target, now)
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

    def claim(self, position: int, now: float = 0.0, waited_s: float = 0.0) -> bool:
        """Record that ``position`` took its turn; True the first time only.

        ``waited_s`` (from joining to now) feeds the wait-time histogram.
        """
        counters = self._counters
        bucket = bisect.bisect_left(WAIT_BUCKETS_S, waited_s)
        inside = int(now) // INSIDE_BUCKET_S
        rank = self.rank(position)
        # The bit and the count inside change together: a copy of both
        # (inside_snapshot) never shows a claim without its count.
        with self._lock:
            if not self._flip_bit(self._claims, rank):
                return False
            counters.claimed += 1
            self._inside[inside % INSIDE_BUCKETS] += 1
            self._claimed_at[rank % CLAIM_WINDOW] = inside % CLAIMED_AT_MODULUS + 1
            counters.wait_buckets[bucket] += 1
            counters.wait_sum += waited_s
        return True

    def wait_histogram(self) -> tuple[list[int], float]:
        """Claims by wait bucket (the last is beyond every bound), and the sum."""
        counters = self._counters
        return list(counters.wait_buckets), float(counters.wait_sum)

    @property
    def joins(self) -> int:
        return int(self._counters.joins)

    @property
    def last_eta(self) -> int:
        """The estimated wait given to the latest arrival (-1: unknown)."""
        return int(self._counters.last_eta)

    @last_eta.setter
    def last_eta(self, seconds: int) -> None:
        self._counters.last_eta = seconds

    @property
    def admit_rate(self) -> float:
        """Admissions per second the ticker is aiming at (policies included)."""
        return float(self._counters.admit_rate)

    @property
    def noshow_ratio(self) -> float:
        """Share of recent admissions never claimed."""
        return float(self._counters.noshow_ratio)

    def publish_policy(self, admit_rate: float, noshow_ratio: float) -> None:
        self._counters.admit_rate = admit_rate
        self._counters.noshow_ratio = noshow_ratio

    @property
    def pow_difficulty(self) -> int:
        """Zero bits a join's proof of work needs now (0: none).

        The room's setting, or more while the steward sees a spike of joins.
        """
        return max(self.config.pow_difficulty, int(self._counters.pow_difficulty))

    @pow_difficulty.setter
    def pow_difficulty(self, bits: int) -> None:
        self._counters.pow_difficulty = bits

    def count_inside(self, now: float) -> int:
        """Someone let in without a position (a bypass token) is inside.

        Returns the number of this bypass admission; its access token
        carries it, negated, as ``pos``, so that its leave counts once.
        """
        with self._lock:
            self._counters.bypassed += 1
            number = int(self._counters.bypassed)
            _clear_bit(self._bypass_leaves, number % BYPASS_WINDOW)
            self._inside[int(now) // INSIDE_BUCKET_S % INSIDE_BUCKETS] += 1
        return number

    def claimed_at(self, position: int, now: float) -> float | None:
        """When ``position`` claimed its turn (to the bucket); None if unknown."""
        return self._claimed_at_rank(self.rank(position), now)

    def _claimed_at_rank(self, rank: int, now: float) -> float | None:
        serving = self.serving
        if rank > serving or rank <= serving - CLAIM_WINDOW:
            return None
        stored = int(self._claimed_at[rank % CLAIM_WINDOW])
        if not stored:
            return None
        newest = int(now) // INSIDE_BUCKET_S
        bucket = newest - (newest - (stored - 1)) % CLAIMED_AT_MODULUS
        return float(bucket * INSIDE_BUCKET_S)

    def leave(
        self, position: int, issued_at: float, now: float, session_s: float
    ) -> bool:
        """A person inside left: free their place now; True the first time only.

        ``position`` is the access token's ``pos``: a place in line, or a
        bypass admission's number negated (then ``issued_at``, the token's
        ``iat``, is when they came in). A place in line is taken back from
        the time of its claim, however often its access token was issued
        again since.
        """
        if position < 0:
            return self._leave_bypass(-position, issued_at, now, session_s)
        if position == 0 or not self.opened:
            return False
        return self.leave_rank(self.rank(position), now, session_s)

    def leave_rank(self, rank: int, now: float, session_s: float) -> bool:
        """:meth:`leave` for the place ``rank`` in the admission order.

        In a cluster (the redis backend) a leave for a claim another host
        saw still sets the leave bit: the steward publishes it, and the
        host that saw the claim frees the place (:mod:`wr.redisbackend`).
        """
        admitted_at = self._claimed_at_rank(rank, now)
        if admitted_at is None:
            return self.in_cluster and self._set_rank_bit(self._leaves, rank)
        if now - admitted_at >= session_s:
            return False
        if not self._set_rank_bit(self._leaves, rank):
            return False
        with self._lock:
            self._inside[int(admitted_at) // INSIDE_BUCKET_S % INSIDE_BUCKETS] -= 1
        return True

    @property
    def in_cluster(self) -> bool:
        """True when the room is shared with other hosts through Redis."""
        return int(self._counters.cluster_next) > 0

    def mark_claimed(self, rank: int) -> bool:
        """Set the claim bit of ``rank`` for a claim another host counted."""
        return self._set_rank_bit(self._claims, rank)

    def inside_snapshot(
        self, now: float, session_s: float
    ) -> tuple[bytes, bytes, dict[int, int]]:
        """Copies of the claim and leave rings and :meth:`inside_buckets`.

        Taken at one moment (the redis backend's steward), so every claim
        bit in the copy is counted in the buckets.
        """
        with self._lock:
            rings = bytes(self._claims), bytes(self._leaves)
            return *rings, self.inside_buckets(now, session_s)

    def number_bypasses_from(self, first: int) -> bool:
        """Number this host's bypass admissions from ``first`` on, if none yet.

        Hosts of a cluster take disjoint ranges, so that a bypass leave
        sent to another host finds no admission of its own to free there.
        """
        with self._lock:
            if int(self._counters.bypassed):
                return False
            self._counters.bypassed = first
        return True

    def rank_of_slot(self, slot: int) -> int:
        """The rank within the claim window whose bit is ``slot``."""
        serving = self.serving
        return serving - (serving - slot) % CLAIM_WINDOW

    def _leave_bypass(
        self, number: int, admitted_at: float, now: float, session_s: float
    ) -> bool:
        bypassed = int(self._counters.bypassed)
        if not bypassed - BYPASS_WINDOW < number <= bypassed:
            return False
        if now - admitted_at >= session_s:
            return False
        slot = number % BYPASS_WINDOW
        with self._lock:
            if self._bypass_leaves[slot >> 3] & (1 << (slot & 7)):
                return False
            self._bypass_leaves[slot >> 3] |= 1 << (slot & 7)
            self._inside[int(admitted_at) // INSIDE_BUCKET_S % INSIDE_BUCKETS] -= 1
        return True

    # Drop-off: who stopped waiting, after how long, from where.

    def check_in(self, position: int, joined_at: float, now: float) -> None:
        """The holder of ``position`` (joined at ``joined_at``) is still here.

        Called on every join and status; three stores, no lock: only the
        holder of a position writes its slot.
        """
        window = self._seen_window
        slot = position % window
        self._joined_units[slot] = int(joined_at) // SEEN_UNIT_S % _UNITS
        self._seen_units[slot] = int(now) // SEEN_UNIT_S % _UNITS
        self._seen_laps[slot] = (position // window + 1) % _UNITS

    def settle(self, first: int, last: int, now: float) -> None:
        """Count who had gone among the ranks ``first..last`` just let in.

        The ticker calls this after each admission. Whoever had not checked
        in for :data:`GONE_AFTER_S` had given up, after the wait from their
        join to their last check-in; the others were still there.
        """
        counters = self._counters
        if last - first + 1 > SETTLE_MAX:
            counters.untracked += last - first + 1 - SETTLE_MAX
            first = last - SETTLE_MAX + 1
        prequeue = self.prequeue
        units_now = int(now) // SEEN_UNIT_S
        gone_units = GONE_AFTER_S / SEEN_UNIT_S
        window = self._seen_window
        for rank in range(max(1, first), last + 1):
            position = rank if prequeue is None else prequeue.position(rank)
            slot = position % window
            if self._seen_laps[slot] != (position // window + 1) % _UNITS:
                counters.untracked += 1
                continue
            seen = self._seen_units[slot]
            place = bisect.bisect_left(PLACE_BUCKETS, rank)
            counters.settled += 1
            counters.settled_by_place[place] += 1
            if (units_now - seen) % _UNITS > gone_units:
                waited_s = (seen - self._joined_units[slot]) % _UNITS * SEEN_UNIT_S
                counters.abandoned_by_wait[
                    bisect.bisect_right(ABANDON_AFTER_S, waited_s)
                ] += 1
                counters.abandoned_wait_sum += waited_s
                counters.abandoned_by_place[place] += 1

    def drop_off(self) -> DropOff:
        counters = self._counters
        return DropOff(
            settled=int(counters.settled),
            untracked=int(counters.untracked),
            abandoned_by_wait=tuple(counters.abandoned_by_wait),
            abandoned_wait_s=float(counters.abandoned_wait_sum),
            settled_by_place=tuple(counters.settled_by_place),
            abandoned_by_place=tuple(counters.abandoned_by_place),
        )

    def _set_bit(self, ring: memoryview, position: int) -> bool:
        # Bits are kept by admission rank, the order serving follows.
        return self._set_rank_bit(ring, self.rank(position))

    def _set_rank_bit(self, ring: memoryview, rank: int) -> bool:
        with self._lock:
            return self._flip_bit(ring, rank)

    def _flip_bit(self, ring: memoryview, rank: int) -> bool:
        """Set the bit of ``rank`` if it is clear (the caller holds the lock)."""
        serving = self.serving
        if not self.opened or rank > serving or rank <= serving - CLAIM_WINDOW:
            return False
        slot = rank % CLAIM_WINDOW
        byte, bit = slot >> 3, 1 << (slot & 7)
        if ring[byte] & bit:
            return False
        ring[byte] |= bit
        return True

    def _forget_claims(self, first: int, last: int) -> None:
        # Slots are reused every CLAIM_WINDOW positions: clear the ones that
        # newly admitted positions will use, before they are admitted.
        with self._lock:
            if last - first + 1 >= CLAIM_WINDOW:
                for ring in (self._claims, self._leaves):
                    ring[:] = bytes(len(ring))
                ctypes.memset(self._claimed_at, 0, ctypes.sizeof(self._claimed_at))
                return
            for rank in range(first, last + 1):
                slot = rank % CLAIM_WINDOW
                _clear_bit(self._claims, slot)
                _clear_bit(self._leaves, slot)
                self._claimed_at[slot] = 0


@dataclass(frozen=True, slots=True)
class DropOff:
    """Who gave up, of the people whose turn came: the product team's figures.

    ``abandoned_by_wait[i]`` counts those who gave up after waiting less
    than ``ABANDON_AFTER_S[i]`` (the last: longer); ``*_by_place[i]`` count
    people whose place in line was at most ``PLACE_BUCKETS[i]`` (the last:
    further back).
    """

    settled: int
    untracked: int
    abandoned_by_wait: tuple[int, ...]
    # The waits of those who gave up, added up (to SEEN_UNIT_S).
    abandoned_wait_s: float
    settled_by_place: tuple[int, ...]
    abandoned_by_place: tuple[int, ...]

    @property
    def abandoned(self) -> int:
        return sum(self.abandoned_by_wait)

    def still_waiting(self) -> list[tuple[int, float | None]]:
        """Share of people still in line after each of ``ABANDON_AFTER_S``."""
        curve: list[tuple[int, float | None]] = []
        gone = 0
        for after_s, count in zip(
            ABANDON_AFTER_S, self.abandoned_by_wait, strict=False
        ):
            gone += count
            share = None if not self.settled else 1.0 - gone / self.settled
            curve.append((after_s, share))
        return curve

    def by_place(self) -> list[tuple[int, int | None, int, int]]:
        """``(first, last, settled, abandoned)`` per place bucket (last None: on)."""
        rows = []
        first = 1
        bounds: list[int | None] = [*PLACE_BUCKETS, None]
        for bound, settled, abandoned in zip(
            bounds, self.settled_by_place, self.abandoned_by_place, strict=True
        ):
            rows.append((first, bound, settled, abandoned))
            first = (bound or 0) + 1
        return rows


def _clear_bit(ring: memoryview, slot: int) -> None:
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
