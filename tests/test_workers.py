"""The production shape: a supervisor and several workers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.loadclient import Tally, join_many, keep_joining, pipeline
from tests.serverproc import WrServer, free_port, wait_for

CONFIG = """
[server]
workers = {workers}
heartbeat_timeout_s = 2.0
shutdown_grace_s = 5.0

[rooms.default]
rate_per_minute = {rate}
target_url = "/inside"
"""


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


def config(workers: int = 2, rate: float = 1) -> str:
    return CONFIG.format(workers=workers, rate=rate)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WrServer]:
    wr = WrServer(tmp_path, config()).start()
    # Both workers have sent a heartbeat (the supervisor then says it
    # listens): a worker stopped before its first one would only be
    # judged after the start-up grace, longer than the tests wait.
    wr.wait_workers_listening(2)
    yield wr
    if wr.proc is not None and wr.proc.poll() is None:
        wr.stop()


def serving(base: str) -> int:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith('wr_room_serving_position{room="default"}'):
            return int(float(line.split()[-1]))
    raise AssertionError("no serving gauge")


def join(base: str) -> dict[str, object]:
    answer = httpx.post(f"{base}/api/v1/rooms/default/join")
    assert answer.status_code == 200, answer.text
    data: dict[str, object] = answer.json()
    return data


def status(base: str, token: object) -> httpx.Response:
    return httpx.get(
        f"{base}/api/v1/rooms/default/status",
        headers={"authorization": f"Bearer {token}"},
    )


def test_concurrent_joins_get_unique_contiguous_ordered_positions(
    server: WrServer,
) -> None:
    total = 100_000
    per_connection = asyncio.run(join_many(server.port, "default", total))

    every = sorted(p for positions in per_connection for p in positions)
    assert every == list(range(1, total + 1))
    # On each connection, a later join never got an earlier place.
    for positions in per_connection:
        assert positions == sorted(positions)


def test_a_worker_killed_under_load_is_replaced(server: WrServer) -> None:
    before = server.worker_pids()
    tally = Tally()

    async def load_and_kill() -> None:
        until = time.monotonic() + 4.0
        load = asyncio.gather(
            *(keep_joining(server.port, "default", until, tally) for _ in range(4))
        )
        await asyncio.sleep(1.0)
        os.kill(before[0], signal.SIGKILL)
        killed_at = time.monotonic()
        # Once the dead worker is reaped (its socket gone from the port's
        # group; connections queued on it in the instant it died are
        # reset), every new connection is answered, replacement or not.
        reaped_by = killed_at + 10.0
        while "worker died index=0" not in server.log.read_text():
            assert time.monotonic() < reaped_by, "the killed worker was not reaped"
            await asyncio.sleep(0.01)
        for _ in range(20):
            [answer] = await pipeline(server.port, HEALTHZ, 1)
            assert answer.status == 200
        await load
        assert any(at > killed_at + 1.0 for at in tally.ok_after)

    asyncio.run(load_and_kill())

    wait_for(
        lambda: server.worker_pids().get(0, before[0]) != before[0],
        10.0,
        "a new worker 0",
    )
    assert server.worker_pids()[1] == before[1]
    assert "worker died index=0" in server.log.read_text()
    for _ in range(20):
        assert httpx.get(f"{server.base}/healthz").status_code == 200
    assert tally.ok > 0


def test_a_stopped_worker_is_killed_and_replaced(server: WrServer) -> None:
    before = server.worker_pids()
    os.kill(before[1], signal.SIGSTOP)
    wait_for(
        lambda: server.worker_pids().get(1, before[1]) != before[1],
        15.0,
        "worker 1 replaced after missing its heartbeat",
    )
    assert "killing worker index=1" in server.log.read_text()
    assert "reason=missed its heartbeat" in server.log.read_text()
    for _ in range(20):
        assert httpx.get(f"{server.base}/healthz").status_code == 200


def test_kill_9_of_everything_loses_no_place_and_no_token(tmp_path: Path) -> None:
    wr = WrServer(tmp_path, config(rate=600)).start()
    first = join(wr.base)
    positions = asyncio.run(join_many(wr.port, "default", 3000, connections=4))
    last = join(wr.base)
    handed_out = max(int(str(last["position"])), *(max(p) for p in positions))

    admitted = wait_for(
        lambda: status(wr.base, first["queue_token"]).json().get("access_token"),
        10.0,
        "first person admitted",
    )
    serving_before = serving(wr.base)
    wr.kill_all()

    wr.start()
    try:
        again = join(wr.base)
        assert int(str(again["position"])) > handed_out
        assert serving(wr.base) >= serving_before

        # Tokens from before the crash: the same place, and the same access.
        waiting = status(wr.base, last["queue_token"]).json()
        assert waiting["position"] == last["position"]
        verify = httpx.get(
            f"{wr.base}/api/v1/verify?room=default",
            headers={"authorization": f"Bearer {admitted}"},
        )
        assert verify.status_code == 204
    finally:
        wr.stop()


def test_a_clean_restart_continues_the_line_without_a_gap(tmp_path: Path) -> None:
    wr = WrServer(tmp_path, config()).start()
    assert [join(wr.base)["position"] for _ in range(3)] == [1, 2, 3]
    assert wr.stop() == 0
    wr.start()
    try:
        assert join(wr.base)["position"] == 4
    finally:
        wr.stop()


def test_hup_applies_a_changed_rate(server: WrServer) -> None:
    join(server.base)
    second = join(server.base)
    assert status(server.base, second["queue_token"]).json()["state"] == "waiting"

    server.config.write_text(config(rate=6000))
    os.kill(server.pid, signal.SIGHUP)

    wait_for(
        lambda: (
            status(server.base, second["queue_token"]).json()["state"] == "admitted"
        ),
        10.0,
        "admission at the new rate",
    )
    assert "reloaded rooms=default" in server.log.read_text()


def test_a_bad_config_on_hup_keeps_the_running_one(server: WrServer) -> None:
    server.config.write_text("[rooms.default]\nrate_per_minute = -1\n")
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: "reload failed" in server.log.read_text(), 5.0, "reload failure")
    assert join(server.base)["state"] == "waiting"


class Notifications:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.seen: list[str] = []

    def wait(self, message: str, timeout_s: float = 10.0) -> None:
        def arrived() -> bool:
            with contextlib.suppress(TimeoutError):
                self.seen.append(self.sock.recv(4096).decode())
            return message in self.seen

        wait_for(arrived, timeout_s, f"sd_notify {message}", poll_s=0)


@pytest.mark.parametrize("workers", [1, 2])
def test_systemd_hears_ready_watchdog_reloading_and_stopping(
    tmp_path: Path, workers: int
) -> None:
    notes = Notifications(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(notes.path), "WATCHDOG_USEC": "400000"}
    wr = WrServer(tmp_path, config(workers=workers), env=env).start()
    try:
        notes.wait("READY=1")
        notes.wait("WATCHDOG=1")
        notes.seen.clear()
        os.kill(wr.pid, signal.SIGHUP)
        notes.wait("RELOADING=1")
        notes.wait("READY=1")
        assert notes.seen.index("RELOADING=1") < notes.seen.index("READY=1")
    finally:
        assert wr.stop() == 0
        notes.wait("STOPPING=1")
        notes.sock.close()


def test_a_second_wr_on_the_same_port_refuses_to_start(
    server: WrServer, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    code, output = WrServer(other, config(), port=server.port).fail_to_start()
    assert code == 3
    assert "address already in use" in output


def test_a_second_wr_on_the_same_state_dir_refuses_to_start(
    server: WrServer,
) -> None:
    second = WrServer(server.dir, config(), port=free_port())
    second.log = server.dir / "second.log"
    code, output = second.fail_to_start()
    assert code == 3
    assert "in use by another wr" in output


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda state: state.chmod(0o755), "open to other users"),
        (
            lambda state: (state / "state.json").write_text("{not json"),
            "corrupt",
        ),
        (lambda state: (state / "keys.json").chmod(0o644), "chmod 600"),
    ],
    ids=["world-readable-dir", "corrupt-state", "open-key-file"],
)
def test_a_bad_state_dir_stops_start_up_with_one_line(
    tmp_path: Path, prepare: object, message: str
) -> None:
    wr = WrServer(tmp_path, config(workers=1)).start()
    assert wr.stop() == 0
    assert callable(prepare)
    prepare(wr.state_dir)
    if (wr.state_dir / "state.json").exists():
        (wr.state_dir / "state.json").chmod(0o600)
    wr.log.write_text("")
    code, output = wr.fail_to_start()
    assert code == 3
    assert output.count("\n") == 1
    assert message in output
