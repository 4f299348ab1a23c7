"""The process ``wr serve`` starts: it prepares, forks workers, and keeps watch.

Start-up, in order: check the state directory, load (or create) the key ring,
map the shared block, restore the counters and save a first reservation
(:class:`wr.steward.Steward`), check that the port is free, fork the
workers. Then a plain loop, every ``STEP_INTERVAL_S``:

- act on the signals that arrived (handlers only record them): TERM/INT
  drain and exit, HUP reloads, CHLD reaps;
- restart a worker that died, after a back-off that doubles while it keeps
  dying young; stop everything if it exits with :data:`EXIT_CANNOT_START`;
- kill (SIGKILL) a worker whose heartbeat is older than
  ``server.heartbeat_timeout_s``: it is stuck or stopped;
- let the steward tick, reserve, save and publish;
- tell systemd what is happening (READY, RELOADING, STOPPING, WATCHDOG).

With ``workers = 1`` there is no fork: the one process runs a
:class:`wr.server.Worker` that carries the steward itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import uvloop

from wr.admin import OverridesStore, admin_token, effective_rooms
from wr.config import Config, ConfigError, RoomConfig
from wr.metrics import merge_snapshots
from wr.redisbackend import make_steward
from wr.room import CLAIM_WINDOW
from wr.server import Worker
from wr.shm import MAX_WORKERS, SharedBlock
from wr.state import StateError, prepare_state_dir
from wr.static import warm_static
from wr.steward import STEP_INTERVAL_S
from wr.systemd import notify, watchdog_interval_s
from wr.tokens import KeyRing, KeyRingError

__all__ = ["EXIT_CANNOT_START", "StartError", "Supervisor", "serve"]

log = logging.getLogger("wr.supervisor")

# A worker exits with this when retrying cannot help (the port is taken,
# the config is bad); the supervisor then stops instead of looping.
EXIT_CANNOT_START = 3
# A worker that dies sooner than this after its start "died young".
YOUNG_DEATH_S = 10.0
# Back-off before restarting a worker that keeps dying young.
RESTART_BACKOFF_MIN_S = 0.1
RESTART_BACKOFF_MAX_S = 10.0
# A new worker has this long to send its first heartbeat (imports, bind).
START_HEARTBEAT_GRACE_S = 30.0
# After the grace period, workers still running are killed.
STOP_KILL_EXTRA_S = 1.0
LOCK_FILE = "lock"


class StartError(Exception):
    """wr cannot start as configured; the message says why in one line."""


@dataclass
class _Child:
    index: int
    pid: int
    started: float
    killed: bool = False


class Supervisor:
    def __init__(self, load: Callable[[], Config]) -> None:
        self._load = load
        self.config = load()
        self._signals: list[int] = []
        self._children: dict[int, _Child] = {}
        self._young_deaths = [0] * self.config.server.workers
        self._restart_at: dict[int, float] = {}
        self._stopping_since: float | None = None
        self._exit_code = 0
        self._ready_sent = False
        self._next_watchdog = 0.0
        self._watchdog_s = watchdog_interval_s()

        state_dir = self.config.state_dir
        try:
            prepare_state_dir(state_dir)
            self._lock_fd = _lock_state_dir(state_dir)
            ring, _ = KeyRing.load_or_create(state_dir, self.config.tokens.algorithm)
            ring.check_algorithm(self.config.tokens.algorithm)
            if self.config.admin.enabled:
                admin_token(self.config, create=True)
            self.block = SharedBlock(
                CLAIM_WINDOW // 8, self.config.metrics.dropoff_positions
            )
            self.overrides = OverridesStore(state_dir)
            self.steward = make_steward(
                self.config,
                effective_rooms(self.config, self.overrides.load()),
                self.block,
                time.monotonic(),
            )
            self.steward.rooms_source = self._rooms
        except (StateError, KeyRingError, ValueError, OSError) as exc:
            raise StartError(str(exc)) from None
        server = self.config.server
        if server.workers > MAX_WORKERS:
            raise StartError(f"server.workers: at most {MAX_WORKERS}")
        if server.workers > 1 and server.port == 0:
            raise StartError("server.port: 0 (any port) needs workers = 1")

    def _rooms(self) -> dict[str, RoomConfig]:
        return effective_rooms(self.config, self.overrides.load())

    # The one-process shape.

    def run_alone(self) -> int:
        worker = Worker(self.config, self.block, 0, self._load, steward=self.steward)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(worker.run())
        return 0

    # The many-process shape.

    def run(self) -> int:
        if self.config.server.workers == 1:
            return self.run_alone()
        _check_port_free(self.config.server.host, self.config.server.port)
        if self.config.admin.enabled:
            _check_port_free(self.config.admin.host, self.config.admin.port)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._record_signal)
        log.info("starting workers=%s", self.config.server.workers)
        warm_static(self.config.server.static_dir)
        for index in range(self.config.server.workers):
            self._spawn(index)

        expected = time.monotonic()
        worst_lag, lag_since = 0.0, expected
        while self._children or self._stopping_since is None:
            now = time.monotonic()
            # How late this step is: the ticker's lag, worst over a second.
            worst_lag = max(worst_lag, now - expected)
            if now - lag_since >= 1.0:
                self.block.header.ticker_lag = worst_lag
                worst_lag, lag_since = 0.0, now
            expected = now + STEP_INTERVAL_S
            self._act_on_signals(now)
            self._reap(now)
            if self._stopping_since is None:
                self._restart_due(now)
                self._check_heartbeats(now)
                self._announce_ready()
                self.steward.step(now)
                self._watchdog(now)
            elif now - self._stopping_since > self._stop_deadline_s():
                self._kill_all("did not stop in time")
            time.sleep(STEP_INTERVAL_S)

        self.steward.final_save()
        log.info("stopped exit_code=%s", self._exit_code)
        return self._exit_code

    def _record_signal(self, signum: int, frame: object) -> None:
        # Only recorded here; the loop acts on it (no work in a handler).
        self._signals.append(signum)

    def _act_on_signals(self, now: float) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._begin_stop(now, f"signal {signal.Signals(signum).name}")
            elif signum == signal.SIGHUP and self._stopping_since is None:
                self._reload(now)

    def _begin_stop(self, now: float, why: str) -> None:
        if self._stopping_since is not None:
            return
        log.info(
            "stopping reason=%s grace_s=%s", why, self.config.server.shutdown_grace_s
        )
        notify("STOPPING=1")
        self._stopping_since = now
        for child in self._children.values():
            _signal(child.pid, signal.SIGTERM)

    def _stop_deadline_s(self) -> float:
        return self.config.server.shutdown_grace_s + STOP_KILL_EXTRA_S

    def _kill(self, child: _Child, why: str) -> None:
        # Once per worker: it stays in _children until it is reaped.
        if child.killed:
            return
        child.killed = True
        log.error(
            "killing worker index=%s pid=%s reason=%s", child.index, child.pid, why
        )
        _signal(child.pid, signal.SIGKILL)

    def _kill_all(self, why: str) -> None:
        for child in self._children.values():
            self._kill(child, why)

    def _reload(self, now: float) -> None:
        notify("RELOADING=1")
        try:
            config = self._load()
            KeyRing.load(config.state_dir).check_algorithm(config.tokens.algorithm)
            self.steward.reconfigure(
                effective_rooms(config, self.overrides.load()), now
            )
        except (ConfigError, KeyRingError, StateError, ValueError) as exc:
            log.error("reload failed, keeping the running config error=%s", exc)
            notify("READY=1")
            return
        for key in ("workers", "backend"):
            if getattr(config.server, key) != getattr(self.config.server, key):
                log.warning("server.%s changed; it takes effect after a restart", key)
        self.config = _keep_process_shape(self.config, config)
        for child in self._children.values():
            _signal(child.pid, signal.SIGHUP)
        log.info("reloaded rooms=%s", ",".join(config.rooms))
        notify("READY=1")

    # Workers.

    def _spawn(self, index: int) -> None:
        slot = self.block.workers[index]
        slot.heartbeat = 0.0
        pid = os.fork()
        if pid == 0:
            os._exit(self._child_main(index))
        slot.pid = pid
        self._children[pid] = _Child(index, pid, time.monotonic())
        log.info("worker started index=%s pid=%s", index, pid)

    def _child_main(self, index: int) -> int:
        # In the child: forget the supervisor's signal handling, serve.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        worker = None
        try:
            worker = Worker(self.config, self.block, index, self._load)
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(worker.run())
        except (OSError, ConfigError, KeyRingError) as exc:
            # Before it listens, retrying cannot help (port taken, bad key
            # ring); after, it is a crash like any other.
            if worker is None or not worker.listening:
                log.error("worker cannot start index=%s error=%s", index, exc)
                return EXIT_CANNOT_START
            log.exception("worker failed index=%s", index)
            return 1
        except BaseException:
            log.exception("worker failed index=%s", index)
            return 1
        return 0

    def _reap(self, now: float) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self._children.pop(pid, None)
            if child is not None:
                self._retire_metrics(child.index)
                self._on_exit(child, status, now)

    def _retire_metrics(self, index: int) -> None:
        # A dead worker's counters join the retired ones, so totals across
        # the service never go back when a worker is replaced.
        slot = self.block.workers[index]
        raw = slot.metrics.read()
        slot.pid = 0
        if raw:
            retired = self.block.header.retired
            before = retired.read()
            snapshots = [orjson.loads(raw)] + ([orjson.loads(before)] if before else [])
            merged = merge_snapshots(snapshots)
            merged["connections"] = merged["connections_max"] = 0
            retired.write(orjson.dumps(merged))
        slot.metrics.clear()

    def _on_exit(self, child: _Child, status: int, now: float) -> None:
        code = os.waitstatus_to_exitcode(status)
        if self._stopping_since is not None:
            log.info(
                "worker exited index=%s pid=%s code=%s", child.index, child.pid, code
            )
            return
        if code == EXIT_CANNOT_START:
            log.error("worker cannot start, stopping index=%s", child.index)
            self._exit_code = EXIT_CANNOT_START
            self._begin_stop(now, "a worker cannot start")
            return
        # A signal death is an error (SIGKILL included); an exit is a warning.
        level = logging.ERROR if code < 0 else logging.WARNING
        log.log(
            level, "worker died index=%s pid=%s code=%s", child.index, child.pid, code
        )
        young = now - child.started < YOUNG_DEATH_S
        deaths = self._young_deaths[child.index] + 1 if young else 0
        self._young_deaths[child.index] = deaths
        backoff = 0.0
        if deaths:
            backoff = min(
                RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_MIN_S * 2 ** (deaths - 1)
            )
        self._restart_at[child.index] = now + backoff
        self.block.header.worker_restarts += 1

    def _restart_due(self, now: float) -> None:
        for index, when in list(self._restart_at.items()):
            if now >= when:
                del self._restart_at[index]
                self._spawn(index)

    def _check_heartbeats(self, now: float) -> None:
        timeout = self.config.server.heartbeat_timeout_s
        for child in self._children.values():
            beat = self.block.workers[child.index].heartbeat
            if beat == 0.0:
                stale = now - child.started > START_HEARTBEAT_GRACE_S
            else:
                stale = now - beat > timeout
            if stale:
                self._kill(child, "missed its heartbeat")

    def _announce_ready(self) -> None:
        if self._ready_sent:
            return
        started = [
            self.block.workers[c.index].heartbeat for c in self._children.values()
        ]
        if len(started) == self.config.server.workers and all(started):
            self._ready_sent = True
            log.info(
                "listening url=http://%s:%s/ workers=%s",
                self.config.server.host,
                self.config.server.port,
                len(started),
            )
            notify("READY=1")

    def _watchdog(self, now: float) -> None:
        if self._watchdog_s is not None and now >= self._next_watchdog:
            notify("WATCHDOG=1")
            self._next_watchdog = now + self._watchdog_s


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _keep_process_shape(old: Config, new: Config) -> Config:
    # The workers, host, port and backend in use cannot change without a
    # restart.
    server = replace(
        new.server,
        workers=old.server.workers,
        host=old.server.host,
        port=old.server.port,
        state_dir=old.server.state_dir,
        backend=old.server.backend,
    )
    return replace(new, server=server)


def _lock_state_dir(state_dir: Path) -> int:
    """Hold a lock on the state dir for our lifetime: one wr per state dir."""
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateError(f"{state_dir}: in use by another wr") from None
    return fd


def _check_port_free(host: str, port: int) -> None:
    # Workers bind with SO_REUSEPORT, which would let them share the port
    # with another wr started by the same user. A bind without it fails if
    # anything listens on the port (SO_REUSEADDR only forgives TIME_WAIT).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartError(f"{host}:{port}: address already in use") from None
            raise StartError(f"{host}:{port}: cannot listen: {exc.strerror}") from None


def serve(load: Callable[[], Config]) -> int:
    """Run wr until it is told to stop; return the process exit status."""
    return Supervisor(load).run()
