"""A narrow HS256 JWT codec for the hot path.

pyjwt costs about 15 µs to encode and 25 µs to decode a token; this codec
does the same work in a few µs by doing only what wr needs:

- it encodes with the header pyjwt writes for ``jwt.encode(claims, key,
  "HS256", headers={"kid": kid})``, serialized the way pyjwt serializes it,
  so its tokens are byte-for-byte pyjwt's (``tests/test_hs256.py`` proves it
  with hypothesis);
- it decodes only tokens whose header segment is exactly one it would write
  for a key it holds. The algorithm is never read from the token, so
  ``alg: none`` or an algorithm swap has nothing to act on.

It is limited, knowingly, to claims whose values are ASCII strings and
integers (all wr claims are): pyjwt escapes non-ASCII text where orjson
writes UTF-8. Claims are checked by the caller (:mod:`wr.tokens`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["MAX_TOKEN_BYTES", "HS256Codec", "MalformedToken"]

# Our tokens are about 250 bytes; anything much longer is not ours, and
# decoding it would only cost time.
MAX_TOKEN_BYTES = 2048


class MalformedToken(Exception):
    """The token is not a JWT we could have issued; ``reason`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def header_segment(kid: str) -> bytes:
    """The encoded header pyjwt writes for HS256 with this ``kid``."""
    header = {"alg": "HS256", "kid": kid, "typ": "JWT"}
    # pyjwt sorts header keys and uses compact separators.
    text = json.dumps(header, separators=(",", ":"), sort_keys=True)
    return b64url(text.encode())


class HS256Codec:
    """Encode and decode HS256 tokens for a fixed set of keys."""

    def __init__(self, keys: Mapping[str, bytes], signing_kid: str) -> None:
        if signing_kid not in keys:
            raise ValueError(f"signing kid {signing_kid!r} is not among the keys")
        self._signing_key = keys[signing_kid]
        self._signing_header = header_segment(signing_kid)
        self._key_by_header = {header_segment(kid): key for kid, key in keys.items()}

    def encode(self, claims: Mapping[str, Any]) -> str:
        # json.dumps (pyjwt) escapes DEL, the one ASCII character orjson
        # writes raw; it can only occur inside a string.
        payload = orjson.dumps(claims).replace(b"\x7f", b"\\u007f")
        signing_input = self._signing_header + b"." + b64url(payload)
        signature = hmac.digest(self._signing_key, signing_input, "sha256")
        return (signing_input + b"." + b64url(signature)).decode("ascii")

    def decode(self, token: str) -> dict[str, Any]:
        """Return the claims of a token signed by one of our keys.

        Raises :class:`MalformedToken` with reason ``"malformed"``,
        ``"foreign_header"`` (a header we never write: another algorithm,
        an unknown or missing ``kid``…) or ``"bad_signature"``.
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise MalformedToken("malformed", "token too long")
        try:
            raw = token.encode("ascii")
        except UnicodeEncodeError:
            raise MalformedToken("malformed", "token is not ASCII") from None

        header, _, rest = raw.partition(b".")
        key = self._key_by_header.get(header)
        if key is None:
            raise MalformedToken("foreign_header", "token header is not one of ours")
        signing_length = len(header) + 1 + rest.find(b".")
        payload, dot, signature = rest.partition(b".")
        if not dot or b"." in signature:
            raise MalformedToken("malformed", "token must have three segments")

        expected = b64url(hmac.digest(key, raw[:signing_length], "sha256"))
        if not hmac.compare_digest(expected, signature):
            raise MalformedToken("bad_signature", "signature does not match")

        try:
            claims = orjson.loads(b64url_decode(payload))
        except (binascii.Error, ValueError):
            raise MalformedToken("malformed", "payload is not base64 JSON") from None
        if not isinstance(claims, dict):
            raise MalformedToken("malformed", "payload is not a JSON object")
        return claims
