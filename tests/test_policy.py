"""Admission policies with time passed in: rate, pause, capacity, no-shows, opening.

The policy tests drive a :class:`Policy` over a room with a private slot,
one tick at a time, on a clock counted in ticks. People claim their turn by
calling :meth:`Room.claim`, as workers do. The opening tests run a
:class:`Steward` over a real shared block and state directory, with a wall
clock the test moves; a restart is a new block and steward on the same
directory.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from wr.config import RoomConfig
from wr.draw import Draw
from wr.policy import CLAIM_GRACE_S, PASSTHROUGH_WINDOW_S, Policy
from wr.room import CLAIM_WINDOW, TICK_INTERVAL_S, UNLIMITED, Room
from wr.shm import INSIDE_BUCKET_S, SharedBlock
from wr.state import RoomState, load_state, prepare_state_dir, save_state
from wr.steward import Steward

SESSION_S = 600.0
TICKS_PER_MINUTE = round(60 / TICK_INTERVAL_S)


def make_room(**settings: Any) -> Room:
    return Room(RoomConfig(name="r", **settings))


def fill(room: Room, people: int) -> list[int]:
    positions = [room.join() for _ in range(people)]
    taken = [p for p in positions if p is not None]
    assert len(taken) == people
    return taken


class Line:
    """A room, its policy, and a clock that moves one tick at a time."""

    def __init__(
        self,
        room: Room,
        session_s: float = SESSION_S,
        tick_s: float = TICK_INTERVAL_S,
    ) -> None:
        self.room = room
        self.policy = Policy(room, session_s)
        self.tick_s = tick_s
        self.ticks = 0

    @property
    def now(self) -> float:
        return self.ticks * self.tick_s

    def tick(self) -> list[int]:
        """One tick of the ticker; the positions it let in (no draw: ranks)."""
        self.ticks += 1
        count = self.policy.admissions(self.tick_s, self.now)
        first = self.room.serving + 1
        self.room.admit(count)
        return list(range(first, self.room.serving + 1))

    def run(self, seconds: float) -> list[int]:
        let_in = []
        for _ in range(round(seconds / self.tick_s)):
            let_in += self.tick()
        return let_in

    def claim(self, positions: list[int]) -> None:
        for position in positions:
            assert self.room.claim(position, self.now)


# Rate.


def test_rate_mode_through_the_policy_matches_the_plain_rate() -> None:
    # 137 a minute is not a whole number per tick: fractions carry over.
    line = Line(make_room(rate_per_minute=137))
    plain = make_room(rate_per_minute=137)
    fill(line.room, 1000)
    fill(plain, 1000)
    for _ in range(2 * TICKS_PER_MINUTE):
        assert len(line.tick()) == plain.advance(TICK_INTERVAL_S)
    assert line.room.serving == plain.serving
    assert abs(line.room.serving - 274) <= 1


def test_a_rate_change_takes_effect_at_the_next_tick() -> None:
    line = Line(make_room(rate_per_minute=600))
    fill(line.room, 1000)
    assert [len(line.tick()) for _ in range(10)] == [1] * 10

    line.room.config = replace(line.room.config, rate_per_minute=6000)
    assert [len(line.tick()) for _ in range(10)] == [10] * 10

    line.room.config = replace(line.room.config, rate_per_minute=0)
    assert [len(line.tick()) for _ in range(10)] == [0] * 10
    assert line.room.serving == 110


# Pause, close, not yet open.


@pytest.mark.parametrize(
    "settings",
    [{"paused": True}, {"closed": True}, {"paused": True, "passthrough": True}],
)
def test_a_paused_or_closed_room_admits_nobody(settings: dict[str, bool]) -> None:
    line = Line(make_room(rate_per_minute=600, **settings))
    fill(line.room, 100)
    assert line.run(120) == []
    assert line.room.serving == 0
    assert line.room.waiting == 100


def test_a_room_not_yet_opened_admits_nobody() -> None:
    line = Line(make_room(rate_per_minute=600))
    line.room.restore(next_position=1, serving=0, claimed=0, admitted=0, opened=False)
    line.room.reserved = UNLIMITED
    fill(line.room, 100)
    assert line.run(60) == []


def test_a_pause_banks_nothing_for_a_burst_on_resume() -> None:
    line = Line(make_room(rate_per_minute=600))
    fill(line.room, 2000)
    assert len(line.run(5)) == 50

    line.room.config = replace(line.room.config, paused=True)
    assert line.run(60) == []
    line.room.config = replace(line.room.config, paused=False)

    # Exactly the rate from the moment of resuming: one a tick, no catch-up.
    assert [len(line.tick()) for _ in range(5)] == [1] * 5
    assert len(line.run(10)) == 100
    assert line.room.serving == 155


# Capacity.


def full_room(people: int = 100, session_s: float = SESSION_S) -> Line:
    """max_active=10 at a rate of 100 a tick; the first ten are let in and claim."""
    line = Line(make_room(rate_per_minute=60_000, max_active=10), session_s)
    fill(line.room, people)
    inside = line.tick()
    assert inside == list(range(1, 11))
    line.claim(inside)
    return line


def test_capacity_never_lets_more_than_max_active_inside() -> None:
    line = full_room()
    for _ in range(2 * TICKS_PER_MINUTE):
        line.claim(line.tick())
        assert line.room.active(line.now, SESSION_S) <= 10
    assert line.room.serving == 10
    assert line.room.claimed == 10


def test_a_leave_frees_a_place_at_the_next_tick() -> None:
    line = full_room()
    line.run(5)
    assert line.room.leave(3, 0.1, line.now, SESSION_S)
    assert line.tick() == [11]
    assert line.run(5) == []


def test_a_leave_counted_twice_frees_only_one_place() -> None:
    line = full_room()
    assert line.room.leave(3, 0.1, line.now, SESSION_S)
    assert not line.room.leave(3, 0.1, line.now, SESSION_S)
    assert line.tick() == [11]
    assert line.run(5) == []


def test_places_free_when_sessions_end() -> None:
    session_s = 60.0
    line = full_room(session_s=session_s)
    admitted_at = line.now

    # Inside for the whole session; sessions are counted in buckets of
    # INSIDE_BUCKET_S seconds, so the places free within one bucket after.
    while line.now + TICK_INTERVAL_S < admitted_at + session_s:
        line.claim(line.tick())
    assert line.room.serving == 10
    line.run(INSIDE_BUCKET_S + 1)
    assert line.room.serving == 20


def test_unclaimed_admissions_hold_their_places_for_the_grace_period() -> None:
    line = Line(make_room(rate_per_minute=60_000, max_active=10))
    fill(line.room, 100)
    assert len(line.tick()) == 10
    admitted_at = line.now

    while line.now + TICK_INTERVAL_S < admitted_at + CLAIM_GRACE_S:
        assert line.tick() == []
    # Nobody came: the places are given to the next people.
    line.run(3 * TICK_INTERVAL_S)
    assert line.room.serving == 20


def test_late_claims_do_not_hide_new_unclaimed_admissions() -> None:
    # People take 5 s to claim and stay 5 s. Claims in the grace period are
    # then partly of admissions older than it; counting them against newer
    # admissions would let in twice the capacity.
    line = Line(make_room(rate_per_minute=60_000, max_active=10))
    fill(line.room, 10_000)
    events: list[tuple[float, int, int]] = []  # (when, 0 claim / 1 leave, position)
    inside: dict[int, float] = {}
    most = 0
    for _ in range(3 * TICKS_PER_MINUTE):
        for position in line.tick():
            heapq.heappush(events, (line.now + 5, 0, position))
        while events and events[0][0] <= line.now:
            _, leaving, position = heapq.heappop(events)
            if leaving:
                assert line.room.leave(position, inside.pop(position), line.now, 600)
            else:
                assert line.room.claim(position, line.now)
                inside[position] = line.now
                heapq.heappush(events, (line.now + 5, 1, position))
        most = max(most, len(inside))
    assert most == 10
    assert line.room.admitted > 100


def test_unclaimed_admissions_are_counted_across_the_claim_ring_wrap() -> None:
    line = Line(make_room(rate_per_minute=60_000, max_active=10))
    start = CLAIM_WINDOW - 5
    line.room.restore(next_position=start + 1, serving=start, claimed=0, admitted=0)
    line.room.reserved = UNLIMITED
    fill(line.room, 100)
    let_in = line.tick()
    assert let_in == list(range(start + 1, start + 11))

    # Six of the ten claim, on both sides of the ring's end; four may come.
    claimers = [*let_in[::2], let_in[-1]]
    line.claim(claimers)
    assert line.run(5) == []
    for position in claimers[:2]:
        assert line.room.leave(position, line.now, line.now, SESSION_S)
    assert line.tick() == [start + 11, start + 12]


# No-show compensation.


# The policy is given the time and the tick's length, so any tick length
# works; half-second ticks keep half an hour of simulated crowd quick.
POPULATION_TICK_S = 0.5
POPULATION_TICKS_PER_MINUTE = round(60 / POPULATION_TICK_S)


@dataclass
class Outcome:
    claims_at: list[float]
    admitted_per_tick: list[int]

    def claims_per_minute(self, since_s: float, until_s: float) -> float:
        claims = sum(1 for at in self.claims_at if since_s <= at < until_s)
        return claims / ((until_s - since_s) / 60)

    def most_admitted_in_a_minute(self) -> int:
        counts, span = self.admitted_per_tick, POPULATION_TICKS_PER_MINUTE
        window = sum(counts[:span])
        most = window
        for i in range(span, len(counts)):
            window += counts[i] - counts[i - span]
            most = max(most, window)
        return most


def simulate(no_show: float, max_overadmit: float, minutes: int) -> Outcome:
    """A crowd at 600 a minute; those who come claim 0-6 s after being let in."""
    rng = random.Random(20240604)  # noqa: S311 - a crowd to replay, not a secret
    room = make_room(rate_per_minute=600, max_overadmit=max_overadmit)
    line = Line(room, tick_s=POPULATION_TICK_S)
    fill(room, minutes * 1000)
    coming: list[tuple[float, int]] = []
    outcome = Outcome([], [])
    for _ in range(minutes * POPULATION_TICKS_PER_MINUTE):
        let_in = line.tick()
        outcome.admitted_per_tick.append(len(let_in))
        for position in let_in:
            if rng.random() >= no_show:
                heapq.heappush(coming, (line.now + rng.uniform(0, 6), position))
        while coming and coming[0][0] <= line.now:
            at, position = heapq.heappop(coming)
            assert line.room.claim(position, at)
            outcome.claims_at.append(at)
    return outcome


def test_no_shows_are_made_up_for_within_the_bound() -> None:
    outcome = simulate(no_show=0.3, max_overadmit=1.5, minutes=30)
    claimed = outcome.claims_per_minute(10 * 60, 30 * 60)
    assert abs(claimed - 600) <= 0.05 * 600


def test_without_compensation_no_shows_cost_the_site_their_share() -> None:
    outcome = simulate(no_show=0.3, max_overadmit=1.0, minutes=30)
    claimed = outcome.claims_per_minute(10 * 60, 30 * 60)
    assert abs(claimed - 0.7 * 600) <= 0.05 * 0.7 * 600
    assert outcome.most_admitted_in_a_minute() <= 600


def test_compensation_never_admits_more_than_the_bound() -> None:
    outcome = simulate(no_show=0.9, max_overadmit=1.5, minutes=10)
    assert outcome.most_admitted_in_a_minute() <= 1.5 * 600
    # The bound is reached, not merely respected by admitting little.
    last_minute = outcome.admitted_per_tick[-POPULATION_TICKS_PER_MINUTE:]
    assert sum(last_minute) >= 0.95 * 900


# Passthrough.


def test_passthrough_lets_each_newcomer_in_at_the_next_tick() -> None:
    line = Line(make_room(rate_per_minute=600, passthrough=True))
    for _ in range(300):
        (position,) = fill(line.room, 1)
        assert line.tick() == [position]


def test_passthrough_queues_once_a_minutes_rate_was_admitted() -> None:
    line = Line(make_room(rate_per_minute=600, passthrough=True))
    for _ in range(300):
        fill(line.room, 1)
        line.tick()

    # A surge: the rest of the minute's 600 go in, the others queue.
    fill(line.room, 400)
    assert len(line.tick()) == 300
    while line.now + TICK_INTERVAL_S < PASSTHROUGH_WINDOW_S:
        assert line.tick() == []
    assert line.room.waiting == 100

    # The early admissions leave the window one a tick: so do the others.
    assert len(line.run(5)) in range(45, 51)


# Opening: the pre-queue and its draw.

WALL0 = 1_800_000_000.0
OPENS_IN_S = 60.0
PREQUEUE = 50


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    prepare_state_dir(path)
    return path


class Sale:
    """A steward for room "sale", opening OPENS_IN_S after the start."""

    def __init__(self, state_dir: Path, rate_per_minute: float = 6000.0) -> None:
        opens_at = datetime.fromtimestamp(WALL0 + OPENS_IN_S, tz=UTC).isoformat()
        self.rooms = {
            "sale": RoomConfig(
                name="sale", rate_per_minute=rate_per_minute, opens_at=opens_at
            )
        }
        self.state_dir = state_dir
        self.steps = 0
        self.wall = WALL0
        self.steward = self.start()

    def start(self) -> Steward:
        """A steward on a fresh block, as after a start or a crash."""
        return Steward(
            self.rooms,
            SharedBlock(CLAIM_WINDOW // 8),
            self.state_dir,
            self.steps * TICK_INTERVAL_S,
            wall=lambda: self.wall,
        )

    @property
    def room(self) -> Room:
        return self.steward.rooms["sale"]

    def step(self, wall_s: float = TICK_INTERVAL_S) -> None:
        """One tick later on the steward's clock, ``wall_s`` later on the wall."""
        self.steps += 1
        self.wall += wall_s
        self.steward.step(self.steps * TICK_INTERVAL_S)

    def open(self) -> None:
        """Move the wall clock past the opening and take the step that opens."""
        self.step(WALL0 + OPENS_IN_S + 0.5 - self.wall)
        assert self.room.opened

    def saved(self) -> RoomState:
        return load_state(self.state_dir)["sale"]


