"""The hostile request corpus in ``tests/requests/``: loading and checking.

A case file is a small head, a line ``---``, then the raw request. The
format is described in ``tests/requests/README.md``; in short:

- head lines are ``key: value``; ``#`` starts a comment. ``expect`` lists
  the statuses of the responses in order (``N*STATUS`` repeats one), then
  ``close`` if the server must end the connection after them. ``timeout``
  first means the answer comes only when the request-head timer fires.
- every request line loses its line end; ``\\r``, ``\\n``, ``\\t``, ``\\0``,
  ``\\xHH`` and ``\\\\`` stand for their bytes; a line ``@repeat N TEXT``
  is TEXT (with escapes) N times.

Both the bytes-in/bytes-out test (``tests/test_corpus.py``) and the live
server test read cases through :func:`load_cases` and compare with
:func:`check_replies`, so a case means the same thing to both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httptools
import orjson

from wr.config import HttpConfig

__all__ = [
    "CORPUS_DIR",
    "CORPUS_LIMITS",
    "CORPUS_LIMITS_TOML",
    "LAYER_STATUSES",
    "Case",
    "Reply",
    "check_replies",
    "load_cases",
    "parse",
    "parse_replies",
]

CORPUS_DIR = Path(__file__).parent / "requests"
# The limits the cases are written against (see tests/requests/README.md).
CORPUS_LIMITS = HttpConfig(
    max_target_bytes=1024,
    max_headers=32,
    max_header_bytes=4096,
    max_body_bytes=1024,
    header_timeout_s=1.0,
)
# The same limits as the [http] table of a live server's config.
CORPUS_LIMITS_TOML = "\n".join(
    f"{name} = {getattr(CORPUS_LIMITS, name)}"
    for name in (
        "max_target_bytes",
        "max_headers",
        "max_header_bytes",
        "max_body_bytes",
        "header_timeout_s",
    )
)
CASE_SUFFIX = ".http"
# The statuses the HTTP layer itself sends; each is counted as a bad request.
LAYER_STATUSES = frozenset({400, 408, 413, 414, 431, 501, 505})

_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[rnt0\\])")
_SIMPLE = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}


@dataclass(frozen=True)
class Case:
    name: str
    request: bytes
    statuses: tuple[int, ...]
    close: bool
    timeout: bool
    why: str


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def _unescape(line: bytes) -> bytes:
    def one(match: re.Match[bytes]) -> bytes:
        code = match[1]
        if code[:1] == b"x":
            return bytes([int(code[1:], 16)])
        return _SIMPLE[code]

    return _ESCAPE.sub(one, line)


def _statuses(words: list[str]) -> tuple[int, ...]:
    statuses: list[int] = []
    for word in words:
        count, _, status = word.rpartition("*")
        statuses.extend([int(status)] * (int(count) if count else 1))
    return tuple(statuses)


def parse(name: str, text: bytes) -> Case:
    """One case from the bytes of its file; ValueError if it is not well formed."""
    head, sep, body = text.partition(b"\n---\n")
    if not sep:
        raise ValueError(f"{name}: no '---' line between head and request")
    fields: dict[str, str] = {}
    why = []
    for raw in head.decode("ascii").splitlines():
        line = raw.strip()
        if line.startswith("#"):
            why.append(line.lstrip("# "))
        elif line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    words = fields.pop("expect", "").split()
    if fields:
        raise ValueError(f"{name}: unknown head keys {sorted(fields)}")
    timeout = bool(words) and words[0] == "timeout"
    close = bool(words) and words[-1] == "close"
    statuses = _statuses(words[int(timeout) : len(words) - int(close)])
    if not statuses and not close:
        raise ValueError(f"{name}: expect names no status and no close")

    request = []
    for raw_line in body.splitlines():
        if raw_line.startswith(b"@repeat "):
            _, count, rest = raw_line.split(b" ", 2)
            request.append(_unescape(rest) * int(count))
        else:
            request.append(_unescape(raw_line))
    return Case(name, b"".join(request), statuses, close, timeout, " ".join(why))


def load_cases() -> list[Case]:
    return [
        parse(path.stem, path.read_bytes())
        for path in sorted(CORPUS_DIR.glob(f"*{CASE_SUFFIX}"))
    ]


class _ReplyReader:
    """Splits a response byte stream with httptools' response parser."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.replies.append(Reply(status, self._headers, b"".join(self._body)))
        self._headers, self._body = {}, []


def parse_replies(data: bytes) -> list[Reply]:
    """The complete responses in ``data``, in order (1xx included)."""
    reader = _ReplyReader()
    reader.parser.feed_data(data)
    return reader.replies


def check_replies(case: Case, replies: list[Reply]) -> None:
    """The replies are the statuses the case expects, errors in the one shape."""
    got = tuple(reply.status for reply in replies)
    assert got == case.statuses, f"{case.name}: statuses {got} != {case.statuses}"
    for reply in replies:
        if reply.status < 400:
            continue
        body = orjson.loads(reply.body)
        assert isinstance(body, dict), case.name
        assert set(body) == {"error", "detail"}, f"{case.name}: {body}"
        assert all(isinstance(v, str) and v for v in body.values()), case.name
    if case.close and replies:
        assert replies[-1].headers.get(b"connection") == b"close", (
            f"{case.name}: last response does not say connection: close"
        )
