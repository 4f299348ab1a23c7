"""EdDSA tokens, the key ring's Ed25519 keys and the JWK set, checked twice.

pyjwt issues and checks wr's EdDSA tokens; joserfc, an independent JOSE
implementation, must agree with it on every token wr issues (both
algorithms), using only what a gateway has: the JWK set or the secret.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import os
import stat
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc import jwt as jose_jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import KeySet, OctKey, OKPKey

from tests.test_tokens import valid_claims
from wr.config import TokensConfig
from wr.eddsa import SEED_BYTES, EdDSACodec, public_jwk
from wr.hs256 import MalformedToken, b64url
from wr.tokens import KEYS_FILE, LEEWAY_S, KeyRing, KeyRingError, TokenError, Tokens

# RFC 9864 (2025) deprecates the name "EdDSA" for the fully specified
# "Ed25519"; joserfc warns about it. wr writes "EdDSA", the name every
# library verifies today (DESIGN.md).
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

NOW = 1_700_000_000
CONFIG = TokensConfig(algorithm="EdDSA", queue_ttl_s=900, access_ttl_s=600)
HS_CONFIG = dataclasses.replace(CONFIG, algorithm="HS256")
ROOM = "sale"
SUB = "s" * 22
KEEP_S = max(CONFIG.queue_ttl_s, CONFIG.access_ttl_s) + LEEWAY_S


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate("EdDSA")


@pytest.fixture
def tokens(ring: KeyRing) -> Tokens:
    return Tokens(ring, CONFIG)


def reason(tokens: Tokens, token: str, typ: str = "access") -> str:
    with pytest.raises(TokenError) as caught:
        tokens.check(token, ROOM, typ, NOW)
    return caught.value.reason


def seed_key(ring: KeyRing, kid: str | None = None) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(ring.secrets[kid or ring.active])


# Issuing and checking.


def test_eddsa_tokens_round_trip_with_the_kid_in_the_header(
    tokens: Tokens, ring: KeyRing
) -> None:
    token = tokens.issue_access(ROOM, SUB, 7, 600, NOW)

    assert jwt.get_unverified_header(token) == {
        "alg": "EdDSA",
        "kid": ring.active,
        "typ": "JWT",
    }
    checked = tokens.check(token, ROOM, "access", NOW)
    assert (checked.sub, checked.pos, checked.typ) == (SUB, 7, "access")


def test_queue_tokens_carry_eta_and_verify_with_pyjwt_and_the_public_key(
    tokens: Tokens, ring: KeyRing
) -> None:
    token = tokens.issue_queue(ROOM, SUB, 9, 42, NOW)

    public = seed_key(ring).public_key()
    decoded = jwt.decode(
        token, public, algorithms=["EdDSA"], options={"verify_exp": False}
    )
    assert decoded["eta"] == 42
    assert decoded["typ"] == "queue"
    assert tokens.check(token, ROOM, "queue", NOW).eta == 42


def test_a_token_signed_by_another_ed25519_key_is_a_bad_signature(
    tokens: Tokens, ring: KeyRing
) -> None:
    other = Ed25519PrivateKey.generate()
    token = jwt.encode(
        valid_claims(), other, algorithm="EdDSA", headers={"kid": ring.active}
    )

    assert reason(tokens, token) == "bad_signature"


def test_a_tampered_payload_is_a_bad_signature(tokens: Tokens) -> None:
    token = tokens.issue_access(ROOM, SUB, 7, 600, NOW)
    header, _, signature = token.split(".")
    payload = b64url(orjson.dumps(valid_claims(pos=1))).decode()

    assert reason(tokens, f"{header}.{payload}.{signature}") == "bad_signature"


def test_hs256_signed_with_the_public_key_bytes_is_refused(
    tokens: Tokens, ring: KeyRing
) -> None:
    # The algorithm confusion attack: HMAC keyed with what is public.
    public = seed_key(ring).public_key()
    for key in (
        public.public_bytes(Encoding.Raw, PublicFormat.Raw),
        public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
    ):
        # By hand: pyjwt itself refuses to HMAC with a PEM key.
        header = {"alg": "HS256", "kid": ring.active, "typ": "JWT"}
        body = (
            b64url(orjson.dumps(header)) + b"." + b64url(orjson.dumps(valid_claims()))
        )
        signature = hmac.digest(key, body, "sha256")
        forged = (body + b"." + b64url(signature)).decode()
        assert reason(tokens, forged) == "bad_algorithm"


@pytest.mark.parametrize("alg", ["none", "HS256", "ES256", "Ed25519", None])
def test_any_other_alg_header_is_refused(
    tokens: Tokens, ring: KeyRing, alg: str | None
) -> None:
    header = {"kid": ring.active, "typ": "JWT"}
    if alg is not None:
        header["alg"] = alg
    body = b64url(orjson.dumps(header)) + b"." + b64url(orjson.dumps(valid_claims()))
    signature = seed_key(ring).sign(body)
    token = (body + b"." + b64url(signature)).decode()

    assert reason(tokens, token) == "bad_algorithm"


def test_an_eddsa_token_is_refused_after_the_switch_to_hs256(ring: KeyRing) -> None:
    token = Tokens(ring, CONFIG).issue_access(ROOM, SUB, 7, 600, NOW)
    switched = ring.rotate(NOW, KEEP_S, "HS256")

    assert reason(Tokens(switched, HS_CONFIG), token) == "bad_algorithm"


def test_an_hs256_token_is_refused_after_the_switch_to_eddsa() -> None:
    old = KeyRing.generate("HS256")
    token = Tokens(old, HS_CONFIG).issue_access(ROOM, SUB, 7, 600, NOW)
    switched = old.rotate(NOW, KEEP_S, "EdDSA")

    assert reason(Tokens(switched, CONFIG), token) == "bad_algorithm"


def test_unknown_and_missing_kids_are_refused(tokens: Tokens, ring: KeyRing) -> None:
    key = seed_key(ring)
    unknown = jwt.encode(
        valid_claims(), key, algorithm="EdDSA", headers={"kid": "nope"}
    )
    missing = jwt.encode(valid_claims(), key, algorithm="EdDSA")

    assert reason(tokens, unknown) == "unknown_kid"
    assert reason(tokens, missing) == "unknown_kid"


@pytest.mark.parametrize(
    "token", ["", "x", "a.b", "a.b.c", "a.b.c.d", "é.b.c", "x" * 5000]
)
def test_garbage_is_malformed(tokens: Tokens, token: str) -> None:
    assert reason(tokens, token) == "malformed"


def test_claims_are_checked_as_for_hs256(tokens: Tokens) -> None:
    assert reason(tokens, tokens.issue_access("other", SUB, 7, 600, NOW)) == (
        "wrong_room"
    )
    assert reason(tokens, tokens.issue_queue(ROOM, SUB, 7, None, NOW)) == "wrong_type"
    old = tokens.issue_access(ROOM, SUB, 7, 60, NOW - 60 - LEEWAY_S)
    assert reason(tokens, old) == "expired"


def test_the_codec_maps_pyjwt_errors_to_reasons(ring: KeyRing) -> None:
    codec = EdDSACodec(ring.secrets, ring.active)
    token = codec.encode(valid_claims())
    header, payload, _ = token.split(".")

    with pytest.raises(MalformedToken) as caught:
        codec.decode(f"{header}.{payload}.!!!")
    assert caught.value.reason == "malformed"
    with pytest.raises(MalformedToken) as caught:
        codec.decode(f"{header}.{b64url(b'[1]').decode()}.{token.split('.')[2]}")
    assert caught.value.reason == "bad_signature"
    with pytest.raises(ValueError, match="signing kid"):
        EdDSACodec(ring.secrets, "absent")


# The key ring.


def test_an_eddsa_ring_is_saved_private_and_loaded_whole(tmp_path: Path) -> None:
    ring, created = KeyRing.load_or_create(tmp_path, "EdDSA")
    ring = ring.rotate(NOW, KEEP_S)
    ring.save(tmp_path)

    assert created
    assert stat.S_IMODE(os.stat(tmp_path / KEYS_FILE).st_mode) == 0o600
    loaded = KeyRing.load(tmp_path)
    assert loaded == ring
    assert set(loaded.algorithms.values()) == {"EdDSA"}
    assert all(len(seed) == SEED_BYTES for seed in loaded.secrets.values())
    entries = orjson.loads((tmp_path / KEYS_FILE).read_bytes())["keys"]
    assert {entry["alg"] for entry in entries} == {"EdDSA"}


def test_a_ring_written_before_eddsa_loads_as_hs256(tmp_path: Path) -> None:
    secret = base64.urlsafe_b64encode(bytes(32)).decode()
    data = {"active": "k1", "keys": [{"kid": "k1", "secret": secret}]}
    (tmp_path / KEYS_FILE).write_bytes(orjson.dumps(data))
    (tmp_path / KEYS_FILE).chmod(0o600)

    assert KeyRing.load(tmp_path).algorithm_of("k1") == "HS256"


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"alg": "RS256", "secret": bytes(32)}, "not a valid key ring"),
        ({"alg": "EdDSA", "secret": bytes(33)}, "must be 32 bytes"),
        ({"alg": "EdDSA", "secret": bytes(16)}, "must be 32 bytes"),
    ],
)
def test_bad_eddsa_entries_are_refused(
    tmp_path: Path, entry: dict[str, Any], problem: str
) -> None:
    secret = base64.urlsafe_b64encode(entry["secret"]).decode()
    item = {"kid": "k1", "alg": entry["alg"], "secret": secret}
    (tmp_path / KEYS_FILE).write_bytes(orjson.dumps({"active": "k1", "keys": [item]}))
    (tmp_path / KEYS_FILE).chmod(0o600)

    with pytest.raises(KeyRingError, match=problem):
        KeyRing.load(tmp_path)


def test_a_ring_of_the_other_algorithm_is_refused_with_what_to_do() -> None:
    with pytest.raises(KeyRingError, match=r"wr keygen --rotate"):
        Tokens(KeyRing.generate("HS256"), CONFIG)
    with pytest.raises(KeyRingError, match="signs with EdDSA"):
        Tokens(KeyRing.generate("EdDSA"), HS_CONFIG)


def test_rotation_keeps_the_algorithm_unless_told(ring: KeyRing) -> None:
    same = ring.rotate(NOW, KEEP_S)
    switched = ring.rotate(NOW, KEEP_S, "HS256")

    assert same.algorithm_of(same.active) == "EdDSA"
    assert switched.algorithm_of(switched.active) == "HS256"
    assert switched.algorithm_of(ring.active) == "EdDSA"


def test_retired_keys_verify_their_tokens_until_they_expire(ring: KeyRing) -> None:
    token = Tokens(ring, CONFIG).issue_access(ROOM, SUB, 7, 600, NOW)
    rotated = ring.rotate(NOW + 10, KEEP_S)
    tokens = Tokens(rotated, CONFIG)

    assert tokens.check(token, ROOM, "access", NOW + 20).pos == 7
    assert jwt.get_unverified_header(tokens.issue_access(ROOM, SUB, 1, 600, NOW))[
        "kid"
    ] == (rotated.active)


# The JWK set.


def test_the_jwk_set_publishes_public_keys_only(tokens: Tokens, ring: KeyRing) -> None:
    (jwk,) = tokens.jwks(NOW)["keys"]

    raw = seed_key(ring).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert jwk == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(raw).decode(),
        "kid": ring.active,
        "alg": "EdDSA",
        "use": "sig",
    }
    assert "d" not in jwk


def test_the_jwk_set_keeps_retired_keys_while_their_tokens_live(
    ring: KeyRing,
) -> None:
    rotated = ring.rotate(NOW, KEEP_S)
    tokens = Tokens(rotated, CONFIG)

    kids = [key["kid"] for key in tokens.jwks(NOW + 1)["keys"]]
    assert kids == [rotated.active, ring.active]
    later = [key["kid"] for key in tokens.jwks(NOW + KEEP_S + 1)["keys"]]
    assert later == [rotated.active]


def test_the_jwk_set_leaves_out_keys_of_the_other_algorithm() -> None:
    ring = KeyRing.generate("HS256").rotate(NOW, KEEP_S, "EdDSA")

    assert [key["kid"] for key in Tokens(ring, CONFIG).jwks(NOW)["keys"]] == [
        ring.active
    ]


def test_with_hs256_the_jwk_set_is_empty() -> None:
    assert Tokens(KeyRing.generate(), HS_CONFIG).jwks(NOW) == {"keys": []}


# A second implementation: joserfc.


def test_joserfc_verifies_eddsa_tokens_with_the_published_jwk_set(
    tokens: Tokens,
) -> None:
    key_set = KeySet.import_key_set(orjson.loads(orjson.dumps(tokens.jwks(NOW))))
    token = tokens.issue_access(ROOM, SUB, 7, 600, NOW)

    decoded = jose_jwt.decode(token, key_set, algorithms=["EdDSA"])
    assert decoded.header["kid"] == tokens.ring.active
    assert decoded.claims == valid_claims()


def test_joserfc_refuses_a_tampered_eddsa_token(tokens: Tokens) -> None:
    key_set = KeySet.import_key_set(orjson.loads(orjson.dumps(tokens.jwks(NOW))))
    token = tokens.issue_access(ROOM, SUB, 7, 600, NOW)
    header, _, signature = token.split(".")
    payload = b64url(orjson.dumps(valid_claims(pos=1))).decode()

    with pytest.raises(BadSignatureError):
        jose_jwt.decode(f"{header}.{payload}.{signature}", key_set, ["EdDSA"])


def test_joserfc_verifies_hs256_tokens_with_the_secret() -> None:
    ring = KeyRing.generate()
    tokens = Tokens(ring, HS_CONFIG)
    for token in (
        tokens.issue_access(ROOM, SUB, 7, 600, NOW),
        tokens.issue_queue(ROOM, SUB, 7, 17, NOW),
    ):
        key = OctKey.import_key(ring.secrets[ring.active])
        decoded = jose_jwt.decode(token, key, algorithms=["HS256"])
        assert decoded.header == {"alg": "HS256", "kid": ring.active, "typ": "JWT"}
        assert decoded.claims["sub"] == SUB

        with pytest.raises(JoseError):
            jose_jwt.decode(token, OctKey.import_key(bytes(32)), ["HS256"])


def test_joserfc_signed_eddsa_tokens_are_accepted_by_wr(
    tokens: Tokens, ring: KeyRing
) -> None:
    # The other direction: wr reads any compliant EdDSA JWT from its keys.
    public = public_jwk(ring.active, ring.secrets[ring.active])
    private = seed_key(ring).private_bytes_raw()
    key = OKPKey.import_key({**public, "d": b64url(private).decode()})
    header = {"alg": "EdDSA", "kid": ring.active}
    token = jose_jwt.encode(header, valid_claims(), key, algorithms=["EdDSA"])

    assert tokens.check(token, ROOM, "access", NOW).sub == SUB
