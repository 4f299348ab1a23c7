"""One frozen configuration object, built from TOML and ``WR_*`` variables.

Precedence, lowest first: the embedded default (``DEFAULT_TOML``), the file
(``--config`` or ``WR_CONFIG``), the ``WR_*`` variables, the command-line
flags. A key left out takes its default. Every problem is reported as one
:class:`ConfigError` whose message starts with the dotted key at fault, so
an operator reads ``rooms.sale.rate_per_minute: must be >= 0, got -5`` and
knows what to fix.

This module imports nothing else of wr: every other layer depends on it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TOML",
    "AdminConfig",
    "Config",
    "ConfigError",
    "HttpConfig",
    "MetricsConfig",
    "RedisConfig",
    "RoomConfig",
    "ServerConfig",
    "TokensConfig",
    "load_config",
    "room_from_table",
]

# The configuration a newcomer gets with no file at all: one room admitting
# 5,000 people a minute to a small page that wr serves itself, so the whole
# flow can be watched in a browser on http://127.0.0.1:8080/.
DEFAULT_TOML = """\
[server]
host = "127.0.0.1"
port = 8080
state_dir = ".wr-state"
backend = "memory"

[tokens]
algorithm = "HS256"
queue_ttl_s = 86400
access_ttl_s = 3600

[rooms.default]
rate_per_minute = 5000
target_url = "/inside"
"""

# 2**26 positions cost 384 MiB of shared memory per room in use; a line
# longer than that is better analysed from a sample.
MAX_DROPOFF_POSITIONS = 1 << 26

# Past 32 bits a browser would work for minutes (see wr.pow).
MAX_POW_DIFFICULTY = 32

ROOM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# A further target for return= URLs: an http(s) origin, optionally with a
# trailing slash: letters, digits, dots and dashes for the host (IDNs in
# their xn-- form), an optional port.
TARGET_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?")
# A serialized origin as browsers send it (RFC 6454 section 6.2), in lower
# case: what a CORS Origin header holds.
CORS_ORIGIN = re.compile(
    r"https?://[a-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?"
)


class ConfigError(Exception):
    """A configuration problem, worded as ``key: what is wrong``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # One worker per core: each is a single-threaded event loop.
    workers: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    state_dir: str = ".wr-state"
    backend: str = "memory"
    # Where the waiting page lives; empty: static/ beside the wr package.
    static_dir: str = ""
    # On TERM/INT, in-flight requests get this long to finish.
    shutdown_grace_s: float = 10.0
    # A worker whose heartbeat is older than this is stuck: it is killed.
    heartbeat_timeout_s: float = 10.0
    log_level: str = "info"
    # One line per request on the wr.access logger, in the Common Log Format
    # (paths without their query, which may carry a token).
    access_log: bool = False

    def check(self, key: str) -> None:
        _require(
            self.log_level in ("debug", "info", "warning", "error"),
            f"{key}.log_level",
            "must be one of debug, info, warning, error",
        )
        _require(self.shutdown_grace_s >= 0, f"{key}.shutdown_grace_s", "must be >= 0")
        _require(0 <= self.port <= 65535, f"{key}.port", "must be 0..65535")
        _require(self.workers >= 1, f"{key}.workers", "must be >= 1")
        _require(bool(self.host), f"{key}.host", "must not be empty")
        _require(bool(self.state_dir), f"{key}.state_dir", "must not be empty")
        _require(
            self.heartbeat_timeout_s >= 2, f"{key}.heartbeat_timeout_s", "must be >= 2"
        )
        if self.backend != "memory":
            _check_redis_url(f"{key}.backend", self.backend)

    @property
    def redis_url(self) -> str | None:
        """The shared store's URL, or None for the memory backend."""
        return None if self.backend == "memory" else self.backend


