"""Metrics: plain integers on the hot path, one Prometheus view of all workers.

A request costs a dictionary increment and a histogram bucket; nothing is
shared or locked. Every second each worker writes its counters, as JSON,
into its own slot of the shared block (one writer per slot, read under a
seqlock). A scrape, on whichever worker it lands, adds up every live
worker's slot, the counters of workers that have exited (the supervisor
folds them into the block's ``retired`` slot, so totals never go back) and
its own live counters, and hands the result to prometheus-client's
exposition code. Room figures come straight from shared memory.

What a killed worker counted in its last second is lost; everything else
adds up across workers and restarts of workers.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from wr import __version__
from wr.room import Room
from wr.shm import ABANDON_AFTER_S, WAIT_BUCKETS_S, MetricsBlob, SharedBlock

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS_S",
    "PUBLISH_INTERVAL_S",
    "Metrics",
    "merge_snapshots",
]

log = logging.getLogger("wr.server")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# How often a worker copies its counters to shared memory: the staleness of
# other workers' figures in a scrape.
PUBLISH_INTERVAL_S = 1.0
# Request latency buckets: wr answers in tens of microseconds, so the
# buckets start far below the usual web defaults.
LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
ROOM_STATES = ("prequeue", "waiting", "full", "paused", "closed")
# Solve times the page reports, in seconds; longer ones are capped (the
# figure comes from the client and is only analytics).
POW_SOLVE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
POW_SOLVE_MAX_S = 600.0


# What a snapshot holds: counters with two labels, as [label, label, value]
# lists; histograms by one label, as {label: [count per bucket..., sum]};
# plain numbers.
_LABELLED = ("requests", "bad", "tokens", "pow")
_HISTOGRAMS = ("latency", "pow_solve")
_NUMBERS = ("connections", "connections_max")


def merge_snapshots(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Add up the counters of several processes."""
    labelled: dict[str, Counter[tuple[Any, Any]]] = {k: Counter() for k in _LABELLED}
    histograms: dict[str, dict[str, list[float]]] = {k: {} for k in _HISTOGRAMS}
    numbers = dict.fromkeys(_NUMBERS, 0)
    for snapshot in snapshots:
        for key, counter in labelled.items():
            for first, second, value in snapshot.get(key, ()):
                counter[first, second] += value
        for key, merged in histograms.items():
            for label, values in snapshot.get(key, {}).items():
                total = merged.setdefault(label, [0.0] * len(values))
                for i, value in enumerate(values):
                    total[i] += value
        for key in numbers:
            numbers[key] += snapshot.get(key, 0)
    return {
        **{key: _rows(counter) for key, counter in labelled.items()},
        **histograms,
        **numbers,
    }


def _rows(counter: Counter[tuple[Any, Any]]) -> list[list[Any]]:
    return [[first, second, value] for (first, second), value in counter.items()]


def _observe(
    histograms: dict[str, list[float]],
    label: str,
    value: float,
    buckets: tuple[float, ...],
) -> None:
    counts = histograms.get(label)
    if counts is None:
        counts = histograms[label] = [0.0] * (len(buckets) + 2)
    counts[bisect_left(buckets, value)] += 1
    counts[-1] += value


def _histogram(
    name: str,
    text: str,
    histograms: Mapping[str, list[float]],
    buckets: tuple[float, ...],
    label: str,
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, text, labels=[label])
    bounds = [*map(str, buckets), "+Inf"]
    for key, values in sorted(histograms.items()):
        cumulative = itertools.accumulate(values[:-1])
        family.add_metric(
            [key],
            [(b, c) for b, c in zip(bounds, cumulative, strict=True)],
            sum_value=values[-1],
        )
    return family


