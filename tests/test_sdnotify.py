"""sd_notify spoken to a unix datagram socket of our own, as systemd would bind it."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from wr.systemd import notify, watchdog_interval_s

# A datagram that has not arrived by then never will.
RECEIVE_TIMEOUT_S = 5.0


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the NOTIFY_SOCKET value that names it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(RECEIVE_TIMEOUT_S)
        yield sock, str(path)


@pytest.fixture
def abstract_listener() -> Iterator[tuple[socket.socket, str]]:
    name = f"wr-test-{os.getpid()}-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECEIVE_TIMEOUT_S)
        yield sock, "@" + name


@pytest.mark.parametrize(
    "message",
    ["READY=1", "STOPPING=1", "WATCHDOG=1", "RELOADING=1\nSTATUS=reloading rooms"],
)
def test_notify_sends_the_exact_bytes(
    listener: tuple[socket.socket, str], message: str
) -> None:
    sock, address = listener
    assert notify(message, {"NOTIFY_SOCKET": address})
    assert sock.recv(4096) == message.encode()


def test_notify_reaches_an_abstract_socket(
    abstract_listener: tuple[socket.socket, str],
) -> None:
    sock, address = abstract_listener
    assert notify("READY=1", {"NOTIFY_SOCKET": address})
    assert sock.recv(4096) == b"READY=1"


def test_each_message_is_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    env = {"NOTIFY_SOCKET": address}
    assert notify("READY=1", env)
    assert notify("WATCHDOG=1", env)
    assert sock.recv(4096) == b"READY=1"
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_reads_the_process_environment_by_default(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, address = listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert notify("READY=1")
    assert sock.recv(4096) == b"READY=1"


def test_notify_without_notify_socket_does_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": ""}) is False


def test_notify_to_a_missing_socket_warns_and_returns_false(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "gone")}
    with caplog.at_level(logging.WARNING, logger="wr.supervisor"):
        assert notify("READY=1", env) is False
    assert "cannot notify systemd message=READY=1" in caplog.text


def test_notify_to_a_missing_abstract_socket_returns_false() -> None:
    env = {"NOTIFY_SOCKET": f"@wr-test-nobody-{secrets.token_hex(8)}"}
    assert notify("READY=1", env) is False


def test_notify_to_a_path_too_long_returns_false(tmp_path: Path) -> None:
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / ("x" * 200))}) is False


def test_notify_to_a_socket_of_the_wrong_type_returns_false(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        assert notify("READY=1", {"NOTIFY_SOCKET": str(path)}) is False


# The watchdog period.


def test_watchdog_interval_is_half_the_period_systemd_asks_for() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000"}) == 0.0015


def test_watchdog_interval_for_our_own_pid() -> None:
    env = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval_s(env) == 2.0


def test_watchdog_meant_for_another_process_is_ignored() -> None:
    env = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert watchdog_interval_s(env) is None


def test_without_watchdog_usec_there_is_no_watchdog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval_s() is None
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": ""}) is None


def test_watchdog_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 0.5


@pytest.mark.parametrize("usec", ["ten", "1.5", "0x10", "0", "-2000000"])
def test_a_bad_watchdog_period_is_ignored(usec: str) -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": usec}) is None
