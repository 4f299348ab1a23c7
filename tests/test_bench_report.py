"""The bench's reporting without a load: the table's ratios, verdicts, /proc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import Json
from bench.chart import draw_sale
from bench.procstat import TreeSampler, tree_pids, tree_usage
from bench.suite import burst_verdicts, summarize
from tests.serverproc import wait_for


def result(**rps: float) -> Json:
    return {
        "endpoints": {
            kind: {"rps": value, "p99_ms": 1.0} for kind, value in rps.items()
        }
    }


def test_summary_divides_by_the_baselines_of_the_same_endpoint() -> None:
    load = {
        "bare": {"join": result(join=1000.0), "status": result(status=2000.0)},
        "uvicorn": {"join": result(join=50.0), "status": result(status=100.0)},
        "wr": {"join": result(join=500.0), "status": result(status=600.0)},
        "wr-nometrics": {"join": result(join=520.0), "status": result(status=600.0)},
    }
    summary = summarize(load, {})
    rows = {(r["server"], r["endpoint"]): r for r in summary["rows"]}
    assert rows["wr", "join"]["x_bare"] == pytest.approx(0.5)
    assert rows["wr", "join"]["x_uvicorn"] == pytest.approx(10.0)
    assert rows["wr", "status"]["x_bare"] == pytest.approx(0.3)
    targets = {t["target"]: t for t in summary["targets"]}
    assert targets["join >= 0.4 x bare"]["met"]
    assert not targets["status >= 0.35 x bare"]["met"]
    assert targets["status >= 0.35 x bare"]["short_by"] == pytest.approx(1 - 0.3 / 0.35)
    assert targets["join >= 8 x uvicorn"]["met"]
    assert summary["metrics_cost"]["join"]["cost"] == pytest.approx(1 - 500 / 520)
    assert summary["metrics_cost"]["status"]["cost"] == pytest.approx(0.0)


def test_wrk_rows_get_their_own_ratios() -> None:
    wrk = {
        "bare": {"join": {"rps": 800.0}},
        "uvicorn": {"join": {"rps": 100.0}},
        "wr": {"join": {"rps": 400.0}},
    }
    rows = summarize({}, wrk)["rows"]
    wr = next(r for r in rows if r["server"] == "wr")
    assert wr["generator"] == "wrk"
    assert wr["x_bare"] == pytest.approx(0.5)
    assert wr["x_uvicorn"] == pytest.approx(4.0)


def sale(**changes: object) -> Json:
    figures: Json = {
        "error_count": 0,
        "admissions": {"ratio": 0.995},
        "polls": {"reduction": 12.0},
        "fairness": {"max_places": 0},
        "server_rss_growth_mb": 3.0,
    }
    figures.update(changes)
    return figures


def test_burst_verdicts() -> None:
    assert all(burst_verdicts(sale()).values())
    verdicts = burst_verdicts(
        sale(
            error_count=1,
            admissions={"ratio": 0.98},
            polls={"reduction": 9.0},
            fairness={"max_places": 2},
            server_rss_growth_mb=25.0,
        )
    )
    assert not any(verdicts.values())
    assert len(verdicts) == 5


def test_tree_sampler_sees_a_child_process() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; data = bytearray(32 << 20); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        assert child.pid in tree_pids(os.getpid())
        wait_for(
            lambda: tree_usage(child.pid)[0] > 32 << 20, 30.0, "the child's memory"
        )
        with TreeSampler(os.getpid(), interval_s=0.01) as sampler:
            # Burn a little CPU so that the tree's CPU time moves.
            sum(i * i for i in range(300_000))
        rss, cpu = tree_usage(os.getpid())
        assert rss > 32 << 20
        assert cpu > 0
        summary = sampler.summary()
        assert summary["rss_peak_mb"] > 32
        assert summary["cpu_share"] >= 0
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)


def test_chart_of_a_sale(tmp_path: Path) -> None:
    timeline = {
        "queue": [
            {"t": t, "waiting": 100.0 - t, "serving": 10.0 * t} for t in range(10)
        ],
        "latency": [{"t": t, "p99_ms": 2.0} for t in range(10)],
        "claims_s": [0.5, 1.5, 1.7],
    }
    figures = {"timeline": timeline, "spec": {"people": 100, "pollers": 10}}
    drawn = draw_sale(figures, tmp_path / "sale.png")
    try:
        import matplotlib  # noqa: F401, PLC0415 - optional, as in bench.chart
    except ImportError:
        assert drawn is None
    else:
        assert drawn is not None
        assert drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
