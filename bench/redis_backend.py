"""What the redis backend costs a join, against the memory backend, on two hosts.

Two ``wr serve`` instances run on 127.0.0.1 in each mode:

- ``memory``: each with the memory backend (two separate lines: the
  baseline of what a join costs without a shared store);
- ``redis``: both sharing one room through a ``redis-server`` this program
  starts on a free loopback port (``--save ''``, its own directory).

Each mode gets a warm-up, then the same number of joins spread evenly over
the two instances by a fixed number of concurrent clients. Reported per
mode: joins per second, p50/p99/p999 latency, 503 answers (a join that
found its host's block used up), and for ``redis`` the positions handed out
per block fetched. The ratios compare the two modes of this one run.

Run with ``python -m bench.redis_backend`` (needs ``redis-server``).
Results are printed as JSON.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson

# Joins measured per mode, after the warm-up; both bound the run's length,
# with RUN_DEADLINE_S as a ceiling should a host stop answering.
JOINS = 4000
WARMUP_JOINS = 400
# Modes alternate this many times and the best round of each is kept, so
# a burst of load from elsewhere on the machine does not favour one mode.
ROUNDS = 2
CLIENTS_PER_HOST = 8
RUN_DEADLINE_S = 120.0
START_DEADLINE_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_answering(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"wr exited with {proc.returncode}:\n{log.read_text()[-2000:]}"
            )
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in {START_DEADLINE_S}s")


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1"]
    args += ["--dir", str(directory), "--save", "", "--logfile", "redis.log"]
    # Our own arguments: a path from shutil.which and numbers.
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)  # noqa: S603
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


@contextmanager
def wr_hosts(directory: Path, backend: str) -> Iterator[list[str]]:
    """Two wr instances (one worker each) with ``backend``; their base URLs."""
    procs: list[subprocess.Popen[bytes]] = []
    bases = []
    logs: list[Path] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("WR_")}
    try:
        for name in ("a", "b"):
            home = directory / f"{backend.split(':', 1)[0]}-{name}"
            home.mkdir()
            port, admin = free_port(), free_port()
            config = home / "wr.toml"
            config.write_text(
                f'[server]\nworkers = 1\nbackend = "{backend}"\n'
                f"[admin]\nport = {admin}\n"
                '[rooms.default]\nrate_per_minute = 0\ntarget_url = "/inside"\n'
            )
            command = [sys.executable, "-m", "wr", "serve", "--config", str(config)]
            command += ["--port", str(port), "--state-dir", str(home / "state")]
            with (home / "wr.log").open("wb") as log:
                procs.append(
                    # Our own interpreter, module and arguments.
                    subprocess.Popen(  # noqa: S603
                        command, stdout=log, stderr=subprocess.STDOUT, env=env
                    )
                )
            bases.append(f"http://127.0.0.1:{port}")
            logs.append(home / "wr.log")
        for base, proc, log_path in zip(bases, procs, logs, strict=True):
            wait_until_answering(f"{base}/healthz", proc, log_path)
        yield bases
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)


async def client(
    base: str, count: int, latencies: list[float], positions: list[int]
) -> int:
    """``count`` joins, one at a time on one connection; returns the 503s."""
    refused = 0
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as http:
        for _ in range(count):
            started = time.perf_counter()
            answer = await http.post("/api/v1/rooms/default/join")
            latencies.append(time.perf_counter() - started)
            http.cookies.clear()
            if answer.status_code == 503:
                refused += 1
            elif answer.status_code == 200:
                positions.append(int(answer.json()["position"]))
            else:
                raise RuntimeError(f"join answered {answer.status_code}")
    return refused


async def load(bases: list[str], joins: int) -> dict[str, object]:
    latencies: list[float] = []
    positions: list[list[int]] = [[] for _ in bases]
    per_client = joins // (len(bases) * CLIENTS_PER_HOST)
    started = time.perf_counter()
    refused = await asyncio.wait_for(
        asyncio.gather(
            *(
                client(base, per_client, latencies, positions[i])
                for i, base in enumerate(bases)
                for _ in range(CLIENTS_PER_HOST)
            )
        ),
        RUN_DEADLINE_S,
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    handed = [p for host in positions for p in host]
    return {
        "joins": len(latencies),
        "joins_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(_quantile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(_quantile(latencies, 0.99) * 1000, 3),
        "p999_ms": round(_quantile(latencies, 0.999) * 1000, 3),
        "refused_503": sum(refused),
        "unique_positions": len(set(handed)) == len(handed),
        "positions_per_block": round(
            len(handed) / max(1, sum(_runs(sorted(host)) for host in positions)), 1
        ),
    }


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _runs(ordered: list[int]) -> int:
    """Runs of consecutive positions: at least one block fetched per run."""
    return sum(1 for i, p in enumerate(ordered) if i == 0 or p != ordered[i - 1] + 1)


def run_mode(directory: Path, backend: str) -> dict[str, object]:
    with wr_hosts(directory, backend) as bases:
        asyncio.run(load(bases, WARMUP_JOINS))
        return asyncio.run(load(bases, JOINS))


def best(rounds: list[dict[str, object]]) -> dict[str, object]:
    return max(rounds, key=lambda r: float(str(r["joins_per_s"])))


def main() -> int:
    memory_rounds, redis_rounds = [], []
    with tempfile.TemporaryDirectory(prefix="wr-bench-redis-") as tmp:
        for round_number in range(ROUNDS):
            directory = Path(tmp) / str(round_number)
            directory.mkdir()
            memory_rounds.append(run_mode(directory, "memory"))
            (directory / "redis").mkdir()
            with redis_server(directory / "redis") as url:
                redis_rounds.append(run_mode(directory, url))
    memory, shared = best(memory_rounds), best(redis_rounds)
    # Two separate lines hand out the same positions: nothing to report.
    memory.pop("positions_per_block")
    memory.pop("unique_positions")
    result = {
        "hosts": 2,
        "clients_per_host": CLIENTS_PER_HOST,
        "memory": memory,
        "redis": shared,
        "ratio": {
            "joins_per_s": round(
                float(str(shared["joins_per_s"])) / float(str(memory["joins_per_s"])),
                3,
            ),
            "p50": round(
                float(str(shared["p50_ms"])) / float(str(memory["p50_ms"])), 3
            ),
            "p99": round(
                float(str(shared["p99_ms"])) / float(str(memory["p99_ms"])), 3
            ),
        },
    }
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
