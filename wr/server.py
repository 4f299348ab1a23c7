"""One serving process: the listening socket, the ticker, the HTTP app.

:func:`run` builds everything from a :class:`wr.config.Config`, listens,
ticks every room every ``TICK_INTERVAL_S`` and, on SIGTERM or SIGINT, stops
accepting, lets in-flight requests finish (up to ``shutdown_grace_s``) and
returns.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from pathlib import Path

import uvloop

from wr.api import App
from wr.config import Config
from wr.http import HttpProtocol, HttpServerState
from wr.metrics import Metrics
from wr.room import TICK_INTERVAL_S, Room, Ticker
from wr.static import StaticFiles, default_static_dir
from wr.tokens import KeyRing, Tokens

__all__ = ["Server", "run"]

log = logging.getLogger("wr.server")
ticker_log = logging.getLogger("wr.ticker")

# Pending connections the kernel may queue for us: a flash crowd arrives at
# once, and a short backlog turns it into refused connections.
LISTEN_BACKLOG = 4096


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.rooms = {name: Room(room) for name, room in config.rooms.items()}
        ring, _ = KeyRing.load_or_create(config.state_dir)
        self.tokens = Tokens(ring, config.tokens)
        self.metrics = Metrics(self.rooms)
        static_dir = Path(config.server.static_dir or default_static_dir())
        self.static = StaticFiles.load(static_dir)
        self.ready = False
        self.app = App(
            config,
            self.rooms,
            self.tokens,
            self.metrics,
            self.static,
            ready=lambda: self.ready,
        )
        self.http = HttpServerState(
            self.app.handle, config.http, on_rejected=self.metrics.http_error
        )
        self.ticker = Ticker(self.rooms.values(), time.monotonic())
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: HttpProtocol(self.http, loop),
            host=self.config.server.host,
            port=self.config.server.port,
            # Not SO_REUSEPORT: a second wr started on a busy port must fail,
            # not silently share the port with a queue of its own.
            reuse_port=False,
            backlog=LISTEN_BACKLOG,
        )
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        ticker = asyncio.create_task(self._tick_forever())
        self.ready = True
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            log.info("listening url=http://%s:%s/", _url_host(sock, host), port)

        await self._stop.wait()

        log.info("draining grace_s=%s", self.config.server.shutdown_grace_s)
        self.ready = False
        server.close()
        self.http.drain()
        await self._wait_drained()
        ticker.cancel()
        log.info("stopped")

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            started = time.monotonic()
            self.ticker.tick(started)
            if ticker_log.isEnabledFor(logging.DEBUG):
                ticker_log.debug("tick took_s=%.6f", time.monotonic() - started)

    async def _wait_drained(self) -> None:
        deadline = time.monotonic() + self.config.server.shutdown_grace_s
        while self.http.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for protocol in list(self.http.connections):
            protocol.abort()


def _url_host(sock: socket.socket, host: str) -> str:
    return f"[{host}]" if sock.family == socket.AF_INET6 else host


def run(config: Config) -> None:
    """Serve until SIGTERM or SIGINT."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_main(config))


async def _main(config: Config) -> None:
    await Server(config).run()
