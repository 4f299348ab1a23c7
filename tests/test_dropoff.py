"""Drop-off figures against a simulated population whose give-up times are known.

Everyone joins at once; each person checks in every ``POLL_S`` until they
either give up (at a time the test chose) or their turn comes. The room lets
one person in a second, so place ``k`` is let in about ``k`` seconds after the
start: the test knows exactly who had gone and after how long.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from wr.config import ConfigError, RoomConfig, load_config
from wr.room import CLAIM_WINDOW, GONE_AFTER_S, UNLIMITED, DropOff, Room
from wr.shm import ABANDON_AFTER_S, PLACE_BUCKETS, SEEN_WINDOW, RoomSlot

T0 = 1_800_000_000.0
POLL_S = 10
PEOPLE = 2400
# Give-up times (seconds after joining) by place modulo the list's length;
# None stays until their turn.
GIVE_UP_S: tuple[float | None, ...] = (30, 90, 200, 450, 900, None, None)
# Whoever's turn comes within this long after they left still looks present
# to the server; the population keeps such people out.
MARGIN_S = GONE_AFTER_S + 2 * POLL_S


def population() -> dict[int, float | None]:
    people: dict[int, float | None] = {}
    for place in range(1, PEOPLE + 1):
        give_up = GIVE_UP_S[place % len(GIVE_UP_S)]
        # Whoever's turn comes before they leave, or too soon after, stays.
        if give_up is not None and place < give_up + MARGIN_S:
            give_up = None
        people[place] = give_up
    return people


def run(people: dict[int, float | None]) -> Room:
    room = Room(RoomConfig(name="r", rate_per_minute=60))
    for place in people:
        assert room.join() == place
        room.check_in(place, T0, T0)
    for second in range(1, PEOPLE + 2):
        now = T0 + second
        # Check-ins first, then the tick of this second.
        if second % POLL_S == 0:
            for place, give_up in people.items():
                waiting = not room.is_admitted(place)
                if waiting and (give_up is None or second <= give_up):
                    room.check_in(place, T0, now)
        room.admit(room.admissions(1.0), now)
    assert room.serving == PEOPLE
    return room


@pytest.fixture(scope="module")
def figures() -> tuple[dict[int, float | None], DropOff]:
    people = population()
    return people, run(people).drop_off()


def test_everyone_whose_turn_came_is_settled(
    figures: tuple[dict[int, float | None], DropOff],
) -> None:
    _, drop_off = figures
    assert drop_off.settled == PEOPLE
    assert drop_off.untracked == 0


def test_who_gave_up_and_after_how_long_is_counted_exactly(
    figures: tuple[dict[int, float | None], DropOff],
) -> None:
    people, drop_off = figures
    expected = [0] * (len(ABANDON_AFTER_S) + 1)
    for give_up in people.values():
        if give_up is not None:
            # Last seen at the last check-in before giving up.
            last_seen = give_up // POLL_S * POLL_S
            index = sum(1 for bound in ABANDON_AFTER_S if last_seen >= bound)
            expected[index] += 1
    assert list(drop_off.abandoned_by_wait) == expected
    assert drop_off.abandoned == sum(g is not None for g in people.values())


def test_the_curve_is_the_share_still_waiting(
    figures: tuple[dict[int, float | None], DropOff],
) -> None:
    people, drop_off = figures
    curve = dict(drop_off.still_waiting())
    for after_s in ABANDON_AFTER_S:
        gone = sum(
            1
            for g in people.values()
            if g is not None and g // POLL_S * POLL_S < after_s
        )
        share = curve[after_s]
        assert share is not None
        assert math.isclose(share, 1 - gone / PEOPLE)
    # Monotonic: nobody comes back.
    shares = [share or 0.0 for _, share in drop_off.still_waiting()]
    assert shares == sorted(shares, reverse=True)


def test_abandonment_by_place_in_line(
    figures: tuple[dict[int, float | None], DropOff],
) -> None:
    people, drop_off = figures
    bounds = [*PLACE_BUCKETS, None]
    for (first, last, settled, abandoned), bound in zip(
        drop_off.by_place(), bounds, strict=True
    ):
        assert last == bound
        places = [p for p in people if p >= first and (last is None or p <= last)]
        assert settled == len(places)
        assert abandoned == sum(people[p] is not None for p in places)


def test_positions_a_ring_lap_behind_are_untracked_not_misread() -> None:
    room = Room(RoomConfig(name="r", rate_per_minute=60))
    # The holder of a position one lap later wrote the same slot.
    room.check_in(5 + SEEN_WINDOW, T0, T0)
    room.restore(next_position=10, serving=0, claimed=0, admitted=0)
    room.admit(9, T0 + 1000)
    figures = room.drop_off()
    assert (figures.settled, figures.untracked) == (0, 9)


def test_positions_nobody_holds_are_not_counted_at_all() -> None:
    room = Room(RoomConfig(name="r", rate_per_minute=60))
    room.restore(next_position=21, serving=0, claimed=0, admitted=0, skips=[(5, 15)])
    for place in [*range(1, 5), *range(15, 21)]:
        room.check_in(place, T0, T0)
    room.admit(10, T0 + 1)
    figures = room.drop_off()
    assert (figures.settled, figures.untracked, figures.abandoned) == (10, 0, 0)
    assert room.serving == 20


def test_no_figures_yet_give_no_shares() -> None:
    room = Room(RoomConfig(name="r"))
    assert all(share is None for _, share in room.drop_off().still_waiting())


def test_the_window_is_set_by_config_and_bounds_what_is_tracked() -> None:
    window = 1024
    room = Room(
        RoomConfig(name="r", rate_per_minute=60),
        RoomSlot.private(CLAIM_WINDOW // 8, window),
    )
    room.restore(next_position=1, serving=0, claimed=0, admitted=0)
    room.reserved = UNLIMITED
    line = 3 * window
    for _ in range(line):
        position = room.join()
        assert position is not None
        room.check_in(position, T0, T0)
    room.admit(line, T0 + 1)
    figures = room.drop_off()
    # Only the last lap of the ring still holds its people's check-ins.
    assert (figures.settled, figures.untracked) == (window, line - window)
    assert figures.abandoned == 0


@pytest.mark.parametrize("value", [0, 1023, (1 << 26) + 1, "many"])
def test_a_bad_window_is_refused_naming_the_key(value: object, tmp_path: Path) -> None:
    path = tmp_path / "wr.toml"
    path.write_text(f"[metrics]\ndropoff_positions = {value!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match=r"^metrics\.dropoff_positions: "):
        load_config(path, env={})
