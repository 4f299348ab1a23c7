"""Slow and abusive clients against a live server, with its memory watched.

One ``wr serve`` with one worker (so the process we measure is the one that
serves) and small limits: a 1 s request-head timeout and room for
:data:`MAX_CONNECTIONS` connections. The worker's resident memory is read
from ``/proc`` before the module and after each test; it must stay within
:data:`RSS_GROWTH_LIMIT_KB` of where it started.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serverproc import WrServer, wait_for

pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 1.0
# Long enough for the flood test to stop sending and start reading.
WRITE_TIMEOUT_S = 4.0
MAX_CONNECTIONS = 20
# Far more than the few hundred KiB that buffers and flow control allow a
# non-reading client to cost; a server that buffered every response would
# pass this within a few seconds of a pipelining client.
RSS_GROWTH_LIMIT_KB = 48 * 1024
# What a client that never reads may try to send before we stop it.
FLOOD_LIMIT_BYTES = 256 * 1024 * 1024
FLOOD_TIME_LIMIT_S = 30.0
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: wr.test\r\n\r\n"

CONFIG = f"""
[server]
workers = 1

[http]
header_timeout_s = {HEADER_TIMEOUT_S}
keepalive_timeout_s = 60.0
write_timeout_s = {WRITE_TIMEOUT_S}
max_connections = {MAX_CONNECTIONS}

[rooms.default]
rate_per_minute = 60
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WrServer]:
    wr = WrServer(tmp_path_factory.mktemp("abuse"), CONFIG).start()
    yield wr
    wr.stop()


@pytest.fixture(scope="module")
def baseline_kb(live: WrServer) -> int:
    # Warm the worker up first: the first requests import and allocate.
    for _ in range(50):
        httpx.get(f"{live.base}/healthz", timeout=5.0)
    return rss_kb(live.pid)


@pytest.fixture(autouse=True)
def memory_stays_bounded(live: WrServer, baseline_kb: int) -> Iterator[None]:
    yield
    growth = rss_kb(live.pid) - baseline_kb
    assert growth < RSS_GROWTH_LIMIT_KB, f"worker grew by {growth} KiB"
    assert httpx.get(f"{live.base}/healthz", timeout=5.0).status_code == 200


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    received = bytearray()
    deadline = time.monotonic() + timeout_s
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    else:
        raise AssertionError(f"not closed within {timeout_s}s: {bytes(received)!r}")
    return bytes(received)


def read_all(sock: socket.socket) -> None:
    while sock.recv(1 << 20):
        pass


def test_slowloris_gets_408_and_is_closed_at_the_header_timeout(
    live: WrServer,
) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: wr.test\r\nX-Slow: " + b"a" * 200
    with socket.create_connection(("127.0.0.1", live.port), timeout=5.0) as sock:
        sock.settimeout(0.05)
        started = time.monotonic()
        sent = 0
        closed_early = False
        # One byte every 50 ms: the head would take 13 s to arrive. The
        # server must end it long before, however steadily it trickles.
        for byte in head:
            try:
                sock.send(bytes([byte]))
            except OSError:
                closed_early = True
                break
            sent += 1
            try:
                if sock.recv(65536, socket.MSG_PEEK):
                    closed_early = True
                    break
            except TimeoutError:
                pass
        answer = read_until_closed(sock, 10.0)
        elapsed = time.monotonic() - started
    assert closed_early, "the whole head was accepted at a trickle"
    assert sent < len(head)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"error":"request_timeout"' in answer
    # Closed at the timeout, not at the end of the trickle (13 s).
    assert elapsed < len(head) * 0.05 / 2


def test_a_client_that_never_reads_is_paused_not_buffered(live: WrServer) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=5.0) as sock:
        sent = flood(sock)
        # While paused, it costs the worker little and others are served.
        assert httpx.get(f"{live.base}/healthz", timeout=5.0).status_code == 200

        # Reading again resumes it: every request sent is answered, in order.
        sock.setblocking(True)
        sock.settimeout(5.0)
        expected = sent // len(REQUEST)
        status = b"HTTP/1.1 200 "
        answered = 0
        tail = b""
        while answered < expected:
            chunk = sock.recv(1 << 20)
            assert chunk, "closed before answering everything"
            # A status line may straddle two reads; the tail is too short
            # to hold a whole one, so none is counted twice.
            data = tail + chunk
            answered += data.count(status)
            tail = data[-(len(status) - 1) :]
        assert answered == expected


def flood(sock: socket.socket) -> int:
    """Pipeline requests without reading until the server stops taking them."""
    sock.setblocking(False)
    burst = REQUEST * 1000
    sent = 0
    blocked_since: float | None = None
    deadline = time.monotonic() + FLOOD_TIME_LIMIT_S
    # Send until the server has stopped reading for a whole second: our
    # sends then find every buffer on the way full.
    while sent < FLOOD_LIMIT_BYTES and time.monotonic() < deadline:
        try:
            # Go on from where a partial send stopped: whole requests.
            sent += sock.send(burst[sent % len(burst) :])
            blocked_since = None
        except BlockingIOError:
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since > 1.0:
                return sent
            time.sleep(0.01)
    raise AssertionError(f"sent {sent} bytes and was never stopped")


def open_connections(wr: WrServer) -> float:
    for line in httpx.get(f"{wr.base}/metrics", timeout=5.0).text.splitlines():
        if line.startswith("wr_http_connections_open "):
            return float(line.split()[1])
    raise AssertionError("no wr_http_connections_open")


def test_a_client_that_never_reads_is_dropped_after_the_write_timeout(
    live: WrServer,
) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=5.0) as sock:
        flood(sock)
        # Only the scrape's own connection is left once it is dropped.
        wait_for(
            lambda: open_connections(live) == 1,
            WRITE_TIMEOUT_S + 20.0,
            "the stalled connection to be dropped",
            poll_s=0.5,
        )
        sock.setblocking(True)
        # Aborted, not closed: what was left unsent is thrown away.
        with pytest.raises(ConnectionResetError):
            read_all(sock)


def test_over_the_connection_limit_new_connections_get_a_fast_503(
    live: WrServer,
) -> None:
    held: list[socket.socket] = []
    try:
        # Fill the worker: each connection is counted once it has answered.
        for _ in range(MAX_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", live.port), timeout=5.0)
            sock.sendall(REQUEST)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            held.append(sock)

        for _ in range(5):
            with socket.create_connection(
                ("127.0.0.1", live.port), timeout=5.0
            ) as extra:
                answer = read_until_closed(extra, 5.0)
            assert answer.startswith(b"HTTP/1.1 503 ")
            assert b"retry-after: 1\r\n" in answer
            assert b'"error":"overloaded"' in answer
    finally:
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()

    # Once they are gone, there is room again.
    wait_for(
        lambda: httpx.get(f"{live.base}/healthz", timeout=5.0).status_code == 200,
        10.0,
        "room for a new connection",
    )
    metrics = httpx.get(f"{live.base}/metrics", timeout=5.0).text
    assert 'wr_http_bad_requests_total{code="503",reason="overloaded"} 5.0' in metrics


def test_many_slow_clients_at_once_are_all_timed_out(live: WrServer) -> None:
    clients = []
    try:
        for _ in range(MAX_CONNECTIONS - 2):
            sock = socket.create_connection(("127.0.0.1", live.port), timeout=5.0)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: wr.test\r\n")
            clients.append(sock)
        answers = [read_until_closed(sock, 10.0) for sock in clients]
    finally:
        for sock in clients:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers)
