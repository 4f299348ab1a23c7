"""What survives a restart: the state directory and the counters file.

``<state_dir>/state.json`` holds, per room, ``next_position`` (every
position below it may have been handed out), ``issued`` (the positions
actually handed out when the file was written), ``serving``, ``claimed``,
``admitted`` and ``skips`` (ranges of positions that nobody holds). The
supervisor writes it atomically (write, fsync, rename) *before* it lets
workers hand out positions up to ``next_position`` or publishes a new
``serving``, so after any crash, even ``kill -9`` of every process, no
position is handed out twice and ``serving`` never goes back.

A state directory or file that is unreadable, corrupt or open to other
users stops start-up with one line; it is never silently replaced.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from wr.tokens import write_private_file

__all__ = [
    "MAX_COUNT",
    "STATE_FILE",
    "RoomState",
    "StateError",
    "check_private_file",
    "load_state",
    "prepare_state_dir",
    "save_state",
]

STATE_FILE = "state.json"
FORMAT_VERSION = 1
# The shared block keeps counters as signed 64-bit integers; a larger value
# would wrap around there. 2**62 leaves room for a reservation on top and
# is more positions than any line will ever hand out.
MAX_COUNT = 1 << 62


class StateError(Exception):
    """The state directory or a file in it cannot be used as it is."""


@dataclass(frozen=True, slots=True)
class RoomState:
    next_position: int = 1
    serving: int = 0
    claimed: int = 0
    admitted: int = 0
    issued: int = 1
    skips: tuple[tuple[int, int], ...] = ()
    opened: bool = False
    draw_size: int = 0
    draw_seed: str = ""
    draw_gaps: tuple[tuple[int, int], ...] = ()
    # The last reset of the room (wr.room.Room.reset); 0 if none.
    reset_at: int = 0
    reset_position: int = 0


def prepare_state_dir(path: Path) -> None:
    """Create the directory (0700) or check that an existing one is private."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = path.stat().st_mode
    except FileExistsError:
        # mkdir(exist_ok=True) raises this only for something not a directory.
        raise StateError(f"{path}: not a directory") from None
    except OSError as exc:
        raise StateError(f"{path}: cannot create or open: {exc.strerror}") from None
    if mode & 0o007:
        raise StateError(
            f"{path}: open to other users (mode {stat.S_IMODE(mode):04o}); "
            "chmod o-rwx it"
        )
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise StateError(f"{path}: not readable and writable by this user")


def check_private_file(path: Path) -> None:
    """Refuse a secret or state file that others may read or write."""
    mode = path.stat().st_mode
    if mode & 0o077:
        raise StateError(
            f"{path}: readable or writable by others (mode "
            f"{stat.S_IMODE(mode):04o}); chmod 600 it"
        )


def load_state(state_dir: Path) -> dict[str, RoomState]:
    """The saved counters by room; empty if nothing was saved yet."""
    path = state_dir / STATE_FILE
    try:
        check_private_file(path)
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StateError(f"{path}: cannot read: {exc.strerror}") from None
    except orjson.JSONDecodeError:
        raise StateError(f"{path}: corrupt (not JSON)") from None
    try:
        if data["version"] != FORMAT_VERSION:
            raise StateError(f"{path}: unknown format version {data['version']!r}")
        rooms = {name: _room_state(fields) for name, fields in data["rooms"].items()}
    except (KeyError, TypeError, AttributeError, ValueError):
        raise StateError(f"{path}: corrupt (unexpected content)") from None
    return rooms


def _room_state(fields: Mapping[str, object]) -> RoomState:
    next_position = _count(fields, "next_position")
    skips = fields.get("skips", [])
    gaps = fields.get("draw_gaps", [])
    if not isinstance(skips, list) or not isinstance(gaps, list):
        raise ValueError("skips and draw_gaps must be lists")
    state = RoomState(
        next_position=next_position,
        serving=_count(fields, "serving"),
        claimed=_count(fields, "claimed"),
        admitted=_count(fields, "admitted"),
        issued=_count(fields, "issued") if "issued" in fields else next_position,
        skips=tuple(_range(item) for item in skips),
        opened=fields.get("opened", True) is True,
        draw_size=_count(fields, "draw_size") if "draw_size" in fields else 0,
        draw_seed=_seed(fields.get("draw_seed", "")),
        draw_gaps=tuple(_range(item) for item in gaps),
        reset_at=_count(fields, "reset_at") if "reset_at" in fields else 0,
        reset_position=(
            _count(fields, "reset_position") if "reset_position" in fields else 0
        ),
    )
    if state.serving >= state.next_position:
        raise ValueError("serving must be below next_position")
    if state.issued > state.next_position:
        raise ValueError("issued must not pass next_position")
    if state.reset_position > state.next_position:
        raise ValueError("reset_position must not pass next_position")
    return state


def _seed(value: object) -> str:
    if not isinstance(value, str) or (value and len(bytes.fromhex(value)) != 32):
        raise ValueError("draw_seed must be 64 hex digits or empty")
    return value


def _range(item: object) -> tuple[int, int]:
    if (
        not isinstance(item, list)
        or len(item) != 2
        or not all(type(v) is int for v in item)
        or not 0 < item[0] < item[1] <= MAX_COUNT
    ):
        raise ValueError("a skip is [first, end) with 0 < first < end")
    return item[0], item[1]


def _count(fields: Mapping[str, object], name: str) -> int:
    value = fields[name]
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be an integer in 0..{MAX_COUNT}")
    return value


def save_state(state_dir: Path, rooms: Mapping[str, RoomState]) -> None:
    """Write the counters atomically; raises OSError if the disk refuses."""
    data = {
        "version": FORMAT_VERSION,
        "saved_at": time.time(),
        "rooms": {
            name: {
                "next_position": room.next_position,
                "serving": room.serving,
                "claimed": room.claimed,
                "admitted": room.admitted,
                "issued": room.issued,
                "skips": [list(skip) for skip in room.skips],
                "opened": room.opened,
                "draw_size": room.draw_size,
                "draw_seed": room.draw_seed,
                "draw_gaps": [list(gap) for gap in room.draw_gaps],
                "reset_at": room.reset_at,
                "reset_position": room.reset_position,
            }
            for name, room in rooms.items()
        },
    }
    write_private_file(state_dir / STATE_FILE, orjson.dumps(data))
