"""Room states, leave, bypass and the admin API, as functions of requests.

The public :class:`App` and the :class:`AdminApp` share one key ring and a
clock the test holds; rooms live on private slots, and a room that has not
opened yet is one whose slot says so. Room settings change the way the
workers apply them: a new :class:`RoomConfig` on the live room.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from wr.admin import MAX_BYPASS_TTL_S, AdminApp
from wr.api import ACCESS_COOKIE, QUEUE_COOKIE, App
from wr.config import (
    AdminConfig,
    Config,
    HttpConfig,
    RoomConfig,
    ServerConfig,
    TokensConfig,
)
from wr.draw import Draw, Prequeue
from wr.http import Request, Response
from wr.metrics import Metrics
from wr.room import CLAIM_WINDOW, FAR_POLL_S, UNLIMITED, Room
from wr.shm import RoomSlot, SharedBlock
from wr.state import prepare_state_dir
from wr.static import StaticFiles
from wr.tokens import LEEWAY_S, KeyRing, Tokens

T0 = 1_800_000_000.0
OPENS_AT = datetime.fromtimestamp(T0 + 3600, tz=UTC).isoformat()
ADMIN_TOKEN = "a-long-admin-token-for-the-tests"
ACCESS_TTL_S = 300
SEED = bytes(range(32))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def unopened_slot() -> RoomSlot:
    """A slot as the steward leaves it for a room gathering its pre-queue."""
    slot = RoomSlot.private(CLAIM_WINDOW // 8)
    slot.counters.next_position = 1
    slot.counters.reserved = UNLIMITED
    return slot


class World:
    """Room "shop" (open, 60 a minute) and room "sale" (opens at OPENS_AT)."""

    def __init__(self, tmp_path: Path) -> None:
        state_dir = tmp_path / "state"
        prepare_state_dir(state_dir)
        static_dir = tmp_path / "static"
        static_dir.mkdir()
        (static_dir / "index.html").write_text("<!doctype html><title>wait</title>")
        configs = {
            "shop": RoomConfig(
                name="shop", rate_per_minute=60, target_url="https://shop.test/"
            ),
            "sale": RoomConfig(name="sale", rate_per_minute=60, opens_at=OPENS_AT),
        }
        self.config = Config(
            server=ServerConfig(state_dir=str(state_dir)),
            http=HttpConfig(),
            tokens=TokensConfig(queue_ttl_s=600, access_ttl_s=ACCESS_TTL_S),
            admin=AdminConfig(),
            rooms=configs,
        )
        self.rooms = {
            "shop": Room(configs["shop"]),
            "sale": Room(configs["sale"], unopened_slot()),
        }
        self.tokens = Tokens(KeyRing.generate(), self.config.tokens)
        self.clock = Clock()
        self.block = SharedBlock(CLAIM_WINDOW // 8)
        self.app = App(
            self.config,
            self.rooms,
            self.tokens,
            Metrics(self.rooms),
            StaticFiles.load(static_dir),
            clock=self.clock,
            rand=lambda: 0.5,
        )
        self.admin = AdminApp(
            self.config,
            lambda: self.rooms,
            self.tokens,
            self.block,
            ADMIN_TOKEN,
            clock=self.clock,
        )

    # The public side.

    def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: dict[bytes, bytes] | None = None,
    ) -> Response:
        return self.app.handle(Request(method, path, query, headers or {}))

    def join(self, room: str = "shop") -> Response:
        return self.request("POST", f"/api/v1/rooms/{room}/join")

    def joined(self, room: str = "shop") -> str:
        """Join and return the queue token."""
        response = self.join(room)
        assert response.status == 200
        return str(body(response)["queue_token"])

    def status(self, token: str, room: str = "shop") -> Response:
        return self.request(
            "GET", f"/api/v1/rooms/{room}/status", headers=bearer(token)
        )

    def admitted(self, room: str = "shop") -> str:
        """Join, be let in, claim; return the access token."""
        token = self.joined(room)
        self.rooms[room].admit(self.rooms[room].waiting)
        data = body(self.status(token, room))
        assert data["state"] == "admitted"
        return str(data["access_token"])

    def leave(self, access: str, room: str = "shop") -> Response:
        cookie = {b"cookie": f"{ACCESS_COOKIE}={access}".encode()}
        return self.request("POST", f"/api/v1/rooms/{room}/leave", headers=cookie)

    def bypass(self, token: str, room: str = "shop") -> Response:
        return self.request(
            "GET", f"/api/v1/rooms/{room}/bypass", query=f"token={token}"
        )

    def change(self, room: str, **settings: Any) -> None:
        """Change a live room's settings, as a worker applies an admin change."""
        live = self.rooms[room]
        live.config = dataclasses.replace(live.config, **settings)

    def inside(self, room: str = "shop") -> int:
        return self.rooms[room].active(self.clock.now, ACCESS_TTL_S)

    # The admin side.

    def call(
        self,
        method: str,
        path: str,
        data: object = None,
        token: str | None = ADMIN_TOKEN,
    ) -> Response:
        headers = {} if token is None else bearer(token)
        payload = b"" if data is None else orjson.dumps(data)
        return self.admin.handle(Request(method, path, "", headers, payload))

    def show(self, room: str) -> dict[str, object]:
        response = self.call("GET", f"/admin/v1/rooms/{room}")
        assert response.status == 200
        return body(response)

    @property
    def generation(self) -> int:
        return int(self.block.header.generation)


