"""The files of ``static/``, held in memory, fingerprinted and precompressed.

The waiting page is what everyone in line loads, so it is read once at
start-up and answered from memory: no disk access and no compression per
request. Loading does what a build step would otherwise do:

- every asset (anything but HTML and JSON, whose names the outside world
  knows) gets a second name carrying a hash of its content,
  ``wait.css`` -> ``wait.3f2a9c01d4.css``, served as immutable for a year;
- references ``/static/NAME`` inside HTML and CSS are rewritten to those
  names, so a deploy changes the page's links and never serves stale CSS;
- text files are compressed once with gzip and, if the ``brotli`` package is
  installed, with Brotli; a request gets the smallest copy its
  ``Accept-Encoding`` allows, with ``Vary: Accept-Encoding``.

The plain names still answer (a copy of ``static/`` on a CDN uses them),
with a short lifetime. Each copy has its own ETag, and a client holding the
current one gets a 304.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import importlib
import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from wr.http import Request, Response

__all__ = [
    "FINGERPRINT_MAX_AGE_S",
    "MAX_COMPRESSED_BYTES",
    "MAX_STATIC_BYTES",
    "StaticFile",
    "StaticFiles",
    "brotli_compressor",
    "choose_encoding",
    "default_compressors",
    "default_static_dir",
    "gzip_compress",
    "static_root",
    "warm_static",
]

# The page and its assets are a few tens of KiB; a static dir much larger
# than this was pointed at the wrong folder.
MAX_STATIC_BYTES = 16 * 1024 * 1024

# HTML and JSON keep their names across deploys and are revalidated soon;
# plain asset names a little later; a fingerprinted name never changes
# content, so caches may keep it for the year RFC 9111 suggests as a ceiling.
HTML_MAX_AGE_S = 60
ASSET_MAX_AGE_S = 3600
FINGERPRINT_MAX_AGE_S = 365 * 24 * 3600

# Brotli at its best quality takes about a second per MiB, paid by every
# worker at start; a larger file (a video dropped into static/) is served
# as it is rather than delay start-up.
MAX_COMPRESSED_BYTES = 1024 * 1024

# Hex digits of SHA-256 in a fingerprinted name: 40 bits make a collision
# between two versions of one file practically impossible.
FINGERPRINT_DIGITS = 10

# Types worth compressing; images such as PNG are compressed already.
_COMPRESSIBLE = ("text/", "application/javascript", "application/json", "image/svg")

# Files whose references to /static/NAME are rewritten to fingerprints.
_REWRITTEN = (".html", ".css")
_REFERENCE = re.compile(r"/static/([A-Za-z0-9_./-]+)")

# Server preference among equally acceptable codings: the smallest first.
_PREFERENCE = ("br", "gzip")

Compressor = Callable[[bytes], bytes]

# Compressed copies by (coding, digest of the file), as the last load with
# the default compressors made them. The supervisor loads static/ once
# before it forks, so every worker starts (and restarts) with them instead
# of paying for Brotli's best quality; a reload recompresses changed files
# only. Each load keeps just what it used, so this holds one static/ at most.
_MEMO: dict[tuple[str, str], bytes] = {}


@dataclass(frozen=True, slots=True)
class Encoded:
    body: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str
    cache_control: str
    # Content-coding -> the compressed copy; only codings that save bytes.
    encoded: dict[str, Encoded] = field(default_factory=dict)


def default_static_dir() -> Path:
    """``static/`` beside the ``wr`` package, as in a source checkout."""
    return Path(__file__).resolve().parent.parent / "static"


def static_root(configured: str) -> Path:
    """The folder ``server.static_dir`` names; empty: static/ beside wr."""
    return Path(configured) if configured else default_static_dir()


def warm_static(configured: str) -> None:
    """Load static/ once, so that processes forked next inherit its copies."""
    # A broken static dir is reported by the workers, which cannot do
    # without it; here it only means there is nothing to share.
    with contextlib.suppress(OSError, ValueError):
        StaticFiles.load(static_root(configured))


def brotli_compressor() -> Compressor | None:
    """Brotli at its best quality, or None if the package is not installed."""
    try:
        brotli = importlib.import_module("brotli")
    except ImportError:
        return None

    def compress(body: bytes) -> bytes:
        result: bytes = brotli.compress(body, quality=11)
        return result

    return compress


def gzip_compress(body: bytes) -> bytes:
    # mtime=0: the same file always compresses to the same bytes and ETag.
    return gzip.compress(body, compresslevel=9, mtime=0)


def default_compressors() -> dict[str, Compressor]:
    """gzip always; Brotli too when the package is there."""
    compressors: dict[str, Compressor] = {"gzip": gzip_compress}
    brotli = brotli_compressor()
    if brotli is not None:
        compressors["br"] = brotli
    return compressors


class StaticFiles:
    def __init__(
        self, files: dict[str, StaticFile], fingerprints: dict[str, str] | None = None
    ) -> None:
        self.files = files
        self.fingerprints = fingerprints or {}

    @classmethod
    def load(
        cls, root: Path, *, compressors: dict[str, Compressor] | None = None
    ) -> StaticFiles:
        """Read ``root``; ``compressors`` defaults to :func:`default_compressors`."""
        memo: dict[tuple[str, str], bytes] | None = None
        if compressors is None:
            compressors = default_compressors()
            memo = {}
        sources = _read_tree(root)

        # Assets first, so that the CSS and HTML naming them can be rewritten;
        # CSS before HTML, as a rewritten CSS file has a new fingerprint.
        fingerprints: dict[str, str] = {}
        files: dict[str, StaticFile] = {}
        for name in sorted(sources, key=_load_order):
            body = sources[name]
            if name.endswith(_REWRITTEN):
                body = _rewrite(body, fingerprints)
            if _keeps_name(name):
                files[name] = _static_file(
                    name, body, HTML_MAX_AGE_S, compressors, memo
                )
                continue
            file = _static_file(name, body, ASSET_MAX_AGE_S, compressors, memo)
            files[name] = file
            aliased = _fingerprinted(name, body)
            fingerprints[name] = aliased
            files[aliased] = dataclasses.replace(
                file,
                cache_control=f"public, max-age={FINGERPRINT_MAX_AGE_S}, immutable",
            )
        if memo is not None:
            _MEMO.clear()
            _MEMO.update(memo)
        return cls(files, fingerprints)

    def get(self, name: str) -> StaticFile | None:
        return self.files.get(name)

    def url(self, name: str) -> str:
        """The path to link ``name`` by: its fingerprinted name if it has one."""
        return "/static/" + self.fingerprints.get(name, name)

    def respond(self, request: Request, name: str) -> Response | None:
        """The response for file ``name``, or None if there is no such file."""
        file = self.files.get(name)
        if file is None:
            return None
        body, etag = file.body, file.etag
        headers = [("cache-control", file.cache_control)]
        if file.encoded:
            headers.append(("vary", "accept-encoding"))
            coding = choose_encoding(request.header(b"accept-encoding"), file.encoded)
            if coding is not None:
                body, etag = file.encoded[coding].body, file.encoded[coding].etag
                headers.append(("content-encoding", coding))
        headers.append(("etag", etag))
        if _matches(request.header(b"if-none-match"), etag):
            return Response(304, headers=headers, content_type=None)
        return Response(200, body, headers, file.content_type)


def choose_encoding(accept: bytes | None, available: dict[str, Encoded]) -> str | None:
    """The content-coding to answer with, or None for the file as it is.

    RFC 9110 section 12.5.3: codings listed with ``q=0`` are refused, ``*``
    stands for any coding not listed, a higher q wins, and among equals the
    server picks (the smaller Brotli copy before gzip).
    """
    if not accept:
        return None
    weights: dict[str, float] = {}
    for item in accept.decode("latin-1").lower().split(","):
        coding, _, params = item.partition(";")
        weights[coding.strip()] = _quality(params)
    best: str | None = None
    best_q = 0.0
    for coding in _PREFERENCE:
        if coding not in available:
            continue
        q = weights.get(coding, weights.get("*", 0.0))
        if q > best_q:
            best, best_q = coding, q
    return best


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key == "q":
            try:
                q = float(value)
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def _read_tree(root: Path) -> dict[str, bytes]:
    sources: dict[str, bytes] = {}
    total = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        body = path.read_bytes()
        total += len(body)
        if total > MAX_STATIC_BYTES:
            raise ValueError(f"{root}: more than {MAX_STATIC_BYTES} bytes")
        sources[path.relative_to(root).as_posix()] = body
    return sources


def _keeps_name(name: str) -> bool:
    # Pages are linked from outside (the gateway, bookmarks) and config.json
    # is edited in place by operators: their names must not move.
    return name.endswith((".html", ".json"))


def _load_order(name: str) -> tuple[int, str]:
    if name.endswith(".html"):
        return 2, name
    if name.endswith(".css"):
        return 1, name
    return 0, name


def _rewrite(body: bytes, fingerprints: dict[str, str]) -> bytes:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body

    def swap(match: re.Match[str]) -> str:
        return "/static/" + fingerprints.get(match[1], match[1])

    return _REFERENCE.sub(swap, text).encode("utf-8")


def _fingerprinted(name: str, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()[:FINGERPRINT_DIGITS]
    path = PurePosixPath(name)
    return str(path.with_name(f"{path.stem}.{digest}{path.suffix}"))


def _static_file(
    name: str,
    body: bytes,
    max_age: int,
    compressors: dict[str, Compressor],
    memo: dict[tuple[str, str], bytes] | None,
) -> StaticFile:
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    compressible = (
        content_type.startswith(_COMPRESSIBLE) and len(body) <= MAX_COMPRESSED_BYTES
    )
    if content_type.startswith("text/") or content_type in (
        "application/javascript",
        "application/json",
    ):
        content_type += "; charset=utf-8"
    digest = hashlib.sha256(body).hexdigest()[:20]
    encoded: dict[str, Encoded] = {}
    if compressible:
        for coding, compress in compressors.items():
            packed = _compress(coding, compress, body, digest, memo)
            if len(packed) < len(body):
                encoded[coding] = Encoded(packed, f'"{digest}-{coding}"')
    return StaticFile(
        body=body,
        content_type=content_type,
        etag=f'"{digest}"',
        cache_control=f"public, max-age={max_age}",
        encoded=encoded,
    )


def _compress(
    coding: str,
    compress: Compressor,
    body: bytes,
    digest: str,
    memo: dict[tuple[str, str], bytes] | None,
) -> bytes:
    if memo is None:
        return compress(body)
    key = (coding, digest)
    packed = _MEMO.get(key)
    if packed is None:
        packed = compress(body)
    memo[key] = packed
    return packed


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
