"""Two stewards in one process against a real ``redis-server``: the store's side."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.redisproc import RedisServer
from tests.serverproc import free_port, wait_for
from wr.admin import OverridesStore, effective_rooms
from wr.config import RedisConfig, RoomConfig, load_config
from wr.redisbackend import RedisSteward, RedisStore
from wr.room import CLAIM_WINDOW, Room
from wr.shm import SharedBlock

DEADLINE_S = 30.0
SETTINGS = RedisConfig(lease_ms=600, reconnect_min_s=0.01, reconnect_max_s=0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    store = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield store
    store.stop()


@pytest.fixture
def url(server: RedisServer) -> str:
    with server.client() as client:
        client.flushdb()
    return server.url


def steward(
    tmp_path: Path,
    url: str,
    name: str,
    *,
    rate: float = 0.0,
    settings: RedisConfig = SETTINGS,
) -> RedisSteward:
    state_dir = tmp_path / name
    state_dir.mkdir(exist_ok=True)
    rooms = {"default": RoomConfig(rate_per_minute=rate)}
    store = RedisStore(url, settings, holder=name)
    return RedisSteward(
        rooms, SharedBlock(CLAIM_WINDOW // 8), state_dir, time.monotonic(), store
    )


def room(of: RedisSteward) -> Room:
    return of.rooms["default"]


def step(*stewards: RedisSteward) -> None:
    for one in stewards:
        one.step(time.monotonic())


def join(of: RedisSteward) -> int:
    def joined() -> int | None:
        position = room(of).join()
        if position is None:
            step(of)
        return position

    return wait_for(joined, DEADLINE_S, "a position")


def test_one_steward_leads_and_the_other_follows(tmp_path: Path, url: str) -> None:
    a = steward(tmp_path, url, "a")
    b = steward(tmp_path, url, "b")
    step(a, b)
    now = time.monotonic()
    assert a.lease.leading(now)
    assert not b.lease.leading(now)
    # Shown to the workers' /metrics through the shared block.
    assert a.block.header.leader == 1
    assert b.block.header.leader == 0
    assert a.block.header.store_unreachable == 0


def test_positions_are_unique_across_hosts_and_taken_in_blocks(
    tmp_path: Path, url: str, server: RedisServer
) -> None:
    a = steward(tmp_path, url, "a")
    b = steward(tmp_path, url, "b")
    positions = [join(one) for _ in range(30) for one in (a, b)]
    assert len(set(positions)) == len(positions)
    with server.client() as client:
        taken = int(client.get("wr:room:default:next") or 0)
    # Every position taken is handed out or still held by a host: its
    # current range and its queued block.
    held = 0
    for one in (a, b):
        counters = one.block.find("default")
        assert counters is not None
        c = counters.counters
        held += c.reserved - c.next_position + c.block_to - c.block_from
    assert taken == len(positions) + held


def test_only_the_leader_moves_serving_and_followers_see_it(
    tmp_path: Path, url: str, server: RedisServer
) -> None:
    a = steward(tmp_path, url, "a", rate=6000)
    b = steward(tmp_path, url, "b", rate=6000)
    positions = [join(one) for _ in range(5) for one in (a, b)]
    last = max(positions)

    def everyone_in() -> bool:
        step(a, b)
        return room(a).serving >= last and room(b).serving >= last

    wait_for(everyone_in, DEADLINE_S, "serving on both hosts")
    with server.client() as client:
        assert int(client.get("wr:room:default:serving") or 0) >= last
        admitted = int(client.get("wr:room:default:admitted") or 0)
    step(a, b)
    assert room(b).admitted == room(a).admitted == admitted


def test_a_paused_leader_cannot_move_serving_after_losing_the_lease(
    tmp_path: Path, url: str, server: RedisServer
) -> None:
    a = steward(tmp_path, url, "a", rate=6000)
    b = steward(tmp_path, url, "b", rate=6000)
    for _ in range(5):
        join(a)
    step(a, b)
    old_token = a.lease.token
    assert old_token > 0

    # a is paused past its lease: Redis lets the key go, b takes over.
    with server.client() as client:
        client.delete("wr:lease")
    step(b)
    assert b.lease.token == old_token + 1
    with server.client() as client:
        serving = int(client.get("wr:room:default:serving") or 0)

    # a wakes up believing it still leads, and proposes more admissions.
    assert a.store.raise_serving(old_token, {"default": (serving + 50, 50)}) == -1
    a.lease.valid_until = time.monotonic() + 60
    a._lead(time.monotonic() + 1.0)
    assert not a.lease.leading(time.monotonic())
    with server.client() as client:
        assert int(client.get("wr:room:default:serving") or 0) == serving


def test_serving_is_only_ever_raised(
    tmp_path: Path, url: str, server: RedisServer
) -> None:
    a = steward(tmp_path, url, "a")
    step(a)
    token = a.lease.token
    assert a.store.raise_serving(token, {"default": (10, 10)}) == 1
    assert a.store.raise_serving(token, {"default": (4, 4)}) == 0
    with server.client() as client:
        assert client.get("wr:room:default:serving") == b"10"
        assert client.get("wr:room:default:admitted") == b"10"


def test_another_host_takes_over_once_the_lease_expires(
    tmp_path: Path, url: str
) -> None:
    a = steward(tmp_path, url, "a")
    b = steward(tmp_path, url, "b")
    step(a, b)
    assert a.lease.token
    assert not b.lease.token

    # a stops renewing (its host died); b keeps stepping.
    def b_leads() -> bool:
        step(b)
        return b.lease.leading(time.monotonic())

    wait_for(b_leads, DEADLINE_S, "b to take the lease")
    assert b.lease.token == a.lease.token + 1


def test_claims_are_counted_once_across_hosts(tmp_path: Path, url: str) -> None:
    a = steward(tmp_path, url, "a")
    b = steward(tmp_path, url, "b")
    step(a, b)
    token = a.lease.token
    assert a.store.raise_serving(token, {"default": (10, 10)}) == 1
    step(a, b)
    assert room(a).claim(1)
    assert room(a).claim(2)
    assert room(b).claim(3)

    def merged() -> bool:
        step(a, b)
        return room(a).claimed == room(b).claimed == 3

    wait_for(merged, DEADLINE_S, "the cluster's claims on both hosts")
    step(a, b)
    assert room(a).claimed == room(b).claimed == 3


def test_room_changes_travel_between_hosts(tmp_path: Path, url: str) -> None:
    config = load_config(env={})
    a = steward(tmp_path, url, "a")
    b = steward(tmp_path, url, "b")
    for one in (a, b):
        store = OverridesStore(one.state_dir)
        one.rooms_source = lambda store=store: effective_rooms(config, store.load())
    step(a, b)

    with OverridesStore(a.state_dir).editing() as rooms:
        rooms["default"] = {"rate_per_minute": 7.0, "paused": True}
    with a.block.lock:
        a.block.header.generation += 1
    generation = int(b.block.header.generation)

    def received() -> bool:
        step(a, b)
        return room(b).config.paused

    wait_for(received, DEADLINE_S, "the change on the other host")
    assert room(b).config.rate_per_minute == 7.0
    assert OverridesStore(b.state_dir).load()["default"] == {
        "rate_per_minute": 7.0,
        "paused": True,
    }
    # b's workers are told through their shared block.
    assert int(b.block.header.generation) > generation


def test_an_unreachable_store_makes_rooms_stale_and_holds_joins(
    tmp_path: Path,
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    a = steward(tmp_path, dead, "a")
    assert not a.reachable
    assert room(a).stale
    assert room(a).joins_held
    assert room(a).join() is None
    assert a.block.header.store_unreachable == 1
    # Attempts back off instead of hitting the store every step.
    assert not a.backoff.due(time.monotonic() - 1.0)
    for _ in range(3):
        a.step(a.backoff.next_at)
    assert a.failures == 4
    assert a.backoff.delay_s == SETTINGS.reconnect_max_s


def test_a_store_that_comes_back_clears_the_stale_flag(
    tmp_path: Path, url: str, server: RedisServer
) -> None:
    a = steward(tmp_path, url, "a")
    join(a)
    assert not room(a).stale
    # Lose the connection: a client pointed at a port nobody listens on.
    good = a.store
    a.store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", SETTINGS, "a")
    step(a)
    assert room(a).stale
    a.store = good
    a.step(a.backoff.next_at)
    assert not room(a).stale
    assert not room(a).joins_held


def test_with_fallback_positions_joins_go_on_while_stale(
    tmp_path: Path, url: str
) -> None:
    settings = RedisConfig(lease_ms=600, fallback_positions=20, reconnect_min_s=0.01)
    a = steward(tmp_path, url, "a", settings=settings)
    first = join(a)
    a.store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", settings, "a")
    step(a)
    assert room(a).stale
    assert not room(a).joins_held
    more = [room(a).join() for _ in range(10)]
    assert None not in more
    assert len({first, *more}) == 11


def test_a_flash_crowd_costs_one_round_trip_per_block(tmp_path: Path, url: str) -> None:
    a = steward(tmp_path, url, "a")
    fetched: list[int] = []
    take_blocks = a.store.take_blocks

    def counting(
        sizes: Mapping[str, int], floors: Mapping[str, int]
    ) -> dict[str, tuple[int, int]]:
        fetched.extend(sizes.values())
        return take_blocks(sizes, floors)

    a.store.take_blocks = counting  # type: ignore[method-assign]
    positions: list[int] = []
    refused = 0
    # 100 arrivals between two steps of the steward, 40 times over.
    for _ in range(40):
        for _ in range(100):
            position = room(a).join()
            if position is None:
                refused += 1
            else:
                positions.append(position)
        step(a)
    assert len(set(positions)) == len(positions)
    # Blocks grew to the crowd: far fewer fetches than people, and once
    # grown, nobody turned away.
    assert len(fetched) <= len(positions) / 10
    assert max(fetched) >= 100
    assert refused < 200


def test_a_quiet_room_hands_out_contiguous_positions(tmp_path: Path, url: str) -> None:
    a = steward(tmp_path, url, "a")
    b = steward(tmp_path, url, "b")
    step(a, b)
    positions = []
    for _ in range(10):
        for one in (a, b):
            positions.append(join(one))
            step(a, b)
    # Blocks of one: each host holds one position ahead, so the line is
    # in arrival order with at most one host's held position between.
    assert positions == sorted(positions)
    assert max(positions) - min(positions) < len(positions) + 2


def test_a_redis_that_lost_its_data_is_raised_to_what_the_host_knew(
    tmp_path: Path, url: str, server: RedisServer
) -> None:
    a = steward(tmp_path, url, "a")
    before = [join(a) for _ in range(20)]
    # A Redis restarted without persistence: every counter is gone.
    with server.client() as client:
        client.flushdb()
        # One step puts the counter back, before anyone needs a block.
        step(a)
        assert int(client.get("wr:room:default:next") or 0) >= max(before)
    after = [join(a) for _ in range(20)]
    assert len(set(before + after)) == len(before) + len(after)
    assert min(after) > max(before)


def test_a_clean_stop_gives_unused_positions_back_as_skips(
    tmp_path: Path, url: str, server: RedisServer
) -> None:
    a = steward(tmp_path, url, "a")
    b = steward(tmp_path, url, "b", rate=6000)
    handed = [join(a) for _ in range(3)]
    step(a, b)
    a.final_save()
    assert room(a).join() is None
    with server.client() as client:
        members = client.zrange("wr:room:default:skips", 0, -1)
    unused = sorted(tuple(int(v) for v in m.split(b":")) for m in members)
    assert unused
    assert all(first > max(handed) for first, _ in unused)
    skipped = sum(end - first for first, end in unused)
    last = max(end for _, end in unused) - 1

    def passed() -> bool:
        step(b)
        return room(b).serving >= last

    wait_for(passed, DEADLINE_S, "the new leader to pass the skips")
    with server.client() as client:
        serving = int(client.get("wr:room:default:serving") or 0)
        admitted = int(client.get("wr:room:default:admitted") or 0)
        left = client.zcard("wr:room:default:skips")
    # Nobody held those positions: no admission was spent on them.
    assert serving - admitted == skipped
    # Passed skips are dropped from Redis at the next step.
    assert left >= 0
    step(b)
    with server.client() as client:
        assert client.zcard("wr:room:default:skips") == 0


def test_a_claims_write_repeated_after_a_lost_reply_counts_once(
    tmp_path: Path, url: str
) -> None:
    a = steward(tmp_path, url, "a")
    b = steward(tmp_path, url, "b")
    for _ in range(2):
        a.store.sync({"default": 4}, {"default": 0}, SETTINGS.lease_ms)
    reading = b.store.sync({"default": 3}, {"default": 0}, SETTINGS.lease_ms)
    assert reading.rooms["default"].claimed == 7
