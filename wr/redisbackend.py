"""Rooms shared by several hosts through Redis (``server.backend = "redis://..."``).

Theory of operation. Redis holds, per room, the counter positions are
taken from (``next``), ``serving``, ``admitted``, the claims (one field
per host) and the skips; and for the cluster the ticker's lease, its
fencing counter and the admin API's room changes. Each host's steward
(:class:`RedisSteward`, in the supervisor) talks to Redis; workers never
do, so a request never waits on the network:

- **positions**: the steward keeps one block of positions queued in the
  shared block beside the range workers hand out from (``INCRBY``, sized by
  :class:`wr.cluster.BlockSizer`); a join that uses up its range switches to
  the queued block under the room's lock, and the next step fetches another;
- **serving**: one host holds the lease (``SET NX PX``, renewed every
  step). Each acquisition raises the fencing counter, and ``serving`` is
  raised only by :data:`RAISE_SCRIPT`, which checks that the caller still
  holds the lease with the current token and only ever raises the value.
  Every other host reads ``serving`` each step and publishes it to its
  workers;
- **claims** are counted on the host that saw them and written to its
  own field in Redis each step (the sum is the total), so the leader's
  policies see the cluster's claims; every host samples the shared
  counters, so a new leader starts with the old one's history;
- **room changes** made through any host's admin API are written to Redis
  with a version; other hosts copy them into their own overrides file and
  reload, as the memory backend does for its own workers;
- **capacity mode**: each host writes its count of people inside per
  time bucket (:data:`INSIDE_SCRIPT`, one field per bucket and host) and
  appends the ranks newly claimed and left to the room's event stream;
  the leader decides with the cluster's sum, every host sets the claim
  bits of claims made elsewhere, and the host that counted a claim frees
  the place when a leave for it arrives anywhere, once;
- **pre-queues**: at the opening the first host closes the pre-queue
  (:data:`CLOSE_SCRIPT`), every host gives back what it holds below its
  end as skips, and ``redis.draw_grace_s`` later the leader stores one
  draw (:data:`DRAW_SCRIPT`, fenced) that every host opens with.

When Redis cannot be reached, the rooms are marked *stale*: status answers
go on from the last ``serving`` read, flagged ``"stale": true``; joins get
503 with ``Retry-After`` (or, with ``redis.fallback_positions``, go on from
the positions held in advance); the steward retries with a doubling
back-off. Each call gives up after ``redis.timeout_s``, so the supervisor's
loop never stalls for longer than that per step.

A host that stops cleanly gives the positions it held but never handed
out back as *skips* (a sorted set in Redis), which every ticker passes over
without spending admissions, as the memory backend does after a crash.

Known limits: positions held by a host that dies, or taken in a reply lost
to a timeout, are spent by the ticker like any other position (at most
``2 * block`` admissions per death); with ``workers = 1`` the calls run
in the steward's thread beside the serving loop, bounded by
``redis.timeout_s``. Claims and
leaves on other hosts reach the leader's capacity count a step or two
late: an admission of the last ``CLAIM_GRACE_S`` counts as expected
meanwhile, but a later claim can let one person too many in for that
long; a host that misses more than ``redis.events_kept`` events frees the places
concerned at the end of their session; a bypass admission's leave counts
only on the host that admitted it; positions a host still held below a
pre-queue's end when the draw was made are drawn and cost an admission
each.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from wr.admin import OverridesStore
from wr.cluster import (
    Backoff,
    BlockSizer,
    Lease,
    changed_buckets,
    draw_document,
    draw_of,
    new_slots,
)
from wr.config import Config, RedisConfig, RoomConfig
from wr.room import CLAIM_WINDOW, TICK_INTERVAL_S, Room
from wr.shm import SharedBlock
from wr.state import RoomState
from wr.steward import Steward, open_room, prequeue_of

__all__ = [
    "LEASE_SCRIPT",
    "RAISE_SCRIPT",
    "TAKE_SCRIPT",
    "RedisSteward",
    "RedisStore",
    "RoomReading",
    "make_steward",
]

log = logging.getLogger("wr.ticker")

# Events (claims and leaves of capacity rooms) read per room and step: a
# host that fell behind catches up over a few steps instead of in one
# reply of unbounded size.
EVENTS_READ = 1000

# Each host numbers its bypass admissions within a range of 2**40 (a
# trillion admissions), so numbers never meet across hosts; access tokens
# carry them negated, exact as JSON doubles for the first 2**12 host starts
# (the ranges are counted in Redis) and as Python integers beyond.
BYPASS_RANGE_BITS = 40

# Takes the lease if it is free (raising the fencing counter), renews it if
# this holder has it; returns the fencing token, or 0 if another holds it.
LEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
if holder then
  return 0
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"""

