"""A small shop on Starlette, guarded by wr.gate with wr's public keys.

Run wr with ``tokens.algorithm = "EdDSA"``, then this app with any ASGI
server, for example ``uvicorn examples.starlette_site:app --port 8000``.
Settings come from the environment (``examples/settings.py``).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from examples.settings import Settings
from wr.gate import GateASGI, JWKSVerifier


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


def build(settings: Settings) -> GateASGI:
    verifier = JWKSVerifier(settings.room, f"{settings.wr_url}/.well-known/jwks.json")
    return GateASGI(shop(), settings.gate(verifier))


app = build(Settings.from_env())
