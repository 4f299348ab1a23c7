"""A small pipelining HTTP client for tests that need many requests quickly.

Each connection sends ``depth`` requests at once and reads their answers
with httptools' response parser, so tens of thousands of joins take seconds.
It is for the test suite; the benchmark has its own load generator.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httptools
import orjson

JOIN = b"POST /api/v1/rooms/%s/join HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"


@dataclass
class Answer:
    status: int
    body: bytes


@dataclass
class _Reader:
    answers: list[Answer] = field(default_factory=list)
    _body: list[bytes] = field(default_factory=list)
    parser: httptools.HttpResponseParser = field(init=False)

    def __post_init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.answers.append(Answer(self.parser.get_status_code(), b"".join(self._body)))
        self._body.clear()


async def pipeline(
    port: int, request: bytes, count: int, depth: int = 64
) -> list[Answer]:
    """Send ``request`` ``count`` times on one connection, ``depth`` at a time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parsed = _Reader()
    try:
        sent = 0
        while sent < count:
            batch = min(depth, count - sent)
            writer.write(request * batch)
            sent += batch
            while len(parsed.answers) < sent:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                parsed.parser.feed_data(data)
    finally:
        writer.close()
    return parsed.answers


async def join_many(
    port: int, room: str, total: int, connections: int = 16, depth: int = 64
) -> list[list[int]]:
    """``total`` joins over ``connections``; the positions, per connection, in order."""
    request = JOIN % room.encode()
    shares = [
        total // connections + (i < total % connections) for i in range(connections)
    ]
    results = await asyncio.gather(
        *(pipeline(port, request, share, depth) for share in shares)
    )
    positions = []
    for answers in results:
        assert all(a.status == 200 for a in answers), {a.status for a in answers}
        positions.append([orjson.loads(a.body)["position"] for a in answers])
    return positions


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    ok_after: dict[float, int] = field(default_factory=dict)


async def keep_joining(port: int, room: str, until: float, tally: Tally) -> None:
    """Join in small batches until ``until`` (monotonic), counting outcomes."""
    request = JOIN % room.encode()
    while time.monotonic() < until:
        try:
            answers = await pipeline(port, request, 32, depth=32)
        except OSError:
            tally.failed += 1
            await asyncio.sleep(0.01)
            continue
        tally.ok += sum(a.status == 200 for a in answers)
        tally.failed += sum(a.status != 200 for a in answers)
        tally.ok_after[time.monotonic()] = tally.ok
