"""The arithmetic of a benchmark run, with no I/O: percentiles and fairness.

Latencies are kept in a :class:`LatencyHistogram`: log-spaced buckets, so a
run of ten million requests costs a few kilobytes, histograms from several
processes add up exactly, and every percentile it reports is within
:data:`RELATIVE_ERROR` of the true value. :func:`percentile` is the exact
nearest-rank definition the histogram approximates; the tests hold one
against the other.

Fairness is measured the way a person in line would judge it: if A had
their place (their join answered) before B even asked, B must not be let in
before A. :func:`displacement` counts, for each person, how many people who
arrived after them got a lower position.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bench import Json

__all__ = [
    "RELATIVE_ERROR",
    "Displacement",
    "LatencyHistogram",
    "displacement",
    "percentile",
    "slope",
]

# Bucket width as a ratio: 1 % is finer than the run-to-run noise of any
# latency on a shared machine, and needs ~1,400 buckets from 1 us to 10 min.
RELATIVE_ERROR = 0.01
_LOG_STEP = math.log1p(RELATIVE_ERROR)
# Latencies below this are counted in the first bucket: a loopback round
# trip through Python never takes under a microsecond.
_FLOOR_S = 1e-6


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of sorted ``values``."""
    if not values:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {q}")
    rank = math.ceil(q / 100 * len(values))
    return values[rank - 1]


@dataclass
class LatencyHistogram:
    """Request latencies in log buckets of :data:`RELATIVE_ERROR` width."""

    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total_s: float = 0.0
    max_s: float = 0.0

    def record(self, seconds: float) -> None:
        bucket = _bucket(seconds)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.count += 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)

    def merge(self, other: LatencyHistogram) -> None:
        for bucket, n in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + n
        self.count += other.count
        self.total_s += other.total_s
        self.max_s = max(self.max_s, other.max_s)

    def percentile(self, q: float) -> float:
        """The nearest-rank percentile, within RELATIVE_ERROR (never above max)."""
        if not self.count:
            raise ValueError("no values")
        if not 0 < q <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {q}")
        rank = math.ceil(q / 100 * self.count)
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(_bucket_value(bucket), self.max_s)
        return self.max_s

    def summary_ms(self) -> dict[str, float]:
        """p50, p99, p99.9 and max in milliseconds (empty without values)."""
        if not self.count:
            return {}
        return {
            "p50_ms": self.percentile(50) * 1e3,
            "p99_ms": self.percentile(99) * 1e3,
            "p999_ms": self.percentile(99.9) * 1e3,
            "max_ms": self.max_s * 1e3,
            "mean_ms": self.total_s / self.count * 1e3,
        }

    def to_json(self) -> Json:
        return {
            "counts": {str(k): v for k, v in self.counts.items()},
            "count": self.count,
            "total_s": self.total_s,
            "max_s": self.max_s,
        }

    @classmethod
    def from_json(cls, data: Json) -> LatencyHistogram:
        counts = data["counts"]
        return cls(
            {int(k): int(v) for k, v in counts.items()},
            int(str(data["count"])),
            float(str(data["total_s"])),
            float(str(data["max_s"])),
        )


def _bucket(seconds: float) -> int:
    if seconds <= _FLOOR_S:
        return 0
    return math.ceil(math.log(seconds / _FLOOR_S) / _LOG_STEP)


def _bucket_value(bucket: int) -> float:
    """The upper edge of a bucket: every value in it is at most this."""
    return _FLOOR_S * math.exp(bucket * _LOG_STEP)


@dataclass(frozen=True)
class Displacement:
    """How far admission order strayed from arrival order."""

    # People with at least one later arrival placed ahead of them.
    displaced: int
    # The most later arrivals placed ahead of any one person.
    max_places: int
    # Later arrivals placed ahead, summed over everyone.
    total_places: int


def displacement(people: Iterable[tuple[int, float, float]]) -> Displacement:
    """Fairness of ``(position, asked_at, answered_at)`` triples.

    Person B overtook person A when B asked for a place after A's answer
    came back (so B arrived strictly later) yet got a lower position, and is
    therefore let in first. Requests in flight at the same time carry no
    order between them. Times are any one clock, e.g. ``time.monotonic``.
    """
    by_position = sorted(people)
    # The common answer, zero, is found in one pass: someone was overtaken
    # only if a lower position asked later than their answer came.
    latest_ask = -math.inf
    overtaken = False
    for _, asked, answered in by_position:
        if latest_ask > answered:
            overtaken = True
            break
        latest_ask = max(latest_ask, asked)
    if not overtaken:
        return Displacement(0, 0, 0)
    return _count_overtakes(by_position)


def _count_overtakes(by_position: list[tuple[int, float, float]]) -> Displacement:
    """For each person, the lower positions that asked after their answer.

    A Fenwick tree over the ranks of the ask times counts them in
    O(n log n), which matters with millions of people.
    """
    asks = sorted({asked for _, asked, _ in by_position})
    tree = [0] * (len(asks) + 1)
    displaced = max_places = total = 0
    for seen, (_, asked, answered) in enumerate(by_position):
        # Lower positions seen so far whose ask is <= answered.
        index = bisect.bisect_right(asks, answered)
        not_later = 0
        while index > 0:
            not_later += tree[index]
            index -= index & -index
        places = seen - not_later
        if places:
            displaced += 1
            total += places
            max_places = max(max_places, places)
        index = bisect.bisect_left(asks, asked) + 1
        while index < len(tree):
            tree[index] += 1
            index += index & -index
    return Displacement(displaced, max_places, total)


def slope(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of ``(x, y)`` points (at least two distinct x)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        raise ValueError("slope needs two distinct x values")
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
