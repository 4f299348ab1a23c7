"""Where an admitted person is sent: the URL they came for, if it is safe.

The gateway sends a newcomer to the waiting page with ``return=<url>``, the
URL they asked for; the page hands it back unchanged on ``status``. Once
admitted, they are sent there if the room allows it, else to the room's
``target_url``. A waiting room that redirects anywhere it is told would be
an open redirect (CWE-601) on a trusted host name, so the rule is narrow:

- a path starting with exactly one ``/`` stays on the site: it is kept as
  it is for a path ``target_url``, and put on the target's origin for an
  absolute one;
- an absolute ``http(s)`` URL is kept if its scheme and host (and port) are
  those of an absolute ``target_url`` or of one of the room's
  ``allowed_targets``.

Everything else is refused, and so is anything a browser might read
differently from us: control characters (browsers drop tab, CR and LF, so
``/\\t/evil`` would become ``//evil``), backslashes (read as ``/``), spaces,
non-ASCII text, user info (``https://site@evil``) and over-long values. The
value is percent-decoded exactly once, as it was encoded by whoever put it
in the query; a second layer of encoding stays encoded, and so harmless.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

__all__ = ["MAX_RETURN_BYTES", "safe_return"]

# Browsers and proxies handle URLs up to about 8 KiB; a place to come back
# to is a page of the site, far shorter. Longer values are refused.
MAX_RETURN_BYTES = 2048

# Printable ASCII without space and backslash: what is left of a URL once
# everything ambiguous is taken out.
_PLAIN = re.compile(r"[!-\[\]-~]*")


def safe_return(
    raw: str | None, target_url: str, allowed_targets: Iterable[str] = ()
) -> str | None:
    """The decoded ``return`` value if it is a safe place to send the person.

    ``raw`` is the query parameter as received (still percent-encoded).
    Returns None when it is missing or not allowed; the caller then uses
    the room's ``target_url``.
    """
    if not raw or len(raw) > MAX_RETURN_BYTES:
        return None
    try:
        url = unquote(raw, errors="strict") if "%" in raw else raw
    except UnicodeDecodeError:
        return None
    if not _PLAIN.fullmatch(url):
        return None

    target_origin = _origin(target_url)
    if url.startswith("/"):
        if url.startswith("//"):
            return None
        return url if target_origin is None else target_origin + url

    origin = _origin(url)
    if origin is None:
        return None
    allowed = {_origin(item.rstrip("/")) for item in allowed_targets}
    allowed.add(target_origin)
    return url if origin in allowed else None


def _origin(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL, lower case."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host or "@" in parts.netloc:
        return None
    if not url.lower().startswith(parts.scheme + "://"):
        return None
    default = 443 if parts.scheme == "https" else 80
    suffix = "" if port is None or port == default else f":{port}"
    return f"{parts.scheme}://{host}{suffix}"
