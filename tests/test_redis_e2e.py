"""Several ``wr serve`` hosts sharing rooms through a real ``redis-server``."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.redisproc import RedisServer
from tests.serverproc import WrServer, free_port, wait_for
from wr.cluster import fairness_bound

# Blocks of four positions at most: small enough to see the fairness bound,
# large enough that a test's back-to-back joins rarely outrun a block.
BLOCK = 4
LEASE_MS = 1000
# Generous deadlines: the machine is shared with other test runs.
DEADLINE_S = 30.0


def config(url: str, *, workers: int = 1, rate: int = 600, extra: str = "") -> str:
    return f"""
[server]
workers = {workers}
backend = "{url}"

[redis]
lease_ms = {LEASE_MS}
block_min = {BLOCK}
block_max = {BLOCK}
reconnect_max_s = 0.5
{extra}

[rooms.default]
rate_per_minute = {rate}
target_url = "/inside"
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", durable=True).start()
    yield server
    server.stop()


def host(tmp_path: Path, name: str, text: str) -> WrServer:
    directory = tmp_path / name
    directory.mkdir()
    return WrServer(directory, text)


@pytest.fixture
def hosts(tmp_path: Path, store: RedisServer) -> Iterator[list[WrServer]]:
    started: list[WrServer] = []
    first = host(tmp_path, "a", config(store.url, workers=2, rate=0))
    second = host(tmp_path, "b", config(store.url, rate=0))
    started.append(first.start())
    # One key ring for the cluster: a token from one host is good on another.
    second.state_dir.mkdir(mode=0o700)
    keys = second.state_dir / "keys.json"
    keys.write_bytes((first.state_dir / "keys.json").read_bytes())
    keys.chmod(0o600)
    started.append(second.start())
    yield started
    for wr in started:
        if wr.proc is not None and wr.proc.poll() is None:
            wr.stop()


def join(wr: WrServer) -> dict[str, object]:
    """A new person joins at ``wr``; a 503 for a block in flight is retried."""

    def joined() -> dict[str, object] | None:
        answer = httpx.post(f"{wr.base}/api/v1/rooms/default/join", timeout=5.0)
        if answer.status_code == 503:
            return None
        assert answer.status_code == 200, answer.text
        data: dict[str, object] = answer.json()
        return data

    return wait_for(joined, DEADLINE_S, f"a join at {wr.base}")


def status(wr: WrServer, token: object) -> dict[str, object]:
    answer = httpx.get(
        f"{wr.base}/api/v1/rooms/default/status",
        headers={"authorization": f"Bearer {token}"},
        timeout=5.0,
    )
    assert answer.status_code == 200, answer.text
    data: dict[str, object] = answer.json()
    return data


def wait_state(wr: WrServer, token: object, state: str) -> None:
    wait_for(
        lambda: status(wr, token)["state"] == state,
        DEADLINE_S,
        f"state {state} at {wr.base}",
    )


def wait_stale(wr: WrServer, token: object) -> dict[str, object]:
    """The first status answer flagged stale."""

    def stale() -> dict[str, object] | None:
        answer = status(wr, token)
        return answer if answer.get("stale") is True else None

    return wait_for(stale, DEADLINE_S, f"a stale status at {wr.base}")


def wait_metric(wr: WrServer, name: str, wanted: Callable[[int], bool]) -> None:
    wait_for(lambda: wanted(metric(wr, name)), DEADLINE_S, f"{name} at {wr.base}")


def metric(wr: WrServer, name: str) -> int:
    for line in httpx.get(f"{wr.base}/metrics", timeout=5.0).text.splitlines():
        if line.startswith(f'{name}{{room="default"}}'):
            return int(float(line.split()[-1]))
    raise AssertionError(f"no {name}")


