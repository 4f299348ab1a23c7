"""CORS headers for the origins an operator trusts (the Fetch standard).

A waiting page hosted on a CDN or on the shop's own domain calls the API
from another origin. Only origins listed in ``http.cors_origins`` get an
``Access-Control-Allow-Origin``; every other origin gets no CORS header at
all, so the browser keeps the answer from its page. Credentials are
allowed, so that a page on a sibling subdomain (same site) can still use the
queue cookie; pages elsewhere send the queue token as a bearer token, which
is why ``Authorization`` is an allowed request header.
"""

from __future__ import annotations

from collections.abc import Iterable

from wr.http import Request, Response

__all__ = ["Cors"]

# Request headers a page may send: the bearer token and a JSON body.
_ALLOW_HEADERS = "authorization, content-type"
# Response headers a page may read beyond the CORS-safelisted ones: the
# back-off a 503 asks for.
_EXPOSE_HEADERS = "retry-after"


class Cors:
    def __init__(self, origins: Iterable[str], max_age_s: int) -> None:
        self.origins = frozenset(origins)
        self.max_age_s = max_age_s

    def __bool__(self) -> bool:
        return bool(self.origins)

    def headers(self, request: Request, response: Response) -> list[tuple[str, str]]:
        """The headers to add to ``response``; none for an untrusted origin."""
        # The answer depends on Origin, so a shared cache must key on it even
        # for origins that are refused.
        headers = [("vary", "origin")]
        raw = request.header(b"origin")
        origin = raw.decode("latin-1") if raw is not None else None
        if origin not in self.origins:
            return headers
        headers += [
            ("access-control-allow-origin", origin),
            ("access-control-allow-credentials", "true"),
        ]
        preflight = request.method == "OPTIONS" and request.header(
            b"access-control-request-method"
        )
        if not preflight:
            headers.append(("access-control-expose-headers", _EXPOSE_HEADERS))
            return headers
        allow = next((v for k, v in response.headers if k == "allow"), "")
        headers += [
            ("access-control-allow-methods", allow),
            ("access-control-allow-headers", _ALLOW_HEADERS),
            ("access-control-max-age", str(self.max_age_s)),
        ]
        return headers
