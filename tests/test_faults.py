"""Faults of the disk under a live server: the state dir refuses writes.

The tests run as root, for whom file modes stop nothing, so the refusal is
made for real in two ways: the state file's path becomes a non-empty
directory (the atomic rename onto it fails, EISDIR), and the state dir is
a small tmpfs that a filler file fills up (ENOSPC). In both the server must
go on serving from memory, log the error once, show it in
``wr_state_save_failing`` and in ``/readyz``'s body (still 200, see
:meth:`wr.api.App.readyz`), and recover by itself once writes work again.
A unit test with an injected ENOSPC lives in ``tests/test_steward.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.serverproc import WrServer, running, wait_for
from tests.test_api import World
from wr.api import App
from wr.http import Request
from wr.static import StaticFiles

CONFIG = """
[server]
workers = 2

[rooms.default]
rate_per_minute = 60
"""
# Joins made while saves fail: each one is a change the steward must try
# (and fail) to save, over many of its steps.
JOINS_WHILE_FAILING = 40
TMPFS_BYTES = 256 * 1024
FILLER_CHUNK = 64 * 1024


def test_readyz_stays_200_and_says_when_saves_fail(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html>")
    world = World(tmp_path)
    failing = [False]
    app = App(
        world.config,
        world.rooms,
        world.tokens,
        world.metrics,
        StaticFiles.load(tmp_path),
        save_failing=lambda: failing[0],
    )
    readyz = Request("GET", "/readyz", "", {})
    assert orjson.loads(app.handle(readyz).body)["state"] == "saved"
    failing[0] = True
    response = app.handle(readyz)
    assert response.status == 200
    assert orjson.loads(response.body) == {"status": "ready", "state": "failing"}


def metric(wr: WrServer, name: str) -> float:
    for line in httpx.get(f"{wr.base}/metrics", timeout=5.0).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name}")


def join(wr: WrServer) -> int:
    answer = httpx.post(f"{wr.base}/api/v1/rooms/default/join", timeout=5.0)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["position"])


def readyz_state(wr: WrServer) -> str:
    answer = httpx.get(f"{wr.base}/readyz", timeout=5.0)
    assert answer.status_code == 200
    return str(answer.json()["state"])


def saved_next_position(wr: WrServer) -> int:
    data = orjson.loads((wr.state_dir / "state.json").read_bytes())
    return int(data["rooms"]["default"]["next_position"])


def saves_fail_and_recover(
    wr: WrServer, break_saves: Callable[[], None], fix_saves: Callable[[], None]
) -> None:
    """The whole story of a state dir that stops and starts taking writes."""
    positions = [join(wr)]
    break_saves()
    # The next change the steward saves is the first that fails.
    positions.append(join(wr))
    wait_for(lambda: metric(wr, "wr_state_save_failing") == 1, 10.0, "saves failing")
    assert readyz_state(wr) == "failing"

    # Serving from memory: joins go on, in order, none handed out twice.
    positions += [join(wr) for _ in range(JOINS_WHILE_FAILING)]
    assert positions == sorted(set(positions))
    assert readyz_state(wr) == "failing"
    log = wr.log.read_text()
    assert log.count("cannot save state, serving from memory") == 1, log

    fix_saves()
    wait_for(lambda: metric(wr, "wr_state_save_failing") == 0, 10.0, "saves again")
    assert readyz_state(wr) == "saved"
    assert wr.log.read_text().count("state saved again") == 1
    # What was handed out while the disk refused is on disk now.
    wait_for(lambda: saved_next_position(wr) > positions[-1], 10.0, "state caught up")

    # And so a crash now hands out nothing twice.
    wr.kill_all()
    wr.start()
    assert join(wr) > positions[-1]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WrServer]:
    yield from running(tmp_path, CONFIG)


@pytest.mark.slow
def test_a_state_file_that_cannot_be_replaced(server: WrServer) -> None:
    state = server.state_dir / "state.json"
    aside = server.state_dir / "state.json.aside"
    blocker = server.state_dir / "blocker"

    def break_saves() -> None:
        blocker.mkdir()
        (blocker / "keep").write_text("a non-empty directory")

        def swapped() -> bool:
            # The steward may write the file between our two renames; then
            # the second one fails and we try again.
            with contextlib.suppress(FileNotFoundError):
                state.rename(aside)
            try:
                blocker.rename(state)
            except OSError:
                return False
            return True

        wait_for(swapped, 10.0, "state.json replaced by a directory")

    def fix_saves() -> None:
        (state / "keep").unlink()
        state.rmdir()

    saves_fail_and_recover(server, break_saves, fix_saves)


def _mount_tmpfs(path: Path) -> None:
    path.mkdir(mode=0o700)
    try:
        subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={TMPFS_BYTES},mode=0700",
                "tmpfs",
                str(path),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        # Not a missing tool but a missing privilege (a container without
        # CAP_SYS_ADMIN); the rename test above covers the same story.
        pytest.skip(f"cannot mount a tmpfs here: {exc}")


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the disk refuses."""
    with path.open("wb") as f:
        while True:
            f.write(b"\0" * FILLER_CHUNK)
            f.flush()
            os.fsync(f.fileno())


@pytest.mark.slow
def test_a_full_state_dir(tmp_path: Path) -> None:
    wr = WrServer(tmp_path, CONFIG)
    _mount_tmpfs(wr.state_dir)
    filler = wr.state_dir / "filler"
    try:
        wr.start()

        def break_saves() -> None:
            with pytest.raises(OSError, match="No space left") as full:
                fill(filler)
            assert full.value.errno == errno.ENOSPC

        saves_fail_and_recover(wr, break_saves, filler.unlink)
    finally:
        if wr.proc is not None and wr.proc.poll() is None:
            wr.stop()
        subprocess.run(["umount", str(wr.state_dir)], check=False, timeout=30)
