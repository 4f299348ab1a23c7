"""wrk as a second load generator, when it is installed.

wrk is written in C, so it shows what the servers do when the client costs
next to nothing; our own generator shows the same ratios from Python. Its
text summary is parsed for requests/s, the p99 of its latency distribution
(``--latency``) and its error counts.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["parse_wrk", "run_wrk", "wrk_available"]

# Longer than any run wrk is given here, so a hung wrk cannot stall a suite.
_WRK_GRACE_S = 30.0
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    *,
    method: str = "GET",
    token: str | None = None,
    duration_s: float = 3.0,
    connections: int = 64,
    threads: int = 1,
    cpus: tuple[int, ...] = (),
    workdir: Path,
) -> dict[str, float]:
    """One wrk run; requests/s, p99 in ms and errors."""
    script = workdir / f"wrk-{method.lower()}.lua"
    script.write_text(f'wrk.method = "{method}"\n')
    argv = []
    if cpus:
        argv += ["taskset", "-c", ",".join(map(str, cpus))]
    argv += [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--latency",
        "-s",
        str(script),
    ]
    if token is not None:
        argv += ["-H", f"Authorization: Bearer {token}"]
    argv.append(url)
    done = subprocess.run(  # noqa: S603 - our own argv
        argv,
        capture_output=True,
        text=True,
        check=True,
        timeout=duration_s + _WRK_GRACE_S,
    )
    return parse_wrk(done.stdout)


def parse_wrk(text: str) -> dict[str, float]:
    """requests/s, p50/p99 (ms) and errors from wrk's ``--latency`` output."""
    result: dict[str, float] = {}
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rate is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{text}")
    result["rps"] = float(rate[1])
    for label, key in (("50%", "p50_ms"), ("99%", "p99_ms")):
        found = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        if found:
            result[key] = float(found[1]) * _UNITS[found[2]]
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non_2xx:
        errors += int(non_2xx[1])
    result["errors"] = errors
    return result
