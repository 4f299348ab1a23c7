"""The flash sale: a crowd arrives, waits its turn, polls when told, gets in.

Theory of operation. ``people`` people arrive, all at 00:00 (``burst``: as
fast as the server takes their joins) or spread evenly over ``ramp_s``.
Each joins once. A sample of them, every k-th arrival so that the sample
sees every length of wait, then behaves like the waiting page: it polls
``status`` when the server says, claims its turn when admitted, and a share
``give_up`` of it closes the tab at a random moment of the wait. The others
only join: two million people polling would ask more of one core than the
server has (the poll load per person is measured on the sample instead).

Time compression. The server runs the room at ``compression`` times the
sale's rate (its ``rate_per_minute`` is ``rate_per_minute`` here, already
scaled), so its ETAs come out ``compression`` times shorter. A sampled
person sleeps what a real waiting page would be told for the real wait,
scaled down by the same factor: wr's own :func:`wr.room.next_poll_s` of the
answer's ``eta_s`` times ``compression``, divided by ``compression``. With
``compression`` 1 they sleep the server's ``next_poll_s`` as it is. The
server keeps its real clock: nothing in wr knows it is being compressed.

What is measured: latency and errors of join and status; the server's
admissions per minute (from its ``/metrics``: ``wr_room_serving_position``)
against the configured rate; fairness over every arrival
(:func:`bench.stats.displacement`); the sample's polls against what polling
every 3 s would have sent over the same waits; the claims.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import multiprocessing
import os
import random
import threading
import time
import urllib.request
from array import array
from dataclasses import asdict, dataclass, field

import orjson
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from bench import Json
from bench.client import Connection, Recorder, request_bytes
from bench.load import merge, split
from bench.procstat import TreeSampler
from bench.stats import displacement, slope
from wr.room import next_poll_s

__all__ = ["FIXED_POLL_S", "FlashSpec", "add_arguments", "run_flash_sale"]

# The polling the adaptive next_poll_s is measured against: a waiting page
# that asks every 3 seconds, as many waiting rooms do.
FIXED_POLL_S = 3.0
# The crowd's scheduler wakes this often to send due arrivals and polls: a
# tenth of the shortest compressed poll delay worth simulating.
TICK_S = 0.005
# Requests queued on a connection beyond its pipelining depth: enough to
# keep it busy between ticks, small enough that "asked at" stays the write.
QUEUE_AHEAD = 2
# A person whose request failed tries again after this long (real seconds).
RETRY_S = 1.0
# /metrics is read this often for the admission rate and queue depth.
METRICS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class FlashSpec:
    host: str = "127.0.0.1"
    port: int = 8080
    room: str = "default"
    people: int = 10_000
    arrival: str = "burst"
    # Over how long (in sale time) arrivals spread with arrival="ramp".
    ramp_s: float = 600.0
    # The room's configured rate, as the server has it (already compressed).
    rate_per_minute: float = 300_000.0
    compression: float = 60.0
    # People who poll and claim; the rest only join.
    pollers: int = 2000
    give_up: float = 0.1
    # Those who give up do so at a uniform moment within this much sale time.
    give_up_within_s: float = 1800.0
    connections: int = 64
    depth: int = 8
    processes: int = 1
    # Real seconds: the run ends then, whoever is still waiting.
    max_duration_s: float = 120.0
    # Real seconds after the last arrival, for the line to move on.
    linger_s: float = 20.0
    cpus: tuple[int, ...] = ()
    seed: int = 1

    def share(self, index: int) -> FlashSpec:
        connections = split(self.connections, self.processes, index)
        return FlashSpec(**{**asdict(self), "connections": connections})

    @property
    def stride(self) -> int:
        """Every ``stride``-th person polls."""
        return max(1, self.people // max(1, self.pollers))


@dataclass
class _Poller:
    token: str = ""
    polls: int = 0
    answered: float = 0.0
    give_up_at: float = math.inf
    ended: float = 0.0
    outcome: str = "waiting"


@dataclass
class _Crowd:
    """The people of one process: person ``index + k * processes``, k >= 0."""

    spec: FlashSpec
    index: int
    recorder: Recorder = field(default_factory=lambda: Recorder(recording=True))

    def __post_init__(self) -> None:
        spec = self.spec
        self.count = len(range(self.index, spec.people, spec.processes))
        self.positions = array("q", bytes(8 * self.count))
        self.asked = array("d", bytes(8 * self.count))
        self.answered = array("d", bytes(8 * self.count))
        self.pollers: dict[int, _Poller] = {}
        self.wheel: dict[int, list[int]] = {}
        self.next_arrival = 0
        self.joined = 0
        self.active = 0
        self.claims: list[float] = []
        # Who gives up and when, and the jitter of poll delays: a simulation,
        # seeded so that two runs are the same crowd.
        self.random = random.Random(spec.seed * 1000 + self.index)  # noqa: S311
        self.join_request = request_bytes("POST", f"/api/v1/rooms/{spec.room}/join")
        self.status_target = f"/api/v1/rooms/{spec.room}/status"

    async def run(self) -> Json:
        loop = asyncio.get_running_loop()
        spec = self.spec
        self.connections = [
            Connection(loop, spec.host, spec.port, self.recorder, spec.depth)
            for _ in range(spec.connections)
        ]
        self.started = time.monotonic()
        self.recorder.start_recording()
        deadline = self.started + spec.max_duration_s
        last_arrival = math.inf
        turn = 0
        while time.monotonic() < deadline:
            now = time.monotonic()
            turn = self._send_arrivals(now, turn)
            self._send_polls(now)
            if self.joined == self.count and last_arrival == math.inf:
                last_arrival = now
            if now > last_arrival + spec.linger_s or (
                self.joined == self.count and not self.active
            ):
                break
            await asyncio.sleep(TICK_S)
        self.ended = time.monotonic()
        for connection in self.connections:
            connection.close()
        return self._result()

    # Sending.

    def _arrival_due(self, k: int) -> float:
        spec = self.spec
        if spec.arrival == "burst":
            return self.started
        person = self.index + k * spec.processes
        return self.started + person / spec.people * spec.ramp_s / spec.compression

    def _send_arrivals(self, now: float, turn: int) -> int:
        limit = self.spec.depth * QUEUE_AHEAD
        connections = self.connections
        idle = 0
        while self.next_arrival < self.count and idle < len(connections):
            if self._arrival_due(self.next_arrival) > now:
                break
            connection = connections[turn % len(connections)]
            turn += 1
            if connection.pending >= limit:
                idle += 1
                continue
            idle = 0
            self._join(connection, self.next_arrival)
            self.next_arrival += 1
        return turn

    def _join(self, connection: Connection, k: int) -> None:
        connection.submit(
            "join", self.join_request, lambda s, b, t: self._joined(k, s, b, t)
        )

    def _send_polls(self, now: float) -> None:
        due = int(now / TICK_S)
        for slot in [s for s in self.wheel if s <= due]:
            for k in self.wheel.pop(slot):
                poller = self.pollers[k]
                connection = self.connections[k % len(self.connections)]
                data = request_bytes("GET", self.status_target, poller.token)
                connection.submit("status", data, functools.partial(self._polled, k))

    def _later(self, k: int, delay_s: float) -> None:
        slot = int((time.monotonic() + delay_s) / TICK_S)
        self.wheel.setdefault(slot, []).append(k)

    # Answers.

    def _joined(self, k: int, status: int, body: bytes, sent_at: float) -> None:
        if status != 200:
            # Counted by the recorder; the person tries again.
            self._retry_join(k)
            return
        now = time.monotonic()
        answer = orjson.loads(body)
        self.positions[k] = answer["position"]
        self.asked[k] = sent_at
        self.answered[k] = now
        self.joined += 1
        person = self.index + k * self.spec.processes
        if person % self.spec.stride:
            return
        poller = _Poller(answer["queue_token"], answered=now)
        if self.random.random() < self.spec.give_up:
            within = self.spec.give_up_within_s / self.spec.compression
            poller.give_up_at = now + self.random.random() * within
        self.pollers[k] = poller
        self.active += 1
        self._next_poll(k, poller, answer, now)

    def _retry_join(self, k: int) -> None:
        loop = asyncio.get_running_loop()
        connection = self.connections[k % len(self.connections)]
        loop.call_later(RETRY_S, self._join, connection, k)

    def _polled(self, k: int, status: int, body: bytes, _sent_at: float) -> None:
        poller = self.pollers[k]
        poller.polls += 1
        now = time.monotonic()
        if status != 200:
            self._later(k, RETRY_S)
            return
        answer = orjson.loads(body)
        if answer.get("state") == "admitted":
            poller.outcome = "admitted"
            poller.ended = now
            self.active -= 1
            self.claims.append(now)
            return
        self._next_poll(k, poller, answer, now)

    def _next_poll(self, k: int, poller: _Poller, answer: Json, now: float) -> None:
        delay = self._poll_delay(answer)
        if now + delay > poller.give_up_at:
            poller.outcome = "gave_up"
            poller.ended = poller.give_up_at
            self.active -= 1
            return
        self._later(k, delay)

    def _poll_delay(self, answer: Json) -> float:
        compression = self.spec.compression
        told = answer.get("next_poll_s")
        if compression == 1 and isinstance(told, int | float):
            return float(told)
        eta = answer.get("eta_s")
        real_eta = int(eta * compression) if isinstance(eta, int | float) else None
        return next_poll_s(real_eta, self.random.random) / compression

    # Results.

    def _result(self) -> Json:
        compression = self.spec.compression
        pollers = []
        for poller in self.pollers.values():
            ended = poller.ended or self.ended
            pollers.append(
                (poller.outcome, poller.polls, (ended - poller.answered) * compression)
            )
        recorder = self.recorder.to_json()
        recorder["sent"] = 0
        recorder["setup_s"] = 0.0
        return {
            "recorder": recorder,
            "positions": self.positions,
            "asked": self.asked,
            "answered": self.answered,
            "joined": self.joined,
            "pollers": pollers,
            "claims": self.claims,
            "started": self.started,
            "ended": self.ended,
        }


def _crowd_main(spec: FlashSpec, index: int) -> Json:
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_Crowd(spec, index).run())


@dataclass
class _MetricsSampler:
    """Reads the room's counters from the server's /metrics in a thread."""

    url: str
    room: str
    samples: list[dict[str, float]] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> _MetricsSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(METRICS_INTERVAL_S):
                return

    def sample(self) -> None:
        asked = time.monotonic()
        try:
            with urllib.request.urlopen(self.url, timeout=5) as answer:  # noqa: S310
                text = answer.read().decode()
        except OSError:
            self.errors += 1
            return
        # The server read its counters somewhere in between.
        sample = {"at": (asked + time.monotonic()) / 2}
        names = {
            "wr_room_serving_position": "serving",
            "wr_room_next_position": "next_position",
            "wr_room_waiting": "waiting",
        }
        for family in text_string_to_metric_families(text):
            if family.name in names:
                for metric in family.samples:
                    if metric.labels.get("room") == self.room:
                        sample[names[family.name]] = metric.value
        self.samples.append(sample)


def run_flash_sale(spec: FlashSpec, server_pid: int | None = None) -> Json:
    """Play the sale; the report as a JSON-ready dict."""
    url = f"http://{spec.host}:{spec.port}/metrics"
    sampler = TreeSampler(server_pid) if server_pid else None
    with _MetricsSampler(url, spec.room) as metrics:
        if sampler is not None:
            sampler.__enter__()
        try:
            if spec.processes == 1:
                results = [_crowd_main(spec, 0)]
            else:
                context = multiprocessing.get_context("spawn")
                with context.Pool(spec.processes) as pool:
                    results = pool.starmap(
                        _crowd_main,
                        [(spec.share(i), i) for i in range(spec.processes)],
                    )
        finally:
            if sampler is not None:
                sampler.__exit__()
    return report(spec, results, metrics.samples, sampler)


def report(
    spec: FlashSpec,
    results: list[Json],
    metrics: list[dict[str, float]],
    sampler: TreeSampler | None,
) -> Json:
    load = merge([r["recorder"] for r in results])
    people: list[tuple[int, float, float]] = []
    for result in results:
        positions, asked, answered = (
            result["positions"],
            result["asked"],
            result["answered"],
        )
        people.extend(
            (p, a, b) for p, a, b in zip(positions, asked, answered, strict=True) if p
        )
    first_arrival = min((a for _, a, _ in people), default=0.0)
    last_arrival = max((a for _, a, _ in people), default=0.0)
    fair = displacement(people)

    pollers: list[tuple[str, int, float]] = [p for r in results for p in r["pollers"]]
    adaptive = sum(polls for _, polls, _ in pollers)
    fixed = sum(max(1, math.ceil(wait / FIXED_POLL_S)) for _, _, wait in pollers)
    outcomes: dict[str, int] = {}
    for outcome, _, _ in pollers:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    out: Json = {
        "spec": asdict(spec),
        "people_joined": len(people),
        "endpoints": load["endpoints"],
        "errors": load["errors"],
        "error_count": load["error_count"],
        "arrivals_s": last_arrival - first_arrival,
        "fairness": asdict(fair),
        "polls": {
            "sampled_people": len(pollers),
            "outcomes": outcomes,
            "adaptive_polls": adaptive,
            "fixed_3s_polls": fixed,
            "reduction": fixed / adaptive if adaptive else None,
            "adaptive_per_person": adaptive / len(pollers) if pollers else None,
        },
        "admissions": admission_rate(spec, metrics),
        "timeline": _timeline(load, metrics, results),
    }
    if sampler is not None:
        out["server"] = sampler.summary()
        arrivals = sampler.summary(first_arrival, last_arrival)
        out["server_rss_growth_mb"] = arrivals["rss_last_mb"] - arrivals["rss_first_mb"]
    return out


def admission_rate(spec: FlashSpec, metrics: list[dict[str, float]]) -> Json:
    """Admissions per minute while people were waiting, against the rate.

    The slope of ``serving`` over time, fitted by least squares over the
    /metrics samples at which the line was not empty (so that the ramp-up
    and an empty line at the end do not count): a scrape answered late
    blurs its own instant, and the fit averages that blur out over the run.
    """
    busy = [s for s in metrics if s.get("waiting", 0) > 0 and "serving" in s]
    if len(busy) < 2:
        return {"measured_s": 0.0}
    elapsed = busy[-1]["at"] - busy[0]["at"]
    per_minute = slope([(s["at"], s["serving"]) for s in busy]) * 60
    return {
        "measured_s": elapsed,
        "samples": len(busy),
        "admitted": busy[-1]["serving"] - busy[0]["serving"],
        "per_minute": per_minute,
        "configured_per_minute": spec.rate_per_minute,
        "ratio": per_minute / spec.rate_per_minute if spec.rate_per_minute else None,
        "sale_per_minute": per_minute / spec.compression,
    }


def _timeline(
    load: Json,
    metrics: list[dict[str, float]],
    results: list[Json],
) -> Json:
    started = min(float(str(r["started"])) for r in results)
    claims = sorted(c - started for r in results for c in r["claims"])
    return {
        "latency": load["timeline"],
        "queue": [
            {
                "t": s["at"] - started,
                "waiting": s.get("waiting", 0.0),
                "serving": s.get("serving", 0.0),
            }
            for s in metrics
        ],
        "claims_s": claims,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = FlashSpec()
    parser.add_argument("--room", default=defaults.room)
    parser.add_argument("--people", type=int, default=defaults.people)
    parser.add_argument("--arrival", choices=("burst", "ramp"), default="burst")
    parser.add_argument("--ramp-s", type=float, default=defaults.ramp_s)
    parser.add_argument(
        "--rate-per-minute",
        type=float,
        required=True,
        help="the room's rate as configured in the server (already compressed)",
    )
    parser.add_argument("--compression", type=float, default=defaults.compression)
    parser.add_argument("--pollers", type=int, default=defaults.pollers)
    parser.add_argument("--give-up", type=float, default=defaults.give_up)
    parser.add_argument("--depth", type=int, default=defaults.depth)
    parser.add_argument("--max-duration", type=float, default=defaults.max_duration_s)
    parser.add_argument("--linger", type=float, default=defaults.linger_s)
    parser.add_argument("--server-pid", type=int)


def run_from_args(args: argparse.Namespace, cpus: tuple[int, ...]) -> Json:
    spec = FlashSpec(
        host=args.host,
        port=args.port,
        room=args.room,
        people=args.people,
        arrival=args.arrival,
        ramp_s=args.ramp_s,
        rate_per_minute=args.rate_per_minute,
        compression=args.compression,
        pollers=args.pollers,
        give_up=args.give_up,
        connections=args.connections,
        depth=args.depth,
        processes=args.processes,
        max_duration_s=args.max_duration,
        linger_s=args.linger,
        cpus=cpus,
    )
    return run_flash_sale(spec, args.server_pid)
