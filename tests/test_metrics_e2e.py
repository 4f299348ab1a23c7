"""Metrics and logs of a real two-worker server: totals add up across workers.

Each worker publishes its counters to shared memory once a second and a
scrape adds them up, so whichever worker answers ``/metrics`` must show the
whole service. The access log (one line per request, with the worker's pid)
is the independent tally the scrapes are checked against.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.loadclient import join_many
from tests.serverproc import WrServer, missing, wait_for

CONFIG = """
[server]
workers = 2
access_log = true

[rooms.default]
rate_per_minute = 6000
target_url = "/inside"
"""

JOINS = 2_000
BAD_TOKENS = 7
GARBAGE = 5
# A Common Log Format line as wr writes it on the wr.access logger.
ACCESS_LINE = re.compile(
    r" (?P<pid>\d+) wr\.access INFO (?P<peer>\S+) - - \[[^]]+\] "
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/(?P<version>[\d.]+)" '
    r"(?P<status>\d{3}) (?P<size>\d+|-)$"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WrServer]:
    wr = WrServer(tmp_path_factory.mktemp("metrics"), CONFIG).start()
    wr.wait_workers_listening(2)
    yield wr
    if wr.proc is not None and wr.proc.poll() is None:
        wr.stop()


def scrape(server: WrServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """One scrape on a fresh connection, as {(sample name, labels): value}."""
    answer = httpx.get(f"{server.base}/metrics", headers={"connection": "close"})
    assert answer.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            samples[key] = sample.value
    return samples


def total(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
    name: str,
    **labels: str,
) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def access_lines(server: WrServer) -> list[re.Match[str]]:
    lines = server.log.read_text().splitlines()
    return [m for line in lines if (m := ACCESS_LINE.search(line))]


def send_garbage(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")


@pytest.fixture(scope="module")
def traffic(server: WrServer) -> WrServer:
    """Joins over many connections, refused tokens and unparseable requests."""
    asyncio.run(join_many(server.port, "default", JOINS, connections=24, depth=16))
    for _ in range(BAD_TOKENS):
        answer = httpx.get(
            f"{server.base}/api/v1/rooms/default/status",
            headers={"authorization": "Bearer not.a.token", "connection": "close"},
        )
        assert answer.status_code == 401
    for _ in range(GARBAGE):
        send_garbage(server.port)
    return server


def settled_scrape(
    server: WrServer,
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A scrape that shows every request sent so far (after publication)."""

    def complete() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        samples = scrape(server)
        joins = total(samples, "wr_http_requests_total", route="join", code="200")
        garbage = total(samples, "wr_http_bad_requests_total", code="400")
        bad = total(samples, "wr_token_rejections_total", kind="queue")
        return (
            samples if (joins, garbage, bad) == (JOINS, GARBAGE, BAD_TOKENS) else None
        )

    return wait_for(complete, 10.0, "every request counted", poll_s=0.2)


def test_both_workers_served_the_joins(traffic: WrServer) -> None:
    served = Counter(
        m["pid"] for m in access_lines(traffic) if m["path"].endswith("/join")
    )
    assert sum(served.values()) == JOINS
    assert set(served) == {str(pid) for pid in traffic.worker_pids().values()}


def test_every_scrape_shows_the_whole_service(traffic: WrServer) -> None:
    settled_scrape(traffic)
    # Fresh connections land on either worker; each must see the same totals.
    for _ in range(8):
        samples = scrape(traffic)
        assert total(samples, "wr_http_requests_total", route="join") == JOINS
        assert (
            total(
                samples,
                "wr_token_rejections_total",
                kind="queue",
                reason="malformed",
            )
            == BAD_TOKENS
        )
        assert total(samples, "wr_http_bad_requests_total", code="400") == GARBAGE
        assert (
            total(samples, "wr_http_request_duration_seconds_count", route="join")
            == JOINS
        )
        assert total(samples, "wr_room_joins_total", room="default") == JOINS


def test_totals_do_not_go_back_when_a_worker_is_replaced(traffic: WrServer) -> None:
    settled_scrape(traffic)
    pids = traffic.worker_pids()
    # TERM lets the worker publish its last counters as it exits; the
    # supervisor folds them into the retired totals and starts another.
    os.kill(pids[0], signal.SIGTERM)
    wait_for(lambda: traffic.worker_pids()[0] != pids[0], 10.0, "a new worker 0")
    for _ in range(8):
        samples = scrape(traffic)
        assert total(samples, "wr_http_requests_total", route="join") == JOINS
        assert total(samples, "wr_worker_restarts_total") >= 1


def test_access_log_has_one_line_per_request_without_query(traffic: WrServer) -> None:
    httpx.get(f"{traffic.base}/api/v1/verify?room=default&secret=abc")
    lines = wait_for(
        lambda: [m for m in access_lines(traffic) if m["path"] == "/api/v1/verify"],
        5.0,
        "the verify line",
    )
    assert lines[-1]["status"] == "401"
    assert "secret" not in traffic.log.read_text()
    assert {m["method"] for m in access_lines(traffic)} >= {"POST", "GET"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing("promtool is missing (scripts/install-test-deps installs it)")
    return path


def test_promtool_finds_nothing_to_complain_about(traffic: WrServer) -> None:
    binary = promtool()
    settled_scrape(traffic)
    text = httpx.get(f"{traffic.base}/metrics").text
    # Every kind of family is populated: labels, histograms, counters.
    assert "wr_token_rejections_total{" in text
    assert "wr_http_bad_requests_total{" in text
    result = subprocess.run(
        [binary, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == ""


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
METRIC_NAME = re.compile(r"\bwr_[a-z_]+\b")


def example_expressions() -> dict[str, str]:
    """Every PromQL expression of the Grafana dashboard and the alert rules."""
    dashboard = json.loads((EXAMPLES / "grafana" / "wr-dashboard.json").read_text())
    exprs = {
        f"panel {panel['title']!r}": target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
    }
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs[f"variable {variable['name']}"] = variable["query"]
    rules = (EXAMPLES / "prometheus" / "wr-alerts.yml").read_text()
    for match in re.finditer(
        r"- alert: (\w+)\n\s+expr: (.+?)\n\s+(?:for|labels):", rules, re.S
    ):
        exprs[f"alert {match[1]}"] = match[2]
    return exprs


def test_the_dashboard_and_alerts_use_only_metrics_wr_exports(
    traffic: WrServer,
) -> None:

    def with_drop_off() -> str | None:
        text = httpx.get(f"{traffic.base}/metrics").text
        return text if "wr_room_still_waiting_ratio{" in text else None

    exported = wait_for(with_drop_off, 15.0, "drop-off figures for the admitted")
    names = {
        m.split("{")[0].split(" ")[0] for m in exported.splitlines() if m[:3] == "wr_"
    }
    exprs = example_expressions()
    assert len(exprs) > 25
    for where, expr in exprs.items():
        used = set(METRIC_NAME.findall(expr))
        # Only the target-is-down alert rests on Prometheus's own `up`.
        assert used or expr.startswith("up{"), f"{where} uses no wr metric"
        assert used <= names, f"{where} uses {sorted(used - names)}"


def test_promtool_accepts_the_example_config_and_rules() -> None:
    binary = promtool()
    folder = EXAMPLES / "prometheus"
    for args in (
        ["check", "config", "--syntax-only", str(folder / "prometheus.yml")],
        ["check", "rules", str(folder / "wr-alerts.yml")],
    ):
        result = subprocess.run(
            [binary, *args], capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