def _check_redis_url(key: str, url: str) -> None:
    """``redis://[user:password@]host[:port][/db]``, as redis-py reads it."""
    parts = urllib.parse.urlsplit(url)
    _require(
        parts.scheme == "redis",
        key,
        f"must be 'memory' or 'redis://host:port/db', got {url!r}",
    )
    try:
        port = parts.port
    except ValueError:
        port = -1
    _require(port is None or 1 <= port <= 65535, key, "port must be 1..65535")
    _require(bool(parts.hostname), key, "needs a host: redis://host:port/db")
    db = parts.path.removeprefix("/")
    _require(
        db == "" or (db.isdigit() and db.isascii()),
        key,
        f"the database must be a number, got {db!r}",
    )
    _require(not parts.query and not parts.fragment, key, "takes no query or fragment")


@dataclasses.dataclass(frozen=True, slots=True)
class RedisConfig:
    """The redis backend's tuning (``server.backend = "redis://..."``)."""

    # Every key wr writes starts with this, so one Redis can hold several
    # independent clusters (one prefix each).
    key_prefix: str = "wr:"
    # Each call to Redis gives up after this long: the supervisor's loop
    # (heartbeats, restarts) must not stall behind a store that hangs.
    timeout_s: float = 0.25
    # The ticker's lease. Another host takes over at most this long after
    # the leader stops renewing it; shorter means faster takeover but more
    # risk that a slow leader loses the lease under load.
    lease_ms: int = 3000
    # Positions fetched per round trip: enough for this many seconds of the
    # host's arrivals, within [block_min, block_max]. block_max bounds how
    # far a person can be overtaken (see wr.cluster.fairness_bound).
    block_ahead_s: float = 0.5
    block_min: int = 1
    block_max: int = 1000
    # Positions kept in reserve for an outage of Redis: while it is out of
    # reach, joins take these instead of answering 503. 0: no fallback.
    fallback_positions: int = 0
    # Reconnection attempts back off from the first value, doubling, to the
    # second.
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 5.0
    # At a pre-queue's opening every host gives back the positions it holds
    # below the line's end; the leader draws this long after the opening,
    # so that those come out of the draw instead of costing an admission.
    draw_grace_s: float = 1.0
    # Claims and leaves of capacity rooms pass between hosts in a stream of
    # about this many entries (one per host and step with news): a host
    # out of touch for longer misses some, and the places they concern
    # are freed at the end of their session instead.
    events_kept: int = 100_000

    def check(self, key: str) -> None:
        _require(bool(self.key_prefix), f"{key}.key_prefix", "must not be empty")
        _require(0 < self.timeout_s <= 5, f"{key}.timeout_s", "must be in (0, 5]")
        _require(self.lease_ms >= 200, f"{key}.lease_ms", "must be >= 200")
        _require(
            self.timeout_s * 1000 * 2 < self.lease_ms,
            f"{key}.lease_ms",
            "must be more than twice redis.timeout_s",
        )
        _require(self.block_ahead_s > 0, f"{key}.block_ahead_s", "must be > 0")
        _require(self.block_min >= 1, f"{key}.block_min", "must be >= 1")
        _require(
            self.block_max >= self.block_min,
            f"{key}.block_max",
            "must be >= redis.block_min",
        )
        _require(
            self.fallback_positions >= 0, f"{key}.fallback_positions", "must be >= 0"
        )
        _require(self.reconnect_min_s > 0, f"{key}.reconnect_min_s", "must be > 0")
        _require(
            self.reconnect_max_s >= self.reconnect_min_s,
            f"{key}.reconnect_max_s",
            "must be >= redis.reconnect_min_s",
        )
        _require(
            0 < self.draw_grace_s <= 60, f"{key}.draw_grace_s", "must be in (0, 60]"
        )
        _require(self.events_kept >= 100, f"{key}.events_kept", "must be >= 100")


