"""The waiting page without JavaScript, rendered by the server.

``GET /api/v1/rooms/{room}/wait`` is where the static page's ``<noscript>``
sends a browser that runs no script. It joins the line (or finds the place
the queue cookie holds), answers a small HTML page that refreshes itself at
the interval the server wants, and once the person's turn has come, a 302
to the room's target with the access cookie. Every answer is ``no-store``.

The words come from the ``text`` table of ``static/config.json``, the same
table the JavaScript page uses, so a site translates or rewords the page in
one place. This module turns an API answer into that page: it does no I/O.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Mapping
from typing import Any

import orjson

from wr.http import Response
from wr.static import StaticFiles

__all__ = ["CLOSED_REFRESH_S", "Texts", "WaitPage", "eta_words"]

log = logging.getLogger("wr.server")

# A closed room may reopen (an admin can undo it), but nobody needs to know
# within seconds: a slow refresh costs the server almost nothing.
CLOSED_REFRESH_S = 60
# An error answer without Retry-After (it always has one today).
DEFAULT_REFRESH_S = 10

_CONFIG_FILE = "config.json"
# API errors a join can answer that the page explains in their own words.
_ERROR_STATES = {"queue_full": "full", "closed": "closed"}


class Texts:
    """The page's words; ``{name}`` placeholders are filled by :meth:`get`."""

    def __init__(self, table: Mapping[str, str], lang: str = "en") -> None:
        self.table = table
        self.lang = lang

    @classmethod
    def from_static(cls, static: StaticFiles) -> Texts:
        """The ``text`` table of ``config.json``; an empty table if unusable."""
        file = static.get(_CONFIG_FILE)
        if file is None:
            return cls({})
        try:
            config = orjson.loads(file.body)
            table = config["text"]
            lang = str(config.get("lang", "en"))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            log.warning("static config has no usable text table file=%s", _CONFIG_FILE)
            return cls({})
        if not isinstance(table, dict):
            return cls({})
        return cls({str(k): str(v) for k, v in table.items()}, lang)

    def get(self, key: str, **values: object) -> str:
        # A missing key shows as itself: visible, and never a crash.
        text = self.table.get(key, key)
        for name, value in values.items():
            text = text.replace("{" + name + "}", str(value))
        return text


def eta_words(texts: Texts, eta_s: float | None) -> str:
    """The wait in words, rounded as ``wait.js`` rounds it."""
    if eta_s is None:
        return texts.get("eta_unknown")
    if eta_s < 60:
        return texts.get("eta_under_minute")
    minutes = math.floor(eta_s / 60 + 0.5)
    if minutes == 1:
        return texts.get("eta_minute")
    if minutes < 90:
        return texts.get("eta_minutes", n=minutes)
    return texts.get("eta_hours", n=math.floor(eta_s / 3600 + 0.5))


class WaitPage:
    """Renders the API's join answer as the script-free waiting page."""

    def __init__(self, static: StaticFiles) -> None:
        self.texts = Texts.from_static(static)
        self.stylesheets = [static.url("theme.css"), static.url("wait.css")]

    def respond(self, answer: Response) -> Response:
        """The page for a join answer (or a 302 once admitted)."""
        cookies = [(k, v) for k, v in answer.headers if k == "set-cookie"]
        headers = [("cache-control", "no-store"), *cookies]
        data: dict[str, Any] = orjson.loads(answer.body) if answer.body else {}
        if answer.status == 200 and data.get("state") == "admitted":
            headers.append(("location", str(data["redirect"])))
            return Response(302, headers=headers, content_type=None)

        if answer.status == 200:
            state = str(data.get("state"))
            refresh = _refresh_s(data.get("next_poll_s"), CLOSED_REFRESH_S)
        else:
            error = str(data.get("error"))
            # Proof-of-work (wr.pow) is solved by the script page only.
            if error.startswith("pow_"):
                state = "needs_script"
            else:
                state = _ERROR_STATES.get(error, "error")
            retry = next((v for k, v in answer.headers if k == "retry-after"), None)
            slow = CLOSED_REFRESH_S if state == "closed" else DEFAULT_REFRESH_S
            refresh = _refresh_s(retry, slow)
            headers += [(k, v) for k, v in answer.headers if k == "retry-after"]
        body = self.render(state, data, refresh)
        return Response(answer.status, body, headers, "text/html; charset=utf-8")

    def render(self, state: str, data: Mapping[str, Any], refresh_s: int) -> bytes:
        t = self.texts
        title = t.get(f"title_{state}")
        figures = ""
        # Before opening, the draw decides the order: a number would mislead.
        if "position" in data and state != "prequeue":
            eta = (
                t.get("eta_paused")
                if state == "paused"
                else eta_words(t, data.get("eta_s"))
            )
            rows = [("position", data["position"])]
            if "ahead" in data:
                rows += [("ahead", data["ahead"]), ("eta", eta)]
            figures = '<dl class="figures">' + "".join(
                f'<div class="figure{" main" if label == "position" else ""}">'
                f"<dt>{_e(t.get(label))}</dt><dd>{_e(value)}</dd></div>"
                for label, value in rows
            )
            figures += "</dl>"
        links = "".join(
            f'<link rel="stylesheet" href="{_e(href)}">' for href in self.stylesheets
        )
        page = (
            f'<!doctype html><html lang="{_e(t.lang)}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="refresh" content="{refresh_s}">'
            f"<title>{_e(t.get('page_title'))}</title>{links}</head>"
            f'<body><main data-state="{_e(state)}">'
            '<div class="brand"><span class="logo" aria-hidden="true"></span>'
            f"<span>{_e(t.get('brand'))}</span></div>"
            f'<h1>{_e(title)}</h1><p class="message">{_e(t.get(f"msg_{state}"))}</p>'
            f"{figures}"
            f'<p class="meta">{_e(t.get("noscript_note", n=refresh_s))} '
            f'<a href="">{_e(t.get("refresh_now"))}</a></p>'
            "</main></body></html>"
        )
        return page.encode("utf-8")


def _refresh_s(value: object, default: int) -> int:
    try:
        seconds = float(str(value))
    except ValueError:
        return default
    if not math.isfinite(seconds):
        return default
    return max(1, math.ceil(seconds))


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
