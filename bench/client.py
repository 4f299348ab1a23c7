"""The load generator's HTTP client: one asyncio.Protocol per connection.

A :class:`Connection` keeps one keep-alive connection open, writes the
requests handed to :meth:`Connection.submit` as soon as fewer than
``depth`` are in flight (``depth`` > 1 is HTTP/1.1 pipelining), reads the
answers with httptools' response parser and calls each request's callback
with the status and body. Everything is callbacks on the loop, with no
future or task per request, so that one client core can push a Python
server to its limit.

Every answer is timed (from the write of its request to the end of its
body) into a :class:`Recorder`, per kind of request, along with errors by
kind: ``http_<status>`` (with the server's ``error`` reason when it sent
one), ``lost`` (the connection closed with the request in flight),
``connect`` and ``timeout``.
"""

from __future__ import annotations

import asyncio
import time
import typing
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools
import orjson

from bench import Json
from bench.stats import LatencyHistogram

__all__ = [
    "REQUEST_TIMEOUT_S",
    "Callback",
    "Connection",
    "Recorder",
    "request_bytes",
]

# A request unanswered this long counts as a timeout and its connection is
# dropped: far above any latency a healthy server shows under this load,
# short enough to end a run against a hung server.
REQUEST_TIMEOUT_S = 10.0
# How often in-flight requests are checked against REQUEST_TIMEOUT_S.
_TIMEOUT_CHECK_S = 1.0
# Pause before reconnecting after a refused or dropped connection, so that a
# dead server is not hammered with SYNs.
RECONNECT_DELAY_S = 0.1
# Error bodies longer than this are not parsed for a reason.
_MAX_ERROR_BODY = 4096

# status, body, when the request was written (time.monotonic); status 0
# means no answer came (lost, timeout, connect).
Callback = Callable[[int, bytes, float], None]


def request_bytes(
    method: str, target: str, token: str | None = None, host: str = "127.0.0.1"
) -> bytes:
    """One HTTP/1.1 keep-alive request, with a bearer token if given."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if method == "POST":
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Recorder:
    """Latencies, counts and errors per kind of request, and a timeline."""

    started: float = field(default_factory=time.monotonic)
    recording: bool = True
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    # Per whole second of the monotonic clock (shared by every process of
    # the host, so timelines of several processes line up): answers, and
    # their latencies.
    timeline_counts: dict[int, Counter[str]] = field(default_factory=dict)
    timeline_latency: dict[int, LatencyHistogram] = field(default_factory=dict)
    recorded_from: float = 0.0
    recorded_until: float = 0.0

    def answered(self, kind: str, status: int, body: bytes, seconds: float) -> None:
        if not self.recording:
            return
        now = time.monotonic()
        self.recorded_until = now
        if 200 <= status < 300:
            histogram = self.latency.get(kind)
            if histogram is None:
                histogram = self.latency[kind] = LatencyHistogram()
            histogram.record(seconds)
        else:
            self.errors[f"{kind}:{_error_kind(status, body)}"] += 1
        second = int(now)
        counts = self.timeline_counts.get(second)
        if counts is None:
            counts = self.timeline_counts[second] = Counter()
            self.timeline_latency[second] = LatencyHistogram()
        counts[kind] += 1
        self.timeline_latency[second].record(seconds)

    def failed(self, kind: str, error: str) -> None:
        if self.recording:
            self.errors[f"{kind}:{error}"] += 1

    def start_recording(self) -> None:
        self.recording = True
        self.recorded_from = self.recorded_until = time.monotonic()

    def to_json(self) -> Json:
        return {
            "started": self.started,
            "recorded_from": self.recorded_from,
            "recorded_until": self.recorded_until,
            "latency": {k: h.to_json() for k, h in self.latency.items()},
            "errors": dict(self.errors),
            "timeline_counts": {
                str(s): dict(c) for s, c in self.timeline_counts.items()
            },
            "timeline_latency": {
                str(s): h.to_json() for s, h in self.timeline_latency.items()
            },
        }


def _error_kind(status: int, body: bytes) -> str:
    reason = ""
    if body and len(body) <= _MAX_ERROR_BODY:
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError:
            decoded = None
        if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
            reason = " " + decoded["error"]
    return f"http_{status}{reason}"


@dataclass(slots=True)
class _InFlight:
    kind: str
    sent_at: float
    callback: Callback | None


class Connection(asyncio.Protocol):
    """One keep-alive connection that writes queued requests, ``depth`` at once."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        recorder: Recorder,
        depth: int = 1,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.recorder = recorder
        self.depth = depth
        self.outbox: deque[tuple[str, bytes, Callback | None]] = deque()
        self.in_flight: deque[_InFlight] = deque()
        self.transport: asyncio.Transport | None = None
        self.connecting = False
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    # Driving it.

    def submit(self, kind: str, data: bytes, callback: Callback | None) -> None:
        """Queue one request; its callback gets (status, body) when it ends."""
        self.outbox.append((kind, data, callback))
        if self.transport is not None:
            self._flush()
        elif not self.connecting and not self.closed:
            self._connect()

    @property
    def pending(self) -> int:
        return len(self.outbox) + len(self.in_flight)

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()

    # asyncio callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = typing.cast(asyncio.Transport, transport)
        self.connecting = False
        self._parser = httptools.HttpResponseParser(self)
        self._timer = self.loop.call_later(_TIMEOUT_CHECK_S, self._check_timeouts)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._drop("bad_response")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()
        self._fail_in_flight("lost")
        if self.outbox and not self.closed:
            self.loop.call_later(RECONNECT_DELAY_S, self._connect)

    # httptools callbacks.

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        body = b"".join(self._body)
        self._body.clear()
        if not self.in_flight:
            self._drop("unasked_response")
            return
        request = self.in_flight.popleft()
        self.recorder.answered(
            request.kind, status, body, time.monotonic() - request.sent_at
        )
        if request.callback is not None:
            request.callback(status, body, request.sent_at)
        self._flush()

    # Inside.

    def _connect(self) -> None:
        if self.connecting or self.transport is not None or self.closed:
            return
        self.connecting = True
        task = self.loop.create_task(
            self.loop.create_connection(lambda: self, self.host, self.port)
        )
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[object]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.connecting = False
        # Every queued request fails once, and is dropped: the driver that
        # queued it decides whether to try again.
        failed = list(self.outbox)
        self.outbox.clear()
        for kind, _, callback in failed:
            self.recorder.failed(kind, "connect")
            if callback is not None:
                callback(0, b"", time.monotonic())

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        batch = []
        now = time.monotonic()
        while self.outbox and len(self.in_flight) < self.depth:
            kind, data, callback = self.outbox.popleft()
            self.in_flight.append(_InFlight(kind, now, callback))
            batch.append(data)
        if batch:
            transport.write(b"".join(batch))

    def _check_timeouts(self) -> None:
        if self.in_flight and (
            time.monotonic() - self.in_flight[0].sent_at > REQUEST_TIMEOUT_S
        ):
            self._drop("timeout")
            return
        self._timer = self.loop.call_later(_TIMEOUT_CHECK_S, self._check_timeouts)

    def _drop(self, error: str) -> None:
        self._fail_in_flight(error)
        if self.transport is not None:
            self.transport.abort()

    def _fail_in_flight(self, error: str) -> None:
        failed = list(self.in_flight)
        self.in_flight.clear()
        self._body.clear()
        for request in failed:
            self.recorder.failed(request.kind, error)
            if request.callback is not None:
                request.callback(0, b"", request.sent_at)
