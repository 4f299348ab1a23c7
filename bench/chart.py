"""A PNG of a flash sale: queue depth, admissions and latency over time.

Drawn only when matplotlib is installed (``pip install -e '.[bench]'``);
without it the bench says so and writes its JSON as usual.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections import Counter
from pathlib import Path

from bench import Json

__all__ = ["draw_sale"]


def draw_sale(sale: Json, path: Path) -> Path | None:
    """Write the chart to ``path``; None when matplotlib is absent."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    # matplotlib is optional (the bench extra): imported only when present.
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    timeline = sale["timeline"]
    queue = timeline["queue"]
    latency = timeline["latency"]
    claims = timeline["claims_s"]

    figure, (depth, admitted, slow) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    times = [s["t"] for s in queue]
    depth.plot(times, [s["waiting"] for s in queue])
    depth.set_ylabel("people waiting")
    depth.set_title("flash sale: queue, admissions, latency (real seconds)")

    rates = [
        (b["t"], (b["serving"] - a["serving"]) / (b["t"] - a["t"]))
        for a, b in itertools.pairwise(queue)
        if b["t"] > a["t"]
    ]
    admitted.plot([t for t, _ in rates], [r for _, r in rates], label="admitted/s")
    # The sample claims for everyone: one in ``stride`` people polls.
    spec = sale["spec"]
    stride = max(1, spec["people"] // max(1, spec["pollers"]))
    per_second = Counter(int(c) for c in claims)
    seconds = sorted(per_second)
    admitted.plot(
        seconds,
        [per_second[s] * stride for s in seconds],
        label=f"claims/s (sample x {stride})",
    )
    admitted.set_ylabel("per second")
    admitted.legend()

    slow.plot([p["t"] for p in latency], [p["p99_ms"] for p in latency])
    slow.set_ylabel("p99 latency, ms")
    slow.set_xlabel("seconds since the first arrival")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
