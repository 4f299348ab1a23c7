"""The supervisor's decisions and the key ring's rotation, without processes.

``Supervisor._on_exit`` is fed fake children and wait statuses (exit code N
is status ``N << 8``; death by signal S is status S); nothing is forked and
no signal is sent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import wr.supervisor
from wr.config import Config, TokensConfig, load_config
from wr.supervisor import (
    EXIT_CANNOT_START,
    RESTART_BACKOFF_MAX_S,
    RESTART_BACKOFF_MIN_S,
    YOUNG_DEATH_S,
    Supervisor,
    _Child,
)
from wr.tokens import (
    KEYS_FILE,
    SECRET_BYTES,
    KeyRing,
    KeyRingError,
    TokenError,
    Tokens,
)

# The key ring.

KEEP_S = 3600


def test_rotate_makes_a_new_key_active() -> None:
    ring = KeyRing.generate()
    rotated = ring.rotate(now=1_000.0, keep_s=KEEP_S)
    assert rotated.active != ring.active
    assert len(rotated.secrets[rotated.active]) == SECRET_BYTES
    assert rotated.secrets[rotated.active] != ring.secrets[ring.active]
    assert rotated.active not in rotated.retired


def test_rotate_keeps_the_old_key_with_the_time_it_retired() -> None:
    ring = KeyRing.generate()
    rotated = ring.rotate(now=1_000.7, keep_s=KEEP_S)
    assert rotated.secrets[ring.active] == ring.secrets[ring.active]
    assert rotated.retired == {ring.active: 1_000}


def test_rotate_drops_keys_retired_longer_than_keep_s_ago() -> None:
    first = KeyRing.generate()
    second = first.rotate(now=1_000.0, keep_s=KEEP_S)
    third = second.rotate(now=1_000.0 + KEEP_S - 1, keep_s=KEEP_S)
    assert set(third.secrets) == {first.active, second.active, third.active}

    fourth = third.rotate(now=1_000.0 + KEEP_S + 1, keep_s=KEEP_S)
    assert first.active not in fourth.secrets
    assert first.active not in fourth.retired
    assert set(fourth.secrets) == {second.active, third.active, fourth.active}
    assert fourth.retired == {
        second.active: 1_000 + KEEP_S - 1,
        third.active: 1_000 + KEEP_S + 1,
    }


def test_a_retired_key_verifies_its_tokens_until_it_is_dropped() -> None:
    config = TokensConfig()
    ring = KeyRing.generate()
    token = Tokens(ring, config).issue_queue("default", "s", 7, 60, now=1_000.0)

    rotated = ring.rotate(now=1_100.0, keep_s=KEEP_S)
    assert Tokens(rotated, config).check(token, "default", "queue", 1_100.0).pos == 7

    dropped = rotated.rotate(now=1_100.0 + KEEP_S, keep_s=KEEP_S)
    with pytest.raises(TokenError) as caught:
        Tokens(dropped, config).check(token, "default", "queue", 1_100.0)
    assert caught.value.reason == "unknown_kid"


def test_a_saved_ring_loads_back_with_its_retired_keys(tmp_path: Path) -> None:
    ring = KeyRing.generate().rotate(now=1_000.0, keep_s=KEEP_S)
    ring = ring.rotate(now=2_000.0, keep_s=KEEP_S)
    ring.save(tmp_path)
    loaded = KeyRing.load(tmp_path)
    assert loaded.active == ring.active
    assert dict(loaded.secrets) == dict(ring.secrets)
    assert dict(loaded.retired) == dict(ring.retired)
    assert sorted(loaded.retired.values()) == [1_000, 2_000]
    assert os.stat(tmp_path / KEYS_FILE).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_ring_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    KeyRing.generate().save(tmp_path)
    (tmp_path / KEYS_FILE).chmod(mode)
    with pytest.raises(KeyRingError) as caught:
        KeyRing.load(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / KEYS_FILE) in message
    assert f"mode {mode:04o}" in message


# The supervisor's response to a worker's exit.


def exited(code: int) -> int:
    """The wait status of a process that called exit(code)."""
    return code << 8


def killed(signum: int) -> int:
    """The wait status of a process killed by ``signum``."""
    return signum


@pytest.fixture
def notices(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the supervisor tells systemd, recorded instead of sent."""
    sent: list[str] = []

    def record(message: str) -> bool:
        sent.append(message)
        return True

    monkeypatch.setattr(wr.supervisor, "notify", record)
    return sent


