"""The server's side of the gateway: JWKS, return URLs, verify's 401, config.

The App runs as a function of requests with a held clock (tests/test_api.py);
the key ring, the CLI and start-up checks are exercised without a server.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from tests.test_api import World, body, header
from wr.admin import room_document
from wr.api import App
from wr.cli import main
from wr.config import Config, ConfigError, RoomConfig, load_config, room_from_table
from wr.http import Response
from wr.metrics import Metrics
from wr.static import StaticFiles
from wr.supervisor import StartError, Supervisor
from wr.tokens import KeyRing, KeyRingError, Tokens


@pytest.fixture
def world(tmp_path: Path) -> World:
    (tmp_path / "index.html").write_text("<!doctype html><title>wait</title>")
    return World(tmp_path)


def eddsa(world: World, static_dir: Path) -> World:
    """The same world with EdDSA tokens."""
    config = dataclasses.replace(
        world.config,
        tokens=dataclasses.replace(world.config.tokens, algorithm="EdDSA"),
    )
    world.config = config
    world.tokens = Tokens(KeyRing.generate("EdDSA"), config.tokens)
    world.app = App(
        config,
        world.rooms,
        world.tokens,
        Metrics(world.rooms),
        StaticFiles.load(static_dir),
        clock=world.clock,
        rand=lambda: 0.5,
    )
    return world


def with_room(world: World, room: RoomConfig) -> World:
    world.rooms[room.name].config = room
    return world


def admitted(world: World, room: str = "default", query: str = "") -> Response:
    token = str(world.join(room)["queue_token"])
    world.admit(room, 1.0)
    return world.request(
        "GET",
        f"/api/v1/rooms/{room}/status",
        query=query,
        headers={b"authorization": b"Bearer " + token.encode()},
    )


# /.well-known/jwks.json


def test_jwks_with_hs256_is_an_empty_set(world: World) -> None:
    response = world.request("GET", "/.well-known/jwks.json")

    assert response.status == 200
    assert body(response) == {"keys": []}
    assert response.content_type == "application/jwk-set+json"


def test_jwks_with_eddsa_lists_the_public_key_and_is_cacheable(
    world: World, tmp_path: Path
) -> None:
    world = eddsa(world, tmp_path)
    response = world.request("GET", "/.well-known/jwks.json")

    keys = body(response)["keys"]
    assert isinstance(keys, list)
    assert [(key["kid"], key["kty"], key["crv"]) for key in keys] == [
        (world.tokens.ring.active, "OKP", "Ed25519")
    ]
    assert header(response, "cache-control") == ["public, max-age=300"]
    assert b'"d"' not in response.body


def test_jwks_cache_lifetime_is_configurable(world: World, tmp_path: Path) -> None:
    tokens = dataclasses.replace(world.config.tokens, jwks_max_age_s=30)
    world.config = dataclasses.replace(world.config, tokens=tokens)
    world.app = App(
        world.config,
        world.rooms,
        world.tokens,
        world.metrics,
        StaticFiles.load(tmp_path),
    )
    response = world.request("GET", "/.well-known/jwks.json")

    assert header(response, "cache-control") == ["public, max-age=30"]


def test_jwks_refuses_other_methods(world: World) -> None:
    assert world.request("POST", "/.well-known/jwks.json").status == 405


def test_the_whole_flow_works_with_eddsa(world: World, tmp_path: Path) -> None:
    world = eddsa(world, tmp_path)
    access = str(body(admitted(world))["access_token"])

    response = world.request(
        "GET",
        "/api/v1/verify",
        query="room=default",
        headers={b"cookie": f"wr_access={access}".encode()},
    )
    assert response.status == 204


# The return URL on status.


def test_admitted_person_goes_back_to_the_page_they_asked_for(world: World) -> None:
    response = admitted(world, query="return=" + quote("/shop/item?id=7", safe=""))

    assert body(response)["redirect"] == "/shop/item?id=7"


def test_without_return_the_target_url_is_used(world: World) -> None:
    assert body(admitted(world))["redirect"] == "/inside"


@pytest.mark.parametrize(
    "raw",
    [
        "%2F%2Fevil.example",
        "//evil.example",
        "https%3A%2F%2Fevil.example%2F",
        "%2F%5Cevil.example",
        "javascript%3Aalert(1)",
        "%2F%0D%0ALocation%3A%20https%3A%2F%2Fevil.example",
        "%2F%09%2Fevil.example",
    ],
)
def test_hostile_return_values_fall_back_to_the_target(world: World, raw: str) -> None:
    response = admitted(world, query=f"return={raw}")

    assert response.status == 200
    assert body(response)["redirect"] == "/inside"


def test_an_absolute_target_keeps_people_on_its_origin(world: World) -> None:
    # Room "other" has target_url https://shop.test/.
    path = admitted(world, "other", "return=%2Fcart")
    same = admitted(world, "other", "return=" + quote("https://shop.test/a", safe=""))
    evil = admitted(world, "other", "return=" + quote("https://evil.test/", safe=""))

    assert body(path)["redirect"] == "https://shop.test/cart"
    assert body(same)["redirect"] == "https://shop.test/a"
    assert body(evil)["redirect"] == "https://shop.test/"


def test_allowed_targets_let_further_origins_through(world: World) -> None:
    room = RoomConfig(
        name="other",
        rate_per_minute=60,
        target_url="https://shop.test/",
        allowed_targets=("https://m.shop.test",),
    )
    world = with_room(world, room)
    mobile = "https://m.shop.test/basket?x=1"

    response = admitted(world, "other", "return=" + quote(mobile, safe=""))
    assert body(response)["redirect"] == mobile


def test_return_is_read_only_once_admitted(world: World) -> None:
    token = str(world.join()["queue_token"])
    response = world.request(
        "GET",
        "/api/v1/rooms/default/status",
        query="return=%2Fcart",
        headers={b"authorization": b"Bearer " + token.encode()},
    )
    assert body(response)["state"] == "waiting"
    assert "redirect" not in body(response)


# verify's 401 for nginx.


def test_verify_401_echoes_the_original_uri_encoded(world: World) -> None:
    response = world.request(
        "GET",
        "/api/v1/verify",
        query="room=default",
        headers={b"x-original-uri": b"/shop/item?id=7&x=1"},
    )

    assert response.status == 401
    assert header(response, "x-wr-return") == ["%2Fshop%2Fitem%3Fid%3D7%26x%3D1"]


def test_verify_401_encodes_hostile_bytes_so_no_header_can_be_injected(
    world: World,
) -> None:
    response = world.request(
        "GET",
        "/api/v1/verify",
        query="room=default",
        headers={b"x-original-uri": b"/a\r\nset-cookie: x=y \xff"},
    )

    (value,) = header(response, "x-wr-return")
    assert value == "%2Fa%0D%0Aset-cookie%3A%20x%3Dy%20%FF"


def test_verify_401_leaves_out_an_overlong_original_uri(world: World) -> None:
    response = world.request(
        "GET",
        "/api/v1/verify",
        query="room=default",
        headers={b"x-original-uri": b"/" + b"a" * 5000},
    )

    assert response.status == 401
    assert header(response, "x-wr-return") == []


def test_verify_204_carries_no_return_header(world: World) -> None:
    access = str(body(admitted(world))["access_token"])
    response = world.request(
        "GET",
        "/api/v1/verify",
        query="room=default",
        headers={
            b"cookie": f"wr_access={access}".encode(),
            b"x-original-uri": b"/shop",
        },
    )

    assert response.status == 204
    assert header(response, "x-wr-return") == []


# Config and the admin API's room resource.


def test_allowed_targets_are_read_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "wr.toml"
    path.write_text(
        '[rooms.sale]\ntarget_url = "https://shop.test/"\n'
        'allowed_targets = ["https://m.shop.test", "http://127.0.0.1:8000/"]\n'
    )
    room = load_config(path, env={}).rooms["sale"]

    assert room.allowed_targets == ("https://m.shop.test", "http://127.0.0.1:8000/")


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ('"https://m.shop.test"', "rooms.sale.allowed_targets"),
        ("[1]", "rooms.sale.allowed_targets[0]"),
        ('["https://m.shop.test/path"]', "rooms.sale.allowed_targets[0]"),
        ('["ok.test"]', "rooms.sale.allowed_targets[0]"),
        ('["https://a.test", "javascript:x"]', "rooms.sale.allowed_targets[1]"),
        ('["https://user@a.test"]', "rooms.sale.allowed_targets[0]"),
    ],
)
def test_bad_allowed_targets_name_the_key(tmp_path: Path, value: str, key: str) -> None:
    path = tmp_path / "wr.toml"
    path.write_text(f"[rooms.sale]\nallowed_targets = {value}\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).startswith(f"{key}: ")
    assert "\n" not in str(caught.value)


def test_allowed_targets_are_part_of_the_admin_room_resource() -> None:
    room = room_from_table("sale", {"allowed_targets": ["https://m.shop.test"]})
    document = room_document(room)

    assert document["allowed_targets"] == ("https://m.shop.test",)
    assert orjson.loads(orjson.dumps(document))["allowed_targets"] == [
        "https://m.shop.test"
    ]
    with pytest.raises(ConfigError, match=r"^allowed_targets\[0\]: "):
        room_from_table("sale", {"allowed_targets": ["//evil"]})


def test_eddsa_is_a_valid_algorithm(tmp_path: Path) -> None:
    path = tmp_path / "wr.toml"
    path.write_text('[tokens]\nalgorithm = "EdDSA"\n')

    assert load_config(path, env={}).tokens.algorithm == "EdDSA"


def test_jwks_max_age_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "wr.toml"
    path.write_text("[tokens]\njwks_max_age_s = -1\n")

    with pytest.raises(ConfigError, match=r"^tokens.jwks_max_age_s: "):
        load_config(path, env={})


# The key ring through the CLI.


def write_config(tmp_path: Path, algorithm: str) -> Path:
    path = tmp_path / "wr.toml"
    path.write_text(f'[tokens]\nalgorithm = "{algorithm}"\n')
    return path


def test_keygen_creates_an_eddsa_ring_when_configured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "EdDSA")
    state = tmp_path / "state"

    assert main(["keygen", "--config", str(config), "--state-dir", str(state)]) == 0
    ring = KeyRing.load(state)
    assert ring.algorithm_of(ring.active) == "EdDSA"
    assert "(EdDSA)" in capsys.readouterr().out


def test_keygen_rotate_switches_the_algorithm_and_keeps_the_old_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert main(["keygen", "--state-dir", str(state)]) == 0
    old = KeyRing.load(state).active
    config = write_config(tmp_path, "EdDSA")

    assert main(["keygen", "--config", str(config), "--state-dir", str(state)]) == 2
    assert "wr keygen --rotate" in capsys.readouterr().err
    args = ["keygen", "--rotate", "--config", str(config), "--state-dir", str(state)]
    assert main(args) == 0

    ring = KeyRing.load(state)
    assert ring.algorithm_of(ring.active) == "EdDSA"
    assert ring.algorithm_of(old) == "HS256"
    assert old in ring.retired


def test_token_decode_checks_an_eddsa_signature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "EdDSA")
    state = tmp_path / "state"
    assert main(["keygen", "--config", str(config), "--state-dir", str(state)]) == 0
    tokens = Tokens(KeyRing.load(state), load_config(config, env={}).tokens)
    token = tokens.issue_access("default", "s" * 22, 1, 600, 1_700_000_000)
    capsys.readouterr()

    args = ["token", "decode", token, "--config", str(config), "--state-dir"]
    assert main([*args, str(state)]) == 0
    assert "signature: valid" in capsys.readouterr().out
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert main(["token", "decode", forged, "--state-dir", str(state)]) == 1


def test_a_running_config_and_a_ring_of_another_algorithm_do_not_start(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    KeyRing.generate("HS256").save(state)
    config = write_config(tmp_path, "EdDSA")

    def load() -> Config:
        return load_config(config, env={}, overrides={"state_dir": str(state)})

    with pytest.raises((StartError, KeyRingError), match="wr keygen --rotate"):
        Supervisor(load)
