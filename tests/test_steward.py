"""The steward: reservations, write-ahead saves, restarts, reloads.

Every test uses a real shared block and a real state directory; the clock
is a number the test moves by hand. A "crash" is a new block and a new
steward built from the same directory, as after ``kill -9`` of every
process: nothing of the old memory survives, only the file.
"""

from __future__ import annotations

import errno
import logging
import random
from collections.abc import Mapping
from pathlib import Path

import pytest

from wr.config import RoomConfig
from wr.room import CLAIM_WINDOW, TICK_INTERVAL_S, Room
from wr.shm import MAX_ROOMS, SharedBlock
from wr.state import RoomState, load_state, prepare_state_dir, save_state
from wr.steward import RESERVE_AHEAD_S, RESERVE_MIN, STEP_INTERVAL_S, Steward

# Room.claim and Room.admit address a ring of CLAIM_WINDOW bits.
CLAIM_BYTES = CLAIM_WINDOW // 8


def configs(**rates: float) -> dict[str, RoomConfig]:
    return {
        name: RoomConfig(name=name, rate_per_minute=rate)
        for name, rate in rates.items()
    }


def new_steward(
    state_dir: Path, rooms: Mapping[str, RoomConfig], now: float = 0.0
) -> Steward:
    """A steward on a fresh block, as the supervisor builds it at start-up."""
    return Steward(rooms, SharedBlock(CLAIM_BYTES), state_dir, now)


def join(room: Room, people: int) -> list[int]:
    positions = [room.join() for _ in range(people)]
    taken = [p for p in positions if p is not None]
    assert len(taken) == people, "the reservation ran out"
    return taken


def saved(state_dir: Path, name: str) -> RoomState:
    return load_state(state_dir)[name]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    prepare_state_dir(path)
    return path


# Start-up.


def test_a_new_steward_saves_a_reservation_before_anyone_joins(
    state_dir: Path,
) -> None:
    steward = new_steward(state_dir, configs(a=60))
    room = steward.rooms["a"]
    state = saved(state_dir, "a")
    assert state.next_position >= RESERVE_MIN + 1
    assert state.next_position >= room.reserved
    assert state.serving == 0
    assert join(room, 3) == [1, 2, 3]


