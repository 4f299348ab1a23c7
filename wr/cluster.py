"""The rules of a line shared by several hosts, without the store that holds it.

With ``server.backend = "redis://..."`` every host takes positions from one
counter in Redis, in blocks (``INCRBY``), and one host at a time, the
leader, moves ``serving`` (see :mod:`wr.redisbackend`). What can be decided
without a socket lives here and is tested with an injected clock:

- :func:`block_size` and :class:`BlockSizer`: how many positions a host
  takes per round trip;
- :class:`Lease`: whether this host may act as the leader right now;
- :func:`fence_allows` and :func:`raised`: the checks the store's script
  makes before it moves ``serving`` (the script mirrors them);
- :class:`Backoff`: when to try a store that stopped answering;
- :func:`fairness_bound`: how far a person can be overtaken;
- :func:`new_slots` and :func:`changed_buckets`: what a host has to tell
  the others about the people inside (capacity mode);
- :func:`draw_document` and :func:`draw_of`: the pre-queue's draw as it is
  stored once for the whole cluster.

**Fairness.** Within one host positions are handed out in order. Across
hosts they are not quite: a host holds the rest of the block it hands out
from (at most ``block - 1``: taking a block hands out its first position)
and the next block, fetched ahead (``block``). A person who arrives later
at another host may get a lower position from those. Blocks fetched after
someone joined lie above their position, and positions of their own host
below theirs were handed out before them, so only the other ``hosts - 1``
hosts can overtake them: at most ``(hosts - 1) * (2 * block_max - 1)``
people (:func:`fairness_bound`). With ``redis.fallback_positions`` larger
than ``block_max``, blocks are that large and the bound grows with them.
A quiet room uses blocks of ``block_min`` (default 1), so it hands out
contiguous positions in arrival order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from wr.draw import Draw, Prequeue

__all__ = [
    "BLOCKS_HELD",
    "LEASE_SAFETY",
    "Backoff",
    "BlockSizer",
    "Lease",
    "block_size",
    "changed_buckets",
    "draw_document",
    "draw_of",
    "fairness_bound",
    "fence_allows",
    "new_slots",
    "raised",
]

# A host holds its current block and the next one, fetched ahead so that a
# join never waits for the store.
BLOCKS_HELD = 2
# A leader stops acting this share of the lease before it expires by its
# own clock: clocks of two hosts drift, and a renewal takes a round trip.
LEASE_SAFETY = 0.2


def block_size(
    join_rate_per_s: float, ahead_s: float, block_min: int, block_max: int
) -> int:
    """Positions to take at once: ``ahead_s`` of this host's arrivals."""
    wanted = math.ceil(max(0.0, join_rate_per_s) * ahead_s)
    return max(block_min, min(block_max, wanted))


