"""The connection timer is kept across keep-alive requests, not re-made.

Re-arming the keep-alive timer after every request used to cancel one
timer handle and make another; now one timer is pushed on when it fires
early. These tests hold the deadlines to what they were.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.fakes import FakeTimer
from tests.test_http import LIMITS, Server, get, parse_replies


def test_one_timer_serves_many_keep_alive_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = Server()
    made = []
    call_at = server.loop.call_at

    def counting_call_at(when: float, callback: Callable[..., object]) -> FakeTimer:
        made.append(when)
        return call_at(when, callback)

    monkeypatch.setattr(server.loop, "call_at", counting_call_at)
    protocol, transport = server.connect()

    for _ in range(50):
        protocol.data_received(get("/"))
        server.loop.advance(0.1)

    assert len(parse_replies(transport.take())) == 50
    assert len(server.loop.pending()) == 1
    assert len(made) == 1


def test_idle_close_counts_from_the_last_request() -> None:
    server = Server()
    protocol, transport = server.connect()
    protocol.data_received(get("/"))

    server.loop.advance(LIMITS.keepalive_timeout_s / 2)
    protocol.data_received(get("/"))
    # The first request's deadline passes: the timer fires, and waits on.
    server.loop.advance(LIMITS.keepalive_timeout_s / 2 + 0.01)
    assert not transport.closed
    assert len(server.loop.pending()) == 1

    server.loop.advance(LIMITS.keepalive_timeout_s / 2)
    assert transport.closed


def test_a_request_begun_while_idle_gets_the_shorter_head_deadline() -> None:
    server = Server()
    protocol, transport = server.connect()
    protocol.data_received(get("/"))
    transport.take()

    protocol.data_received(b"GET / HTTP/1.1\r\nHo")
    server.loop.advance(LIMITS.header_timeout_s + 0.01)

    [reply] = parse_replies(transport.take())
    assert reply.status == 408
    assert transport.closed
