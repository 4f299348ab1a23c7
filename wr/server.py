"""One serving process: its listening socket, the HTTP app, its heartbeat.

A :class:`Worker` is what each worker process runs, and also what the only
process runs when ``workers = 1``; then it carries the :class:`Steward`
(ticker, reservations, saves), in a thread beside the event loop so that
its disk writes do not hold up requests, and talks to systemd itself,
duties the supervisor has otherwise.

On SIGTERM or SIGINT a worker stops accepting, lets in-flight requests
finish (up to ``shutdown_grace_s``) and returns. On SIGHUP it reloads the
configuration and the key ring in place: connections stay open and the next
request sees the new rooms, rates and keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

from wr.admin import AdminApp, OverridesStore, admin_token, effective_rooms
from wr.api import App, pow_key
from wr.config import Config, ConfigError
from wr.http import HttpProtocol, HttpServerState, Request, Response
from wr.metrics import PUBLISH_INTERVAL_S, Metrics
from wr.pow import ProofOfWork
from wr.room import TICK_INTERVAL_S, Room
from wr.shm import SharedBlock
from wr.state import StateError
from wr.static import StaticFiles, static_root
from wr.steward import STEP_INTERVAL_S, Steward
from wr.systemd import notify, watchdog_interval_s
from wr.tokens import KeyRing, KeyRingError, Tokens, random_bytes

__all__ = ["HEARTBEAT_INTERVAL_S", "Worker"]

log = logging.getLogger("wr.server")

# Pending connections the kernel may queue for us: a flash crowd arrives at
# once, and a short backlog turns it into refused connections.
LISTEN_BACKLOG = 4096
# Workers prove they are alive this often; see server.heartbeat_timeout_s.
HEARTBEAT_INTERVAL_S = 1.0
# While draining, how often to look whether the last connection has gone.
DRAIN_POLL_S = 0.05


class Worker:
    def __init__(
        self,
        config: Config,
        block: SharedBlock,
        index: int,
        load: Callable[[], Config],
        *,
        steward: Steward | None = None,
    ) -> None:
        self.config = config
        self.block = block
        self.index = index
        self._load = load
        self.steward = steward
        self.supervisor_pid = os.getppid()
        self.ready = False
        # True once the sockets are bound: errors after that are crashes.
        self.listening = False
        self.overrides = OverridesStore(config.state_dir)
        self._generation = int(block.header.generation)
        self.rooms = self._rooms(config)
        self.metrics = Metrics(
            self.rooms,
            block=block,
            index=index,
            connections=lambda: len(self.http.connections),
            connection_limit=config.http.max_connections,
            session_s=config.tokens.access_ttl_s,
        )
        tokens = self._tokens(config)
        self._proof_of_work: ProofOfWork | None = None
        self.app = self._app(config, tokens)
        self.admin = self._admin(config, tokens)
        self.http = HttpServerState(
            self._handle, config.http, on_rejected=self.metrics.http_error
        )
        self.admin_http = HttpServerState(
            self._handle_admin, config.http, on_rejected=self.metrics.http_error
        )
        self._stop = asyncio.Event()
        # With one process the steward runs in a thread (_steward_loop);
        # reloads change it under this lock.
        self._steward_lock = threading.Lock()
        self._steward_stop = threading.Event()

    @property
    def alone(self) -> bool:
        """True when this is the only process (it carries the steward)."""
        return self.steward is not None

    def stop(self) -> None:
        self._stop.set()

    def _handle(self, request: Request) -> Response:
        # Through self.app, so that a reload swaps the app under live
        # connections.
        return self.app.handle(request)

    def _handle_admin(self, request: Request) -> Response:
        return self.admin.handle(request)

    def _admin(self, config: Config, tokens: Tokens) -> AdminApp:
        return AdminApp(
            config,
            lambda: self.rooms,
            tokens,
            self.block,
            admin_token(config),
            metrics=self.metrics if config.metrics.enabled else None,
        )

    # Building and rebuilding.

    def _rooms(self, config: Config) -> dict[str, Room]:
        rooms = {}
        for name, room_config in effective_rooms(config, self.overrides.load()).items():
            slot = self.block.find(name)
            if slot is None:
                log.error("room has no shared slot room=%s", name)
                continue
            rooms[name] = Room(room_config, slot)
        return rooms

    def _tokens(self, config: Config) -> Tokens:
        return Tokens(KeyRing.load(config.state_dir), config.tokens)

    def _app(self, config: Config, tokens: Tokens) -> App:
        # The worker's one proof-of-work checker outlives reloads, so the
        # challenges it accepted stay refused; only its key follows the ring.
        key = pow_key(tokens)
        if self._proof_of_work is None:
            self._proof_of_work = ProofOfWork(key, rand=random_bytes)
        self._proof_of_work.key = key
        return App(
            config,
            self.rooms,
            tokens,
            self.metrics,
            StaticFiles.load(static_root(config.server.static_dir)),
            ready=lambda: self.ready,
            proof_of_work=self._proof_of_work,
            save_failing=lambda: bool(self.block.header.save_failing),
        )

    def reload(self) -> None:
        """Re-read config and keys; keep the old ones if either is bad."""
        try:
            config = self._load()
            if self.steward is not None:
                rooms = effective_rooms(config, self.overrides.load())
                with self._steward_lock:
                    self.steward.reconfigure(rooms, time.monotonic())
                    self.steward.rooms_source = lambda: effective_rooms(
                        config, self.overrides.load()
                    )
            tokens = self._tokens(config)
            self.rooms = self._rooms(config)
            self.metrics.rooms = self.rooms
            app = self._app(config, tokens)
            self.admin = self._admin(config, tokens)
        except (ConfigError, KeyRingError, StateError, OSError, ValueError) as exc:
            log.error("reload failed, keeping the running config error=%s", exc)
            return
        _warn_unapplied(self.config, config)
        self.config = config
        self.app = app
        self.http.limits = config.http
        self.metrics.connection_limit = config.http.max_connections
        log.info("reloaded rooms=%s kid=%s", ",".join(self.rooms), tokens.ring.active)

    # Running.

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: HttpProtocol(self.http, loop),
            host=self.config.server.host,
            port=self.config.server.port,
            # Workers share the port through SO_REUSEPORT; a lone process
            # does not, so that starting a second wr on a busy port fails.
            reuse_port=not self.alone,
            backlog=LISTEN_BACKLOG,
        )
        servers = [server]
        if self.config.admin.enabled:
            servers.append(
                await loop.create_server(
                    lambda: HttpProtocol(self.admin_http, loop),
                    host=self.config.admin.host,
                    port=self.config.admin.port,
                    reuse_port=not self.alone,
                )
            )
        self.listening = True
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

        tasks = [
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._publish_metrics()),
            asyncio.create_task(self._watch_admin_changes()),
        ]
        steward_thread = None
        if self.steward is not None:
            steward_thread = threading.Thread(
                target=self._steward_loop,
                args=(self.steward, loop),
                name="wr-steward",
                daemon=True,
            )
            steward_thread.start()
            interval = watchdog_interval_s()
            if interval is not None:
                tasks.append(asyncio.create_task(_watchdog(interval)))
        self.ready = True
        if self.alone or self.index == 0:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                log.info("listening url=http://%s:%s/", _url_host(sock, host), port)
        if self.alone:
            notify("READY=1")

        await self._stop.wait()

        grace = self.config.server.shutdown_grace_s
        log.info("draining grace_s=%s", grace)
        if self.alone:
            notify("STOPPING=1")
        self.ready = False
        for listening in servers:
            listening.close()
        self.http.drain()
        self.admin_http.drain()
        await self._wait_drained(grace)
        for task in tasks:
            task.cancel()
        if self.steward is not None and steward_thread is not None:
            self._steward_stop.set()
            steward_thread.join()
            self.steward.final_save()
        self.metrics.publish()
        log.info("stopped")

    def _on_hup(self) -> None:
        if self.alone:
            notify("RELOADING=1")
        self.reload()
        if self.alone:
            notify("READY=1")

    async def _heartbeat(self) -> None:
        slot = self.block.workers[self.index]
        slot.pid = os.getpid()
        while True:
            slot.heartbeat = time.monotonic()
            if not self.alone and os.getppid() != self.supervisor_pid:
                log.warning("supervisor is gone, stopping")
                self.stop()
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def _publish_metrics(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL_S)
            self.metrics.publish()

    async def _watch_admin_changes(self) -> None:
        # The admin API (in this or another worker) bumps the generation
        # after each change; rebuild the rooms from the stored overrides.
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            generation = int(self.block.header.generation)
            if generation == self._generation:
                continue
            self._generation = generation
            try:
                self.rooms = self._rooms(self.config)
            except (OSError, ValueError) as exc:
                log.error("cannot read room changes error=%s", exc)
                continue
            self.metrics.rooms = self.rooms
            self.app.rooms = self.rooms

    def _steward_loop(self, steward: Steward, loop: asyncio.AbstractEventLoop) -> None:
        # In a thread of its own: each step that hands out positions saves
        # the state with two fsyncs, and a thread waiting on the disk lets
        # the event loop go on answering (the GIL is released meanwhile),
        # as the supervisor's separate process does when there are workers.
        while not self._steward_stop.wait(STEP_INTERVAL_S):
            try:
                with self._steward_lock:
                    steward.step(time.monotonic())
            except Exception:
                # A bug of ours: without a ticker the line would stand still,
                # so the process stops, as a supervisor would die of it.
                log.exception("steward failed, stopping")
                loop.call_soon_threadsafe(self.stop)
                return

    async def _wait_drained(self, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        while (
            self.http.connections or self.admin_http.connections
        ) and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        for state in (self.http, self.admin_http):
            for protocol in list(state.connections):
                protocol.abort()


async def _watchdog(interval_s: float) -> None:
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)


def _warn_unapplied(old: Config, new: Config) -> None:
    for key in ("host", "port", "workers", "state_dir", "backend"):
        if getattr(old.server, key) != getattr(new.server, key):
            log.warning("server.%s changed; it takes effect after a restart", key)


def _url_host(sock: socket.socket, host: str) -> str:
    return f"[{host}]" if sock.family == socket.AF_INET6 else host
