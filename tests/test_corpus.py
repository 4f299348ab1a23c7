"""The hostile request corpus, bytes-in/bytes-out and against a live server.

Every case of ``tests/requests/`` (see its README) runs twice: through
:class:`wr.http.HttpConnection` with the real app behind it, fed as
64 KiB socket reads and again in 13-byte pieces, and over a real socket
to one ``wr serve`` started for the module. Both must give the statuses
the case names, close when it says so, count every refusal of the HTTP
layer, and go on serving: the live server must answer a good request on a
new connection after each case.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.corpus import (
    CORPUS_LIMITS,
    CORPUS_LIMITS_TOML,
    LAYER_STATUSES,
    Case,
    check_replies,
    load_cases,
    parse,
    parse_replies,
)
from tests.serverproc import WrServer, wait_for
from tests.test_api import World
from wr.http import HttpConnection

CASES = load_cases()
GOOD = b"GET /healthz HTTP/1.1\r\nHost: wr.test\r\n\r\n"
# A socket read of uvloop's size, and an awkward small split.
READ_BYTES = 64 * 1024
PIECE_BYTES = 13
# A live case gets this long beyond its own timers to be answered.
LIVE_DEADLINE_S = 20.0


def _case_id(case: Case) -> str:
    return case.name


def test_the_corpus_is_large_and_covers_what_it_must() -> None:
    names = {case.name for case in CASES}
    assert len(CASES) >= 60
    for needed in (
        "method-unknown",
        "bare-lf-everywhere",
        "header-value-nul",
        "header-obs-fold-space",
        "content-length-duplicate-different",
        "smuggle-cl-te",
        "chunk-size-not-hex",
        "target-too-long",
        "header-too-large",
        "body-too-large-length",
        "http09-request",
        "http2-version",
        "pipeline-deep",
        "target-invalid-utf8",
        "cookie-giant",
    ):
        assert needed in names


def test_the_case_format_reads_escapes_repeats_and_expectations() -> None:
    case = parse(
        "x",
        b"# why\nexpect: timeout 2*200 404 close\n---\nA\\r\\n\\0\\x41\\\\\n"
        b"@repeat 3 ab\\n\n",
    )
    assert case.request == b"A\r\n\x00A\\ab\nab\nab\n"
    assert case.statuses == (200, 200, 404)
    assert case.close
    assert case.timeout
    assert case.why == "why"
    with pytest.raises(ValueError, match="unknown head keys"):
        parse("y", b"expect: 200\nstatus: 1\n---\nA\n")
    with pytest.raises(ValueError, match="---"):
        parse("z", b"expect: 200\nA\n")


# Bytes in, bytes out.


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    static = tmp_path_factory.mktemp("static")
    (static / "index.html").write_text("<!doctype html><title>wait</title>")
    (static / "inside.html").write_text("<!doctype html><title>in</title>")
    return World(static)


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("size", [READ_BYTES, PIECE_BYTES])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_case_bytes_in_bytes_out(world: World, case: Case, size: int) -> None:
    rejected: list[int] = []
    conn = HttpConnection(
        world.app.handle,
        CORPUS_LIMITS,
        on_rejected=lambda status, error: rejected.append(status),
    )
    out = bytearray()
    for piece in _pieces(case.request, size):
        conn.receive(piece)
        out += conn.data_to_send()
    if case.timeout:
        assert not parse_replies(bytes(out)), "answered before the timer fired"
        conn.timeout()
        out += conn.data_to_send()

    check_replies(case, parse_replies(bytes(out)))
    assert conn.closing == case.close
    assert rejected == [s for s in case.statuses if s in LAYER_STATUSES]
    if not case.close:
        conn.receive(GOOD)
        assert [r.status for r in parse_replies(conn.data_to_send())] == [200]


# Against a live server.

CONFIG = """
[server]
workers = 1

[http]
{limits}

[rooms.default]
rate_per_minute = 60
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WrServer]:
    config = CONFIG.format(limits=CORPUS_LIMITS_TOML)
    wr = WrServer(tmp_path_factory.mktemp("corpus"), config)
    wr.start()
    yield wr
    wr.stop()


def bad_requests(wr: WrServer) -> float:
    """The sum of wr_http_bad_requests over its labels."""
    text = httpx.get(f"{wr.base}/metrics", timeout=5.0).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("wr_http_bad_requests_total{")
    )


def _send_all(sock: socket.socket, data: bytes) -> None:
    # The server may refuse and close before it has read everything.
    with contextlib.suppress(OSError):
        sock.sendall(data)


def exchange(port: int, case: Case) -> tuple[bytes, bool, socket.socket]:
    """Send the case; read until its answers are in, or the server closes.

    Returns what came back, whether the server closed, and the socket.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    # Sent from a thread, so a server that answers while we still send
    # (a deep pipeline) never finds us not reading.
    sender = threading.Thread(target=_send_all, args=(sock, case.request))
    sender.start()
    received = bytearray()
    closed = False
    timers = CORPUS_LIMITS.header_timeout_s if case.timeout else 0.0
    deadline = time.monotonic() + timers + LIVE_DEADLINE_S
    while time.monotonic() < deadline:
        if not case.close and len(parse_replies(bytes(received))) >= len(case.statuses):
            break
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        received += chunk
    sender.join(timeout=LIVE_DEADLINE_S)
    return bytes(received), closed, sock


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_case_against_a_live_server(live: WrServer, case: Case) -> None:
    before = bad_requests(live)
    received, closed, sock = exchange(live.port, case)
    with sock:
        check_replies(case, parse_replies(received))
        assert closed == case.close
        if not case.close:
            # Still open: it serves the next request on the same connection.
            sock.sendall(GOOD)
            answer = wait_for(
                lambda: sock.recv(65536), LIVE_DEADLINE_S, "an answer to a good request"
            )
            assert answer.startswith(b"HTTP/1.1 200 ")

    assert httpx.get(f"{live.base}/healthz", timeout=5.0).status_code == 200
    layer = sum(1 for s in case.statuses if s in LAYER_STATUSES)
    assert bad_requests(live) - before == layer
    assert live.proc is not None
    assert live.proc.poll() is None
