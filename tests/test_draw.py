"""The pre-queue draw: a bijection, its inverse, determinism, fairness, audit."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wr.draw
from wr.config import RoomConfig
from wr.draw import MAX_GAPS, MAX_SIZE, ROUNDS, SEED_BYTES, Draw, Prequeue
from wr.room import Room

PROPERTY = settings(max_examples=60, deadline=None)

KNOWN_SEED = bytes(range(32))

# Edge sizes, powers of two (where the domain's width changes) and their
# neighbours, small primes, and a few thousand.
SIZES = [
    *(0, 1, 2, 3, 4, 5, 7, 8, 9, 11, 13, 15, 16, 17, 31, 32, 33, 63, 64, 65),
    *(127, 255, 256, 257, 1023, 1024, 1025, 2999, 4095, 4096, 4097),
]

seeds = st.binary(min_size=SEED_BYTES, max_size=SEED_BYTES)


def fixed_seed(label: str, index: int) -> bytes:
    """A deterministic seed, so statistical tests give the same verdict each run."""
    return hashlib.sha256(f"wr draw test {label} {index}".encode()).digest()


def drawn_order(draw: Draw) -> list[int]:
    return [draw.rank(position) for position in range(1, draw.size + 1)]


def reference_rank(seed: bytes, size: int, position: int) -> int:
    """``rank`` written again from the module docstring alone, as an auditor would."""
    if position > size:
        return position
    k = 2
    while 1 << k < size:
        k += 2
    w = k // 2

    def feistel(x: int) -> int:
        left, right = x >> w, x & ((1 << w) - 1)
        for i in range(8):
            message = bytes([i]) + right.to_bytes(8, "big")
            digest = hmac.digest(seed, message, "sha256")
            f = int.from_bytes(digest[:8], "big") >> (64 - w)
            left, right = right, left ^ f
        return left << w | right

    x = feistel(position - 1)
    while x >= size:
        x = feistel(x)
    return x + 1


# Bijection and inverse


@pytest.mark.parametrize("size", SIZES)
def test_rank_is_a_bijection_on_the_pre_queue(size: int) -> None:
    draw = Draw(KNOWN_SEED, size)

    assert sorted(drawn_order(draw)) == list(range(1, size + 1))


@pytest.mark.parametrize("size", SIZES)
def test_position_inverts_rank_both_ways(size: int) -> None:
    draw = Draw(fixed_seed("inverse", size), size)

    for number in range(1, size + 1):
        assert draw.position(draw.rank(number)) == number
        assert draw.rank(draw.position(number)) == number


@pytest.mark.parametrize("size", SIZES)
def test_positions_after_the_pre_queue_are_unchanged(size: int) -> None:
    draw = Draw(KNOWN_SEED, size)

    for number in (size + 1, size + 2, size + 1000, 2**63 - 1):
        assert draw.rank(number) == number
        assert draw.position(number) == number


@PROPERTY
@given(seed=seeds, size=st.integers(0, 300))
def test_any_seed_permutes_the_pre_queue(seed: bytes, size: int) -> None:
    draw = Draw(seed, size)

    order = drawn_order(draw)

    assert sorted(order) == list(range(1, size + 1))
    assert [draw.position(rank) for rank in order] == list(range(1, size + 1))


@PROPERTY
@given(seed=seeds, size=st.integers(1, MAX_SIZE), data=st.data())
def test_huge_pre_queues_map_into_range_and_back(
    seed: bytes, size: int, data: st.DataObject
) -> None:
    draw = Draw(seed, size)
    position = data.draw(st.integers(1, size), label="position")

    rank = draw.rank(position)

    assert 1 <= rank <= size
    assert draw.position(rank) == position


# Determinism


def test_the_same_seed_gives_the_same_order() -> None:
    seed = fixed_seed("same", 0)

    assert drawn_order(Draw(seed, 500)) == drawn_order(Draw(bytes(seed), 500))


@pytest.mark.parametrize("size", [8, 9, 17, 100])
def test_different_seeds_give_different_orders(size: int) -> None:
    # The known seed, each with one bit flipped, and unrelated seeds.
    flipped = [bytearray(KNOWN_SEED) for _ in range(SEED_BYTES)]
    for index, seed in enumerate(flipped):
        seed[index] ^= 1 << (index % 8)
    candidates = [KNOWN_SEED, *map(bytes, flipped)]
    candidates += [fixed_seed("different", i) for i in range(16)]

    orders = {tuple(drawn_order(Draw(seed, size))) for seed in candidates}

    assert len(orders) == len(candidates)


@PROPERTY
@given(first=seeds, second=seeds)
def test_two_random_seeds_draw_two_orders(first: bytes, second: bytes) -> None:
    # 64! orders: two distinct seeds agreeing on one would be a defect.
    size = 64
    if first == second:
        second = bytes(b ^ 0xFF for b in second)

    assert drawn_order(Draw(first, size)) != drawn_order(Draw(second, size))


# Fairness: arrival order does not predict drawn order


def spearman(order: list[int]) -> float:
    """Spearman's rho between positions 1..n and their ranks ``order``."""
    n = len(order)
    squares = sum((rank - position) ** 2 for position, rank in enumerate(order, 1))
    return 1 - 6 * squares / (n * (n * n - 1))