@dataclasses.dataclass(frozen=True, slots=True)
class HttpConfig:
    """Limits of the HTTP layer; each bounds what one client can cost us."""

    # A waiting room's URLs are short; a long target is an attack or a bug.
    max_target_bytes: int = 8 * 1024
    # Browsers send about 15 headers and a few KiB; 64 / 16 KiB leave room
    # for large cookie jars without letting one request hold much memory.
    max_headers: int = 64
    max_header_bytes: int = 16 * 1024
    # Nothing we accept has a large body (a join is empty or a tiny JSON).
    max_body_bytes: int = 16 * 1024
    # Time from a request's first byte to its end; beyond it, slowloris.
    header_timeout_s: float = 10.0
    # How long an idle keep-alive connection is kept before we close it.
    keepalive_timeout_s: float = 75.0
    # Open connections per process; beyond it, a fast 503.
    max_connections: int = 10_000
    # Pause reading from a client whose unread responses exceed this.
    write_buffer_bytes: int = 256 * 1024
    # A client that takes none of its responses for this long (paused, or
    # closing with a full buffer) is dropped: it holds a connection slot.
    write_timeout_s: float = 30.0
    # Cookies carry the Secure attribute (set when served over HTTPS).
    secure_cookies: bool = False
    # Origins (scheme://host[:port]) whose pages may call the API, such as
    # the CDN that hosts the waiting page; no others get CORS headers.
    cors_origins: tuple[str, ...] = ()
    # How long a browser may reuse a CORS preflight answer: saves one OPTIONS
    # per poll; Chromium caps it at 7,200 s anyway.
    cors_max_age_s: int = 600

    def check(self, key: str) -> None:
        for name in (
            "max_target_bytes",
            "max_headers",
            "max_header_bytes",
            "max_body_bytes",
            "max_connections",
            "write_buffer_bytes",
            "cors_max_age_s",
        ):
            _require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        for name in ("header_timeout_s", "keepalive_timeout_s", "write_timeout_s"):
            _require(getattr(self, name) > 0, f"{key}.{name}", "must be > 0")
        for index, origin in enumerate(self.cors_origins):
            _require(
                CORS_ORIGIN.fullmatch(origin) is not None,
                f"{key}.cors_origins[{index}]",
                f"must be an origin like 'https://cdn.example.com' (scheme, host,"
                f" optional port; no path), got {origin!r}",
            )


@dataclasses.dataclass(frozen=True, slots=True)
class TokensConfig:
    algorithm: str = "HS256"
    queue_ttl_s: int = 86_400
    access_ttl_s: int = 3_600
    # How long gateways may cache /.well-known/jwks.json. A new key is
    # announced there before it signs (gateways also refetch on an unknown
    # kid), so this only bounds how long a removed key lingers in caches.
    jwks_max_age_s: int = 300

    def check(self, key: str) -> None:
        _require(
            self.algorithm in ("HS256", "EdDSA"),
            f"{key}.algorithm",
            f"must be 'HS256' or 'EdDSA', got {self.algorithm!r}",
        )
        _require(self.queue_ttl_s >= 60, f"{key}.queue_ttl_s", "must be >= 60")
        _require(self.access_ttl_s >= 60, f"{key}.access_ttl_s", "must be >= 60")
        _require(
            0 <= self.jwks_max_age_s <= 86_400,
            f"{key}.jwks_max_age_s",
            "must be 0..86400",
        )


@dataclasses.dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin API's own listener; never on the public port."""

    host: str = "127.0.0.1"
    port: int = 8081
    # The bearer token, one line; None: <state_dir>/admin.token, created on
    # first start.
    token_file: str | None = None
    # False: no admin listener at all.
    enabled: bool = True

    def check(self, key: str) -> None:
        _require(0 <= self.port <= 65535, f"{key}.port", "must be 0..65535")


