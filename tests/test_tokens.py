"""Issuing and checking queue and access tokens, and the key ring on disk."""

from __future__ import annotations

import base64
import hmac
import os
import stat
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from wr.config import TokensConfig
from wr.hs256 import b64url
from wr.tokens import (
    KEYS_FILE,
    LEEWAY_S,
    RANDOM_POOL_BYTES,
    REASONS,
    SECRET_BYTES,
    Claims,
    KeyRing,
    KeyRingError,
    TokenError,
    Tokens,
    new_session_id,
    write_private_file,
)

NOW = 1_700_000_000
KID = "kid-1"
# 64 bytes, so pyjwt signs HS512 with it without a short-key warning.
SECRET = bytes(range(64))
CONFIG = TokensConfig(queue_ttl_s=900, access_ttl_s=600)
ROOM = "sale"
SUB = "s" * 22


@pytest.fixture
def tokens() -> Tokens:
    return Tokens(KeyRing(active=KID, secrets={KID: SECRET}), CONFIG)


def valid_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": SUB,
        "room": ROOM,
        "pos": 7,
        "iat": NOW,
        "exp": NOW + 600,
        "typ": "access",
    }
    claims.update(changes)
    return claims


def pyjwt_token(claims: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(
        claims, SECRET, algorithm="HS256", headers={"kid": KID, **headers}
    )


def signed(header: dict[str, Any], payload: bytes) -> str:
    """A token with any header and payload bytes, signed with our secret."""
    signing_input = b64url(orjson.dumps(header)) + b"." + b64url(payload)
    signature = hmac.digest(SECRET, signing_input, "sha256")
    return (signing_input + b"." + b64url(signature)).decode()


OUR_HEADER = {"alg": "HS256", "kid": KID, "typ": "JWT"}


def reason(tokens: Tokens, token: str, typ: str = "access", now: float = NOW) -> str:
    with pytest.raises(TokenError) as caught:
        tokens.check(token, ROOM, typ, now)
    assert caught.value.reason in REASONS
    return caught.value.reason


# Round trips


def test_queue_token_round_trip(tokens: Tokens) -> None:
    token = tokens.issue_queue(ROOM, SUB, pos=42, eta=120, now=NOW + 0.75)

    claims = tokens.check(token, ROOM, "queue", NOW)

    assert claims == Claims(
        sub=SUB,
        room=ROOM,
        pos=42,
        iat=NOW,
        exp=NOW + CONFIG.queue_ttl_s,
        typ="queue",
        eta=120,
    )


def test_queue_token_without_eta_has_no_eta_claim(tokens: Tokens) -> None:
    token = tokens.issue_queue(ROOM, SUB, pos=3, eta=None, now=NOW)

    claims = tokens.check(token, ROOM, "queue", NOW)
    raw = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})

    assert claims.eta is None
    assert "eta" not in raw
    assert claims.exp == claims.iat + CONFIG.queue_ttl_s


def test_queue_token_with_eta_zero_keeps_it(tokens: Tokens) -> None:
    token = tokens.issue_queue(ROOM, SUB, pos=3, eta=0, now=NOW)

    raw = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})

    assert raw["eta"] == 0
    assert tokens.check(token, ROOM, "queue", NOW).eta == 0


def test_access_token_round_trip(tokens: Tokens) -> None:
    token = tokens.issue_access(ROOM, SUB, pos=9, ttl_s=300, now=NOW + 0.5)

    claims = tokens.check(token, ROOM, "access", NOW)

    assert claims == Claims(
        sub=SUB, room=ROOM, pos=9, iat=NOW, exp=NOW + 300, typ="access"
    )
    raw = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert "eta" not in raw
    assert jwt.get_unverified_header(token)["kid"] == KID


def test_issued_tokens_carry_the_active_kid() -> None:
    ring = KeyRing(active="new", secrets={"old": SECRET, "new": SECRET[::-1]})
    token = Tokens(ring, CONFIG).issue_access(ROOM, SUB, 1, 60, NOW)

    assert jwt.get_unverified_header(token)["kid"] == "new"
    assert (
        jwt.decode(
            token,
            SECRET[::-1],
            algorithms=["HS256"],
            options={
                "verify_exp": False,
            },
        )["typ"]
        == "access"
    )


def test_token_signed_with_a_retired_key_still_checks() -> None:
    old_ring = KeyRing(active="old", secrets={"old": SECRET})
    token = Tokens(old_ring, CONFIG).issue_access(ROOM, SUB, 1, 60, NOW)
    ring = KeyRing(active="new", secrets={"old": SECRET, "new": SECRET[::-1]})

    assert Tokens(ring, CONFIG).check(token, ROOM, "access", NOW).pos == 1