class BlockSizer:
    """One host's block size for one room, adapting to its arrivals.

    At each fetch it looks at the joins since the previous fetch: those
    that got a position (``joined``) and those that found none
    (``refused``). A block never shrinks below that demand nor below what
    the measured join rate asks for (:func:`block_size`); after refusals it
    at least doubles and covers twice the demand, so a flash crowd is
    served from the next step on rather than after a rate window. Without
    refusals it halves towards the demand, so a room that calms down
    returns to small blocks.
    """

    def __init__(self, ahead_s: float, block_min: int, block_max: int) -> None:
        self.ahead_s = ahead_s
        self.block_min = block_min
        self.block_max = block_max
        self.size = block_min

    def next(self, join_rate_per_s: float, joined: int, refused: int) -> int:
        wanted = block_size(
            join_rate_per_s, self.ahead_s, self.block_min, self.block_max
        )
        demand = joined + refused
        if refused > 0:
            size = max(wanted, self.size * 2, demand * 2)
        else:
            size = max(wanted, demand, self.size // 2)
        self.size = max(self.block_min, min(self.block_max, size))
        return self.size


def fairness_bound(hosts: int, block_max: int) -> int:
    """The most people who can join after someone and still go before them."""
    return max(0, hosts - 1) * (BLOCKS_HELD * block_max - 1)


def fence_allows(lease_value: str | None, holder: str, fence: int, token: int) -> bool:
    """May the holder of ``token`` move ``serving``? (The store's check.)

    Only while it still holds the lease and no one has taken it since:
    every acquisition raises the fencing counter, so a leader that was
    paused or cut off carries an old token and is refused.
    """
    return lease_value == holder and token > 0 and fence == token


def raised(current: int, proposed: int) -> int:
    """``serving`` after a proposal: it only ever goes up."""
    return max(current, proposed)


@dataclass
class Lease:
    """This host's view of the ticker's lease."""

    holder: str
    lease_s: float
    token: int = 0
    valid_until: float = 0.0

    def leading(self, now: float) -> bool:
        return self.token > 0 and now < self.valid_until

    def granted(self, token: int, asked_at: float) -> bool:
        """Record the store's answer to a request sent at ``asked_at``.

        ``token`` is the fencing token (0: someone else holds the lease).
        The lease runs from when the store set it, which is after
        ``asked_at``, so counting from ``asked_at`` errs on the safe side.
        Returns True if this host has just become the leader.
        """
        was = self.token
        if token <= 0:
            self.token = 0
            self.valid_until = 0.0
            return False
        self.token = token
        self.valid_until = asked_at + self.lease_s * (1.0 - LEASE_SAFETY)
        return token != was

    def lost(self) -> None:
        self.token = 0
        self.valid_until = 0.0


@dataclass
class Backoff:
    """Waits between attempts at a store that stopped answering."""

    first_s: float
    most_s: float
    delay_s: float = 0.0
    next_at: float = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def failed(self, now: float) -> float:
        """Note a failure at ``now``; return the wait before the next try."""
        self.delay_s = (
            self.first_s if not self.delay_s else min(self.most_s, self.delay_s * 2)
        )
        self.next_at = now + self.delay_s
        return self.delay_s

    def succeeded(self) -> bool:
        """Note a success; True if it ends a run of failures."""
        recovered = self.delay_s > 0
        self.delay_s = 0.0
        self.next_at = 0.0
        return recovered


def new_slots(current: bytes, previous: bytes) -> list[int]:
    """Bits set in ``current`` and not in ``previous`` (low bit first per byte).

    A ring of claim or leave bits is compared with its copy from the last
    step; bits cleared since (slots reused for new ranks) are not news.
    """
    slots = []
    for index in _changed_bytes(current, previous):
        fresh = current[index] & ~previous[index]
        while fresh:
            low = fresh & -fresh
            slots.append(8 * index + low.bit_length() - 1)
            fresh ^= low
    return slots


# Rings are compared in chunks of this many bytes: most chunks are equal,
# and an equal chunk costs one memcmp.
_CHUNK = 4096


def _changed_bytes(current: bytes, previous: bytes) -> list[int]:
    changed = []
    for start in range(0, len(current), _CHUNK):
        stop = start + _CHUNK
        if current[start:stop] != previous[start:stop]:
            changed += [
                i
                for i in range(start, min(stop, len(current)))
                if current[i] & ~previous[i]
            ]
    return changed


def changed_buckets(
    buckets: Mapping[int, int], pushed: Mapping[int, int]
) -> dict[int, int]:
    """The bucket counts to write: new or changed since the last push.

    A bucket that was pushed and now reads 0 (everyone left) is written as
    0, which removes it; buckets that left the window are not written (the
    store drops them by age).
    """
    return {
        bucket: count
        for bucket, count in buckets.items()
        if count != pushed.get(bucket, 0)
    }


def draw_document(prequeue: Prequeue | None) -> bytes:
    """The draw as stored in Redis: seed (hex), size and gaps."""
    if prequeue is None:
        return orjson.dumps({"seed": "", "size": 0, "gaps": []})
    return orjson.dumps(
        {
            "seed": prequeue.draw.seed_hex,
            "size": prequeue.draw.size,
            "gaps": [list(gap) for gap in prequeue.gaps],
        }
    )


def draw_of(document: bytes) -> Prequeue | None:
    """The pre-queue a stored draw describes (None: nobody to draw).

    Raises ValueError for a document that is not one of ours.
    """
    try:
        fields = orjson.loads(document)
        size = int(fields["size"])
        if size <= 0:
            return None
        gaps = tuple((int(first), int(stop)) for first, stop in fields["gaps"])
        return Prequeue(Draw(seed=bytes.fromhex(fields["seed"]), size=size), gaps)
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"stored draw is not readable: {exc}") from None
