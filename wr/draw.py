"""The draw: a keyed shuffle of the people who joined before a room opened.

People who join a room before its opening time get positions 1..P in order
of arrival: the *pre-queue*. At the opening, wr draws a random 32-byte seed
and admits the pre-queue in the order of a permutation of 1..P that the seed
determines, so arriving early, or sending a bot, buys nothing. Nobody,
wr included, knows the order before the seed exists, and the seed is drawn
only once the pre-queue is closed. Once the room is open the seed is
published (hex), and anyone holding it and P can recompute every place.

Nothing is stored per person: both directions of the permutation are
computed for one position at a time, with a few HMACs.

The algorithm, for an auditor
-----------------------------

Inputs: the seed ``S`` (32 bytes) and the pre-queue size ``P`` (P >= 0).

1. Width. ``k`` is the smallest even integer, at least 2, with
   ``2**k >= P``; ``w = k // 2`` is the width of a half. The permutation
   works on the integers ``0 <= x < 2**k``.

2. Round function. For a round index ``i`` (0 to 7) and a half ``h``
   (``0 <= h < 2**w``)::

       message = bytes([i]) + h.to_bytes(8, "big")     # 9 bytes
       digest  = HMAC-SHA256(key=S, message)           # RFC 2104
       F(i, h) = int.from_bytes(digest[:8], "big") >> (64 - w)

   that is, the first ``w`` bits of the digest, read as a big-endian
   unsigned integer.

3. Feistel network, 8 rounds. ``E(x)``: split ``x`` into ``L = x >> w``
   and ``R = x % 2**w``; for ``i`` = 0, 1, ..., 7 set
   ``(L, R) = (R, L ^ F(i, R))``; the result is ``L * 2**w + R``. Its
   inverse runs ``i`` = 7, 6, ..., 0 with ``(L, R) = (R ^ F(i, L), L)``.

4. Cycle-walking. ``E`` permutes ``0..2**k - 1``; to permute ``0..P - 1``,
   apply it again until the value falls below ``P``::

       rank(p)     = 1 + walk(E, p - 1)          for 1 <= p <= P
       position(r) = 1 + walk(E^-1, r - 1)       for 1 <= r <= P
       walk(G, x): x = G(x) until x < P; return x

   Positions (and ranks) above ``P`` map to themselves: people who join
   after the opening keep their place behind the pre-queue.

5. Gaps. A crash before the opening leaves ranges of positions that were
   reserved but given to nobody (see :mod:`wr.steward`). They are left out
   of the draw: the positions ``1..E`` of the pre-queue, less the gaps
   (published as ``[first, end)`` pairs), are numbered ``1..P`` in order
   and drawn as above. The few people who may hold a position in a gap
   (they joined just before the crash) rank after the drawn ones, in
   position order: ``P + 1`` and up.

Check a re-implementation against this: for ``S = bytes(range(32))`` and
``P = 10``, ``rank`` maps positions 1..10 to 2, 10, 6, 3, 9, 5, 8, 7, 4, 1.

Why 8 rounds. Four rounds of a pseudorandom function are the minimum for a
strong pseudorandom permutation (Luby and Rackoff), but that result bounds
what someone learns from a number of evaluations small against ``2**(w/2)``.
Here the halves may be a few bits wide and every position is evaluated,
which is where format-preserving ciphers add rounds (NIST's FF3-1 uses 8,
FF1 10). Measured with truly random round functions on a pre-queue of 5
(2-bit halves), the most favoured pair of position and place comes up with
probability about 0.265 after 4 rounds, 0.218 after 6 and 0.2045 after 8,
instead of 0.2; the excess shrinks about fourfold every two rounds, and as
the halves widen. Eight make it negligible, at one HMAC (about a
microsecond) each.

Cost. Every value of ``0..2**k - 1`` lies on the walk of at most one
position, so over all positions the walks take at most ``2**k`` steps, and
``2**k < 4 * P`` (for P > 1): on average fewer than 4 passes of 8 rounds per
call, for any seed. A single position's walk can be longer; ``position``
retraces the walk of ``rank`` backwards, in as many steps.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["MAX_GAPS", "MAX_SIZE", "ROUNDS", "SEED_BYTES", "Draw", "Prequeue"]

# The seed is an HMAC-SHA256 key; 32 bytes is the hash's own strength.
SEED_BYTES = 32
# See the module docstring for why 8.
ROUNDS = 8
# A half is written in 8 bytes and cut from the first 8 bytes of a digest,
# so halves are at most 64 bits wide and the domain at most 2**128.
MAX_SIZE = 1 << 128

# Gaps a pre-queue keeps out of its draw: one per crash before the opening.
MAX_GAPS = 16

_HALF_BYTES = 8
_SHA256_BLOCK = 64

_Step = Callable[[int], int]


@dataclass(frozen=True)
class Draw:
    """The permutation of a pre-queue of ``size`` people keyed by ``seed``.

    The seed is kept out of ``repr`` because it must stay secret until the
    opening; publish it with :attr:`seed_hex`.
    """

    seed: bytes = field(repr=False)
    size: int
    _half_bits: int = field(init=False, repr=False, compare=False)
    # HMAC's keyed inner and outer hash states, computed once (RFC 2104:
    # a key shorter than the 64-byte block is padded with zeros); keying
    # HMAC afresh on every round costs several times as much.
    _inner: hashlib._Hash = field(init=False, repr=False, compare=False)
    _outer: hashlib._Hash = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_BYTES:
            raise ValueError(f"a draw seed is {SEED_BYTES} bytes, not {len(self.seed)}")
        if not 0 <= self.size <= MAX_SIZE:
            raise ValueError(f"draw size {self.size} is outside 0..2**128")

        bits = 2
        while 1 << bits < self.size:
            bits += 2
        key = self.seed.ljust(_SHA256_BLOCK, b"\0")
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        object.__setattr__(self, "_half_bits", bits // 2)
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_outer", outer)

    @classmethod
    def new(cls, size: int) -> Draw:
        """A draw for ``size`` people with a fresh seed from the OS's CSPRNG."""
        return cls(secrets.token_bytes(SEED_BYTES), size)

    @property
    def seed_hex(self) -> str:
        """The seed as lowercase hex, the form in which it is published."""
        return self.seed.hex()

    def rank(self, position: int) -> int:
        """The place in the drawn order of the person at ``position``."""
        return self._walk(position, self._encrypt)

    def position(self, rank: int) -> int:
        """The pre-queue position whose place in the drawn order is ``rank``."""
        return self._walk(rank, self._decrypt)

    def _walk(self, number: int, step: _Step) -> int:
        if number < 1:
            raise ValueError(f"positions and ranks start at 1, not {number}")
        if number > self.size:
            return number
        x = step(number - 1)
        while x >= self.size:
            x = step(x)
        return x + 1

    def _encrypt(self, x: int) -> int:
        w = self._half_bits
        left, right = x >> w, x & ((1 << w) - 1)
        for i in range(ROUNDS):
            left, right = right, left ^ self._round(i, right)
        return left << w | right

    def _decrypt(self, x: int) -> int:
        w = self._half_bits
        left, right = x >> w, x & ((1 << w) - 1)
        for i in reversed(range(ROUNDS)):
            left, right = right ^ self._round(i, left), left
        return left << w | right

    def _round(self, index: int, half: int) -> int:
        inner = self._inner.copy()
        inner.update(bytes((index,)) + half.to_bytes(_HALF_BYTES, "big"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        head = int.from_bytes(outer.digest()[:_HALF_BYTES], "big")
        return head >> (8 * _HALF_BYTES - self._half_bits)


@dataclass(frozen=True)
class Prequeue:
    """The drawn pre-queue: positions ``1..end`` less the ``gaps``.

    ``gaps`` are sorted, disjoint ``[first, end)`` ranges of positions that
    were reserved but given to nobody; the draw covers the rest, numbered in
    order (step 5 of the module docstring).
    """

    draw: Draw
    gaps: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if len(self.gaps) > MAX_GAPS:
            raise ValueError(f"a pre-queue keeps at most {MAX_GAPS} gaps out")
        low = 1
        for first, stop in self.gaps:
            if not low <= first < stop:
                raise ValueError(f"gaps must be sorted and disjoint: {self.gaps}")
            low = stop
        if low > self.end + 1:
            raise ValueError(f"gaps lie beyond the pre-queue: {self.gaps}")

    @property
    def end(self) -> int:
        """The last position of the pre-queue, gaps included."""
        return self.draw.size + sum(stop - first for first, stop in self.gaps)

    def skips_after_opening(
        self, skips: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """The room's skips once the draw orders the pre-queue.

        Gaps stop being ranges of positions and become one range of ranks,
        right behind the drawn people; skips after the pre-queue stay.
        """
        end = self.end
        kept = [skip for skip in skips if skip[0] > end]
        if end > self.draw.size:
            kept.insert(0, (self.draw.size + 1, end + 1))
        return kept

    def rank(self, position: int) -> int:
        """The place in the admission order of the person at ``position``."""
        if position < 1:
            raise ValueError(f"positions start at 1, not {position}")
        skipped = 0
        for first, stop in self.gaps:
            if position < first:
                break
            if position < stop:
                return self.draw.size + skipped + position - first + 1
            skipped += stop - first
        if position > self.end:
            return position
        return self.draw.rank(position - skipped)

    def position(self, rank: int) -> int:
        """The position whose place in the admission order is ``rank``."""
        if rank < 1:
            raise ValueError(f"ranks start at 1, not {rank}")
        if rank > self.end:
            return rank
        if rank > self.draw.size:
            left = rank - self.draw.size - 1
            for first, stop in self.gaps:
                if left < stop - first:
                    return first + left
                left -= stop - first
        position = self.draw.position(rank)
        for first, stop in self.gaps:
            if position < first:
                break
            position += stop - first
        return position
