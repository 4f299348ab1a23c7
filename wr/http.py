"""HTTP/1.1 for the waiting room: a byte-stream connection and its asyncio glue.

Theory of operation. :class:`HttpConnection` knows nothing of sockets: bytes
go in through :meth:`HttpConnection.receive`, responses come out of
:meth:`HttpConnection.data_to_send`, and :attr:`HttpConnection.closing`
says when the connection must end. httptools does the parsing; this module
adds the limits a public server needs (each one a field of
:class:`wr.config.HttpConfig`) and turns every way a request can be wrong
into an HTTP status with a JSON reason instead of an exception.

Handlers are plain functions from :class:`Request` to :class:`Response`.
They never await: everything the waiting room does per request is a
counter read or increment and one signature, so a request is answered in
the ``data_received`` call that completed it. Pipelined requests are
therefore answered in order by construction.

:class:`HttpProtocol` is the thin asyncio layer: it feeds bytes, writes what
comes out, runs the two timers (request head, idle keep-alive), follows the
transport's flow control and counts connections. Timers go through the loop
it is given, so tests drive them with a fake clock.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools
import orjson

from wr.config import HttpConfig

__all__ = [
    "Handler",
    "HttpConnection",
    "HttpProtocol",
    "HttpServerState",
    "Request",
    "Response",
    "error_response",
]

log = logging.getLogger("wr.server")

# Error names sent as ``{"error": NAME}`` for the statuses this layer makes.
_ERROR_NAMES = {
    400: "bad_request",
    408: "request_timeout",
    413: "body_too_large",
    414: "target_too_long",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "overloaded",
    505: "version_not_supported",
}

# What llhttp calls a version it refuses (HTTP/1.2, HTTP/3.0...).
_BAD_VERSION_MESSAGE = "Invalid HTTP version"
# RFC 9110 section 15.2.1: sent before reading a body the client holds back.
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# The bytes of a request head that neither head limit counts: the method,
# spaces and version of the request line and the line ends (about 30).
_HEAD_FRAMING_BYTES = 64


@dataclass(slots=True)
class Request:
    """One parsed request. Header names are lower-case; values are raw bytes."""

    method: str
    path: str
    query: str
    headers: dict[bytes, bytes]
    body: bytes = b""
    http_version: str = "1.1"
    keep_alive: bool = True
    # The client's address, for the access log.
    peer: str = "-"

    def header(self, name: bytes) -> bytes | None:
        return self.headers.get(name)

    def cookie(self, name: str) -> str | None:
        """The value of cookie ``name`` (RFC 6265 section 5.4), or None."""
        raw = self.headers.get(b"cookie")
        if raw is None:
            return None
        prefix = name + "="
        for part in raw.decode("latin-1").split(";"):
            pair = part.strip()
            if pair.startswith(prefix):
                return pair[len(prefix) :]
        return None

    def bearer(self) -> str | None:
        raw = self.headers.get(b"authorization")
        if raw is None or raw[:7].lower() != b"bearer ":
            return None
        return raw[7:].strip().decode("latin-1")


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = "application/json"


Handler = Callable[[Request], Response]


def error_response(
    status: int, error: str, detail: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    """The one shape of every error: ``{"error": ..., "detail": ...}``."""
    body = orjson.dumps({"error": error, "detail": detail})
    return Response(status, body, headers or [])


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


_STATUS_LINES = {s.value: _status_line(s.value) for s in HTTPStatus}


def encode_response(
    response: Response,
    *,
    keep_alive: bool,
    head: bool,
    date: bytes,
    http10: bool = False,
) -> bytes:
    """Serialize a response; HEAD gets the headers of the full response."""
    status = response.status
    parts = [
        _STATUS_LINES.get(status) or _status_line(status),
        b"date: ",
        date,
        b"\r\n",
    ]
    # RFC 9110 section 8.6: no Content-Length in 1xx and 204 responses; in a
    # 304 it would have to describe the cached representation, so omit it.
    if status not in (204, 304) and status >= 200:
        parts.append(b"content-length: %d\r\n" % len(response.body))
    if response.content_type is not None and status not in (204, 304):
        parts.append(b"content-type: %s\r\n" % response.content_type.encode())
    for name, value in response.headers:
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if not keep_alive:
        parts.append(b"connection: close\r\n\r\n")
    elif http10:
        # RFC 9112 section 9.3: an HTTP/1.0 client keeps the connection open
        # only if the response says so.
        parts.append(b"connection: keep-alive\r\n\r\n")
    else:
        parts.append(b"\r\n")
    if not head and status not in (204, 304):
        parts.append(response.body)
    return b"".join(parts)


class _Reject(Exception):
    """Raised inside parser callbacks to stop parsing with an HTTP error."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _Stop(Exception):
    """Raised inside parser callbacks: the connection ends after this response."""


