"""The HTTP layer, bytes in and bytes out: no sockets, and time moved by the test.

:class:`HttpConnection` is fed raw request bytes and its output is read
back; :class:`HttpProtocol` is driven through the fakes of ``tests.fakes``,
so timeouts run on a clock the test moves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes import FakeLoop, FakeTransport
from wr.config import HttpConfig
from wr.http import (
    HttpConnection,
    HttpProtocol,
    HttpServerState,
    Request,
    Response,
)

# Small limits keep the requests that cross them small.
LIMITS = HttpConfig(
    max_target_bytes=64,
    max_headers=8,
    max_header_bytes=256,
    max_body_bytes=32,
    header_timeout_s=5.0,
    keepalive_timeout_s=30.0,
    max_connections=2,
    write_buffer_bytes=1024,
)
DATE = b"Thu, 01 Jan 2026 00:00:00 GMT"


def echo(request: Request) -> Response:
    """Answers with what it was asked; ``/boom`` is a handler bug."""
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    if request.path.startswith("/status/"):
        return Response(int(request.path.rsplit("/", 1)[1]), b"dropped")
    body = orjson.dumps(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "body": request.body.decode("latin-1"),
            "version": request.http_version,
        }
    )
    return Response(200, body)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, str]:
        value = orjson.loads(self.body)
        assert isinstance(value, dict)
        return value


def parse_replies(data: bytes, *, head: bool = False) -> list[Reply]:
    """Split a byte stream into responses; it must hold nothing else."""
    replies = []
    while data:
        raw_head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"unterminated response head: {raw_head!r}"
        status_line, *lines = raw_head.decode("latin-1").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(": ")
            assert name not in headers, f"header sent twice: {name}"
            headers[name] = value
        length = 0 if head else int(headers.get("content-length", "0"))
        replies.append(Reply(int(status), headers, data[:length]))
        data = data[length:]
    return replies


@dataclass
class Client:
    """An :class:`HttpConnection` with what it rejected and what it wrote."""

    limits: HttpConfig = LIMITS
    rejected: list[tuple[int, str]] = field(default_factory=list)
    conn: HttpConnection = field(init=False)

    def __post_init__(self) -> None:
        self.conn = HttpConnection(
            echo,
            self.limits,
            date=lambda: DATE,
            on_rejected=lambda status, error: self.rejected.append((status, error)),
        )

    def send(self, *chunks: bytes) -> bytes:
        for chunk in chunks:
            self.conn.receive(chunk)
        return self.conn.data_to_send()


def get(target: str = "/", *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: wr.test", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# Response framing.


def test_get_is_answered_with_status_date_length_type_and_body() -> None:
    out = Client().send(get("/a?b=c"))

    body = b'{"method":"GET","path":"/a","query":"b=c","body":"","version":"1.1"}'
    assert out == (
        b"HTTP/1.1 200 OK\r\n"
        b"date: " + DATE + b"\r\n"
        b"content-length: %d\r\n"
        b"content-type: application/json\r\n"
        b"\r\n" % len(body) + body
    )


def test_post_body_reaches_the_handler() -> None:
    request = get("/join", "Content-Length: 5", method="POST") + b"hello"

    [reply] = parse_replies(Client().send(request))

    assert reply.json()["body"] == "hello"
    assert reply.json()["method"] == "POST"


def test_head_gets_the_get_headers_and_no_body() -> None:
    full = Client().send(get("/x"))
    head = Client().send(get("/x", method="HEAD"))

    # The handler sees HEAD, so its body differs; the framing must not.
    [reply] = parse_replies(head, head=True)
    assert head.endswith(b"\r\n\r\n")
    assert reply.body == b""
    expected = len(
        b'{"method":"HEAD","path":"/x","query":"","body":"","version":"1.1"}'
    )
    assert reply.headers["content-length"] == str(expected)
    assert set(reply.headers) == set(parse_replies(full)[0].headers)


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_and_no_content_length_for(status: int) -> None:
    client = Client()

    out = client.send(get(f"/status/{status}"), get("/next"))

    first, second = parse_replies(out)
    assert first.status == status
    assert "content-length" not in first.headers
    assert "content-type" not in first.headers
    assert first.body == b""
    # Had the dropped body been sent, the next response would not parse.
    assert second.json()["path"] == "/next"


def test_headers_reach_the_handler_lower_cased_and_repeats_joined() -> None:
    seen: list[Request] = []

    def capture(request: Request) -> Response:
        seen.append(request)
        return Response(200)

    conn = HttpConnection(capture, LIMITS, date=lambda: DATE)
    conn.receive(
        get(
            "/",
            "Accept: a",
            "ACCEPT: b",
            "Cookie: x=1",
            "Cookie: wr_queue=q.t",
            "Authorization: Bearer abc.def",
        )
    )

    [request] = seen
    assert request.header(b"accept") == b"a, b"
    assert request.cookie("wr_queue") == "q.t"
    assert request.cookie("x") == "1"
    assert request.cookie("missing") is None
    assert request.bearer() == "abc.def"


# Keep-alive and close.


def test_http11_keeps_the_connection_alive_by_default() -> None:
    client = Client()

    out = client.send(get("/1"), get("/2"))

    replies = parse_replies(out)
    assert [r.json()["path"] for r in replies] == ["/1", "/2"]
    assert all("connection" not in r.headers for r in replies)
    assert not client.conn.closing


def test_http10_closes_after_the_response() -> None:
    client = Client()

    out = client.send(b"GET /old HTTP/1.0\r\n\r\n")

    [reply] = parse_replies(out)
    assert reply.json()["version"] == "1.0"
    assert reply.headers["connection"] == "close"
    assert client.conn.closing


def test_http10_with_keep_alive_stays_open() -> None:
    client = Client()
    request = b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"

    out = client.send(request, request)

    replies = parse_replies(out)
    assert len(replies) == 2
    # A 1.0 client keeps the connection only if the response says so.
    assert all(r.headers["connection"] == "keep-alive" for r in replies)
    assert not client.conn.closing


def test_an_upgrade_request_is_answered_as_plain_http_then_closed() -> None:
    client = Client()

    out = client.send(get("/ws", "Connection: Upgrade", "Upgrade: websocket"))

    [reply] = parse_replies(out)
    assert reply.json()["path"] == "/ws"
    assert reply.headers["connection"] == "close"
    assert client.conn.closing


def test_connection_close_ends_after_the_response_and_ignores_what_follows() -> None:
    client = Client()

    out = client.send(get("/last", "Connection: close") + get("/ignored"))
    out += client.send(get("/ignored-too"))

    [reply] = parse_replies(out)
    assert reply.json()["path"] == "/last"
    assert reply.headers["connection"] == "close"
    assert client.conn.closing
    assert client.conn.requests == 1


# Pipelining and chunking.


def test_pipelined_requests_are_answered_in_order() -> None:
    client = Client()
    stream = get("/1") + get("/2", "Content-Length: 3", method="POST") + b"abc"
    stream += get("/3")

    out = client.send(stream)

    replies = parse_replies(out)
    assert [r.json()["path"] for r in replies] == ["/1", "/2", "/3"]
    assert replies[1].json()["body"] == "abc"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 1000])
def test_a_request_split_into_chunks_is_answered_as_if_whole(size: int) -> None:
    request = get("/join?x=1", "Content-Length: 4", method="POST") + b"body"
    whole = Client().send(request)

    client = Client()
    out = client.send(*split(request, size))

    assert out == whole
    assert client.rejected == []


@pytest.mark.parametrize("size", [1, 5, 13, 40, 333, 4096])
def test_a_long_pipeline_split_across_reads_is_not_rejected(size: int) -> None:
    # 200 requests add up to many times the head limits; only the request
    # in progress may count against them.
    one = get("/status", "Accept: */*", "User-Agent: test")
    client = Client()

    out = client.send(*split(one * 200, size))

    assert client.rejected == []
    assert len(parse_replies(out)) == 200


@pytest.mark.parametrize("size", [1, 2, 10, 1000])
def test_a_request_at_every_limit_is_accepted_however_it_is_split(size: int) -> None:
    target = "/" + "t" * (LIMITS.max_target_bytes - 1)
    # A header line counts its name and value plus 4 (": " and CRLF), that
    # is its length plus 2; seven lines after the Host line fill the limit.
    room = LIMITS.max_header_bytes - (len("Host: wr.test") + 2)
    headers = [f"X-{i}: " + "v" * (room // 7 - 7) for i in range(7)]
    headers[0] += "v" * (room % 7)
    assert sum(len(h) + 2 for h in headers) == room
    request = get(target, *headers)
    client = Client()

    out = client.send(*split(request, size))

    assert client.rejected == []
    assert parse_replies(out)[0].status == 200


# Limits and malformed requests: each is one status, a JSON reason, and close.

GIANT = get("/", "X-Giant: " + "g" * 1000)
CHUNKED = get("/", "Transfer-Encoding: chunked", method="POST")
LIMIT_CASES = {
    "long target": ([get("/" + "t" * 100)], 414, "target_too_long"),
    "long target, trickled": (split(get("/" + "t" * 100), 3), 414, "target_too_long"),
    "too many headers": ([get("/", *[f"X-{i}: 1" for i in range(8)])], 431, None),
    "header bytes": ([get("/", *[f"X-{i}: " + "v" * 60 for i in range(4)])], 431, None),
    "giant header, trickled": (split(GIANT, 10), 431, None),
    "giant header first, trickled": (
        split(b"GET / HTTP/1.1\r\nX-Giant: " + b"g" * 1000, 10),
        431,
        None,
    ),
    "content-length over limit": (
        [get("/", "Content-Length: 33", method="POST")],
        413,
        "body_too_large",
    ),
    "chunked body over limit": (
        [CHUNKED, b"14\r\n" + b"c" * 20 + b"\r\n", b"14\r\n" + b"c" * 20 + b"\r\n"],
        413,
        "body_too_large",
    ),
    "garbage": ([b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"], 400, "bad_request"),
    "invalid method": ([b"FROB / HTTP/1.1\r\nHost: a\r\n\r\n"], 400, "bad_request"),
    "bare LF": ([b"GET / HTTP/1.1\nHost: a\n\n"], 400, "bad_request"),
    "duplicate host": ([get("/", "Host: other")], 400, "bad_request"),
    "non-numeric content-length": (
        [get("/", "Content-Length: ten", method="POST")],
        400,
        "bad_request",
    ),
    "content-length and transfer-encoding": (
        [get("/", "Content-Length: 3", "Transfer-Encoding: chunked", method="POST")],
        400,
        "bad_request",
    ),
}


@pytest.mark.parametrize(
    ("chunks", "status", "error"), LIMIT_CASES.values(), ids=LIMIT_CASES.keys()
)
def test_a_refused_request_gets_a_status_a_json_reason_and_close(
    chunks: list[bytes], status: int, error: str | None
) -> None:
    error = error or "headers_too_large"
    client = Client()

    out = client.send(*chunks)
    late = client.send(get("/after"))

    [reply] = parse_replies(out)
    assert reply.status == status
    assert reply.headers["connection"] == "close"
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["error"] == error
    assert isinstance(reply.json()["detail"], str)
    assert set(reply.json()) == {"error", "detail"}
    assert client.rejected == [(status, error)]
    assert client.conn.closing
    assert late == b""


def test_a_refused_request_never_reaches_the_handler() -> None:
    client = Client()

    client.send(get("/", "Host: other"))

    assert client.conn.requests == 0


# Handler failures.


def test_a_handler_error_is_a_500_and_the_connection_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = Client()

    with caplog.at_level(logging.ERROR, logger="wr.server"):
        out = client.send(get("/boom") + get("/after"))

    first, second = parse_replies(out)
    assert first.status == 500
    assert first.json() == {"error": "internal_error", "detail": "internal error"}
    assert "handler bug" not in first.body.decode()
    assert second.json()["path"] == "/after"
    assert not client.conn.closing
    assert [r.exc_info is not None for r in caplog.records] == [True]


# Arbitrary input.

FRAGMENTS = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"/",
    b"/a?b=c",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\r\n",
    b"Host: x\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 99\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"Upgrade: websocket\r\nConnection: upgrade\r\n",
    b"\r\n",
    b"\n",
    b"3\r\nabc\r\n0\r\n\r\n",
    b"abc",
]
requestish = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=12)), max_size=24
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=requestish, cuts=st.lists(st.integers(1, 40), max_size=30))
def test_any_bytes_in_any_chunks_never_raise_and_answer_http11(
    data: bytes, cuts: list[int]
) -> None:
    conn = HttpConnection(echo, LIMITS, date=lambda: DATE)
    chunks = []
    rest = data
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)

    out = b""
    for chunk in chunks:
        conn.receive(chunk)
        out += conn.data_to_send()

    assert out == b"" or out.startswith(b"HTTP/1.1 ")


# The asyncio glue, on a fake loop and a fake transport.


@dataclass
class Server:
    loop: FakeLoop = field(default_factory=FakeLoop)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    state: HttpServerState = field(init=False)

    def __post_init__(self) -> None:
        self.state = HttpServerState(
            echo,
            LIMITS,
            on_rejected=lambda status, error: self.rejected.append((status, error)),
        )

    def connect(self) -> tuple[HttpProtocol, FakeTransport]:
        protocol = HttpProtocol(self.state, self.loop)
        transport = FakeTransport(self.loop)
        transport.connect(protocol)
        return protocol, transport


def test_protocol_writes_the_response_and_keeps_the_connection() -> None:
    server = Server()
    protocol, transport = server.connect()

    protocol.data_received(get("/a") + get("/b"))

    replies = parse_replies(transport.take())
    assert [r.json()["path"] for r in replies] == ["/a", "/b"]
    assert not transport.closed
    assert transport.write_buffer_high == LIMITS.write_buffer_bytes


def test_protocol_closes_after_connection_close() -> None:
    server = Server()
    protocol, transport = server.connect()

    protocol.data_received(get("/", "Connection: close"))
    server.loop.run_ready()

    assert parse_replies(transport.take())[0].status == 200
    assert transport.closed
    assert server.state.connections == set()
    assert server.loop.pending() == []


def test_an_incomplete_request_head_gets_408_after_header_timeout() -> None:
    server = Server()
    protocol, transport = server.connect()

    protocol.data_received(b"GET / HTTP/1.1\r\nHo")
    server.loop.advance(LIMITS.header_timeout_s - 0.01)
    assert transport.written == b""
    assert not transport.closed

    server.loop.advance(0.02)
    [reply] = parse_replies(transport.take())
    assert reply.status == 408
    assert reply.json()["error"] == "request_timeout"
    assert reply.headers["connection"] == "close"
    assert transport.closed
    assert server.rejected == [(408, "request_timeout")]


def test_trickling_bytes_does_not_extend_the_header_timeout() -> None:
    server = Server()
    protocol, transport = server.connect()

    for byte in split(b"GET / HTTP/1.1\r\nX-Slow: " + b"s" * 20, 1):
        if transport.closed:
            break
        protocol.data_received(byte)
        server.loop.advance(0.5)

    assert server.loop.time() <= LIMITS.header_timeout_s + 0.5
    assert parse_replies(transport.take())[0].status == 408


def test_a_pipelined_request_gets_its_own_header_timeout() -> None:
    # Each read completes one request and starts the next; no request takes
    # longer than 4 s, so none may time out however long the stream runs.
    server = Server()
    protocol, transport = server.connect()
    stream = b"".join(get(f"/{i}") for i in range(6))
    reads = [
        stream[i : i + len(get("/0"))] for i in range(3, len(stream), len(get("/0")))
    ]

    protocol.data_received(stream[:3])
    for chunk in reads:
        server.loop.advance(4.0)
        protocol.data_received(chunk)

    replies = parse_replies(transport.take())
    assert [r.status for r in replies] == [200] * 6
    assert server.rejected == []


def test_a_client_leaving_mid_request_ends_its_timer_and_its_count() -> None:
    server = Server()
    protocol, transport = server.connect()
    protocol.data_received(b"GET / HTTP/1.1\r\n")

    transport.lose()

    assert server.state.connections == set()
    assert server.loop.pending() == []


def test_an_idle_keepalive_connection_is_closed_without_a_word() -> None:
    server = Server()
    _, transport = server.connect()

    server.loop.advance(LIMITS.keepalive_timeout_s - 0.01)
    assert not transport.closed

    server.loop.advance(0.02)
    assert transport.closed
    assert transport.written == b""
    server.loop.run_ready()
    assert server.state.connections == set()


def test_a_completed_request_rearms_the_idle_timer() -> None:
    server = Server()
    protocol, transport = server.connect()
    server.loop.advance(20.0)

    protocol.data_received(get("/"))
    transport.take()
    server.loop.advance(LIMITS.keepalive_timeout_s - 0.01)
    assert not transport.closed

    server.loop.advance(0.02)
    assert transport.closed
    assert transport.written == b""


def test_connections_over_the_limit_get_503_and_the_count_follows_losses() -> None:
    server = Server()
    (_, first), (_, second) = server.connect(), server.connect()

    _, refused = server.connect()
    server.loop.run_ready()

    [reply] = parse_replies(refused.take())
    assert reply.status == 503
    assert reply.headers["retry-after"] == "1"
    assert reply.headers["connection"] == "close"
    assert reply.json()["error"] == "overloaded"
    assert refused.closed
    assert server.rejected == [(503, "overloaded")]
    assert len(server.state.connections) == 2

    first.lose()
    assert len(server.state.connections) == 1
    _, third = server.connect()
    assert not third.closed
    assert third.written == b""
    assert len(server.state.connections) == 2
    assert not second.closed


def test_pause_writing_pauses_reading_until_resume_writing() -> None:
    server = Server()
    protocol, transport = server.connect()

    protocol.pause_writing()
    assert not transport.reading

    protocol.resume_writing()
    assert transport.reading


def test_a_paused_connection_gets_no_408_for_the_requests_we_did_not_read() -> None:
    server = Server()
    protocol, transport = server.connect()
    protocol.data_received(get("/a") + b"GET /b HTTP/1.1\r\nHo")
    protocol.pause_writing()

    server.loop.advance(LIMITS.header_timeout_s * 3)
    assert [r.status for r in parse_replies(transport.take())] == [200]
    assert not transport.closed

    # Resumed, the unfinished request gets a whole head timeout of its own.
    protocol.resume_writing()
    server.loop.advance(LIMITS.header_timeout_s - 0.01)
    protocol.data_received(b"st: x\r\n\r\n")
    assert [r.json()["path"] for r in parse_replies(transport.take())] == ["/b"]


def test_a_client_that_reads_nothing_for_the_write_timeout_is_dropped() -> None:
    server = Server()
    protocol, transport = server.connect()
    protocol.data_received(get("/a"))
    protocol.pause_writing()

    server.loop.advance(LIMITS.write_timeout_s - 0.01)
    assert not transport.aborted
    server.loop.advance(0.02)
    assert transport.aborted
    server.loop.run_ready()
    assert server.state.connections == set()


def test_a_pause_during_data_received_is_not_undone_by_its_timers() -> None:
    server = Server()
    protocol, transport = server.connect()

    def fill_buffer(data: object) -> None:
        # A write that fills the buffer at once: the transport asks for a pause.
        protocol.pause_writing()

    transport.write = fill_buffer  # type: ignore[method-assign]

    protocol.data_received(get("/a"))
    # The idle timer would close politely; the write timer aborts.
    server.loop.advance(max(LIMITS.keepalive_timeout_s, LIMITS.write_timeout_s))
    assert transport.aborted


def test_a_closing_connection_whose_client_reads_nothing_is_aborted() -> None:
    server = Server()
    protocol = HttpProtocol(server.state, server.loop)
    # A transport that, like a real one with a full buffer, stays open
    # after close() until the client takes what is left.
    transport = FakeTransport(None)
    transport.connect(protocol)
    protocol.data_received(get("/", "Connection: close"))
    assert transport.closed
    assert not transport.aborted

    server.loop.advance(LIMITS.write_timeout_s + 0.01)
    assert transport.aborted


def test_drain_closes_idle_connections_and_lets_a_request_in_flight_finish() -> None:
    server = Server()
    idle_protocol, idle = server.connect()
    idle_protocol.data_received(get("/done"))
    busy_protocol, busy = server.connect()
    busy_protocol.data_received(b"GET /late HTTP/1.1\r\nHost: x\r\n")

    server.state.drain()
    assert idle.closed
    assert not busy.closed

    busy_protocol.data_received(b"\r\n")
    [reply] = parse_replies(busy.take())
    assert reply.json()["path"] == "/late"
    assert reply.headers["connection"] == "close"
    assert busy.closed
    server.loop.run_ready()
    assert server.state.connections == set()
    assert server.loop.pending() == []