def test_a_room_restored_from_the_file_takes_no_position_before_the_save(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_state(state_dir, {"a": RoomState(next_position=11, serving=4, issued=11)})
    seen: list[int | None] = []

    def save_and_try_a_join(path: Path, rooms: Mapping[str, RoomState]) -> None:
        # At the moment of the first save, nothing is handed out yet.
        slot = block.find("a")
        assert slot is not None
        seen.append(Room(RoomConfig(name="a"), slot).join())
        save_state(path, rooms)

    monkeypatch.setattr("wr.steward.save_state", save_and_try_a_join)
    block = SharedBlock(CLAIM_BYTES)
    steward = Steward(configs(a=60), block, state_dir, 0.0)
    assert seen == [None]
    assert steward.rooms["a"].join() == 11


# Write-ahead.


def assert_disk_covers_memory(state_dir: Path, rooms: Mapping[str, Room]) -> None:
    on_disk = load_state(state_dir)
    for name, room in rooms.items():
        state = on_disk.get(name, RoomState())
        assert state.serving >= room.serving, name
        assert state.next_position >= room.reserved, name


@pytest.mark.parametrize("seed", [1, 2])
def test_the_file_is_always_ahead_of_what_workers_see(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)  # noqa: S311 - a run to replay, not a secret
    steward: Steward | None = None

    def checked_save(path: Path, rooms: Mapping[str, RoomState]) -> None:
        # Just before the file changes is when it lags furthest behind.
        if steward is not None:
            assert_disk_covers_memory(state_dir, steward.rooms)
        save_state(path, rooms)

    monkeypatch.setattr("wr.steward.save_state", checked_save)
    steward = new_steward(state_dir, configs(busy=3000, slow=120))
    busy, slow = steward.rooms["busy"], steward.rooms["slow"]
    now = 0.0
    for _ in range(150):
        burst = rng.random() < 0.05
        for _ in range(rng.randrange(20_000) if burst else rng.randrange(20)):
            if busy.join() is None:
                break
        for _ in range(rng.randrange(3)):
            slow.join()
        now += STEP_INTERVAL_S * rng.choice([0.5, 1.0, 1.0, 3.0])
        steward.step(now)
        assert_disk_covers_memory(state_dir, steward.rooms)

    # The run did what it is meant to check: admissions and top-ups.
    assert busy.serving > 0
    assert slow.serving > 0
    assert busy.reserved > 1 + RESERVE_MIN
    assert steward.saves > 10


# Restarts.


def test_after_a_crash_new_positions_follow_all_old_ones(state_dir: Path) -> None:
    steward = new_steward(state_dir, configs(a=600))
    room = steward.rooms["a"]
    handed_out = join(room, 100)
    now = 0.0
    for _ in range(12):
        now += STEP_INTERVAL_S * 5
        steward.step(now)
        handed_out += join(room, 7)
    # People who joined after the last save count too.
    handed_out += join(room, 5)
    serving = room.serving
    assert serving > 0

    after = new_steward(state_dir, configs(a=600), now=now + 1.0)
    room_after = after.rooms["a"]
    assert room_after.serving >= serving
    new_positions = join(room_after, 50)
    assert min(new_positions) > max(handed_out)
    assert len(set(new_positions)) == 50


def test_a_crash_before_any_step_still_moves_positions_on(state_dir: Path) -> None:
    first = join(new_steward(state_dir, configs(a=60)).rooms["a"], 10)
    second = join(new_steward(state_dir, configs(a=60)).rooms["a"], 10)
    third = join(new_steward(state_dir, configs(a=60)).rooms["a"], 10)
    assert max(first) < min(second)
    assert max(second) < min(third)


def test_serving_never_goes_back_over_repeated_crashes(state_dir: Path) -> None:
    now = 0.0
    published = 0
    for _ in range(4):
        steward = new_steward(state_dir, configs(a=6000), now=now)
        room = steward.rooms["a"]
        assert room.serving >= published
        join(room, 30)
        for _ in range(5):
            now += TICK_INTERVAL_S
            steward.step(now)
        assert room.serving > published
        published = room.serving


def test_after_a_clean_stop_the_line_continues_without_a_gap(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    steward = new_steward(state_dir, configs(a=600, b=60))
    join(steward.rooms["a"], 40)
    steward.step(TICK_INTERVAL_S)
    join(steward.rooms["a"], 2)
    serving = steward.rooms["a"].serving
    steward.final_save()
    assert saved(state_dir, "a").next_position == 43
    assert saved(state_dir, "b").next_position == 1

    with caplog.at_level(logging.WARNING, logger="wr.ticker"):
        after = new_steward(state_dir, configs(a=600, b=60), now=10.0)
    assert after.rooms["a"].join() == 43
    assert after.rooms["b"].join() == 1
    assert after.rooms["a"].serving == serving
    assert after.rooms["a"].skips == []
    assert caplog.text == ""


# Reservations.


def test_reservations_grow_with_the_join_rate(state_dir: Path) -> None:
    steward = new_steward(state_dir, configs(busy=60, quiet=60))
    busy, quiet = steward.rooms["busy"], steward.rooms["quiet"]
    step_s, joins_per_step = 0.05, 500  # 10,000 a second
    now = 0.0
    for _ in range(40):
        join(busy, joins_per_step)
        now += step_s
        steward.step(now)
    ahead = busy.reserved - busy.next_position
    assert ahead > RESERVE_MIN
    # About RESERVE_AHEAD_S of arrivals at the measured rate.
    rate = joins_per_step / step_s
    assert ahead >= 0.9 * rate * RESERVE_AHEAD_S
    assert quiet.reserved - quiet.next_position == RESERVE_MIN
    assert saved(state_dir, "busy").next_position >= busy.reserved


def test_a_used_up_reservation_refuses_joins_until_the_next_step(
    state_dir: Path,
) -> None:
    steward = new_steward(state_dir, configs(a=60))
    room = steward.rooms["a"]
    free = room.reserved - room.next_position
    assert join(room, free)[-1] == free
    assert room.join() is None
    assert room.join() is None
    steward.step(STEP_INTERVAL_S)
    assert room.join() == free + 1
    assert saved(state_dir, "a").next_position >= room.reserved


def test_a_half_used_reservation_is_topped_up(state_dir: Path) -> None:
    steward = new_steward(state_dir, configs(a=60))
    room = steward.rooms["a"]
    first = room.reserved
    join(room, RESERVE_MIN // 2 + 1)
    steward.step(STEP_INTERVAL_S)
    assert room.reserved > first
    assert saved(state_dir, "a").next_position >= room.reserved


# A disk that refuses writes.


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """While the list holds a 1, every save fails with ENOSPC."""
    failing = [1]

    def save(path: Path, rooms: Mapping[str, RoomState]) -> None:
        if failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        save_state(path, rooms)

    monkeypatch.setattr("wr.steward.save_state", save)
    return failing


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "wr.ticker" and r.levelno == level
    ]


def test_rooms_keep_moving_when_saves_fail_and_it_is_said_once(
    state_dir: Path, full_disk: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    full_disk.clear()
    steward = new_steward(state_dir, configs(a=6000))
    room = steward.rooms["a"]
    full_disk.append(1)

    now = 0.0
    with caplog.at_level(logging.INFO, logger="wr.ticker"):
        for _ in range(30):
            join(room, 40)
            now += STEP_INTERVAL_S * 2
            steward.step(now)
        assert steward.save_failing
        assert room.serving > 0
        assert room.next_position == 30 * 40 + 1
        errors = records(caplog, logging.ERROR)
        assert len(errors) == 1
        assert "cannot save state" in errors[0]
        assert "No space left on device" in errors[0]
        assert records(caplog, logging.INFO) == []

        full_disk.clear()
        now += STEP_INTERVAL_S * 2
        steward.step(now)
    assert not steward.save_failing
    assert records(caplog, logging.INFO) == [f"state saved again path={state_dir}"]
    assert len(records(caplog, logging.ERROR)) == 1
    assert_disk_covers_memory(state_dir, steward.rooms)


def test_a_failing_save_from_the_start_keeps_the_room_open(
    state_dir: Path, full_disk: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="wr.ticker"):
        steward = new_steward(state_dir, configs(a=60))
        assert steward.rooms["a"].join() == 1
        steward.step(STEP_INTERVAL_S)
    assert len(records(caplog, logging.ERROR)) == 1


def test_a_quiet_room_catches_up_on_disk_once_saves_work_again(
    state_dir: Path, full_disk: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    full_disk.clear()
    steward = new_steward(state_dir, configs(a=600))
    room = steward.rooms["a"]
    join(room, 1)
    steward.step(STEP_INTERVAL_S / 2)
    assert saved(state_dir, "a").serving == 0

    # The one person is let in while the disk is full; then nothing happens
    # in the room: nobody joins, nobody waits.
    full_disk.append(1)
    steward.step(TICK_INTERVAL_S)
    assert room.serving == 1
    assert saved(state_dir, "a").serving == 0

    full_disk.clear()
    with caplog.at_level(logging.INFO, logger="wr.ticker"):
        steward.step(TICK_INTERVAL_S + STEP_INTERVAL_S)
    assert saved(state_dir, "a").serving == 1
    assert records(caplog, logging.INFO) == [f"state saved again path={state_dir}"]


# Reloads.


def test_a_changed_rate_takes_effect_at_the_next_tick(state_dir: Path) -> None:
    steward = new_steward(state_dir, configs(a=240))  # 4 a second
    room = steward.rooms["a"]
    join(room, 1000)
    steward.step(0.25)
    assert room.serving == 1

    steward.reconfigure(configs(a=2400), now=0.3)  # 40 a second
    assert room.serving == 1
    steward.step(0.5)
    assert room.serving == 1 + 10
    assert steward.rooms["a"] is room


def test_a_new_room_gets_a_slot_and_starts_at_one(state_dir: Path) -> None:
    steward = new_steward(state_dir, configs(a=60))
    join(steward.rooms["a"], 5)
    steward.reconfigure(configs(a=60, c=60), now=1.0)
    assert steward.block.find("c") is not None
    assert steward.rooms["c"].join() == 1
    assert steward.rooms["a"].join() == 6
    assert saved(state_dir, "c").next_position >= steward.rooms["c"].reserved
    assert steward.rooms["c"] in steward.ticker.rooms


def test_a_removed_room_is_kept_in_the_file_and_comes_back(state_dir: Path) -> None:
    steward = new_steward(state_dir, configs(a=60, b=600))  # b: 1 a tick
    b = steward.rooms["b"]
    taken = join(b, 5)
    steward.step(0.1)
    steward.step(0.2)
    assert b.serving == 2

    steward.reconfigure(configs(a=60), now=0.25)
    assert "b" not in steward.rooms
    assert b not in steward.ticker.rooms
    join(steward.rooms["a"], 3)
    now = 0.3
    for _ in range(10):
        steward.step(now)
        now += TICK_INTERVAL_S
    dormant = saved(state_dir, "b")
    assert dormant.serving == 2
    assert dormant.admitted == 2
    assert dormant.next_position > max(taken)

    # Back between two ticks: nobody was let in while it was away.
    steward.reconfigure(configs(a=60, b=600), now=now - TICK_INTERVAL_S / 2)
    back = steward.rooms["b"]
    assert back.serving == 2
    assert back.admitted == 2
    assert back.waiting == 3
    assert back.ahead(max(taken)) == 2
    latecomer = back.join()
    assert latecomer is not None
    assert latecomer > max(taken)
    steward.step(now)
    assert back.serving == 3


def test_a_room_missing_from_the_config_at_start_stays_in_the_file(
    state_dir: Path,
) -> None:
    steward = new_steward(state_dir, configs(a=60, b=60))
    join(steward.rooms["b"], 7)
    steward.final_save()

    without_b = new_steward(state_dir, configs(a=60))
    join(without_b.rooms["a"], 2)
    without_b.step(1.0)
    without_b.final_save()
    assert saved(state_dir, "b").next_position == 8

    with_b = new_steward(state_dir, configs(a=60, b=60))
    assert with_b.rooms["b"].join() == 8


def test_a_reload_with_too_many_rooms_changes_nothing(state_dir: Path) -> None:
    steward = new_steward(state_dir, configs(a=60, b=60))
    b = steward.rooms["b"]
    join(b, 3)
    too_many = configs(a=60, **{f"new-{i}": 60 for i in range(MAX_ROOMS - 1)})
    with pytest.raises(ValueError, match="rooms"):
        steward.reconfigure(too_many, now=1.0)
    assert list(steward.rooms) == ["a", "b"]
    assert steward.rooms["b"] is b
    assert steward.ticker.rooms == [steward.rooms["a"], b]
    steward.step(2.0)
    assert "b" in load_state(state_dir)
    assert not any(name.startswith("new-") for name in load_state(state_dir))


def test_a_spike_of_joins_raises_the_proof_of_work_and_calm_lowers_it(
    state_dir: Path,
) -> None:
    room_config = RoomConfig(
        name="sale",
        rate_per_minute=60,
        pow_difficulty=4,
        pow_max_difficulty=10,
        pow_spike_joins_per_s=100,
    )
    steward = new_steward(state_dir, {"sale": room_config})
    room = steward.rooms["sale"]
    assert room.pow_difficulty == 4

    # 400 joins a second: two doublings past the spike, so three bits more.
    now = 0.0
    for _ in range(3):
        join(room, 400)
        now += 1.0
        steward.step(now)
    assert room.pow_difficulty == 7

    # A quiet second brings it back to the room's own setting.
    now += 1.0
    steward.step(now)
    assert room.pow_difficulty == 4


# Resets.


def test_a_reset_is_saved_passed_over_and_restored(state_dir: Path) -> None:
    steward = new_steward(state_dir, configs(sale=60))
    room = steward.rooms["sale"]
    join(room, 30)
    reset_at, first = room.reset(1_800_000_000.5)
    steward.step(STEP_INTERVAL_S)

    state = saved(state_dir, "sale")
    assert (state.reset_at, state.reset_position) == (reset_at, first)
    assert first == 31
    assert room.waiting == 0
    assert state.next_position >= 31

    # After a restart the reset still holds, and the line goes on from it.
    again = new_steward(state_dir, configs(sale=60))
    restored = again.rooms["sale"]
    assert (restored.reset_at, restored.reset_position) == (reset_at, first)
    assert restored.next_position > 30
    assert restored.waiting == 0
