"""``wr admin ...``: the admin API from a terminal.

Every command is one call to the admin API (``[admin]`` host and port of the
config, bearer token from its token file), so the CLI can do nothing the API
cannot. Output is a readable table or ``key: value`` lines; ``--json``
prints the API's answer as it came.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from wr.admin import admin_token
from wr.config import Config

__all__ = ["add_admin_commands"]

# The admin API answers from memory; a slow answer means it is not there.
TIMEOUT_S = 10.0
EXIT_FAILED = 1

_TABLE = (
    ("room", "name"),
    ("state", "state"),
    ("rate/min", "rate_per_minute"),
    ("waiting", "waiting"),
    ("serving", "serving"),
    ("admitted", "admitted"),
    ("claimed", "claimed"),
)


def add_admin_commands(commands: Any, add_config_flags: Any, load: Any) -> None:
    """Register ``wr admin`` under the ``commands`` subparsers of ``wr``."""
    admin = commands.add_parser("admin", help="change rooms while wr runs")
    admin.set_defaults(run=lambda args: _usage(admin))
    actions = admin.add_subparsers(dest="admin_command", metavar="ACTION")

    def action(
        name: str, help_text: str, *, room: bool = True
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        add_config_flags(parser)
        parser.add_argument("--url", help="admin API base URL (default: from config)")
        parser.add_argument("--json", action="store_true", help="print raw JSON")
        if room:
            parser.add_argument("room", help="room name")
        parser.set_defaults(load=load)
        return parser

    action("rooms", "list rooms with their counters", room=False).set_defaults(
        run=_rooms
    )
    action("show", "show one room's settings and counters").set_defaults(run=_show)
    setter = action("set", "change settings: KEY=VALUE (VALUE as JSON or text)")
    setter.add_argument("settings", nargs="+", metavar="KEY=VALUE")
    setter.set_defaults(run=_set)
    for name, key, value, text in (
        ("pause", "paused", True, "stop admitting (joins still get a place)"),
        ("resume", "paused", False, "admit again after a pause"),
        ("close", "closed", True, "close the room: no more joins or admissions"),
        ("open", "closed", False, "reopen a closed room"),
    ):
        action(name, text).set_defaults(run=_patcher(key, value))
    action("stats", "waits, no-shows and who gave up, as tables").set_defaults(
        run=_stats
    )
    action(
        "reset", "start a fresh line: every token issued so far stops working"
    ).set_defaults(run=_reset)
    bypass = action("bypass", "mint an invite link that skips the line")
    bypass.add_argument("--ttl", type=int, default=3600, help="seconds (default 3600)")
    bypass.set_defaults(run=_bypass)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    config: Config = args.load(args)
    base = args.url or f"http://{config.admin.host}:{config.admin.port}"
    if not base.startswith(("http://", "https://")):
        raise _Failure(f"{base}: the admin URL must be http(s)")
    token = admin_token(config)
    if token is None:
        raise _Failure("no admin token: set admin.token_file or start wr once")
    # The scheme was checked above: http(s) only.
    request = urllib.request.Request(  # noqa: S310
        base.rstrip("/") + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "authorization": f"Bearer {token}",
            "content-type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:  # noqa: S310
            raw = answer.read()
    except urllib.error.HTTPError as exc:
        detail = _reason(exc.read())
        raise _Failure(f"{method} {path}: {exc.code} {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Failure(f"admin API not reachable at {base}: {reason}") from None
    return json.loads(raw) if raw else None


class _Failure(Exception):
    pass


def _reason(raw: bytes) -> str:
    try:
        data = json.loads(raw)
        return f"{data['error']}: {data['detail']}"
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")[:200]


def _guarded(run: Any) -> Any:
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return int(run(args))
        except _Failure as exc:
            print(f"wr: {exc}", file=sys.stderr)
            return EXIT_FAILED

    return wrapper


@_guarded
def _rooms(args: argparse.Namespace) -> int:
    data = _call(args, "GET", "/admin/v1/rooms")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rows = [[title for title, _ in _TABLE]]
    for room in data["rooms"]:
        values = {**room, **room.get("live", {})}
        rows.append([str(values.get(key, "-")) for _, key in _TABLE])
    _print_table(rows)
    return 0


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(
                cell.ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def _print_room(args: argparse.Namespace, room: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(room, indent=2))
        return
    live = room.pop("live", {})
    for key, value in {**room, **live}.items():
        print(f"{key}: {json.dumps(value)}")


@_guarded
def _show(args: argparse.Namespace) -> int:
    _print_room(args, _call(args, "GET", f"/admin/v1/rooms/{args.room}"))
    return 0


@_guarded
def _set(args: argparse.Namespace) -> int:
    change: dict[str, Any] = {}
    for setting in args.settings:
        key, sep, text = setting.partition("=")
        if not sep or not key:
            raise _Failure(f"{setting!r}: expected KEY=VALUE")
        try:
            change[key] = json.loads(text)
        except ValueError:
            change[key] = text
    _print_room(args, _call(args, "PATCH", f"/admin/v1/rooms/{args.room}", change))
    return 0


def _patcher(key: str, value: bool) -> Any:
    @_guarded
    def run(args: argparse.Namespace) -> int:
        room = _call(args, "PATCH", f"/admin/v1/rooms/{args.room}", {key: value})
        _print_room(args, room)
        return 0

    return run


@_guarded
def _bypass(args: argparse.Namespace) -> int:
    data = _call(
        args, "POST", f"/admin/v1/rooms/{args.room}/bypass-tokens", {"ttl_s": args.ttl}
    )
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"link: {data['path']}")
        print(f"expires: {data['expires']}")
    return 0


@_guarded
def _reset(args: argparse.Namespace) -> int:
    data = _call(args, "POST", f"/admin/v1/rooms/{args.room}/reset")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"room: {data['room']} reset")
        print(f"first_position: {data['first_position']}")
        print(f"tokens issued before: {data['reset_at']}")
    return 0


@_guarded
def _stats(args: argparse.Namespace) -> int:
    data = _call(args, "GET", f"/admin/v1/rooms/{args.room}/stats")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    wait = data["wait_at_admission"]
    drop = data["drop_off"]
    print(f"room: {data['room']} ({data['state']})")
    print(
        f"joins: {data['joins']}  waiting: {data['waiting']}  "
        f"admitted: {data['admitted']}  claimed: {data['claimed']}  "
        f"no-shows: {_percent(data['noshow_ratio'])}"
    )
    mean = wait["mean_s"]
    print(f"mean wait at admission: {'-' if mean is None else f'{mean:.0f} s'}")
    print(
        f"reached the front: {drop['settled']}  had given up: {drop['abandoned']} "
        f"({_percent(drop['abandoned_share'])})  untracked: {drop['untracked']}"
    )
    print()
    rows = [["still waiting after", "share"]]
    for point in drop["still_waiting"]:
        rows.append([f"{point['after_s'] // 60} min", _percent(point["share"])])
    _print_table(rows)
    print()
    rows = [["place in line", "reached front", "had given up", "share"]]
    for bucket in drop["by_place"]:
        last = bucket["last"]
        span = (
            f"{bucket['first']:,}+" if last is None else f"{bucket['first']:,}-{last:,}"
        )
        rows.append(
            [
                span,
                str(bucket["settled"]),
                str(bucket["abandoned"]),
                _percent(bucket["abandoned_share"]),
            ]
        )
    _print_table(rows)
    return 0


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f} %"
