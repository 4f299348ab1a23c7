"""What taking a position across processes costs, against the same work in one.

A join takes the room's shared robust mutex to read and bump
``next_position``. This measures, in one run and on one core:

- ``join_shared``: ``Room.join`` on a slot of the shared block (the mutex);
- ``join_unlocked``: the same read and write on the same counters, without
  the mutex (what a single process could do);
- ``join_request``: a whole join through the API (routing, token, JSON), so
  the mutex's share of a real request is visible.

Results are ratios within this run, printed as JSON. Run with
``python -m bench.crossprocess``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from wr.api import App
from wr.config import load_config
from wr.http import Request
from wr.metrics import Metrics
from wr.room import CLAIM_WINDOW, UNLIMITED, Room
from wr.shm import SharedBlock
from wr.static import StaticFiles
from wr.tokens import KeyRing, Tokens

ROUNDS = 5
CALLS = 100_000


def best_ns_per_call(function: Callable[[], object], calls: int = CALLS) -> float:
    """The fastest of ROUNDS timings, in nanoseconds per call."""
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter_ns()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


def main() -> int:
    config = load_config(env={})
    block = SharedBlock(CLAIM_WINDOW // 8)
    room = Room(config.rooms["default"], block.room("default"))
    room.reserved = UNLIMITED
    counters = block.room("default").counters

    def unlocked() -> int:
        position = int(counters.next_position)
        counters.next_position = position + 1
        return position

    with tempfile.TemporaryDirectory() as state:
        app = App(
            config,
            {"default": room},
            Tokens(KeyRing.generate(), config.tokens),
            Metrics({"default": room}),
            StaticFiles.load(Path(state)),
        )
        request = Request("POST", "/api/v1/rooms/default/join", "", {})
        results = {
            "join_unlocked_ns": best_ns_per_call(unlocked),
            "join_shared_ns": best_ns_per_call(room.join),
            "join_request_ns": best_ns_per_call(lambda: app.handle(request), 20_000),
        }
    mutex_ns = results["join_shared_ns"] - results["join_unlocked_ns"]
    results["mutex_share_of_join_request"] = mutex_ns / results["join_request_ns"]
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
