"""The supervisor's duties towards the rooms: tick, reserve, save, publish.

One steward runs per host, in the supervisor (or in the only process when
``workers = 1``). Every :data:`STEP_INTERVAL_S` it

1. plans the admissions due since the last tick (every ``TICK_INTERVAL_S``);
2. tops up each room's *reserved* range of positions, so workers can keep
   handing out positions without waiting for the disk;
3. saves the counters as they will be (``wr.state``), including how far
   positions were actually handed out, and only then
4. publishes the new ``serving`` and reservations to the workers, and the
   proof-of-work difficulty that the recent join rate calls for.

Because the save comes first, a crash at any moment leaves on disk a
``next_position`` above every position handed out and a ``serving`` no lower
than any ever published. After a crash, the reserved positions above the
last saved ``issued`` become a *skip*: the ticker passes over them without
spending admissions, so the unused reservation costs the line nothing. The
few people who joined between the last save and the crash (at most one
step's arrivals) hold positions inside that range; they are let in when the
ticker passes it, a little early rather than never.

If the state directory stops taking writes (full, read-only), the steward
keeps the rooms moving from memory and logs an error, once, until a save
works again: the waiting room stays up; only the crash guarantee lapses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from wr.config import RoomConfig
from wr.draw import MAX_GAPS, Draw, Prequeue
from wr.policy import Policy
from wr.pow import auto_difficulty
from wr.room import TICK_INTERVAL_S, Room, Ticker
from wr.shm import SharedBlock
from wr.state import RoomState, load_state, save_state

__all__ = [
    "RESERVE_AHEAD_S",
    "RESERVE_MIN",
    "STEP_INTERVAL_S",
    "Steward",
    "open_room",
    "prequeue_of",
]

log = logging.getLogger("wr.ticker")

# How often reservations are checked: a flash crowd exhausts a small
# reservation quickly, so this runs more often than the ticker.
STEP_INTERVAL_S = 0.02
# Positions reserved ahead in a quiet room. Unused ones cost nothing after a
# crash (they are skipped), so this is generous: a flash crowd should not
# use it up between two steps.
RESERVE_MIN = 1 << 16
# In a busy room, enough positions for this many seconds of arrivals.
RESERVE_AHEAD_S = 10.0
# Arrival rates are measured over windows of this length.
RATE_WINDOW_S = 1.0


class Steward:
    def __init__(
        self,
        rooms: Mapping[str, RoomConfig],
        block: SharedBlock,
        state_dir: Path,
        now: float,
        *,
        session_s: float = 3600.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.block = block
        self.state_dir = state_dir
        self.session_s = session_s
        self._wall = wall
        self.policies: dict[str, Policy] = {}
        # Where the rooms come from when the admin API changes them.
        self.rooms_source: Callable[[], Mapping[str, RoomConfig]] | None = None
        self._generation = int(block.header.generation)
        saved = self._load_saved()
        # Rooms in the file but not in the config keep their counters, so a
        # room that comes back never hands out a position twice.
        self._dormant = {n: s for n, s in saved.items() if n not in rooms}
        self.rooms: dict[str, Room] = {}
        for name, config in rooms.items():
            room = Room(config, block.room(name))
            _restore(room, saved.get(name, RoomState()))
            self.rooms[name] = room
        self.ticker = Ticker(self.rooms.values(), now, self._admissions)
        self._next_tick = now + TICK_INTERVAL_S
        self._rate_started = now
        # Joins counted per room at the start of the current rate window.
        self._rate_from = {name: r.joins for name, r in self.rooms.items()}
        self._join_rate: dict[str, float] = dict.fromkeys(self.rooms, 0.0)
        self._saved_issued: dict[str, int] = {}
        self.save_failing = False
        self.saves = 0
        # Nothing may be handed out before a first reservation is saved.
        self.step(now)

    def _load_saved(self) -> dict[str, RoomState]:
        return load_state(self.state_dir)

    def reconfigure(self, rooms: Mapping[str, RoomConfig], now: float) -> None:
        """Apply a reloaded room list: new rates at once, new rooms, removed rooms."""
        # Slots first: if there are too many rooms, this raises before any
        # room has changed, and the running ones go on as they were.
        slots = {n: self.block.room(n) for n in rooms if n not in self.rooms}
        for name in list(self.rooms):
            if name not in rooms:
                room = self.rooms.pop(name)
                self._dormant[name] = _snapshot(room, room.reserved, 0)
                self._join_rate.pop(name, None)
        for name, config in rooms.items():
            if name in self.rooms:
                self.rooms[name].config = config
                continue
            room = Room(config, slots[name])
            _restore(room, self._dormant.pop(name, RoomState()))
            self.rooms[name] = room
            self._rate_from[name] = room.joins
            self._join_rate[name] = 0.0
        self.ticker.rooms = list(self.rooms.values())
        self.policies = {n: p for n, p in self.policies.items() if n in self.rooms}
        self.step(now)

    @property
    def admin_changed(self) -> bool:
        """True once per change the admin API announced in the shared block."""
        generation = int(self.block.header.generation)
        if generation == self._generation:
            return False
        self._generation = generation
        return True

    def _admissions(self, room: Room, dt: float) -> int:
        policy = self._policy(room)
        count = policy.admissions(dt, self._wall())
        room.publish_policy(policy.admit_rate(), policy.noshow_ratio())
        return count

    def _policy(self, room: Room) -> Policy:
        policy = self.policies.get(room.name)
        if policy is None or policy.room is not room:
            policy = self.policies[room.name] = Policy(room, self._session_s(room))
        policy.session_s = self._session_s(room)
        return policy

    def _session_s(self, room: Room) -> float:
        minutes = room.config.session_minutes
        return self.session_s if minutes is None else minutes * 60

    def _openings(self) -> dict[Room, Prequeue | None]:
        """Rooms whose opening time has come, with the draw for their pre-queue."""
        due: dict[Room, Prequeue | None] = {}
        wall = self._wall()
        for room in self.rooms.values():
            opens_at = room.config.opens_at_s
            if room.opened or (opens_at is not None and wall < opens_at):
                continue
            due[room] = None if opens_at is None else _prequeue(room)
        return due

    def step(self, now: float) -> None:
        if self.rooms_source is not None and self.admin_changed:
            self.reconfigure(self.rooms_source(), now)
            return
        plan: dict[Room, int] = {}
        if now >= self._next_tick:
            plan = self.ticker.plan(now)
            self._next_tick = now + TICK_INTERVAL_S
        self._measure(now)
        resets = [room for room in self.rooms.values() if room.pass_over_reset()]
        for room in resets:
            log.info(
                "room reset room=%s first_position=%s reset_at=%s",
                room.name,
                room.reset_position,
                room.reset_at,
            )
        reservations = self._reservations()
        openings = self._openings()

        handed_out = any(
            room.next_position != self._saved_issued.get(name)
            for name, room in self.rooms.items()
        )
        # After a failed save, memory is ahead of the file: retry each step
        # until it works, even if nothing moves.
        if (
            any(plan.values())
            or resets
            or reservations
            or openings
            or handed_out
            or self.save_failing
        ):
            self._save(plan, reservations, openings)
        for room, prequeue in openings.items():
            open_room(room, prequeue)
        wall = self._wall()
        for room, count in plan.items():
            room.admit(count, wall)
        for room, reserved in reservations.items():
            room.reserved = reserved
        self._publish_pow(self._join_rate)

    def _publish_pow(self, join_rates: Mapping[str, float]) -> None:
        """Ask for the proof of work that each room's join rate calls for."""
        for name, room in self.rooms.items():
            config = room.config
            room.pow_difficulty = auto_difficulty(
                config.pow_difficulty,
                config.pow_max_difficulty,
                join_rates.get(name, 0.0),
                config.pow_spike_joins_per_s,
            )

    def _measure(self, now: float) -> None:
        elapsed = now - self._rate_started
        if elapsed < RATE_WINDOW_S:
            return
        for name, room in self.rooms.items():
            joined = room.joins - self._rate_from.get(name, room.joins)
            self._join_rate[name] = joined / elapsed
            self._rate_from[name] = room.joins
        self._rate_started = now

    def _reservations(self) -> dict[Room, int]:
        due = {}
        for name, room in self.rooms.items():
            ahead = max(
                RESERVE_MIN, int(self._join_rate.get(name, 0) * RESERVE_AHEAD_S)
            )
            # Top up at half, so a steady crowd never finds the range empty.
            if room.reserved - room.next_position < ahead // 2:
                due[room] = room.next_position + ahead
        return due

    def _save(
        self,
        plan: Mapping[Room, int],
        reservations: Mapping[Room, int],
        openings: Mapping[Room, Prequeue | None] | None = None,
    ) -> None:
        openings = openings or {}
        states = dict(self._dormant)
        issued = {}
        for name, room in self.rooms.items():
            reserved = reservations.get(room, room.reserved)
            states[name] = _snapshot(room, reserved, plan.get(room, 0))
            if room in openings:
                states[name] = _opened(states[name], room, openings[room])
            issued[name] = states[name].issued
        try:
            save_state(self.state_dir, states)
        except OSError as exc:
            if not self.save_failing:
                log.error(
                    "cannot save state, serving from memory path=%s error=%s",
                    self.state_dir,
                    exc.strerror or exc,
                )
            self.save_failing = True
            self.block.header.save_failing = 1
            return
        if self.save_failing:
            log.info("state saved again path=%s", self.state_dir)
        self.save_failing = False
        self.block.header.save_failing = 0
        self._saved_issued = issued
        self.saves += 1

    def final_save(self) -> None:
        """Save the counters as they are, once no worker hands out positions.

        The unused part of each reservation is given back, so a clean
        restart leaves no gap in the line.
        """
        for room in self.rooms.values():
            room.reserved = room.next_position
        self._save({}, {})


