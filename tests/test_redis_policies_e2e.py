"""Capacity mode and pre-queues on two ``wr serve`` hosts sharing one Redis."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.redisproc import RedisServer
from tests.serverproc import WrServer, wait_for
from tests.test_redis_e2e import BLOCK, DEADLINE_S, admin_patch, host, join, status
from wr.cluster import fairness_bound

MAX_ACTIVE = 2
# How long the tests watch that a limit holds: twenty of the ticker's ticks
# and several steps of both hosts, under a loaded machine.
WATCH_S = 2.0
FAR_FUTURE = "2099-01-01T00:00:00Z"


def config(url: str, room: str) -> str:
    return f"""
[server]
workers = 1
backend = "{url}"

[redis]
lease_ms = 1000
block_min = {BLOCK}
block_max = {BLOCK}
draw_grace_s = 0.5

[rooms.default]
target_url = "/inside"
{room}
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def two_hosts(tmp_path: Path, store: RedisServer, room: str) -> list[WrServer]:
    first = host(tmp_path, "a", config(store.url, room)).start()
    second = host(tmp_path, "b", config(store.url, room))
    # One key ring for the cluster: a token from one host is good on another.
    second.state_dir.mkdir(mode=0o700)
    keys = second.state_dir / "keys.json"
    keys.write_bytes((first.state_dir / "keys.json").read_bytes())
    keys.chmod(0o600)
    return [first, second.start()]


@pytest.fixture
def capacity_hosts(tmp_path: Path, store: RedisServer) -> Iterator[list[WrServer]]:
    started = two_hosts(
        tmp_path,
        store,
        f"rate_per_minute = 6000\nmax_active = {MAX_ACTIVE}\nsession_minutes = 60",
    )
    yield started
    for wr in started:
        wr.stop()


@pytest.fixture
def prequeue_hosts(tmp_path: Path, store: RedisServer) -> Iterator[list[WrServer]]:
    started = two_hosts(
        tmp_path, store, f'rate_per_minute = 0\nopens_at = "{FAR_FUTURE}"'
    )
    yield started
    for wr in started:
        wr.stop()


class Person:
    """Someone in line, who asks the host ``wr`` (at first, where they joined)."""

    def __init__(self, wr: WrServer) -> None:
        self.wr = wr
        data = join(wr)
        self.position = int(str(data["position"]))
        self.queue_token = data["queue_token"]
        self.access_token: object = None

    def poll(self, wr: WrServer | None = None) -> dict[str, object]:
        answer = status(wr or self.wr, self.queue_token)
        if answer["state"] == "admitted":
            self.access_token = answer["access_token"]
        return answer

    def leave(self, wr: WrServer) -> None:
        answer = httpx.post(
            f"{wr.base}/api/v1/rooms/default/leave",
            headers={"authorization": f"Bearer {self.access_token}"},
            timeout=5.0,
        )
        assert answer.status_code == 204, answer.text


def admitted(people: list[Person]) -> list[Person]:
    """Everyone let in so far (each asks, so each claim is counted)."""
    return [p for p in people if p.access_token or p.poll()["state"] == "admitted"]


def watch_at_most(people: list[Person], inside: int) -> None:
    """For WATCH_S, never more than ``inside`` people let in."""
    until = time.monotonic() + WATCH_S
    while time.monotonic() < until:
        assert len(admitted(people)) <= inside


def test_capacity_holds_across_hosts_and_a_leave_elsewhere_frees_a_place(
    capacity_hosts: list[WrServer],
) -> None:
    a, b = capacity_hosts
    people = sorted(
        (Person(wr) for _ in range(3) for wr in (a, b)), key=lambda p: p.position
    )
    # Neighbours in line ask different hosts, so claims come to both.
    for i, person in enumerate(people):
        person.wr = (a, b)[i % 2]

    # Claims on both hosts fill the room once, not once per host.
    def room_filled() -> list[Person] | None:
        got = admitted(people)
        return got if len(got) >= MAX_ACTIVE else None

    first = wait_for(room_filled, DEADLINE_S, "the first admissions")
    assert len(first) == MAX_ACTIVE
    assert {p.wr for p in first} == {a, b}
    watch_at_most(people, MAX_ACTIVE)

    # A person who claimed at one host leaves through the other.
    leaver = first[0]
    other = b if leaver.wr is a else a
    leaver.leave(other)
    wait_for(
        lambda: len(admitted(people)) == MAX_ACTIVE + 1,
        DEADLINE_S,
        "the next person let in",
    )
    watch_at_most(people, MAX_ACTIVE + 1)

    # The same leave again, at either host, frees nothing more.
    leaver.leave(leaver.wr)
    leaver.leave(other)
    watch_at_most(people, MAX_ACTIVE + 1)


def room_info(wr: WrServer) -> dict[str, object]:
    answer = httpx.get(f"{wr.base}/api/v1/rooms/default", timeout=5.0)
    assert answer.status_code == 200, answer.text
    data: dict[str, object] = answer.json()
    return data


def opened(wr: WrServer) -> Callable[[], dict[str, object] | None]:
    """The room as ``wr`` publishes it, once it has opened with a draw."""

    def info() -> dict[str, object] | None:
        data = room_info(wr)
        return data if data["draw_seed"] else None

    return info


def rank(person: Person, wr: WrServer) -> int:
    """The person's place in the admission order, as ``wr`` tells it."""
    answer = person.poll(wr)
    assert answer["state"] == "waiting", answer
    return int(str(answer["ahead"])) + 1


def test_a_prequeue_on_two_hosts_opens_once_with_one_draw(
    prequeue_hosts: list[WrServer], store: RedisServer
) -> None:
    a, b = prequeue_hosts
    # Interleaved joins leave part of each host's block unused.
    early = [Person(wr) for _ in range(5) for wr in (a, b)]
    assert all(p.poll()["state"] == "prequeue" for p in early)

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert admin_patch(a, {"opens_at": now}).status_code == 200
    infos = [
        wait_for(opened(wr), DEADLINE_S, f"the opening at {wr.base}") for wr in (a, b)
    ]

    # One draw, published alike by both hosts and stored once in Redis.
    assert infos[0]["draw_seed"] == infos[1]["draw_seed"]
    assert infos[0]["draw_gaps"] == infos[1]["draw_gaps"]
    assert infos[0]["prequeue_size"] == infos[1]["prequeue_size"] == len(early)
    with store.client() as client:
        stored = client.get("wr:room:default:draw")
    assert stored is not None
    assert str(infos[0]["draw_seed"]).encode() in stored

    # Both hosts rank everyone the same; the ranks are a permutation.
    ranks = {p.position: rank(p, a) for p in early}
    assert {p.position: rank(p, b) for p in early} == ranks
    assert sorted(ranks.values()) == list(range(1, len(early) + 1))
    assert list(ranks.values()) != list(range(1, len(early) + 1))

    # After the opening, first come first served, behind the pre-queue.
    late = [Person(wr) for wr in (a, b, a, b)]
    late_ranks = [rank(p, p.wr) for p in late]
    assert min(late_ranks) > len(early)
    overtaken = max(
        sum(1 for later in late_ranks[i + 1 :] if later < mine)
        for i, mine in enumerate(late_ranks)
    )
    assert overtaken <= fairness_bound(2, BLOCK)

    # Nobody is lost: everyone is let in once the line moves.
    assert admin_patch(b, {"rate_per_minute": 6000}).status_code == 200
    for person in early + late:
        wait_for(let_in(person), DEADLINE_S, f"position {person.position} let in")


def let_in(person: Person) -> Callable[[], bool]:
    return lambda: person.poll()["state"] == "admitted"