def fixed_seed(monkeypatch: pytest.MonkeyPatch, seed: bytes) -> None:
    monkeypatch.setattr(Draw, "new", staticmethod(lambda size: Draw(seed, size)))


def admitted(room: Room, positions: range) -> set[int]:
    return {p for p in positions if room.is_admitted(p)}


def test_before_the_opening_joins_gather_and_nobody_is_admitted(
    state_dir: Path,
) -> None:
    sale = Sale(state_dir)
    assert fill(sale.room, PREQUEUE) == list(range(1, PREQUEUE + 1))
    for _ in range(20):
        sale.step(wall_s=2.0)
    assert sale.wall < WALL0 + OPENS_IN_S
    assert not sale.room.opened
    assert sale.room.phase() == "prequeue"
    assert (sale.room.serving, sale.room.waiting) == (0, PREQUEUE)
    assert sale.room.draw is None
    assert not sale.saved().opened


def test_the_draw_is_saved_before_the_room_opens(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sale = Sale(state_dir)
    fill(sale.room, PREQUEUE)
    sale.step()
    seen: list[tuple[bool, RoomState]] = []

    def recording(path: Path, states: dict[str, RoomState]) -> None:
        seen.append((sale.room.opened, states["sale"]))
        save_state(path, states)

    monkeypatch.setattr("wr.steward.save_state", recording)
    sale.open()

    draw = sale.room.draw
    assert draw is not None
    assert draw.size == PREQUEUE
    saved = sale.saved()
    assert (saved.opened, saved.draw_size, saved.draw_seed) == (
        True,
        PREQUEUE,
        draw.seed_hex,
    )
    (first_open,) = [(opened, s) for opened, s in seen if s.opened][:1]
    assert first_open == (False, saved)


def test_admission_follows_the_drawn_ranks(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixed_seed(monkeypatch, bytes(range(32)))
    sale = Sale(state_dir)
    fill(sale.room, PREQUEUE)
    sale.open()
    draw = sale.room.draw
    assert draw is not None

    # Ten a tick: after each tick, exactly the first ranks are in.
    for _ in range(3):
        sale.step()
        served = sale.room.serving
        assert 0 < served < PREQUEUE
        expected = {draw.position(rank) for rank in range(1, served + 1)}
        assert admitted(sale.room, range(1, PREQUEUE + 1)) == expected
    assert expected != set(range(1, served + 1))


def test_people_who_join_after_the_opening_come_after_the_prequeue(
    state_dir: Path,
) -> None:
    sale = Sale(state_dir)
    fill(sale.room, PREQUEUE)
    sale.open()
    (late,) = fill(sale.room, 1)
    assert late == PREQUEUE + 1
    assert sale.room.rank(late) == PREQUEUE + 1

    prequeue = range(1, PREQUEUE + 1)
    for _ in range(10):
        sale.step()
        if sale.room.is_admitted(late):
            break
        assert sale.room.ahead(late) == len(prequeue) - len(
            admitted(sale.room, prequeue)
        )
    assert sale.room.is_admitted(late)
    assert admitted(sale.room, prequeue) == set(prequeue)


def open_big_sale(state_dir: Path, people: int) -> Draw:
    sale = Sale(state_dir)
    fill(sale.room, people)
    sale.open()
    draw = sale.room.draw
    assert draw is not None
    assert draw.size == people
    return draw


def test_the_shuffle_is_a_permutation_of_the_prequeue(state_dir: Path) -> None:
    people = 2000
    draw = open_big_sale(state_dir, people)
    ranks = [draw.rank(p) for p in range(1, people + 1)]
    assert sorted(ranks) == list(range(1, people + 1))
    assert [draw.position(r) for r in ranks] == list(range(1, people + 1))


def spearman(ranks: list[int]) -> float:
    """Rank correlation of 1..n with ``ranks`` (a permutation of 1..n)."""
    n = len(ranks)
    squares = sum((rank - i) ** 2 for i, rank in enumerate(ranks, start=1))
    return 1 - 6 * squares / (n * (n * n - 1))


@pytest.mark.parametrize("seed_byte", [0x00, 0x5A, 0xF3])
def test_arrival_order_does_not_predict_admission_order(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, seed_byte: int
) -> None:
    fixed_seed(monkeypatch, bytes([seed_byte]) * 32)
    people = 2000
    draw = open_big_sale(state_dir, people)
    ranks = [draw.rank(p) for p in range(1, people + 1)]
    assert abs(spearman(ranks)) < 0.1


def test_a_restart_after_the_opening_keeps_the_draw(state_dir: Path) -> None:
    sale = Sale(state_dir)
    fill(sale.room, PREQUEUE)
    sale.open()
    for _ in range(2):
        sale.step()
    before = sale.room.draw
    assert before is not None
    prequeue = range(1, PREQUEUE + 1)
    let_in = admitted(sale.room, prequeue)

    sale.steward = sale.start()
    after = sale.room.draw
    assert after is not None
    assert (after.seed, after.size) == (before.seed, before.size)
    assert [after.rank(p) for p in prequeue] == [before.rank(p) for p in prequeue]
    assert sale.room.opened
    assert admitted(sale.room, prequeue) >= let_in


def test_a_crash_before_the_opening_keeps_the_prequeue_at_the_rate(
    state_dir: Path,
) -> None:
    sale = Sale(state_dir)
    early = fill(sale.room, 10)
    sale.step()
    sale.steward = sale.start()
    late = fill(sale.room, 10)
    sale.open()

    # Ten admissions a tick: the first tick lets ten of the twenty in.
    sale.step()
    assert sum(sale.room.is_admitted(p) for p in early + late) <= 10

    # The gap the crash left costs no admission: the next tick lets the
    # other ten in, and every one of the twenty has a place of their own.
    sale.step()
    assert all(sale.room.is_admitted(p) for p in early + late)
    ranks = [sale.room.rank(p) for p in early + late]
    assert sorted(ranks) == list(range(1, 21))


def test_the_gaps_of_a_prequeue_survive_a_restart_after_the_opening(
    state_dir: Path,
) -> None:
    sale = Sale(state_dir)
    early = fill(sale.room, 10)
    sale.step()
    sale.steward = sale.start()
    late = fill(sale.room, 10)
    sale.open()
    before = {p: sale.room.rank(p) for p in early + late}
    saved = sale.saved()
    assert len(saved.draw_gaps) == 1
    assert saved.skips[0] == (21, saved.draw_gaps[0][1] - saved.draw_gaps[0][0] + 21)

    sale.steward.final_save()
    sale.steward = sale.start()
    assert {p: sale.room.rank(p) for p in early + late} == before
    assert sale.room.waiting == 20
