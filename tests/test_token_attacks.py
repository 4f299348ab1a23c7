"""Tokens under attack, through the API: each refused with its reason, counted.

Every forged, stale or misused token is sent where a person would send it
(``status`` for queue tokens, ``verify`` for access tokens, the invite path
for bypass tokens). Each must get a 401 whose ``error`` is the reason, and
raise ``wr_token_rejections{kind, reason}`` by one in the exposition, and
nothing else may change: no position handed out, no admission counted.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
)

from tests.test_api import T0, World, body
from wr.hs256 import MAX_TOKEN_BYTES, b64url
from wr.http import Response
from wr.tokens import REASONS

ROOM = "default"
SUB = "s" * 22


@pytest.fixture
def world(tmp_path: Path) -> World:
    (tmp_path / "index.html").write_text("<!doctype html><title>wait</title>")
    (tmp_path / "inside.html").write_text("<!doctype html><title>in</title>")
    return World(tmp_path)


def rejections(world: World, kind: str, reason: str) -> float:
    """The value of wr_token_rejections_total{kind, reason} in the exposition."""
    prefix = f'wr_token_rejections_total{{kind="{kind}",reason="{reason}"}} '
    for line in world.metrics.exposition().decode().splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def kid(world: World) -> str:
    return world.tokens.ring.active


def secret(world: World) -> bytes:
    return world.tokens.ring.secrets[kid(world)]


def claims(typ: str, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sub": SUB,
        "room": ROOM,
        "pos": 1,
        "iat": int(T0),
        "exp": int(T0) + 60,
        "typ": typ,
    }
    base.update(changes)
    return base


def hand_signed(header: dict[str, object], payload: bytes, key: bytes) -> str:
    """A JWT put together by hand, HMAC-SHA256 signed with ``key``."""
    head = b64url(orjson.dumps(header))
    signing_input = head + b"." + b64url(payload)
    signature = hmac.digest(key, signing_input, "sha256")
    return (signing_input + b"." + b64url(signature)).decode()


def ours(world: World) -> dict[str, object]:
    return {"alg": "HS256", "kid": kid(world), "typ": "JWT"}


def present(world: World, kind: str, token: str) -> Response:
    """Send ``token`` where a ``kind`` token is used."""
    auth = {b"authorization": b"Bearer " + token.encode()}
    if kind == "queue":
        return world.request("GET", f"/api/v1/rooms/{ROOM}/status", headers=auth)
    if kind == "access":
        return world.request(
            "GET", "/api/v1/verify", query=f"room={ROOM}", headers=auth
        )
    return world.request("GET", f"/api/v1/rooms/{ROOM}/bypass", query=f"token={token}")


def ed25519_public_pem() -> bytes:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def valid(world: World, typ: str) -> str:
    if typ == "queue":
        return world.tokens.issue_queue(ROOM, SUB, 1, 5, T0)
    if typ == "access":
        return world.tokens.issue_access(ROOM, SUB, 1, 60, T0)
    return world.tokens.issue_bypass(ROOM, 60, T0)


def flip(text: str, index: int) -> str:
    swapped = "A" if text[index] != "A" else "B"
    return text[:index] + swapped + text[index + 1 :]


Forge = Callable[[World], str]

ATTACKS: dict[str, tuple[str, str, Forge]] = {
    "alg-none": (
        "access",
        "bad_algorithm",
        lambda w: jwt.encode(claims("access"), "", algorithm="none"),
    ),
    "alg-none-with-our-kid": (
        "access",
        "bad_algorithm",
        lambda w: (
            b64url(orjson.dumps({"alg": "none", "kid": kid(w), "typ": "JWT"})).decode()
            + "."
            + b64url(orjson.dumps(claims("access"))).decode()
            + "."
        ),
    ),
    # Algorithm confusion: the attacker signs HS256 with a public key it
    # knows (EdDSA's), hoping the server uses it as the HMAC secret.
    "hs256-signed-with-eddsa-public-key": (
        "access",
        "bad_signature",
        lambda w: hand_signed(
            ours(w), orjson.dumps(claims("access")), ed25519_public_pem()
        ),
    ),
    "hs256-with-eddsa-kid": (
        "access",
        "unknown_kid",
        lambda w: hand_signed(
            {"alg": "HS256", "kid": "ed25519-1", "typ": "JWT"},
            orjson.dumps(claims("access")),
            ed25519_public_pem(),
        ),
    ),
    "eddsa-signed-by-a-stranger": (
        "access",
        "bad_algorithm",
        lambda w: jwt.encode(
            claims("access"),
            Ed25519PrivateKey.generate(),
            algorithm="EdDSA",
            headers={"kid": kid(w)},
        ),
    ),
    "unknown-kid": (
        "queue",
        "unknown_kid",
        lambda w: jwt.encode(
            claims("queue"), secret(w), algorithm="HS256", headers={"kid": "nope"}
        ),
    ),
    "missing-kid": (
        "queue",
        "unknown_kid",
        lambda w: jwt.encode(claims("queue"), secret(w), algorithm="HS256"),
    ),
    "expired": (
        "access",
        "expired",
        lambda w: w.tokens.issue_access(ROOM, SUB, 1, 60, T0 - 3600),
    ),
    "not-yet-valid": (
        "queue",
        "not_yet_valid",
        lambda w: w.tokens.issue_queue(ROOM, SUB, 1, 5, T0 + 3600),
    ),
    "other-room": (
        "access",
        "wrong_room",
        lambda w: w.tokens.issue_access("other", SUB, 1, 60, T0),
    ),
    "queue-token-as-access-token": (
        "access",
        "wrong_type",
        lambda w: valid(w, "queue"),
    ),
    "access-token-as-queue-token": (
        "queue",
        "wrong_type",
        lambda w: valid(w, "access"),
    ),
    "bypass-token-as-access-token": (
        "access",
        "wrong_type",
        lambda w: valid(w, "bypass"),
    ),
    "access-token-as-bypass-token": (
        "bypass",
        "wrong_type",
        lambda w: valid(w, "access"),
    ),
    "tampered-payload": (
        "queue",
        "bad_signature",
        lambda w: (
            valid(w, "queue").split(".")[0]
            + "."
            + b64url(orjson.dumps(claims("queue", pos=0))).decode()
            + "."
            + valid(w, "queue").split(".")[2]
        ),
    ),
    "tampered-signature": (
        "access",
        "bad_signature",
        lambda w: flip(valid(w, "access"), -3),
    ),
    "truncated-signature": (
        "access",
        "bad_signature",
        lambda w: valid(w, "access")[:-4],
    ),
    "truncated-to-two-segments": (
        "access",
        "malformed",
        lambda w: valid(w, "access").rsplit(".", 1)[0],
    ),
    "truncated-inside-the-header": (
        "queue",
        "malformed",
        lambda w: valid(w, "queue")[:10],
    ),
    # Unsigned garbage is caught by the signature, before any decoding.
    "bad-base64-payload-unsigned": (
        "queue",
        "bad_signature",
        lambda w: hand_signed(ours(w), b"", secret(w)).replace("..", ".!!!*.", 1),
    ),
    "signed-payload-not-base64": (
        "queue",
        "malformed",
        lambda w: _signed_raw_payload(w, b"%%%%"),
    ),
    "bad-base64-header": ("access", "malformed", lambda w: "!!!." + valid(w, "access")),
    "huge-token": (
        "access",
        "malformed",
        lambda w: valid(w, "access") + "A" * (MAX_TOKEN_BYTES * 8),
    ),
    "huge-claims-signed-by-us": (
        "queue",
        "malformed",
        lambda w: hand_signed(
            ours(w), orjson.dumps(claims("queue", sub="x" * 4096)), secret(w)
        ),
    ),
    "not-ascii": ("access", "malformed", lambda w: valid(w, "access") + "é"),
}


def _signed_raw_payload(world: World, payload_segment: bytes) -> str:
    head = b64url(orjson.dumps(ours(world)))
    signing_input = head + b"." + payload_segment
    signature = b64url(hmac.digest(secret(world), signing_input, "sha256"))
    return (signing_input + b"." + signature).decode()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_refused_with_its_reason_and_counted(
    world: World, attack: str
) -> None:
    kind, reason, forge = ATTACKS[attack]
    token = forge(world)
    room = world.rooms[ROOM]
    before = rejections(world, kind, reason)
    next_position, admitted = room.next_position, room.claimed

    response = present(world, kind, token)

    assert response.status == 401
    assert body(response)["error"] == reason
    assert token not in response.body.decode()
    assert rejections(world, kind, reason) == before + 1
    assert (room.next_position, room.claimed) == (next_position, admitted)


def test_every_reason_but_reset_is_among_the_attacks() -> None:
    assert {reason for _, reason, _ in ATTACKS.values()} == set(REASONS) - {"reset"}


def test_base64_that_python_would_forgive_is_not_forgiven(world: World) -> None:
    # Standard-alphabet characters where URL-safe ones belong.
    token = valid(world, "access")
    mangled = token.replace("-", "+").replace("_", "/")
    if mangled == token:
        mangled = token[:-1] + "+"
    response = present(world, "access", mangled)
    assert response.status == 401
    assert body(response)["error"] in ("bad_signature", "malformed")


# Reset: a fresh line, without per-person state.


def test_tokens_from_before_a_reset_are_refused_and_the_line_starts_afresh(
    world: World,
) -> None:
    room = world.rooms[ROOM]
    old = [world.join()["queue_token"] for _ in range(5)]
    world.admit(ROOM, 1.0)  # one admitted at 60/min
    admitted = world.status(str(old[0]))
    access = body(admitted)["access_token"]
    assert isinstance(access, str)

    world.clock.now += 0.5
    reset_at, first = room.reset(world.clock.now)
    assert (reset_at, first) == (int(world.clock.now) + 1, 6)
    assert room.pass_over_reset()

    for token in old:
        refused = world.status(str(token))
        assert refused.status == 401
        assert body(refused)["error"] == "reset"
    assert body(present(world, "access", access))["error"] == "reset"
    assert rejections(world, "queue", "reset") == 5
    assert rejections(world, "access", "reset") == 1
    # A re-join with an old token is a new place, never the old one back.
    rejoined = world.request(
        "POST",
        f"/api/v1/rooms/{ROOM}/join",
        headers={b"authorization": b"Bearer " + str(old[1]).encode()},
    )
    assert body(rejoined)["position"] == 6

    # The new line: positions go on (none handed out twice), nobody is
    # ahead of its first person, and its tokens work within the same second.
    fresh = world.join()
    assert fresh["position"] == 7
    assert fresh["ahead"] == 1
    assert world.status(str(fresh["queue_token"])).status == 200
    assert room.next_position == 8


def test_a_reset_passes_over_the_old_line_without_spending_admissions(
    world: World,
) -> None:
    room = world.rooms[ROOM]
    for _ in range(100):
        world.join()
    room.reset(world.clock.now)
    room.pass_over_reset()
    assert not room.pass_over_reset()  # nothing more to do the second time
    assert room.waiting == 0

    newcomer = world.join()
    assert newcomer["ahead"] == 0
    world.admit(ROOM, 1.0)
    admitted = world.status(str(newcomer["queue_token"]))
    assert body(admitted)["state"] == "admitted"
    assert room.admitted == 1


def test_a_bypass_link_minted_before_a_reset_is_void(world: World) -> None:
    token = valid(world, "bypass")
    world.rooms[ROOM].reset(T0)
    response = present(world, "bypass", token)
    assert body(response)["error"] == "reset"
    assert rejections(world, "bypass", "reset") == 1


def test_a_place_taken_between_two_resets_in_one_second_is_void(
    world: World,
) -> None:
    room = world.rooms[ROOM]
    room.reset(world.clock.now)
    between = world.join()
    room.reset(world.clock.now)
    room.pass_over_reset()

    refused = world.status(str(between["queue_token"]))
    assert body(refused)["error"] == "reset"
    assert world.join()["ahead"] == 0


def test_an_admission_between_two_resets_in_one_second_is_void(
    world: World,
) -> None:
    room = world.rooms[ROOM]
    room.reset(world.clock.now)
    between = world.join()
    world.admit(ROOM, 1.0)
    access = body(world.status(str(between["queue_token"])))["access_token"]
    room.reset(world.clock.now)

    assert body(present(world, "access", str(access)))["error"] == "reset"


def test_a_bypass_admission_after_a_reset_is_let_in(world: World) -> None:
    world.rooms[ROOM].reset(T0 - 10)
    world.rooms[ROOM].pass_over_reset()
    response = present(world, "bypass", valid(world, "bypass"))
    assert response.status == 302
    access = next(v for k, v in response.headers if k == "set-cookie")
    token = access.split(";", 1)[0].split("=", 1)[1]
    assert present(world, "access", token).status == 204
