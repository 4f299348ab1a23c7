"""The state directory and the counters file: what is accepted, what is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
import pytest

from wr.state import (
    MAX_COUNT,
    STATE_FILE,
    RoomState,
    StateError,
    load_state,
    prepare_state_dir,
    save_state,
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_state(state_dir: Path, content: bytes, mode: int = 0o600) -> Path:
    path = state_dir / STATE_FILE
    path.write_bytes(content)
    path.chmod(mode)
    return path


def good_room(**fields: object) -> dict[str, object]:
    room: dict[str, object] = {
        "next_position": 10,
        "serving": 4,
        "claimed": 3,
        "admitted": 4,
    }
    room.update(fields)
    return room


def state_bytes(rooms: object, version: object = 1) -> bytes:
    return orjson.dumps({"version": version, "saved_at": 0, "rooms": rooms})


def refusal(state_dir: Path) -> str:
    with pytest.raises(StateError) as caught:
        load_state(state_dir)
    message = str(caught.value)
    assert "\n" not in message
    assert str(state_dir / STATE_FILE) in message
    return message


# The directory.


def test_prepare_creates_missing_directories_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "a" / "b"
    prepare_state_dir(state_dir)
    assert state_dir.is_dir()
    assert mode_of(state_dir) == 0o700


def test_prepare_accepts_an_existing_private_directory(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o750)
    state_dir.chmod(0o750)
    prepare_state_dir(state_dir)
    assert mode_of(state_dir) == 0o750


@pytest.mark.parametrize("mode", [0o701, 0o702, 0o704, 0o705, 0o777])
def test_prepare_refuses_a_directory_open_to_others(tmp_path: Path, mode: int) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state_dir.chmod(mode)
    with pytest.raises(StateError) as caught:
        prepare_state_dir(state_dir)
    message = str(caught.value)
    assert "\n" not in message
    assert str(state_dir) in message
    assert f"mode {mode:04o}" in message


def test_prepare_refuses_a_file_in_place_of_the_directory(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.write_text("not a directory")
    with pytest.raises(StateError, match="not a directory") as caught:
        prepare_state_dir(state_dir)
    assert str(caught.value) == f"{state_dir}: not a directory"


def test_prepare_refuses_a_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    state_dir = tmp_path / "file" / "state"
    with pytest.raises(StateError) as caught:
        prepare_state_dir(state_dir)
    assert str(caught.value).startswith(f"{state_dir}: cannot create or open")


# Loading.


def test_a_missing_file_is_an_empty_state(tmp_path: Path) -> None:
    assert load_state(tmp_path) == {}


def test_a_missing_directory_is_an_empty_state(tmp_path: Path) -> None:
    assert load_state(tmp_path / "nowhere") == {}


def test_corrupt_json_is_refused(tmp_path: Path) -> None:
    write_state(tmp_path, b'{"version": 1, "rooms": {')
    assert refusal(tmp_path).endswith("corrupt (not JSON)")


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    write_state(tmp_path, b"")
    assert refusal(tmp_path).endswith("corrupt (not JSON)")


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_an_unknown_version_is_refused(tmp_path: Path, version: object) -> None:
    write_state(tmp_path, state_bytes({"a": good_room()}, version=version))
    assert "unknown format version" in refusal(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"[]",
        b'"state"',
        b"null",
        b"42",
        b'{"rooms": {}}',
        b'{"version": 1}',
        b'{"version": 1, "rooms": []}',
        b'{"version": 1, "rooms": {"a": []}}',
        b'{"version": 1, "rooms": {"a": 5}}',
        b'{"version": 1, "rooms": {"a": {"next_position": 3}}}',
    ],
    ids=[
        "list",
        "string",
        "null",
        "number",
        "no-version",
        "no-rooms",
        "rooms-list",
        "room-list",
        "room-number",
        "room-incomplete",
    ],
)
def test_content_of_the_wrong_shape_is_refused(tmp_path: Path, content: bytes) -> None:
    write_state(tmp_path, content)
    assert refusal(tmp_path).endswith("corrupt (unexpected content)")


COUNTERS = ["next_position", "serving", "claimed", "admitted", "issued"]


@pytest.mark.parametrize("field", COUNTERS)
@pytest.mark.parametrize("value", ["5", 5.0, True, None, [5]])
def test_a_counter_that_is_not_an_integer_is_refused(
    tmp_path: Path, field: str, value: object
) -> None:
    write_state(tmp_path, state_bytes({"a": good_room(**{field: value})}))
    assert refusal(tmp_path).endswith("corrupt (unexpected content)")


@pytest.mark.parametrize("field", COUNTERS)
def test_a_negative_counter_is_refused(tmp_path: Path, field: str) -> None:
    write_state(tmp_path, state_bytes({"a": good_room(**{field: -1})}))
    assert refusal(tmp_path).endswith("corrupt (unexpected content)")


@pytest.mark.parametrize("field", COUNTERS)
def test_a_counter_beyond_the_shared_counters_range_is_refused(
    tmp_path: Path, field: str
) -> None:
    # The shared block holds signed 64-bit counters: a larger value would
    # wrap around there and hand out positions again.
    room = good_room(next_position=MAX_COUNT)
    room[field] = 2**64 - 1
    write_state(tmp_path, state_bytes({"a": room}))
    assert refusal(tmp_path).endswith("corrupt (unexpected content)")


def test_the_largest_counters_allowed_load(tmp_path: Path) -> None:
    room = good_room(next_position=MAX_COUNT, serving=MAX_COUNT - 1)
    write_state(tmp_path, state_bytes({"a": room}))
    assert load_state(tmp_path)["a"].next_position == MAX_COUNT


@pytest.mark.parametrize(("serving", "next_position"), [(5, 5), (6, 5), (1, 0)])
def test_serving_at_or_past_next_position_is_refused(
    tmp_path: Path, serving: int, next_position: int
) -> None:
    room = good_room(serving=serving, next_position=next_position)
    write_state(tmp_path, state_bytes({"a": room}))
    assert refusal(tmp_path).endswith("corrupt (unexpected content)")


def test_issued_past_next_position_is_refused(tmp_path: Path) -> None:
    write_state(tmp_path, state_bytes({"a": good_room(issued=11)}))
    assert refusal(tmp_path).endswith("corrupt (unexpected content)")


def test_a_reset_position_past_next_position_is_refused(tmp_path: Path) -> None:
    write_state(tmp_path, state_bytes({"a": good_room(reset_position=11)}))
    assert refusal(tmp_path).endswith("corrupt (unexpected content)")


def test_a_file_from_before_resets_existed_has_none(tmp_path: Path) -> None:
    write_state(tmp_path, state_bytes({"a": good_room()}))
    room = load_state(tmp_path)["a"]
    assert (room.reset_at, room.reset_position) == (0, 0)


def test_a_file_without_issued_counts_every_position_as_issued(
    tmp_path: Path,
) -> None:
    write_state(tmp_path, state_bytes({"a": good_room()}))
    assert load_state(tmp_path)["a"].issued == 10


@pytest.mark.parametrize(
    "skips",
    [
        {"first": 5},
        [5, 9],
        [[5]],
        [[5, 9, 12]],
        [[9, 5]],
        [[5, 5]],
        [[0, 5]],
        [["5", 9]],
        [[5, 2**63]],
    ],
    ids=[
        "object",
        "flat",
        "short",
        "long",
        "reversed",
        "empty",
        "from-zero",
        "string",
        "beyond-range",
    ],
)
def test_malformed_skips_are_refused(tmp_path: Path, skips: object) -> None:
    write_state(tmp_path, state_bytes({"a": good_room(skips=skips)}))
    assert refusal(tmp_path).endswith("corrupt (unexpected content)")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_file_others_may_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    write_state(tmp_path, state_bytes({"a": good_room()}), mode=mode)
    message = refusal(tmp_path)
    assert f"mode {mode:04o}" in message


def test_a_directory_in_place_of_the_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).mkdir(mode=0o700)
    assert "cannot read" in refusal(tmp_path)


# Saving.


def test_saved_state_loads_back_the_same(tmp_path: Path) -> None:
    rooms = {
        "default": RoomState(
            next_position=1025,
            serving=7,
            claimed=5,
            admitted=7,
            issued=40,
            skips=((12, 20), (30, 31)),
        ),
        "sale": RoomState(
            next_position=900,
            opened=True,
            draw_size=500,
            draw_seed="ab" * 32,
            draw_gaps=((3, 300), (700, 800)),
        ),
        "quiet": RoomState(next_position=3, serving=2, claimed=0, admitted=2),
        "reset": RoomState(next_position=50, reset_at=1_800_000_001, reset_position=41),
    }
    save_state(tmp_path, rooms)
    assert load_state(tmp_path) == rooms


def test_saving_nothing_loads_back_nothing(tmp_path: Path) -> None:
    save_state(tmp_path, {})
    assert (tmp_path / STATE_FILE).exists()
    assert load_state(tmp_path) == {}


def test_the_saved_file_is_private(tmp_path: Path) -> None:
    save_state(tmp_path, {"a": RoomState()})
    assert mode_of(tmp_path / STATE_FILE) == 0o600


def test_saving_replaces_a_file_with_a_loose_mode(tmp_path: Path) -> None:
    write_state(tmp_path, b"old", mode=0o644)
    save_state(tmp_path, {"a": RoomState(next_position=9)})
    assert mode_of(tmp_path / STATE_FILE) == 0o600
    assert load_state(tmp_path) == {"a": RoomState(next_position=9)}


def test_saving_leaves_no_temporary_file(tmp_path: Path) -> None:
    save_state(tmp_path, {"a": RoomState()})
    save_state(tmp_path, {"a": RoomState(next_position=2)})
    assert os.listdir(tmp_path) == [STATE_FILE]


def test_saving_into_a_missing_directory_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):  # noqa: PT011 - any refusal of the disk
        save_state(tmp_path / "nowhere", {"a": RoomState()})