# Raises serving (KEYS[3], [5], ...) to ARGV[3], [5], ... and adds ARGV[4],
# [6], ... to admitted (KEYS[4], [6], ...), only for the holder of the lease
# (KEYS[1] == ARGV[1]) with the current fencing token (KEYS[2] == ARGV[2]),
# and only upwards; -1 if fenced off, else how many rooms moved. Lua numbers
# are doubles: exact up to 2**53 positions.
RAISE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1]
   or tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[2]) then
  return -1
end
local moved = 0
for i = 3, #KEYS, 2 do
  local proposed = tonumber(ARGV[i])
  if proposed > tonumber(redis.call('GET', KEYS[i]) or '0') then
    redis.call('SET', KEYS[i], ARGV[i])
    redis.call('INCRBY', KEYS[i + 1], ARGV[i + 1])
    moved = moved + 1
  end
end
return moved
"""

# Takes ARGV[1] positions from the counter KEYS[1], which is first raised to
# ARGV[2] if it is below: the highest position this host knows was taken.
# A Redis that lost its data (no append-only file) then does not start the
# line again from 1; only positions taken by other hosts since this host's
# last step can repeat. The guarantee itself needs the append-only file.
TAKE_SCRIPT = """
local floor = tonumber(ARGV[2])
if tonumber(redis.call('GET', KEYS[1]) or '0') < floor then
  redis.call('SET', KEYS[1], ARGV[2])
end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""

# Writes this host's (ARGV[1]) count inside per bucket (ARGV[3], [5], ...
# = ARGV[4], [6], ...; 0 removes it) into the room's hash KEYS[1], as one
# field per bucket and host, so a write repeated after a lost reply counts
# once; drops fields of buckets older than ARGV[2] and returns the sum of
# the others: the cluster's people inside.
INSIDE_SCRIPT = """
local holder, oldest = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  local field = ARGV[i] .. ':' .. holder
  if tonumber(ARGV[i + 1]) == 0 then
    redis.call('HDEL', KEYS[1], field)
  else
    redis.call('HSET', KEYS[1], field, ARGV[i + 1])
  end
end
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local bucket = tonumber(string.match(fields[i], '^(-?%d+):'))
  if bucket == nil or bucket < oldest then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    total = total + tonumber(fields[i + 1])
  end
end
return total
"""

# Closes a pre-queue once for the cluster: its end (KEYS[1]) becomes the
# highest position taken from the counter KEYS[2] at that moment, by
# whichever host comes first; returns the end.
CLOSE_SCRIPT = """
local stored = redis.call('GET', KEYS[1])
if stored then
  return tonumber(stored)
end
local taken = tonumber(redis.call('GET', KEYS[2]) or '0')
redis.call('SET', KEYS[1], taken)
return taken
"""

# Stores a pre-queue's draw (ARGV[3]) once (KEYS[3]), only for the holder
# of the lease (KEYS[1] == ARGV[1]) with the current fencing token
# (KEYS[2] == ARGV[2]), and drops the skips (KEYS[4]) below the
# pre-queue's end (ARGV[4]): the draw leaves them out as gaps. Returns the
# draw stored, which may be an earlier leader's; nil if fenced off.
DRAW_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1]
   or tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[2]) then
  return false
end
local stored = redis.call('GET', KEYS[3])
if stored then
  return stored
