"""The Starlette and Flask examples against a real wr on loopback.

A person asks the shop for a page, is sent to wr's waiting page with the
URL as ``return=``, joins and polls wr (as the page would), and comes back
with the access token; the shop lets them in, and their leave frees the
place in wr (capacity mode). Starlette checks tokens with wr's JWK set
(EdDSA), Flask with the key ring's secret or with wr's verify (HS256).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from flask.testing import FlaskClient

from examples import flask_site, starlette_site
from examples.settings import Settings
from tests.serverproc import WrServer, wait_for
from wr.cli import main
from wr.config import load_config
from wr.gate import Denied, GateASGI, JWKSVerifier
from wr.tokens import KeyRing, Tokens

SITE = "http://testserver"
CONFIG = """\
[server]
workers = 1

[tokens]
algorithm = "{algorithm}"

[rooms.default]
rate_per_minute = 6000
max_active = 5
target_url = "/inside"
allowed_targets = ["http://testserver"]
"""


def start_wr(tmp_path: Path, algorithm: str) -> Iterator[WrServer]:
    server = WrServer(tmp_path, CONFIG.format(algorithm=algorithm)).start()
    yield server
    server.stop()


@pytest.fixture
def eddsa_wr(tmp_path: Path) -> Iterator[WrServer]:
    yield from start_wr(tmp_path, "EdDSA")


@pytest.fixture
def hs256_wr(tmp_path: Path) -> Iterator[WrServer]:
    yield from start_wr(tmp_path, "HS256")


def return_of(location: str, wr: WrServer) -> str:
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}" == wr.base
    assert parse_qs(parts.query)["room"] == ["default"]
    return parts.query.split("return=", 1)[1]


def queue(wr: WrServer, raw_return: str) -> dict[str, object]:
    """What the waiting page does: join, then poll until admitted."""
    with httpx.Client(base_url=wr.base, timeout=10.0) as page:
        assert page.post("/api/v1/rooms/default/join").status_code == 200

        def status() -> dict[str, object] | None:
            answer = page.get(f"/api/v1/rooms/default/status?return={raw_return}")
            data: dict[str, object] = answer.json()
            return data if data["state"] == "admitted" else None

        return wait_for(status, 30.0, "admission", poll_s=0.2)


def active(wr: WrServer) -> float:
    for line in httpx.get(f"{wr.base}/metrics", timeout=10.0).text.splitlines():
        if line.startswith('wr_room_active{room="default"}'):
            return float(line.split()[-1])
    raise AssertionError("no wr_room_active in /metrics")


def asgi_client(app: GateASGI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url=SITE)


async def test_starlette_example_through_the_queue_and_back(
    eddsa_wr: WrServer,
) -> None:
    app = starlette_site.build(Settings(eddsa_wr.base, site_origin=SITE))
    async with asgi_client(app) as shop:
        first = await shop.get("/shop/boots?size=42")
        assert first.status_code == 302
        raw = return_of(first.headers["location"], eddsa_wr)
        assert raw == quote(f"{SITE}/shop/boots?size=42", safe="")

        data = queue(eddsa_wr, raw)
        assert data["redirect"] == f"{SITE}/shop/boots?size=42"
        shop.cookies.set("wr_access", str(data["access_token"]))

        inside = await shop.get("/shop/boots?size=42")
        assert inside.status_code == 200
        assert inside.text.startswith("welcome to the shop, session ")
        assert active(eddsa_wr) == 1

        done = await shop.get("/order/done")
        assert done.text == "thank you for your order"
        assert "x-wr-leave" not in done.headers
        assert wait_for(lambda: active(eddsa_wr) == 0, 10.0, "the leave")


async def test_starlette_example_refuses_forged_and_passes_health(
    eddsa_wr: WrServer,
) -> None:
    forger_config = load_config(eddsa_wr.config, env={}).tokens
    forger = Tokens(KeyRing.generate("EdDSA"), forger_config)
    forged = forger.issue_access("default", "s" * 22, 1, 600, time.time())
    app = starlette_site.build(Settings(eddsa_wr.base))
    async with asgi_client(app) as shop:
        assert (await shop.get("/healthz")).text == "ok"
        assert (await shop.get("/static/style.css")).status_code == 200
        shop.cookies.set("wr_access", forged)
        assert (await shop.get("/")).status_code == 302
        assert (await shop.post("/")).json()["error"] == "unknown_kid"


def flask_flow(shop: FlaskClient, wr: WrServer) -> None:
    first = shop.get("/shop/hat")
    assert first.status_code == 302
    raw = return_of(first.headers["location"], wr)
    data = queue(wr, raw)
    assert data["redirect"] == f"{SITE}/shop/hat"

    shop.set_cookie("wr_access", str(data["access_token"]), domain="localhost")
    inside = shop.get("/shop/hat")
    assert inside.status_code == 200, inside.text
    assert inside.text.startswith("welcome to the shop, session ")
    assert active(wr) == 1

    left = shop.post("/leave")
    assert left.status_code == 303
    assert wait_for(lambda: active(wr) == 0, 10.0, "the leave")
    assert shop.get("/shop/hat").status_code == 302


def test_flask_example_with_the_key_ring_secret(hs256_wr: WrServer) -> None:
    keys = str(hs256_wr.state_dir / "keys.json")
    app = flask_site.build(Settings(hs256_wr.base, site_origin=SITE, keys=keys))
    flask_flow(app.test_client(), hs256_wr)


def test_flask_example_asking_wr_verify(hs256_wr: WrServer) -> None:
    app = flask_site.build(Settings(hs256_wr.base, site_origin=SITE))
    flask_flow(app.test_client(), hs256_wr)


def test_flask_example_sends_expired_tokens_back(hs256_wr: WrServer) -> None:
    config = load_config(hs256_wr.config, env={}).tokens
    tokens = Tokens(KeyRing.load(hs256_wr.state_dir), config)
    expired = tokens.issue_access("default", "s" * 22, 1, 60, time.time() - 3600)
    app = flask_site.build(Settings(hs256_wr.base))
    shop = app.test_client()
    shop.set_cookie("wr_access", expired, domain="localhost")

    assert shop.get("/").status_code == 302
    assert shop.get("/healthz").text == "ok"


def test_a_key_rotation_reaches_the_gate_through_the_jwk_set(
    eddsa_wr: WrServer,
) -> None:
    verifier = JWKSVerifier("default", f"{eddsa_wr.base}/.well-known/jwks.json")
    config = load_config(eddsa_wr.config, env={}).tokens
    before = Tokens(KeyRing.load(eddsa_wr.state_dir), config)
    old = before.issue_access("default", "s" * 22, 1, 600, time.time())
    assert verifier.verify(old).room == "default"

    args = ["--config", str(eddsa_wr.config), "--state-dir", str(eddsa_wr.state_dir)]
    assert main(["keygen", "--rotate", *args]) == 0
    os.kill(eddsa_wr.pid, signal.SIGHUP)
    ring = KeyRing.load(eddsa_wr.state_dir)

    def published() -> bool:
        document = httpx.get(f"{eddsa_wr.base}/.well-known/jwks.json").json()
        return [key["kid"] for key in document["keys"]] == [
            ring.active,
            before.ring.active,
        ]

    wait_for(published, 15.0, "the new key in the JWK set")
    new = Tokens(ring, config).issue_access("default", "s" * 22, 2, 600, time.time())

    def accepted() -> bool:
        # The gate has never seen the new kid: it fetches the set again,
        # once JWKS_REFETCH_S has passed since its last fetch.
        try:
            return verifier.verify(new).pos == 2
        except Denied:
            return False

    wait_for(accepted, 15.0, "the gate to learn the new key", poll_s=0.1)
    assert verifier.verify(old).pos == 1