class HttpConnection:
    """One client connection as a byte stream, without I/O.

    ``on_rejected(status, error)`` is called for every request refused by
    this layer (for metrics); ``date`` returns the current Date header value.
    """

    def __init__(
        self,
        handler: Handler,
        limits: HttpConfig,
        *,
        date: Callable[[], bytes] = lambda: http_date(time.time()),
        on_rejected: Callable[[int, str], None] = lambda status, error: None,
    ) -> None:
        self._handler = handler
        self._limits = limits
        self._date = date
        self._on_rejected = on_rejected
        self._parser = httptools.HttpRequestParser(self)
        self._out: list[bytes] = []
        self.closing = False
        # The client's address, handed to each request.
        self.peer = "-"
        # Set when the server drains: the current response is the last.
        self.draining = False
        # Whether the connection is between a request's first byte and its end.
        self.in_request = False
        self.requests = 0
        self._reset_request()

    def _reset_request(self) -> None:
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_count = 0
        self._header_bytes = 0
        self._head_done = False
        self._head_fed = 0
        self._body: list[bytes] = []
        self._body_size = 0

    # The byte stream.

    def receive(self, data: bytes) -> None:
        """Consume bytes from the client; responses become :meth:`data_to_send`."""
        if self.closing:
            return
        # httptools buffers a header line until it ends, so a client that
        # streams one endless header is stopped by counting what it sends
        # once its request head is under way. (The chunk in which a request
        # begins is not counted: it is at most one socket read.)
        if self.in_request and not self._head_done:
            self._head_fed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._fail_from(exc.__context__)
            return
        except httptools.HttpParserUpgrade:
            # An Upgrade or CONNECT request: its response, if any, is written;
            # we speak no other protocol, so the connection ends here.
            self.closing = True
            return
        except httptools.HttpParserError as exc:
            log.debug("unparseable request error=%s", exc)
            if str(exc) == _BAD_VERSION_MESSAGE:
                self._reject(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
            else:
                self._reject(400, "malformed request")
            return

        # on_url has seen every byte of the target so far and refused a long
        # one, so what exceeds the limit here is a header httptools holds back.
        if self.in_request and not self._head_done:
            limits = self._limits
            limit = (
                limits.max_target_bytes + limits.max_header_bytes + _HEAD_FRAMING_BYTES
            )
            if self._head_fed > limit:
                self._reject(431, "request head too large")

    def timeout(self) -> None:
        """The request-head timer fired: answer 408 and close."""
        if self.in_request and not self.closing:
            self._reject(408, "request not received in time")

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def refuse(self, status: int, detail: str, headers: list[tuple[str, str]]) -> None:
        """Answer with an error before reading anything, then close."""
        self._respond(
            error_response(status, _ERROR_NAMES[status], detail, headers),
            keep_alive=False,
            head=False,
        )
        self.closing = True

    def _fail_from(self, cause: BaseException | None) -> None:
        if isinstance(cause, _Reject):
            self._reject(cause.status, cause.detail)
        elif isinstance(cause, _Stop):
            self.closing = True
        else:
            # A bug of ours inside a callback; the client sees only a 500.
            log.error("http callback failed", exc_info=cause)
            self._reject(500, "internal error")

    def _reject(self, status: int, detail: str) -> None:
        error = _ERROR_NAMES[status]
        self._on_rejected(status, error)
        log.debug("rejected status=%s error=%s detail=%s", status, error, detail)
        self.refuse(status, detail, [])
        self.in_request = False

    def _respond(
        self,
        response: Response,
        *,
        keep_alive: bool,
        head: bool,
        http10: bool = False,
    ) -> None:
        self._out.append(
            encode_response(
                response,
                keep_alive=keep_alive,
                head=head,
                date=self._date(),
                http10=http10,
            )
        )

    # httptools callbacks. Each may raise _Reject or _Stop to end parsing.

    def on_message_begin(self) -> None:
        self.in_request = True
        self._reset_request()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_target_bytes:
            raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self._limits.max_headers:
            raise _Reject(431, "too many headers")
        if self._header_bytes > self._limits.max_header_bytes:
            raise _Reject(431, "request head too large")
        name = name.lower()
        previous = self._headers.get(name)
        if previous is None:
            self._headers[name] = value
        elif name == b"cookie":
            self._headers[name] = previous + b"; " + value
        elif name in (b"host", b"authorization", b"content-length"):
            raise _Reject(400, f"duplicate {name.decode('latin-1')} header")
        else:
            self._headers[name] = previous + b", " + value

    def on_headers_complete(self) -> None:
        self._head_done = True
        headers = self._headers
        version = self._parser.get_http_version()
        # llhttp hands on HTTP/0.9 and 2.0 request lines; we answer neither
        # in their own framing (RFC 9110 section 15.6.6).
        if version not in ("1.0", "1.1"):
            raise _Reject(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
        # RFC 9112 section 3.2: an HTTP/1.1 request without Host is a 400.
        if version == "1.1" and b"host" not in headers:
            raise _Reject(400, "missing host header")
        coding = headers.get(b"transfer-encoding")
        if coding is not None:
            codings = [c.strip() for c in coding.lower().split(b",")]
            # RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding
            # has faulty framing. Section 6.3: unless chunked comes last,
            # the body has no knowable end. Either way, 400 and close.
            if version == "1.0":
                raise _Reject(400, "transfer-encoding in an HTTP/1.0 request")
            if codings[-1] != b"chunked":
                raise _Reject(400, "chunked must be the final transfer coding")
            # Section 6.1: a coding we cannot undo (gzip...) is a 501.
            if len(codings) > 1:
                raise _Reject(501, "only the chunked transfer coding is supported")
        length = headers.get(b"content-length")
        # llhttp has already refused a Content-Length that is not digits.
        if length is not None and int(length) > self._limits.max_body_bytes:
            raise _Reject(413, "request body too large")
        # A client that asked to hear 100 first may wait for it before it
        # sends the body (RFC 9110 section 10.1.1).
        expect = headers.get(b"expect")
        if (
            expect is not None
            and expect.strip().lower() == b"100-continue"
            and version == "1.1"
            and (coding is not None or (length is not None and int(length) > 0))
        ):
            self._out.append(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            raise _Reject(413, "request body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.in_request = False
        self.requests += 1
        parser = self._parser
        # We speak no other protocol than HTTP/1.1, so an Upgrade request is
        # answered as a plain one and the connection ends; so does every
        # connection once the server drains.
        keep_alive = (
            bool(parser.should_keep_alive())
            and not parser.should_upgrade()
            and not self.draining
        )
        method = parser.get_method().decode("ascii")
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise _Reject(400, "invalid request target") from None
        request = Request(
            method=method,
            path=url.path.decode("latin-1") if url.path else "/",
            query=url.query.decode("latin-1") if url.query else "",
            headers=self._headers,
            body=b"".join(self._body),
            http_version=parser.get_http_version(),
            keep_alive=keep_alive,
            peer=self.peer,
        )
        try:
            response = self._handler(request)
        except Exception:
            log.exception("handler failed method=%s path=%s", method, request.path)
            response = error_response(500, "internal_error", "internal error")
        self._respond(
            response,
            keep_alive=keep_alive,
            head=method == "HEAD",
            http10=request.http_version == "1.0",
        )
        if not keep_alive:
            self.closing = True
            raise _Stop


def http_date(now: float) -> bytes:
    return email.utils.formatdate(now, usegmt=True).encode("ascii")


class HttpServerState:
    """What the connections of one listening process share."""

    def __init__(
        self,
        handler: Handler,
        limits: HttpConfig,
        *,
        on_rejected: Callable[[int, str], None] = lambda status, error: None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.on_rejected = on_rejected
        self.connections: set[HttpProtocol] = set()
        self.draining = False
        self._date = http_date(time.time())
        self._date_second = int(time.time())

    def date(self) -> bytes:
        # Formatting a date costs more than the rest of a small response;
        # it changes once a second, so it is cached for that second.
        now = time.time()
        if int(now) != self._date_second:
            self._date_second = int(now)
            self._date = http_date(now)
        return self._date

    def drain(self) -> None:
        """Finish in-flight requests; close idle connections now."""
        self.draining = True
        for protocol in list(self.connections):
            protocol.drain()


class HttpProtocol(asyncio.Protocol):
    """asyncio glue around :class:`HttpConnection`. Never raises."""

    def __init__(self, state: HttpServerState, loop: Any = None) -> None:
        self._state = state
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._conn = HttpConnection(
            state.handler, state.limits, date=state.date, on_rejected=state.on_rejected
        )
        self._timer: asyncio.TimerHandle | None = None
        self._timer_is_head = False
        # When the current timer's purpose falls due (loop time).
        self._deadline = 0.0
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = typing.cast(asyncio.Transport, transport)
        self._transport = transport
        limits = self._state.limits
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._conn.peer = str(peer[0])

        # Over the limit, a quick answer is kinder than a hang and costs less.
        if len(self._state.connections) >= limits.max_connections:
            self._state.on_rejected(503, "overloaded")
            self._conn.refuse(503, "too many connections", [("retry-after", "1")])
            self._flush()
            return

        self._state.connections.add(self)
        transport.set_write_buffer_limits(high=limits.write_buffer_bytes)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        requests = conn.requests
        conn.receive(data)
        self._flush()
        # Paused by that flush: the write timer runs instead (pause_writing).
        if self._transport is None or self._transport.is_closing() or self._paused:
            return

        # Re-arm the timer that fits where the connection now stands. A
        # request begun in this read gets its own deadline, even when the
        # one before it ended in the same read.
        if conn.in_request:
            if not self._timer_is_head or conn.requests != requests:
                self._arm(self._state.limits.header_timeout_s, head=True)
        elif self._state.draining:
            self._close()
        else:
            self._arm_idle()

    def eof_received(self) -> bool | None:
        # A half-closed client gets no more responses; close our side too.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._state.connections.discard(self)
        self._transport = None

    def pause_writing(self) -> None:
        # The client is not reading its responses: stop reading its requests.
        # The head timer stops too (we are the ones not reading); the client
        # gets write_timeout_s to take its responses before it is dropped.
        if self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()
            self._arm_write()

    def resume_writing(self) -> None:
        if self._transport is not None and self._paused:
            self._paused = False
            self._transport.resume_reading()
            if self._transport.is_closing():
                return
            if self._conn.in_request:
                self._arm(self._state.limits.header_timeout_s, head=True)
            else:
                self._arm_idle()

    def drain(self) -> None:
        self._conn.draining = True
        if not self._conn.in_request:
            self._close()

    def abort(self) -> None:
        self._cancel_timer()
        if self._transport is not None:
            self._transport.abort()

    # Helpers.

    def _flush(self) -> None:
        out = self._conn.data_to_send()
        transport = self._transport
        if transport is None:
            return
        if out:
            transport.write(out)
        if self._conn.closing:
            self._close()

    def _close(self) -> None:
        self._cancel_timer()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
            # close() waits for the client to take what is buffered; one
            # that never reads would hold the connection for ever.
            self._arm_write()

    def _arm_write(self) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(
            self._state.limits.write_timeout_s, self._on_write_timeout
        )

    def _on_write_timeout(self) -> None:
        self._timer = None
        log.debug("dropped a client that reads nothing peer=%s", self._conn.peer)
        if self._transport is not None:
            self._transport.abort()

    def _arm_idle(self) -> None:
        self._arm(self._state.limits.keepalive_timeout_s, head=False)

    def _arm(self, delay: float, *, head: bool) -> None:
        deadline = self._loop.time() + delay
        self._timer_is_head = head
        self._deadline = deadline
        # A timer due before the new deadline is kept, and pushed on when it
        # fires: a keep-alive connection re-arms after every request, and a
        # cancel plus a new handle each time cost ~8 % of a worker under
        # unpipelined load.
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_is_head = False

    def _on_timer(self) -> None:
        self._timer = None
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        if self._timer_is_head:
            self._conn.timeout()
            self._flush()
        self._close()