@pytest.mark.parametrize("index", range(3))
def test_arrival_order_does_not_predict_drawn_order(index: int) -> None:
    size = 10_000
    order = drawn_order(Draw(fixed_seed("fairness", index), size))

    # For a random order rho has a standard deviation of 1/sqrt(n-1) = 0.01.
    assert abs(spearman(order)) < 0.05


@pytest.mark.parametrize("index", range(3))
def test_the_earliest_arrivals_spread_over_the_whole_draw(index: int) -> None:
    size = 10_000
    draw = Draw(fixed_seed("fairness", index), size)

    earliest = [draw.rank(position) for position in range(1, size // 100 + 1)]

    # The mean of 100 uniform ranks has a standard deviation of
    # size / sqrt(1200), about 2.9% of size; 4 of those is 11.5%.
    assert abs(sum(earliest) / len(earliest) - size / 2) < 0.115 * size
    # 100 ranks miss one of ten deciles with probability about 3e-4.
    deciles = {(rank - 1) * 10 // size for rank in earliest}
    assert deciles == set(range(10))


def test_no_arrival_slot_is_favoured_in_a_small_pre_queue() -> None:
    # Five people: the halves are 2 bits wide, where too few Feistel rounds
    # show (with 4 rounds one position gets one place about 26% of the
    # time, not 20%). Count where each position lands over many seeds.
    size, draws = 5, 2000
    counts = [[0] * size for _ in range(size)]
    for index in range(draws):
        draw = Draw(fixed_seed("small", index), size)
        for position in range(1, size + 1):
            counts[position - 1][draw.rank(position) - 1] += 1

    expected = draws / size
    chi_square = sum((c - expected) ** 2 / expected for row in counts for c in row)

    # Chi-square with (5 - 1)**2 = 16 degrees of freedom exceeds 42 with
    # probability about 4e-4 when every place is equally likely.
    assert chi_square < 42


# Audit: the module docstring is the specification


def test_known_answer() -> None:
    draw = Draw(KNOWN_SEED, 10)

    assert drawn_order(draw) == [2, 10, 6, 3, 9, 5, 8, 7, 4, 1]


def test_known_answer_for_a_wide_domain() -> None:
    draw = Draw(KNOWN_SEED, 10**12)

    assert [draw.rank(p) for p in (1, 2, 10**12)] == [
        58334571962,
        196604858600,
        591896656629,
    ]


def test_the_docstring_quotes_the_known_answer() -> None:
    spec = wr.draw.__doc__

    assert spec is not None
    assert "2, 10, 6, 3, 9, 5, 8, 7, 4, 1" in spec
    assert f"{ROUNDS} rounds" in spec


@PROPERTY
@given(seed=seeds, size=st.integers(0, 2**70), data=st.data())
def test_rank_matches_the_documented_algorithm(
    seed: bytes, size: int, data: st.DataObject
) -> None:
    position = data.draw(st.integers(1, size + 3), label="position")

    assert Draw(seed, size).rank(position) == reference_rank(seed, size, position)


def test_the_published_seed_recreates_the_draw() -> None:
    draw = Draw.new(1000)

    published = draw.seed_hex
    audit = Draw(bytes.fromhex(published), 1000)

    assert published == published.lower()
    assert len(published) == 2 * SEED_BYTES
    assert drawn_order(audit) == drawn_order(draw)


# Construction


def test_new_draws_a_fresh_seed_of_the_right_length() -> None:
    first, second = Draw.new(50), Draw.new(50)

    assert len(first.seed) == SEED_BYTES
    assert first.size == 50
    assert first.seed != second.seed


def test_the_seed_stays_out_of_repr() -> None:
    draw = Draw(KNOWN_SEED, 10)

    assert KNOWN_SEED.hex() not in repr(draw)
    assert repr(KNOWN_SEED) not in repr(draw)
    assert "size=10" in repr(draw)


def test_draws_compare_by_seed_and_size() -> None:
    assert Draw(KNOWN_SEED, 10) == Draw(bytes(range(32)), 10)
    assert Draw(KNOWN_SEED, 10) != Draw(KNOWN_SEED, 11)
    assert hash(Draw(KNOWN_SEED, 10)) == hash(Draw(bytes(range(32)), 10))


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_a_seed_of_another_length_is_refused(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Draw(bytes(length), 10)


@pytest.mark.parametrize("size", [-1, MAX_SIZE + 1])
def test_a_size_out_of_range_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="draw size"):
        Draw(KNOWN_SEED, size)


@pytest.mark.parametrize("number", [0, -1, -(2**63)])
def test_positions_and_ranks_start_at_one(number: int) -> None:
    draw = Draw(KNOWN_SEED, 10)

    with pytest.raises(ValueError, match="start at 1"):
        draw.rank(number)
    with pytest.raises(ValueError, match="start at 1"):
        draw.position(number)


# The draw inside a room (wr.room and wr.shm hold the seed)


@pytest.mark.parametrize("zero_at", [0, 13, 31])
def test_a_room_keeps_a_seed_that_holds_a_zero_byte(zero_at: int) -> None:
    # About one random seed in eight holds a zero byte somewhere.
    seed = bytearray(fixed_seed("zero", zero_at))
    seed[zero_at] = 0
    room = Room(RoomConfig(name="r"))

    room.open(Prequeue(Draw(bytes(seed), 10)))
    draw = room.draw

    assert draw is not None
    assert draw.seed == bytes(seed)


# The pre-queue with gaps: positions nobody was given, left out of the draw.


def gapped(end: int, cuts: list[int]) -> tuple[tuple[int, int], ...]:
    """Disjoint gaps inside positions 1..end, from sorted cut points."""
    points = sorted({c for c in cuts if 1 <= c <= end + 1})
    pairs = zip(points[0::2], points[1::2], strict=False)
    return tuple((first, stop) for first, stop in pairs)[:MAX_GAPS]


@PROPERTY
@given(seeds, st.integers(0, 80), st.lists(st.integers(1, 81), max_size=8))
def test_a_prequeue_with_gaps_ranks_every_position_once(
    seed: bytes, end: int, cuts: list[int]
) -> None:
    gaps = gapped(end, cuts)
    people = end - sum(stop - first for first, stop in gaps)
    prequeue = Prequeue(Draw(seed, people), gaps)
    assert prequeue.end == end
    positions = range(1, end + 6)
    ranks = [prequeue.rank(p) for p in positions]

    # A bijection on 1..end (and the identity after it), with its inverse.
    assert sorted(ranks) == list(positions)
    assert all(prequeue.position(r) == p for p, r in zip(positions, ranks, strict=True))
    in_gap = {p for first, stop in gaps for p in range(first, stop)}
    # The drawn people come first; whoever holds a gap's position after them.
    assert {prequeue.rank(p) for p in positions if p <= end and p not in in_gap} == (
        set(range(1, people + 1))
    )
    assert [prequeue.rank(p) for p in sorted(in_gap)] == list(
        range(people + 1, end + 1)
    )


@pytest.mark.parametrize(
    "gaps",
    [((5, 3),), ((4, 6), (5, 8)), ((0, 2),), ((9, 12),), ((1, 2),) * 17],
)
def test_a_prequeue_refuses_gaps_that_make_no_sense(
    gaps: tuple[tuple[int, int], ...],
) -> None:
    with pytest.raises(ValueError, match="gap"):
        Prequeue(Draw(KNOWN_SEED, 6), gaps)


def test_without_gaps_a_prequeue_is_its_draw() -> None:
    draw = Draw(KNOWN_SEED, 10)
    prequeue = Prequeue(draw)
    assert [prequeue.rank(p) for p in range(1, 15)] == [
        draw.rank(p) for p in range(1, 15)
    ]
    assert prequeue.skips_after_opening([(20, 30)]) == [(20, 30)]


def test_the_gaps_become_one_skip_behind_the_drawn_people() -> None:
    prequeue = Prequeue(Draw(KNOWN_SEED, 10), ((3, 8), (12, 14)))
    assert prequeue.end == 17
    assert prequeue.skips_after_opening([(3, 8), (12, 14), (40, 50)]) == [
        (11, 18),
        (40, 50),
    ]
