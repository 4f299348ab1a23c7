"""The load generator against a real wr: counts and correctness, never speed.

Every run is bounded by a request count, so what the generator says it
sent can be held against what wr says it answered (its /metrics).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.cli import TargetRefused, check_target, main
from bench.flashsale import FlashSpec, run_flash_sale
from bench.load import LoadSpec, run_load
from bench.servers import bare_server, starlette_server, wr_server
from tests.serverproc import WrServer

CONFIG = """
[server]
workers = 1
log_level = "warning"
[rooms.default]
rate_per_minute = 60000
[rooms.open]
rate_per_minute = 6000000000
[rooms.slow]
rate_per_minute = 1
"""

# Long enough never to end these runs on a loaded machine: the request
# count ends them.
LONG_S = 60.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WrServer]:
    wr = WrServer(tmp_path, CONFIG).start()
    yield wr
    wr.stop()


def counters(server: WrServer) -> dict[tuple[str, tuple[str, ...]], float]:
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.values())))] = sample.value
    return found


def answered(server: WrServer, route: str, code: str) -> float:
    return counters(server).get(("wr_http_requests_total", (code, route)), 0.0)


def joins(server: WrServer, room: str) -> float:
    return counters(server).get(("wr_room_joins_total", (room,)), 0.0)


def spec(server: WrServer, mode: str, requests: int, **extra: object) -> LoadSpec:
    return bench_spec(server.port, mode, requests, **extra)


def bench_spec(port: int, mode: str, requests: int, **extra: object) -> LoadSpec:
    settings: dict[str, object] = {
        "mode": mode,
        "port": port,
        "connections": 4,
        "depth": 4,
        "duration_s": LONG_S,
        "warmup_s": 0.0,
        "max_requests": requests,
        "tokens_per_connection": 3,
    }
    settings.update(extra)
    return LoadSpec(**settings)  # type: ignore[arg-type]


def test_join_load_hands_out_one_position_per_request(server: WrServer) -> None:
    result = run_load(spec(server, "join", 1500, room="slow"))
    assert result["error_count"] == 0
    assert result["sent"] == 1500
    assert joins(server, "slow") == 1500
    endpoint = result["endpoints"]["join"]
    assert 0 < endpoint["requests"] <= 1500
    assert endpoint["p50_ms"] <= endpoint["p99_ms"] <= endpoint["p999_ms"]
    assert endpoint["p999_ms"] <= endpoint["max_ms"]


def test_status_load_polls_with_tokens_from_its_own_joins(server: WrServer) -> None:
    result = run_load(spec(server, "status", 800, room="slow"))
    assert result["error_count"] == 0
    assert result["sent"] == 800
    # Four connections took three tokens each; polls create no positions.
    assert joins(server, "slow") == 12
    assert answered(server, "status", "200") == 800


def test_verify_load_checks_access_tokens(server: WrServer) -> None:
    result = run_load(spec(server, "verify", 600))
    assert result["error_count"] == 0
    assert result["sent"] == 600
    assert answered(server, "verify", "204") == 600
    assert joins(server, "open") == 12


def test_mixed_load_sends_every_kind(server: WrServer) -> None:
    result = run_load(spec(server, "mixed", 1000, room="slow", processes=2))
    assert result["error_count"] == 0
    assert result["sent"] == 1000
    assert set(result["endpoints"]) == {"join", "status", "verify"}
    # Four connections (two per process) took three tokens of each kind.
    assert joins(server, "slow") == 200 + 12
    assert joins(server, "open") == 12
    assert answered(server, "verify", "204") == 300
    # Each access token took one poll or more, as the open room's ticker
    # let its holder in.
    assert answered(server, "status", "200") >= 500 + 12


def test_errors_are_counted_by_kind(server: WrServer) -> None:
    # Polls with a token for a room that does not exist: 404 each time.
    result = run_load(spec(server, "join", 50, room="nowhere"))
    assert result["sent"] == 50
    assert result["error_count"] == 50
    assert result["errors"] == {"join:http_404 unknown_room": 50}


def test_a_small_flash_sale_is_fair_and_admits_everyone(server: WrServer) -> None:
    sale = run_flash_sale(
        FlashSpec(
            port=server.port,
            people=600,
            pollers=60,
            give_up=0.0,
            rate_per_minute=60000,
            compression=60.0,
            connections=4,
            max_duration_s=LONG_S,
            linger_s=LONG_S,
        ),
        server.pid,
    )
    assert sale["error_count"] == 0
    assert sale["people_joined"] == 600
    assert joins(server, "default") == 600
    assert sale["fairness"]["max_places"] == 0
    polls = sale["polls"]
    assert polls["sampled_people"] == 60
    # The run ends once every sampled person has claimed their turn.
    assert polls["outcomes"] == {"admitted": 60}
    assert polls["adaptive_polls"] == answered(server, "status", "200")
    claimed = counters(server)[("wr_room_admissions_claimed_total", ("default",))]
    assert claimed == 60
    assert sale["server"]["rss_peak_mb"] > 0


def test_a_ramped_sale_brings_everyone_in_order(server: WrServer) -> None:
    sale = run_flash_sale(
        FlashSpec(
            port=server.port,
            people=300,
            arrival="ramp",
            # Ten minutes of sale time, compressed 600 times: a second.
            ramp_s=600.0,
            compression=600.0,
            pollers=30,
            give_up=0.0,
            rate_per_minute=60000,
            connections=2,
            processes=2,
            max_duration_s=LONG_S,
            linger_s=LONG_S,
        ),
    )
    assert sale["error_count"] == 0
    assert sale["people_joined"] == 300
    assert joins(server, "default") == 300
    assert sale["fairness"]["max_places"] == 0
    assert sale["polls"]["outcomes"] == {"admitted": 30}
    assert "server" not in sale


def test_only_loopback_targets_unless_allowed() -> None:
    check_target("127.0.0.1", allow_remote=False)
    check_target("localhost", allow_remote=False)
    with pytest.raises(TargetRefused, match="not a loopback address"):
        check_target("192.0.2.1", allow_remote=False)
    check_target("192.0.2.1", allow_remote=True)


def test_the_cli_refuses_a_remote_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["join", "--host", "192.0.2.1", "--port", "80"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_the_baselines_answer_the_same_load(tmp_path: Path) -> None:
    with bare_server(tmp_path) as bare, starlette_server(tmp_path) as uvicorn:
        for server in (bare, uvicorn):
            for mode in ("join", "status", "verify"):
                result = run_load(bench_spec(server.port, mode, 120))
                assert result["sent"] == 120, (server.name, mode)
                assert result["error_count"] == 0, (server.name, mode)


def test_the_bench_runs_wr_with_metrics_off(tmp_path: Path) -> None:
    with wr_server(tmp_path, "off", metrics=False) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 404
        result = run_load(bench_spec(server.port, "join", 100))
        assert result["error_count"] == 0
        assert result["sent"] == 100