def test_new_session_ids_are_22_urlsafe_characters() -> None:
    ids = {new_session_id() for _ in range(100)}

    assert len(ids) == 100
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert all(len(sid) == 22 and set(sid) <= alphabet for sid in ids)


def test_session_ids_stay_unique_across_pool_refills() -> None:
    # Several refills of the random pool: no id comes out twice.
    count = 3 * RANDOM_POOL_BYTES // 16
    assert len({new_session_id() for _ in range(count)}) == count


def test_a_forked_process_does_not_repeat_its_parents_session_ids() -> None:
    new_session_id()  # the pool now holds the parent's next ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, ",".join(new_session_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent = {new_session_id() for _ in range(8)}
    assert len(child) == 8
    assert not child & parent


# malformed


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("garbage", id="garbage"),
        pytest.param("a.b.c", id="garbage-segments"),
        pytest.param("!!!!.e30.sig", id="header-not-base64"),
        pytest.param("W10.e30.sig", id="header-not-object"),
        pytest.param("ëyJ.e30.sig", id="not-ascii"),
    ],
)
def test_garbage_is_malformed(tokens: Tokens, token: str) -> None:
    assert reason(tokens, token) == "malformed"


def test_two_segments_are_malformed(tokens: Tokens) -> None:
    header, payload, _ = pyjwt_token(valid_claims()).split(".")

    assert reason(tokens, f"{header}.{payload}") == "malformed"


def test_payload_that_is_not_base64_is_malformed(tokens: Tokens) -> None:
    signing_input = pyjwt_token(valid_claims()).split(".")[0] + ".a"
    signature = b64url(hmac.digest(SECRET, signing_input.encode(), "sha256"))

    assert reason(tokens, f"{signing_input}.{signature.decode()}") == "malformed"


def test_payload_that_is_not_json_is_malformed(tokens: Tokens) -> None:
    assert reason(tokens, signed(OUR_HEADER, b"{sub:")) == "malformed"


@pytest.mark.parametrize("payload", [b"[]", b'"sub"', b"7", b"null"])
def test_payload_that_is_not_an_object_is_malformed(
    tokens: Tokens, payload: bytes
) -> None:
    assert reason(tokens, signed(OUR_HEADER, payload)) == "malformed"


@pytest.mark.parametrize("claim", ["sub", "room", "pos", "iat", "exp", "typ"])
def test_missing_claim_is_malformed(tokens: Tokens, claim: str) -> None:
    claims = valid_claims()
    del claims[claim]

    assert reason(tokens, pyjwt_token(claims)) == "malformed"


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"sub": 5}, id="sub-int"),
        pytest.param({"room": None}, id="room-null"),
        pytest.param({"typ": ["access"]}, id="typ-list"),
        pytest.param({"pos": "7"}, id="pos-str"),
        pytest.param({"pos": True}, id="pos-bool"),
        pytest.param({"iat": NOW + 0.5}, id="iat-float"),
        pytest.param({"exp": str(NOW + 600)}, id="exp-str"),
        pytest.param({"eta": "soon"}, id="eta-str"),
        pytest.param({"eta": 1.5}, id="eta-float"),
    ],
)
def test_claims_of_wrong_type_are_malformed(
    tokens: Tokens, changes: dict[str, Any]
) -> None:
    token = signed(OUR_HEADER, orjson.dumps(valid_claims(**changes)))

    assert reason(tokens, token) == "malformed"


def test_header_with_known_kid_but_extra_fields_is_malformed(tokens: Tokens) -> None:
    assert reason(tokens, pyjwt_token(valid_claims(), cty="x")) == "malformed"


# bad_algorithm


def test_alg_none_is_bad_algorithm(tokens: Tokens) -> None:
    token = jwt.encode(valid_claims(), "", algorithm="none", headers={"kid": KID})

    assert reason(tokens, token) == "bad_algorithm"


def test_hs512_is_bad_algorithm(tokens: Tokens) -> None:
    token = jwt.encode(valid_claims(), SECRET, algorithm="HS512", headers={"kid": KID})

    assert reason(tokens, token) == "bad_algorithm"


def test_eddsa_token_is_bad_algorithm(tokens: Tokens) -> None:
    key = Ed25519PrivateKey.generate()
    token = jwt.encode(valid_claims(), key, algorithm="EdDSA", headers={"kid": KID})

    assert reason(tokens, token) == "bad_algorithm"


