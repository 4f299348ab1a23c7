"""``python -m bench``: the load generator, and the suites behind ``make bench``.

- ``python -m bench join|status|verify|mixed|fixed --port P``: closed-loop
  load against a server that is already running;
- ``python -m bench flash-sale --port P --people N``: a crowd arriving,
  waiting, polling when told and claiming their turn;
- ``python -m bench suite``: what ``make bench`` runs (starts the servers);
- ``python -m bench burst``: what ``make bench-burst`` runs.

The target must be a loopback address unless ``--allow-remote`` is given:
a load generator pointed at someone else's server by a typo is an attack.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from bench.flashsale import add_arguments as flash_arguments
from bench.flashsale import run_from_args
from bench.load import MODES, LoadSpec, run_load
from bench.suite import run_burst, run_suite

__all__ = ["check_target", "main"]

RESULTS_DIR = Path(__file__).parent / "results"


class TargetRefused(Exception):
    """The target is not on this host and --allow-remote was not given."""


def check_target(host: str, allow_remote: bool) -> None:
    """Refuse a host that is not loopback, unless allowed."""
    if allow_remote:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise TargetRefused(f"cannot resolve {host!r}: {exc}") from None
    for address in addresses:
        if not ipaddress.ip_address(str(address).split("%")[0]).is_loopback:
            raise TargetRefused(
                f"{host} ({address}) is not a loopback address; "
                "pass --allow-remote to load a server on another host"
            )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--allow-remote", action="store_true")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--cpus", default="", help="pin the load generator, e.g. '1' or '0,1'"
    )
    parser.add_argument("--json", type=Path, help="also write the result here")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for mode in MODES:
        load = commands.add_parser(mode, help=f"closed-loop {mode} load")
        _common(load)
        load.add_argument("--room", default="default")
        load.add_argument("--open-room", default="open")
        load.add_argument("--depth", type=int, default=1, help="pipelining depth")
        load.add_argument("--duration", type=float, default=5.0)
        load.add_argument("--warmup", type=float, default=1.0)
        load.add_argument("--max-requests", type=int, default=10_000_000)
        load.add_argument("--tokens-per-connection", type=int, default=16)

    flash = commands.add_parser("flash-sale", help="a crowd in line")
    _common(flash)
    flash_arguments(flash)

    suite = commands.add_parser("suite", help="make bench: every scenario")
    suite.add_argument("--quick", action="store_true", help="shorter scenarios")
    burst = commands.add_parser("burst", help="make bench-burst")
    burst.add_argument("--people", type=int, default=2_000_000)
    return parser


def _cpus(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split(",") if c.strip())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "suite":
        return run_suite(RESULTS_DIR, quick=args.quick)
    if args.command == "burst":
        return run_burst(RESULTS_DIR, args.people)

    try:
        check_target(args.host, args.allow_remote)
    except TargetRefused as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.command == "flash-sale":
        result = run_from_args(args, _cpus(args.cpus))
    else:
        spec = LoadSpec(
            mode=args.command,
            host=args.host,
            port=args.port,
            room=args.room,
            open_room=args.open_room,
            connections=args.connections,
            depth=args.depth,
            processes=args.processes,
            duration_s=args.duration,
            warmup_s=args.warmup,
            max_requests=args.max_requests,
            tokens_per_connection=args.tokens_per_connection,
            cpus=_cpus(args.cpus),
        )
        result = run_load(spec)
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2)
    if args.json is not None:
        args.json.write_bytes(text)
    sys.stdout.write(text.decode() + "\n")
    return 0