@dataclasses.dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus metrics at ``/metrics``."""

    # False: no /metrics, and nothing counted per request; the bench runs
    # both ways to show what metrics cost.
    enabled: bool = True
    # Where /metrics answers: "public" (the public port, no token) or
    # "admin" (the admin listener, with the admin bearer token).
    listener: str = "public"
    # Drop-off figures remember the check-ins of this many of the latest
    # positions per room, at six bytes each (6 MiB per million, in shared
    # memory, touched as positions are handed out). A person further back
    # than this when their turn comes is counted as untracked.
    dropoff_positions: int = 1 << 20

    def check(self, key: str) -> None:
        _require(
            self.listener in ("public", "admin"),
            f"{key}.listener",
            f"must be 'public' or 'admin', got {self.listener!r}",
        )
        _require(
            1024 <= self.dropoff_positions <= MAX_DROPOFF_POSITIONS,
            f"{key}.dropoff_positions",
            f"must be 1024..{MAX_DROPOFF_POSITIONS}",
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RoomConfig:
    name: str = "default"
    rate_per_minute: float = 5000.0
    target_url: str = "/inside"
    # None: the access token lives tokens.access_ttl_s.
    session_minutes: float | None = None
    max_active: int | None = None
    max_overadmit: float = 1.0
    opens_at: str | None = None
    max_queue: int | None = None
    # Proof-of-work on join (wr.pow): leading zero bits asked of a solution,
    # 0 = off. When joins pass pow_spike_joins_per_s, one bit more per
    # doubling of the rate, up to pow_max_difficulty (0: no rise).
    pow_difficulty: int = 0
    pow_max_difficulty: int = 0
    pow_spike_joins_per_s: float = 1000.0
    paused: bool = False
    closed: bool = False
    passthrough: bool = False
    # Origins (``https://m.shop.example``) besides target_url's that the
    # waiting page may send an admitted person back to (``return=``).
    allowed_targets: tuple[str, ...] = ()

    def check(self, key: str) -> None:
        _require(
            self.rate_per_minute >= 0 and math.isfinite(self.rate_per_minute),
            f"{key}.rate_per_minute",
            f"must be a finite number >= 0, got {self.rate_per_minute}",
        )
        _require(
            self.target_url.startswith(("http://", "https://", "/"))
            and not self.target_url.startswith("//"),
            f"{key}.target_url",
            "must be an http(s) URL or a path starting with '/'",
        )
        for index, origin in enumerate(self.allowed_targets):
            _require(
                TARGET_ORIGIN.fullmatch(origin) is not None,
                f"{key}.allowed_targets[{index}]",
                f"must be an origin like https://host[:port], got {origin[:100]!r}",
            )
        # It becomes a Location header: CR/LF would split the response, and
        # browsers read "/\\host" as "//host", another site.
        _require(
            all("!" <= c <= "~" for c in self.target_url)
            and "\\" not in self.target_url,
            f"{key}.target_url",
            "must be printable ASCII without spaces or backslashes",
        )
        if self.session_minutes is not None:
            _require(
                self.session_minutes > 0,
                f"{key}.session_minutes",
                "must be > 0",
            )
        if self.max_active is not None:
            _require(self.max_active >= 1, f"{key}.max_active", "must be >= 1")
        _require(self.max_overadmit >= 1, f"{key}.max_overadmit", "must be >= 1")
        if self.max_queue is not None:
            _require(self.max_queue >= 1, f"{key}.max_queue", "must be >= 1")
        for name in ("pow_difficulty", "pow_max_difficulty"):
            _require(
                0 <= getattr(self, name) <= MAX_POW_DIFFICULTY,
                f"{key}.{name}",
                f"must be 0..{MAX_POW_DIFFICULTY}",
            )
        _require(
            self.pow_spike_joins_per_s > 0
            and math.isfinite(self.pow_spike_joins_per_s),
            f"{key}.pow_spike_joins_per_s",
            "must be a finite number > 0",
        )
        if self.opens_at is not None:
            try:
                opens = datetime.fromisoformat(self.opens_at)
            except ValueError:
                opens = None
            _require(
                opens is not None and opens.tzinfo is not None,
                f"{key}.opens_at",
                "must be an ISO-8601 date and time with a UTC offset",
            )

    @property
    def opens_at_s(self) -> float | None:
        """The opening as a Unix time, or None for a room open from the start."""
        if self.opens_at is None:
            return None
        return datetime.fromisoformat(self.opens_at).timestamp()


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    http: HttpConfig
    tokens: TokensConfig
    admin: AdminConfig
    rooms: Mapping[str, RoomConfig]
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    redis: RedisConfig = dataclasses.field(default_factory=RedisConfig)

    @property
    def state_dir(self) -> Path:
        return Path(self.server.state_dir)


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "http": HttpConfig,
    "tokens": TokensConfig,
    "admin": AdminConfig,
    "metrics": MetricsConfig,
    "redis": RedisConfig,
}

# Variables that sit between the file and the flags (DESIGN.md).
ENV_KEYS = {
    "WR_HOST": "host",
    "WR_PORT": "port",
    "WR_WORKERS": "workers",
    "WR_STATE_DIR": "state_dir",
}


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration.

    ``path`` is the file (``None``: ``WR_CONFIG`` if set, else none);
    ``env`` defaults to ``os.environ``; ``overrides`` are ``[server]`` keys
    from command-line flags (``None`` values are ignored).
    """
    env = os.environ if env is None else env
    if path is None and env.get("WR_CONFIG"):
        path = env["WR_CONFIG"]

    data = tomllib.loads(DEFAULT_TOML)
    if path is not None:
        user = _read_toml(Path(path))
        if "rooms" in user:
            # A file that names rooms names all of them.
            data.pop("rooms")
        _merge(data, user)

    server = data.setdefault("server", {})
    if not isinstance(server, dict):
        raise ConfigError("server", "must be a table")
    for var, key in ENV_KEYS.items():
        if var in env:
            server[key] = _from_text(f"{var} (server.{key})", env[var], key)
    for key, value in (overrides or {}).items():
        if value is not None:
            server[key] = value

    return _build(data)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{path}: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path}: invalid TOML: {exc}") from None


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _from_text(key: str, text: str, field: str) -> Any:
    if field in ("port", "workers"):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(key, f"must be an integer, got {text!r}") from None
    return text


