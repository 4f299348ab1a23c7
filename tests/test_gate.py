"""wr.gate without sockets: verifiers with a fake fetch and a held clock,
the decisions, and both middlewares driven by hand."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.test_api import T0 as NOW
from tests.test_api import Clock
from wr.config import TokensConfig
from wr.gate import (
    JWKS_REFETCH_S,
    JWKS_TTL_S,
    MAX_JWKS_BYTES,
    Access,
    Denied,
    Gate,
    GateASGI,
    GateWSGI,
    JWKSVerifier,
    Message,
    Receive,
    RemoteVerifier,
    Scope,
    SecretVerifier,
    Send,
    Unavailable,
    token_from,
)
from wr.tokens import LEEWAY_S, KeyRing, Tokens

ROOM = "sale"
SUB = "s" * 22
JWKS_URL = "http://wr.test/.well-known/jwks.json"
WAITING = "https://shop.test/queue/?room=sale"
CONFIG = TokensConfig(algorithm="EdDSA", queue_ttl_s=900, access_ttl_s=600)

Answer = tuple[int, dict[str, str], bytes]


class FakeWr:
    """Stands for wr's HTTP side: records calls, answers from a table."""

    def __init__(self, tokens: Tokens, clock: Clock) -> None:
        self.tokens = tokens
        self.clock = clock
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.fail = False
        self.answers: dict[str, Answer] = {}

    def __call__(self, method: str, url: str, headers: Any, timeout_s: float) -> Answer:
        self.calls.append((method, url, dict(headers)))
        if self.fail:
            raise Unavailable("connection refused")
        for key, answer in self.answers.items():
            if key in url:
                return answer
        if url.endswith("/.well-known/jwks.json"):
            body = json.dumps(self.tokens.jwks(self.clock.now)).encode()
            return 200, {"content-type": "application/jwk-set+json"}, body
        if "/leave" in url:
            return 204, {}, b""
        return 404, {}, b'{"error": "not_found"}'

    def count(self, fragment: str) -> int:
        return sum(fragment in url for _, url, _ in self.calls)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate("EdDSA")


@pytest.fixture
def tokens(ring: KeyRing) -> Tokens:
    return Tokens(ring, CONFIG)


@pytest.fixture
def wr(tokens: Tokens, clock: Clock) -> FakeWr:
    return FakeWr(tokens, clock)


@pytest.fixture
def verifier(wr: FakeWr, clock: Clock) -> JWKSVerifier:
    return JWKSVerifier(ROOM, JWKS_URL, fetch=wr, clock=clock)


def access(tokens: Tokens, room: str = ROOM, ttl: int = 600, at: float = NOW) -> str:
    return tokens.issue_access(room, SUB, 7, ttl, at)


def denied(verifier: Any, token: str) -> str:
    with pytest.raises(Denied) as caught:
        verifier.verify(token)
    return caught.value.reason


# JWKSVerifier.


def test_jwks_verifier_accepts_a_valid_token(
    verifier: JWKSVerifier, tokens: Tokens
) -> None:
    token = access(tokens)

    assert verifier.verify(token) == Access(
        sub=SUB, room=ROOM, pos=7, exp=int(NOW) + 600, token=token
    )


def test_jwks_verifier_refuses_with_wr_reasons(
    verifier: JWKSVerifier, tokens: Tokens, clock: Clock
) -> None:
    assert denied(verifier, access(tokens, room="other")) == "wrong_room"
    assert denied(verifier, tokens.issue_queue(ROOM, SUB, 1, 5, NOW)) == "wrong_type"
    assert denied(verifier, "garbage") == "malformed"
    assert denied(verifier, access(tokens, at=NOW + 60)) == "not_yet_valid"
    expired = access(tokens, ttl=60, at=NOW - 60 - LEEWAY_S)
    assert denied(verifier, expired) == "expired"


