"""Proof-of-work on join: a little work per session, paid by the browser.

Theory of operation. ``GET /api/v1/rooms/{room}/challenge`` hands out a
challenge that the server does not remember: a random nonce, the room, an
expiry and a difficulty, packed and signed with a key derived from the
signing key ring (so every worker and every host that shares the ring can
check it). To join, a client finds a ``counter`` such that

    SHA-256(challenge ‖ counter)

(the challenge as sent, then the counter in decimal, both ASCII) starts with
``difficulty`` zero bits, and sends both with its join. Checking costs one
MAC and one hash. The expected work doubles with each bit: 2**14 hashes take
a phone's browser well under a second, and a farm opening ten thousand
sessions pays ten thousand times.

A solved challenge opens one session. Each process remembers the nonces it
accepted until they expire, in a set of at most :data:`RECENT_MAX` entries,
so a replay to the same process is refused and counted. Knowingly limited:
a replay to another worker or host is not seen (at most one join per
process the challenge reaches, within its short life), and when more
challenges are solved within one lifetime than the set holds, the oldest
are forgotten early (counted as ``evicted``).

Nothing here does I/O or reads a clock: callers pass the time and the
randomness.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "CHALLENGE_TTL_S",
    "MAX_DIFFICULTY",
    "RECENT_MAX",
    "Challenge",
    "ChallengeError",
    "ProofOfWork",
    "auto_difficulty",
    "derive_key",
    "leading_zero_bits",
]

# Long enough for a slow phone to solve and join, short enough that a
# stockpile of solved challenges goes stale before it is worth much.
CHALLENGE_TTL_S = 120
# Past this a browser would work for minutes: no sense in asking more.
MAX_DIFFICULTY = 32
# Accepted nonces remembered per process, as integers: about
# 130 bytes each with the bookkeeping, so 17 MiB at most, reached only by a
# process accepting over a thousand joins a second for a whole lifetime.
RECENT_MAX = 1 << 17
# Bytes of randomness per challenge: collisions are out of the question.
NONCE_BYTES = 16
# The MAC is truncated to this: forging one is still 2**128 work.
MAC_BYTES = 16
# A challenge is short; anything much longer is not one of ours.
MAX_CHALLENGE_CHARS = 256
# A counter of more digits than this cannot be needed below MAX_DIFFICULTY.
MAX_COUNTER_DIGITS = 20

_VERSION = 1
# version, difficulty, expiry (seconds since the epoch), nonce.
_HEAD = struct.Struct(f">BBQ{NONCE_BYTES}s")


class ChallengeError(Exception):
    """A proof of work was refused; ``reason`` names why (for metrics)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Challenge:
    text: str
    room: str
    difficulty: int
    expires: int
    nonce: bytes


def derive_key(secret: bytes) -> bytes:
    """The challenge-signing key, kept apart from the token-signing one."""
    return hmac.digest(secret, b"wr proof-of-work challenge v1", "sha256")


def leading_zero_bits(digest: bytes) -> int:
    """How many zero bits ``digest`` starts with."""
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def auto_difficulty(
    base: int, ceiling: int, joins_per_s: float, spike_joins_per_s: float
) -> int:
    """The difficulty to ask for now, given the room's recent join rate.

    Below ``spike_joins_per_s`` it is ``base``; at the threshold one bit
    more, and one more for each doubling of the rate, up to ``ceiling``
    (a ceiling at or below ``base`` turns the rise off).
    """
    if ceiling <= base or spike_joins_per_s <= 0 or joins_per_s < spike_joins_per_s:
        return base
    extra = 1 + int(math.log2(joins_per_s / spike_joins_per_s))
    return min(ceiling, base + extra)


