"""The benchmark's arithmetic: percentiles, histograms, fairness, wrk output."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.stats import (
    RELATIVE_ERROR,
    LatencyHistogram,
    displacement,
    percentile,
    slope,
)
from bench.wrk import parse_wrk


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 50) == 7.0


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], 0)
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], 101)


@given(
    st.lists(
        st.floats(min_value=2e-6, max_value=100.0, allow_nan=False),
        min_size=1,
        max_size=500,
    ),
    st.sampled_from([50.0, 90.0, 99.0, 99.9, 100.0]),
)
def test_histogram_percentile_within_relative_error(
    values: list[float], q: float
) -> None:
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    exact = percentile(sorted(values), q)
    estimate = histogram.percentile(q)
    assert exact * (1 - 1e-9) <= estimate <= exact * (1 + RELATIVE_ERROR) * (1 + 1e-9)


def test_histogram_counts_max_and_mean() -> None:
    histogram = LatencyHistogram()
    for value in (0.001, 0.002, 0.003):
        histogram.record(value)
    assert histogram.count == 3
    assert histogram.max_s == 0.003
    summary = histogram.summary_ms()
    assert summary["max_ms"] == pytest.approx(3.0)
    assert summary["mean_ms"] == pytest.approx(2.0)
    assert summary["p50_ms"] == pytest.approx(2.0, rel=RELATIVE_ERROR)


def test_histograms_merge_like_one() -> None:
    rng = random.Random(7)  # noqa: S311 - test data, not secrets
    values = [rng.expovariate(1000) + 1e-5 for _ in range(2000)]
    whole, first, second = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for index, value in enumerate(values):
        whole.record(value)
        (first if index % 2 else second).record(value)
    first.merge(LatencyHistogram.from_json(second.to_json()))
    assert first.counts == whole.counts
    assert first.count == whole.count
    assert first.max_s == whole.max_s
    for q in (50, 99, 99.9):
        assert first.percentile(q) == whole.percentile(q)


def test_empty_histogram_has_no_summary() -> None:
    assert LatencyHistogram().summary_ms() == {}
    with pytest.raises(ValueError, match="no values"):
        LatencyHistogram().percentile(50)


def test_no_displacement_when_positions_follow_arrivals() -> None:
    # Person i asks at i, is answered at i + 0.5, gets position i + 1.
    people = [(i + 1, float(i), i + 0.5) for i in range(1000)]
    assert displacement(people).max_places == 0
    assert displacement(people).displaced == 0


def test_requests_in_flight_together_carry_no_order() -> None:
    # Both asked before either was answered: any order of positions is fair.
    people = [(2, 0.0, 1.0), (1, 0.1, 1.1)]
    assert displacement(people).displaced == 0


def test_a_later_arrival_placed_ahead_is_counted() -> None:
    # C asked at 5, after A and B were answered, yet got position 1.
    people = [(2, 0.0, 1.0), (3, 2.0, 3.0), (1, 5.0, 6.0)]
    result = displacement(people)
    assert result.displaced == 2
    assert result.max_places == 1
    assert result.total_places == 2


def test_displacement_counts_places_lost() -> None:
    # The first arrival ends up behind three people who came after them.
    people = [(4, 0.0, 1.0), (1, 2.0, 3.0), (2, 4.0, 5.0), (3, 6.0, 7.0)]
    result = displacement(people)
    assert result.max_places == 3
    assert result.displaced == 1


@given(st.permutations(list(range(1, 40))))
def test_displacement_matches_a_direct_count(order: list[int]) -> None:
    # Person i arrives strictly after person i - 1 was answered.
    people = [(position, 2.0 * i, 2.0 * i + 1) for i, position in enumerate(order)]
    places = [sum(1 for b in people if b[0] < a[0] and b[1] > a[2]) for a in people]
    result = displacement(people)
    assert result.total_places == sum(places)
    assert result.max_places == max(places)
    assert result.displaced == sum(1 for p in places if p)


def test_slope_fits_a_line_through_noise() -> None:
    rng = random.Random(3)  # noqa: S311 - test data, not secrets
    points = [(t / 10, 500.0 * t / 10 + rng.uniform(-20, 20)) for t in range(300)]
    assert slope(points) == pytest.approx(500.0, rel=0.01)
    with pytest.raises(ValueError, match="distinct"):
        slope([(1.0, 1.0), (1.0, 2.0)])


WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:1/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms  500.00us  12.00ms   90.00%
  Latency Distribution
     50%    2.00ms
     75%    2.20ms
     90%    2.50ms
     99%  850.00us
  60000 requests in 2.00s, 20.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  30000.50
Transfer/sec:     10.00MB
"""


def test_parse_wrk() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result["rps"] == 30000.50
    assert result["p50_ms"] == 2.0
    assert math.isclose(result["p99_ms"], 0.85)
    assert result["errors"] == 7


def test_parse_wrk_refuses_other_text() -> None:
    with pytest.raises(ValueError, match="Requests/sec"):
        parse_wrk("wrk: connection refused")
