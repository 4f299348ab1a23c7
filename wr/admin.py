"""Live room administration: the overrides store and the admin API.

Rooms come from the config file; the admin API changes them while wr runs.
A change is written to ``<state_dir>/rooms.json`` (atomically, under a file
lock, so workers handling admin calls at once do not lose each other's
writes) and announced by bumping the shared block's ``generation``. Every
worker and the steward look at that counter every tick and re-read the
file, so a change applies everywhere within one tick and survives restarts
and reloads: the effective room is the file's room with the overrides on
top (:func:`effective_rooms`).

The admin API listens on its own address (``[admin]``, default
127.0.0.1:8081), never on the public port, and wants
``Authorization: Bearer <token>`` with the token from ``admin.token_file``
(default ``<state_dir>/admin.token``, created on first start), compared in
constant time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hmac
import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from wr.config import (
    ROOM_NAME,
    Config,
    ConfigError,
    RoomConfig,
    room_from_table,
)
from wr.http import Request, Response, error_response
from wr.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from wr.metrics import Metrics
from wr.room import Room
from wr.shm import WAIT_BUCKETS_S, SharedBlock
from wr.state import check_private_file
from wr.tokens import Tokens, write_private_file

__all__ = [
    "AdminApp",
    "OverridesStore",
    "admin_token",
    "effective_rooms",
    "room_document",
]

log = logging.getLogger("wr.admin")

OVERRIDES_FILE = "rooms.json"
TOKEN_FILE = "admin.token"  # noqa: S105 (a file name, not a secret)
# Bypass tokens live at most this long (a week).
MAX_BYPASS_TTL_S = 7 * 24 * 3600
_NO_STORE = ("cache-control", "no-store")


class OverridesStore:
    """The admin API's changes to rooms: a table per room, or None (deleted)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / OVERRIDES_FILE
        self._lock_path = state_dir / f".{OVERRIDES_FILE}.lock"

    def load(self) -> dict[str, dict[str, Any] | None]:
        try:
            check_private_file(self.path)
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        rooms = data["rooms"]
        if not isinstance(rooms, dict):
            raise ValueError(f"{self.path}: rooms must be an object")
        return rooms

    @contextlib.contextmanager
    def editing(self) -> Iterator[dict[str, dict[str, Any] | None]]:
        """The overrides to change in place; written back when the block ends."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            rooms = self.load()
            yield rooms
            data = {"version": 1, "saved_at": time.time(), "rooms": rooms}
            write_private_file(self.path, orjson.dumps(data))
        finally:
            os.close(fd)


def effective_rooms(
    config: Config, overrides: Mapping[str, Mapping[str, Any] | None]
) -> dict[str, RoomConfig]:
    """The rooms of the config file with the admin API's changes on top."""
    rooms = dict(config.rooms)
    for name, table in overrides.items():
        if table is None:
            rooms.pop(name, None)
            continue
        try:
            rooms[name] = room_from_table(name, table)
        except ConfigError as exc:
            # Written by a newer or older wr, or by hand: keep the file's room.
            log.error("ignoring a stored room change room=%s error=%s", name, exc)
    return rooms


def admin_token(config: Config, *, create: bool = False) -> str | None:
    """The admin bearer token; with ``create``, made on first use (0600)."""
    path = Path(config.admin.token_file or config.state_dir / TOKEN_FILE)
    try:
        check_private_file(path)
        token = path.read_text().strip()
    except FileNotFoundError:
        if not create or config.admin.token_file:
            return None
        token = secrets.token_urlsafe(32)
        write_private_file(path, (token + "\n").encode())
        log.info("created admin token path=%s", path)
    return token or None


def room_document(room: RoomConfig, live: Room | None = None) -> dict[str, Any]:
    """A room as the admin API shows it: its settings, and counters if live."""
    document = {k: v for k, v in dataclasses.asdict(room).items() if k != "name"}
    document["name"] = room.name
    if live is not None:
        draw = live.draw
        document["live"] = {
            "state": live.state(),
            "next_position": live.next_position,
            "serving": live.serving,
            "waiting": live.waiting,
            "admitted": live.admitted,
            "claimed": live.claimed,
            "prequeue_size": draw.size if draw else 0,
            "draw_seed": draw.seed_hex if draw else None,
        }
    return document