def test_rs256_token_is_bad_algorithm(tokens: Tokens) -> None:
    key = generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(valid_claims(), key, algorithm="RS256", headers={"kid": KID})

    assert reason(tokens, token) == "bad_algorithm"


def test_header_without_alg_is_bad_algorithm(tokens: Tokens) -> None:
    token = signed({"kid": KID, "typ": "JWT"}, orjson.dumps(valid_claims()))

    assert reason(tokens, token) == "bad_algorithm"


# unknown_kid


def test_unknown_kid_is_refused(tokens: Tokens) -> None:
    token = jwt.encode(
        valid_claims(), SECRET, algorithm="HS256", headers={"kid": "kid-2"}
    )

    assert reason(tokens, token) == "unknown_kid"


def test_missing_kid_is_unknown_kid(tokens: Tokens) -> None:
    token = jwt.encode(valid_claims(), SECRET, algorithm="HS256")

    assert reason(tokens, token) == "unknown_kid"


@pytest.mark.parametrize("kid", [[KID], {"kid": KID}, 1])
def test_kid_that_is_not_a_string_is_unknown_kid(tokens: Tokens, kid: object) -> None:
    # Regression: a list or object kid raised TypeError (unhashable) in check.
    header = {"alg": "HS256", "kid": kid, "typ": "JWT"}

    assert reason(tokens, signed(header, orjson.dumps(valid_claims()))) == "unknown_kid"


# bad_signature


def test_token_signed_with_another_secret_is_bad_signature(tokens: Tokens) -> None:
    token = jwt.encode(
        valid_claims(), SECRET[::-1], algorithm="HS256", headers={"kid": KID}
    )

    assert reason(tokens, token) == "bad_signature"


def test_token_with_changed_payload_is_bad_signature(tokens: Tokens) -> None:
    header, _, signature = tokens.issue_access(ROOM, SUB, 1, 60, NOW).split(".")
    forged = b64url(orjson.dumps(valid_claims(pos=0))).decode()

    assert reason(tokens, f"{header}.{forged}.{signature}") == "bad_signature"


# expired


def test_token_expired_beyond_leeway_is_refused(tokens: Tokens) -> None:
    token = tokens.issue_access(ROOM, SUB, 1, ttl_s=60, now=NOW)

    assert reason(tokens, token, now=NOW + 60 + LEEWAY_S) == "expired"
    assert reason(tokens, token, now=NOW + 10**6) == "expired"


def test_token_expired_within_leeway_is_accepted(tokens: Tokens) -> None:
    token = tokens.issue_access(ROOM, SUB, 1, ttl_s=60, now=NOW)

    assert tokens.check(token, ROOM, "access", NOW + 60).exp == NOW + 60
    assert tokens.check(token, ROOM, "access", NOW + 60 + LEEWAY_S - 0.5).pos == 1


def test_expired_queue_token_is_refused(tokens: Tokens) -> None:
    token = tokens.issue_queue(ROOM, SUB, 1, eta=5, now=NOW)
    later = NOW + CONFIG.queue_ttl_s + LEEWAY_S + 1

    assert reason(tokens, token, typ="queue", now=later) == "expired"


# not_yet_valid


def test_token_issued_in_the_future_beyond_leeway_is_refused(tokens: Tokens) -> None:
    token = tokens.issue_access(ROOM, SUB, 1, ttl_s=60, now=NOW)

    assert reason(tokens, token, now=NOW - LEEWAY_S - 1) == "not_yet_valid"


def test_token_issued_in_the_future_within_leeway_is_accepted(tokens: Tokens) -> None:
    token = tokens.issue_access(ROOM, SUB, 1, ttl_s=60, now=NOW)

    assert tokens.check(token, ROOM, "access", NOW - LEEWAY_S).iat == NOW


# wrong_room, wrong_type


def test_token_for_another_room_is_wrong_room(tokens: Tokens) -> None:
    token = tokens.issue_access("other-room", SUB, 1, ttl_s=60, now=NOW)

    assert reason(tokens, token) == "wrong_room"


def test_queue_token_used_as_access_token_is_wrong_type(tokens: Tokens) -> None:
    token = tokens.issue_queue(ROOM, SUB, 1, eta=5, now=NOW)

    assert reason(tokens, token, typ="access") == "wrong_type"


def test_access_token_used_as_queue_token_is_wrong_type(tokens: Tokens) -> None:
    token = tokens.issue_access(ROOM, SUB, 1, ttl_s=60, now=NOW)

    assert reason(tokens, token, typ="queue") == "wrong_type"