def bearer(token: str) -> dict[bytes, bytes]:
    return {b"authorization": b"Bearer " + token.encode()}


def body(response: Response) -> dict[str, object]:
    data = orjson.loads(response.body)
    assert isinstance(data, dict)
    return data


def header(response: Response, name: str) -> list[str]:
    return [value for key, value in response.headers if key == name]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


# Closed, full, paused, pre-queue.


def test_joining_a_closed_room_is_410(world: World) -> None:
    world.change("shop", closed=True)
    response = world.join()
    assert response.status == 410
    assert body(response)["error"] == "closed"
    assert world.rooms["shop"].next_position == 1


def test_a_person_waiting_in_a_room_that_closes_is_told_so(world: World) -> None:
    world.joined()
    token = world.joined()
    world.change("shop", closed=True)
    response = world.status(token)
    assert response.status == 200
    assert body(response) == {"state": "closed", "position": 2}


def test_a_full_queue_turns_newcomers_away_with_retry_after(world: World) -> None:
    world.change("shop", max_queue=3)
    first = world.joined()
    world.joined()
    world.joined()

    response = world.join()
    assert response.status == 503
    assert body(response)["error"] == "queue_full"
    assert header(response, "retry-after") == ["30"]
    assert world.rooms["shop"].next_position == 4

    # Someone already in line keeps their place; one let in makes room.
    again = world.request(
        "POST",
        "/api/v1/rooms/shop/join",
        headers={b"cookie": f"{QUEUE_COOKIE}={first}".encode()},
    )
    assert body(again)["position"] == 1
    world.rooms["shop"].admit(1)
    assert body(world.join())["position"] == 4


def test_a_paused_room_answers_paused_without_an_eta(world: World) -> None:
    world.joined()
    world.change("shop", paused=True)
    joined = body(world.join())
    token = str(joined["queue_token"])
    expected = {
        "state": "paused",
        "position": 2,
        "ahead": 1,
        "eta_s": None,
        "next_poll_s": FAR_POLL_S,
        "queue_token": token,
    }
    assert joined == expected
    assert body(world.status(token)) == expected


def test_before_the_opening_answers_say_prequeue_and_when_it_opens(
    world: World,
) -> None:
    joined = body(world.join("sale"))
    token = str(joined["queue_token"])
    expected = {
        "state": "prequeue",
        "position": 1,
        "opens_at": OPENS_AT,
        "next_poll_s": FAR_POLL_S,
        "queue_token": token,
    }
    assert joined == expected
    assert body(world.status(token, "sale")) == expected


@pytest.mark.parametrize("setting", ["paused", "closed"])
def test_admitted_people_stay_admitted_when_the_room_stops(
    world: World, setting: str
) -> None:
    claimed, unclaimed, waiting = world.joined(), world.joined(), world.joined()
    world.rooms["shop"].admit(2)
    assert body(world.status(claimed))["state"] == "admitted"

    world.change("shop", **{setting: True})
    for token in (claimed, unclaimed):
        response = world.status(token)
        assert body(response)["state"] == "admitted"
        assert header(response, "set-cookie")[0].startswith(f"{ACCESS_COOKIE}=")
    assert body(world.status(waiting))["state"] == setting


# Leave.


def test_leave_with_an_access_token_frees_the_place_and_clears_the_cookie(
    world: World,
) -> None:
    access = world.admitted()
    assert world.inside() == 1
    response = world.leave(access)
    assert response.status == 204
    assert response.body == b""
    (cookie,) = header(response, "set-cookie")
    assert cookie.startswith(f"{ACCESS_COOKIE}=;")
    assert "Max-Age=0" in cookie
    assert world.inside() == 0


def test_leave_with_a_bearer_access_token_works_too(world: World) -> None:
    access = world.admitted()
    path = "/api/v1/rooms/shop/leave"
    assert world.request("POST", path, headers=bearer(access)).status == 204
    assert world.inside() == 0