end
redis.call('SET', KEYS[3], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', tonumber(ARGV[4]) + 1)
return ARGV[3]
"""

# Gives the lease up on a clean stop, if it is still ours, so that another
# host takes over at once instead of after the lease period.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class RoomReading:
    """One room's shared counters, as one step read them."""

    serving: int
    admitted: int
    claimed: int
    # The highest position taken from the counter (0: none yet).
    taken: int
    # Ranges [first, end) given back by hosts that stopped, not yet passed.
    skips: tuple[tuple[int, int], ...] = ()
    # The pre-queue's end once closed, and its draw once stored (bytes of
    # wr.cluster.draw_document).
    prequeue_end: int | None = None
    draw: bytes | None = None
    # Capacity mode: the cluster's people inside, and the other hosts'
    # claims and leaves by rank since this host's last read.
    inside: int | None = None
    claims: tuple[int, ...] = ()
    leaves: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class InsidePush:
    """What one host tells the others about a capacity room, each step."""

    # Buckets older than this number are out of every session: dropped.
    oldest: int
    # This host's count inside per bucket, where it changed.
    buckets: Mapping[int, int]
    # This host's count inside over the whole window.
    own: int
    # Ranks newly claimed and left on this host.
    claims: Sequence[int]
    leaves: Sequence[int]
    # The last event of the room's stream this host has read.
    after: bytes


@dataclass(frozen=True, slots=True)
class Reading:
    token: int
    overrides_version: int
    rooms: dict[str, RoomReading]
    # The id of the last event read, per capacity room.
    events_read: dict[str, bytes] = field(default_factory=dict)


class RedisStore:
    """The few round trips the steward makes, on a redis-py client.

    Each method is one round trip (a pipeline) and raises
    :class:`redis.RedisError` when the store cannot be reached in time.
    """

    def __init__(
        self, url: str, settings: RedisConfig, holder: str | None = None
    ) -> None:
        self.settings = settings
        self.prefix = settings.key_prefix
        self.holder = holder or _holder_id()
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=settings.timeout_s,
            socket_connect_timeout=settings.timeout_s,
            # One try per call: the steward's back-off decides when to retry,
            # never a wait inside the supervisor's loop.
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def room_key(self, room: str, counter: str) -> str:
        return self.key("room", room, counter)

    def sync(
        self,
        claims: Mapping[str, int],
        serving: Mapping[str, int],
        lease_ms: int,
        inside: Mapping[str, InsidePush] | None = None,
    ) -> Reading:
        """Renew or take the lease, push claims, read every room's counters.

        ``claims[room]`` is how many claims this host has seen in all; each
        host writes its own field of a hash and the total is their sum, so
        a write repeated after a lost reply counts nothing twice.
        ``serving[room]`` is the last value known: skips it has passed are
        dropped (serving only rises, so that is safe from any host).
        ``inside[room]``, for capacity rooms, is this host's share of the
        people inside (:class:`InsidePush`).
        """
        inside = inside or {}
        pipe = self.client.pipeline(transaction=False)
        pipe.eval(
            LEASE_SCRIPT, 2, self.key("lease"), self.key("fence"), self.holder, lease_ms
        )
        pipe.get(self.key("overrides", "version"))
        for name, own in claims.items():
            skips = self.room_key(name, "skips")
            pipe.hset(self.room_key(name, "claims"), self.holder, own)
            pipe.hvals(self.room_key(name, "claims"))
            pipe.mget(
                self.room_key(name, "serving"),
                self.room_key(name, "admitted"),
                self.room_key(name, "next"),
                self.room_key(name, "prequeue_end"),
                self.room_key(name, "draw"),
            )
            # A skip is scored by its end: passed once end - 1 <= serving.
            pipe.zremrangebyscore(skips, "-inf", serving.get(name, 0) + 1)
            pipe.zrange(skips, 0, -1)
        for name, push in inside.items():
            self._push_inside(pipe, name, push)
        replies = pipe.execute()
        rooms = {}
        for i, name in enumerate(claims):
            at = 2 + 5 * i
            shared, admitted, taken, end, draw = replies[at + 2]
            rooms[name] = RoomReading(
                _int(shared),
                _int(admitted),
                sum(int(v) for v in replies[at + 1]),
                _int(taken),
                tuple(sorted(_range(member) for member in replies[at + 4])),
                None if end is None else int(end),
                draw,
            )
        at = 2 + 5 * len(claims)
        read = {}
        for name, push in inside.items():
            events, total = replies[at], replies[at + 1]
            at += 3 if push.claims or push.leaves else 2
            claimed, left, read[name] = self._events(events, push.after)
            rooms[name] = replace(
                rooms[name], inside=int(total), claims=claimed, leaves=left
            )
        return Reading(int(replies[0]), _int(replies[1]), rooms, read)

    def _push_inside(self, pipe: Any, name: str, push: InsidePush) -> None:
        counts: list[int] = []
        for bucket, count in push.buckets.items():
            counts += [bucket, count]
        key = self.room_key(name, "inside")
        events = self.room_key(name, "events")
        # Order matters to the leader: a claim's count inside is written
        # before its event, and events are read before the counts, so a
        # claim read as claimed is always counted inside too.
        pipe.xread({events: push.after}, count=EVENTS_READ)
        pipe.eval(INSIDE_SCRIPT, 1, key, self.holder, push.oldest, *counts)
        if push.claims or push.leaves:
            pipe.xadd(
                events,
                {
                    "host": self.holder,
                    "claims": _ints(push.claims),
                    "leaves": _ints(push.leaves),
                },
                maxlen=self.settings.events_kept,
                approximate=True,
            )

    def _events(
        self, reply: Any, after: bytes
    ) -> tuple[tuple[int, ...], tuple[int, ...], bytes]:
        """Other hosts' claims and leaves from an XREAD reply; the last id."""
        claimed: list[int] = []
        left: list[int] = []
        holder = self.holder.encode()
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                after = entry_id
                if fields.get(b"host") == holder:
                    continue
                claimed += _parse_ints(fields.get(b"claims", b""))
                left += _parse_ints(fields.get(b"leaves", b""))
        return tuple(claimed), tuple(left), after

    def bypass_range(self) -> int:
        """The first of a range of bypass numbers no other host uses."""
        return int(self.client.incr(self.key("bypass_ranges"))) << BYPASS_RANGE_BITS

    def close_prequeue(self, name: str) -> int:
        """Close the room's pre-queue (once for the cluster); return its end."""
        keys = (self.room_key(name, "prequeue_end"), self.room_key(name, "next"))
        return int(self.client.eval(CLOSE_SCRIPT, 2, *keys))

    def store_draw(
        self, token: int, name: str, document: bytes, end: int
    ) -> bytes | None:
        """Store the room's draw once, fenced; the draw stored, or None."""
        keys = [
            self.key("lease"),
            self.key("fence"),
            self.room_key(name, "draw"),
            self.room_key(name, "skips"),
        ]
        stored = self.client.eval(
            DRAW_SCRIPT, len(keys), *keys, self.holder, token, document, end
        )
        return None if stored is None else bytes(stored)

    def give_back(self, unused: Mapping[str, list[tuple[int, int]]]) -> None:
        """Record positions a stopping host never handed out, as skips."""
        pipe = self.client.pipeline(transaction=False)
        for name, ranges in unused.items():
            for first, end in ranges:
                pipe.zadd(self.room_key(name, "skips"), {f"{first}:{end}": end})
        pipe.execute()

    def raise_serving(
        self, token: int, proposals: Mapping[str, tuple[int, int]]
    ) -> int:
        """Raise ``serving`` to ``(serving, admitted_delta)`` per room, fenced.

        Returns how many rooms moved, or -1 if this host no longer holds
        the lease with ``token``.
        """
        keys = [self.key("lease"), self.key("fence")]
        args: list[str | int] = [self.holder, token]
        for name, (serving, count) in proposals.items():
            keys += [self.room_key(name, "serving"), self.room_key(name, "admitted")]
            args += [serving, count]
        return int(self.client.eval(RAISE_SCRIPT, len(keys), *keys, *args))

    def take_blocks(
        self, sizes: Mapping[str, int], floors: Mapping[str, int]
    ) -> dict[str, tuple[int, int]]:
        """Take ``sizes[room]`` positions of each room: ``[first, end)``.

        ``floors[room]`` is the highest position known taken (see
        :data:`TAKE_SCRIPT`).
        """
        pipe = self.client.pipeline(transaction=False)
        for name, size in sizes.items():
            key = self.room_key(name, "next")
            pipe.eval(TAKE_SCRIPT, 1, key, size, floors.get(name, 0))
        replies = pipe.execute()
        return {
            name: (int(last) - size + 1, int(last) + 1)
            for (name, size), last in zip(sizes.items(), replies, strict=True)
        }

    def push_overrides(self, rooms: Mapping[str, Any]) -> int:
        """Store the admin API's room changes; returns their new version."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.key("overrides"), orjson.dumps(rooms))
        pipe.incr(self.key("overrides", "version"))
        return int(pipe.execute()[1])

    def pull_overrides(self) -> tuple[int, dict[str, Any]]:
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.key("overrides", "version"))
        pipe.get(self.key("overrides"))
        version, raw = pipe.execute()
        rooms = orjson.loads(raw) if raw else {}
        if not isinstance(rooms, dict):
            raise ValueError("stored room changes are not an object")
        return _int(version), rooms

    def release(self) -> None:
        self.client.eval(RELEASE_SCRIPT, 1, self.key("lease"), self.holder)

    def close(self) -> None:
        self.client.close()


def _set(ring: bytearray, rank: int) -> None:
    slot = rank % CLAIM_WINDOW
    ring[slot >> 3] |= 1 << (slot & 7)


def _int(value: Any) -> int:
    return 0 if value is None else int(value)


def _ints(numbers: Sequence[int]) -> bytes:
    return ",".join(map(str, numbers)).encode()


def _parse_ints(text: bytes) -> list[int]:
    return [int(part) for part in text.split(b",") if part]


def _range(member: bytes) -> tuple[int, int]:
    first, _, end = member.partition(b":")
    return int(first), int(end)


def _holder_id() -> str:
    """Unique to this process's life: a restarted host is a new holder."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class RedisSteward(Steward):
    """The steward of a host whose rooms live in Redis.

    It reuses the memory steward's rooms, ticker and policies; what it
    replaces is where positions come from (blocks taken from Redis instead
    of ranges saved to disk) and who may move ``serving`` (the lease
    holder, through the fenced script).
    """

    def __init__(
        self,
        rooms: Mapping[str, RoomConfig],
        block: SharedBlock,
        state_dir: Path,
        now: float,
        store: RedisStore,
        *,
        session_s: float = 3600.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = store.settings
        self.lease = Lease(store.holder, self.settings.lease_ms / 1000)
        self.backoff = Backoff(
            self.settings.reconnect_min_s, self.settings.reconnect_max_s
        )
        self.reachable = False
        # Failed attempts in a row (logged, so an outage can be followed).
        self.failures = 0
        self.overrides = OverridesStore(state_dir)
        self._overrides_version = -1
        self._seen_generation = int(block.header.generation)
        self._claims_base: dict[str, int] = {}
        # Claims seen on this host in all, per room: its field in Redis.
        self._own_claims: dict[str, int] = {}
        self._sizers: dict[str, BlockSizer] = {}
        # The highest position known taken, per room: a floor for the
        # counter should Redis come back without its data.
        self._taken: dict[str, int] = {}
        # Joins and refusals at each room's last fetch.
        self._demand_from: dict[str, tuple[int, int]] = {}
        self._step_tick = now
        # Capacity rooms: the rings as last compared, the bucket counts as
        # last pushed, and the last event read.
        self._rings: dict[str, tuple[bytes, bytes]] = {}
        self._inside_pushed: dict[str, dict[int, int]] = {}
        self._events_after: dict[str, bytes] = {}
        # Pre-queues whose positions held below the end were given back,
        # and when (steward clock).
        self._given_back: dict[str, float] = {}
        # This host's range of bypass admission numbers, once taken, and
        # the rooms numbering from it.
        self._bypass_from = 0
        self._bypass_numbered: set[str] = set()
        super().__init__(rooms, block, state_dir, now, session_s=session_s, wall=wall)

    def _load_saved(self) -> dict[str, RoomState]:
        # The counters live in Redis; the state file of a memory-backend
        # run is not the line's state.
        return {}

    def final_save(self) -> None:
        """At a clean stop, once no worker hands out positions.

        The positions this host held but never handed out become skips
        that every ticker passes over without spending admissions, and the
        lease is given up so that another host takes over at once.
        """
        unused = {name: room.take_back() for name, room in self.rooms.items()}
        try:
            self.store.give_back(unused)
            if self.lease.token:
                self.store.release()
        except redis.RedisError as exc:
            # The ticker will spend admissions on them instead: the cost
            # of a crash.
            log.warning("cannot give back positions or the lease error=%s", exc)
        self.lease.lost()
        self.block.header.leader = 0
        self.store.close()

    def step(self, now: float) -> None:
        if not self.backoff.due(now):
            return
        try:
            self._step(now)
        except (redis.RedisError, ValueError) as exc:
            self._unreachable(now, exc)

    def _step(self, now: float) -> None:
        held = self.lease.token
        asked_at = now
        pushed = self._claims_to_push()
        own = {name: self._own_claims.get(name, 0) + d for name, d in pushed.items()}
        serving = {name: room.serving for name, room in self.rooms.items()}
        wall = self._wall()
        snapshots = {
            name: room.inside_snapshot(wall, self._session_s(room))
            for name, room in self.rooms.items()
            if room.config.max_active is not None
        }
        inside = {name: self._inside_push(name, *snapshots[name]) for name in snapshots}
        rings = {
            name: (claims, leaves) for name, (claims, leaves, _) in snapshots.items()
        }
        reading = self.store.sync(own, serving, self.settings.lease_ms, inside)
        self._own_claims.update(own)
        self._share_inside(reading, rings, inside)
        if self.lease.granted(reading.token, asked_at):
            log.info(
                "lease acquired token=%s holder=%s", reading.token, self.lease.holder
            )
        elif held and not reading.token:
            log.warning("lease lost token=%s holder=%s", held, self.lease.holder)
        if self.backoff.succeeded():
            log.info("store reachable again")
        self.reachable = True
        self.block.header.store_unreachable = 0
        self._apply(reading, pushed)
        self._sync_overrides(reading.overrides_version, now)
        self._open_rooms(reading, now)
        self._number_bypasses()

        if now >= self._step_tick:
            self._step_tick = now + TICK_INTERVAL_S
            if self.lease.leading(now):
                self._lead(now)
            else:
                self._follow()
        self.block.header.leader = int(self.lease.leading(now))
        self._measure(now)
        self._publish_pow(self._join_rate)
        self._fetch_blocks()

    def _inside_push(
        self, name: str, claimed: bytes, left: bytes, buckets: dict[int, int]
    ) -> InsidePush:
        room = self.rooms[name]
        before = self._rings.get(name)
        if before is None:
            # A room new to this host: every bit set is news.
            before = (bytes(len(claimed)), bytes(len(left)))
        claims, leaves = (
            [room.rank_of_slot(slot) for slot in new_slots(now, then)]
            for now, then in zip((claimed, left), before, strict=True)
        )
        return InsidePush(
            oldest=min(buckets),
            buckets=changed_buckets(buckets, self._inside_pushed.get(name, {})),
            own=sum(buckets.values()),
            claims=claims,
            leaves=leaves,
            after=self._events_after.get(name, b"0-0"),
        )

    def _share_inside(
        self,
        reading: Reading,
        rings: Mapping[str, tuple[bytes, bytes]],
        pushed: Mapping[str, InsidePush],
    ) -> None:
        """Apply the other hosts' claims and leaves; note what was pushed.

        A claim seen elsewhere sets the claim bit here, so that the policy
        knows the admission was claimed and a later status on this host
        does not count it inside a second time; a leave seen elsewhere
        frees the place here if this host counted it.
        """
        wall = self._wall()
        for name, push in pushed.items():
            room = self.rooms[name]
            shared = reading.rooms[name]
            session_s = self._session_s(room)
            claims, leaves = (bytearray(ring) for ring in rings[name])
            for rank in shared.claims:
                if room.mark_claimed(rank):
                    _set(claims, rank)
            for rank in shared.leaves:
                if room.leave_rank(rank, wall, session_s):
                    _set(leaves, rank)
            self._rings[name] = (bytes(claims), bytes(leaves))
            counts = self._inside_pushed.setdefault(name, {})
            counts.update(push.buckets)
            for bucket in [b for b in counts if b < push.oldest or not counts[b]]:
                del counts[bucket]
            self._events_after[name] = reading.events_read[name]
            # Claims and leaves here since the push are read live.
            room.others_inside = (shared.inside or 0) - push.own

    def _number_bypasses(self) -> None:
        if len(self._bypass_numbered) == len(self.rooms):
            return
        if not self._bypass_from:
            self._bypass_from = self.store.bypass_range()
        for name, room in self.rooms.items():
            if name not in self._bypass_numbered:
                room.number_bypasses_from(self._bypass_from)
                self._bypass_numbered.add(name)

    def _open_rooms(self, reading: Reading, now: float) -> None:
        """Close, draw and open pre-queues, once for the whole cluster.

        At the opening time the first host to look closes the pre-queue
        (its end: the highest position taken), and every host gives back
        the positions it holds below the end, as skips. The leader draws
        ``redis.draw_grace_s`` later, leaving those out as gaps, and
        stores the draw once; every host then opens with that draw.
        """
        wall = self._wall()
        for name, room in self.rooms.items():
            shared = reading.rooms.get(name)
            if room.opened or shared is None:
                continue
            if shared.draw is not None:
                open_room(room, draw_of(shared.draw))
                continue
            end = shared.prequeue_end
            if end is None:
                if wall < (room.config.opens_at_s or 0.0):
                    continue
                end = self.store.close_prequeue(name)
                log.info("pre-queue closed room=%s end=%s", name, end)
            if name not in self._given_back:
                self.store.give_back({name: room.take_back()})
                self._given_back[name] = now
            # The grace runs from this host's first sight of the closing:
            # the other hosts see it within a step or two of that.
            grace_ends = self._given_back[name] + self.settings.draw_grace_s
            if now < grace_ends or not self.lease.leading(now):
                continue
            skips = [gap for gap in shared.skips if gap[0] <= end]
            document = draw_document(prequeue_of(end, skips))
            stored = self.store.store_draw(self.lease.token, name, document, end)
            if stored is not None:
                open_room(room, draw_of(stored))

    def _claims_to_push(self) -> dict[str, int]:
        return {
            name: room.claimed - self._claims_base.get(name, room.claimed)
            for name, room in self.rooms.items()
        }

    def _apply(self, reading: Reading, pushed: Mapping[str, int]) -> None:
        lost = {}
        for name, shared in reading.rooms.items():
            room = self.rooms.get(name)
            if room is None:
                continue
            known = self._taken.get(name, 0)
            if shared.taken < known:
                lost[name] = known
                log.warning(
                    "store lost positions, carrying on above the highest known "
                    "room=%s store=%s known=%s",
                    name,
                    shared.taken,
                    known,
                )
            self._taken[name] = max(known, shared.taken)
            # After the draw, positions below the pre-queue's end are ranked
            # by it: a late give-back there is no skip.
            drawn = room.prequeue.end if room.prequeue else 0
            for first, end in shared.skips:
                if first > drawn and (first, end) not in room.skips:
                    room.skip(first, end)
            room.follow(shared.serving)
            # The total includes what this step pushed: the local count as
            # it was when the step read it.
            counted = self._claims_base.get(name, room.claimed) + pushed[name]
            room.merge_claims(counted, shared.claimed)
            self._claims_base[name] = shared.claimed
            room.set_shared(
                cluster_next=self._taken[name] + 1,
                admitted=shared.admitted,
                stale=False,
                joins_held=False,
            )
        if lost:
            # Taking nothing above the floor puts the counter back at once.
            self.store.take_blocks(dict.fromkeys(lost, 0), lost)

    def _lead(self, now: float) -> None:
        plan = self.ticker.plan(now)
        proposals = {
            room.name: (room.serving_after(count), count)
            for room, count in plan.items()
            if count > 0
        }
        if not proposals:
            return
        if self.store.raise_serving(self.lease.token, proposals) < 0:
            log.warning(
                "fenced off, not leading token=%s holder=%s",
                self.lease.token,
                self.lease.holder,
            )
            self.lease.lost()
            self.block.header.leader = 0
            return
        wall = self._wall()
        for room, count in plan.items():
            room.admit(count, wall)

    def _follow(self) -> None:
        # Not leading: keep the policies' history warm from the shared
        # counters, and the ticker's clock current, for a takeover.
        wall = self._wall()
        for room in self.rooms.values():
            self._policy(room).observe(wall)
            room.clear_next_bucket(wall)
        self.ticker.last = self._step_tick - TICK_INTERVAL_S

    def _fetch_blocks(self) -> None:
        sizes = {
            name: self._next_block_size(room)
            for name, room in self.rooms.items()
            if not room.block_queued
        }
        if not sizes:
            return
        blocks = self.store.take_blocks(sizes, self._taken)
        for name, (first, end) in blocks.items():
            self._taken[name] = max(self._taken.get(name, 0), end - 1)
            self.rooms[name].offer_block(first, end)

    def _next_block_size(self, room: Room) -> int:
        """The sizer's answer from the joins since this room's last fetch."""
        now = (room.joins, room.joins_refused)
        joins, refused = self._demand_from.get(room.name, now)
        self._demand_from[room.name] = now
        size = self._sizer(room.name).next(
            self._join_rate.get(room.name, 0.0), now[0] - joins, now[1] - refused
        )
        return max(self.settings.fallback_positions, size)

    def _sizer(self, name: str) -> BlockSizer:
        sizer = self._sizers.get(name)
        if sizer is None:
            settings = self.settings
            sizer = self._sizers[name] = BlockSizer(
                settings.block_ahead_s, settings.block_min, settings.block_max
            )
        return sizer

    def _sync_overrides(self, version: int, now: float) -> None:
        """Carry admin changes both ways: ours to Redis, others' to our file.

        The last change written wins, whichever host it was made on.
        """
        generation = int(self.block.header.generation)
        if generation != self._seen_generation:
            self._seen_generation = generation
            self._share_overrides()
            self._reconfigure_from_source(now)
            return
        if version == self._overrides_version:
            return
        version, rooms = self.store.pull_overrides()
        if not version:
            # Nothing shared yet: this host's changes, if any, start it.
            if self.overrides.load():
                self._share_overrides()
            else:
                self._overrides_version = 0
            return
        with self.overrides.editing() as stored:
            stored.clear()
            stored.update(rooms)
        self._overrides_version = version
        # Slots first, then the announcement, so workers find every room.
        self._reconfigure_from_source(now)
        with self.block.lock:
            self.block.header.generation += 1
        self._seen_generation = int(self.block.header.generation)
        log.info("room changes received version=%s", version)

    def _share_overrides(self) -> None:
        self._overrides_version = self.store.push_overrides(self.overrides.load())
        log.info("room changes shared version=%s", self._overrides_version)

    def _reconfigure_from_source(self, now: float) -> None:
        if self.rooms_source is not None:
            self.reconfigure(self.rooms_source(), now)

    def _unreachable(self, now: float, exc: Exception) -> None:
        retry_s = self.backoff.failed(now)
        self.failures = 1 if self.reachable else self.failures + 1
        self.reachable = False
        self.lease.lost()
        self.block.header.store_unreachable = 1
        self.block.header.leader = 0
        joins_held = self.settings.fallback_positions == 0
        for room in self.rooms.values():
            room.mark_stale(joins_held)
        # One line per attempt: the back-off bounds them to one every
        # redis.reconnect_max_s.
        level = logging.WARNING if self.failures == 1 else logging.INFO
        log.log(
            level,
            "store unreachable attempts=%s error=%s retry_in_s=%.1f",
            self.failures,
            exc,
            retry_s,
        )


def make_steward(
    config: Config,
    rooms: Mapping[str, RoomConfig],
    block: SharedBlock,
    now: float,
    *,
    store: RedisStore | None = None,
) -> Steward:
    """The steward the configured backend needs."""
    url = config.server.redis_url
    if url is None:
        return Steward(
            rooms, block, config.state_dir, now, session_s=config.tokens.access_ttl_s
        )
    return RedisSteward(
        rooms,
        block,
        config.state_dir,
        now,
        store or RedisStore(url, config.redis),
        session_s=config.tokens.access_ttl_s,
    )
