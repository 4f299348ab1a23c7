"""The files of ``static/``, held in memory and served with validators.

The waiting page is what everyone in line loads, so it is read once at
start-up and answered from memory: no disk access per request, an ETag per
file, ``Cache-Control`` so that a CDN or the browser keeps it, and a 304 when
the client already has the current version.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from wr.http import Request, Response

__all__ = ["MAX_STATIC_BYTES", "StaticFile", "StaticFiles", "default_static_dir"]

# The page and its assets are a few tens of KiB; a static dir much larger
# than this was pointed at the wrong folder.
MAX_STATIC_BYTES = 16 * 1024 * 1024

# HTML may change with a deploy and is revalidated soon; other assets less so.
HTML_MAX_AGE_S = 60
ASSET_MAX_AGE_S = 3600


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str
    cache_control: str


def default_static_dir() -> Path:
    """``static/`` beside the ``wr`` package, as in a source checkout."""
    return Path(__file__).resolve().parent.parent / "static"


class StaticFiles:
    def __init__(self, files: dict[str, StaticFile]) -> None:
        self.files = files

    @classmethod
    def load(cls, root: Path) -> StaticFiles:
        files: dict[str, StaticFile] = {}
        total = 0
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            body = path.read_bytes()
            total += len(body)
            if total > MAX_STATIC_BYTES:
                raise ValueError(f"{root}: more than {MAX_STATIC_BYTES} bytes")
            name = path.relative_to(root).as_posix()
            files[name] = _static_file(name, body)
        return cls(files)

    def get(self, name: str) -> StaticFile | None:
        return self.files.get(name)

    def respond(self, request: Request, name: str) -> Response | None:
        """The response for file ``name``, or None if there is no such file."""
        file = self.files.get(name)
        if file is None:
            return None
        headers = [("etag", file.etag), ("cache-control", file.cache_control)]
        if _matches(request.header(b"if-none-match"), file.etag):
            return Response(304, headers=headers, content_type=None)
        return Response(200, file.body, headers, file.content_type)


def _static_file(name: str, body: bytes) -> StaticFile:
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type in (
        "application/javascript",
        "application/json",
    ):
        content_type += "; charset=utf-8"
    max_age = HTML_MAX_AGE_S if name.endswith(".html") else ASSET_MAX_AGE_S
    digest = hashlib.sha256(body).hexdigest()[:20]
    return StaticFile(
        body=body,
        content_type=content_type,
        etag=f'"{digest}"',
        cache_control=f"public, max-age={max_age}",
    )


def _matches(if_none_match: bytes | None, etag: str) -> bool:
    # RFC 9110 section 13.1.2: a list of tags, weak comparison, or "*".
    if if_none_match is None:
        return False
    wanted = etag.encode()
    for candidate in if_none_match.split(b","):
        tag = candidate.strip()
        if tag == b"*" or tag.removeprefix(b"W/") == wanted:
            return True
    return False