class ProofOfWork:
    """Mint and check challenges with one key; remember accepted nonces."""

    def __init__(
        self,
        key: bytes,
        *,
        rand: Callable[[int], bytes],
        ttl_s: int = CHALLENGE_TTL_S,
        recent_max: int = RECENT_MAX,
    ) -> None:
        # Replaced when the key ring changes (a reload).
        self.key = key
        self._rand = rand
        self.ttl_s = ttl_s
        self._recent_max = recent_max
        # Accepted nonces as integers, and (expiry, nonce) in the
        # order they came.
        self._recent: set[int] = set()
        self._order: deque[tuple[int, int]] = deque()
        self.evicted = 0

    def issue(self, room: str, difficulty: int, now: float) -> Challenge:
        expires = int(now) + self.ttl_s
        nonce = self._rand(NONCE_BYTES)
        head = _HEAD.pack(_VERSION, difficulty, expires, nonce)
        body = head + room.encode("ascii")
        mac = hmac.digest(self.key, body, "sha256")[:MAC_BYTES]
        return Challenge(f"{_b64(body)}.{_b64(mac)}", room, difficulty, expires, nonce)

    def verify(self, text: object, counter: object, room: str, now: float) -> int:
        """Accept a solution for ``room``; return its difficulty.

        Raises :class:`ChallengeError` with reason ``malformed``,
        ``bad_signature``, ``wrong_room``, ``expired``, ``unsolved`` or
        ``replayed``. A challenge is accepted once per process.
        """
        challenge = self._parse(text)
        if challenge.room != room:
            raise ChallengeError("wrong_room", "challenge is for another room")
        if challenge.expires <= now:
            raise ChallengeError("expired", "challenge has expired; ask for another")
        if not isinstance(counter, str | int) or isinstance(counter, bool):
            raise ChallengeError("malformed", "counter must be a decimal number")
        digits = str(counter)
        if not (digits.isascii() and digits.isdigit()) or len(digits) > (
            MAX_COUNTER_DIGITS
        ):
            raise ChallengeError("malformed", "counter must be a decimal number")
        digest = hashlib.sha256(f"{challenge.text}{digits}".encode("ascii")).digest()
        if leading_zero_bits(digest) < challenge.difficulty:
            raise ChallengeError("unsolved", "the counter does not solve the challenge")
        self._remember(challenge, now)
        return challenge.difficulty

    def _parse(self, text: object) -> Challenge:
        if not isinstance(text, str) or len(text) > MAX_CHALLENGE_CHARS:
            raise ChallengeError("malformed", "not a challenge")
        body_text, dot, mac_text = text.partition(".")
        try:
            body = _unb64(body_text)
            mac = _unb64(mac_text)
        except (binascii.Error, ValueError):
            raise ChallengeError("malformed", "challenge is not base64") from None
        if not dot or len(body) <= _HEAD.size:
            raise ChallengeError("malformed", "not a challenge")
        expected = hmac.digest(self.key, body, "sha256")[:MAC_BYTES]
        if not hmac.compare_digest(expected, mac):
            raise ChallengeError("bad_signature", "challenge was not issued here")
        version, difficulty, expires, nonce = _HEAD.unpack_from(body)
        if version != _VERSION or not 0 <= difficulty <= MAX_DIFFICULTY:
            raise ChallengeError("malformed", "unknown challenge version")
        # Signed by us, so this is ASCII (room names are).
        room = body[_HEAD.size :].decode("ascii")
        return Challenge(text, room, difficulty, expires, nonce)

    def _remember(self, challenge: Challenge, now: float) -> None:
        fingerprint = int.from_bytes(challenge.nonce, "big")
        if fingerprint in self._recent:
            raise ChallengeError("replayed", "this challenge was used already")
        # Every entry lives ttl_s, so the oldest expire first.
        order = self._order
        while order and (order[0][0] <= now or len(order) >= self._recent_max):
            expires, old = order.popleft()
            if expires > now:
                self.evicted += 1
            self._recent.discard(old)
        order.append((challenge.expires, fingerprint))
        self._recent.add(fingerprint)
