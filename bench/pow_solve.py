"""How long a browser takes to solve the join challenge, by difficulty.

Runs the waiting page's own solver (``static/pow-worker.js``, a Web Worker
on WebCrypto) in headless Chromium against a real wr, on fresh challenges,
and reports the median and the 90th percentile of the solve times the page
measured. A phone is taken to be four times slower than this machine
(Chromium's own "mid-tier mobile" preset slows the CPU fourfold). The
preset itself (``Emulation.setCPUThrottlingRate``) is not used: it slows
the page's main thread but, as measured here, not its Web Worker, whose
times came out the same with and without it.

    python -m bench.pow_solve [--difficulties 12,14,16] [--challenges 25]

Writes ``bench/results/pow_solve.json``. Needs Playwright for Python and
Debian's ``chromium``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from playwright.sync_api import Page, sync_playwright

from tests.serverproc import WrServer
from tests.test_page_e2e import CHROMIUM, CHROMIUM_ARGS

# Chromium's "mid-tier mobile" preset slows the CPU fourfold: a phone is
# taken to be that much slower than this machine.
PHONE_SLOWDOWN = 4
# No single solve may take longer than this: the run is bounded in time.
SOLVE_TIMEOUT_S = 120
RESULTS = Path(__file__).resolve().parent / "results"

CONFIG = """
[server]
workers = 1

[rooms.default]
rate_per_minute = 60
"""

SOLVE = """
([challenge, difficulty]) => new Promise((resolve, reject) => {
  const worker = new Worker("/static/pow-worker.js");
  worker.onmessage = (event) => { worker.terminate(); resolve(event.data); };
  worker.onerror = (event) => reject(new Error(event.message));
  worker.postMessage({challenge, difficulty});
})
"""


def solve_times(page: Page, difficulty: int, count: int) -> list[float]:
    """Seconds the page took for ``count`` fresh challenges."""
    times = []
    for index in range(count):
        challenge = f"bench-{difficulty}-{index}-{time.time_ns()}"
        answer: dict[str, Any] = page.evaluate(SOLVE, [challenge, difficulty])
        if "error" in answer:
            raise RuntimeError(f"the solver failed: {answer['error']}")
        times.append(answer["solve_ms"] / 1000)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_s": statistics.median(ordered),
        "p90_s": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max_s": ordered[-1],
    }


def measure(base: str, difficulties: list[int], count: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        page = browser.new_page()
        page.set_default_timeout(SOLVE_TIMEOUT_S * 1000)
        page.goto(f"{base}/healthz")
        for difficulty in difficulties:
            measured = summary(solve_times(page, difficulty, count))
            measured["phone_median_s"] = measured["median_s"] * PHONE_SLOWDOWN
            results[str(difficulty)] = measured
        browser.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--difficulties", default="12,14,16")
    parser.add_argument("--challenges", type=int, default=25)
    args = parser.parse_args(argv)
    difficulties = [int(d) for d in args.difficulties.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        server = WrServer(Path(tmp), CONFIG).start()
        try:
            results = measure(server.base, difficulties, args.challenges)
        finally:
            server.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pow_solve.json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2)
    )
    print(f"{'difficulty':>10} {'median':>8} {'p90':>8} {'phone median (x4)':>18}")
    for d in difficulties:
        row = results[str(d)]
        print(
            f"{d:>10} {row['median_s']:>7.2f}s {row['p90_s']:>7.2f}s "
            f"{row['phone_median_s']:>17.2f}s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