def test_jwks_verifier_refuses_forged_and_confused_tokens(
    verifier: JWKSVerifier, tokens: Tokens, ring: KeyRing
) -> None:
    other = Tokens(KeyRing.generate("EdDSA"), CONFIG)
    forged = other.issue_access(ROOM, SUB, 8, 600, NOW)
    payload = forged.split(".")[1]
    ours = access(tokens).split(".")
    hs = Tokens(KeyRing.generate(), dataclasses.replace(CONFIG, algorithm="HS256"))

    assert denied(verifier, forged) == "unknown_kid"
    assert denied(verifier, f"{ours[0]}.{payload}.{ours[2]}") == "bad_signature"
    assert denied(verifier, hs.issue_access(ROOM, SUB, 7, 600, NOW)) == "bad_algorithm"


def test_keys_are_fetched_once_and_kept(
    verifier: JWKSVerifier, tokens: Tokens, wr: FakeWr, clock: Clock
) -> None:
    token = access(tokens)
    for _ in range(5):
        verifier.verify(token)
    clock.now += JWKS_TTL_S - 1
    verifier.verify(token)

    assert wr.count("jwks") == 1
    clock.now += 2
    assert verifier.may_block(token)
    verifier.verify(token)
    assert wr.count("jwks") == 2


def test_an_unknown_kid_refetches_the_keys_after_a_rotation(
    verifier: JWKSVerifier, wr: FakeWr, ring: KeyRing, clock: Clock
) -> None:
    verifier.verify(access(wr.tokens))
    clock.now += JWKS_REFETCH_S
    wr.tokens = Tokens(ring.rotate(clock.now, 3600), CONFIG)
    token = access(wr.tokens, at=clock.now)

    assert verifier.may_block(token)
    assert verifier.verify(token).sub == SUB
    assert wr.count("jwks") == 2


def test_unknown_kids_refetch_at_most_once_per_interval(
    verifier: JWKSVerifier, tokens: Tokens, wr: FakeWr, clock: Clock
) -> None:
    verifier.verify(access(tokens))
    strangers = [
        Tokens(KeyRing.generate("EdDSA"), CONFIG).issue_access(ROOM, SUB, 1, 600, NOW)
        for _ in range(20)
    ]
    clock.now += JWKS_REFETCH_S
    for token in strangers:
        assert denied(verifier, token) == "unknown_kid"

    assert wr.count("jwks") == 2
    assert not verifier.may_block(strangers[0])


def test_a_failed_fetch_keeps_the_keys_and_is_not_retried_at_once(
    verifier: JWKSVerifier, tokens: Tokens, wr: FakeWr, clock: Clock
) -> None:
    token = access(tokens)
    verifier.verify(token)
    clock.now += JWKS_TTL_S
    wr.fail = True

    assert verifier.verify(token).sub == SUB
    assert verifier.verify(token).sub == SUB
    assert wr.count("jwks") == 2


def test_without_keys_every_token_is_refused(
    verifier: JWKSVerifier, tokens: Tokens, wr: FakeWr
) -> None:
    wr.fail = True
    assert denied(verifier, access(tokens)) == "unknown_kid"


@pytest.mark.parametrize(
    "answer",
    [
        (500, {}, b"oops"),
        (200, {}, b"not json"),
        (200, {}, b'{"keys": {}}'),
        (200, {}, b"[]"),
        (200, {}, b" " * (MAX_JWKS_BYTES + 1)),
    ],
)
def test_bad_key_sets_are_ignored(
    verifier: JWKSVerifier, tokens: Tokens, wr: FakeWr, answer: Answer
) -> None:
    wr.answers["jwks"] = answer
    assert denied(verifier, access(tokens)) == "unknown_kid"


def test_foreign_entries_in_the_key_set_are_skipped(
    verifier: JWKSVerifier, tokens: Tokens, wr: FakeWr
) -> None:
    (ours,) = tokens.jwks(NOW)["keys"]
    keys = [
        {"kty": "oct", "k": "c2VjcmV0", "kid": ours["kid"]},
        {**ours, "use": "enc"},
        {**ours, "x": "not base64!"},
        "not an object",
        ours,
    ]
    wr.answers["jwks"] = (200, {}, json.dumps({"keys": keys}).encode())

    assert verifier.verify(access(tokens)).sub == SUB


