"""The admin API and ``wr admin`` against a real two-worker server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serverproc import WrServer, wait_for

CONFIG = """
[server]
workers = 2

[rooms.default]
rate_per_minute = 600
target_url = "/inside"
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WrServer]:
    wr = WrServer(tmp_path, CONFIG).start()
    wr.wait_workers_listening(2)
    yield wr
    if wr.proc is not None and wr.proc.poll() is None:
        wr.stop()


def admin(server: WrServer) -> httpx.Client:
    token = (server.state_dir / "admin.token").read_text().strip()
    return httpx.Client(
        base_url=f"http://127.0.0.1:{server.admin_port}",
        headers={"authorization": f"Bearer {token}"},
        timeout=5.0,
    )


def wr_admin(server: WrServer, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "wr", "admin", *args]
    command += ["--config", str(server.config), "--state-dir", str(server.state_dir)]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, check=False
    )


def states(server: WrServer, token: str, asks: int = 10) -> set[str]:
    """The state reported to one person over several fresh connections."""
    seen = set()
    for _ in range(asks):
        answer = httpx.get(
            f"{server.base}/api/v1/rooms/default/status",
            headers={"authorization": f"Bearer {token}", "connection": "close"},
        )
        seen.add(str(answer.json()["state"]))
    return seen


def test_admin_calls_without_the_token_are_refused_and_change_nothing(
    server: WrServer,
) -> None:
    base = f"http://127.0.0.1:{server.admin_port}/admin/v1/rooms/default"
    for headers in ({}, {"authorization": "Bearer wrong"}):
        answer = httpx.patch(base, json={"paused": True}, headers=headers)
        assert answer.status_code == 401
    with admin(server) as client:
        assert client.get("/admin/v1/rooms/default").json()["paused"] is False


def test_the_public_port_has_no_admin_routes(server: WrServer) -> None:
    with admin(server) as client:
        headers = client.headers
    answer = httpx.get(f"{server.base}/admin/v1/rooms", headers=headers)
    assert answer.status_code == 404


def test_pause_and_resume_reach_every_worker_within_a_tick(server: WrServer) -> None:
    # Two people: the second stays in line long enough to observe.
    httpx.post(f"{server.base}/api/v1/rooms/default/join")
    result = wr_admin(server, "pause", "default")
    assert result.returncode == 0, result.stderr
    assert "paused: true" in result.stdout

    person = httpx.post(f"{server.base}/api/v1/rooms/default/join").json()
    assert person["state"] == "paused"
    wait_for(lambda: states(server, person["queue_token"]) == {"paused"}, 5.0, "paused")

    assert wr_admin(server, "resume", "default").returncode == 0
    wait_for(
        lambda: states(server, person["queue_token"], asks=1) == {"admitted"},
        10.0,
        "admitted after resume",
    )


def test_a_bad_patch_is_400_naming_the_field_and_changes_nothing(
    server: WrServer,
) -> None:
    with admin(server) as client:
        answer = client.patch("/admin/v1/rooms/default", json={"rate_per_minute": -1})
        assert answer.status_code == 400
        assert answer.json()["detail"].startswith("rate_per_minute:")
        assert client.get("/admin/v1/rooms/default").json()["rate_per_minute"] == 600
    result = wr_admin(server, "set", "default", "paused=maybe")
    assert result.returncode == 1
    assert "paused" in result.stderr


def test_changes_survive_a_restart(server: WrServer) -> None:
    assert wr_admin(server, "set", "default", "rate_per_minute=1").returncode == 0
    assert server.stop() == 0
    server.start()
    shown = wr_admin(server, "show", "default", "--json")
    assert '"rate_per_minute": 1.0' in shown.stdout


def test_a_room_created_live_takes_people_at_once(server: WrServer) -> None:
    with admin(server) as client:
        created = client.put(
            "/admin/v1/rooms/flash",
            json={"rate_per_minute": 6000, "target_url": "https://shop.test/"},
        )
        assert created.status_code == 201
        assert created.json()["max_queue"] is None

    def joined() -> bool:
        answer = httpx.post(f"{server.base}/api/v1/rooms/flash/join")
        return answer.status_code == 200

    wait_for(joined, 5.0, "a join in the new room")
    listing = wr_admin(server, "rooms")
    assert listing.returncode == 0
    assert "flash" in listing.stdout
    assert "default" in listing.stdout


def test_a_bypass_link_lets_its_holder_straight_in(server: WrServer) -> None:
    assert wr_admin(server, "pause", "default").returncode == 0
    result = wr_admin(server, "bypass", "default", "--ttl", "600")
    assert result.returncode == 0, result.stderr
    link = result.stdout.split("link: ", 1)[1].split()[0]

    with httpx.Client(base_url=server.base) as person:
        answer = person.get(link)
        assert answer.status_code == 302
        assert answer.headers["location"] == "/inside"
        assert person.get("/api/v1/verify?room=default").status_code == 204


def test_stats_show_who_reached_the_front_and_who_gave_up(server: WrServer) -> None:
    people = [
        httpx.post(f"{server.base}/api/v1/rooms/default/join").json() for _ in range(5)
    ]

    def admitted(token: str) -> bool:
        return states(server, token, asks=1) == {"admitted"}

    for person in people:
        wait_for(partial(admitted, str(person["queue_token"])), 10.0, "admitted")
    with admin(server) as client:

        def settled() -> dict[str, Any] | None:
            stats: dict[str, Any] = client.get("/admin/v1/rooms/default/stats").json()
            return stats if stats["drop_off"]["settled"] >= 5 else None

        stats = wait_for(settled, 5.0, "five people settled")
        assert client.get("/admin/v1/rooms/nope/stats").status_code == 404
    assert stats["claimed"] == 5
    assert stats["wait_at_admission"]["count"] == 5
    # Everyone polled until their turn came: nobody had given up.
    assert stats["drop_off"]["abandoned"] == 0
    assert [p["after_s"] for p in stats["drop_off"]["still_waiting"]] == [
        60,
        120,
        300,
        600,
        1200,
        1800,
    ]
    assert stats["drop_off"]["by_place"][0]["settled"] == 5

    result = wr_admin(server, "stats", "default")
    assert result.returncode == 0, result.stderr
    assert "reached the front: 5" in result.stdout
    assert "still waiting after" in result.stdout
    assert "1-100" in result.stdout
