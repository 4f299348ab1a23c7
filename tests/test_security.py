"""The security review, as tests against a live server.

- The admin API answers only on its own listener, and only with its token.
- Secret and state files are private; a loose one stops start-up.
- Cookies are HttpOnly and SameSite, and Secure when ``http.secure_cookies``.
- Redirects go only to the configured targets, whatever the request says.
- No token or secret reaches the log, even at debug level with the access
  log on, or an error body.
"""

from __future__ import annotations

import base64
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from tests.serverproc import WrServer, wait_for
from tests.test_admin_e2e import admin
from tests.test_api import World
from wr.config import ConfigError, room_from_table

TARGET = "https://shop.test/sale"
CONFIG = f"""
[server]
workers = 2
log_level = "debug"
access_log = true

[http]
secure_cookies = true

[rooms.default]
rate_per_minute = 6000
target_url = "{TARGET}"
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WrServer]:
    wr = WrServer(tmp_path_factory.mktemp("security"), CONFIG).start()
    yield wr
    if wr.proc is not None and wr.proc.poll() is None:
        wr.stop()


def admin_secret(wr: WrServer) -> str:
    return (wr.state_dir / "admin.token").read_text().strip()


def signing_secrets(wr: WrServer) -> list[str]:
    """Each key of the ring, as stored and in the encodings a leak might use."""
    ring = orjson.loads((wr.state_dir / "keys.json").read_bytes())
    found = []
    for item in ring["keys"]:
        stored = item["secret"]
        raw = base64.urlsafe_b64decode(stored)
        found += [stored, base64.b64encode(raw).decode(), raw.hex()]
    return found


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def assert_cookie_is_guarded(cookie: str) -> None:
    attributes = [part.strip() for part in cookie.split(";")[1:]]
    assert "HttpOnly" in attributes, cookie
    assert "SameSite=Lax" in attributes, cookie
    assert "Secure" in attributes, cookie


# Cookies and redirects, while a person goes through (tokens collected).


@dataclass
class Journey:
    cookies: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    admitted: dict[str, object] = field(default_factory=dict)
    bypass: httpx.Response | None = None


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def journey(live: WrServer) -> Journey:
    """A person joins, is admitted, enters, leaves; an invite link is used.

    Secure cookies are not sent back over plain HTTP, so the person sends
    the tokens by hand, as header and as cookie.
    """
    seen = Journey()
    with httpx.Client(base_url=live.base, timeout=5.0) as person:
        joined = person.post("/api/v1/rooms/default/join")
        seen.cookies += set_cookies(joined)
        queue = str(joined.json()["queue_token"])

        def admitted() -> httpx.Response | None:
            answer = person.get("/api/v1/rooms/default/status", headers=bearer(queue))
            return answer if answer.json()["state"] == "admitted" else None

        answer = wait_for(admitted, 10.0, "admission")
        seen.cookies += set_cookies(answer)
        seen.admitted = answer.json()
        access = str(seen.admitted["access_token"])
        as_cookie = {"cookie": f"wr_access={access}"}
        assert person.get("/api/v1/verify", headers=as_cookie).status_code == 204
        assert person.get("/api/v1/verify", headers=bearer(access)).status_code == 204
        left = person.post("/api/v1/rooms/default/leave", headers=as_cookie)
        assert left.status_code == 204
        seen.cookies += set_cookies(left)
        # Refused tokens travel through the logging code paths too.
        person.get("/api/v1/rooms/default/status", headers=bearer(queue + "x"))
        person.get("/api/v1/verify", headers={"cookie": f"wr_access={access}x"})

    with admin(live) as client:
        minted = client.post("/admin/v1/rooms/default/bypass-tokens", json={})
    assert minted.status_code == 201
    link = minted.json()
    # Extra parameters that try to choose where the invite leads.
    seen.bypass = httpx.get(
        f"{live.base}{link['path']}&redirect=https://evil.test/&next=//evil.test",
        timeout=5.0,
    )
    seen.cookies += set_cookies(seen.bypass)
    httpx.get(
        f"{live.base}/api/v1/rooms/default/bypass?token={link['token']}x", timeout=5.0
    )
    seen.tokens = [queue, access, str(link["token"])]
    seen.tokens += [c.split(";", 1)[0].split("=", 1)[1] for c in seen.cookies]
    return seen


@pytest.mark.slow
def test_every_cookie_is_httponly_samesite_and_secure(journey: Journey) -> None:
    # Queue cookie, access cookie, its removal, the invite's access cookie.
    assert len(journey.cookies) == 4
    for cookie in journey.cookies:
        assert_cookie_is_guarded(cookie)


@pytest.mark.slow
def test_redirects_go_to_the_configured_target_only(
    live: WrServer, journey: Journey
) -> None:
    assert journey.bypass is not None
    assert journey.bypass.status_code == 302
    assert journey.bypass.headers["location"] == TARGET
    assert journey.admitted["redirect"] == TARGET
    inside = httpx.get(f"{live.base}/inside?next=https://evil.test/", timeout=5.0)
    assert inside.status_code == 302
    assert inside.headers["location"] == "/"


@pytest.mark.slow
def test_no_token_or_secret_reaches_the_log(live: WrServer, journey: Journey) -> None:
    tokens = [token for token in journey.tokens if token]
    assert len(tokens) >= 6
    log = live.log.read_text()
    assert "wr.access" in log
    assert "DEBUG" in log
    for token in tokens:
        assert token not in log
        # Not even its signature, the part that cannot be guessed.
        assert token.rsplit(".", 1)[-1] not in log
    for secret in [admin_secret(live), *signing_secrets(live)]:
        assert secret not in log


# The admin listener.


@pytest.mark.slow
def test_the_admin_api_is_not_on_the_public_port(live: WrServer) -> None:
    token = admin_secret(live)
    for method in ("GET", "POST", "PATCH"):
        answer = httpx.request(
            method,
            f"{live.base}/admin/v1/rooms/default",
            headers={"authorization": f"Bearer {token}"},
            timeout=5.0,
        )
        assert answer.status_code in (404, 405)
        assert token not in answer.text


@pytest.mark.slow
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer wrong", "Basic {token}", "Bearer {token}x", "{token}"],
)
def test_the_admin_api_wants_exactly_its_token(
    live: WrServer, authorization: str | None
) -> None:
    headers = {}
    if authorization is not None:
        headers["authorization"] = authorization.format(token=admin_secret(live))
    base = f"http://127.0.0.1:{live.admin_port}"
    for path in ("/admin/v1/rooms", "/admin/v1/rooms/default/reset"):
        answer = httpx.post(base + path, headers=headers, timeout=5.0)
        assert answer.status_code == 401
        assert answer.json()["error"] == "unauthorised"
        assert admin_secret(live) not in answer.text


@pytest.mark.slow
def test_the_admin_listener_serves_no_public_routes(live: WrServer) -> None:
    with admin(live) as client:
        assert client.post("/api/v1/rooms/default/join").status_code == 404
        assert client.get("/healthz").status_code == 404


# Files.


@pytest.mark.slow
def test_state_dir_and_secret_files_are_private(live: WrServer) -> None:
    assert stat.S_IMODE(live.state_dir.stat().st_mode) == 0o700
    for name in ("keys.json", "admin.token", "state.json"):
        assert stat.S_IMODE((live.state_dir / name).stat().st_mode) == 0o600, name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["keys.json", "admin.token", "state.json"])
def test_a_secret_file_open_to_others_stops_start_up(tmp_path: Path, name: str) -> None:
    wr = WrServer(tmp_path, CONFIG)
    wr.start()
    wr.stop()
    (wr.state_dir / name).chmod(0o644)
    code, output = wr.fail_to_start()
    assert code != 0
    lines = [line for line in output.splitlines() if line.startswith("wr:")]
    assert len(lines) == 1
    assert name in lines[0]
    assert "chmod 600" in lines[0]


def test_without_secure_cookies_no_cookie_claims_secure(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html>")
    (tmp_path / "inside.html").write_text("<!doctype html>")
    world = World(tmp_path)
    assert not world.config.http.secure_cookies
    joined = world.request("POST", "/api/v1/rooms/default/join")
    cookies = [value for name, value in joined.headers if name == "set-cookie"]
    assert cookies
    for cookie in cookies:
        attributes = [part.strip() for part in cookie.split(";")[1:]]
        assert "HttpOnly" in attributes
        assert "SameSite=Lax" in attributes
        assert "Secure" not in attributes


@pytest.mark.parametrize(
    "target",
    [
        "https://shop.test/\r\nset-cookie: wr_access=forged",
        "/sale\nlocation: https://evil.test/",
        "/\\evil.test",
        "/sale page",
        "/caf\u00e9",
    ],
)
def test_a_target_that_could_split_a_response_or_leave_the_site_is_refused(
    target: str,
) -> None:
    with pytest.raises(ConfigError, match="target_url"):
        room_from_table("default", {"target_url": target})


@pytest.mark.slow
def test_the_admin_api_cannot_set_a_header_splitting_target(live: WrServer) -> None:
    with admin(live) as client:
        answer = client.patch(
            "/admin/v1/rooms/default",
            json={"target_url": "https://shop.test/\r\nset-cookie: evil=1"},
        )
        assert answer.status_code == 400
        assert "target_url" in answer.json()["detail"]
        room = client.get("/admin/v1/rooms/default").json()
    assert room["target_url"] == TARGET
