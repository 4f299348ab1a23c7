"""Room counters, admission arithmetic and the ticker, with time passed in."""

from __future__ import annotations

import pytest

from wr.config import RoomConfig
from wr.room import (
    CLAIM_WINDOW,
    FAR_POLL_S,
    MAX_TICK_GAP_S,
    NEAR_POLL_S,
    POLL_JITTER,
    Room,
    Ticker,
    next_poll_s,
)


def make_room(rate_per_minute: float = 60.0) -> Room:
    return Room(RoomConfig(name="r", rate_per_minute=rate_per_minute))


def fill(room: Room, people: int) -> list[int]:
    positions = [room.join() for _ in range(people)]
    assert None not in positions
    return [p for p in positions if p is not None]


def test_positions_are_handed_out_in_order_from_one() -> None:
    room = make_room()
    assert fill(room, 5) == [1, 2, 3, 4, 5]
    assert room.next_position == 6
    assert room.waiting == 5


def test_ahead_counts_people_still_waiting_in_front() -> None:
    room = make_room()
    fill(room, 10)
    assert room.ahead(1) == 0
    assert room.ahead(10) == 9
    room.admit(4)
    assert room.ahead(5) == 0
    assert room.ahead(10) == 5
    assert room.ahead(3) == 0


def test_eta_follows_the_admission_rate() -> None:
    room = make_room(rate_per_minute=120)  # two a second
    fill(room, 100)
    assert room.eta_s(1) == 1
    assert room.eta_s(100) == 50
    room.admit(40)
    assert room.eta_s(100) == 30
    assert room.eta_s(40) == 0


def test_eta_is_unknown_when_nobody_is_admitted() -> None:
    room = make_room(rate_per_minute=0)
    fill(room, 3)
    assert room.eta_s(3) is None


def test_advance_admits_at_the_rate_and_carries_fractions() -> None:
    room = make_room(rate_per_minute=90)  # 1.5 a second
    fill(room, 100)
    admitted = [room.advance(0.1) for _ in range(100)]  # ten seconds
    assert sum(admitted) == 15
    assert room.serving == 15
    assert set(admitted) <= {0, 1}


def test_advance_never_passes_the_last_position_handed_out() -> None:
    room = make_room(rate_per_minute=6000)
    fill(room, 3)
    assert room.advance(1.0) == 3
    assert room.serving == 3
    assert room.waiting == 0


def test_an_empty_line_banks_no_burst_for_later_arrivals() -> None:
    room = make_room(rate_per_minute=600)  # ten a second
    for _ in range(100):  # ten idle seconds
        room.advance(0.1)
    fill(room, 50)
    assert room.advance(0.1) == 1
    assert room.serving == 1


def test_serving_never_goes_down() -> None:
    room = make_room(rate_per_minute=600)
    fill(room, 1000)
    previous = 0
    for step in range(200):
        room.advance(0.05 * (step % 3))
        assert room.serving >= previous
        previous = room.serving


def test_claim_counts_each_admitted_position_once() -> None:
    room = make_room()
    fill(room, 5)
    room.admit(3)
    assert room.claim(2) is True
    assert room.claim(2) is False
    assert room.claim(3) is True
    assert room.claimed == 2


def test_claim_refuses_positions_not_yet_admitted() -> None:
    room = make_room()
    fill(room, 5)
    room.admit(3)
    assert room.claim(4) is False
    assert room.claimed == 0


def test_claim_slots_are_cleared_when_reused_by_later_positions() -> None:
    room = make_room(rate_per_minute=60 * CLAIM_WINDOW)
    room.restore(next_position=3 * CLAIM_WINDOW, serving=0, claimed=0, admitted=0)
    room.advance(1.0)
    first = CLAIM_WINDOW // 2
    assert room.claim(first) is True

    # Half a window later the slot of ``first`` belongs to a new position.
    room.advance(0.5)
    reuse = first + CLAIM_WINDOW
    assert room.serving >= reuse
    assert room.claim(reuse) is True
    # The old position is now outside the window: honoured, not counted.
    assert room.claim(first) is False
    assert room.claimed == 2


def test_ticker_advances_every_room_by_elapsed_time() -> None:
    rooms = [make_room(60), make_room(120)]
    for room in rooms:
        fill(room, 100)
    ticker = Ticker(rooms, now=1000.0)
    for step in range(1, 51):
        ticker.tick(1000.0 + step * 0.1)  # five seconds
    assert [room.serving for room in rooms] == [5, 10]


def test_ticker_caps_a_long_gap_instead_of_admitting_a_burst() -> None:
    room = make_room(60)
    fill(room, 1000)
    ticker = Ticker([room], now=0.0)
    assert ticker.tick(600.0) == MAX_TICK_GAP_S
    assert room.serving == 1


def test_ticker_ignores_a_clock_that_goes_back() -> None:
    room = make_room(600)
    fill(room, 100)
    ticker = Ticker([room], now=10.0)
    assert ticker.tick(9.0) == 0.0
    assert room.serving == 0


@pytest.mark.parametrize(
    ("eta_s", "base"),
    [(0, NEAR_POLL_S), (5, NEAR_POLL_S), (40, 10.0), (3600, FAR_POLL_S), (None, 60)],
)
def test_next_poll_grows_with_the_wait_within_its_bounds(
    eta_s: int | None, base: float
) -> None:
    assert next_poll_s(eta_s, lambda: 0.5) == base
    low = next_poll_s(eta_s, lambda: 0.0)
    high = next_poll_s(eta_s, lambda: 0.999999)
    assert low == pytest.approx(base * (1 - POLL_JITTER), abs=0.05)
    assert high == pytest.approx(base * (1 + POLL_JITTER), abs=0.05)


def test_join_stops_at_the_reserved_range() -> None:
    room = make_room()
    room.restore(next_position=10, serving=4, claimed=2, admitted=4)
    assert room.join() is None
    room.reserved = 12
    assert [room.join(), room.join(), room.join()] == [10, 11, None]
    assert room.next_position == 12


def test_admit_moves_serving_and_counts_admissions() -> None:
    room = make_room()
    fill(room, 10)
    room.admit(3)
    room.admit(0)
    room.admit(2)
    assert (room.serving, room.admitted) == (5, 5)


def test_ticker_plans_before_it_applies() -> None:
    room = make_room(rate_per_minute=600)
    fill(room, 100)
    ticker = Ticker([room], now=0.0)
    plan = ticker.plan(0.5)
    assert plan == {room: 5}
    assert room.serving == 0
    room.admit(plan[room])
    assert room.serving == 5


def test_admissions_pass_over_a_range_nobody_holds() -> None:
    room = make_room()
    room.restore(
        next_position=200, serving=10, claimed=0, admitted=10, skips=[(13, 100)]
    )
    room.reserved = 300
    assert room.waiting == 189 - 87
    assert room.ahead(101) == 101 - 10 - 1 - 87
    room.admit(5)  # 11, 12, then 100, 101, 102
    assert room.serving == 102
    assert room.admitted == 15
    assert room.skips == []


def test_a_range_right_after_serving_is_passed_at_once() -> None:
    room = make_room()
    room.restore(next_position=50, serving=10, claimed=0, admitted=10, skips=[(11, 40)])
    assert room.serving_after(1) == 40
    assert room.eta_s(41) == 2  # 40 and 41 are real, at one a second


def test_skips_already_passed_are_dropped_on_restore() -> None:
    room = make_room()
    room.restore(next_position=50, serving=30, claimed=0, admitted=30, skips=[(5, 20)])
    assert room.skips == []
    assert room.waiting == 19
