"""A small shop on Starlette, guarded by wr.gate with wr's public keys.

Run wr with ``tokens.algorithm = "EdDSA"``, then this app with any ASGI
server, for example ``uvicorn examples.starlette_site:app --port 8000``.
Settings come from the environment:

- ``WR_URL``: where wr answers (default ``http://127.0.0.1:8080``);
- ``WR_ROOM``: the room that guards the shop (default ``default``);
- ``WR_WAITING_URL``: the waiting page (default: wr's, for that room);
- ``WR_SITE_ORIGIN``: this site's own origin, so that wr can send people
  back here; list it in the room's ``allowed_targets``.

Cookies belong to a host name, not a port: the waiting room and the shop
must share one (in production, proxy wr's ``/api/v1/rooms/`` and page under
the shop's host, as ``examples/nginx/wr.conf`` does).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from wr.gate import Gate, GateASGI, JWKSVerifier


async def home(request: Request) -> Response:
    access = request.scope["wr.access"]
    return PlainTextResponse(f"welcome to the shop, session {access.sub}")


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


async def style(request: Request) -> Response:
    return PlainTextResponse("body { font-family: sans-serif }", media_type="text/css")


async def order_done(request: Request) -> Response:
    # The header tells the gate this person is done: their place frees up.
    return PlainTextResponse("thank you for your order", headers={"x-wr-leave": "1"})


def shop() -> Starlette:
    return Starlette(
        routes=[
            Route("/", home),
            Route("/shop/{item:path}", home),
            Route("/healthz", health),
            Route("/static/style.css", style),
            Route("/order/done", order_done),
        ]
    )


def gate(
    wr_url: str, room: str, waiting_url: str | None, site_origin: str | None
) -> Gate:
    verifier = JWKSVerifier(room, f"{wr_url}/.well-known/jwks.json")
    return Gate(
        verifier,
        waiting_url=waiting_url or f"{wr_url}/?room={room}",
        pass_paths=("/healthz", "/static/"),
        site_origin=site_origin,
        wr_url=wr_url,
        leave_path="/leave",
    )


def build(
    wr_url: str,
    room: str = "default",
    waiting_url: str | None = None,
    site_origin: str | None = None,
) -> GateASGI:
    return GateASGI(shop(), gate(wr_url, room, waiting_url, site_origin))


app = build(
    os.environ.get("WR_URL", "http://127.0.0.1:8080"),
    os.environ.get("WR_ROOM", "default"),
    os.environ.get("WR_WAITING_URL"),
    os.environ.get("WR_SITE_ORIGIN"),
)
