"""The sd_notify protocol: one datagram to ``$NOTIFY_SOCKET`` per message.

The protocol is a line of ``KEY=VALUE`` text sent over a unix datagram
socket (see sd_notify(3)); it is small enough that wr speaks it directly
rather than depend on libsystemd. Without ``NOTIFY_SOCKET`` (not started by
systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["notify", "watchdog_interval_s"]

log = logging.getLogger("wr.supervisor")


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``); True if it was sent."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        # An abstract socket: the name starts with a NUL byte.
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd message=%s error=%s", message, exc)
        return False
    return True


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """How often to send ``WATCHDOG=1``: half the period systemd asked for."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        period_us = int(usec)
    except ValueError:
        return None
    # 0 means no watchdog to systemd (sd_watchdog_enabled(3)); less is nonsense.
    if period_us <= 0:
        return None
    return period_us / 2 / 1_000_000
