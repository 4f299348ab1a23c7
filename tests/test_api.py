"""The API as a function of requests: rooms, tokens and a clock the test holds."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from wr.api import ACCESS_COOKIE, QUEUE_COOKIE, App
from wr.config import (
    AdminConfig,
    Config,
    HttpConfig,
    RoomConfig,
    ServerConfig,
    TokensConfig,
)
from wr.http import Request, Response
from wr.metrics import Metrics
from wr.room import Room
from wr.static import StaticFiles
from wr.tokens import KeyRing, Tokens

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class World:
    """An App with two rooms, a fixed clock and mid-range poll jitter."""

    def __init__(self, static_dir: Path, http: HttpConfig | None = None) -> None:
        rooms = {
            "default": RoomConfig(name="default", rate_per_minute=60),
            "other": RoomConfig(
                name="other", rate_per_minute=60, target_url="https://shop.test/"
            ),
        }
        self.config = Config(
            server=ServerConfig(),
            http=http or HttpConfig(),
            tokens=TokensConfig(queue_ttl_s=600, access_ttl_s=300),
            admin=AdminConfig(),
            rooms=rooms,
        )
        self.rooms = {name: Room(room) for name, room in rooms.items()}
        self.tokens = Tokens(KeyRing.generate(), self.config.tokens)
        self.metrics = Metrics(self.rooms)
        self.clock = Clock()
        self.ready = True
        self.app = App(
            self.config,
            self.rooms,
            self.tokens,
            self.metrics,
            StaticFiles.load(static_dir),
            clock=self.clock,
            rand=lambda: 0.5,
            ready=lambda: self.ready,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: dict[bytes, bytes] | None = None,
    ) -> Response:
        return self.app.handle(Request(method, path, query, headers or {}))

    def join(
        self, room: str = "default", headers: dict[bytes, bytes] | None = None
    ) -> dict[str, object]:
        path = f"/api/v1/rooms/{room}/join"
        response = self.request("POST", path, headers=headers)
        assert response.status == 200
        return body(response)

    def status(self, token: str, room: str = "default") -> Response:
        return self.request(
            "GET",
            f"/api/v1/rooms/{room}/status",
            headers={b"authorization": b"Bearer " + token.encode()},
        )

    def admit(self, room: str, seconds: float) -> None:
        self.rooms[room].advance(seconds)


def body(response: Response) -> dict[str, object]:
    data = orjson.loads(response.body)
    assert isinstance(data, dict)
    return data


def header(response: Response, name: str) -> list[str]:
    return [value for key, value in response.headers if key == name]


def cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


@pytest.fixture
def world(tmp_path: Path) -> World:
    (tmp_path / "index.html").write_text("<!doctype html><title>wait</title>")
    (tmp_path / "inside.html").write_text("<!doctype html><title>in</title>")
    return World(tmp_path)


def test_join_hands_out_consecutive_positions(world: World) -> None:
    first, second = world.join(), world.join()
    assert (first["position"], second["position"]) == (1, 2)
    assert second["ahead"] == 1
    assert second["eta_s"] == 2
    assert second["state"] == "waiting"
    assert second["next_poll_s"] == 3.0


def test_join_sets_the_queue_cookie_for_the_room(world: World) -> None:
    response = world.request("POST", "/api/v1/rooms/default/join")
    (set_cookie,) = header(response, "set-cookie")
    assert set_cookie.startswith(f"{QUEUE_COOKIE}=")
    assert "Path=/api/v1/rooms/default;" in set_cookie
    assert "HttpOnly" in set_cookie
    assert "SameSite=Lax" in set_cookie
    assert cookie_value(set_cookie) == body(response)["queue_token"]
    assert ("cache-control", "no-store") in response.headers


def test_join_with_a_valid_token_returns_the_same_place(world: World) -> None:
    first = world.join()
    world.join()
    token = str(first["queue_token"])
    again = world.join(headers={b"cookie": f"{QUEUE_COOKIE}={token}".encode()})
    assert again["position"] == 1
    assert again["queue_token"] == token
    assert world.rooms["default"].next_position == 3


def test_join_with_another_rooms_token_gets_a_new_place(world: World) -> None:
    other = world.join("other")
    token = str(other["queue_token"])
    fresh = world.join(headers={b"authorization": f"Bearer {token}".encode()})
    assert fresh["position"] == 1
    assert fresh["queue_token"] != token
    assert world.metrics.tokens_rejected["queue", "wrong_room"] == 1


def test_status_while_waiting_reports_place_and_eta(world: World) -> None:
    for _ in range(9):
        world.join()
    token = str(world.join()["queue_token"])
    world.admit("default", 4.0)
    response = world.status(token)
    assert response.status == 200
    assert body(response) == {
        "state": "waiting",
        "position": 10,
        "ahead": 5,
        "eta_s": 6,
        "next_poll_s": 3.0,
        "queue_token": token,
    }
    assert header(response, "set-cookie") == []


def test_status_once_admitted_gives_an_access_token(world: World) -> None:
    token = str(world.join()["queue_token"])
    world.admit("default", 1.0)
    response = world.status(token)
    data = body(response)
    assert data["state"] == "admitted"
    assert data["redirect"] == "/inside"
    access = str(data["access_token"])
    claims = world.tokens.check(access, "default", "access", world.clock.now)
    assert (claims.pos, claims.exp - claims.iat) == (1, 300)
    (set_cookie,) = header(response, "set-cookie")
    assert set_cookie.startswith(f"{ACCESS_COOKIE}={access}; Path=/;")


def test_an_admission_is_counted_once_however_often_it_is_asked(
    world: World,
) -> None:
    token = str(world.join()["queue_token"])
    world.admit("default", 1.0)
    for _ in range(5):
        assert body(world.status(token))["state"] == "admitted"
    assert world.rooms["default"].claimed == 1


def test_status_without_a_token_is_401(world: World) -> None:
    response = world.request("GET", "/api/v1/rooms/default/status")
    assert response.status == 401
    assert body(response)["error"] == "no_token"


def test_status_with_an_expired_token_says_so_and_counts_it(world: World) -> None:
    token = str(world.join()["queue_token"])
    world.clock.now += 601 + 5
    response = world.status(token)
    assert response.status == 401
    assert body(response) == {"error": "expired", "detail": "token has expired"}
    assert world.metrics.tokens_rejected["queue", "expired"] == 1


def test_status_refuses_an_access_token(world: World) -> None:
    token = str(world.join()["queue_token"])
    world.admit("default", 1.0)
    access = str(body(world.status(token))["access_token"])
    assert body(world.status(access))["error"] == "wrong_type"


def test_verify_accepts_the_access_cookie(world: World) -> None:
    token = str(world.join()["queue_token"])
    world.admit("default", 1.0)
    access = str(body(world.status(token))["access_token"])
    response = world.request(
        "GET",
        "/api/v1/verify",
        query="room=default",
        headers={b"cookie": f"a=b; {ACCESS_COOKIE}={access}".encode()},
    )
    assert response.status == 204
    assert response.body == b""


def test_verify_accepts_a_bearer_access_token(world: World) -> None:
    token = str(world.join("other")["queue_token"])
    world.admit("other", 1.0)
    access = str(body(world.status(token, "other"))["access_token"])
    response = world.request(
        "GET",
        "/api/v1/verify",
        query="room=other",
        headers={b"authorization": f"Bearer {access}".encode()},
    )
    assert response.status == 204


@pytest.mark.parametrize(
    ("query", "cookie", "status", "error"),
    [
        ("room=default", "", 401, "no_token"),
        ("room=default", "garbage", 401, "malformed"),
        ("room=other", "ACCESS", 401, "wrong_room"),
        ("room=default", "QUEUE", 401, "wrong_type"),
        ("", "ACCESS", 400, "room_required"),
        ("room=nope", "ACCESS", 404, "unknown_room"),
    ],
)
def test_verify_refuses_with_a_reason(
    world: World, query: str, cookie: str, status: int, error: str
) -> None:
    queue = str(world.join()["queue_token"])
    world.admit("default", 1.0)
    access = str(body(world.status(queue))["access_token"])
    value = {"ACCESS": access, "QUEUE": queue}.get(cookie, cookie)
    headers = {b"cookie": f"{ACCESS_COOKIE}={value}".encode()} if value else {}
    response = world.request("GET", "/api/v1/verify", query=query, headers=headers)
    assert response.status == status
    assert body(response)["error"] == error
    if status == 401:
        assert header(response, "www-authenticate") == ['Bearer realm="wr"']


def test_verify_needs_no_room_when_there_is_only_one(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("x")
    world = World(tmp_path)
    world.rooms.pop("other")
    response = world.request("GET", "/api/v1/verify")
    assert body(response)["error"] == "no_token"


def test_verify_refuses_an_expired_access_token(world: World) -> None:
    token = str(world.join()["queue_token"])
    world.admit("default", 1.0)
    access = str(body(world.status(token))["access_token"])
    world.clock.now += 300 + 6
    response = world.request(
        "GET",
        "/api/v1/verify",
        query="room=default",
        headers={b"authorization": f"Bearer {access}".encode()},
    )
    assert body(response)["error"] == "expired"
    assert world.metrics.tokens_rejected["access", "expired"] == 1


def test_unknown_room_is_404(world: World) -> None:
    response = world.request("POST", "/api/v1/rooms/nope/join")
    assert response.status == 404
    assert body(response)["error"] == "unknown_room"


def test_unknown_path_is_404_with_a_json_reason(world: World) -> None:
    response = world.request("GET", "/nowhere")
    assert response.status == 404
    assert body(response) == {"error": "not_found", "detail": "no such resource"}


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/api/v1/rooms/default/join", "POST"),
        ("POST", "/api/v1/rooms/default/status", "GET, HEAD"),
        ("DELETE", "/api/v1/verify", "GET, HEAD"),
        ("PUT", "/healthz", "GET, HEAD"),
    ],
)
def test_wrong_method_is_405_with_allow(
    world: World, method: str, path: str, allow: str
) -> None:
    response = world.request(method, path)
    assert response.status == 405
    assert header(response, "allow") == [allow]
    assert body(response)["error"] == "method_not_allowed"


def test_options_lists_the_allowed_methods(world: World) -> None:
    response = world.request("OPTIONS", "/api/v1/rooms/default/join")
    assert response.status == 204
    assert header(response, "allow") == ["POST"]


def test_health_and_readiness(world: World) -> None:
    assert world.request("GET", "/healthz").status == 200
    assert world.request("GET", "/readyz").status == 200
    world.ready = False
    response = world.request("GET", "/readyz")
    assert response.status == 503
    assert header(response, "retry-after") == ["1"]


def test_index_is_served_with_validators_and_304(world: World) -> None:
    response = world.request("GET", "/")
    assert response.status == 200
    assert response.content_type == "text/html; charset=utf-8"
    (etag,) = header(response, "etag")
    assert header(response, "cache-control") == ["public, max-age=60"]
    again = world.request("GET", "/", headers={b"if-none-match": etag.encode()})
    assert again.status == 304
    assert again.body == b""
    stale = world.request("GET", "/", headers={b"if-none-match": b'"other"'})
    assert stale.status == 200


def test_static_files_cannot_escape_the_folder(world: World) -> None:
    assert world.request("GET", "/static/inside.html").status == 200
    assert world.request("GET", "/static/../pyproject.toml").status == 404
    assert world.request("GET", "/static/%2e%2e/pyproject.toml").status == 404


def test_inside_page_needs_an_access_token(world: World) -> None:
    response = world.request("GET", "/inside")
    assert response.status == 302
    assert header(response, "location") == ["/"]

    token = str(world.join()["queue_token"])
    world.admit("default", 1.0)
    access = str(body(world.status(token))["access_token"])
    inside = world.request(
        "GET", "/inside", headers={b"cookie": f"{ACCESS_COOKIE}={access}".encode()}
    )
    assert inside.status == 200
    assert b"<title>in</title>" in inside.body


def test_metrics_page_shows_room_counters(world: World) -> None:
    world.join()
    world.join()
    response = world.request("GET", "/metrics")
    assert response.status == 200
    text = response.body.decode()
    assert 'wr_room_next_position{room="default"} 3.0' in text
    assert 'wr_room_waiting{room="default"} 2.0' in text
    assert 'wr_http_requests_total{code="200",route="join"} 2.0' in text


# The API while the shared store is out of reach (redis backend)


def test_joins_are_503_with_retry_after_while_held(world: World) -> None:
    world.rooms["default"].mark_stale(joins_held=True)
    response = world.request("POST", "/api/v1/rooms/default/join")
    assert response.status == 503
    assert body(response)["error"] == "updating"
    assert dict(response.headers)["retry-after"] == "5"


def test_status_answers_from_the_last_serving_flagged_stale(world: World) -> None:
    person = world.join()
    world.rooms["default"].mark_stale(joins_held=True)
    answer = body(world.status(str(person["queue_token"])))
    assert answer["stale"] is True
    assert answer["position"] == person["position"]
    assert answer["state"] == "waiting"


def test_a_fresh_status_carries_no_stale_flag(world: World) -> None:
    person = world.join()
    assert "stale" not in body(world.status(str(person["queue_token"])))


def test_with_fallback_joins_go_on_while_stale(world: World) -> None:
    world.rooms["default"].mark_stale(joins_held=False)
    response = world.request("POST", "/api/v1/rooms/default/join")
    assert response.status == 200
    assert body(response)["stale"] is True
