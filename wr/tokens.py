"""Queue and access tokens: issuing, checking, and the key ring behind them.

A queue token says "this session holds position ``pos`` in ``room``"; an
access token says "this session may enter ``room`` until ``exp``". Both are
JWTs with the signing key's ``kid`` in the header (DESIGN.md, Tokens), signed
with ``tokens.algorithm``: HS256 (the default) or EdDSA (Ed25519).

HS256 tokens are issued and checked on the request path by
:class:`wr.hs256.HS256Codec`; EdDSA tokens by :class:`wr.eddsa.EdDSACodec`,
which uses pyjwt. Only the configured algorithm is ever accepted: a ring may
still hold keys of the other one (after a switch), and those verify nothing.

The key ring lives in ``<state_dir>/keys.json`` (mode 0600). It is created on
first start and reused afterwards, so tokens survive restarts. With EdDSA the
public halves of the ring's keys are published as a JWK set
(:meth:`Tokens.jwks`, served at ``/.well-known/jwks.json``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from wr.config import TokensConfig
from wr.eddsa import SEED_BYTES, EdDSACodec, public_jwk, token_header
from wr.hs256 import HS256Codec, MalformedToken

__all__ = [
    "ALGORITHMS",
    "LEEWAY_S",
    "REASONS",
    "Claims",
    "KeyRing",
    "KeyRingError",
    "TokenError",
    "Tokens",
    "new_session_id",
    "random_bytes",
]

log = logging.getLogger("wr.tokens")

# Clocks of the hosts that issue and check tokens may differ this much.
LEEWAY_S = 5

KEYS_FILE = "keys.json"
# 256-bit secrets: what RFC 7518 section 3.2 asks of an HS256 key.
SECRET_BYTES = 32
ALGORITHMS = ("HS256", "EdDSA")

# Every reason a token can be refused for; metrics are labelled with these.
REASONS = (
    "malformed",
    "bad_algorithm",
    "unknown_kid",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "wrong_room",
    "wrong_type",
    "reset",
)


class TokenError(Exception):
    """A token was refused; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class KeyRingError(Exception):
    """The key ring file is missing, unreadable or invalid."""


class Codec(Protocol):
    """Signs claims and checks tokens for one algorithm and a set of keys."""

    def encode(self, claims: Mapping[str, Any]) -> str: ...

    def decode(self, token: str) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    room: str
    pos: int
    iat: int
    exp: int
    typ: str
    eta: int | None = None


# Bytes of a session id: 128 bits, beyond guessing.
SESSION_ID_BYTES = 16
# Session ids come from the system's CSPRNG, read this much at a time: one
# getrandom(2) call per join cost more than signing the join's token.
RANDOM_POOL_BYTES = 4096


class _RandomPool:
    """Bytes from ``os.urandom``, handed out in order and never twice.

    A forked process starts with an empty pool (``os.register_at_fork``),
    so no two workers hand out the same bytes. One thread uses it: the
    event loop's.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0

    def take(self, count: int) -> bytes:
        if self._offset + count > len(self._buffer):
            self._buffer = os.urandom(max(RANDOM_POOL_BYTES, count))
            self._offset = 0
        start = self._offset
        self._offset += count
        return self._buffer[start : self._offset]

    def empty(self) -> None:
        self._buffer = b""
        self._offset = 0


_pool = _RandomPool()
os.register_at_fork(after_in_child=_pool.empty)


def random_bytes(count: int) -> bytes:
    """``count`` bytes from the system's CSPRNG, through the pool."""
    return _pool.take(count)