def test_leave_without_an_access_token_is_401(world: World) -> None:
    queue = world.joined()
    world.admitted()
    response = world.request("POST", "/api/v1/rooms/shop/leave")
    assert response.status == 401
    assert body(response)["error"] == "no_token"
    assert body(world.leave(queue))["error"] == "wrong_type"
    assert world.inside() == 1


# Bypass.


def test_a_bypass_token_goes_straight_in(world: World) -> None:
    world.joined()
    token = world.tokens.issue_bypass("shop", 600, world.clock.now)
    response = world.bypass(token)
    assert response.status == 302
    assert header(response, "location") == ["https://shop.test/"]
    (cookie,) = header(response, "set-cookie")
    assert cookie.startswith(f"{ACCESS_COOKIE}=")
    access = cookie.split(";", 1)[0].split("=", 1)[1]
    claims = world.tokens.check(access, "shop", "access", world.clock.now)
    assert claims.exp - claims.iat == ACCESS_TTL_S
    assert world.inside() == 1
    # Nobody in line lost a place.
    assert world.rooms["shop"].serving == 0


@pytest.mark.parametrize(
    ("issued_for", "later_s", "reason"),
    [
        ("shop", 600 + LEEWAY_S + 1, "expired"),
        ("sale", 0, "wrong_room"),
    ],
)
def test_an_expired_or_foreign_bypass_token_is_refused(
    world: World, issued_for: str, later_s: float, reason: str
) -> None:
    token = world.tokens.issue_bypass(issued_for, 600, world.clock.now)
    world.clock.now += later_s
    response = world.bypass(token)
    assert response.status == 401
    assert body(response)["error"] == reason
    assert header(response, "set-cookie") == []
    assert world.inside() == 0


def test_a_bypass_holder_can_leave_a_room_that_opened_with_a_draw(
    world: World,
) -> None:
    world.joined("sale")
    world.rooms["sale"].open(Prequeue(Draw(SEED, 1)))
    token = world.tokens.issue_bypass("sale", 600, world.clock.now)
    cookie = header(world.bypass(token, "sale"), "set-cookie")[0]
    access = cookie.split(";", 1)[0].split("=", 1)[1]
    assert world.leave(access, "sale").status == 204
    assert world.inside("sale") == 0


def test_every_bypass_holder_who_leaves_frees_a_place(world: World) -> None:
    accesses = []
    for _ in range(2):
        token = world.tokens.issue_bypass("shop", 600, world.clock.now)
        cookie = header(world.bypass(token), "set-cookie")[0]
        accesses.append(cookie.split(";", 1)[0].split("=", 1)[1])
    assert world.inside() == 2
    for access in accesses:
        assert world.leave(access).status == 204
    assert world.inside() == 0

    # Leaving again with the same token frees nothing more.
    world.bypass(world.tokens.issue_bypass("shop", 600, world.clock.now))
    assert world.leave(accesses[0]).status == 204
    assert world.inside() == 1


def test_an_access_token_from_before_bypass_numbers_leaves_harmlessly(
    world: World,
) -> None:
    world.joined("sale")
    world.rooms["sale"].open(Prequeue(Draw(SEED, 1)))
    # Bypass access tokens once carried pos 0.
    access = world.tokens.issue_access("sale", "someone", 0, 300, world.clock.now)
    assert world.leave(access, "sale").status == 204
    assert world.inside("sale") == 0


def test_leaving_with_a_reissued_access_token_frees_the_claimed_place(
    world: World,
) -> None:
    token = world.joined()
    world.rooms["shop"].admit(1)
    assert body(world.status(token))["state"] == "admitted"
    world.clock.now += 30
    access = str(body(world.status(token))["access_token"])
    assert world.leave(access).status == 204
    assert world.inside() == 0

    # Past the end of the first claim's session, before the re-issued one's.
    world.clock.now += ACCESS_TTL_S - 10
    assert world.inside() == 0


# The room as the public sees it.


def test_room_info_shows_the_state_and_after_the_opening_the_seed(
    world: World,
) -> None:
    before = body(world.request("GET", "/api/v1/rooms/sale"))
    assert before["state"] == "prequeue"
    assert before["opens_at"] == OPENS_AT
    assert before["draw_seed"] is None

    for _ in range(5):
        world.joined("sale")
    world.rooms["sale"].open(Prequeue(Draw(SEED, 5)))
    after = body(world.request("GET", "/api/v1/rooms/sale"))
    assert after["state"] == "waiting"
    assert after["draw_seed"] == SEED.hex()
    assert after["prequeue_size"] == 5
    assert after["waiting"] == 5

    world.change("shop", closed=True)
    assert body(world.request("GET", "/api/v1/rooms/shop"))["state"] == "closed"


