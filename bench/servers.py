"""Starting and stopping the servers a bench run measures, pinned to a core.

Each server is a child process in its own session, pinned with
``os.sched_setaffinity`` before it runs any code, waited on until its port
takes connections, and stopped by its pid (TERM, then KILL after a grace
period). Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import Json
from bench.baselines.bare import BODY

__all__ = [
    "Server",
    "bare_server",
    "free_port",
    "nginx_server",
    "starlette_server",
    "wr_config",
    "wr_server",
]

# How long a server may take to listen: uvicorn's import of Starlette is the
# slowest, about a second on an idle machine; other agents share the cores.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class Server:
    """One server process, pinned to ``cpus``, listening on ``port``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        log: Path,
        cpus: tuple[int, ...] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log = log
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.pid

    def start(self) -> Server:
        cpus = self.cpus
        pin: Callable[[], None] | None = None
        if cpus:

            def pin() -> None:
                os.sched_setaffinity(0, cpus)

        env = {k: v for k, v in os.environ.items() if not k.startswith("WR_")}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own argv
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=pin,  # noqa: PLW1509 - no threads run yet here
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listening(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited at start:\n{self.log.read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not listen on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wr_config(
    port: int,
    state_dir: Path,
    *,
    metrics: bool = True,
    rooms: dict[str, Json] | None = None,
) -> str:
    """A one-worker wr config for the bench: no admin listener, quiet logs."""
    if rooms is None:
        rooms = {
            # People join faster than anyone is let in: polls stay "waiting".
            "default": {"rate_per_minute": 60},
            # Everyone is let in at the next tick: access tokens for verify.
            "open": {"rate_per_minute": 6e9},
        }
    lines = [
        "[server]",
        f'host = "{HOST}"',
        f"port = {port}",
        "workers = 1",
        f'state_dir = "{state_dir}"',
        'log_level = "warning"',
        "[http]",
        # The load generator opens a few hundred connections at most.
        "max_connections = 100000",
        "[admin]",
        "enabled = false",
        "[metrics]",
        f"enabled = {'true' if metrics else 'false'}",
    ]
    for name, settings in rooms.items():
        lines.append(f"[rooms.{name}]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in settings.items())
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def wr_server(
    workdir: Path,
    name: str,
    cpus: tuple[int, ...] = (),
    *,
    metrics: bool = True,
    rooms: dict[str, Json] | None = None,
) -> Server:
    port = free_port()
    where = workdir / name
    where.mkdir(parents=True, exist_ok=True)
    config = where / "wr.toml"
    config.write_text(wr_config(port, where / "state", metrics=metrics, rooms=rooms))
    argv = [sys.executable, "-m", "wr", "serve", "--config", str(config)]
    return Server(name, argv, port, where / "server.log", cpus)


def bare_server(workdir: Path, cpus: tuple[int, ...] = ()) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "bench.baselines.bare", str(port)]
    return Server("bare", argv, port, workdir / "bare.log", cpus)


def starlette_server(workdir: Path, cpus: tuple[int, ...] = ()) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "bench.baselines.starlette_app", str(port)]
    return Server("uvicorn", argv, port, workdir / "uvicorn.log", cpus)


def nginx_server(workdir: Path, cpus: tuple[int, ...] = ()) -> Server | None:
    """nginx serving one static file with one worker; None when not installed."""
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        return None
    port = free_port()
    where = workdir / "nginx"
    (where / "html").mkdir(parents=True, exist_ok=True)
    # nginx's worker drops root for "nobody", who must reach the file.
    workdir.chmod(workdir.stat().st_mode | 0o011)
    for path in (where, where / "html"):
        path.chmod(0o755)
    (where / "html" / "index.json").write_bytes(BODY)
    scratch = where / "scratch"
    (where / "nginx.conf").write_text(
        f"""daemon off;
worker_processes 1;
pid {where}/nginx.pid;
error_log {where}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {scratch};
    proxy_temp_path {scratch};
    fastcgi_temp_path {scratch};
    uwsgi_temp_path {scratch};
    scgi_temp_path {scratch};
    keepalive_requests 100000000;
    server {{
        listen {HOST}:{port};
        root {where}/html;
        location / {{ try_files /index.json =404; }}
    }}
}}
"""
    )
    argv = [nginx, "-p", str(where), "-c", str(where / "nginx.conf")]
    return Server("nginx", argv, port, where / "nginx.log", cpus)
