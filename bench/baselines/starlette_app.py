"""wr's join, status and verify as most people would write them.

uvicorn + Starlette + pyjwt, one process: positions from a counter, the
line moving at each room's rate from a clock, tokens signed and checked by
pyjwt, JSON by Starlette. It keeps wr's answers and status codes, so the
load generator drives both alike. ``python -m bench.baselines.starlette_app
PORT``.
"""

from __future__ import annotations

import secrets
import sys
import time
from typing import Any

import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SECRET = secrets.token_bytes(32)
# Admissions per second: the bench's rooms, "open" letting everyone in.
RATES = {"default": 1.0, "open": 1e9}
STARTED = time.time()
next_position = dict.fromkeys(RATES, 1)


def serving(room: str) -> int:
    return int((time.time() - STARTED) * RATES[room])


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:] if header.startswith("Bearer ") else None


async def join(request: Request) -> Response:
    room = request.path_params["room"]
    if room not in RATES:
        return JSONResponse({"error": "unknown_room"}, 404)
    position = next_position[room]
    next_position[room] = position + 1
    now = int(time.time())
    eta = max(0, int((position - serving(room)) / RATES[room]))
    claims = {"sub": secrets.token_hex(16), "room": room, "pos": position}
    claims.update({"iat": now, "exp": now + 86400, "eta": eta, "typ": "queue"})
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    response = waiting(room, position, token)
    response.set_cookie("wr_queue", token, httponly=True)
    return response


def checked(request: Request, cookie: str, room: str, typ: str) -> Any:
    """The token's claims, or the 401 answer when it is missing or wrong."""
    token = bearer(request) or request.cookies.get(cookie)
    if not token:
        return JSONResponse({"error": "no_token"}, 401)
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    except jwt.InvalidTokenError:
        return JSONResponse({"error": "bad_token"}, 401)
    if claims["room"] != room or claims["typ"] != typ:
        return JSONResponse({"error": "wrong_room"}, 401)
    return claims


async def status(request: Request) -> Response:
    room = request.path_params["room"]
    claims = checked(request, "wr_queue", room, "queue")
    if isinstance(claims, Response):
        return claims
    token = bearer(request) or request.cookies["wr_queue"]
    position = claims["pos"]
    if position <= serving(room):
        now = int(time.time())
        access = {"sub": claims["sub"], "room": room, "pos": position}
        access.update({"iat": now, "exp": now + 3600, "typ": "access"})
        return JSONResponse(
            {
                "state": "admitted",
                "position": position,
                "redirect": "/inside",
                "access_token": jwt.encode(access, SECRET, algorithm="HS256"),
            }
        )
    return waiting(room, position, token)


def waiting(room: str, position: int, token: str) -> JSONResponse:
    ahead = position - serving(room)
    return JSONResponse(
        {
            "state": "waiting",
            "position": position,
            "ahead": ahead,
            "eta_s": max(0, int(ahead / RATES[room])),
            "next_poll_s": 3.0,
            "queue_token": token,
        }
    )


async def verify(request: Request) -> Response:
    room = request.query_params.get("room", "default")
    claims = checked(request, "wr_access", room, "access")
    if isinstance(claims, Response):
        return claims
    return Response(status_code=204)


app = Starlette(
    routes=[
        Route("/api/v1/rooms/{room}/join", join, methods=["POST"]),
        Route("/api/v1/rooms/{room}/status", status, methods=["GET"]),
        Route("/api/v1/verify", verify, methods=["GET"]),
    ]
)


def main() -> int:
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
