"""Routes: map a request to a room and tokens, answer with orjson.

Every route is a plain function of the request (see :mod:`wr.http`): the
room counters, the key ring and the metrics are handed in, and nothing here
keeps state between requests.

Tokens are read from the ``Authorization: Bearer`` header first (mobile
clients), then from the room's cookie. ``verify`` reads the access cookie
first, because the protected site may use ``Authorization`` for itself.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import orjson

from wr.config import Config, RoomConfig
from wr.cors import Cors
from wr.http import Request, Response, error_response
from wr.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from wr.metrics import Metrics
from wr.pow import ChallengeError, ProofOfWork, derive_key
from wr.returnurl import MAX_RETURN_BYTES, safe_return
from wr.room import Room, next_poll_s
from wr.static import StaticFiles
from wr.tokens import Claims, TokenError, Tokens, new_session_id, random_bytes
from wr.waitpage import WaitPage

__all__ = ["ACCESS_COOKIE", "QUEUE_COOKIE", "App"]

log = logging.getLogger("wr.server")
# The access log (``server.access_log``): one line per request.
access_log = logging.getLogger("wr.access")

# Bound once: read twice per request when metrics are on.
_perf_counter = time.perf_counter

QUEUE_COOKIE = "wr_queue"
ACCESS_COOKIE = "wr_access"
ROOMS_PREFIX = "/api/v1/rooms/"
# RFC 7517 section 8.5.
JWKS_CONTENT_TYPE = "application/jwk-set+json"

_NO_STORE = ("cache-control", "no-store")
# While the shared store is out of reach, joins are asked to come back after
# this long: reconnection backs off to a few seconds.
STORE_RETRY_AFTER_S = 5
_GET = ("GET", "HEAD")


def _json(
    status: int, data: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    return Response(status, orjson.dumps(data), [_NO_STORE, *(headers or [])])


def _error(status: int, error: str, detail: str, *extra: tuple[str, str]) -> Response:
    return error_response(status, error, detail, [_NO_STORE, *extra])


def _method_not_allowed(allowed: tuple[str, ...]) -> Response:
    return _error(
        405,
        "method_not_allowed",
        "method not allowed here",
        ("allow", ", ".join(allowed)),
    )


class App:
    """The waiting room's HTTP API."""

    def __init__(
        self,
        config: Config,
        rooms: Mapping[str, Room],
        tokens: Tokens,
        metrics: Metrics,
        static: StaticFiles,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        ready: Callable[[], bool] = lambda: True,
        proof_of_work: ProofOfWork | None = None,
        save_failing: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self.rooms = rooms
        self.tokens = tokens
        self.metrics = metrics
        self.static = static
        self._clock = clock
        self._rand = rand
        self._ready = ready
        # One per process, kept across reloads by the worker, so that the
        # challenges it accepted stay refused (wr.pow).
        self.proof_of_work = proof_of_work or ProofOfWork(
            pow_key(tokens), rand=random_bytes
        )
        self._save_failing = save_failing
        self._secure = "; Secure" if config.http.secure_cookies else ""
        self._count = config.metrics.enabled
        self._access_log = config.server.access_log
        self._cors = Cors(config.http.cors_origins, config.http.cors_max_age_s)
        self._wait_page = WaitPage(static)
        self._routes: dict[
            str, tuple[str, tuple[str, ...], Callable[[Request], Response]]
        ] = {
            "/api/v1/verify": ("verify", _GET, self.verify),
            "/.well-known/jwks.json": ("jwks", _GET, self.jwks),
            "/healthz": ("healthz", _GET, self.healthz),
            "/readyz": ("readyz", _GET, self.readyz),
            "/inside": ("inside", _GET, self.inside),
            "/": (
                "static",
                _GET,
                lambda request: self.static_file(request, "index.html"),
            ),
        }
        if config.metrics.enabled and config.metrics.listener == "public":
            self._routes["/metrics"] = ("metrics", _GET, self.metrics_page)
        self._room_routes: dict[
            str, tuple[tuple[str, ...], Callable[[Request, Room], Response]]
        ] = {
            "join": (("POST",), self.join),
            "status": (_GET, self.status),
            "leave": (("POST",), self.leave),
            "bypass": (_GET, self.bypass),
            "challenge": (_GET, self.challenge),
            "wait": (_GET, self.wait_page),
            "": (_GET, self.room_info),
        }

    # Dispatch.

    def handle(self, request: Request) -> Response:
        if self._count:
            started = _perf_counter()
            route, response = self._dispatch(request)
            self.metrics.observe(route, response.status, _perf_counter() - started)
        else:
            route, response = self._dispatch(request)
        if self._cors:
            response.headers.extend(self._cors.headers(request, response))
        if self._access_log:
            _log_access(request, response, self._clock())
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request method=%s path=%s status=%s",
                request.method,
                request.path,
                response.status,
            )
        return response

    def _dispatch(self, request: Request) -> tuple[str, Response]:
        path = request.path
        if path.startswith(ROOMS_PREFIX):
            return self._dispatch_room(request, path[len(ROOMS_PREFIX) :])
        if path.startswith("/static/"):
            return "static", self._allowed(
                request, _GET, lambda r: self.static_file(r, path[len("/static/") :])
            )
        entry = self._routes.get(path)
        if entry is None:
            return "not_found", _error(404, "not_found", "no such resource")
        route, methods, handler = entry
        return route, self._allowed(request, methods, handler)

    def _dispatch_room(self, request: Request, rest: str) -> tuple[str, Response]:
        name, _, action = rest.partition("/")
        entry = self._room_routes.get(action)
        if entry is None:
            return "not_found", _error(404, "not_found", "no such resource")
        methods, handler = entry
        room = self.rooms.get(name)
        if room is None:
            return action, _error(404, "unknown_room", f"no room named {name[:64]!r}")
        return action, self._allowed(request, methods, lambda r: handler(r, room))

    def _allowed(
        self,
        request: Request,
        methods: tuple[str, ...],
        handler: Callable[[Request], Response],
    ) -> Response:
        if request.method in methods:
            return handler(request)
        if request.method == "OPTIONS":
            return Response(
                204, headers=[("allow", ", ".join(methods))], content_type=None
            )
        return _method_not_allowed(methods)

    # The queue.

    def join(self, request: Request, room: Room) -> Response:
        """Give the caller a place in line, or their existing one back."""
        now = self._clock()
        token = request.bearer() or request.cookie(QUEUE_COOKIE)
        if token:
            try:
                claims = self._check(token, room, "queue", now)
            except TokenError as exc:
                # A stale or foreign token earns a new place, not an error.
                self.metrics.token_rejected("queue", exc.reason)
            else:
                return self._place(room, claims, token, now, None)

        phase = room.phase()
        if phase == "closed":
            return _error(410, "closed", "this room is closed")
        if room.joins_held:
            # The shared store is out of reach (redis backend): a position
            # cannot be promised unique, so none is handed out.
            return _error(
                503,
                "updating",
                "the line cannot take new places right now",
                ("retry-after", str(STORE_RETRY_AFTER_S)),
            )
        max_queue = room.config.max_queue
        if max_queue is not None and room.waiting >= max_queue:
            return _error(503, "queue_full", "the line is full", ("retry-after", "30"))
        if room.pow_difficulty:
            refused = self._check_pow(request, room, now)
            if refused is not None:
                return refused
        position = room.join()
        if position is None:
            # Arrivals outran the positions the supervisor has saved ahead;
            # it saves more within a tick.
            return _error(
                503, "try_again", "too many arrivals at once", ("retry-after", "1")
            )
        room.check_in(position, now, now)
        eta = room.eta_s(position)
        room.last_eta = -1 if eta is None else eta
        token = self.tokens.issue_queue(
            room.name, new_session_id(), position, eta, room.issue_time(now)
        )
        return self._waiting(room, position, token, eta, set_cookie=True)

    def challenge(self, request: Request, room: Room) -> Response:
        """A proof-of-work challenge to solve before joining (see wr.pow)."""
        return _json(200, self._challenge_document(room, self._clock()))

    def _challenge_document(self, room: Room, now: float) -> dict[str, object]:
        challenge = self.proof_of_work.issue(room.name, room.pow_difficulty, now)
        self.metrics.pow_outcome(room.name, "issued")
        return {
            "room": room.name,
            "challenge": challenge.text,
            "difficulty": challenge.difficulty,
            "expires": challenge.expires,
            "algorithm": "sha256-leading-zero-bits",
        }

    def _check_pow(self, request: Request, room: Room, now: float) -> Response | None:
        """None if the join carries a fresh solution; else the refusal."""
        try:
            proof = _json_object(request.body).get("pow")
        except ValueError:
            return _error(400, "bad_body", "the body must be a JSON object")
        if not isinstance(proof, dict):
            return self._pow_refused(room, now, "missing", "solve a challenge first")
        try:
            difficulty = self.proof_of_work.verify(
                proof.get("challenge"), proof.get("counter"), room.name, now
            )
        except ChallengeError as exc:
            return self._pow_refused(room, now, exc.reason, exc.detail)
        # A challenge handed out while the room asked for less (or nothing)
        # does not do once the room asks for more.
        if difficulty < max(1, room.config.pow_difficulty):
            return self._pow_refused(room, now, "too_easy", "ask for a new challenge")
        self.metrics.pow_outcome(room.name, "accepted")
        solve_ms = proof.get("solve_ms")
        if isinstance(solve_ms, int | float) and not isinstance(solve_ms, bool):
            self.metrics.pow_solved_in(room.name, solve_ms / 1000)
        return None

    def _pow_refused(
        self, room: Room, now: float, reason: str, detail: str
    ) -> Response:
        # The refusal carries a fresh challenge: one round trip, not two.
        self.metrics.pow_outcome(room.name, reason)
        body = {
            "error": "pow_required" if reason == "missing" else f"pow_{reason}",
            "detail": detail,
            "challenge": self._challenge_document(room, now),
        }
        return _json(403, body)

    def status(self, request: Request, room: Room) -> Response:
        """Where the caller stands; once it is their turn, the access token."""
        token = request.bearer() or request.cookie(QUEUE_COOKIE)
        if not token:
            return _error(401, "no_token", "join the room first")
        now = self._clock()
        try:
            claims = self._check(token, room, "queue", now)
        except TokenError as exc:
            self.metrics.token_rejected("queue", exc.reason)
            return _error(401, exc.reason, exc.detail)
        return self._place(
            room, claims, token, now, _query_param(request.query, "return")
        )

    def _check(self, token: str, room: Room, typ: str, now: float) -> Claims:
        """A valid token of kind ``typ`` for ``room``, or TokenError."""
        claims = self.tokens.check(token, room.name, typ, now, room.reset_at)
        # Tokens carry whole seconds; a place in the old line is known by
        # its position too, which two resets in one second cannot blur.
        # (Bypass admissions carry no place: their pos is 0 or negative.)
        if 0 < claims.pos < room.reset_position:
            raise TokenError("reset", "token was issued before the room was reset")
        return claims

    def _place(
        self, room: Room, claims: Claims, token: str, now: float, back: str | None
    ) -> Response:
        """Where a holder of a valid queue token stands; ``back`` is ``return=``."""
        room.check_in(claims.pos, claims.iat, now)
        if not room.is_admitted(claims.pos):
            eta = room.eta_s(claims.pos)
            return self._waiting(room, claims.pos, token, eta, set_cookie=False)

        # Counted once per position, however often the person asks.
        room.claim(claims.pos, now, max(0.0, now - claims.iat))
        config = room.config
        redirect = safe_return(back, config.target_url, config.allowed_targets)
        return self._admit(room, claims.sub, claims.pos, now, redirect)

    def _admit(
        self,
        room: Room,
        sub: str,
        position: int,
        now: float,
        redirect: str | None = None,
    ) -> Response:
        ttl = _session_ttl_s(room.config, self.config.tokens.access_ttl_s)
        access = self.tokens.issue_access(
            room.name, sub, position, ttl, room.issue_time(now)
        )
        cookie = (
            f"{ACCESS_COOKIE}={access}; Path=/; Max-Age={ttl}; HttpOnly; "
            f"SameSite=Lax{self._secure}"
        )
        body = {
            "state": "admitted",
            "position": position,
            "redirect": redirect or room.config.target_url,
            "access_token": access,
        }
        return _json(200, body, [("set-cookie", cookie)])

    def _waiting(
        self,
        room: Room,
        position: int,
        token: str,
        eta: int | None,
        *,
        set_cookie: bool,
    ) -> Response:
        phase = room.phase()
        body: dict[str, object]
        if phase == "closed":
            body = {"state": "closed", "position": position}
        elif phase == "prequeue":
            opens_at = room.config.opens_at_s
            wait = None if opens_at is None else max(0, int(opens_at - self._clock()))
            body = {
                "state": "prequeue",
                "position": position,
                "opens_at": room.config.opens_at,
                "next_poll_s": next_poll_s(wait, self._rand),
                "queue_token": token,
            }
        else:
            paused = phase == "paused"
            body = {
                "state": phase,
                "position": position,
                "ahead": room.ahead(position),
                "eta_s": None if paused else eta,
                "next_poll_s": next_poll_s(None if paused else eta, self._rand),
                "queue_token": token,
            }
        if room.stale:
            # serving is the last value read from the shared store.
            body["stale"] = True
        headers = []
        if set_cookie:
            ttl = self.config.tokens.queue_ttl_s
            headers.append(
                (
                    "set-cookie",
                    f"{QUEUE_COOKIE}={token}; Path={ROOMS_PREFIX}{room.name}; "
                    f"Max-Age={ttl}; HttpOnly; SameSite=Lax{self._secure}",
                )
            )
        return _json(200, body, headers)

    def leave(self, request: Request, room: Room) -> Response:
        """A person inside says they are done: their place frees up now."""
        token = request.cookie(ACCESS_COOKIE) or request.bearer()
        if not token:
            return _error(401, "no_token", "no access token")
        now = self._clock()
        try:
            claims = self._check(token, room, "access", now)
        except TokenError as exc:
            self.metrics.token_rejected("access", exc.reason)
            return _error(401, exc.reason, exc.detail)
        session_s = _session_ttl_s(room.config, self.config.tokens.access_ttl_s)
        room.leave(claims.pos, claims.iat, now, session_s)
        # The same attributes as when it was set: a browser may keep a
        # Secure cookie that a plainer Set-Cookie tries to clear.
        expired = (
            f"{ACCESS_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{self._secure}"
        )
        return Response(
            204, headers=[_NO_STORE, ("set-cookie", expired)], content_type=None
        )

    def wait_page(self, request: Request, room: Room) -> Response:
        """The waiting page for browsers without JavaScript (``<noscript>``)."""
        return self._wait_page.respond(self.join(request, room))

    def bypass(self, request: Request, room: Room) -> Response:
        """An invite link: a valid bypass token goes straight in."""
        token = _query_param(request.query, "token") or ""
        now = self._clock()
        try:
            claims = self._check(token, room, "bypass", now)
        except TokenError as exc:
            self.metrics.token_rejected("bypass", exc.reason)
            return _error(401, exc.reason, exc.detail)
        # The access token carries the admission's number, negated, where a
        # place in line would be: its leave then counts once.
        number = room.count_inside(now)
        response = self._admit(room, claims.sub, -number, now)
        response.status = 302
        response.headers.append(("location", room.config.target_url))
        return response

    def room_info(self, request: Request, room: Room) -> Response:
        """The room as the public sees it; after opening, the draw's seed."""
        prequeue = room.prequeue
        draw = prequeue.draw if prequeue else None
        return _json(
            200,
            {
                "room": room.name,
                "state": room.state(),
                "opens_at": room.config.opens_at,
                "waiting": room.waiting,
                "prequeue_size": draw.size if draw else 0,
                "draw_seed": draw.seed_hex if draw else None,
                "draw_gaps": [list(gap) for gap in prequeue.gaps] if prequeue else [],
                "pow_difficulty": room.pow_difficulty,
            },
        )

    # The gateway's question.

    def verify(self, request: Request) -> Response:
        """204 if the request carries a valid access token for the room, else 401."""
        room_name = _query_param(request.query, "room")
        if room_name is None:
            if len(self.rooms) != 1:
                return _error(400, "room_required", "say which room: ?room=NAME")
            room_name = next(iter(self.rooms))
        room = self.rooms.get(room_name)
        if room is None:
            return _error(404, "unknown_room", f"no room named {room_name[:64]!r}")

        token = request.cookie(ACCESS_COOKIE) or request.bearer()
        if not token:
            return _refused(request, "no_token", "no access token")
        try:
            claims = self._check(token, room, "access", self._clock())
        except TokenError as exc:
            self.metrics.token_rejected("access", exc.reason)
            return _refused(request, exc.reason, exc.detail)
        return Response(
            204, headers=[_NO_STORE, ("x-wr-session", claims.sub)], content_type=None
        )

    def jwks(self, request: Request) -> Response:
        """The public keys of the ring as a JWK set; empty with HS256."""
        body = orjson.dumps(self.tokens.jwks(self._clock()))
        max_age = self.config.tokens.jwks_max_age_s
        headers = [("cache-control", f"public, max-age={max_age}")]
        return Response(200, body, headers, JWKS_CONTENT_TYPE)

    # Service endpoints.

    def healthz(self, request: Request) -> Response:
        return _json(200, {"status": "alive"})

    def readyz(self, request: Request) -> Response:
        """Ready while it takes new work; a failing state dir is only reported.

        Saves failing leave the host serving from memory, as well as ever;
        taking it out of rotation for that would turn a risk to the crash
        guarantee into an outage, on the only host of a small deployment
        at once. So the answer stays 200 and says ``"state": "failing"``,
        for monitoring (also ``wr_state_save_failing``) to page on.
        """
        if self._ready():
            state = "failing" if self._save_failing() else "saved"
            return _json(200, {"status": "ready", "state": state})
        return _error(503, "not_ready", "not accepting new work", ("retry-after", "1"))

    def metrics_page(self, request: Request) -> Response:
        return Response(
            200, self.metrics.exposition(), [_NO_STORE], METRICS_CONTENT_TYPE
        )

    def static_file(self, request: Request, name: str) -> Response:
        response = self.static.respond(request, name)
        if response is None:
            return _error(404, "not_found", "no such file")
        return response

    def inside(self, request: Request) -> Response:
        """The demo "you're in" page: shown with a valid access token only."""
        token = request.cookie(ACCESS_COOKIE) or ""
        now = self._clock()
        for room in self.rooms.values():
            try:
                self._check(token, room, "access", now)
            except TokenError:
                continue
            page = self.static.get("inside.html")
            if page is None:
                return _error(404, "not_found", "no such file")
            return Response(200, page.body, [_NO_STORE], page.content_type)
        return Response(302, headers=[("location", "/"), _NO_STORE], content_type=None)


