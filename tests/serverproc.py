"""Start a real ``wr serve`` on a free loopback port, and wait on conditions."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import httpx
import pytest

T = TypeVar("T")

# How long a started server may take to answer /healthz.
START_TIMEOUT_S = 15.0


def missing(why: str) -> NoReturn:
    """A tool a test needs is not there: a failure under CI, else a skip.

    ``scripts/install-test-deps`` installs every such tool; CI must never
    pass by skipping what it did not install.
    """
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    condition: Callable[[], T | None], timeout_s: float, what: str, poll_s: float = 0.02
) -> T:
    """Return the first truthy value of ``condition()``; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)


def running(tmp: Path, config_toml: str) -> Iterator[WrServer]:
    """A started server for a fixture to yield; stopped after, if still up."""
    wr = WrServer(tmp, config_toml).start()
    yield wr
    if wr.proc is not None and wr.proc.poll() is None:
        wr.stop()


class WrServer:
    """A ``wr serve`` subprocess with its own config, state dir and port."""

    def __init__(
        self,
        tmp: Path,
        config_toml: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.dir = tmp
        self.extra_env = env or {}
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "wr.toml"
        self.admin_port = free_port()
        if "[admin]" not in config_toml:
            # Tests run side by side: each wr gets its own admin port.
            config_toml += f"\n[admin]\nport = {self.admin_port}\n"
        self.config.write_text(config_toml)
        self.state_dir = tmp / "state"
        self.log = tmp / "wr.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WrServer:
        self.launch()
        wait_for(self._healthy, START_TIMEOUT_S, f"wr on port {self.port}")
        return self

    def wait_workers_listening(self, workers: int, timeout_s: float = 20.0) -> None:
        """Every worker listens: the supervisor has had each one's heartbeat.

        ``/healthz`` answering only proves one of them does; connections
        made before the others listen all land on that one.
        """
        # The supervisor's "listening" line, not its "starting" one.
        pattern = re.compile(
            rf"wr\.supervisor INFO listening url=\S+ workers={workers}$", re.M
        )
        wait_for(
            lambda: pattern.search(self.log.read_text()),
            timeout_s,
            f"{workers} workers listening",
        )

    def fail_to_start(self, timeout_s: float = START_TIMEOUT_S) -> tuple[int, str]:
        """Launch a wr that must exit by itself: its status and its output."""
        self.launch()
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("wr started although it should not") from None
        return code, self.log.read_text()

    def launch(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WR_")}
        env.update(self.extra_env)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "wr",
                    "serve",
                    "--config",
                    str(self.config),
                    "--port",
                    str(self.port),
                    "--state-dir",
                    str(self.state_dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own process group, so a test can kill the whole tree.
                start_new_session=True,
            )

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"wr exited early:\n{self.log.read_text()}")
        try:
            return httpx.get(f"{self.base}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> dict[int, int]:
        """The latest pid of each worker index, as the supervisor logged it."""
        pids = {}
        for match in re.finditer(
            r"wr\.supervisor INFO worker started index=(\d+) pid=(\d+)",
            self.log.read_text(),
        ):
            pids[int(match[1])] = int(match[2])
        return pids

    def kill_all(self) -> None:
        """SIGKILL the supervisor and every worker at once."""
        os.killpg(self.pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, wait for exit, return the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("wr did not stop on SIGTERM") from None
