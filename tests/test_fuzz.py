"""Properties under hypothesis: the protocol glue, the token codec, a fuzz target.

- Any split of a valid request stream into reads gives the same bytes out
  as the stream in one read (:class:`wr.http.HttpConnection`, real app).
- :meth:`wr.tokens.Tokens.check` on random and mutated tokens returns
  claims or raises :class:`wr.tokens.TokenError`, nothing else.
- Random bytes fed to a worker's protocol (:class:`wr.http.HttpProtocol`
  on the fakes of ``tests.fakes``) never raise out of it, and every
  connection ends, answered or closed, once its timers have run.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.corpus import LAYER_STATUSES, parse_replies
from tests.fakes import FakeLoop, FakeTransport
from tests.test_api import T0, World
from tests.test_http import DATE, LIMITS
from wr.http import HttpConnection, HttpProtocol, HttpServerState
from wr.tokens import REASONS, Claims, TokenError

# Enough examples to find a split bug in a few seconds of a busy machine.
fuzzing = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    static = tmp_path_factory.mktemp("static")
    (static / "index.html").write_text("<!doctype html><title>wait</title>")
    (static / "inside.html").write_text("<!doctype html><title>in</title>")
    world = World(static)
    # A fixed clock and jitter: equal requests get byte-equal answers.
    world.clock.now = T0
    return world


# Valid request streams.

targets = st.sampled_from(
    [
        "/healthz",
        "/readyz",
        "/nope",
        "/api/v1/rooms/default",
        "/api/v1/rooms/nope/status",
        "/api/v1/verify?room=default",
        "/static/missing.css",
    ]
)
header_names = st.sampled_from([b"X-A", b"Accept", b"User-Agent", b"Cookie"])
header_values = st.binary(max_size=40).map(
    lambda raw: bytes(b for b in raw if 0x20 <= b < 0x7F).strip()
)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "DELETE", "OPTIONS"]))
    lines = [f"{method} {draw(targets)} HTTP/1.1".encode(), b"Host: wr.test"]
    for _ in range(draw(st.integers(0, 4))):
        lines.append(draw(header_names) + b": " + draw(header_values))
    body = b""
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if framing == "length":
        # Bodies stay within LIMITS (32 bytes): every request is answered.
        body = draw(st.binary(max_size=LIMITS.max_body_bytes))
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        chunks = draw(st.lists(st.binary(min_size=1, max_size=8), max_size=4))
        lines.append(b"Transfer-Encoding: chunked")
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


streams = st.lists(request(), min_size=1, max_size=6).map(b"".join)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    ends = [*points, len(data)]
    return [data[a:b] for a, b in zip([0, *points], ends, strict=True)]


def feed(world: World, chunks: list[bytes]) -> tuple[bytes, bool]:
    conn = HttpConnection(world.app.handle, LIMITS, date=lambda: DATE)
    out = bytearray()
    for chunk in chunks:
        conn.receive(chunk)
        out += conn.data_to_send()
    return bytes(out), conn.closing


@fuzzing
@given(stream=streams, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_any_split_of_a_valid_stream_gives_the_same_responses(
    world: World, stream: bytes, cuts: list[int]
) -> None:
    whole = feed(world, [stream])
    assert feed(world, split(stream, cuts)) == whole
    # Every request of a valid stream is answered.
    assert whole[0].count(b"HTTP/1.1 ") >= stream.count(b" HTTP/1.1\r\n")


# The token codec.


def valid_tokens(world: World) -> list[str]:
    tokens = world.tokens
    return [
        tokens.issue_queue("default", "s" * 22, 7, 30, T0),
        tokens.issue_access("default", "s" * 22, 7, 60, T0),
        tokens.issue_bypass("default", 60, T0),
    ]


def outcome(world: World, token: str, typ: str) -> Claims | TokenError:
    try:
        return world.tokens.check(token, "default", typ, T0)
    except TokenError as exc:
        return exc


def check_only_raises_token_errors(world: World, token: str) -> None:
    for typ in ("queue", "access", "bypass"):
        result = outcome(world, token, typ)
        if isinstance(result, TokenError):
            assert result.reason in REASONS
            assert result.detail
        else:
            assert isinstance(result, Claims)


@fuzzing
@given(text=st.text(max_size=400))
def test_random_text_is_a_token_error_or_claims(world: World, text: str) -> None:
    check_only_raises_token_errors(world, text)


@fuzzing
@given(
    which=st.integers(0, 2),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["replace", "insert", "delete"]),
            st.integers(0, 10_000),
            st.characters(codec="utf-8"),
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_mutated_tokens_are_token_errors_or_claims(
    world: World, which: int, edits: list[tuple[str, int, str]]
) -> None:
    token = valid_tokens(world)[which]
    for kind, offset, char in edits:
        at = offset % (len(token) + 1)
        if kind == "replace":
            token = token[:at] + char + token[at + 1 :]
        elif kind == "insert":
            token = token[:at] + char + token[at:]
        else:
            token = token[:at] + token[at + 1 :]
    check_only_raises_token_errors(world, token)


# The fuzz target: a worker's protocol.

FRAGMENTS = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /api/v1/rooms/default/join HTTP/1.1\r\nHost: x\r\n",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"\r\n",
    b"\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.0",
    b"\x00",
    b"\xff",
]
noise = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=30)), max_size=20
).map(b"".join)


@fuzzing
@given(data=noise, cuts=st.lists(st.integers(0, 10_000), max_size=10))
def test_random_bytes_never_raise_out_of_the_protocol_and_always_end(
    world: World, data: bytes, cuts: list[int]
) -> None:
    loop = FakeLoop()
    rejected: list[int] = []
    state = HttpServerState(
        world.app.handle,
        LIMITS,
        on_rejected=lambda status, error: rejected.append(status),
    )
    protocol = HttpProtocol(state, loop)
    transport = FakeTransport(loop)
    transport.connect(protocol)

    for chunk in split(data, cuts):
        if transport.closed:
            break
        protocol.data_received(chunk)
        loop.run_ready()

    # However it stood, its timers end it.
    loop.advance(LIMITS.keepalive_timeout_s + LIMITS.write_timeout_s)
    assert transport.closed
    assert transport.lost
    assert state.connections == set()
    out = bytes(transport.written)
    replies = parse_replies(out)
    assert out == b"" or (out.startswith(b"HTTP/1.1 ") and replies)
    # Every refusal of the HTTP layer was counted, and written.
    assert [r.status for r in replies if r.status in LAYER_STATUSES] == rejected
