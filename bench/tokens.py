"""What a token costs with each algorithm, and a gateway's verify with each.

In one run and on one core, for HS256 (the narrow codec) and EdDSA
(pyjwt with an Ed25519 key):

- ``issue``: signing an access token;
- ``check``: checking one (``Tokens.check``);
- ``verify``: a whole ``GET /api/v1/verify`` through the API with the token
  in the cookie, what nginx's auth_request costs wr per request.

Each is the fastest of a few rounds (per call, in nanoseconds), followed by
the EdDSA / HS256 ratios, printed as JSON. Run with ``python -m bench.tokens``.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.crossprocess import best_ns_per_call
from wr.api import App
from wr.config import Config, load_config
from wr.http import Request
from wr.metrics import Metrics
from wr.room import Room
from wr.static import StaticFiles
from wr.tokens import KeyRing, Tokens

# EdDSA checks take tens of microseconds: fewer calls keep a run short.
CALLS = 5_000
SUB = "s" * 22


def measure(config: Config, algorithm: str, static: Path) -> dict[str, float]:
    tokens_config = dataclasses.replace(config.tokens, algorithm=algorithm)
    config = dataclasses.replace(config, tokens=tokens_config)
    tokens = Tokens(KeyRing.generate(algorithm), tokens_config)
    room = Room(config.rooms["default"])
    app = App(
        config,
        {"default": room},
        tokens,
        Metrics({"default": room}),
        StaticFiles.load(static),
    )
    now = time.time()
    token = tokens.issue_access("default", SUB, 1, 3600, now)
    request = Request(
        "GET",
        "/api/v1/verify",
        "room=default",
        {b"cookie": f"wr_access={token}".encode()},
    )
    if app.handle(request).status != 204:
        raise AssertionError("verify refused the bench's token")
    return {
        "issue_ns": best_ns_per_call(
            lambda: tokens.issue_access("default", SUB, 1, 3600, now), CALLS
        ),
        "check_ns": best_ns_per_call(
            lambda: tokens.check(token, "default", "access", now), CALLS
        ),
        "verify_ns": best_ns_per_call(lambda: app.handle(request), CALLS),
    }


def main() -> int:
    config = load_config(env={})
    with tempfile.TemporaryDirectory() as static:
        results = {
            algorithm: measure(config, algorithm, Path(static))
            for algorithm in ("HS256", "EdDSA")
        }
    ratios = {
        f"eddsa_over_hs256_{name}": results["EdDSA"][name] / results["HS256"][name]
        for name in ("issue_ns", "check_ns", "verify_ns")
    }
    print(orjson.dumps({**results, **ratios}, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