def _json(status: int, data: Any) -> Response:
    return Response(status, orjson.dumps(data), [_NO_STORE])


def _error(status: int, error: str, detail: str) -> Response:
    return error_response(status, error, detail, [_NO_STORE])


class AdminApp:
    """The admin API: rooms as JSON resources, bypass tokens."""

    def __init__(
        self,
        config: Config,
        rooms: Callable[[], Mapping[str, Room]],
        tokens: Tokens,
        block: SharedBlock,
        token: str | None,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        # /metrics moves here when metrics.listener is "admin".
        self.metrics = metrics if config.metrics.listener == "admin" else None
        self._rooms = rooms
        self.tokens = tokens
        self.block = block
        self._token = token.encode() if token else None
        self.store = OverridesStore(config.state_dir)
        self._clock = clock

    def handle(self, request: Request) -> Response:
        if not self._authorised(request):
            log.info(
                "refused admin call method=%s path=%s", request.method, request.path
            )
            return Response(
                401,
                orjson.dumps(
                    {"error": "unauthorised", "detail": "bearer token required"}
                ),
                [_NO_STORE, ("www-authenticate", 'Bearer realm="wr-admin"')],
            )
        if request.path == "/metrics" and self.metrics is not None:
            if request.method not in ("GET", "HEAD"):
                return _allowed("GET, HEAD")
            return Response(
                200, self.metrics.exposition(), [_NO_STORE], METRICS_CONTENT_TYPE
            )
        parts = request.path.strip("/").split("/")
        if parts[:3] != ["admin", "v1", "rooms"]:
            return _error(404, "not_found", "no such resource")
        if len(parts) == 3:
            if request.method in ("GET", "HEAD"):
                return self.list_rooms()
            return _allowed("GET, HEAD")
        name = parts[3]
        if len(parts) == 4:
            return self.room(request, name)
        if len(parts) == 5 and parts[4] == "stats":
            if request.method in ("GET", "HEAD"):
                return self.stats(name)
            return _allowed("GET, HEAD")
        if len(parts) == 5 and parts[4] == "bypass-tokens":
            if request.method == "POST":
                return self.bypass(request, name)
            return _allowed("POST")
        if len(parts) == 5 and parts[4] == "reset":
            if request.method == "POST":
                return self.reset(name)
            return _allowed("POST")
        return _error(404, "not_found", "no such resource")

    def _authorised(self, request: Request) -> bool:
        given = request.bearer()
        if self._token is None or given is None:
            return False
        return hmac.compare_digest(given.encode(), self._token)

    def _current(self) -> dict[str, RoomConfig]:
        return effective_rooms(self.config, self.store.load())

    def list_rooms(self) -> Response:
        live = self._rooms()
        rooms = self._current()
        return _json(
            200, {"rooms": [room_document(r, live.get(n)) for n, r in rooms.items()]}
        )

    def room(self, request: Request, name: str) -> Response:
        method = request.method
        if not ROOM_NAME.fullmatch(name):
            return _error(400, "bad_room_name", "room names are 1-64 of a-z 0-9 _ -")
        current = self._current()
        if method in ("GET", "HEAD"):
            if name not in current:
                return _error(404, "unknown_room", f"no room named {name!r}")
            return _json(200, room_document(current[name], self._rooms().get(name)))
        if method == "DELETE":
            if name not in current:
                return _error(404, "unknown_room", f"no room named {name!r}")
            self._write(name, None)
            return Response(204, headers=[_NO_STORE], content_type=None)
        if method not in ("PUT", "PATCH"):
            return _allowed("GET, HEAD, PUT, PATCH, DELETE")

        try:
            change = orjson.loads(request.body or b"{}")
        except orjson.JSONDecodeError:
            return _error(400, "bad_json", "the body is not JSON")
        if not isinstance(change, dict):
            return _error(400, "bad_json", "the body must be a JSON object")
        change.pop("live", None)
        if change.pop("name", name) != name:
            return _error(400, "name", "the name in the body differs from the URL")
        if method == "PATCH":
            if name not in current:
                return _error(404, "unknown_room", f"no room named {name!r}")
            base = room_document(current[name])
            base.pop("name")
            change = {**base, **change}
        try:
            room = room_from_table(name, change)
        except ConfigError as exc:
            return _error(400, "invalid", f"{exc.key}: {exc.problem}")
        if name not in current:
            # A slot before the announcement, so workers find the room.
            self.block.room(name)
        table = room_document(room)
        table.pop("name")
        self._write(name, table)
        status = 200 if name in current else 201
        return _json(status, room_document(room))

    def _write(self, name: str, table: dict[str, Any] | None) -> None:
        with self.store.editing() as rooms:
            rooms[name] = table
        with self.block.lock:
            self.block.header.generation += 1
        log.info("room changed room=%s deleted=%s", name, table is None)

    def stats(self, name: str) -> Response:
        room = self._rooms().get(name)
        if room is None:
            return _error(404, "unknown_room", f"no room named {name!r}")
        return _json(200, stats_document(room))

    def bypass(self, request: Request, name: str) -> Response:
        if name not in self._current():
            return _error(404, "unknown_room", f"no room named {name!r}")
        try:
            body = orjson.loads(request.body or b"{}")
            ttl = body.get("ttl_s", 3600) if isinstance(body, dict) else None
        except orjson.JSONDecodeError:
            ttl = None
        if type(ttl) is not int or not 60 <= ttl <= MAX_BYPASS_TTL_S:
            return _error(400, "invalid", f"ttl_s: must be 60..{MAX_BYPASS_TTL_S}")
        now = self._clock()
        live = self._rooms().get(name)
        if live is not None:
            now = live.issue_time(now)
        token = self.tokens.issue_bypass(name, ttl, now)
        path = f"/api/v1/rooms/{name}/bypass?token={token}"
        return _json(201, {"token": token, "expires": int(now) + ttl, "path": path})

    def reset(self, name: str) -> Response:
        """Start a fresh line: every token of the room issued so far is void."""
        room = self._rooms().get(name)
        if room is None:
            return _error(404, "unknown_room", f"no room named {name!r}")
        if not room.opened:
            return _error(
                409, "not_open", "the room has not opened; its line is not drawn yet"
            )
        reset_at, first = room.reset(self._clock())
        log.warning(
            "room reset requested room=%s first_position=%s reset_at=%s",
            name,
            first,
            reset_at,
        )
        return _json(200, {"room": name, "reset_at": reset_at, "first_position": first})


def stats_document(room: Room) -> dict[str, Any]:
    """What the product team asks of a room: waits, no-shows, who gave up."""
    counts, wait_sum = room.wait_histogram()
    claimed = sum(counts)
    drop_off = room.drop_off()
    settled = drop_off.settled
    return {
        "room": room.name,
        "state": room.state(),
        "joins": room.joins,
        "waiting": room.waiting,
        "admitted": room.admitted,
        "claimed": room.claimed,
        "noshow_ratio": room.noshow_ratio,
        "wait_at_admission": {
            "count": claimed,
            "mean_s": wait_sum / claimed if claimed else None,
            "buckets": [
                {"le_s": bound, "count": count}
                for bound, count in zip(
                    [*WAIT_BUCKETS_S, None], itertools.accumulate(counts), strict=True
                )
            ],
        },
        "drop_off": {
            "settled": settled,
            "abandoned": drop_off.abandoned,
            "abandoned_share": drop_off.abandoned / settled if settled else None,
            "untracked": drop_off.untracked,
            "still_waiting": [
                {"after_s": after_s, "share": share}
                for after_s, share in drop_off.still_waiting()
            ],
            "by_place": [
                {
                    "first": first,
                    "last": last,
                    "settled": count,
                    "abandoned": gone,
                    "abandoned_share": gone / count if count else None,
                }
                for first, last, count, gone in drop_off.by_place()
            ],
        },
    }


def _allowed(methods: str) -> Response:
    return error_response(
        405, "method_not_allowed", "method not allowed here", [("allow", methods)]
    )
