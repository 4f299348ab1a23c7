"""What counting metrics costs a request, measured in one process.

Over a socket, the difference between wr with ``[metrics] enabled = true``
and ``false`` drowns in the noise of a shared machine (the same build's
on/off ratio swings by tens of percent between runs). This takes the
socket out: it pushes the same pipelined joins and polls through
:class:`wr.http.HttpConnection` (parsing, routing, tokens, JSON, encoding:
all of a request but the system calls) with metrics on and off, the two
interleaved round after round, and keeps the best time of each. Since the
system calls are left out, the share it reports is an upper bound on the
share of a real request.

With ``--instructions`` it counts instead of timing: each setting runs
under ``valgrind --tool=callgrind`` twice, with few and with many
requests, and the difference of the instruction totals over the
difference of the requests is the cost of one request, whatever else the
machine is doing (valgrind counts the same for the same program and
input). That takes a minute or two.

Run with ``python -m bench.metrics_cost [--instructions]``; prints JSON.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import orjson

from wr.api import App
from wr.config import Config, MetricsConfig, load_config
from wr.http import HttpConnection
from wr.metrics import Metrics
from wr.room import UNLIMITED, Room
from wr.static import StaticFiles
from wr.tokens import KeyRing, Tokens

ROUNDS = 15
# Requests per round, sent as pipelined batches of BATCH.
REQUESTS = 20_000
BATCH = 16

JOIN = (
    b"POST /api/v1/rooms/default/join HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n"
)
STATUS = (
    b"GET /api/v1/rooms/default/status HTTP/1.1\r\nHost: b\r\n"
    b"Authorization: Bearer %s\r\n\r\n"
)


def _app(config: Config, enabled: bool) -> App:
    config = replace(config, metrics=MetricsConfig(enabled=enabled))
    room = Room(replace(config.rooms["default"], rate_per_minute=0))
    room.reserved = UNLIMITED
    rooms = {"default": room}
    tokens = Tokens(KeyRing.generate(), config.tokens)
    return App(config, rooms, tokens, Metrics(rooms), StaticFiles({}))


def _seconds_per_request(app: App, request: bytes) -> float:
    connection = HttpConnection(app.handle, app.config.http)
    batch = request * BATCH
    started = time.perf_counter()
    for _ in range(REQUESTS // BATCH):
        connection.receive(batch)
        connection.data_to_send()
    return (time.perf_counter() - started) / REQUESTS


def _status_request(app: App) -> bytes:
    connection = HttpConnection(app.handle, app.config.http)
    connection.receive(JOIN)
    body = connection.data_to_send().split(b"\r\n\r\n", 1)[1]
    token: str = orjson.loads(body)["queue_token"]
    return STATUS % token.encode()


def measure() -> dict[str, dict[str, float]]:
    config = load_config(env={})
    apps = {enabled: _app(config, enabled) for enabled in (True, False)}
    requests = {
        "join": dict.fromkeys(apps, JOIN),
        "status": {enabled: _status_request(app) for enabled, app in apps.items()},
    }
    best = {kind: dict.fromkeys(apps, float("inf")) for kind in requests}
    for _ in range(ROUNDS):
        for kind, by_setting in requests.items():
            for enabled, app in apps.items():
                took = _seconds_per_request(app, by_setting[enabled])
                best[kind][enabled] = min(best[kind][enabled], took)
    return {
        kind: {
            "on_us": times[True] * 1e6,
            "off_us": times[False] * 1e6,
            "cost": times[True] / times[False] - 1.0,
        }
        for kind, times in best.items()
    }


# Requests in the short and the long run under callgrind: their difference
# leaves out the start-up (imports), which costs far more than either.
COUNTED = (1_600, 6_400)


def _run(kind: str, enabled: bool, requests: int) -> None:
    """One setting, ``requests`` times, for callgrind to count."""
    app = _app(load_config(env={}), enabled)
    request = JOIN if kind == "join" else _status_request(app)
    connection = HttpConnection(app.handle, app.config.http)
    for _ in range(requests // BATCH):
        connection.receive(request * BATCH)
        connection.data_to_send()


def _instructions(kind: str, enabled: bool, requests: int) -> int:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed (Debian package valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        setting = "on" if enabled else "off"
        done = subprocess.run(  # noqa: S603 - our own argv
            [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "bench.metrics_cost",
                "--run",
                kind,
                setting,
                str(requests),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind said nothing countable:\n{done.stderr}")
    return int(found[1])


def count() -> dict[str, dict[str, float]]:
    """Instructions per request, metrics on and off (see the module doc)."""
    few, many = COUNTED
    results = {}
    for kind in ("join", "status"):
        per_request = {}
        for enabled in (True, False):
            low = _instructions(kind, enabled, few)
            high = _instructions(kind, enabled, many)
            per_request[enabled] = (high - low) / (many - few)
        results[kind] = {
            "on_instructions": per_request[True],
            "off_instructions": per_request[False],
            "cost": per_request[True] / per_request[False] - 1.0,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--run"]:
        kind, setting, requests = args[1:4]
        _run(kind, setting == "on", int(requests))
        return 0
    results = count() if args[:1] == ["--instructions"] else measure()
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
