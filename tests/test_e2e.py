"""A person's whole path against a real ``wr serve`` on 127.0.0.1."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serverproc import WrServer, wait_for

# Ten admissions a second: fast enough for a test, slow enough to observe.
RATE_PER_MINUTE = 600

CONFIG = f"""
[server]
workers = 2

[rooms.default]
rate_per_minute = {RATE_PER_MINUTE}
target_url = "/inside"

[rooms.slow]
rate_per_minute = 1
target_url = "https://shop.example/"
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WrServer]:
    wr = WrServer(tmp_path, CONFIG).start()
    yield wr
    wr.stop()


def serving(client: httpx.Client, room: str) -> int:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'wr_room_serving_position{{room="{room}"}}'):
            return int(float(line.split()[-1]))
    raise AssertionError("no serving gauge")


def test_a_person_joins_waits_is_admitted_and_passes_verify(server: WrServer) -> None:
    with httpx.Client(base_url=server.base, timeout=5.0) as person:
        joined = person.post("/api/v1/rooms/default/join")
        assert joined.status_code == 200
        assert joined.json()["state"] == "waiting"
        assert "wr_queue" in person.cookies

        def admitted() -> dict[str, object] | None:
            data: dict[str, object] = person.get("/api/v1/rooms/default/status").json()
            return data if data["state"] == "admitted" else None

        data = wait_for(admitted, 10.0, "admission")
        assert data["redirect"] == "/inside"
        assert "wr_access" in person.cookies

        verify = person.get("/api/v1/verify", params={"room": "default"})
        assert verify.status_code == 204
        inside = person.get("/inside")
        assert inside.status_code == 200
        assert "You're in" in inside.text

    stranger = httpx.get(f"{server.base}/api/v1/verify?room=default")
    assert stranger.status_code == 401
    assert stranger.json()["error"] == "no_token"


def test_people_are_admitted_in_order_at_the_configured_rate(
    server: WrServer,
) -> None:
    people = 40
    with httpx.Client(base_url=server.base, timeout=5.0) as client:
        started = time.monotonic()
        tokens = []
        for _ in range(people):
            # Each join is a new person: no cookie from the last one.
            client.cookies.clear()
            tokens.append(client.post("/api/v1/rooms/default/join").json())
        client.cookies.clear()
        assert [t["position"] for t in tokens] == list(range(1, people + 1))

        # Never faster than the rate (one position of slack for the tick
        # that was in progress when the first person joined).
        samples = []
        for _ in range(10):
            time.sleep(0.2)
            samples.append((time.monotonic() - started, serving(client, "default")))
        for elapsed, admitted in samples:
            assert admitted <= RATE_PER_MINUTE / 60 * elapsed + 1

        # And everyone gets in, in order of arrival.
        wait_for(lambda: serving(client, "default") >= people, 30.0, "all admitted")
        order = []
        for joined in tokens:
            status = client.get(
                "/api/v1/rooms/default/status",
                headers={"authorization": f"Bearer {joined['queue_token']}"},
            ).json()
            assert status["state"] == "admitted"
            order.append(status["position"])
        assert order == list(range(1, people + 1))


def test_a_slow_room_keeps_people_waiting_with_an_honest_eta(
    server: WrServer,
) -> None:
    with httpx.Client(base_url=server.base, timeout=5.0) as client:
        first = client.post("/api/v1/rooms/slow/join").json()
        client.cookies.clear()
        second = client.post("/api/v1/rooms/slow/join").json()
    assert first["position"] == 1
    assert second == second | {"position": 2, "ahead": 1, "state": "waiting"}
    assert 60 <= second["eta_s"] <= 120
    assert 3 <= second["next_poll_s"] <= 60


def test_keep_alive_and_pipelining_on_a_real_socket(server: WrServer) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request * 3 + b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
        received = b""

        def four_responses() -> bool:
            nonlocal received
            received += sock.recv(65536)
            return received.count(b"HTTP/1.1 ") == 4 and received.endswith(b"}")

        wait_for(four_responses, 5.0, "four pipelined responses", poll_s=0)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
    assert statuses == [b"200", b"200", b"200", b"404"]


def test_garbage_gets_400_and_the_server_keeps_serving(tmp_path: Path) -> None:
    # One worker: HTTP counters are per process (see README, known limits).
    server = WrServer(tmp_path, CONFIG.replace("workers = 2", "workers = 1")).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"\x00\x01 nonsense\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"error":"bad_request"' in answer
    assert httpx.get(f"{server.base}/healthz").status_code == 200
    metrics = httpx.get(f"{server.base}/metrics").text
    assert 'wr_http_bad_requests_total{code="400",reason="bad_request"} 1.0' in metrics
    assert server.stop() == 0


def test_tokens_survive_a_restart(tmp_path: Path) -> None:
    wr = WrServer(tmp_path, CONFIG).start()
    with httpx.Client(base_url=wr.base, timeout=5.0) as person:
        person.post("/api/v1/rooms/default/join")
        wait_for(
            lambda: (
                person.get("/api/v1/rooms/default/status").json()["state"] == "admitted"
            ),
            10.0,
            "admission",
        )
        assert wr.stop() == 0
        keys = wr.state_dir / "keys.json"
        assert keys.stat().st_mode & 0o777 == 0o600

        wr.start()
        try:
            verify = person.get("/api/v1/verify", params={"room": "default"})
            assert verify.status_code == 204
        finally:
            wr.stop()


def test_sigterm_lets_an_in_flight_request_finish(server: WrServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        assert server.proc is not None
        server.proc.terminate()
        # Once it drains, new connections are refused, but the request
        # already under way is still answered.
        wait_for(lambda: "draining" in server.log.read_text(), 5.0, "draining")
        sock.sendall(b"\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert server.stop() == 0
