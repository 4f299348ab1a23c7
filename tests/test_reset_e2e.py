"""A room reset against a real two-worker server: API, CLI, restarts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.serverproc import WrServer, running, wait_for
from tests.test_admin_e2e import admin, wr_admin
from tests.test_workers import join as join_at
from tests.test_workers import status as status_at

pytestmark = pytest.mark.slow

CONFIG = """
[server]
workers = 2

[rooms.default]
rate_per_minute = 60
target_url = "/inside"
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WrServer]:
    yield from running(tmp_path, CONFIG)


def join(server: WrServer) -> dict[str, object]:
    return join_at(server.base)


def status(server: WrServer, token: object) -> httpx.Response:
    return status_at(server.base, token)


def refused_for_reset(server: WrServer, token: object, asks: int = 6) -> bool:
    return all(
        status(server, token).json().get("error") == "reset" for _ in range(asks)
    )


def saved_reset(server: WrServer) -> tuple[int, int]:
    data = orjson.loads((server.state_dir / "state.json").read_bytes())
    room = data["rooms"]["default"]
    return int(room.get("reset_at", 0)), int(room.get("reset_position", 0))


def test_reset_voids_old_tokens_everywhere_and_survives_kill_9(
    server: WrServer,
) -> None:
    old = [join(server) for _ in range(4)]
    with admin(server) as client:
        answer = client.post("/admin/v1/rooms/default/reset")
    assert answer.status_code == 200, answer.text
    reset = answer.json()
    assert reset["first_position"] == 5
    assert reset["reset_at"] >= int(time.time())

    tokens = [person["queue_token"] for person in old]
    wait_for(
        lambda: all(refused_for_reset(server, token) for token in tokens),
        10.0,
        "old tokens refused by every worker",
    )
    fresh = join(server)
    assert fresh["position"] == 5
    assert fresh["ahead"] == 0
    wait_for(lambda: saved_reset(server) == (reset["reset_at"], 5), 10.0, "reset saved")

    server.kill_all()
    server.start()
    assert refused_for_reset(server, old[0]["queue_token"])
    assert status(server, fresh["queue_token"]).status_code == 200
    # No position is handed out twice after the crash either.
    assert int(str(join(server)["position"])) > 5
    metrics = httpx.get(f"{server.base}/metrics", timeout=5.0).text
    assert 'wr_token_rejections_total{kind="queue",reason="reset"}' in metrics


def test_wr_admin_reset_prints_the_new_line(server: WrServer) -> None:
    person = join(server)
    result = wr_admin(server, "reset", "default")
    assert result.returncode == 0, result.stderr
    assert "first_position: 2" in result.stdout
    wait_for(
        lambda: refused_for_reset(server, person["queue_token"]),
        10.0,
        "old token refused",
    )


def test_reset_needs_the_admin_token_and_a_known_room(server: WrServer) -> None:
    person = join(server)
    anonymous = httpx.post(
        f"http://127.0.0.1:{server.admin_port}/admin/v1/rooms/default/reset"
    )
    assert anonymous.status_code == 401
    public = httpx.post(f"{server.base}/admin/v1/rooms/default/reset")
    assert public.status_code == 404
    with admin(server) as client:
        assert client.post("/admin/v1/rooms/nope/reset").status_code == 404
        assert client.get("/admin/v1/rooms/default/reset").status_code == 405
    assert status(server, person["queue_token"]).status_code == 200
