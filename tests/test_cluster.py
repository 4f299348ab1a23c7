"""The shared line's rules without a store: block sizes, lease, fencing, fairness."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from wr.cluster import (
    LEASE_SAFETY,
    Backoff,
    BlockSizer,
    Lease,
    block_size,
    fairness_bound,
    fence_allows,
    raised,
)
from wr.config import RoomConfig
from wr.room import Room

# Block sizes


def test_a_quiet_room_takes_the_smallest_block() -> None:
    assert block_size(0.0, 0.5, 1, 1000) == 1
    assert block_size(1.0, 0.5, 1, 1000) == 1


def test_a_busy_room_takes_its_arrivals_for_the_lookahead() -> None:
    assert block_size(100.0, 0.5, 1, 1000) == 50
    assert block_size(101.0, 0.5, 1, 1000) == 51


def test_a_flash_crowd_is_capped_at_block_max() -> None:
    assert block_size(1e9, 0.5, 1, 1000) == 1000


def test_block_min_holds_even_for_no_arrivals() -> None:
    assert block_size(0.0, 0.5, 8, 1000) == 8
    assert block_size(-5.0, 0.5, 8, 1000) == 8


@given(
    st.floats(min_value=0, max_value=1e7, allow_nan=False),
    st.floats(min_value=0.01, max_value=10),
    st.integers(min_value=1, max_value=100),
    st.integers(min_value=0, max_value=10_000),
)
def test_block_size_stays_within_its_bounds(
    rate: float, ahead_s: float, low: int, extra: int
) -> None:
    size = block_size(rate, ahead_s, low, low + extra)
    assert low <= size <= low + extra


# Fencing


def test_the_current_holder_with_the_current_token_may_raise() -> None:
    assert fence_allows("host-a", "host-a", 7, 7)


def test_an_old_token_is_refused_even_to_the_same_holder() -> None:
    # The holder lost the lease and took it again: its old token is void.
    assert not fence_allows("host-a", "host-a", 8, 7)


def test_a_holder_that_lost_the_lease_is_refused() -> None:
    assert not fence_allows("host-b", "host-a", 7, 7)
    assert not fence_allows(None, "host-a", 7, 7)


def test_no_token_never_raises() -> None:
    assert not fence_allows("host-a", "host-a", 0, 0)


def test_serving_only_ever_goes_up() -> None:
    assert raised(10, 12) == 12
    assert raised(10, 9) == 10
    assert raised(10, 10) == 10


# The lease as one host sees it


def test_a_granted_lease_leads_until_shortly_before_it_expires() -> None:
    lease = Lease("host-a", lease_s=3.0)
    assert lease.granted(5, asked_at=100.0)
    until = 100.0 + 3.0 * (1 - LEASE_SAFETY)
    assert lease.leading(until - 0.001)
    assert not lease.leading(until)


def test_a_renewal_is_not_a_new_acquisition() -> None:
    lease = Lease("host-a", lease_s=3.0)
    assert lease.granted(5, 100.0)
    assert not lease.granted(5, 101.0)
    assert lease.leading(103.0)


def test_a_refusal_ends_leadership_at_once() -> None:
    lease = Lease("host-a", lease_s=3.0)
    lease.granted(5, 100.0)
    assert not lease.granted(0, 100.5)
    assert not lease.leading(100.5)


def test_a_host_that_loses_the_store_stops_leading() -> None:
    lease = Lease("host-a", lease_s=3.0)
    lease.granted(5, 100.0)
    lease.lost()
    assert not lease.leading(100.1)


# Back-off


def test_backoff_doubles_to_its_ceiling_and_resets_on_success() -> None:
    backoff = Backoff(0.1, 1.0)
    assert backoff.due(0.0)
    waits = [backoff.failed(10.0) for _ in range(6)]
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert not backoff.due(10.5)
    assert backoff.due(11.0)
    assert backoff.succeeded()
    assert not backoff.succeeded()
    assert backoff.due(0.0)
    assert backoff.failed(20.0) == 0.1


# Fairness: hosts taking blocks from one counter, as the steward does.


class Cluster:
    """Hosts with real rooms, fed blocks from one counter after each step."""

    def __init__(self, hosts: int, block: int) -> None:
        self.taken = 0
        self.block = block
        self.rooms = [Room(RoomConfig()) for _ in range(hosts)]
        for room in self.rooms:
            room.restore(next_position=1, serving=0, claimed=0, admitted=0)
            self.step(room)

    def step(self, room: Room) -> None:
        if not room.block_queued:
            first = self.taken + 1
            self.taken += self.block
            room.offer_block(first, self.taken + 1)

    def steps(self) -> None:
        for room in self.rooms:
            self.step(room)


def overtaken(positions: list[int]) -> int:
    """The most people who joined after someone and got a lower position."""
    most, lower_later = 0, 0
    for i, mine in enumerate(positions):
        lower_later = sum(1 for later in positions[i + 1 :] if later < mine)
        most = max(most, lower_later)
    return most


@settings(max_examples=60, deadline=None)
@given(
    hosts=st.integers(min_value=1, max_value=5),
    block=st.integers(min_value=1, max_value=20),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_nobody_is_overtaken_by_more_than_the_bound(
    hosts: int, block: int, seed: int
) -> None:
    # Reproducible arrivals, not secrets.
    rng = random.Random(seed)  # noqa: S311
    cluster = Cluster(hosts, block)
    positions = []
    # A load balancer that favours some hosts; steps between some joins.
    weights = [rng.random() + 0.01 for _ in range(hosts)]
    for _ in range(400):
        room = rng.choices(cluster.rooms, weights)[0]
        position = room.join()
        if position is not None:
            positions.append(position)
        if rng.random() < 0.3:
            cluster.steps()
    assert len(set(positions)) == len(positions)
    assert overtaken(positions) <= fairness_bound(hosts, block)


def test_the_bound_is_reached_by_the_worst_case() -> None:
    # The quiet host takes its first block (one position handed out) and
    # the next; the busy one hands out many. Everyone the quiet host takes
    # in afterwards goes before the busy host's people.
    cluster = Cluster(2, 3)
    quiet, busy = cluster.rooms
    positions = [quiet.join()]
    cluster.steps()
    for _ in range(20):
        if not busy.block_queued:
            cluster.step(busy)
        positions.append(busy.join())
    for _ in range(5):
        positions.append(quiet.join())
    assert None not in positions
    assert overtaken([p or 0 for p in positions]) == fairness_bound(2, 3) == 5


def test_one_host_hands_out_contiguous_positions() -> None:
    cluster = Cluster(1, 1)
    positions = []
    for _ in range(50):
        position = cluster.rooms[0].join()
        assert position is not None
        positions.append(position)
        cluster.steps()
    assert positions == list(range(1, 51))


# The room's side of blocks


def test_a_join_takes_the_queued_block_when_its_range_ends() -> None:
    room = Room(RoomConfig())
    room.restore(next_position=1, serving=0, claimed=0, admitted=0)
    assert room.join() is None
    assert room.offer_block(10, 12)
    assert not room.offer_block(20, 22)
    assert room.block_queued
    assert [room.join(), room.join()] == [10, 11]
    assert not room.block_queued
    assert room.join() is None
    assert room.offer_block(20, 21)
    assert room.join() == 20


def test_waiting_counts_positions_taken_by_other_hosts() -> None:
    room = Room(RoomConfig())
    room.restore(next_position=1, serving=0, claimed=0, admitted=0)
    room.offer_block(1, 3)
    room.join()
    assert room.waiting == 1
    room.set_shared(cluster_next=41, admitted=0, stale=False, joins_held=False)
    assert room.waiting == 40


def test_claims_merge_with_the_cluster_total_keeping_unpushed_ones() -> None:
    room = Room(RoomConfig())
    room.restore(next_position=1, serving=5, claimed=0, admitted=5)
    room.offer_block(1, 10)
    for _ in range(3):
        room.claim(int(room.join() or 0))
    # Three pushed; the store's total is 10 (7 from other hosts); then one
    # more claim here before the merge.
    counted = room.claimed
    room.claim(4)
    room.merge_claims(counted, 10)
    assert room.claimed == 11


def test_a_host_that_runs_dry_doubles_its_blocks_up_to_the_max() -> None:
    sizer = BlockSizer(0.5, 1, 100)
    sizes = [sizer.next(0.0, joined=0, refused=1) for _ in range(8)]
    assert sizes == [2, 4, 8, 16, 32, 64, 100, 100]


def test_refused_joins_size_the_next_block_at_once() -> None:
    sizer = BlockSizer(0.5, 1, 1000)
    assert sizer.next(0.0, joined=2, refused=298) == 600
    assert sizer.next(0.0, joined=0, refused=5000) == 1000


def test_a_block_never_shrinks_below_the_demand_it_saw() -> None:
    sizer = BlockSizer(0.5, 1, 1000)
    sizer.size = 600
    assert [sizer.next(0.0, joined=100, refused=0) for _ in range(4)] == [
        300,
        150,
        100,
        100,
    ]


def test_a_host_that_keeps_up_halves_back_to_what_the_rate_asks() -> None:
    sizer = BlockSizer(0.5, 1, 100)
    sizer.size = 64
    assert [sizer.next(40.0, 0, 0) for _ in range(4)] == [32, 20, 20, 20]
    assert [sizer.next(0.0, 1, 0) for _ in range(6)] == [10, 5, 2, 1, 1, 1]


def test_a_refused_join_is_counted_for_the_sizer() -> None:
    room = Room(RoomConfig())
    room.restore(next_position=1, serving=0, claimed=0, admitted=0)
    assert room.join() is None
    assert room.join() is None
    assert room.joins_refused == 2


def test_take_back_returns_what_was_held_and_stops_joins() -> None:
    room = Room(RoomConfig())
    room.restore(next_position=1, serving=0, claimed=0, admitted=0)
    room.offer_block(1, 5)
    room.join()
    room.offer_block(9, 12)
    assert room.take_back() == [(2, 5), (9, 12)]
    assert room.join() is None
    assert room.take_back() == []


def test_follow_takes_the_leaders_serving_as_it_is() -> None:
    room = Room(RoomConfig())
    room.restore(next_position=1, serving=0, claimed=0, admitted=0)
    room.skip(3, 8)
    room.follow(10)
    # Not 15: the leader had already passed over the skip.
    assert room.serving == 10
    assert room.skips == []
    room.follow(4)
    assert room.serving == 10
