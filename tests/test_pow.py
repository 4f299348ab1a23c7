"""Proof-of-work on join: challenges, solutions, replays and the join route."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_api import T0, World, body
from wr.http import Request, Response
from wr.pow import (
    CHALLENGE_TTL_S,
    RECENT_MAX,
    ChallengeError,
    ProofOfWork,
    auto_difficulty,
    derive_key,
    leading_zero_bits,
)

KEY = derive_key(b"k" * 32)


def counting_rand() -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


def checker(recent_max: int = RECENT_MAX) -> ProofOfWork:
    return ProofOfWork(KEY, rand=counting_rand(), recent_max=recent_max)


def solve(challenge: str, difficulty: int) -> str:
    """The smallest counter that solves ``challenge``: what a browser does."""
    for counter in itertools.count():
        digest = hashlib.sha256(f"{challenge}{counter}".encode()).digest()
        if leading_zero_bits(digest) >= difficulty:
            return str(counter)
    raise AssertionError("unreachable")


def test_leading_zero_bits() -> None:
    assert leading_zero_bits(b"\xff" + bytes(31)) == 0
    assert leading_zero_bits(b"\x00\x80" + bytes(30)) == 8
    assert leading_zero_bits(b"\x00\x01" + bytes(30)) == 15
    assert leading_zero_bits(bytes(32)) == 256


def test_a_solved_challenge_is_accepted_once() -> None:
    pow_ = checker()
    challenge = pow_.issue("sale", 8, T0)
    counter = solve(challenge.text, 8)
    assert pow_.verify(challenge.text, counter, "sale", T0 + 1) == 8
    with pytest.raises(ChallengeError) as refused:
        pow_.verify(challenge.text, counter, "sale", T0 + 2)
    assert refused.value.reason == "replayed"


def test_the_counter_must_solve_it() -> None:
    pow_ = checker()
    challenge = pow_.issue("sale", 12, T0)
    good = int(solve(challenge.text, 12))
    # Any smaller counter failed, or the solver would have stopped there.
    for wrong in range(min(good, 50)):
        with pytest.raises(ChallengeError) as refused:
            pow_.verify(challenge.text, wrong, "sale", T0)
        assert refused.value.reason == "unsolved"


def test_a_challenge_expires() -> None:
    pow_ = checker()
    challenge = pow_.issue("sale", 4, T0)
    counter = solve(challenge.text, 4)
    assert challenge.expires == int(T0) + CHALLENGE_TTL_S
    with pytest.raises(ChallengeError) as refused:
        pow_.verify(challenge.text, counter, "sale", challenge.expires)
    assert refused.value.reason == "expired"


def test_a_challenge_is_for_one_room() -> None:
    pow_ = checker()
    challenge = pow_.issue("sale", 4, T0)
    with pytest.raises(ChallengeError) as refused:
        pow_.verify(challenge.text, solve(challenge.text, 4), "other", T0)
    assert refused.value.reason == "wrong_room"


def test_a_challenge_from_another_key_or_tampered_is_refused() -> None:
    challenge = checker().issue("sale", 4, T0)
    other = ProofOfWork(derive_key(b"x" * 32), rand=bytes)
    counter = solve(challenge.text, 4)
    with pytest.raises(ChallengeError) as refused:
        other.verify(challenge.text, counter, "sale", T0)
    assert refused.value.reason == "bad_signature"
    # Lowering the difficulty written in the challenge breaks its MAC.
    mac = challenge.text.split(".")[1]
    forged = checker().issue("sale", 0, T0).text.split(".")[0] + "." + mac
    with pytest.raises(ChallengeError) as refused:
        checker().verify(forged, "0", "sale", T0)
    assert refused.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "counter", ["", "-1", "1e3", "١٢", "9" * 21, 1.5, True, None, [1], "12 "]
)
def test_counters_that_are_not_decimal_numbers_are_malformed(counter: object) -> None:
    pow_ = checker()
    challenge = pow_.issue("sale", 0, T0)
    with pytest.raises(ChallengeError) as refused:
        pow_.verify(challenge.text, counter, "sale", T0)
    assert refused.value.reason == "malformed"


@given(text=st.one_of(st.text(max_size=300), st.binary().map(repr), st.none()))
def test_any_challenge_text_is_refused_with_a_reason(text: object) -> None:
    with pytest.raises(ChallengeError) as refused:
        checker().verify(text, "1", "sale", T0)
    assert refused.value.reason in ("malformed", "bad_signature")


def test_remembered_challenges_are_bounded_and_evictions_counted() -> None:
    pow_ = checker(recent_max=4)
    solved = []
    for _ in range(6):
        challenge = pow_.issue("sale", 0, T0)
        pow_.verify(challenge.text, "0", "sale", T0)
        solved.append(challenge)
    assert pow_.evicted == 2
    # The latest four are still refused; the evicted ones are not.
    for challenge in solved[2:]:
        with pytest.raises(ChallengeError):
            pow_.verify(challenge.text, "0", "sale", T0)
    assert pow_.verify(solved[0].text, "0", "sale", T0) == 0


def test_expired_challenges_leave_the_set_without_counting_as_evicted() -> None:
    pow_ = checker(recent_max=4)
    for step in range(10):
        now = T0 + step * CHALLENGE_TTL_S
        challenge = pow_.issue("sale", 0, now)
        pow_.verify(challenge.text, "0", "sale", now)
    assert pow_.evicted == 0


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(0, 10), (999, 10), (1000, 11), (1999, 11), (2000, 12), (8000, 14), (1e9, 16)],
)
def test_difficulty_rises_a_bit_per_doubling_of_joins_past_the_spike(
    rate: float, expected: int
) -> None:
    assert auto_difficulty(10, 16, rate, 1000) == expected


def test_without_a_ceiling_the_difficulty_stays_put() -> None:
    assert auto_difficulty(10, 0, 1e9, 1000) == 10
    assert auto_difficulty(0, 0, 1e9, 1000) == 0
    # A ceiling with no base switches proof-of-work on during a spike.
    assert auto_difficulty(0, 12, 4000, 1000) == 3


# The join route.


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path)
    room = world.rooms["default"]
    room.config = replace(room.config, pow_difficulty=6)
    return world


def join(world: World, data: object = None) -> Response:
    raw = b"" if data is None else orjson.dumps(data)
    request = Request("POST", "/api/v1/rooms/default/join", "", {}, body=raw)
    return world.app.handle(request)


def challenge_of(world: World) -> dict[str, object]:
    response = world.request("GET", "/api/v1/rooms/default/challenge")
    assert response.status == 200
    assert ("cache-control", "no-store") in response.headers
    return body(response)


def solved(world: World) -> dict[str, object]:
    issued = challenge_of(world)
    text = str(issued["challenge"])
    return {"challenge": text, "counter": solve(text, int(str(issued["difficulty"])))}


def test_a_join_without_a_solution_gets_a_challenge_instead(world: World) -> None:
    refused = join(world)
    assert refused.status == 403
    data = body(refused)
    assert data["error"] == "pow_required"
    challenge = data["challenge"]
    assert isinstance(challenge, dict)
    assert challenge["difficulty"] == 6
    assert challenge["algorithm"] == "sha256-leading-zero-bits"
    assert world.rooms["default"].next_position == 1
    assert world.metrics.pow_outcomes["default", "missing"] == 1


def test_a_solved_join_takes_a_place_and_a_replay_does_not(world: World) -> None:
    proof = solved(world)
    answer = join(world, {"pow": {**proof, "solve_ms": 420}})
    assert answer.status == 200
    assert body(answer)["position"] == 1

    replay = join(world, {"pow": proof})
    assert replay.status == 403
    assert body(replay)["error"] == "pow_replayed"
    assert world.rooms["default"].next_position == 2
    metrics = world.metrics
    assert metrics.pow_outcomes["default", "accepted"] == 1
    assert metrics.pow_outcomes["default", "replayed"] == 1
    assert metrics.pow_outcomes["default", "issued"] == 2
    assert metrics.pow_solve["default"][-1] == pytest.approx(0.42)


def test_holding_a_queue_token_needs_no_new_proof(world: World) -> None:
    first = body(join(world, {"pow": solved(world)}))
    again = world.app.handle(
        Request(
            "POST",
            "/api/v1/rooms/default/join",
            "",
            {b"authorization": f"Bearer {first['queue_token']}".encode()},
        )
    )
    assert again.status == 200
    assert body(again)["position"] == first["position"]


def test_an_expired_or_foreign_solution_is_refused_with_its_reason(
    world: World,
) -> None:
    proof = solved(world)
    world.clock.now = T0 + CHALLENGE_TTL_S
    assert body(join(world, {"pow": proof}))["error"] == "pow_expired"
    world.clock.now = T0
    world.rooms["other"].config = replace(world.rooms["other"].config, pow_difficulty=1)
    other = world.app.handle(
        Request(
            "POST",
            "/api/v1/rooms/other/join",
            "",
            {},
            body=orjson.dumps({"pow": solved(world)}),
        )
    )
    assert body(other)["error"] == "pow_wrong_room"


def test_a_challenge_from_before_proof_was_asked_for_does_not_do(
    world: World,
) -> None:
    room = world.rooms["default"]
    room.config = replace(room.config, pow_difficulty=0)
    easy = solved(world)
    room.config = replace(room.config, pow_difficulty=6)
    assert body(join(world, {"pow": easy}))["error"] == "pow_too_easy"


@pytest.mark.parametrize("raw", [b"{", b"[]", b"\xff", b'"pow"'])
def test_a_body_that_is_not_a_json_object_is_400(world: World, raw: bytes) -> None:
    request = Request("POST", "/api/v1/rooms/default/join", "", {}, body=raw)
    answer = world.app.handle(request)
    assert answer.status == 400
    assert body(answer)["error"] == "bad_body"


def test_without_proof_of_work_the_body_is_not_read(world: World) -> None:
    room = world.rooms["default"]
    room.config = replace(room.config, pow_difficulty=0)
    request = Request("POST", "/api/v1/rooms/default/join", "", {}, body=b"{")
    assert world.app.handle(request).status == 200


def test_the_room_says_what_it_asks(world: World) -> None:
    info = body(world.request("GET", "/api/v1/rooms/default"))
    assert info["pow_difficulty"] == 6
    exposition = world.metrics.exposition().decode()
    assert 'wr_room_pow_difficulty{room="default"} 6.0' in exposition