class Metrics(Collector):
    """One process's counters, and the scrape of the whole service."""

    def __init__(
        self,
        rooms: Mapping[str, Room],
        *,
        block: SharedBlock | None = None,
        index: int | None = None,
        connections: Callable[[], int] = lambda: 0,
        connection_limit: int = 0,
        session_s: float = 3600.0,
    ) -> None:
        self.rooms = rooms
        self.block = block
        self.index = index
        self.connections = connections
        self.connection_limit = connection_limit
        self.session_s = session_s
        # Requests by route, then status (see observe).
        self._statuses: dict[str, Counter[int]] = {}
        self.http_rejected: Counter[tuple[int, str]] = Counter()
        self.tokens_rejected: Counter[tuple[str, str]] = Counter()
        # Proof of work, by room: challenges issued and solutions by outcome.
        self.pow_outcomes: Counter[tuple[str, str]] = Counter()
        # Per route (per room): a count per bucket (the last is +Inf), then
        # the sum.
        self.latency: dict[str, list[float]] = {}
        self.pow_solve: dict[str, list[float]] = {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    # The hot path.

    def observe(self, route: str, status: int, seconds: float) -> None:
        # Once per request: kept to a few C-level operations, with no
        # allocation once a route and status have been seen.
        statuses = self._statuses.get(route)
        if statuses is None:
            statuses = self._statuses[route] = Counter()
            self.latency[route] = [0.0] * (len(LATENCY_BUCKETS_S) + 2)
        statuses[status] += 1
        counts = self.latency[route]
        counts[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        counts[-1] += seconds

    @property
    def requests(self) -> Counter[tuple[str, int]]:
        """Requests answered, by route and status."""
        return Counter(
            {
                (route, status): count
                for route, statuses in self._statuses.items()
                for status, count in statuses.items()
            }
        )

    def http_error(self, status: int, error: str) -> None:
        self.http_rejected[status, error] += 1

    def token_rejected(self, kind: str, reason: str) -> None:
        self.tokens_rejected[kind, reason] += 1

    def pow_outcome(self, room: str, outcome: str) -> None:
        """``issued``, ``accepted``, ``missing`` or a refusal reason (wr.pow)."""
        self.pow_outcomes[room, outcome] += 1

    def pow_solved_in(self, room: str, seconds: float) -> None:
        """How long the page says it took to solve (untrusted, clamped)."""
        clamped = min(max(0.0, seconds), POW_SOLVE_MAX_S)
        _observe(self.pow_solve, room, clamped, POW_SOLVE_BUCKETS_S)

    # Sharing.

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": _rows(self.requests),
            "bad": _rows(self.http_rejected),
            "tokens": _rows(self.tokens_rejected),
            "pow": _rows(self.pow_outcomes),
            "latency": self.latency,
            "pow_solve": self.pow_solve,
            "connections": self.connections(),
            "connections_max": self.connection_limit,
        }

    def publish(self) -> None:
        """Copy this worker's counters to its slot (every PUBLISH_INTERVAL_S)."""
        if self.block is None or self.index is None:
            return
        blob = self.block.workers[self.index].metrics
        if not blob.write(orjson.dumps(self.snapshot())):
            log.error("metrics snapshot too large for its slot index=%s", self.index)

    def _service_snapshot(self) -> dict[str, Any]:
        snapshots = [self.snapshot()]
        block = self.block
        if block is not None:
            blobs: list[MetricsBlob] = [block.header.retired]
            for index, slot in enumerate(block.workers):
                if slot.pid and index != self.index and slot.pid != os.getpid():
                    blobs.append(slot.metrics)
            for blob in blobs:
                raw = blob.read()
                if raw:
                    snapshots.append(orjson.loads(raw))
        return merge_snapshots(snapshots)

    # The scrape.

    def exposition(self) -> bytes:
        return generate_latest(self._registry)

    def collect(self) -> Iterable[Metric]:
        yield from self._service(self._service_snapshot())
        yield from self._rooms()

    def _service(self, totals: Mapping[str, Any]) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "wr_build_info", "Version of the running wr.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info

        requests = CounterMetricFamily(
            "wr_http_requests",
            "Requests answered, by route and status code.",
            labels=["route", "code"],
        )
        for route, code, value in sorted(totals["requests"]):
            requests.add_metric([route, str(code)], value)
        yield requests

        yield _histogram(
            "wr_http_request_duration_seconds",
            "Time from a request's last byte to its response, by route.",
            totals["latency"],
            LATENCY_BUCKETS_S,
            "route",
        )

        yield GaugeMetricFamily(
            "wr_http_connections_open",
            "Client connections open, all workers.",
            value=totals["connections"],
        )
        yield GaugeMetricFamily(
            "wr_http_connections_max",
            "Client connections the live workers accept before answering 503.",
            value=totals["connections_max"],
        )

        rejected = CounterMetricFamily(
            "wr_http_bad_requests",
            "Requests refused by the HTTP layer, by status and reason.",
            labels=["code", "reason"],
        )
        for code, reason, value in sorted(totals["bad"]):
            rejected.add_metric([str(code), reason], value)
        yield rejected

        tokens = CounterMetricFamily(
            "wr_token_rejections",
            "Tokens refused, by kind and reason.",
            labels=["kind", "reason"],
        )
        for kind, reason, value in sorted(totals["tokens"]):
            tokens.add_metric([kind, reason], value)
        yield tokens

        issued = CounterMetricFamily(
            "wr_pow_challenges_issued",
            "Proof-of-work challenges handed out, by room.",
            labels=["room"],
        )
        solutions = CounterMetricFamily(
            "wr_pow_solutions",
            "Joins by what their proof of work was: accepted, missing, "
            "replayed, expired, unsolved, bad_signature, wrong_room, malformed.",
            labels=["room", "outcome"],
        )
        for room, outcome, value in sorted(totals["pow"]):
            if outcome == "issued":
                issued.add_metric([room], value)
            else:
                solutions.add_metric([room, outcome], value)
        yield issued
        yield solutions
        yield _histogram(
            "wr_pow_solve_seconds",
            "How long browsers took to solve the join challenge, as they report.",
            totals["pow_solve"],
            POW_SOLVE_BUCKETS_S,
            "room",
        )

        if self.block is not None:
            header = self.block.header
            yield CounterMetricFamily(
                "wr_worker_restarts",
                "Worker processes restarted after they died or stopped answering.",
                value=header.worker_restarts,
            )
            yield GaugeMetricFamily(
                "wr_ticker_lag_seconds",
                "How late the admission ticker ran, at worst, in the last second.",
                value=header.ticker_lag,
            )
            yield GaugeMetricFamily(
                "wr_state_save_failing",
                "1 while the state directory refuses writes (serving from memory).",
                value=header.save_failing,
            )
            yield GaugeMetricFamily(
                "wr_store_unreachable",
                "1 while the shared store (redis backend) cannot be reached.",
                value=header.store_unreachable,
            )
            yield GaugeMetricFamily(
                "wr_ticker_leader",
                "1 while this host holds the ticker's lease (redis backend).",
                value=header.leader,
            )

    def _rooms(self) -> Iterator[Metric]:
        now = time.time()
        gauges = {
            "next_position": ("wr_room_next_position", "Next position to hand out."),
            "serving": ("wr_room_serving_position", "Highest position let in."),
            "waiting": ("wr_room_waiting", "People in line, not yet let in."),
            "active": (
                "wr_room_active",
                "People inside now: claimed, within their session, not left.",
            ),
            "rate": (
                "wr_room_admit_rate_per_second",
                "Admissions per second the ticker aims at, policies included.",
            ),
            "noshow": (
                "wr_room_noshow_ratio",
                "Share of recent admissions nobody claimed.",
            ),
            "eta": (
                "wr_room_last_arrival_eta_seconds",
                "Estimated wait given to the latest arrival.",
            ),
            "pow": (
                "wr_room_pow_difficulty",
                "Leading zero bits a join's proof of work needs now (0: off).",
            ),
        }
        counters = {
            "joins": ("wr_room_joins", "Positions handed out."),
            "admitted": (
                "wr_room_admissions_available",
                "Admissions made available by the ticker.",
            ),
            "claimed": (
                "wr_room_admissions_claimed",
                "Admissions taken by the person they were for.",
            ),
        }
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            key: GaugeMetricFamily(name, text, labels=["room"])
            for key, (name, text) in gauges.items()
        }
        families.update(
            {
                key: CounterMetricFamily(name, text, labels=["room"])
                for key, (name, text) in counters.items()
            }
        )
        state = GaugeMetricFamily(
            "wr_room_state", "1 for the room's current state.", labels=["room", "state"]
        )
        wait = HistogramMetricFamily(
            "wr_room_wait_at_admission_seconds",
            "Time from joining to taking one's turn.",
            labels=["room"],
        )
        for name, room in sorted(self.rooms.items()):
            values = {
                "next_position": room.next_position,
                "serving": room.serving,
                "waiting": room.waiting,
                "active": room.active(now, self.session_s),
                "rate": room.admit_rate,
                "noshow": room.noshow_ratio,
                "eta": room.last_eta,
                "pow": room.pow_difficulty,
                "joins": room.joins,
                "admitted": room.admitted,
                "claimed": room.claimed,
            }
            for key, value in values.items():
                families[key].add_metric([name], value)
            phase = room.state()
            for candidate in ROOM_STATES:
                state.add_metric([name, candidate], 1 if candidate == phase else 0)
            counts, total = room.wait_histogram()
            buckets, cumulative = [], 0
            for bound, count in zip(
                [*map(str, WAIT_BUCKETS_S), "+Inf"], counts, strict=True
            ):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            wait.add_metric([name], buckets, sum_value=total)
        yield from families.values()
        yield state
        yield wait
        yield from self._drop_off()

    def _drop_off(self) -> Iterator[Metric]:
        reached = CounterMetricFamily(
            "wr_room_reached_front",
            "People whose turn came, by their place in line.",
            labels=["room", "place"],
        )
        abandoned = CounterMetricFamily(
            "wr_room_abandoned",
            "People whose turn came after they had stopped checking in.",
            labels=["room", "place"],
        )
        untracked = CounterMetricFamily(
            "wr_room_dropoff_untracked",
            "Turns not analysed for drop-off (ring overrun or a burst).",
            labels=["room"],
        )
        waited = HistogramMetricFamily(
            "wr_room_abandoned_after_seconds",
            "How long people who gave up had waited.",
            labels=["room"],
        )
        still = GaugeMetricFamily(
            "wr_room_still_waiting_ratio",
            "Share of people whose turn came who were still in line after a wait.",
            labels=["room", "after_seconds"],
        )
        for name, room in sorted(self.rooms.items()):
            figures = room.drop_off()
            for first, last, count, gone in figures.by_place():
                place = f"{first}-{last}" if last is not None else f"{first}+"
                reached.add_metric([name, place], count)
                abandoned.add_metric([name, place], gone)
            untracked.add_metric([name], figures.untracked)
            bounds = [*map(str, ABANDON_AFTER_S), "+Inf"]
            cumulative = itertools.accumulate(figures.abandoned_by_wait)
            waited.add_metric(
                [name],
                [(b, float(c)) for b, c in zip(bounds, cumulative, strict=True)],
                sum_value=figures.abandoned_wait_s,
            )
            for after_s, share in figures.still_waiting():
                if share is not None:
                    still.add_metric([name, str(after_s)], share)
        yield from (reached, abandoned, untracked, waited, still)