def open_room(room: Room, prequeue: Prequeue | None) -> None:
    """Open ``room`` with the draw of its pre-queue, and say so in the log."""
    room.open(prequeue)
    log.info(
        "room opened room=%s prequeue=%s gaps=%s seed=%s",
        room.name,
        prequeue.draw.size if prequeue else 0,
        len(prequeue.gaps) if prequeue else 0,
        prequeue.draw.seed_hex if prequeue else "-",
    )


def _snapshot(room: Room, reserved: int, admitting: int) -> RoomState:
    issued = room.next_position
    return RoomState(
        next_position=max(reserved, issued),
        serving=room.serving_after(admitting),
        claimed=room.claimed,
        admitted=room.admitted + admitting,
        issued=issued,
        skips=tuple(room.skips),
        opened=room.opened,
        reset_at=room.reset_at,
        reset_position=room.reset_position,
        **_draw_fields(room.prequeue),
    )


def _opened(state: RoomState, room: Room, prequeue: Prequeue | None) -> RoomState:
    """What ``state`` becomes once ``room`` opens with ``prequeue``."""
    if prequeue is None:
        return replace(state, opened=True)
    return replace(
        state,
        opened=True,
        skips=tuple(prequeue.skips_after_opening(room.skips)),
        **_draw_fields(prequeue),
    )


