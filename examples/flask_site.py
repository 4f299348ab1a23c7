"""A small shop on Flask, guarded by wr.gate.

With ``WR_KEYS`` naming wr's ``keys.json`` (a site on wr's host, HS256),
tokens are checked locally with its secrets; otherwise each request asks
wr's ``/api/v1/verify``. Run with any WSGI server, for example
``flask --app examples.flask_site run --port 8000``. The other settings
are in ``examples/settings.py``.
"""

from __future__ import annotations

from flask import Flask, request

from examples.settings import Settings
from wr.gate import GateWSGI, RemoteVerifier, SecretVerifier, Verifier


def shop() -> Flask:
    site = Flask(__name__)

    @site.get("/")
    @site.get("/shop/<path:item>")
    def home(item: str = "") -> str:
        return f"welcome to the shop, session {request.environ['wr.access'].sub}"

    @site.get("/healthz")
    def health() -> str:
        return "ok"

    @site.get("/order/done")
    def order_done() -> tuple[str, dict[str, str]]:
        # The header tells the gate this person is done: their place frees up.
        return "thank you for your order", {"X-WR-Leave": "1"}

    return site


def build(settings: Settings) -> Flask:
    verifier: Verifier
    if settings.keys:
        verifier = SecretVerifier.from_key_ring(settings.keys, settings.room)
    else:
        verifier = RemoteVerifier(settings.room, settings.wr_url)
    site = shop()
    gated = GateWSGI(site.wsgi_app, settings.gate(verifier))
    # Flask's documented way to wrap its WSGI app; mypy sees a method.
    site.wsgi_app = gated  # type: ignore[method-assign]
    return site


app = build(Settings.from_env())
