"""wr.gate: guard a Python site with wr, as ASGI or WSGI middleware.

Every request to the site is asked "may this person come in?". A request
carrying a valid access token (the ``wr_access`` cookie wr sets, or an
``Authorization: Bearer`` header) reaches the site, with the token's claims
in ``scope["wr.access"]`` (ASGI) or ``environ["wr.access"]`` (WSGI). A
newcomer asking for a page (GET or HEAD) is sent to the waiting room with
the URL they asked for as ``return=``, so that wr sends them back there once
admitted; any other request without a valid token gets a 401 with a JSON
reason. Configured paths (health checks, static assets) are let through
unchecked.

How a token is checked is the :class:`Verifier` handed in:

- :class:`JWKSVerifier` checks EdDSA tokens locally against wr's
  ``/.well-known/jwks.json``, fetched when needed, kept for a while and
  fetched again when a token names a kid it does not know (after a key
  rotation), at most once per ``refetch_s``;
- :class:`SecretVerifier` checks HS256 tokens locally with the secrets of
  wr's key ring (``keys.json``), for a site on the same host as wr;
- :class:`RemoteVerifier` asks wr's ``/api/v1/verify`` for every request.

In capacity mode, a person who is done should free their place at once:
a POST to the gate's ``leave_path`` reports them leaving to wr
(``POST /api/v1/rooms/{room}/leave``), clears the cookie and sends them to
``after_leave_url``; a site response carrying the header ``X-WR-Leave: 1``
(say, the order confirmation) does the same for the request it answers.

This module needs nothing of wr's server: only the standard library and
pyjwt (with ``cryptography`` for EdDSA), so that a site can install it
alone. Network calls use :mod:`urllib.request` and block; the ASGI
middleware runs them in a thread, and runs a local check inline.

Known limits: right after a key rotation, a gate that fetched the key set
less than ``refetch_s`` ago refuses tokens of the new key until that time
has passed (the person is sent to the waiting page, which admits them
again); the JWK set's own ``Cache-Control`` is not read (the verifier
keeps keys for ``ttl_s``); a site behind several processes keeps one key
cache per process; ``SecretVerifier.from_key_ring`` reads the ring once, so
a rotation needs the site restarted or the verifier rebuilt.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import (
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import jwt

__all__ = [
    "ACCESS_COOKIE",
    "LEAVE_HEADER",
    "ASGIApp",
    "Access",
    "Decision",
    "Denied",
    "Gate",
    "GateASGI",
    "GateWSGI",
    "JWKSVerifier",
    "Message",
    "Receive",
    "RemoteVerifier",
    "Scope",
    "SecretVerifier",
    "Send",
    "Unavailable",
    "Verifier",
]

log = logging.getLogger("wr.gate")

ACCESS_COOKIE = "wr_access"
# A site response with this header (any value) reports its person leaving.
LEAVE_HEADER = "x-wr-leave"
# wr allows the same clock skew between the hosts that issue and check.
LEEWAY_S = 5
# A call to wr that takes longer than this counts as wr being unavailable:
# the site's own request is waiting on it.
HTTP_TIMEOUT_S = 2.0
# wr's JWK set holds a handful of keys (the active one and those retired
# within a token lifetime); anything far larger is not wr's.
MAX_JWKS_BYTES = 64 * 1024
MAX_JWKS_KEYS = 32
# Keys are kept this long before the set is fetched again, as wr's own
# tokens.jwks_max_age_s default.
JWKS_TTL_S = 300.0
# An unknown kid fetches the set again at most this often, so a flood of
# forged kids cannot turn into a flood of fetches. Kept short because a
# token of a freshly rotated key is refused until the refetch is allowed.
JWKS_REFETCH_S = 2.0
# wr's tokens are about 300 bytes; checking a far longer one is only cost.
MAX_TOKEN_BYTES = 2048
# What is read of an answer from wr's verify or leave: a short JSON reason.
MAX_ANSWER_BYTES = 4096

Headers = Mapping[str, str]
# (method, url, headers, timeout_s) -> (status, lower-cased headers, body)
Fetch = Callable[[str, str, Headers, float], tuple[int, dict[str, str], bytes]]


class Denied(Exception):
    """The token does not let its holder in; ``reason`` is wr's word for it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Unavailable(Exception):
    """wr could not be asked (down, slow, or an answer we cannot read)."""


@dataclass(frozen=True, slots=True)
class Access:
    """What a valid access token says. ``pos`` and ``exp`` are None when
    wr's verify answered (it tells only the session)."""

    sub: str
    room: str
    pos: int | None = None
    exp: int | None = None
    # Left out of repr, so that logging an Access does not log a credential.
    token: str = field(default="", repr=False)


