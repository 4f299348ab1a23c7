"""A fake transport and a fake loop whose clock the test moves: no sockets, no waits.

:class:`FakeLoop` offers the part of an event loop that protocols use for
timers (``time``, ``call_later``, ``call_at``, ``call_soon``); nothing runs
until the test calls :meth:`FakeLoop.advance`, which moves the clock and runs
every callback that has come due, in deadline order.

:class:`FakeTransport` records what a protocol writes and how it treats the
connection (close, abort, pause and resume reading). Like a real transport it
tells the protocol the connection is lost on the loop's next turn after
``close()``; :meth:`FakeTransport.lose` stands for the client going away.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

__all__ = ["FakeLoop", "FakeTimer", "FakeTransport"]


class FakeTimer:
    """What ``call_later`` returns: a deadline and a callback that can be cancelled."""

    def __init__(
        self, when: float, callback: Callable[..., object], args: tuple[Any, ...]
    ) -> None:
        self._when = when
        self._callback = callback
        self._args = args
        self._cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled

    def run(self) -> None:
        self._callback(*self._args)


class FakeLoop:
    """Timers on a clock that only :meth:`advance` moves."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._order = itertools.count()
        self._timers: list[tuple[float, int, FakeTimer]] = []

    def time(self) -> float:
        return self._now

    def call_at(
        self, when: float, callback: Callable[..., object], *args: Any
    ) -> FakeTimer:
        timer = FakeTimer(when, callback, args)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> FakeTimer:
        return self.call_at(self._now + delay, callback, *args)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> FakeTimer:
        return self.call_at(self._now, callback, *args)

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` ahead, running each timer at its deadline.

        Callbacks scheduled by a running callback run too if they fall due
        before the new time; ``advance(0)`` runs what ``call_soon`` queued.
        """
        if seconds < 0:
            raise ValueError("the clock does not go back")
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled():
                continue
            self._now = max(self._now, when)
            timer.run()
        self._now = target

    def run_ready(self) -> None:
        self.advance(0)

    def pending(self) -> list[FakeTimer]:
        """Timers that are neither cancelled nor run, earliest first."""
        return [t for _, _, t in sorted(self._timers) if not t.cancelled()]


class FakeTransport(asyncio.Transport):
    """Records writes and state changes; refuses writes after close."""

    def __init__(self, loop: FakeLoop | None = None) -> None:
        super().__init__()
        self._loop = loop
        self._protocol: asyncio.BaseProtocol | None = None
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.lost = False
        self.reading = True
        self.write_buffer_high: int | None = None
        self.write_buffer_low: int | None = None

    def connect(self, protocol: asyncio.BaseProtocol) -> None:
        """Open the connection: the protocol gets ``connection_made(self)``."""
        self._protocol = protocol
        protocol.connection_made(self)

    def take(self) -> bytes:
        """What was written since the last call."""
        out = bytes(self.written)
        self.written.clear()
        return out

    def lose(self, exc: Exception | None = None) -> None:
        """The connection is gone (the client left, or our close took effect)."""
        self.closed = True
        if self.lost or self._protocol is None:
            return
        self.lost = True
        self._protocol.connection_lost(exc)

    # asyncio.Transport.

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise AssertionError(f"write after close: {bytes(data)!r}")
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._loop is not None:
            self._loop.call_soon(self.lose)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def set_write_buffer_limits(
        self, high: int | None = None, low: int | None = None
    ) -> None:
        self.write_buffer_high = high
        self.write_buffer_low = low

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return ("127.0.0.1", 40000)
        return default
