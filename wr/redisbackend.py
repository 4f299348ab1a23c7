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
  reload, as the memory backend does for its own workers.

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
on the serving loop itself, bounded by ``redis.timeout_s``.
Capacity mode and pre-queues keep per-host state and are refused with this
backend.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from wr.admin import OverridesStore
from wr.cluster import Backoff, BlockSizer, Lease
from wr.config import Config, RedisConfig, RoomConfig
from wr.room import TICK_INTERVAL_S, Room
from wr.shm import SharedBlock
from wr.state import RoomState
from wr.steward import RATE_WINDOW_S, Steward

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


@dataclass(frozen=True, slots=True)
class Reading:
    token: int
    overrides_version: int
    rooms: dict[str, RoomReading]


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
        self, claims: Mapping[str, int], serving: Mapping[str, int], lease_ms: int
    ) -> Reading:
        """Renew or take the lease, push claims, read every room's counters.

        ``claims[room]`` is how many claims this host has seen in all; each
        host writes its own field of a hash and the total is their sum, so
        a write repeated after a lost reply counts nothing twice.
        ``serving[room]`` is the last value known: skips it has passed are
        dropped (serving only rises, so that is safe from any host).
        """
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
            )
            # A skip is scored by its end: passed once end - 1 <= serving.
            pipe.zremrangebyscore(skips, "-inf", serving.get(name, 0) + 1)
            pipe.zrange(skips, 0, -1)
        replies = pipe.execute()
        rooms = {}
        for i, name in enumerate(claims):
            at = 2 + 5 * i
            shared, admitted, taken = (_int(v) for v in replies[at + 2])
            rooms[name] = RoomReading(
                shared,
                admitted,
                sum(int(v) for v in replies[at + 1]),
                taken,
                tuple(sorted(_range(member) for member in replies[at + 4])),
            )
        return Reading(int(replies[0]), _int(replies[1]), rooms)

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


def _int(value: Any) -> int:
    return 0 if value is None else int(value)


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
        self._joins_from: dict[str, int] = {}
        self._joins_rate: dict[str, float] = {}
        self._sizers: dict[str, BlockSizer] = {}
        # The highest position known taken, per room: a floor for the
        # counter should Redis come back without its data.
        self._taken: dict[str, int] = {}
        # Joins and refusals at each room's last fetch.
        self._demand_from: dict[str, tuple[int, int]] = {}
        self._joins_started = now
        self._step_tick = now
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
        reading = self.store.sync(own, serving, self.settings.lease_ms)
        self._own_claims.update(own)
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

        if now >= self._step_tick:
            self._step_tick = now + TICK_INTERVAL_S
            if self.lease.leading(now):
                self._lead(now)
            else:
                self._follow()
        self.block.header.leader = int(self.lease.leading(now))
        self._measure_joins(now)
        self._publish_pow(self._joins_rate)
        self._fetch_blocks()

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
            for first, end in shared.skips:
                if (first, end) not in room.skips:
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
        self.ticker.last = self._step_tick - TICK_INTERVAL_S

    def _measure_joins(self, now: float) -> None:
        elapsed = now - self._joins_started
        if elapsed < RATE_WINDOW_S:
            return
        for name, room in self.rooms.items():
            joined = room.joins - self._joins_from.get(name, room.joins)
            self._joins_rate[name] = joined / elapsed
            self._joins_from[name] = room.joins
        self._joins_started = now

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
            self._joins_rate.get(room.name, 0.0), now[0] - joins, now[1] - refused
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
