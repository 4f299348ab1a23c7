"""Counters kept as plain integers on the hot path, exposed by prometheus-client.

A request costs one dictionary increment; the Prometheus families are built
only when ``/metrics`` is scraped, by :class:`Metrics` acting as a
prometheus-client collector. Room gauges are read from the rooms at scrape
time, so they cost nothing between scrapes.

Counters are per process: with one worker that is the whole service.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wr import __version__
from wr.room import Room

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics(Collector):
    def __init__(self, rooms: Mapping[str, Room]) -> None:
        self.rooms = rooms
        self.requests: Counter[tuple[str, int]] = Counter()
        self.http_rejected: Counter[tuple[int, str]] = Counter()
        self.tokens_rejected: Counter[tuple[str, str]] = Counter()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def http_error(self, status: int, error: str) -> None:
        self.http_rejected[status, error] += 1

    def token_rejected(self, kind: str, reason: str) -> None:
        self.tokens_rejected[kind, reason] += 1

    def exposition(self) -> bytes:
        return generate_latest(self._registry)

    def collect(self) -> Iterable[Metric]:
        yield from self._service()
        yield from self._rooms()

    def _service(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "wr_build_info", "Version of the running wr.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info

        requests = CounterMetricFamily(
            "wr_http_requests", "Requests answered, by route.", labels=["route", "code"]
        )
        for (route, code), value in sorted(self.requests.items()):
            requests.add_metric([route, str(code)], value)
        yield requests

        rejected = CounterMetricFamily(
            "wr_http_bad_requests",
            "Requests refused by the HTTP layer, by status and reason.",
            labels=["code", "reason"],
        )
        for (code, reason), value in sorted(self.http_rejected.items()):
            rejected.add_metric([str(code), reason], value)
        yield rejected

        tokens = CounterMetricFamily(
            "wr_token_rejections",
            "Tokens refused, by kind and reason.",
            labels=["kind", "reason"],
        )
        for (kind, reason), value in sorted(self.tokens_rejected.items()):
            tokens.add_metric([kind, reason], value)
        yield tokens

    def _rooms(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "next_position": GaugeMetricFamily(
                "wr_room_next_position",
                "Next position to be handed out.",
                labels=["room"],
            ),
            "serving": GaugeMetricFamily(
                "wr_room_serving_position",
                "Highest position allowed in.",
                labels=["room"],
            ),
            "waiting": GaugeMetricFamily(
                "wr_room_waiting", "People in line, not yet let in.", labels=["room"]
            ),
            "joins": CounterMetricFamily(
                "wr_room_joins", "Positions handed out.", labels=["room"]
            ),
            "admitted": CounterMetricFamily(
                "wr_room_admissions_available",
                "Admissions made available by the ticker.",
                labels=["room"],
            ),
            "claimed": CounterMetricFamily(
                "wr_room_admissions_claimed",
                "Admissions taken by the person they were for.",
                labels=["room"],
            ),
        }
        for name, room in sorted(self.rooms.items()):
            families["next_position"].add_metric([name], room.next_position)
            families["serving"].add_metric([name], room.serving)
            families["waiting"].add_metric([name], room.waiting)
            families["joins"].add_metric([name], room.next_position - 1)
            families["admitted"].add_metric([name], room.admitted)
            families["claimed"].add_metric([name], room.claimed)
        yield from families.values()