# The admin API.


ADMIN_CALLS = [
    ("GET", "/admin/v1/rooms", None),
    ("GET", "/admin/v1/rooms/shop", None),
    ("PATCH", "/admin/v1/rooms/shop", {"paused": True}),
    ("PUT", "/admin/v1/rooms/flash", {"rate_per_minute": 10}),
    ("DELETE", "/admin/v1/rooms/shop", None),
    ("POST", "/admin/v1/rooms/shop/bypass-tokens", {"ttl_s": 600}),
]


@pytest.mark.parametrize("token", [None, "", "wrong", ADMIN_TOKEN[:-1], "x" * 200])
@pytest.mark.parametrize(("method", "path", "data"), ADMIN_CALLS)
def test_admin_calls_without_the_token_are_401_and_change_nothing(
    world: World, token: str | None, method: str, path: str, data: object
) -> None:
    response = world.call(method, path, data, token=token)
    assert response.status == 401
    assert body(response)["error"] == "unauthorised"
    assert header(response, "www-authenticate") == ['Bearer realm="wr-admin"']
    assert world.generation == 0
    assert not world.admin.store.path.exists()
    assert world.block.find("flash") is None


def test_patch_changes_the_room_and_announces_it(world: World) -> None:
    response = world.call("PATCH", "/admin/v1/rooms/shop", {"paused": True})
    assert response.status == 200
    assert body(response)["paused"] is True
    assert world.generation == 1

    shown = world.show("shop")
    assert shown["paused"] is True
    assert shown["rate_per_minute"] == 60
    assert shown["target_url"] == "https://shop.test/"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"rate_per_minute": -1}, "rate_per_minute"),
        ({"paused": "yes"}, "paused"),
        ({"nope": 1}, "nope"),
        ({"paused": True, "max_active": 0}, "max_active"),
    ],
)
def test_a_bad_patch_names_the_field_and_changes_nothing(
    world: World, change: dict[str, object], field: str
) -> None:
    before = world.show("shop")
    response = world.call("PATCH", "/admin/v1/rooms/shop", change)
    assert response.status == 400
    assert str(body(response)["detail"]).startswith(f"{field}:")
    assert world.show("shop") == before
    assert world.generation == 0


def test_put_creates_a_room_with_defaults_for_omitted_keys(world: World) -> None:
    response = world.call("PUT", "/admin/v1/rooms/flash", {"rate_per_minute": 120})
    assert response.status == 201
    # As JSON: tuples (allowed_targets) become lists.
    room = RoomConfig(name="flash", rate_per_minute=120)
    defaults = orjson.loads(orjson.dumps(dataclasses.asdict(room)))
    assert body(response) == defaults
    assert world.show("flash") == defaults
    assert world.generation == 1
    # The slot exists before the announcement, for workers to find.
    assert world.block.find("flash") is not None
    listed = body(world.call("GET", "/admin/v1/rooms"))["rooms"]
    assert isinstance(listed, list)
    assert [room["name"] for room in listed] == ["shop", "sale", "flash"]


def test_delete_removes_a_room(world: World) -> None:
    assert world.call("DELETE", "/admin/v1/rooms/shop").status == 204
    assert world.generation == 1
    assert world.call("GET", "/admin/v1/rooms/shop").status == 404
    listed = body(world.call("GET", "/admin/v1/rooms"))["rooms"]
    assert isinstance(listed, list)
    assert [room["name"] for room in listed] == ["sale"]
    assert world.call("DELETE", "/admin/v1/rooms/shop").status == 404


def test_a_minted_bypass_token_opens_the_public_door(world: World) -> None:
    path = "/admin/v1/rooms/shop/bypass-tokens"
    response = world.call("POST", path, {"ttl_s": 600})
    assert response.status == 201
    minted = body(response)
    assert minted["expires"] == int(T0) + 600

    public_path, _, query = str(minted["path"]).partition("?")
    assert query == f"token={minted['token']}"
    door = world.request("GET", public_path, query=query)
    assert door.status == 302
    assert header(door, "location") == ["https://shop.test/"]


@pytest.mark.parametrize(
    "ttl_s", [59, MAX_BYPASS_TTL_S + 1, 0, -600, "600", 600.0, True, None]
)
def test_a_bypass_ttl_out_of_range_is_400(world: World, ttl_s: object) -> None:
    path = "/admin/v1/rooms/shop/bypass-tokens"
    response = world.call("POST", path, {"ttl_s": ttl_s})
    assert response.status == 400
    assert str(body(response)["detail"]).startswith("ttl_s:")
