"""A real ``redis-server`` on a free loopback port, with its own directory."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import redis

from tests.serverproc import free_port, missing, wait_for

# How long redis-server may take to answer PING after it starts.
START_TIMEOUT_S = 15.0


def redis_server_binary() -> str:
    """The path of redis-server; under CI its absence fails the test."""
    path = shutil.which("redis-server")
    if path is None:
        missing("redis-server is missing (scripts/install-test-deps)")
    return path


class RedisServer:
    """``redis-server`` started and stopped by pid; data kept in ``dir``."""

    def __init__(self, directory: Path, *, durable: bool = False) -> None:
        self.binary = redis_server_binary()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # Durable: every write reaches the append-only file before Redis
        # answers, so a restart keeps every counter.
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5.0)

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.log),
        ]
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_for(self._answers, START_TIMEOUT_S, f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited:\n{self.log.read_text()}")
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        self.proc.wait(timeout=15)

    def pause(self) -> None:
        """SIGSTOP: the port stays open, nothing answers (a hung store)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
