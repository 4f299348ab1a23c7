"""RSS and CPU of a server's process tree, read from /proc while a run goes.

A :class:`TreeSampler` walks the tree under one pid (the supervisor and
its workers) every ``interval_s`` in a thread of the orchestrator, so the
load generator's processes are never in it. CPU is user + system time of
the tree, as a share of one core over each interval.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TreeSample", "TreeSampler", "tree_pids", "tree_usage"]

# Sampling ten times a second resolves a 3-second scenario, and costs the
# orchestrator (not the server) well under 1 % of a core.
SAMPLE_INTERVAL_S = 0.1
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_usage(root: int) -> tuple[int, float]:
    """Resident bytes and CPU seconds (user + system) of the tree now."""
    rss = 0
    cpu_ticks = 0
    for pid in tree_pids(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state is field 3, utime 14, stime 15, rss 24.
        cpu_ticks += int(fields[11]) + int(fields[12])
        rss += int(fields[21]) * _PAGE
    return rss, cpu_ticks / _TICKS


@dataclass(frozen=True)
class TreeSample:
    at: float
    rss_bytes: int
    cpu_s: float


@dataclass
class TreeSampler:
    """Samples a process tree in a background thread until stopped."""

    root: int
    interval_s: float = SAMPLE_INTERVAL_S
    samples: list[TreeSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> TreeSampler:
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def sample(self) -> TreeSample:
        rss, cpu = tree_usage(self.root)
        sample = TreeSample(time.monotonic(), rss, cpu)
        self.samples.append(sample)
        return sample

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def summary(
        self, start: float = 0.0, end: float = float("inf")
    ) -> dict[str, float]:
        """RSS (first, last, peak) and mean CPU share between two instants."""
        window = [s for s in self.samples if start <= s.at <= end] or self.samples
        first, last = window[0], window[-1]
        elapsed = max(last.at - first.at, 1e-9)
        return {
            "rss_first_mb": first.rss_bytes / 2**20,
            "rss_last_mb": last.rss_bytes / 2**20,
            "rss_peak_mb": max(s.rss_bytes for s in window) / 2**20,
            "cpu_share": (last.cpu_s - first.cpu_s) / elapsed,
        }