@pytest.fixture
def supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notices: list[str]
) -> Iterator[Supervisor]:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)

    def refuse_signal(pid: int, signum: int) -> None:
        raise AssertionError(f"a unit test must not signal pid {pid} ({signum})")

    monkeypatch.setattr(wr.supervisor, "_signal", refuse_signal)

    def load() -> Config:
        return load_config(
            env={}, overrides={"state_dir": str(tmp_path / "state"), "workers": 2}
        )

    supervisor = Supervisor(load)
    yield supervisor
    os.close(supervisor._lock_fd)


def die(
    supervisor: Supervisor, index: int, started: float, now: float, status: int
) -> float | None:
    """Report a worker's death; return when it is due to restart, if at all."""
    supervisor._on_exit(_Child(index, 10_000 + index, started), status, now)
    return supervisor._restart_at.get(index)


def test_a_worker_that_lived_long_restarts_at_once(supervisor: Supervisor) -> None:
    now = 500.0
    assert die(supervisor, 0, 0.0, now, exited(1)) == now
    assert supervisor._stopping_since is None


def test_a_worker_dying_young_restarts_after_a_doubling_backoff(
    supervisor: Supervisor,
) -> None:
    now = 100.0
    backoffs = []
    for _ in range(12):
        restart_at = die(supervisor, 0, now, now + 1.0, exited(1))
        assert restart_at is not None
        backoffs.append(restart_at - (now + 1.0))
        now = restart_at
    expected = [
        min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_MIN_S * 2**i) for i in range(12)
    ]
    assert backoffs == pytest.approx(expected)
    assert backoffs[0] == pytest.approx(RESTART_BACKOFF_MIN_S)
    assert backoffs[-1] == RESTART_BACKOFF_MAX_S
    assert backoffs[1] == pytest.approx(2 * backoffs[0])


def test_a_long_life_resets_the_backoff(supervisor: Supervisor) -> None:
    for start in (100.0, 102.0, 104.0):
        die(supervisor, 0, start, start + 1.0, exited(1))
    assert supervisor._restart_at[0] == pytest.approx(105.0 + 4 * RESTART_BACKOFF_MIN_S)

    lived_long = 200.0 + YOUNG_DEATH_S
    assert die(supervisor, 0, 200.0, lived_long, exited(1)) == lived_long
    young_again = die(supervisor, 0, lived_long, lived_long + 1.0, exited(1))
    assert young_again == pytest.approx(lived_long + 1.0 + RESTART_BACKOFF_MIN_S)


def test_each_worker_has_its_own_backoff(supervisor: Supervisor) -> None:
    for start in (100.0, 102.0, 104.0):
        die(supervisor, 0, start, start + 1.0, exited(1))
    restart_at = die(supervisor, 1, 104.0, 105.0, killed(9))
    assert restart_at == pytest.approx(105.0 + RESTART_BACKOFF_MIN_S)


def test_a_signal_death_is_an_error_and_an_exit_a_warning(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="wr.supervisor"):
        die(supervisor, 0, 0.0, 500.0, killed(9))
        die(supervisor, 1, 0.0, 500.0, exited(2))
    deaths = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.getMessage().startswith("worker died")
    ]
    assert deaths == [
        (logging.ERROR, "worker died index=0 pid=10000 code=-9"),
        (logging.WARNING, "worker died index=1 pid=10001 code=2"),
    ]


def test_a_worker_that_cannot_start_stops_the_supervisor(
    supervisor: Supervisor, notices: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="wr.supervisor"):
        restart_at = die(supervisor, 1, 100.0, 101.0, exited(EXIT_CANNOT_START))
    assert restart_at is None
    assert supervisor._exit_code == EXIT_CANNOT_START
    assert supervisor._stopping_since == 101.0
    assert notices == ["STOPPING=1"]
    assert "worker cannot start, stopping index=1" in caplog.text


def test_workers_exiting_during_the_stop_are_not_restarted(
    supervisor: Supervisor, notices: list[str]
) -> None:
    die(supervisor, 1, 100.0, 101.0, exited(EXIT_CANNOT_START))
    assert die(supervisor, 0, 0.0, 102.0, killed(15)) is None
    assert die(supervisor, 0, 0.0, 102.0, exited(1)) is None
    assert supervisor._exit_code == EXIT_CANNOT_START
    assert notices == ["STOPPING=1"]


def test_a_stop_begun_by_a_signal_keeps_exit_code_zero(
    supervisor: Supervisor,
) -> None:
    supervisor._begin_stop(100.0, "signal SIGTERM")
    assert die(supervisor, 0, 0.0, 101.0, exited(EXIT_CANNOT_START)) is None
    assert supervisor._exit_code == 0
