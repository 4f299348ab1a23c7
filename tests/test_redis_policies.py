"""Capacity mode and pre-queues shared by two stewards through a real Redis."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from tests import test_redisbackend
from tests.redisproc import RedisServer
from tests.serverproc import wait_for
from wr.cluster import draw_document
from wr.config import RedisConfig, RoomConfig
from wr.draw import Draw, Prequeue
from wr.policy import CLAIM_GRACE_S
from wr.redisbackend import BYPASS_RANGE_BITS, InsidePush, RedisSteward, RedisStore
from wr.room import CLAIM_WINDOW, Room
from wr.shm import INSIDE_BUCKET_S, SharedBlock

DEADLINE_S = 30.0
SETTINGS = RedisConfig(
    lease_ms=600,
    reconnect_min_s=0.01,
    reconnect_max_s=0.05,
    block_min=4,
    block_max=4,
    draw_grace_s=0.05,
)
SESSION_S = 600.0
# A fixed wall clock, moved by the tests: a bucket boundary is far away.
START = 1_700_000_005.0
OPENS_AT = "2027-01-15T08:00:00+00:00"


# The store's other tests' fixtures: one Redis per module, emptied per test.
server = test_redisbackend.server
url = test_redisbackend.url
join = test_redisbackend.join
room = test_redisbackend.room
step = test_redisbackend.step


class Wall:
    def __init__(self, at: float = START) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def steward(
    tmp_path: Path, url: str, name: str, config: RoomConfig, wall: Wall
) -> RedisSteward:
    state_dir = tmp_path / name
    state_dir.mkdir(exist_ok=True)
    store = RedisStore(url, SETTINGS, holder=name)
    return RedisSteward(
        {"default": config},
        SharedBlock(CLAIM_WINDOW // 8),
        state_dir,
        time.monotonic(),
        store,
        session_s=SESSION_S,
        wall=wall,
    )


def until(what: str, condition: object, *stewards: RedisSteward) -> None:
    assert callable(condition)

    def check() -> bool:
        step(*stewards)
        return bool(condition())

    wait_for(check, DEADLINE_S, what)


# Capacity mode.

CAPACITY = RoomConfig(rate_per_minute=0, max_active=10)


@pytest.fixture
def pair(tmp_path: Path, url: str) -> tuple[RedisSteward, RedisSteward, Wall]:
    wall = Wall()
    a = steward(tmp_path, url, "a", CAPACITY, wall)
    b = steward(tmp_path, url, "b", CAPACITY, wall)
    step(a, b)
    assert a.store.raise_serving(a.lease.token, {"default": (10, 10)}) == 1
    until("serving 10 on both", lambda: room(b).serving == 10, a, b)
    # Those admissions are then older than the claim grace: the policy no
    # longer keeps places for them, and counts only the people inside.
    wall.at += CLAIM_GRACE_S + INSIDE_BUCKET_S
    return a, b, wall


def inside(of: RedisSteward, wall: Wall) -> int:
    return room(of).active(wall(), SESSION_S)


def test_people_inside_are_counted_across_hosts(
    pair: tuple[RedisSteward, RedisSteward, Wall],
) -> None:
    a, b, wall = pair
    assert room(a).claim(1, wall())
    assert room(b).claim(2, wall())
    assert room(b).claim(3, wall())
    until("three inside", lambda: inside(a, wall) == inside(b, wall) == 3, a, b)
    # The leader's decision sees the cluster: 10 places, 3 taken.
    assert a.policies["default"].free_capacity(wall()) == 7
    # So do the workers of every host (their /metrics), through the slot.
    slot = a.block.find("default")
    assert slot is not None
    assert Room(CAPACITY, slot).active(wall(), SESSION_S) == 3


def test_a_claim_seen_on_one_host_is_not_counted_again_on_another(
    pair: tuple[RedisSteward, RedisSteward, Wall],
) -> None:
    a, b, wall = pair
    assert room(a).claim(4, wall())
    until("the claim known to b", lambda: not room(b).claim(4, wall()), a, b)
    step(a, b)
    assert inside(a, wall) == inside(b, wall) == 1


def test_a_leave_on_another_host_frees_the_place_exactly_once(
    pair: tuple[RedisSteward, RedisSteward, Wall],
) -> None:
    a, b, wall = pair
    for position in (1, 2):
        assert room(a).claim(position, wall())
    until("two inside", lambda: inside(b, wall) == 2, a, b)

    assert room(b).leave(1, wall(), wall() + 5, SESSION_S)
    until("the place freed", lambda: inside(a, wall) == inside(b, wall) == 1, a, b)

    # Again, at either host: nothing more is freed.
    assert not room(b).leave(1, wall(), wall() + 5, SESSION_S)
    assert not room(a).leave(1, wall(), wall() + 5, SESSION_S)
    for _ in range(5):
        step(a, b)
    assert inside(a, wall) == inside(b, wall) == 1


def test_a_leave_on_a_third_host_is_applied_once_by_the_host_that_counted(
    tmp_path: Path,
    url: str,
    pair: tuple[RedisSteward, RedisSteward, Wall],
) -> None:
    a, b, wall = pair
    c = steward(tmp_path, url, "c", CAPACITY, wall)
    assert room(a).claim(5, wall())
    until("c sees serving", lambda: room(c).serving == 10, a, b, c)
    assert room(b).leave(5, wall(), wall(), SESSION_S)
    assert room(c).leave(5, wall(), wall(), SESSION_S)
    until("the place freed", lambda: inside(b, wall) == 0, a, b, c)
    for _ in range(5):
        step(a, b, c)
    assert inside(a, wall) == inside(b, wall) == inside(c, wall) == 0


def test_people_inside_leave_the_count_when_their_session_ends(
    pair: tuple[RedisSteward, RedisSteward, Wall], server: RedisServer
) -> None:
    a, b, wall = pair
    assert room(b).claim(6, wall())
    until("one inside", lambda: inside(a, wall) == 1, a, b)
    wall.at += SESSION_S + 2 * INSIDE_BUCKET_S
    until("the session over", lambda: inside(a, wall) == 0, a, b)
    # Old buckets are dropped from Redis, not kept for ever.
    with server.client() as client:
        assert client.hlen("wr:room:default:inside") == 0


def test_an_inside_write_repeated_after_a_lost_reply_counts_once(
    tmp_path: Path, url: str
) -> None:
    store = RedisStore(url, SETTINGS, holder="x")
    push = InsidePush(oldest=0, buckets={7: 2}, own=2, claims=(), leaves=(), after=b"0")
    for _ in range(2):
        reading = store.sync({"default": 0}, {"default": 0}, 600, {"default": push})
    assert reading.rooms["default"].inside == 2
    other = dataclasses.replace(push, buckets={7: 1}, own=1)
    reading = RedisStore(url, SETTINGS, holder="y").sync(
        {"default": 0}, {"default": 0}, 600, {"default": other}
    )
    assert reading.rooms["default"].inside == 3


def test_bypass_numbers_differ_between_hosts_and_a_foreign_leave_frees_nothing(
    pair: tuple[RedisSteward, RedisSteward, Wall],
) -> None:
    a, b, wall = pair
    first = room(a).count_inside(wall())
    second = room(b).count_inside(wall())
    assert first != second
    assert abs(first - second) >= 1 << BYPASS_RANGE_BITS
    until("two inside", lambda: inside(a, wall) == 2, a, b)
    # The leave of a's admission, sent to b, finds nothing of b's to free.
    assert not room(b).leave(-first, wall(), wall(), SESSION_S)
    assert room(a).leave(-first, wall(), wall(), SESSION_S)
    until("one inside", lambda: inside(b, wall) == 1, a, b)


# Pre-queues.

PREQUEUE = RoomConfig(rate_per_minute=0, opens_at=OPENS_AT)


def opening(pair: tuple[RedisSteward, RedisSteward], wall: Wall) -> None:
    assert PREQUEUE.opens_at_s is not None
    wall.at = PREQUEUE.opens_at_s + 1
    until("both open", lambda: room(pair[0]).opened and room(pair[1]).opened, *pair)


def test_a_prequeue_opens_once_with_one_draw_for_every_host(
    tmp_path: Path, url: str, server: RedisServer
) -> None:
    wall = Wall(START)
    a = steward(tmp_path, url, "a", PREQUEUE, wall)
    b = steward(tmp_path, url, "b", PREQUEUE, wall)
    # Interleaved: each host leaves part of its blocks unused.
    early = [join(one) for _ in range(5) for one in (a, b)]
    step(a, b)
    assert not room(a).opened
    assert not room(b).opened

    opening((a, b), wall)
    drawn_a, drawn_b = room(a).prequeue, room(b).prequeue
    assert drawn_a is not None
    assert drawn_a == drawn_b
    # The unused block remainders are gaps, not people.
    assert drawn_a.draw.size == len(early)
    assert drawn_a.gaps
    assert all(
        not first <= position < end for position in early for first, end in drawn_a.gaps
    )
    ranks = sorted(room(a).rank(p) for p in early)
    assert ranks == list(range(1, len(early) + 1))
    assert [room(b).rank(p) for p in early] == [room(a).rank(p) for p in early]

    # After the opening: first come, first served, behind the pre-queue.
    late = [join(a) for _ in range(3)]
    assert [room(a).rank(p) for p in late] == sorted(room(a).rank(p) for p in late)
    assert min(room(b).rank(p) for p in late) > len(early)

    # A host that starts later adopts the stored draw.
    c = steward(tmp_path, url, "c", PREQUEUE, wall)
    until("c open", lambda: room(c).opened, a, b, c)
    assert room(c).prequeue == drawn_a


def test_the_prequeue_lets_everyone_in_once_in_the_drawn_order(
    tmp_path: Path, url: str
) -> None:
    wall = Wall(START)
    fast = dataclasses.replace(PREQUEUE, rate_per_minute=600)
    a = steward(tmp_path, url, "a", fast, wall)
    b = steward(tmp_path, url, "b", fast, wall)
    # Three of each host's block of four: one left over on each.
    early = [join(one) for _ in range(3) for one in (a, b)]
    opening((a, b), wall)
    drawn = room(a).prequeue
    assert drawn is not None
    assert drawn.gaps
    by_rank = sorted(early, key=room(a).rank)

    def in_order() -> bool:
        let_in = [room(b).is_admitted(p) for p in by_rank]
        # Never someone let in before a person drawn ahead of them.
        assert let_in == sorted(let_in, reverse=True)
        return room(b).serving >= drawn.end

    until("everyone let in", in_order, a, b)
    # The gaps were passed over without spending admissions on them.
    assert room(b).serving - room(b).admitted >= drawn.end - drawn.draw.size


def test_the_draw_is_stored_once_and_only_by_the_leader(
    tmp_path: Path, url: str
) -> None:
    wall = Wall(START)
    a = steward(tmp_path, url, "a", PREQUEUE, wall)
    b = steward(tmp_path, url, "b", PREQUEUE, wall)
    step(a, b)
    token = a.lease.token
    first = draw_document(Prequeue(Draw.new(3)))
    second = draw_document(Prequeue(Draw.new(3)))
    assert b.store.store_draw(b.lease.token or token + 1, "default", first, 3) is None
    assert a.store.store_draw(token, "default", first, 3) == first
    assert a.store.store_draw(token, "default", second, 3) == first


def test_the_prequeue_closes_once_at_the_first_host_to_look(
    tmp_path: Path, url: str, server: RedisServer
) -> None:
    store = RedisStore(url, SETTINGS, holder="x")
    with server.client() as client:
        client.set("wr:room:default:next", 12)
    assert store.close_prequeue("default") == 12
    with server.client() as client:
        client.set("wr:room:default:next", 20)
    assert store.close_prequeue("default") == 12


def test_the_event_stream_stays_bounded(url: str, server: RedisServer) -> None:
    settings = dataclasses.replace(SETTINGS, events_kept=100)
    store = RedisStore(url, settings, holder="x")
    for rank in range(1, 1001):
        push = InsidePush(
            oldest=0, buckets={}, own=0, claims=(rank,), leaves=(), after=b"0"
        )
        store.sync({"default": 0}, {"default": 0}, 600, {"default": push})
    with server.client() as client:
        # Trimmed by whole nodes of the stream: about the number asked.
        assert client.xlen("wr:room:default:events") < 300