def test_jwks_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="jwks_url"):
        JWKSVerifier(ROOM, "file:///etc/passwd")


# SecretVerifier and RemoteVerifier.


def test_secret_verifier_reads_the_hs256_keys_of_a_key_ring(
    tmp_path: Path, clock: Clock
) -> None:
    ring = KeyRing.generate("HS256").rotate(NOW, 3600, "EdDSA").rotate(NOW, 3600)
    ring.save(tmp_path)
    hs_ring = KeyRing.generate("HS256")
    hs_tokens = Tokens(hs_ring, dataclasses.replace(CONFIG, algorithm="HS256"))
    hs_ring.save(tmp_path / "hs")

    verifier = SecretVerifier.from_key_ring(
        tmp_path / "hs" / "keys.json", ROOM, clock=clock
    )
    token = access(hs_tokens)
    assert verifier.verify(token).pos == 7
    assert not verifier.may_block(token)
    assert denied(SecretVerifier(ROOM, {"x": bytes(32)}), token) == "unknown_kid"
    wrong = SecretVerifier(ROOM, {hs_ring.active: bytes(32)}, clock=clock)
    assert denied(wrong, token) == "bad_signature"
    only_eddsa = SecretVerifier.from_key_ring(tmp_path / "keys.json", ROOM)
    assert denied(only_eddsa, token) == "unknown_kid"


def test_secret_verifier_refuses_eddsa(tokens: Tokens, clock: Clock) -> None:
    verifier = SecretVerifier(ROOM, {tokens.ring.active: bytes(32)}, clock=clock)
    assert denied(verifier, access(tokens)) == "bad_algorithm"


def test_remote_verifier_asks_wr_with_the_token_as_bearer(wr: FakeWr) -> None:
    wr.answers["verify"] = (204, {"x-wr-session": SUB}, b"")
    verifier = RemoteVerifier(ROOM, "http://wr.test/", fetch=wr)

    assert verifier.verify("tok").sub == SUB
    (method, url, headers) = wr.calls[0]
    assert (method, url) == ("GET", "http://wr.test/api/v1/verify?room=sale")
    assert headers["authorization"] == "Bearer tok"
    assert verifier.may_block("tok")


def test_remote_verifier_passes_on_wr_reason(wr: FakeWr) -> None:
    verifier = RemoteVerifier(ROOM, "http://wr.test", fetch=wr)
    wr.answers["verify"] = (401, {}, b'{"error": "expired", "detail": "old"}')
    assert denied(verifier, "tok") == "expired"
    wr.answers["verify"] = (401, {}, b"<html>")
    assert denied(verifier, "tok") == "refused"
    wr.answers["verify"] = (502, {}, b"")
    with pytest.raises(Unavailable):
        verifier.verify("tok")


# Gate decisions.


def make_gate(verifier: Any, wr: FakeWr, **options: Any) -> Gate:
    return Gate(
        verifier,
        waiting_url=WAITING,
        pass_paths=("/healthz", "/static/"),
        wr_url="http://wr.test",
        fetch=wr,
        **options,
    )


