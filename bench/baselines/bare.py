"""The Python ceiling: uvloop + httptools, one fixed answer to every request.

The body has the size and fields of a wr join answer (a queue token and an
access token included), so that the load generator's setup of the status
and verify modes works against it unchanged and the bytes per answer
match. ``python -m bench.baselines.bare PORT``.
"""

from __future__ import annotations

import asyncio
import sys
import typing

import httptools
import orjson
import uvloop

# Shaped like a JWT, as long as wr's, never checked by anyone.
_TOKEN = "eyJhbGciOiJIUzI1NiJ9." + "x" * 150 + "." + "y" * 43
BODY = orjson.dumps(
    {
        "state": "admitted",
        "position": 1,
        "ahead": 0,
        "eta_s": 0,
        "next_poll_s": 3.0,
        "queue_token": _TOKEN,
        "access_token": _TOKEN,
    }
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"cache-control: no-store\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class Bare(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(RESPONSE)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Bare, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


def main() -> int:
    uvloop.run(serve(int(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