def admin_patch(wr: WrServer, change: dict[str, object]) -> httpx.Response:
    token = (wr.state_dir / "admin.token").read_text().strip()
    return httpx.patch(
        f"http://127.0.0.1:{wr.admin_port}/admin/v1/rooms/default",
        json=change,
        headers={"authorization": f"Bearer {token}"},
        timeout=5.0,
    )


def set_rate(wr: WrServer, rate: int) -> None:
    assert admin_patch(wr, {"rate_per_minute": rate}).status_code == 200


def leader_pid(store: RedisServer) -> int | None:
    with store.client() as client:
        holder = client.get("wr:lease")
    return None if holder is None else int(holder.split(b":")[1])


def test_two_hosts_share_one_line(hosts: list[WrServer], store: RedisServer) -> None:
    a, b = hosts
    people = [(wr, join(wr)) for _ in range(20) for wr in (a, b)]

    # Unique positions, and nobody overtaken by more than the bound.
    positions = [int(str(data["position"])) for _, data in people]
    assert len(set(positions)) == len(positions)
    overtaken = max(
        sum(1 for later in positions[i + 1 :] if later < mine)
        for i, mine in enumerate(positions)
    )
    assert overtaken <= fairness_bound(2, BLOCK)

    # One line: both hosts see the same serving, raised by one ticker.
    set_rate(b, 6000)
    last = max(positions)
    for wr in (a, b):
        wait_metric(wr, "wr_room_serving_position", lambda value: value >= last)
    for wr, data in people:
        wait_state(wr, data["queue_token"], "admitted")

    # Admissions counted once: Redis holds one count, each host shows it.
    with store.client() as client:
        shared_admitted = int(client.get("wr:room:default:admitted") or 0)
        shared_serving = int(client.get("wr:room:default:serving") or 0)
    assert shared_admitted == shared_serving >= last
    for wr in (a, b):
        wait_metric(
            wr, "wr_room_admissions_claimed_total", lambda value: value == len(people)
        )
        assert metric(wr, "wr_room_admissions_available_total") <= shared_admitted


def test_a_person_may_ask_any_host(hosts: list[WrServer]) -> None:
    a, b = hosts
    person = join(a)
    assert status(b, person["queue_token"])["position"] == person["position"]
    set_rate(a, 6000)
    wait_state(b, person["queue_token"], "admitted")


def test_an_admin_change_on_one_host_reaches_the_other(
    hosts: list[WrServer],
) -> None:
    a, b = hosts
    assert admin_patch(a, {"paused": True}).status_code == 200
    person = join(b)
    wait_state(b, person["queue_token"], "paused")


def test_killing_the_leaders_host_hands_the_lease_over(
    tmp_path: Path, store: RedisServer
) -> None:
    a = host(tmp_path, "a", config(store.url, rate=0)).start()
    wait_for(lambda: leader_pid(store) == a.pid, DEADLINE_S, "a to lead")
    b = host(tmp_path, "b", config(store.url, rate=0)).start()
    try:
        person = join(b)
        set_rate(b, 6000)
        a.kill_all()
        wait_for(lambda: leader_pid(store) == b.pid, DEADLINE_S, "b to take over")
        wait_for(
            lambda: "wr_ticker_leader 1.0" in httpx.get(f"{b.base}/metrics").text,
            DEADLINE_S,
            "b to show it leads",
        )
        # Logged in the step that set the metric, before it.
        assert "lease acquired" in b.log.read_text()
        wait_state(b, person["queue_token"], "admitted")
        with store.client() as client:
            assert int(client.get("wr:fence") or 0) >= 2
    finally:
        b.stop()


def test_a_clean_stop_gives_the_lease_and_unused_positions_up(
    tmp_path: Path, store: RedisServer
) -> None:
    a = host(tmp_path, "a", config(store.url)).start()
    wait_for(lambda: leader_pid(store) == a.pid, DEADLINE_S, "a to lead")
    join(a)
    assert a.stop() == 0
    assert leader_pid(store) is None
    # What it held and never handed out is passed over, not admitted.
    with store.client() as client:
        assert client.zcard("wr:room:default:skips") >= 1