def _build(data: dict[str, Any]) -> Config:
    for key in data:
        if key not in _SECTIONS and key != "rooms":
            raise ConfigError(key, "unknown section")
    sections = {
        name: _section(cls, data.get(name, {}), name) for name, cls in _SECTIONS.items()
    }

    rooms_data = data.get("rooms", {})
    if not isinstance(rooms_data, dict):
        raise ConfigError("rooms", "must be a table of rooms")
    if not rooms_data:
        raise ConfigError("rooms", "at least one room is required")
    rooms: dict[str, RoomConfig] = {}
    for name, table in rooms_data.items():
        key = f"rooms.{name}"
        if not ROOM_NAME.fullmatch(name):
            raise ConfigError(
                key, "room names are 1-64 of a-z, 0-9, '_' and '-', starting alnum"
            )
        if not isinstance(table, dict):
            raise ConfigError(key, "must be a table")
        if "name" in table:
            raise ConfigError(f"{key}.name", "unknown key")
        rooms[name] = _section(RoomConfig, {**table, "name": name}, key)

    return Config(rooms=types.MappingProxyType(rooms), **sections)


def room_from_table(name: str, table: Mapping[str, Any]) -> RoomConfig:
    """A room from a JSON/TOML table; errors name the key alone (admin API)."""
    if "name" in table:
        raise ConfigError("name", "unknown key")
    try:
        room: RoomConfig = _section(RoomConfig, {**table, "name": name}, "@")
    except ConfigError as exc:
        raise ConfigError(exc.key.removeprefix("@."), exc.problem) from None
    return room


def _section(cls: type[Any], table: Any, key: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(key, "must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for name, value in table.items():
        if name not in fields:
            raise ConfigError(f"{key}.{name}", "unknown key")
        values[name] = _coerce(f"{key}.{name}", value, hints[name])
    obj = cls(**values)
    obj.check(key)
    return obj


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type; ints are accepted as floats."""
    if typing.get_origin(hint) is tuple:
        # TOML arrays become tuples, so that the frozen config stays hashable.
        (item,) = (arg for arg in typing.get_args(hint) if arg is not Ellipsis)
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"must be a list, got {value!r}")
        return tuple(
            _coerce(f"{key}[{index}]", element, item)
            for index, element in enumerate(value)
        )
    allowed = typing.get_args(hint) if typing.get_origin(hint) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if (
            kind is float
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    names = " or ".join(
        {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[k]
        for k in allowed
        if k is not type(None)
    )
    raise ConfigError(key, f"must be {names}, got {value!r}")