def new_session_id() -> str:
    """A random 128-bit session id (22 URL-safe characters)."""
    raw = _pool.take(SESSION_ID_BYTES)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class KeyRing:
    """Signing keys by ``kid``; ``active`` signs new tokens.

    ``secrets`` holds an HS256 secret or an Ed25519 private key (its 32-byte
    seed, RFC 8032 section 5.1.5) per kid; ``algorithms`` says which, and a
    kid missing from it is HS256 (rings written before EdDSA existed).
    ``retired`` maps each former signing key to the time it stopped signing.
    A retired key still verifies the tokens it signed until the longest of
    them has expired; :meth:`rotate` then drops it.
    """

    active: str
    secrets: Mapping[str, bytes]
    retired: Mapping[str, int] = field(default_factory=dict)
    algorithms: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Every kid gets its algorithm spelled out, so that equal rings
        # compare equal however they were built.
        algorithms = {kid: self.algorithms.get(kid, "HS256") for kid in self.secrets}
        object.__setattr__(self, "algorithms", algorithms)

    @classmethod
    def generate(cls, algorithm: str = "HS256") -> KeyRing:
        kid = secrets.token_hex(8)
        return cls(
            active=kid,
            secrets={kid: _new_key(algorithm)},
            algorithms={kid: algorithm},
        )

    def algorithm_of(self, kid: str) -> str:
        return self.algorithms[kid]

    def keys_for(self, algorithm: str) -> dict[str, bytes]:
        """The ring's keys of one algorithm: all that can verify under it."""
        return {
            kid: key
            for kid, key in self.secrets.items()
            if self.algorithm_of(kid) == algorithm
        }

    def check_algorithm(self, algorithm: str) -> None:
        """Refuse a ring whose signing key is not of the configured algorithm."""
        signing = self.algorithm_of(self.active)
        if signing != algorithm:
            raise KeyRingError(
                f"{KEYS_FILE}: signs with {signing} but tokens.algorithm is "
                f"{algorithm}; run `wr keygen --rotate` to add a {algorithm} key "
                f"(tokens signed with {signing} are refused from then on)"
            )

    def rotate(self, now: float, keep_s: int, algorithm: str | None = None) -> KeyRing:
        """A ring whose new key signs; older keys verify for ``keep_s`` more.

        The new key is of ``algorithm`` (None: the algorithm of the key it
        replaces).
        """
        algorithm = algorithm or self.algorithm_of(self.active)
        kid = secrets.token_hex(8)
        retired = {**self.retired, self.active: int(now)}
        retired = {k: at for k, at in retired.items() if at + keep_s > now}
        keys = {k: v for k, v in self.secrets.items() if k in retired}
        algorithms = {k: self.algorithm_of(k) for k in keys}
        keys[kid] = _new_key(algorithm)
        algorithms[kid] = algorithm
        return KeyRing(active=kid, secrets=keys, retired=retired, algorithms=algorithms)

    def verifying_kids(self, now: float, keep_s: int) -> list[str]:
        """The kids whose tokens may still be valid: the active one first."""
        kids = [self.active]
        kids += [
            kid
            for kid, at in sorted(self.retired.items(), key=lambda item: -item[1])
            if kid != self.active and kid in self.secrets and at + keep_s > now
        ]
        return kids

    @classmethod
    def load(cls, state_dir: Path) -> KeyRing:
        """The ring saved in ``state_dir``; FileNotFoundError if there is none."""
        path = state_dir / KEYS_FILE
        try:
            mode = path.stat().st_mode
            data = orjson.loads(path.read_bytes())
            keys = {
                _kid(item["kid"]): base64.b64decode(
                    item["secret"], altchars=b"-_", validate=True
                )
                for item in data["keys"]
            }
            retired = {
                _kid(item["kid"]): int(item["retired_at"])
                for item in data["keys"]
                if item.get("retired_at") is not None
            }
            algorithms = {
                _kid(item["kid"]): _algorithm(item.get("alg", "HS256"))
                for item in data["keys"]
            }
            ring = cls(
                active=_kid(data["active"]),
                secrets=keys,
                retired=retired,
                algorithms=algorithms,
            )
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise KeyRingError(f"{path}: cannot read: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise KeyRingError(f"{path}: not a valid key ring") from None
        if mode & 0o077:
            raise KeyRingError(
                f"{path}: readable or writable by others "
                f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it"
            )
        if ring.active not in ring.secrets:
            raise KeyRingError(f"{path}: active kid {ring.active!r} has no secret")
        for kid, secret in ring.secrets.items():
            if ring.algorithm_of(kid) == "EdDSA":
                if len(secret) != SEED_BYTES:
                    raise KeyRingError(
                        f"{path}: Ed25519 key {kid!r} must be {SEED_BYTES} bytes"
                    )
            elif len(secret) < SECRET_BYTES:
                raise KeyRingError(
                    f"{path}: secrets must be at least {SECRET_BYTES} bytes"
                )
        return ring

    @classmethod
    def load_or_create(
        cls, state_dir: Path, algorithm: str = "HS256"
    ) -> tuple[KeyRing, bool]:
        """The ring in ``state_dir``, created if absent; True if it was created.

        A new ring signs with ``algorithm``; an existing one is returned as
        it is (see :meth:`check_algorithm`).
        """
        try:
            return cls.load(state_dir), False
        except FileNotFoundError:
            ring = cls.generate(algorithm)
            ring.save(state_dir)
            log.info(
                "created key ring path=%s kid=%s", state_dir / KEYS_FILE, ring.active
            )
            return ring, True

    def save(self, state_dir: Path) -> None:
        """Write the ring atomically, readable by its owner only."""
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {
            "active": self.active,
            "keys": [
                {
                    "kid": kid,
                    "alg": self.algorithm_of(kid),
                    "secret": base64.urlsafe_b64encode(secret).decode(),
                    "retired_at": self.retired.get(kid),
                }
                for kid, secret in self.secrets.items()
            ],
        }
        write_private_file(state_dir / KEYS_FILE, orjson.dumps(data))


def _new_key(algorithm: str) -> bytes:
    if algorithm == "EdDSA":
        return secrets.token_bytes(SEED_BYTES)
    if algorithm == "HS256":
        return secrets.token_bytes(SECRET_BYTES)
    raise ValueError(f"unknown algorithm {algorithm!r}")


def _algorithm(value: object) -> str:
    if value not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {value!r}")
    return str(value)


def _kid(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("kid must be a non-empty string")
    return value


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (write, fsync, rename), mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # A leftover temp file (or a link planted there) is removed, never
    # followed or reused, so the new file is ours and 0600.
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Tokens:
    """Issue and check the two kinds of token with one key ring."""

    def __init__(self, ring: KeyRing, config: TokensConfig) -> None:
        ring.check_algorithm(config.algorithm)
        self.ring = ring
        self.config = config
        self._keys = ring.keys_for(config.algorithm)
        self._codec: Codec
        if config.algorithm == "EdDSA":
            self._codec = EdDSACodec(self._keys, ring.active)
            self._jwks = {kid: public_jwk(kid, key) for kid, key in self._keys.items()}
        else:
            self._codec = HS256Codec(self._keys, ring.active)
            # Secrets are never published.
            self._jwks = {}
        # A retired key is announced as long as tokens it signed can live.
        self._keep_s = max(config.queue_ttl_s, config.access_ttl_s) + LEEWAY_S

    def jwks(self, now: float) -> dict[str, Any]:
        """The public keys that verify tokens valid at ``now`` (RFC 7517 5)."""
        kids = self.ring.verifying_kids(now, self._keep_s)
        return {"keys": [self._jwks[kid] for kid in kids if kid in self._jwks]}

    def issue_queue(
        self, room: str, sub: str, pos: int, eta: int | None, now: float
    ) -> str:
        iat = int(now)
        claims: dict[str, Any] = {"sub": sub, "room": room, "pos": pos, "iat": iat}
        if eta is not None:
            claims["eta"] = eta
        claims["exp"] = iat + self.config.queue_ttl_s
        claims["typ"] = "queue"
        return self._codec.encode(claims)

    def issue_access(
        self, room: str, sub: str, pos: int, ttl_s: int, now: float
    ) -> str:
        iat = int(now)
        return self._codec.encode(
            {
                "sub": sub,
                "room": room,
                "pos": pos,
                "iat": iat,
                "exp": iat + ttl_s,
                "typ": "access",
            }
        )

    def issue_bypass(self, room: str, ttl_s: int, now: float) -> str:
        """A token that lets its holder skip the line of ``room`` until it expires."""
        iat = int(now)
        return self._codec.encode(
            {
                "sub": new_session_id(),
                "room": room,
                "pos": 0,
                "iat": iat,
                "exp": iat + ttl_s,
                "typ": "bypass",
            }
        )

    def check(
        self, token: str, room: str, typ: str, now: float, not_before: int = 0
    ) -> Claims:
        """The claims of a valid token of kind ``typ`` for ``room``.

        A token issued before ``not_before`` (the room's last reset) is
        refused too. Raises :class:`TokenError` with the reason it was refused.
        """
        try:
            raw = self._codec.decode(token)
        except MalformedToken as exc:
            if exc.reason == "foreign_header":
                raise self._explain_header(token) from None
            raise TokenError(exc.reason, exc.detail) from None
        claims = _claims(raw)
        if claims.typ != typ:
            raise TokenError("wrong_type", f"expected a {typ} token, got {claims.typ}")
        if claims.room != room:
            raise TokenError("wrong_room", "token is for another room")
        if claims.exp <= now - LEEWAY_S:
            raise TokenError("expired", "token has expired")
        if claims.iat > now + LEEWAY_S:
            raise TokenError("not_yet_valid", "token was issued in the future")
        if claims.iat < not_before:
            raise TokenError("reset", "token was issued before the room was reset")
        return claims

    def _explain_header(self, token: str) -> TokenError:
        # Off the hot path: the token was refused already, this only says why.
        header = token_header(token)
        if header is None:
            return TokenError("malformed", "token header is not a base64 JSON object")
        if header.get("alg") != self.config.algorithm:
            return TokenError("bad_algorithm", "token algorithm is not accepted")
        kid = header.get("kid")
        if kid is None:
            return TokenError("unknown_kid", "token has no kid")
        if not isinstance(kid, str) or kid not in self._keys:
            return TokenError("unknown_kid", "token kid is not known")
        return TokenError("malformed", "token header is not one we issue")


def _claims(raw: dict[str, Any]) -> Claims:
    try:
        sub, room, pos = raw["sub"], raw["room"], raw["pos"]
        iat, exp, typ = raw["iat"], raw["exp"], raw["typ"]
    except KeyError as exc:
        raise TokenError("malformed", f"token lacks claim {exc.args[0]}") from None
    eta = raw.get("eta")
    ok = (
        isinstance(sub, str)
        and isinstance(room, str)
        and isinstance(typ, str)
        and all(type(v) is int for v in (pos, iat, exp))
        and (eta is None or type(eta) is int)
    )
    if not ok:
        raise TokenError("malformed", "token claims have the wrong types")
    return Claims(sub=sub, room=room, pos=pos, iat=iat, exp=exp, typ=typ, eta=eta)
