"""EdDSA (Ed25519) JWTs through pyjwt, with the interface of the HS256 codec.

Signing and checking are pyjwt's (RFC 8037); this module only maps its
errors onto the reasons :mod:`wr.tokens` reports, and refuses any token
whose header names another algorithm or a kid it does not hold before pyjwt
sees it. pyjwt is also told to accept EdDSA alone, so a token signed with
HS256 over the bytes of a public key (the classic algorithm confusion) has
nothing to act on twice over.

Keys are held as their 32-byte seeds (RFC 8032 section 5.1.5); the public
half is what :func:`public_jwk` publishes.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from wr.hs256 import MAX_TOKEN_BYTES, MalformedToken, b64url, b64url_decode

__all__ = ["SEED_BYTES", "EdDSACodec", "public_jwk", "token_header"]

SEED_BYTES = 32
ALGORITHM = "EdDSA"


def public_jwk(kid: str, seed: bytes) -> dict[str, str]:
    """The public key of ``seed`` as an OKP JWK (RFC 8037 section 2)."""
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(raw).decode("ascii"),
        "kid": kid,
        "alg": ALGORITHM,
        "use": "sig",
    }


def token_header(token: str) -> dict[str, Any] | None:
    """The JSON object in a token's header segment, or None if there is none."""
    try:
        header = orjson.loads(b64url_decode(token.split(".", 1)[0].encode("ascii")))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return None
    return header if isinstance(header, dict) else None


class EdDSACodec:
    """Encode and decode Ed25519-signed tokens for a fixed set of keys."""

    def __init__(self, seeds: Mapping[str, bytes], signing_kid: str) -> None:
        if signing_kid not in seeds:
            raise ValueError(f"signing kid {signing_kid!r} is not among the keys")
        self._signing_kid = signing_kid
        self._signing_key = Ed25519PrivateKey.from_private_bytes(seeds[signing_kid])
        self._public: dict[str, Ed25519PublicKey] = {
            kid: Ed25519PrivateKey.from_private_bytes(seed).public_key()
            for kid, seed in seeds.items()
        }
        self._jws = jwt.PyJWS(algorithms=[ALGORITHM])

    def encode(self, claims: Mapping[str, Any]) -> str:
        return self._jws.encode(
            orjson.dumps(claims),
            self._signing_key,
            algorithm=ALGORITHM,
            headers={"kid": self._signing_kid},
        )

    def decode(self, token: str) -> dict[str, Any]:
        """The claims of a token signed by one of our keys.

        Raises :class:`MalformedToken` with reason ``"malformed"``,
        ``"foreign_header"`` (another algorithm, an unknown or missing kid)
        or ``"bad_signature"``.
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise MalformedToken("malformed", "token too long")
        header = token_header(token)
        if header is None:
            raise MalformedToken("malformed", "token header is not base64 JSON")
        kid = header.get("kid")
        key = self._public.get(kid) if isinstance(kid, str) else None
        if header.get("alg") != ALGORITHM or key is None:
            raise MalformedToken("foreign_header", "token header is not one of ours")

        try:
            payload = self._jws.decode(token, key, algorithms=[ALGORITHM])
        except jwt.InvalidSignatureError:
            raise MalformedToken("bad_signature", "signature does not match") from None
        except jwt.PyJWTError:
            raise MalformedToken("malformed", "token is not a valid JWS") from None

        try:
            claims = orjson.loads(payload)
        except ValueError:
            raise MalformedToken("malformed", "payload is not JSON") from None
        if not isinstance(claims, dict):
            raise MalformedToken("malformed", "payload is not a JSON object")
        return claims