# reset


def test_token_issued_before_the_room_reset_is_refused(tokens: Tokens) -> None:
    token = tokens.issue_access(ROOM, SUB, 1, ttl_s=60, now=NOW)

    with pytest.raises(TokenError) as refused:
        tokens.check(token, ROOM, "access", NOW, not_before=int(NOW) + 1)
    assert refused.value.reason == "reset"
    assert tokens.check(token, ROOM, "access", NOW, not_before=int(NOW)).iat == NOW


def test_reasons_are_exactly_those_tested_here() -> None:
    # A reason added to REASONS fails this until it gets a test above.
    assert set(REASONS) == {
        "malformed",
        "bad_algorithm",
        "unknown_kid",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_room",
        "wrong_type",
        "reset",
    }


# KeyRing


def test_load_or_create_creates_a_private_key_file(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"

    ring, created = KeyRing.load_or_create(state_dir)

    path = state_dir / KEYS_FILE
    assert created is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ring.active in ring.secrets
    assert all(len(secret) == SECRET_BYTES for secret in ring.secrets.values())
    assert os.listdir(state_dir) == [KEYS_FILE]


def test_load_or_create_reuses_the_ring_after_restart(tmp_path: Path) -> None:
    first, _ = KeyRing.load_or_create(tmp_path)
    token = Tokens(first, CONFIG).issue_queue(ROOM, SUB, 5, eta=30, now=NOW)

    second, created = KeyRing.load_or_create(tmp_path)

    assert created is False
    assert second.active == first.active
    assert dict(second.secrets) == dict(first.secrets)
    assert Tokens(second, CONFIG).check(token, ROOM, "queue", NOW).pos == 5


def test_generated_rings_differ() -> None:
    assert KeyRing.generate().secrets != KeyRing.generate().secrets


def test_save_and_load_keep_every_key(tmp_path: Path) -> None:
    ring = KeyRing(active="b", secrets={"a": SECRET, "b": SECRET[::-1]})
    ring.save(tmp_path)

    assert KeyRing.load(tmp_path) == ring


def test_load_of_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        KeyRing.load(tmp_path)


def _secret_text(secret: bytes) -> str:
    return base64.urlsafe_b64encode(secret).decode()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"{not json", "not a valid key ring", id="corrupt"),
        pytest.param(b"", "not a valid key ring", id="empty"),
        pytest.param(b"[]", "not a valid key ring", id="not-object"),
        pytest.param(b'{"active": "a"}', "not a valid key ring", id="no-keys"),
        pytest.param(
            b'{"active": "a", "keys": [{"kid": "a", "secret": 5}]}',
            "not a valid key ring",
            id="secret-not-text",
        ),
        pytest.param(
            b'{"active": "a", "keys": [{"kid": "a", "secret": "a"}]}',
            "not a valid key ring",
            id="secret-not-base64",
        ),
        pytest.param(
            orjson.dumps(
                {"active": "b", "keys": [{"kid": "a", "secret": _secret_text(SECRET)}]}
            ),
            "active kid 'b' has no secret",
            id="missing-active-key",
        ),
        pytest.param(
            orjson.dumps(
                {
                    "active": "a",
                    "keys": [{"kid": "a", "secret": _secret_text(b"s" * 31)}],
                }
            ),
            "at least 32 bytes",
            id="short-secret",
        ),
    ],
)
def test_load_reports_invalid_rings(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / KEYS_FILE).write_bytes(content)
    (tmp_path / KEYS_FILE).chmod(0o600)

    with pytest.raises(KeyRingError, match=message):
        KeyRing.load(tmp_path)
    with pytest.raises(KeyRingError):
        KeyRing.load_or_create(tmp_path)


def test_load_reports_an_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / KEYS_FILE).mkdir()

    with pytest.raises(KeyRingError, match="cannot read"):
        KeyRing.load(tmp_path)


def test_write_private_file_leaves_only_the_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.json"
    path.write_bytes(b"old")
    path.chmod(0o644)

    write_private_file(path, b"new")

    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["secret.json"]


def test_write_private_file_removes_its_temp_file_on_failure(tmp_path: Path) -> None:
    # A non-empty directory in the way makes the final rename fail.
    path = tmp_path / "secret.json"
    path.mkdir()
    (path / "inside").write_bytes(b"")

    with pytest.raises(OSError):  # noqa: PT011 - the errno varies by platform
        write_private_file(path, b"new")

    assert os.listdir(tmp_path) == ["secret.json"]
    assert path.is_dir()
