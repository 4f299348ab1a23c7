"""Closed-loop load: each connection keeps ``depth`` requests in flight.

Modes (what one request is):

- ``join``: a fresh person joining (no token), ``POST .../join``;
- ``status``: a holder of a valid queue token asking where they stand; the
  tokens come from joins made before the measurement;
- ``verify``: a gateway checking an access token (``GET /api/v1/verify``);
  the tokens come from joins in a room that admits at once (``open_room``);
- ``mixed``: joins, status polls and verifies in the proportions of
  :data:`MIX`, in that order within each process;
- ``fixed``: ``GET /`` over and over, for servers with one fixed answer.

A run is bounded twice: by ``duration_s`` after the warm-up, and by
``max_requests`` in all (split between the processes). It runs in
``processes`` processes, each with its own uvloop loop and its share of
the connections, pinned to ``cpus`` when given; their results add up in
:func:`merge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import orjson
import uvloop

from bench import Json
from bench.client import REQUEST_TIMEOUT_S, Connection, Recorder, request_bytes
from bench.stats import LatencyHistogram

__all__ = ["MIX", "MODES", "LoadSpec", "merge", "run_load", "split"]

MODES = ("join", "status", "verify", "mixed", "fixed")
# One cycle of the mixed mode: for every 10 requests, 2 arrivals, 5 polls
# and 3 gateway checks (a site with people inside and people waiting).
MIX: tuple[str, ...] = ("join", "status", "verify", "status", "status")
MIX += ("join", "status", "verify", "status", "verify")
# How long fetching tokens before a run may take at most.
SETUP_TIMEOUT_S = 60.0
# Between status polls while waiting for an access token in the open room:
# its ticker admits everyone at each tick (~100 ms).
ADMIT_POLL_S = 0.2


@dataclass(frozen=True)
class LoadSpec:
    """What one run does; every process gets a copy with its own share."""

    mode: str
    host: str = "127.0.0.1"
    port: int = 8080
    room: str = "default"
    # A room that admits everyone at once, for access tokens.
    open_room: str = "open"
    connections: int = 32
    depth: int = 1
    processes: int = 1
    duration_s: float = 5.0
    warmup_s: float = 1.0
    # In all processes together; a bound on top of the duration.
    max_requests: int = 10_000_000
    # Tokens fetched per connection before the measurement, used in turn.
    tokens_per_connection: int = 16
    cpus: tuple[int, ...] = ()

    def share(self, index: int) -> LoadSpec:
        """The part of this run that process ``index`` does."""
        share = {
            "connections": split(self.connections, self.processes, index),
            "max_requests": split(self.max_requests, self.processes, index),
            "processes": 1,
        }
        return LoadSpec(**{**asdict(self), **share})


def split(total: int, parts: int, index: int) -> int:
    """Part ``index`` of ``total`` cut into ``parts`` as even as can be."""
    base, extra = divmod(total, parts)
    return base + (index < extra)


def run_load(spec: LoadSpec) -> Json:
    """Run ``spec`` in its processes; the merged result (see :func:`merge`)."""
    if spec.processes == 1:
        return merge([_process_main(spec)])
    context = multiprocessing.get_context("spawn")
    shares = [spec.share(i) for i in range(spec.processes)]
    with context.Pool(spec.processes) as pool:
        return merge(pool.map(_process_main, shares))


def _process_main(spec: LoadSpec) -> Json:
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_ClosedLoop(spec).run())


class _ClosedLoop:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.recorder = Recorder(recording=False)
        self.queue_tokens: list[str] = []
        self.access_tokens: list[str] = []
        self.sent = 0
        self.deadline = float("inf")
        self.stopping = False
        # One sequence of kinds for all connections of the process, so that
        # a bounded run sends exactly MIX's proportions.
        self.kinds: Iterator[str] = (
            itertools.cycle(MIX)
            if spec.mode == "mixed"
            else itertools.repeat(spec.mode)
        )

    async def run(self) -> Json:
        loop = asyncio.get_running_loop()
        spec = self.spec
        connections = [
            Connection(loop, spec.host, spec.port, self.recorder, spec.depth)
            for _ in range(spec.connections)
        ]
        setup_started = time.monotonic()
        await asyncio.wait_for(self._setup(connections), SETUP_TIMEOUT_S)
        setup_s = time.monotonic() - setup_started

        done = loop.create_future()
        for index, connection in enumerate(connections):
            requests = self._requests(index)
            for _ in range(spec.depth):
                self._next(connection, requests, done)
        await asyncio.sleep(spec.warmup_s)
        self.recorder.start_recording()
        self.deadline = time.monotonic() + spec.duration_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(done), spec.duration_s + REQUEST_TIMEOUT_S
            )
        self.stopping = True
        await _drain(connections)
        for connection in connections:
            connection.close()
        result = self.recorder.to_json()
        result["sent"] = self.sent
        result["setup_s"] = setup_s
        return result

    def _next(
        self,
        connection: Connection,
        requests: Iterator[tuple[str, bytes]],
        done: asyncio.Future[None],
    ) -> None:
        over = time.monotonic() >= self.deadline or self.sent >= self.spec.max_requests
        if self.stopping or over:
            if not done.done():
                done.set_result(None)
            return
        kind, data = next(requests)
        self.sent += 1
        connection.submit(
            kind, data, lambda _s, _b, _t: self._next(connection, requests, done)
        )

    def _requests(self, index: int) -> Iterator[tuple[str, bytes]]:
        spec = self.spec
        join = request_bytes("POST", f"/api/v1/rooms/{spec.room}/join")
        status = [
            request_bytes("GET", f"/api/v1/rooms/{spec.room}/status", token)
            for token in self.queue_tokens[index :: spec.connections] or [""]
        ]
        verify = [
            request_bytes("GET", f"/api/v1/verify?room={spec.open_room}", token)
            for token in self.access_tokens[index :: spec.connections] or [""]
        ]
        by_kind = {
            "join": itertools.repeat(join),
            "status": itertools.cycle(status),
            "verify": itertools.cycle(verify),
            "fixed": itertools.repeat(request_bytes("GET", "/")),
        }
        for kind in self.kinds:
            yield kind, next(by_kind[kind])

    async def _setup(self, connections: list[Connection]) -> None:
        mode = self.spec.mode
        count = self.spec.tokens_per_connection
        jobs = []
        for connection in connections:
            if mode in ("status", "mixed"):
                jobs.append(self._queue_tokens(connection, count))
            if mode in ("verify", "mixed"):
                jobs.append(self._access_tokens(connection, count))
        await asyncio.gather(*jobs)

    async def _queue_tokens(self, connection: Connection, count: int) -> None:
        join = request_bytes("POST", f"/api/v1/rooms/{self.spec.room}/join")
        for _ in range(count):
            answer = await _ask(connection, "setup", join)
            self.queue_tokens.append(_field(answer, "queue_token"))

    async def _access_tokens(self, connection: Connection, count: int) -> None:
        room = self.spec.open_room
        join = request_bytes("POST", f"/api/v1/rooms/{room}/join")
        for _ in range(count):
            token = _field(await _ask(connection, "setup", join), "queue_token")
            status = request_bytes("GET", f"/api/v1/rooms/{room}/status", token)
            while True:
                answer = orjson.loads(await _ask(connection, "setup", status))
                if isinstance(answer.get("access_token"), str):
                    self.access_tokens.append(answer["access_token"])
                    break
                await asyncio.sleep(ADMIT_POLL_S)


async def _ask(connection: Connection, kind: str, data: bytes) -> bytes:
    """One request, awaited; any answer but 2xx ends the setup."""
    future: asyncio.Future[tuple[int, bytes]] = (
        asyncio.get_running_loop().create_future()
    )
    connection.submit(kind, data, lambda s, b, _t: future.set_result((s, b)))
    status, body = await future
    if not 200 <= status < 300:
        raise RuntimeError(f"setup request failed: status {status} {body[:200]!r}")
    return body


def _field(body: bytes, name: str) -> str:
    value = orjson.loads(body).get(name)
    if not isinstance(value, str):
        raise RuntimeError(f"setup answer has no {name}: {body[:200]!r}")
    return value


async def _drain(connections: list[Connection]) -> None:
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while any(c.pending for c in connections) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def merge(results: list[Json]) -> Json:
    """Add up the results of the processes of one run, per kind of request.

    Requests per second of a kind are its answers over the recorded span,
    from the first process to start recording to the last to stop.
    """
    started = min(float(str(r["recorded_from"])) for r in results)
    ended = max(float(str(r["recorded_until"])) for r in results)
    span = max(ended - started, 1e-9)
    latency: dict[str, LatencyHistogram] = {}
    errors: Counter[str] = Counter()
    timeline: dict[int, Counter[str]] = {}
    timeline_latency: dict[int, LatencyHistogram] = {}
    for result in results:
        for kind, data in _dict(result["latency"]).items():
            latency.setdefault(kind, LatencyHistogram()).merge(
                LatencyHistogram.from_json(_dict(data))
            )
        errors.update({k: int(str(v)) for k, v in _dict(result["errors"]).items()})
        for second, counts in _dict(result["timeline_counts"]).items():
            timeline.setdefault(int(second), Counter()).update(_dict(counts))
        for second, data in _dict(result["timeline_latency"]).items():
            timeline_latency.setdefault(int(second), LatencyHistogram()).merge(
                LatencyHistogram.from_json(_dict(data))
            )
    endpoints = {}
    for kind in sorted(set(latency) | {k.split(":", 1)[0] for k in errors}):
        histogram = latency.get(kind, LatencyHistogram())
        kind_errors = {k: v for k, v in errors.items() if k.startswith(kind + ":")}
        endpoints[kind] = {
            "requests": histogram.count,
            "rps": histogram.count / span,
            "errors": kind_errors,
            **histogram.summary_ms(),
        }
    first = min(timeline, default=0)
    return {
        "duration_s": span,
        "endpoints": endpoints,
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "timeline": [
            {
                "t": second - first,
                "answers": dict(timeline[second]),
                "p99_ms": timeline_latency[second].percentile(99) * 1e3,
            }
            for second in sorted(timeline)
        ],
        "setup_s": max(float(str(r["setup_s"])) for r in results),
        "sent": sum(int(r.get("sent", 0)) for r in results),
    }


def _dict(value: Json) -> Json:
    """Narrows a JSON value that is known to be an object."""
    return value