class Verifier(Protocol):
    room: str

    def verify(self, token: str) -> Access:
        """The access the token grants; :class:`Denied` or :class:`Unavailable`."""

    def may_block(self, token: str) -> bool:
        """True if :meth:`verify` may wait on the network for this token."""


def fetch_url(
    method: str, url: str, headers: Headers, timeout_s: float
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with urllib; any HTTP status is an answer."""
    # The URL is the operator's own wr, checked to be http(s) at set-up.
    request = urllib.request.Request(  # noqa: S310
        url, method=method, headers=dict(headers)
    )
    try:
        with urllib.request.urlopen(  # noqa: S310
            request, timeout=timeout_s
        ) as response:
            body = response.read(MAX_JWKS_BYTES + 1)
            return response.status, _lower(response.headers.items()), body
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, _lower(exc.headers.items()), exc.read(MAX_ANSWER_BYTES)
    except (OSError, ValueError) as exc:
        raise Unavailable(f"{method} {url}: {exc}") from None


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {key.lower(): value for key, value in items}


def _http_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} must be an http(s) URL, got {url!r}")
    return url.rstrip("/")


# Checking tokens locally.


class _LocalVerifier:
    """Claims checks shared by the verifiers that hold keys."""

    algorithm = ""

    def __init__(self, room: str, clock: Callable[[], float]) -> None:
        self.room = room
        self._clock = clock

    def may_block(self, token: str) -> bool:
        return False

    def _key(self, kid: str) -> Any:
        raise NotImplementedError

    def verify(self, token: str) -> Access:
        if len(token) > MAX_TOKEN_BYTES:
            raise Denied("malformed", "token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Denied("malformed", "token is not a JWT") from None
        if header.get("alg") != self.algorithm:
            raise Denied("bad_algorithm", "token algorithm is not accepted")
        kid = header.get("kid")
        key = self._key(kid) if isinstance(kid, str) else None
        if key is None:
            raise Denied("unknown_kid", "token kid is not known")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                # Times are checked below against the injected clock.
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["sub", "exp", "iat"],
                },
            )
        except jwt.InvalidSignatureError:
            raise Denied("bad_signature", "signature does not match") from None
        except jwt.PyJWTError:
            raise Denied("malformed", "token is not one wr issues") from None
        return self._access(claims, token)

    def _access(self, claims: dict[str, Any], token: str) -> Access:
        sub, room = claims.get("sub"), claims.get("room")
        pos, exp, iat = (_integer(claims.get(name)) for name in ("pos", "exp", "iat"))
        if not isinstance(sub, str) or not isinstance(room, str):
            raise Denied("malformed", "token claims have the wrong types")
        if claims.get("typ") != "access":
            raise Denied("wrong_type", "not an access token")
        if room != self.room:
            raise Denied("wrong_room", "token is for another room")
        now = self._clock()
        if exp <= now - LEEWAY_S:
            raise Denied("expired", "token has expired")
        if iat > now + LEEWAY_S:
            raise Denied("not_yet_valid", "token was issued in the future")
        return Access(sub=sub, room=room, pos=pos, exp=exp, token=token)


def _integer(value: object) -> int:
    if type(value) is not int:
        raise Denied("malformed", "token claims have the wrong types")
    return value


class SecretVerifier(_LocalVerifier):
    """HS256 tokens, checked with the secrets of wr's key ring by kid."""

    algorithm = "HS256"

    def __init__(
        self,
        room: str,
        secrets: Mapping[str, bytes],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(room, clock)
        if not secrets:
            raise ValueError("no HS256 secrets given")
        self._secrets = dict(secrets)

    @classmethod
    def from_key_ring(
        cls, path: str | Path, room: str, *, clock: Callable[[], float] = time.time
    ) -> SecretVerifier:
        """The HS256 keys of a ``keys.json`` written by wr (read once)."""
        data = json.loads(Path(path).read_bytes())
        secrets = {
            item["kid"]: base64.urlsafe_b64decode(item["secret"])
            for item in data["keys"]
            if item.get("alg", "HS256") == "HS256"
        }
        return cls(room, secrets, clock=clock)

    def _key(self, kid: str) -> Any:
        return self._secrets.get(kid)


class JWKSVerifier(_LocalVerifier):
    """EdDSA tokens, checked with the public keys wr publishes.

    Keys are fetched on first use, kept ``ttl_s``, and fetched again early
    when a token names an unknown kid, at most once per ``refetch_s``. If a
    fetch fails the keys already held stay in use.
    """

    algorithm = "EdDSA"

    def __init__(
        self,
        room: str,
        jwks_url: str,
        *,
        ttl_s: float = JWKS_TTL_S,
        refetch_s: float = JWKS_REFETCH_S,
        timeout_s: float = HTTP_TIMEOUT_S,
        fetch: Fetch = fetch_url,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(room, clock)
        self.jwks_url = _http_url(jwks_url, "jwks_url")
        self._ttl_s = ttl_s
        self._refetch_s = refetch_s
        self._timeout_s = timeout_s
        self._fetch = fetch
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._tried_at: float | None = None
        self._lock = threading.Lock()

    def may_block(self, token: str) -> bool:
        return self._due(self._kid_of(token), self._clock())

    def _kid_of(self, token: str) -> str | None:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return None
        return kid if isinstance(kid, str) else None

    def _due(self, kid: str | None, now: float) -> bool:
        if self._fetched_at is None or now - self._fetched_at >= self._ttl_s:
            return self._tried_at is None or now - self._tried_at >= self._refetch_s
        if kid is not None and kid not in self._keys:
            return self._tried_at is None or now - self._tried_at >= self._refetch_s
        return False

    def _key(self, kid: str) -> Any:
        if self._due(kid, self._clock()):
            with self._lock:
                # Another thread may have fetched while this one waited.
                if self._due(kid, self._clock()):
                    self._refresh()
        return self._keys.get(kid)

    def _refresh(self) -> None:
        now = self._clock()
        self._tried_at = now
        try:
            status, _, body = self._fetch(
                "GET", self.jwks_url, {"accept": "application/json"}, self._timeout_s
            )
            if status != 200:
                raise Unavailable(f"status {status}")
            if len(body) > MAX_JWKS_BYTES:
                raise Unavailable("key set too large")
            self._keys = _ed25519_keys(json.loads(body))
        except (Unavailable, ValueError, TypeError, KeyError) as exc:
            log.warning(
                "jwks fetch failed url=%s error=%s keys_kept=%s",
                self.jwks_url,
                exc,
                len(self._keys),
            )
            return
        self._fetched_at = now
        log.info("jwks fetched url=%s kids=%s", self.jwks_url, ",".join(self._keys))


def _ed25519_keys(document: Any) -> dict[str, Any]:
    """The Ed25519 signing keys of a JWK set, by kid; others are skipped."""
    entries = document["keys"]
    if not isinstance(entries, list):
        raise TypeError("keys is not a list")
    keys: dict[str, Any] = {}
    for entry in entries[:MAX_JWKS_KEYS]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry, algorithm="EdDSA").key
        except jwt.PyJWTError:
            continue
    return keys


class RemoteVerifier:
    """Asks wr's ``/api/v1/verify`` about every token."""

    def __init__(
        self,
        room: str,
        wr_url: str,
        *,
        timeout_s: float = HTTP_TIMEOUT_S,
        fetch: Fetch = fetch_url,
    ) -> None:
        self.room = room
        self._url = f"{_http_url(wr_url, 'wr_url')}/api/v1/verify?room={quote(room)}"
        self._timeout_s = timeout_s
        self._fetch = fetch

    def may_block(self, token: str) -> bool:
        return True

    def verify(self, token: str) -> Access:
        status, headers, body = self._fetch(
            "GET", self._url, {"authorization": f"Bearer {token}"}, self._timeout_s
        )
        if status == 204:
            return Access(
                sub=headers.get("x-wr-session", ""), room=self.room, token=token
            )
        if status == 401:
            raise Denied(*_reason(body))
        raise Unavailable(f"verify answered {status}")


def _reason(body: bytes) -> tuple[str, str]:
    try:
        data = json.loads(body[:MAX_ANSWER_BYTES])
        return str(data["error"]), str(data.get("detail", ""))
    except (ValueError, TypeError, KeyError):
        return "refused", "wr refused the token"


# The decision, free of any framework.


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request.

    ``action`` is ``"pass"`` (an unguarded path), ``"allow"`` (``access``
    is set), ``"redirect"`` (to ``location``), ``"deny"`` (answer ``status``
    with ``body``) or ``"leave"`` (the leave path was asked: answer with
    ``status``, ``location`` and the expiring cookie).
    """

    action: str
    status: int = 200
    location: str = ""
    body: bytes = b""
    access: Access | None = None
    headers: tuple[tuple[str, str], ...] = ()


_NO_STORE = ("cache-control", "no-store")
# What stays as it is when a decoded path is encoded again (RFC 3986 pchar
# and "/").
_PATH_SAFE = "/:@!$&'()*+,;="


class Gate:
    """The rules of one guarded site; the middlewares only translate.

    ``waiting_url`` is where newcomers go (the waiting page, with its
    ``room=``); ``pass_paths`` are let through unchecked, an entry ending in
    ``/`` as a prefix and any other as an exact path; ``site_origin``
    (``https://shop.example``) makes the return URL absolute, for a room
    whose ``target_url`` is on another origin. ``wr_url`` is where leaves
    are reported (``None``: they are not). With ``fail_open``, a person is
    let in when wr cannot be asked (RemoteVerifier only); by default they
    are sent to the waiting room.
    """

    def __init__(
        self,
        verifier: Verifier,
        *,
        waiting_url: str,
        pass_paths: Sequence[str] = (),
        site_origin: str | None = None,
        wr_url: str | None = None,
        leave_path: str | None = None,
        after_leave_url: str = "/",
        secure_cookies: bool = False,
        fail_open: bool = False,
        timeout_s: float = HTTP_TIMEOUT_S,
        fetch: Fetch = fetch_url,
    ) -> None:
        if leave_path is not None and wr_url is None:
            raise ValueError("leave_path needs wr_url, where leaves are reported")
        self.verifier = verifier
        self.room = verifier.room
        self.waiting_url = waiting_url
        self._exact = frozenset(p for p in pass_paths if not p.endswith("/"))
        self._prefixes = tuple(p for p in pass_paths if p.endswith("/"))
        self.site_origin = site_origin.rstrip("/") if site_origin else ""
        self._leave_url = None
        if wr_url is not None:
            base = _http_url(wr_url, "wr_url")
            self._leave_url = f"{base}/api/v1/rooms/{quote(self.room)}/leave"
        self.leave_path = leave_path
        self.after_leave_url = after_leave_url
        secure = "; Secure" if secure_cookies else ""
        self.expired_cookie = (
            f"{ACCESS_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}"
        )
        self.fail_open = fail_open
        self._timeout_s = timeout_s
        self._fetch = fetch

    def is_passed(self, path: str) -> bool:
        # "/static/../account" is not a static asset, whatever the site's
        # router makes of it later.
        if "/./" in path or "/../" in path or path.endswith(("/.", "/..")):
            return False
        return path in self._exact or path.startswith(self._prefixes)

    def decide(
        self,
        method: str,
        path: str,
        query: str,
        token: str | None,
        raw_path: str | None = None,
    ) -> Decision:
        """The decision for one request; may block (see ``Verifier.may_block``).

        ``path`` is decoded (as ASGI's ``path`` and WSGI's ``PATH_INFO``);
        ``raw_path``, if the server has it, is the path as it was sent, and
        becomes the return URL.
        """
        if self.leave_path is not None and path == self.leave_path:
            return self._leave(method, token)
        if self.is_passed(path):
            return Decision("pass")
        if token:
            try:
                return Decision("allow", access=self.verifier.verify(token))
            except Denied as exc:
                reason, detail = exc.reason, exc.detail
            except Unavailable as exc:
                log.warning("wr unavailable room=%s error=%s", self.room, exc)
                if self.fail_open:
                    return Decision("allow", access=Access(sub="", room=self.room))
                reason, detail = "unavailable", "the waiting room cannot be asked"
        else:
            reason, detail = "no_token", "no access token"
        if method in ("GET", "HEAD"):
            location = self.waiting_location(path, query, raw_path)
            return Decision("redirect", 302, location)
        return _deny(401, reason, detail)

    def waiting_location(
        self, path: str, query: str, raw_path: str | None = None
    ) -> str:
        """The waiting page's URL, with the one asked for as ``return=``."""
        if raw_path is None:
            raw_path = quote(path, safe=_PATH_SAFE)
        back = self.site_origin + raw_path + (f"?{query}" if query else "")
        joiner = "&" if "?" in self.waiting_url else "?"
        return f"{self.waiting_url}{joiner}return={quote(back, safe='')}"

    def _leave(self, method: str, token: str | None) -> Decision:
        # POST only: a link or an image on another site must not be able to
        # end someone's session.
        if method != "POST":
            return _deny(405, "method_not_allowed", "use POST", ("allow", "POST"))
        if token:
            self.leave(token)
        return Decision(
            "leave",
            303,
            self.after_leave_url,
            headers=(("set-cookie", self.expired_cookie),),
        )

    def leave(self, token: str) -> bool:
        """Tell wr that the holder of ``token`` has left; True if wr agreed."""
        if self._leave_url is None:
            return False
        try:
            status, _, _ = self._fetch(
                "POST",
                self._leave_url,
                {"authorization": f"Bearer {token}", "content-length": "0"},
                self._timeout_s,
            )
        except Unavailable as exc:
            log.warning("leave not reported room=%s error=%s", self.room, exc)
            return False
        if status != 204:
            log.info("leave refused room=%s status=%s", self.room, status)
        return status == 204


def _deny(status: int, reason: str, detail: str, *extra: tuple[str, str]) -> Decision:
    body = json.dumps({"error": reason, "detail": detail}).encode()
    headers = (("content-type", "application/json"), _NO_STORE, *extra)
    if status == 401:
        headers += (("www-authenticate", 'Bearer realm="wr"'),)
    return Decision("deny", status, body=body, headers=headers)


def token_from(cookie: str | None, authorization: str | None) -> str | None:
    """The access token: the wr cookie first (the site may use Authorization
    for itself), then a bearer token."""
    if cookie:
        prefix = ACCESS_COOKIE + "="
        for part in cookie.split(";"):
            pair = part.strip()
            if pair.startswith(prefix) and len(pair) > len(prefix):
                return pair[len(prefix) :]
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def _response_headers(decision: Decision) -> list[tuple[str, str]]:
    headers = list(decision.headers)
    if decision.location:
        headers += [("location", decision.location), _NO_STORE]
    return headers


# ASGI.

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class GateASGI:
    """ASGI middleware: ``app = GateASGI(site, gate)``.

    HTTP requests and WebSocket handshakes are checked; a WebSocket without
    a valid token is closed with code 1008 (policy violation).
    """

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _asgi_headers(scope)
        token = token_from(headers.get("cookie"), headers.get("authorization"))
        method = scope.get("method", "GET")
        path = scope.get("path", "/")
        raw = scope.get("raw_path")
        # Some servers leave the query in raw_path.
        raw_path = raw.decode("latin-1").split("?", 1)[0] if raw else None
        query = scope.get("query_string", b"").decode("latin-1")
        if token is not None and self.gate.verifier.may_block(token):
            decision = await asyncio.to_thread(
                self.gate.decide, method, path, query, token, raw_path
            )
        else:
            decision = self.gate.decide(method, path, query, token, raw_path)

        if decision.action == "allow":
            scope["wr.access"] = decision.access
        if decision.action in ("allow", "pass"):
            await self.app(scope, receive, self._watch_leave(send, token))
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send(
            {
                "type": "http.response.start",
                "status": decision.status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in _response_headers(decision)
                ],
            }
        )
        await send({"type": "http.response.body", "body": decision.body})

    def _watch_leave(self, send: Send, token: str | None) -> Send:
        gate = self.gate

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                kept = [
                    (k, v) for k, v in headers if k.lower() != LEAVE_HEADER.encode()
                ]
                if len(kept) != len(headers):
                    kept.append((b"set-cookie", gate.expired_cookie.encode("latin-1")))
                    message["headers"] = kept
                    if token:
                        await asyncio.to_thread(gate.leave, token)
            await send(message)

        return watching


def _asgi_headers(scope: Scope) -> dict[str, str]:
    # Several Cookie headers (HTTP/2) are one list, joined with "; ".
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in headers:
            value = headers[name] + ("; " if name == "cookie" else ", ") + value
        headers[name] = value
    return headers


# WSGI.


class GateWSGI:
    """WSGI middleware: ``app.wsgi_app = GateWSGI(app.wsgi_app, gate)``."""

    def __init__(self, app: WSGIApplication, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        token = token_from(
            environ.get("HTTP_COOKIE"), environ.get("HTTP_AUTHORIZATION")
        )
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        # PEP 3333: the path's bytes arrive decoded as latin-1.
        raw_path = quote(path.encode("latin-1", "replace"), safe=_PATH_SAFE)
        decision = self.gate.decide(
            environ.get("REQUEST_METHOD", "GET"),
            path,
            environ.get("QUERY_STRING", ""),
            token,
            raw_path,
        )
        if decision.action == "allow":
            environ["wr.access"] = decision.access
        if decision.action in ("allow", "pass"):
            return self.app(environ, self._watch_leave(start_response, token))
        start_response(_status_line(decision.status), _response_headers(decision))
        return [decision.body]

    def _watch_leave(
        self, start_response: StartResponse, token: str | None
    ) -> StartResponse:
        gate = self.gate

        def watching(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None, /
        ) -> Callable[[bytes], object]:
            kept = [(k, v) for k, v in headers if k.lower() != LEAVE_HEADER]
            if len(kept) != len(headers):
                kept.append(("Set-Cookie", gate.expired_cookie))
                if token:
                    gate.leave(token)
            return start_response(status, kept, exc_info)

        return watching


def _status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"
