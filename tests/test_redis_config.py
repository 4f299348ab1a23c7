"""The redis backend's configuration: the URL and the [redis] section."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.serverproc import WrServer
from tests.test_config import assert_one_line, error_of, load_text
from wr.admin import AdminApp, OverridesStore
from wr.config import RedisConfig
from wr.http import Request
from wr.room import CLAIM_WINDOW, Room
from wr.shm import SharedBlock
from wr.state import prepare_state_dir
from wr.tokens import KeyRing, Tokens


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://cache.internal/3",
        "redis://:secret@10.0.0.5:6380",
        "redis://user:secret@[::1]:6379/15",
    ],
)
def test_a_redis_url_is_accepted(tmp_path: Path, url: str) -> None:
    config = load_text(tmp_path, f'[server]\nbackend = "{url}"\n')
    assert config.server.redis_url == url


def test_memory_has_no_redis_url(tmp_path: Path) -> None:
    assert load_text(tmp_path, "").server.redis_url is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://db:3306/0", "must be 'memory' or 'redis://host:port/db'"),
        ("memcached", "must be 'memory' or 'redis://host:port/db'"),
        ("redis://:6379/0", "needs a host"),
        ("redis://host:99999/0", "port must be 1..65535"),
        ("redis://host:port/0", "port must be 1..65535"),
        ("redis://host:6379/zero", "the database must be a number"),
        ("redis://host:6379/0?timeout=1", "takes no query or fragment"),
    ],
)
def test_a_bad_backend_is_one_line_naming_the_key(
    tmp_path: Path, url: str, problem: str
) -> None:
    error = error_of(tmp_path, f'[server]\nbackend = "{url}"\n')
    assert_one_line(error, "server.backend")
    assert problem in error.problem


def test_the_redis_section_has_defaults(tmp_path: Path) -> None:
    assert load_text(tmp_path, "").redis == RedisConfig()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("timeout_s = 0", "redis.timeout_s"),
        ("lease_ms = 100", "redis.lease_ms"),
        ("timeout_s = 1.0\nlease_ms = 1500", "redis.lease_ms"),
        ("block_min = 0", "redis.block_min"),
        ("block_min = 10\nblock_max = 5", "redis.block_max"),
        ("block_ahead_s = 0", "redis.block_ahead_s"),
        ("fallback_positions = -1", "redis.fallback_positions"),
        ("reconnect_min_s = 0", "redis.reconnect_min_s"),
        ("reconnect_max_s = 0.01", "redis.reconnect_max_s"),
        ('key_prefix = ""', "redis.key_prefix"),
        ("nonsense = 1", "redis.nonsense"),
    ],
)
def test_a_bad_redis_setting_is_one_line_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    assert_one_line(error_of(tmp_path, f"[redis]\n{text}\n"), key)


@pytest.mark.parametrize(
    ("setting", "key", "value"),
    [
        ("max_active = 100", "max_active", 100),
        ("session_minutes = 5", "session_minutes", 5),
        (
            'opens_at = "2030-01-01T10:00:00+00:00"',
            "opens_at",
            "2030-01-01T10:00:00+00:00",
        ),
    ],
)
def test_capacity_and_prequeues_are_accepted_with_redis(
    tmp_path: Path, setting: str, key: str, value: object
) -> None:
    text = f'[server]\nbackend = "redis://127.0.0.1:6379/0"\n[rooms.sale]\n{setting}\n'
    assert getattr(load_text(tmp_path, text).rooms["sale"], key) == value


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("draw_grace_s = 0", "redis.draw_grace_s"),
        ("draw_grace_s = 61", "redis.draw_grace_s"),
        ("events_kept = 99", "redis.events_kept"),
    ],
)
def test_bad_cluster_policy_settings_name_their_key(
    tmp_path: Path, text: str, key: str
) -> None:
    assert_one_line(error_of(tmp_path, f"[redis]\n{text}\n"), key)


def test_the_same_features_are_fine_with_memory(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[rooms.sale]\nmax_active = 100\n")
    assert config.rooms["sale"].max_active == 100


def test_wr_serve_with_a_bad_backend_exits_2_with_one_line(tmp_path: Path) -> None:
    wr = WrServer(tmp_path, '[server]\nbackend = "redis://:1/0"\n')
    code, output = wr.fail_to_start()
    assert code == 2
    assert "wr: config: server.backend: needs a host" in output


def test_the_admin_api_accepts_them_with_redis(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    prepare_state_dir(state_dir)
    text = (
        f'[server]\nbackend = "redis://127.0.0.1:6379/0"\n'
        f'state_dir = "{state_dir}"\n[rooms.shop]\n'
    )
    config = load_text(tmp_path, text)
    tokens = Tokens(KeyRing.generate(), config.tokens)
    rooms = {"shop": Room(config.rooms["shop"])}
    admin = AdminApp(
        config, lambda: rooms, tokens, SharedBlock(CLAIM_WINDOW // 8), "t0ken"
    )
    request = Request(
        "PATCH",
        "/admin/v1/rooms/shop",
        "",
        {b"authorization": b"Bearer t0ken"},
        orjson.dumps({"max_active": 10}),
    )
    response = admin.handle(request)
    assert response.status == 200
    assert orjson.loads(response.body)["max_active"] == 10
    stored = OverridesStore(state_dir).load()["shop"]
    assert stored is not None
    assert stored["max_active"] == 10
