"""The shared-memory block that every process of one wr sees.

The supervisor maps one anonymous, shared block before it forks, so every
worker inherits the same pages. It holds, at fixed offsets:

- one slot per worker: its pid and a heartbeat (``time.monotonic()``, which
  is one clock for all processes of a host);
- one slot per room: the counters (``next_position``, ``serving``,
  ``reserved``, ``claimed``, ``admitted``, the next range to skip), the
  room's name, a lock, and the ring of claim bits (see
  :data:`wr.room.CLAIM_WINDOW`).

Workers take positions under the room's lock, a process-shared *robust*
pthread mutex: if a process dies holding it, the next one to lock it is told
so by the kernel and carries on, instead of every worker hanging. The lock
is held only for a read and a write of two integers. ``serving`` is written
by the ticker alone and read without the lock: aligned 64-bit stores are not
torn on the platforms wr runs on (x86-64 and arm64 Linux).

This module is Linux-specific: it reaches the pthread functions of the C
library through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
from types import TracebackType

from wr.draw import MAX_GAPS

__all__ = [
    "ABANDON_AFTER_S",
    "BYPASS_WINDOW",
    "CLAIMED_AT_TYPE",
    "MAX_ROOMS",
    "MAX_WORKERS",
    "PLACE_BUCKETS",
    "SEEN_UNIT_S",
    "SEEN_WINDOW",
    "RobustMutex",
    "RoomSlot",
    "SharedBlock",
    "WorkerSlot",
]

log = logging.getLogger("wr.supervisor")

# Rooms that can exist at once, including ones added by a reload; a slot
# costs about 9 MiB of address space (RoomSlot, with the default drop-off
# window), touched only as the room is used.
MAX_ROOMS = 64
# Worker processes; far more than the cores of any host wr runs on.
MAX_WORKERS = 256
# pthread_mutex_t is 40 bytes on 64-bit Linux; 64 keeps the counters after
# it on their own cache line.
MUTEX_BYTES = 64
# pthread_mutexattr_t is 4 bytes; a larger buffer costs nothing.
MUTEXATTR_BYTES = 16
# Room names are at most 64 ASCII characters (wr.config.ROOM_NAME).
NAME_BYTES = 64

# Room for one process's metrics as JSON: a few KiB in practice.
METRICS_BLOB_BYTES = 32 * 1024
# A seqlock reader gives up after this many torn reads (the writer is slow).
BLOB_READ_TRIES = 10
# Buckets of the wait-at-admission histogram, in seconds.
WAIT_BUCKETS_S = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

# The pre-queue's permutation seed (wr.draw).
DRAW_SEED_BYTES = 32
# Capacity mode counts people inside per time bucket of this many seconds,
# over a ring long enough for the longest session (24 hours).
INSIDE_BUCKET_S = 10
INSIDE_BUCKETS = 24 * 3600 // INSIDE_BUCKET_S
# When each claim was made, as a bucket number modulo 2**16 - 1 (0: none):
# two bytes per position tell a leave which bucket to take a person from.
CLAIMED_AT_TYPE = ctypes.c_uint16
# Bypass admissions whose leave is remembered: the last 64 Ki of them.
BYPASS_WINDOW = 1 << 16
# Drop-off analysis (wr.room): for each of the last SEEN_WINDOW positions
# (metrics.dropoff_positions), when its holder joined and last checked in,
# in units of SEEN_UNIT_S modulo 2**16 (three days), and which lap of the
# ring the slot belongs to: six bytes a position, 6 MiB per room and
# million positions, touched only as positions are handed out.
SEEN_WINDOW = 1 << 20
SEEN_UNIT_S = 4
# Gone after waiting less than 1, 2, 5, 10, 20, 30 minutes, or longer.
ABANDON_AFTER_S = (60, 120, 300, 600, 1200, 1800)
# Places in line, in buckets: up to 100, 1,000, ... 1,000,000, or further.
PLACE_BUCKETS = (100, 1_000, 10_000, 100_000, 1_000_000)

_PTHREAD_PROCESS_SHARED = 1
_PTHREAD_MUTEX_ROBUST = 1


def _load_pthread() -> ctypes.CDLL:
    # glibc 2.34+ has pthread in libc itself; older ones in libpthread.
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "pthread_mutex_consistent"):
        return libc
    name = ctypes.util.find_library("pthread")
    if name is None:
        raise OSError("wr needs the POSIX threads library (Linux)")
    return ctypes.CDLL(name, use_errno=True)


_pthread = _load_pthread()
_lock = _pthread.pthread_mutex_lock
_unlock = _pthread.pthread_mutex_unlock
_consistent = _pthread.pthread_mutex_consistent
for _function in (_lock, _unlock, _consistent):
    _function.argtypes = [ctypes.c_void_p]
    _function.restype = ctypes.c_int


class RoomCounters(ctypes.Structure):
    _fields_ = (
        ("mutex", ctypes.c_ubyte * MUTEX_BYTES),
        ("next_position", ctypes.c_int64),
        ("serving", ctypes.c_int64),
        ("reserved", ctypes.c_int64),
        ("claimed", ctypes.c_int64),
        ("admitted", ctypes.c_int64),
        ("in_use", ctypes.c_int64),
        # The next range of positions that nobody holds (see wr.steward).
        ("skip_from", ctypes.c_int64),
        ("skip_to", ctypes.c_int64),
        # The pre-queue draw (see wr.draw): set once, at the opening.
        ("opened", ctypes.c_int64),
        ("draw_size", ctypes.c_int64),
        ("draw_seed", ctypes.c_ubyte * DRAW_SEED_BYTES),
        # Positions left out of the draw, as [first, end) pairs.
        ("draw_gap_count", ctypes.c_int64),
        ("draw_gaps", ctypes.c_int64 * (2 * MAX_GAPS)),
        # Admissions through bypass tokens; each one's access token carries
        # its number, negated, as ``pos``.
        ("bypassed", ctypes.c_int64),
        # The last reset (see wr.room.Room.reset): tokens issued before
        # ``reset_at`` (wall seconds) are refused, and the positions below
        # ``reset_position`` belong to the old line.
        ("reset_at", ctypes.c_int64),
        ("reset_position", ctypes.c_int64),
        # For metrics: joins, the estimated wait given to the last arrival,
        # the ticker's current rate and no-show ratio, and how long people
        # waited before they were let in (written under the room's lock).
        ("joins", ctypes.c_int64),
        ("last_eta", ctypes.c_int64),
        ("admit_rate", ctypes.c_double),
        ("noshow_ratio", ctypes.c_double),
        ("wait_buckets", ctypes.c_int64 * (len(WAIT_BUCKETS_S) + 1)),
        ("wait_sum", ctypes.c_double),
        # Drop-off: people who reached the front (settled) and those of them
        # who had stopped checking in (abandoned), by how long they had
        # waited and by their place in line; positions no slot remembered.
        ("settled", ctypes.c_int64),
        ("abandoned_by_wait", ctypes.c_int64 * (len(ABANDON_AFTER_S) + 1)),
        ("abandoned_wait_sum", ctypes.c_double),
        ("settled_by_place", ctypes.c_int64 * (len(PLACE_BUCKETS) + 1)),
        ("abandoned_by_place", ctypes.c_int64 * (len(PLACE_BUCKETS) + 1)),
        ("untracked", ctypes.c_int64),
        # The proof-of-work difficulty the steward asks for now (wr.pow).
        ("pow_difficulty", ctypes.c_int64),
        # The redis backend (wr.redisbackend): the next block of positions,
        # [block_from, block_to), taken when the current range runs out; the
        # highest position handed out across the cluster, as last read; and
        # 1 while the store cannot be reached (joins_held: joins refused).
        ("block_from", ctypes.c_int64),
        ("block_to", ctypes.c_int64),
        ("cluster_next", ctypes.c_int64),
        ("stale", ctypes.c_int64),
        ("joins_held", ctypes.c_int64),
        # Joins that found no position left (the steward grows blocks).
        ("joins_refused", ctypes.c_int64),
        # Capacity mode: people inside counted by the cluster's other hosts.
        ("others_inside", ctypes.c_int64),
        ("name", ctypes.c_char * NAME_BYTES),
    )


class MetricsBlob(ctypes.Structure):
    """One process's counters as JSON, written by that process alone.

    ``seq`` is odd while the writer is at work: a reader that sees it odd,
    or changed after reading, reads again (a seqlock).
    """

    _fields_ = (
        ("seq", ctypes.c_int64),
        ("length", ctypes.c_int64),
        ("data", ctypes.c_ubyte * METRICS_BLOB_BYTES),
    )

    def write(self, data: bytes) -> bool:
        if len(data) > METRICS_BLOB_BYTES:
            return False
        self.seq += 1
        ctypes.memmove(self.data, data, len(data))
        self.length = len(data)
        self.seq += 1
        return True

    def read(self) -> bytes | None:
        for _ in range(BLOB_READ_TRIES):
            before = self.seq
            if before % 2:
                continue
            data = ctypes.string_at(ctypes.addressof(self.data), self.length)
            if self.seq == before:
                return data
        return None

    def clear(self) -> None:
        self.seq += 1
        self.length = 0
        self.seq += 1


class BlockHeader(ctypes.Structure):
    _fields_ = (
        ("mutex", ctypes.c_ubyte * MUTEX_BYTES),
        # Bumped whenever the admin API changes a room: everyone reloads.
        ("generation", ctypes.c_int64),
        ("worker_restarts", ctypes.c_int64),
        # The ticker's lateness over the last second, in seconds.
        ("ticker_lag", ctypes.c_double),
        # 1 while the state directory refuses writes.
        ("save_failing", ctypes.c_int64),
        # The redis backend: 1 while Redis cannot be reached; 1 while this
        # host holds the ticker's lease.
        ("store_unreachable", ctypes.c_int64),
        ("leader", ctypes.c_int64),
        # The counters of workers that have exited, so totals never go back.
        ("retired", MetricsBlob),
    )


class WorkerSlot(ctypes.Structure):
    _fields_ = (
        ("pid", ctypes.c_int64),
        ("heartbeat", ctypes.c_double),
        ("metrics", MetricsBlob),
    )


class RobustMutex:
    """A process-shared robust mutex at a fixed address (a context manager)."""

    def __init__(self, address: int) -> None:
        self._address = address

    def init(self) -> None:
        attr = ctypes.create_string_buffer(MUTEXATTR_BYTES)
        checks = (
            _pthread.pthread_mutexattr_init(attr),
            _pthread.pthread_mutexattr_setpshared(attr, _PTHREAD_PROCESS_SHARED),
            _pthread.pthread_mutexattr_setrobust(attr, _PTHREAD_MUTEX_ROBUST),
            _pthread.pthread_mutex_init(ctypes.c_void_p(self._address), attr),
        )
        _pthread.pthread_mutexattr_destroy(attr)
        if any(checks):
            raise OSError(f"cannot initialise a shared mutex: {checks}")

    def __enter__(self) -> None:
        result = _lock(self._address)
        if result == errno.EOWNERDEAD:
            # A process died inside the critical section. What it protects
            # is two integers written in order, so the state is usable.
            _consistent(self._address)
            log.warning("recovered a lock from a dead process pid=%s", os.getpid())
        elif result != 0:
            raise OSError(result, os.strerror(result))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _unlock(self._address)


class RoomSlot:
    """One room's counters, lock and rings, in shared memory or not.

    After the counters come, by admission rank: the ring of claim bits, the
    ring of leave bits (one bit per position each) and when each claim was
    made (:data:`CLAIMED_AT_TYPE`, see :mod:`wr.room`); then the people
    inside per time bucket, the leave bits of bypass admissions, and by
    position the drop-off rings (when each person joined and last checked
    in, see :mod:`wr.room`).
    """

    def __init__(
        self,
        block: mmap.mmap,
        offset: int,
        claim_bytes: int,
        seen_window: int = SEEN_WINDOW,
    ) -> None:
        self.seen_window = seen_window
        self.counters = RoomCounters.from_buffer(block, offset)
        self.lock = RobustMutex(ctypes.addressof(self.counters))
        view = memoryview(block)
        start = offset + ctypes.sizeof(RoomCounters)
        self.claims = view[start : start + claim_bytes]
        self.leaves = view[start + claim_bytes : start + 2 * claim_bytes]
        inside_at = _aligned(start + 2 * claim_bytes, 8)
        self.inside = (ctypes.c_int64 * INSIDE_BUCKETS).from_buffer(block, inside_at)
        claimed_at = inside_at + ctypes.sizeof(self.inside)
        self.claimed_at = (CLAIMED_AT_TYPE * (8 * claim_bytes)).from_buffer(
            block, claimed_at
        )
        bypass_at = claimed_at + ctypes.sizeof(self.claimed_at)
        self.bypass_leaves = view[bypass_at : bypass_at + BYPASS_WINDOW // 8]
        seen_at = bypass_at + BYPASS_WINDOW // 8
        ring = ctypes.c_uint16 * seen_window
        self.joined_units = ring.from_buffer(block, seen_at)
        self.seen_units = ring.from_buffer(block, seen_at + 2 * seen_window)
        self.seen_laps = ring.from_buffer(block, seen_at + 4 * seen_window)

    @staticmethod
    def size(claim_bytes: int, seen_window: int = SEEN_WINDOW) -> int:
        counters = ctypes.sizeof(RoomCounters)
        return (
            _aligned(counters + 2 * claim_bytes, 8)
            + 8 * INSIDE_BUCKETS
            + ctypes.sizeof(CLAIMED_AT_TYPE) * 8 * claim_bytes
            + BYPASS_WINDOW // 8
            + 3 * 2 * seen_window
        )

    @classmethod
    def private(cls, claim_bytes: int, seen_window: int = SEEN_WINDOW) -> RoomSlot:
        """A slot of its own, for one process (tests, tools)."""
        size = cls.size(claim_bytes, seen_window)
        slot = cls(mmap.mmap(-1, size), 0, claim_bytes, seen_window)
        slot.lock.init()
        return slot


def _aligned(size: int, to: int = 64) -> int:
    return (size + to - 1) // to * to


class SharedBlock:
    """The block: worker slots, then room slots, each with its claim bits."""

    def __init__(self, claim_bytes: int, seen_window: int = SEEN_WINDOW) -> None:
        self.claim_bytes = claim_bytes
        header = _aligned(ctypes.sizeof(BlockHeader))
        self._worker_bytes = header + _aligned(ctypes.sizeof(WorkerSlot) * MAX_WORKERS)
        self._room_bytes = _aligned(RoomSlot.size(claim_bytes, seen_window))
        size = self._worker_bytes + self._room_bytes * MAX_ROOMS
        # mmap(-1) is anonymous and MAP_SHARED: children see our writes.
        self._block = mmap.mmap(-1, size)
        self.header = BlockHeader.from_buffer(self._block, 0)
        self.lock = RobustMutex(ctypes.addressof(self.header))
        self.lock.init()
        self.workers = (WorkerSlot * MAX_WORKERS).from_buffer(self._block, header)
        self.rooms = [
            RoomSlot(
                self._block,
                self._worker_bytes + i * self._room_bytes,
                claim_bytes,
                seen_window,
            )
            for i in range(MAX_ROOMS)
        ]
        for slot in self.rooms:
            slot.lock.init()

    def find(self, name: str) -> RoomSlot | None:
        """The slot of room ``name``, if the supervisor has given it one."""
        encoded = name.encode("ascii")
        for slot in self.rooms:
            if slot.counters.in_use and slot.counters.name == encoded:
                return slot
        return None

    def room(self, name: str) -> RoomSlot:
        """The slot named ``name``, taking a free one the first time.

        Any process may take one (the block's lock makes it atomic). A new
        slot hands out nothing until the steward has restored its counters
        and reserved positions for it.
        """
        with self.lock:
            return self._room(name)

    def _room(self, name: str) -> RoomSlot:
        encoded = name.encode("ascii")
        free = None
        for slot in self.rooms:
            if slot.counters.in_use and slot.counters.name == encoded:
                return slot
            if free is None and not slot.counters.in_use:
                free = slot
        if free is None:
            raise ValueError(f"more than {MAX_ROOMS} rooms")
        free.counters.name = encoded
        free.counters.in_use = 1
        return free