def _draw_fields(prequeue: Prequeue | None) -> dict[str, Any]:
    if prequeue is None:
        return {}
    return {
        "draw_size": prequeue.draw.size,
        "draw_seed": prequeue.draw.seed_hex,
        "draw_gaps": prequeue.gaps,
    }


def _prequeue(room: Room) -> Prequeue | None:
    """The draw for the positions handed out before the opening.

    Skips before the opening are gaps of the pre-queue (one per crash); the
    largest :data:`MAX_GAPS` are left out of the draw. More gaps than that
    would take many crashes before one opening; the positions of the
    smaller ones are then drawn with the rest, and each costs an admission.
    """
    return prequeue_of(room.next_position - 1, room.skips)


def prequeue_of(end: int, skips: Sequence[tuple[int, int]]) -> Prequeue | None:
    """A fresh draw for positions ``1..end`` less the largest of ``skips``."""
    if end <= 0:
        return None
    gaps = [(first, min(stop, end + 1)) for first, stop in skips if first <= end]
    gaps = sorted(sorted(gaps, key=lambda gap: gap[0] - gap[1])[:MAX_GAPS])
    held = end - sum(stop - first for first, stop in gaps)
    return Prequeue(Draw.new(held), tuple(gaps))


def _restore(room: Room, state: RoomState) -> None:
    skips = list(state.skips)
    if state.issued < state.next_position:
        # Not stopped cleanly: the reserved positions above the last save
        # were handed out to at most a few people; pass over them.
        skips.append((state.issued, state.next_position))
        log.warning(
            "passing over reserved positions not saved as issued room=%s "
            "first=%s end=%s",
            room.name,
            state.issued,
            state.next_position,
        )
    prequeue = None
    if state.draw_size:
        draw = Draw(seed=bytes.fromhex(state.draw_seed), size=state.draw_size)
        prequeue = Prequeue(draw, state.draw_gaps)
    room.restore(
        next_position=state.next_position,
        serving=state.serving,
        claimed=state.claimed,
        admitted=state.admitted,
        skips=skips,
        # A room without an opening time is open from the start.
        opened=state.opened or room.config.opens_at is None,
        prequeue=prequeue,
        reset_at=state.reset_at,
        reset_position=state.reset_position,
    )
