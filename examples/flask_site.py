"""A small shop on Flask, guarded by wr.gate.

With ``WR_KEYS`` naming wr's ``keys.json`` (a site on wr's host, HS256),
tokens are checked locally with its secrets; otherwise each request asks
wr's ``/api/v1/verify``. Run with any WSGI server, for example
``flask --app examples.flask_site run --port 8000``. The other settings are
those of ``examples/starlette_site.py``: ``WR_URL``, ``WR_ROOM``,
``WR_WAITING_URL``, ``WR_SITE_ORIGIN``.
"""

from __future__ import annotations

import os

from flask import Flask, request

from wr.gate import Gate, GateWSGI, RemoteVerifier, SecretVerifier, Verifier


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


def build(
    wr_url: str,
    room: str = "default",
    keys: str | None = None,
    waiting_url: str | None = None,
    site_origin: str | None = None,
) -> Flask:
    verifier: Verifier
    if keys:
        verifier = SecretVerifier.from_key_ring(keys, room)
    else:
        verifier = RemoteVerifier(room, wr_url)
    site = shop()
    gate = Gate(
        verifier,
        waiting_url=waiting_url or f"{wr_url}/?room={room}",
        pass_paths=("/healthz", "/static/"),
        site_origin=site_origin,
        wr_url=wr_url,
        leave_path="/leave",
    )
    # Flask's documented way to wrap its WSGI app; mypy sees a method.
    site.wsgi_app = GateWSGI(site.wsgi_app, gate)  # type: ignore[method-assign]
    return site


app = build(
    os.environ.get("WR_URL", "http://127.0.0.1:8080"),
    os.environ.get("WR_ROOM", "default"),
    os.environ.get("WR_KEYS"),
    os.environ.get("WR_WAITING_URL"),
    os.environ.get("WR_SITE_ORIGIN"),
)