def _log_access(request: Request, response: Response, now: float) -> None:
    # Common Log Format. The query is left out: bypass links carry a token.
    when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))
    access_log.info(
        '%s - - [%s] "%s %s HTTP/%s" %s %s',
        request.peer,
        when,
        request.method,
        request.path,
        request.http_version,
        response.status,
        len(response.body) if response.body else "-",
    )


def _refused(request: Request, reason: str, detail: str) -> Response:
    """verify's 401, with the original URL encoded for nginx's redirect.

    nginx cannot percent-encode, so it sends the URL it guards in
    ``X-Original-URI`` and reads ``X-WR-Return`` back (``auth_request_set``)
    to build the waiting page's ``return=``; see examples/nginx/wr.conf.
    """
    headers = [("www-authenticate", 'Bearer realm="wr"')]
    original = request.header(b"x-original-uri")
    if original and len(original) <= MAX_RETURN_BYTES:
        headers.append(("x-wr-return", quote(original, safe="")))
    return _error(401, reason, detail, *headers)


def _session_ttl_s(room: RoomConfig, default_s: int) -> int:
    if room.session_minutes is None:
        return default_s
    return int(room.session_minutes * 60)


def pow_key(tokens: Tokens) -> bytes:
    """The proof-of-work key: derived from the active signing secret."""
    return derive_key(tokens.ring.secrets[tokens.ring.active])


def _json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; an empty body is an empty object."""
    if not body.strip():
        return {}
    data = orjson.loads(body)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _query_param(query: str, name: str) -> str | None:
    prefix = name + "="
    for part in query.split("&"):
        if part.startswith(prefix):
            return part[len(prefix) :]
    return None
