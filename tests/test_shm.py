"""The shared block across real processes: positions, robust locks, claims.

Children are forked with ``os.fork`` (the block is inherited, as workers
inherit it from the supervisor), report through a file or a pipe, and leave
with ``os._exit`` so that nothing of pytest runs twice.
"""

from __future__ import annotations

import array
import functools
import logging
import os
import select
import signal
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from wr.config import RoomConfig
from wr.room import CLAIM_WINDOW, Room
from wr.shm import MAX_ROOMS, RobustMutex, SharedBlock

CHILDREN = 4
JOINS_PER_CHILD = 20_000
# A child that has not finished by then is stuck; the test fails instead of
# hanging the run.
DEADLINE_S = 30.0


def fork(body: Callable[[], None]) -> int:
    """Run ``body`` in a child process; it exits 0 if ``body`` returned."""
    pid = os.fork()
    if pid == 0:
        try:
            body()
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    return pid


def wait_exit(pid: int, timeout_s: float = DEADLINE_S) -> int:
    """The child's exit code (negative: killed by that signal)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} did not exit within {timeout_s}s")


def read_within(fd: int, timeout_s: float = DEADLINE_S) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout_s)
    assert ready, "the child did not report in time"
    return os.read(fd, 64)


def lock_within(lock: RobustMutex, timeout_s: float = DEADLINE_S) -> None:
    """Take and release ``lock`` in a thread, failing if it never comes."""
    done = threading.Event()

    def take() -> None:
        with lock:
            pass
        done.set()

    threading.Thread(target=take, daemon=True).start()
    assert done.wait(timeout_s), "the lock is still held"


def shared_room(block: SharedBlock, name: str, reserved: int) -> Room:
    """A room in ``block`` whose line starts at 1, as a steward would set it."""
    room = Room(RoomConfig(name=name), block.room(name))
    room.restore(next_position=1, serving=0, claimed=0, admitted=0)
    room.reserved = reserved
    return room


def test_positions_taken_by_several_processes_are_unique_and_contiguous(
    tmp_path: Path,
) -> None:
    block = SharedBlock(CLAIM_WINDOW // 8)
    total = CHILDREN * JOINS_PER_CHILD
    # Exactly enough positions for everyone: one more join must be refused.
    room = shared_room(block, "sale", reserved=total + 1)
    gate_read, gate_write = os.pipe()

    def take_positions(out: Path) -> None:
        mine = Room(RoomConfig(name="sale"), block.room("sale"))
        os.read(gate_read, 1)
        positions = array.array("q")
        for _ in range(JOINS_PER_CHILD):
            position = mine.join()
            assert position is not None
            positions.append(position)
        out.write_bytes(positions.tobytes())

    outputs = [tmp_path / f"child-{i}.bin" for i in range(CHILDREN)]
    pids = [fork(functools.partial(take_positions, out)) for out in outputs]
    # All children start together, so they contend for the lock.
    os.write(gate_write, b"g" * CHILDREN)
    assert [wait_exit(pid) for pid in pids] == [0] * CHILDREN

    taken = array.array("q")
    for out in outputs:
        taken.frombytes(out.read_bytes())
    assert len(taken) == total
    assert sorted(taken) == list(range(1, total + 1))
    assert room.next_position == total + 1
    assert room.join() is None


@pytest.mark.parametrize("death", ["exit", "sigkill"])
def test_a_process_dying_with_the_lock_does_not_block_the_next_locker(
    death: str, caplog: pytest.LogCaptureFixture
) -> None:
    block = SharedBlock(CLAIM_WINDOW // 8)
    room = shared_room(block, "sale", reserved=100)
    report_read, report_write = os.pipe()
    hold_read, _hold_write = os.pipe()

    def die_holding_the_lock() -> None:
        slot = block.room("sale")
        slot.lock.__enter__()
        slot.counters.next_position += 1
        if death == "exit":
            os._exit(0)
        os.write(report_write, b"L")
        # Wait here, the lock held, until the parent kills us.
        os.read(hold_read, 1)

    pid = fork(die_holding_the_lock)
    if death == "sigkill":
        assert read_within(report_read) == b"L"
        os.kill(pid, signal.SIGKILL)
        assert wait_exit(pid) == -signal.SIGKILL
    else:
        assert wait_exit(pid) == 0

    with caplog.at_level(logging.WARNING, logger="wr.supervisor"):
        lock_within(block.room("sale").lock)
    assert "recovered a lock from a dead process" in caplog.text
    # The room goes on where the dead process left it, and the lock is
    # ordinary again: the next locker is not told about a dead owner.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wr.supervisor"):
        assert room.join() == 2
        lock_within(block.room("sale").lock)
    assert caplog.text == ""


def test_room_gives_one_slot_per_name() -> None:
    block = SharedBlock(16)
    sale = block.room("sale")
    assert block.room("sale") is sale
    other = block.room("other")
    assert other is not sale
    assert block.room("other") is other
    assert block.find("sale") is sale
    assert block.find("other") is other


def test_a_name_of_the_longest_allowed_length_keeps_its_slot() -> None:
    block = SharedBlock(16)
    name = "r" * 64
    slot = block.room(name)
    assert block.room(name) is slot
    assert block.find(name) is slot
    assert block.find(name[:-1]) is None


def test_room_refuses_more_than_max_rooms() -> None:
    block = SharedBlock(16)
    slots = {id(block.room(f"room-{i}")) for i in range(MAX_ROOMS)}
    assert len(slots) == MAX_ROOMS
    with pytest.raises(ValueError, match=f"more than {MAX_ROOMS} rooms"):
        block.room("one-too-many")
    # The rooms that exist are still found.
    assert block.find("room-0") is not None


def test_find_returns_none_for_an_unknown_room() -> None:
    block = SharedBlock(16)
    block.room("sale")
    assert block.find("other") is None
    assert SharedBlock(16).find("sale") is None


def test_a_slot_taken_before_a_fork_is_found_by_the_child(tmp_path: Path) -> None:
    block = SharedBlock(CLAIM_WINDOW // 8)
    room = shared_room(block, "sale", reserved=100)
    out = tmp_path / "position"

    def join_through_find() -> None:
        slot = block.find("sale")
        assert slot is not None
        position = Room(RoomConfig(name="sale"), slot).join()
        out.write_text(str(position))

    assert wait_exit(fork(join_through_find)) == 0
    assert out.read_text() == "1"
    assert room.join() == 2


def test_claims_made_in_a_child_are_seen_by_the_parent() -> None:
    block = SharedBlock(CLAIM_WINDOW // 8)
    room = shared_room(block, "sale", reserved=100)
    for _ in range(10):
        room.join()
    room.admit(10)

    def claim_five() -> None:
        mine = Room(RoomConfig(name="sale"), block.room("sale"))
        assert mine.claim(5)

    assert wait_exit(fork(claim_five)) == 0
    assert room.claimed == 1
    assert not room.claim(5)
    assert room.claim(6)
    assert room.claimed == 2


def test_a_heartbeat_written_by_a_child_is_seen_by_the_parent() -> None:
    block = SharedBlock(16)

    def beat() -> None:
        block.workers[3].pid = os.getpid()
        block.workers[3].heartbeat = 1234.5

    pid = fork(beat)
    assert wait_exit(pid) == 0
    assert block.workers[3].pid == pid
    assert block.workers[3].heartbeat == 1234.5