def test_restarting_redis_loses_no_position_and_repeats_none(
    hosts: list[WrServer], store: RedisServer
) -> None:
    a, b = hosts
    before = [join(wr) for _ in range(5) for wr in (a, b)]
    serving_before = metric(a, "wr_room_serving_position")

    # Killed, not stopped: the append-only file (fsync always) is all that
    # survives.
    store.stop(signal.SIGKILL)
    for wr, data in zip((a, b) * 5, before, strict=True):
        answer = wait_stale(wr, data["queue_token"])
        assert answer["position"] == data["position"]
    refused = httpx.post(f"{a.base}/api/v1/rooms/default/join", timeout=5.0)
    assert refused.status_code == 503
    assert refused.json()["error"] == "updating"
    assert int(refused.headers["retry-after"]) > 0

    store.start()
    after = [join(wr) for _ in range(5) for wr in (a, b)]
    positions = [int(str(d["position"])) for d in before + after]
    assert len(set(positions)) == len(positions)
    assert "stale" not in status(a, after[0]["queue_token"])
    assert metric(a, "wr_room_serving_position") >= serving_before
    with store.client() as client:
        assert int(client.get("wr:room:default:next") or 0) >= max(positions)


def test_a_host_started_without_redis_answers_and_recovers(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    wr = host(tmp_path, "a", config(url)).start()
    store = RedisServer(tmp_path / "redis")
    try:
        refused = httpx.post(f"{wr.base}/api/v1/rooms/default/join", timeout=5.0)
        assert refused.status_code == 503
        assert refused.json()["error"] == "updating"
        assert "retry-after" in refused.headers
        assert httpx.get(f"{wr.base}/healthz", timeout=5.0).status_code == 200

        store.port = port
        store.start()
        person = join(wr)
        assert person["state"] == "waiting"
        assert "store reachable again" in wr.log.read_text()
        assert wr.proc is not None
        assert wr.proc.poll() is None
    finally:
        wr.stop()
        store.stop()


def test_fallback_positions_keep_joins_open_while_redis_is_away(
    tmp_path: Path, store: RedisServer
) -> None:
    # Nobody admitted: a waiting person's status is the one flagged stale.
    text = config(store.url, rate=0, extra="fallback_positions = 50")
    wr = host(tmp_path, "a", text).start()
    try:
        first = join(wr)
        store.stop()
        wait_stale(wr, first["queue_token"])
        answer = httpx.post(f"{wr.base}/api/v1/rooms/default/join", timeout=5.0)
        assert answer.status_code == 200
        assert int(answer.json()["position"]) > int(str(first["position"]))
    finally:
        wr.stop()
        store.start()


def test_a_hung_redis_does_not_stall_the_supervisor(
    tmp_path: Path, store: RedisServer
) -> None:
    text = config(store.url, workers=2, rate=0).replace(
        "workers = 2", "workers = 2\nheartbeat_timeout_s = 3"
    )
    wr = host(tmp_path, "a", text).start()
    try:
        person = join(wr)
        workers = wr.worker_pids()
        store.pause()
        wait_stale(wr, person["queue_token"])
        # The supervisor keeps stepping while each call times out: its
        # attempts (at most 0.5 s apart, each up to 0.25 s) are logged, and
        # no worker misses a heartbeat meanwhile (it would be killed after
        # 3 s; twelve attempts take longer than that).
        wait_for(
            lambda: "store unreachable attempts=12 " in wr.log.read_text(),
            DEADLINE_S,
            "twelve attempts at the hung store",
        )
        assert "missed its heartbeat" not in wr.log.read_text()
        store.resume()
        wait_for(
            lambda: "stale" not in status(wr, person["queue_token"]),
            DEADLINE_S,
            "a fresh status",
        )
        assert wr.worker_pids() == workers
        assert "missed its heartbeat" not in wr.log.read_text()
    finally:
        store.resume()
        wr.stop()