def test_a_valid_token_is_allowed_with_its_claims(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    decision = make_gate(verifier, wr).decide("GET", "/shop", "", access(wr.tokens))

    assert decision.action == "allow"
    assert decision.access is not None
    assert decision.access.sub == SUB


def test_a_newcomer_is_sent_to_the_waiting_page_with_the_return_url(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    decision = make_gate(verifier, wr).decide("GET", "/shop/item", "id=7&c=red", None)

    assert (decision.action, decision.status) == ("redirect", 302)
    assert decision.location == (WAITING + "&return=%2Fshop%2Fitem%3Fid%3D7%26c%3Dred")


def test_an_invalid_token_is_sent_to_the_waiting_page_too(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    expired = access(wr.tokens, ttl=60, at=NOW - 600)
    decision = make_gate(verifier, wr).decide("GET", "/", "", expired)

    assert decision.location == WAITING + "&return=%2F"


def test_site_origin_makes_the_return_url_absolute(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    gate = make_gate(verifier, wr, site_origin="https://shop.test/")
    gate.waiting_url = "/queue/"

    location = gate.waiting_location("/a", "")
    assert location == "/queue/?return=https%3A%2F%2Fshop.test%2Fa"


def test_other_methods_without_access_get_a_json_401(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    decision = make_gate(verifier, wr).decide("POST", "/cart", "", "garbage")

    assert decision.status == 401
    assert json.loads(decision.body) == {
        "error": "malformed",
        "detail": "token is not a JWT",
    }
    assert ("www-authenticate", 'Bearer realm="wr"') in decision.headers


@pytest.mark.parametrize(
    ("path", "action"),
    [
        ("/healthz", "pass"),
        ("/healthz/deep", "redirect"),
        ("/static/app.css", "pass"),
        ("/static", "redirect"),
        ("/staticx/a", "redirect"),
        ("/", "redirect"),
    ],
)
def test_configured_paths_pass_unchecked(
    verifier: JWKSVerifier, wr: FakeWr, path: str, action: str
) -> None:
    assert make_gate(verifier, wr).decide("GET", path, "", None).action == action
    assert wr.calls == []


@pytest.mark.parametrize(
    "path",
    ["/static/../account", "/static/./../a", "/static/..", "/healthz/..", "/static/."],
)
def test_dot_segments_never_pass_unchecked(
    verifier: JWKSVerifier, wr: FakeWr, path: str
) -> None:
    assert make_gate(verifier, wr).decide("GET", path, "", None).action == "redirect"


def test_an_overlong_token_is_refused_unread(verifier: JWKSVerifier) -> None:
    assert denied(verifier, "e" * 5000) == "malformed"


def test_the_token_stays_out_of_the_access_repr(
    verifier: JWKSVerifier, tokens: Tokens
) -> None:
    token = access(tokens)
    assert token not in repr(verifier.verify(token))


def test_when_wr_cannot_be_asked_people_wait_unless_fail_open(wr: FakeWr) -> None:
    wr.fail = True
    remote = RemoteVerifier(ROOM, "http://wr.test", fetch=wr)

    assert make_gate(remote, wr).decide("GET", "/", "", "tok").action == "redirect"
    closed = make_gate(remote, wr).decide("POST", "/", "", "tok")
    assert json.loads(closed.body)["error"] == "unavailable"
    opened = make_gate(remote, wr, fail_open=True).decide("GET", "/", "", "tok")
    assert opened.action == "allow"


def test_the_leave_path_reports_the_leave_and_clears_the_cookie(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    gate = make_gate(verifier, wr, leave_path="/done", after_leave_url="/bye")
    decision = gate.decide("POST", "/done", "", "tok")

    assert (decision.action, decision.status, decision.location) == (
        "leave",
        303,
        "/bye",
    )
    assert ("set-cookie", gate.expired_cookie) in decision.headers
    assert "Max-Age=0" in gate.expired_cookie
    (method, url, headers) = wr.calls[0]
    assert (method, url) == ("POST", "http://wr.test/api/v1/rooms/sale/leave")
    assert headers["authorization"] == "Bearer tok"


def test_the_leave_path_takes_post_only(verifier: JWKSVerifier, wr: FakeWr) -> None:
    gate = make_gate(verifier, wr, leave_path="/done")

    assert gate.decide("GET", "/done", "", "tok").status == 405
    assert wr.calls == []


def test_a_leave_that_wr_cannot_take_is_not_an_error(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    gate = make_gate(verifier, wr)
    wr.fail = True
    assert gate.leave("tok") is False
    wr.fail = False
    wr.answers["leave"] = (401, {}, b'{"error": "expired"}')
    assert gate.leave("tok") is False


def test_leave_path_needs_wr_url(verifier: JWKSVerifier) -> None:
    with pytest.raises(ValueError, match="wr_url"):
        Gate(verifier, waiting_url=WAITING, leave_path="/done")


@pytest.mark.parametrize(
    ("cookie", "authorization", "token"),
    [
        ("wr_access=abc", None, "abc"),
        ("a=1; wr_access=abc; b=2", "Bearer other", "abc"),
        ("wr_access_x=1; xwr_access=2", "Bearer tok", "tok"),
        ("wr_access=", "bearer tok ", "tok"),
        (None, "Basic dXNlcg==", None),
        (None, None, None),
        (None, "Bearer ", None),
    ],
)
def test_the_token_comes_from_the_cookie_then_the_bearer(
    cookie: str | None, authorization: str | None, token: str | None
) -> None:
    assert token_from(cookie, authorization) == token


# The ASGI middleware.


async def site(scope: Scope, receive: Receive, send: Send) -> None:
    extra = [(b"x-wr-leave", b"1")] if scope["path"] == "/thanks" else []
    access_seen = scope.get("wr.access")
    body = f"site {access_seen.sub if access_seen else '-'}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})


def run_asgi(
    app: GateASGI, path: str, headers: list[tuple[bytes, bytes]], kind: str = "http"
) -> list[Message]:
    scope = {
        "type": kind,
        "method": "GET",
        "path": path,
        "query_string": b"x=1",
        "headers": headers,
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_asgi_lets_a_token_holder_in_and_hands_over_the_claims(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    app = GateASGI(site, make_gate(verifier, wr))
    cookie = f"wr_access={access(wr.tokens)}".encode()

    sent = run_asgi(app, "/shop", [(b"cookie", cookie)])
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == f"site {SUB}".encode()


def test_asgi_redirects_a_newcomer(verifier: JWKSVerifier, wr: FakeWr) -> None:
    sent = run_asgi(GateASGI(site, make_gate(verifier, wr)), "/shop", [])

    assert sent[0]["status"] == 302
    headers = dict(sent[0]["headers"])
    assert headers[b"location"] == (WAITING + "&return=%2Fshop%3Fx%3D1").encode()
    assert headers[b"cache-control"] == b"no-store"


def test_asgi_return_url_is_the_path_as_sent(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    app = GateASGI(site, make_gate(verifier, wr))

    def sent_path(path: str, raw: bytes | None) -> str:
        scope: Scope = {
            "type": "http",
            "method": "GET",
            "path": path,
            "query_string": b"",
            "headers": [],
        }
        if raw is not None:
            scope["raw_path"] = raw
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request"}

        async def send(message: Message) -> None:
            sent.append(message)

        asyncio.run(app(scope, receive, send))
        location: bytes = dict(sent[0]["headers"])[b"location"]
        return location.decode().split("return=", 1)[1]

    # "/a%2Fb" decodes to "/a/b": only raw_path keeps them apart.
    assert sent_path("/a/b", b"/a%2Fb") == "%2Fa%252Fb"
    assert sent_path("/a/b", b"/a%2Fb?x=1") == "%2Fa%252Fb"
    assert sent_path("/caf\u00e9 x", None) == "%2Fcaf%25C3%25A9%2520x"


def test_asgi_reads_a_cookie_split_over_headers(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    app = GateASGI(site, make_gate(verifier, wr))
    cookie = f"wr_access={access(wr.tokens)}".encode()

    sent = run_asgi(app, "/shop", [(b"cookie", b"a=1"), (b"cookie", cookie)])
    assert sent[0]["status"] == 200


def test_asgi_leave_header_reports_the_leave_and_is_stripped(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    app = GateASGI(site, make_gate(verifier, wr))
    token = access(wr.tokens)

    sent = run_asgi(app, "/thanks", [(b"authorization", f"Bearer {token}".encode())])
    headers = sent[0]["headers"]
    assert all(name != b"x-wr-leave" for name, _ in headers)
    assert (b"set-cookie", app.gate.expired_cookie.encode()) in headers
    assert wr.count("/leave") == 1


def test_asgi_closes_a_websocket_without_access(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    sent = run_asgi(GateASGI(site, make_gate(verifier, wr)), "/ws", [], "websocket")
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_asgi_passes_lifespan_through(verifier: JWKSVerifier, wr: FakeWr) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def nothing() -> Message:
        return {}

    async def ignore(message: Message) -> None:
        return None

    gated = GateASGI(app, make_gate(verifier, wr))
    asyncio.run(gated({"type": "lifespan"}, nothing, ignore))
    assert seen == ["lifespan"]


# The WSGI middleware.


def wsgi_site(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> list[bytes]:
    extra = [("X-WR-Leave", "1")] if environ["PATH_INFO"] == "/thanks" else []
    access_seen = environ.get("wr.access")
    start_response("200 OK", [("Content-Type", "text/plain"), *extra])
    return [f"site {access_seen.sub if access_seen else '-'}".encode()]


def run_wsgi(
    app: GateWSGI, path: str, **environ: str
) -> tuple[str, list[tuple[str, str]], bytes]:
    answer: dict[str, Any] = {}

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        answer.update(status=status, headers=headers)
        return lambda data: None

    env = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "wsgi.input": io.BytesIO(),
        **environ,
    }
    body = b"".join(app(env, start_response))
    return answer["status"], answer["headers"], body


def test_wsgi_lets_a_token_holder_in(verifier: JWKSVerifier, wr: FakeWr) -> None:
    app = GateWSGI(wsgi_site, make_gate(verifier, wr))
    status, _, body = run_wsgi(
        app, "/shop", HTTP_COOKIE=f"wr_access={access(wr.tokens)}"
    )

    assert status == "200 OK"
    assert body == f"site {SUB}".encode()


def test_wsgi_redirects_a_newcomer_with_the_path_encoded_again(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    app = GateWSGI(wsgi_site, make_gate(verifier, wr))
    # PATH_INFO is decoded by the server: "/a b/é" arrived as /a%20b/%C3%A9.
    path = "/a b/\u00e9".encode().decode("latin-1")
    status, headers, _ = run_wsgi(app, path, QUERY_STRING="q=1")

    assert status == "302 Found"
    location = dict(headers)["location"]
    assert location == WAITING + "&return=%2Fa%2520b%2F%25C3%25A9%3Fq%3D1"


def test_wsgi_answers_post_without_access_with_json(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    app = GateWSGI(wsgi_site, make_gate(verifier, wr))
    status, headers, body = run_wsgi(app, "/cart", REQUEST_METHOD="POST")

    assert status == "401 Unauthorized"
    assert dict(headers)["content-type"] == "application/json"
    assert json.loads(body)["error"] == "no_token"


def test_wsgi_leave_header_reports_the_leave(
    verifier: JWKSVerifier, wr: FakeWr
) -> None:
    app = GateWSGI(wsgi_site, make_gate(verifier, wr))
    token = access(wr.tokens)
    _, headers, _ = run_wsgi(app, "/thanks", HTTP_AUTHORIZATION=f"Bearer {token}")

    assert "X-WR-Leave" not in dict(headers)
    assert dict(headers)["Set-Cookie"].startswith("wr_access=;")
    assert wr.count("/leave") == 1


def test_wsgi_leave_path(verifier: JWKSVerifier, wr: FakeWr) -> None:
    gate = make_gate(verifier, wr, leave_path="/logout")
    app = GateWSGI(wsgi_site, gate)
    status, headers, _ = run_wsgi(
        app, "/logout", REQUEST_METHOD="POST", HTTP_COOKIE="wr_access=tok"
    )

    assert status == "303 See Other"
    assert dict(headers)["location"] == "/"
    assert [name for name, _ in headers].count("cache-control") == 1
    assert wr.count("/leave") == 1


# Import with nothing of the server.


def test_wr_gate_imports_without_the_server_dependencies() -> None:
    script = textwrap.dedent(
        """
        import sys

        BLOCKED = {"uvloop", "httptools", "orjson", "prometheus_client"}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Block())
        import wr.gate

        gate = wr.gate.Gate(
            wr.gate.SecretVerifier("sale", {"k": bytes(32)}),
            waiting_url="/queue/?room=sale",
        )
        decision = gate.decide("GET", "/shop", "", None)
        assert decision.location == "/queue/?room=sale&return=%2Fshop", decision
        loaded = BLOCKED & {m.split(".")[0] for m in sys.modules}
        assert not loaded, loaded
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
