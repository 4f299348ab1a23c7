"""The socket-free parts of capacity mode and pre-queues across hosts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wr.cluster import changed_buckets, draw_document, draw_of, new_slots
from wr.config import RoomConfig
from wr.draw import MAX_GAPS, Draw, Prequeue
from wr.room import CLAIM_WINDOW, Room
from wr.shm import INSIDE_BUCKET_S
from wr.steward import prequeue_of

SEED = bytes(range(32))
NOW = 1_700_000_005.0
SESSION_S = 600.0


def ring(*slots: int, size: int = 3 * 4096) -> bytes:
    data = bytearray(size)
    for slot in slots:
        data[slot >> 3] |= 1 << (slot & 7)
    return bytes(data)


def test_new_slots_are_the_bits_set_since_the_last_copy() -> None:
    before = ring(3, 70)
    after = ring(3, 70, 0, 9, 4096 * 8 + 5, 3 * 4096 * 8 - 1)
    assert new_slots(after, before) == [0, 9, 4096 * 8 + 5, 3 * 4096 * 8 - 1]


def test_bits_cleared_since_are_not_news() -> None:
    assert new_slots(ring(1), ring(1, 2, 30000)) == []
    assert new_slots(ring(5), ring(5)) == []


def test_changed_buckets_are_the_new_the_changed_and_the_emptied() -> None:
    pushed = {10: 2, 11: 1, 12: 3}
    now = {10: 2, 11: 0, 12: 4, 13: 1, 14: 0}
    assert changed_buckets(now, pushed) == {11: 0, 12: 4, 13: 1}


def test_a_draw_document_reads_back_as_the_same_prequeue() -> None:
    prequeue = Prequeue(Draw(SEED, 7), ((3, 5), (9, 12)))
    assert draw_of(draw_document(prequeue)) == prequeue
    assert draw_of(draw_document(None)) is None


@pytest.mark.parametrize(
    "document",
    [b"nonsense", b"{}", b'{"seed": "00", "size": 3, "gaps": []}', b"[1]"],
)
def test_a_damaged_draw_document_is_a_value_error(document: bytes) -> None:
    with pytest.raises(ValueError, match="draw"):
        draw_of(document)


def test_the_prequeue_leaves_the_largest_gaps_out() -> None:
    skips = [(2 * i + 1, 2 * i + 2) for i in range(MAX_GAPS)] + [(100, 110)]
    prequeue = prequeue_of(200, skips)
    assert prequeue is not None
    assert (100, 110) in prequeue.gaps
    assert len(prequeue.gaps) == MAX_GAPS
    assert prequeue.end == 200
    assert prequeue_of(0, skips) is None


def clustered(room: Room) -> Room:
    room.set_shared(cluster_next=1, admitted=0, stale=False, joins_held=False)
    return room


def admitted_room() -> Room:
    room = Room(RoomConfig(name="r", max_active=5))
    room.admit(10)
    return room


def test_a_leave_for_a_claim_seen_elsewhere_is_kept_in_a_cluster() -> None:
    room = clustered(admitted_room())
    assert room.in_cluster
    assert room.leave(3, NOW, NOW, SESSION_S)
    # Once: the bit is set, and nobody here was counted inside.
    assert not room.leave(3, NOW, NOW, SESSION_S)
    assert room.active(NOW, SESSION_S) == 0


def test_a_single_host_ignores_a_leave_it_saw_no_claim_for() -> None:
    room = admitted_room()
    assert not room.in_cluster
    assert not room.leave(3, NOW, NOW, SESSION_S)
    # A later claim and leave still count.
    assert room.claim(3, NOW)
    assert room.leave(3, NOW, NOW, SESSION_S)


def test_a_leave_by_rank_frees_a_claim_counted_here() -> None:
    room = clustered(admitted_room())
    assert room.claim(4, NOW)
    assert room.active(NOW, SESSION_S) == 1
    assert room.leave_rank(4, NOW + 1, SESSION_S)
    assert room.active(NOW, SESSION_S) == 0
    assert not room.leave_rank(4, NOW + 1, SESSION_S)


def test_a_claim_counted_elsewhere_is_not_counted_here() -> None:
    room = clustered(admitted_room())
    assert room.mark_claimed(6)
    assert not room.claim(6, NOW)
    assert room.active(NOW, SESSION_S) == 0


def test_people_inside_elsewhere_add_to_those_here() -> None:
    room = admitted_room()
    assert room.claim(1, NOW)
    room.others_inside = 4
    assert room.active(NOW, SESSION_S) == 5


def test_inside_buckets_are_numbered_by_time() -> None:
    room = admitted_room()
    assert room.claim(1, NOW)
    assert room.claim(2, NOW - INSIDE_BUCKET_S)
    buckets = room.inside_buckets(NOW, SESSION_S)
    newest = int(NOW) // INSIDE_BUCKET_S
    assert buckets[newest] == buckets[newest - 1] == 1
    assert min(buckets) == newest - SESSION_S // INSIDE_BUCKET_S


def test_bypass_numbers_start_where_the_cluster_says_if_none_was_given() -> None:
    room = admitted_room()
    assert room.number_bypasses_from(1 << 40)
    assert room.count_inside(NOW) == (1 << 40) + 1
    assert not room.number_bypasses_from(2 << 40)
    assert room.count_inside(NOW) == (1 << 40) + 2


def test_the_rank_of_a_slot_is_the_one_within_the_claim_window() -> None:
    room = Room(RoomConfig(name="r"))
    room.admit(CLAIM_WINDOW + 10)
    assert room.rank_of_slot(5) == CLAIM_WINDOW + 5
    assert room.rank_of_slot(20) == 20


@given(
    st.binary(min_size=16, max_size=16).flatmap(
        lambda now: st.tuples(st.just(now), st.binary(min_size=16, max_size=16))
    )
)
def test_new_slots_match_a_bit_by_bit_reading(rings: tuple[bytes, bytes]) -> None:
    current, previous = rings
    expected = [
        slot
        for slot in range(8 * len(current))
        if current[slot >> 3] >> (slot & 7) & 1
        and not previous[slot >> 3] >> (slot & 7) & 1
    ]
    assert new_slots(current, previous) == expected


def test_a_snapshot_shows_each_claim_bit_with_its_count_inside() -> None:
    room = admitted_room()
    assert room.claim(3, NOW)
    claims, leaves, buckets = room.inside_snapshot(NOW, SESSION_S)
    assert new_slots(claims, bytes(len(claims))) == [3]
    assert not any(leaves)
    assert sum(buckets.values()) == 1
