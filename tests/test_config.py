"""Tests for wr.config: defaults, precedence, and one-line errors by key."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from wr.config import Config, ConfigError, RoomConfig, load_config

NO_ENV: Mapping[str, str] = {}


def write(tmp_path: Path, text: str, name: str = "wr.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(
    tmp_path: Path,
    text: str,
    env: Mapping[str, str] = NO_ENV,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    return load_config(write(tmp_path, text), env=env, overrides=overrides)


def error_of(
    tmp_path: Path,
    text: str,
    env: Mapping[str, str] = NO_ENV,
    overrides: Mapping[str, Any] | None = None,
) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, env, overrides)
    return info.value


def assert_one_line(error: ConfigError, key: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{key}: "), message
    assert error.key == key


# The embedded default


def test_default_needs_no_file() -> None:
    config = load_config(env=NO_ENV)
    assert list(config.rooms) == ["default"]
    room = config.rooms["default"]
    assert room.name == "default"
    assert room.rate_per_minute == 5000
    assert room.target_url == "/inside"
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.server.state_dir == ".wr-state"
    assert config.state_dir == Path(".wr-state")
    assert config.server.workers == (os.cpu_count() or 1)


def test_default_is_memory_backend_hs256_and_a_default_room() -> None:
    config = load_config(env=NO_ENV)
    assert config.server.backend == "memory"
    assert config.tokens.algorithm == "HS256"
    assert config.rooms["default"] == RoomConfig()


def test_config_is_frozen() -> None:
    config = load_config(env=NO_ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.rooms["other"] = RoomConfig(name="other")  # type: ignore[index]


# Precedence: default < file < WR_* env < overrides


def test_file_overrides_default_and_omitted_keys_keep_theirs(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[server]\nport = 9000\n")
    assert config.server.port == 9000
    assert config.server.host == "127.0.0.1"
    assert config.server.state_dir == ".wr-state"
    assert config.tokens.queue_ttl_s == 86_400


def test_room_key_left_out_keeps_its_default(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[rooms.sale]\ntarget_url = "/shop"\n')
    assert config.rooms["sale"].rate_per_minute == 5000
    assert config.rooms["sale"].target_url == "/shop"


def test_env_overrides_file(tmp_path: Path) -> None:
    text = '[server]\nhost = "10.0.0.1"\nport = 9000\nstate_dir = "/srv/wr"\n'
    env = {
        "WR_HOST": "127.0.0.2",
        "WR_PORT": "9100",
        "WR_WORKERS": "1",
        "WR_STATE_DIR": "/var/lib/wr",
    }
    config = load_text(tmp_path, text, env=env)
    assert config.server.host == "127.0.0.2"
    assert config.server.port == 9100
    assert config.server.workers == 1
    assert config.server.state_dir == "/var/lib/wr"


def test_overrides_win_over_env_and_file(tmp_path: Path) -> None:
    env = {"WR_PORT": "9100", "WR_HOST": "127.0.0.2"}
    config = load_text(
        tmp_path,
        "[server]\nport = 9000\n",
        env=env,
        overrides={"port": 9200, "host": "::1", "state_dir": "flag-dir"},
    )
    assert config.server.port == 9200
    assert config.server.host == "::1"
    assert config.server.state_dir == "flag-dir"


def test_none_overrides_are_ignored(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "[server]\nport = 9000\n",
        env={"WR_HOST": "127.0.0.2"},
        overrides={"port": None, "host": None, "state_dir": None},
    )
    assert config.server.port == 9000
    assert config.server.host == "127.0.0.2"
    assert config.server.state_dir == ".wr-state"


def test_overrides_apply_without_a_file() -> None:
    config = load_config(env=NO_ENV, overrides={"port": 0})
    assert config.server.port == 0


def test_wr_config_selects_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9300\n")
    config = load_config(env={"WR_CONFIG": str(path)})
    assert config.server.port == 9300


def test_path_argument_wins_over_wr_config(tmp_path: Path) -> None:
    chosen = write(tmp_path, "[server]\nport = 9301\n", "chosen.toml")
    other = write(tmp_path, "[server]\nport = 9302\n", "other.toml")
    config = load_config(chosen, env={"WR_CONFIG": str(other)})
    assert config.server.port == 9301


def test_empty_wr_config_means_no_file() -> None:
    config = load_config(env={"WR_CONFIG": ""})
    assert config.server.port == 8080


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WR_CONFIG", "WR_HOST", "WR_WORKERS", "WR_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WR_PORT", "9400")
    assert load_config().server.port == 9400


# Rooms


def test_file_naming_rooms_replaces_the_default_room(tmp_path: Path) -> None:
    text = (
        "[rooms.sale]\nrate_per_minute = 60\n"
        '[rooms.tickets]\ntarget_url = "https://shop.example/tickets"\n'
    )
    config = load_text(tmp_path, text)
    assert sorted(config.rooms) == ["sale", "tickets"]
    assert config.rooms["sale"].name == "sale"
    assert config.rooms["sale"].rate_per_minute == 60
    assert config.rooms["tickets"].target_url == "https://shop.example/tickets"


def test_file_naming_no_rooms_keeps_the_default_room(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[server]\nport = 9000\n")
    assert list(config.rooms) == ["default"]
    assert config.rooms["default"].rate_per_minute == 5000


def test_file_can_retune_the_default_room(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[rooms.default]\nrate_per_minute = 12\n")
    assert list(config.rooms) == ["default"]
    assert config.rooms["default"].rate_per_minute == 12
    assert config.rooms["default"].target_url == "/inside"


def test_empty_rooms_table_is_refused(tmp_path: Path) -> None:
    assert_one_line(error_of(tmp_path, "rooms = {}\n"), "rooms")


def test_rooms_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    assert_one_line(error_of(tmp_path, "rooms = 5\n"), "rooms")


@pytest.mark.parametrize("value", ["5", '"name"', "[1]"])
def test_room_that_is_not_a_table_is_refused(tmp_path: Path, value: str) -> None:
    error = error_of(tmp_path, f"[rooms]\nsale = {value}\n")
    assert_one_line(error, "rooms.sale")


@pytest.mark.parametrize("name", ["Sale", "-sale", "_x", "a.b", "a b", "x" * 65, ""])
def test_bad_room_name_is_refused(tmp_path: Path, name: str) -> None:
    error = error_of(tmp_path, f'[rooms."{name}"]\n')
    assert_one_line(error, f"rooms.{name}")


@pytest.mark.parametrize("name", ["a", "sale-2024", "x_y", "0", "x" * 64])
def test_good_room_name_is_accepted(tmp_path: Path, name: str) -> None:
    assert list(load_text(tmp_path, f'[rooms."{name}"]\n').rooms) == [name]


# Unknown sections and keys


def test_unknown_section(tmp_path: Path) -> None:
    assert_one_line(error_of(tmp_path, "[srever]\nport = 1\n"), "srever")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    assert_one_line(error_of(tmp_path, 'title = "x"\n'), "title")


@pytest.mark.parametrize("section", ["server", "http", "tokens", "admin"])
def test_unknown_key_in_each_section(tmp_path: Path, section: str) -> None:
    error = error_of(tmp_path, f"[{section}]\nbogus = 1\n")
    assert_one_line(error, f"{section}.bogus")


def test_unknown_key_in_a_room(tmp_path: Path) -> None:
    error = error_of(tmp_path, "[rooms.sale]\nrate_per_minit = 5\n")
    assert_one_line(error, "rooms.sale.rate_per_minit")


def test_name_is_not_a_room_key(tmp_path: Path) -> None:
    error = error_of(tmp_path, '[rooms.sale]\nname = "other"\n')
    assert_one_line(error, "rooms.sale.name")


def test_nested_table_in_a_room_is_an_unknown_key(tmp_path: Path) -> None:
    error = error_of(tmp_path, "[rooms.sale.extra]\nx = 1\n")
    assert_one_line(error, "rooms.sale.extra")


@pytest.mark.parametrize("section", ["server", "tokens"])
def test_section_that_is_not_a_table(tmp_path: Path, section: str) -> None:
    assert_one_line(error_of(tmp_path, f"{section} = 5\n"), section)


def test_server_not_a_table_with_env_set(tmp_path: Path) -> None:
    error = error_of(tmp_path, "server = 5\n", env={"WR_PORT": "9000"})
    assert_one_line(error, "server")


def test_server_not_a_table_with_an_override(tmp_path: Path) -> None:
    error = error_of(tmp_path, "server = 5\n", overrides={"port": 9000})
    assert_one_line(error, "server")


def test_unknown_override_key_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=NO_ENV, overrides={"prot": 1})
    assert_one_line(info.value, "server.prot")


# Types


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\nport = "8080"\n', "server.port"),
        ("[server]\nport = true\n", "server.port"),
        ("[server]\nport = 80.0\n", "server.port"),
        ("[server]\nworkers = false\n", "server.workers"),
        ("[server]\nhost = 1\n", "server.host"),
        ('[tokens]\nqueue_ttl_s = "1d"\n', "tokens.queue_ttl_s"),
        ("[http]\nsecure_cookies = 1\n", "http.secure_cookies"),
        ("[http]\nheader_timeout_s = true\n", "http.header_timeout_s"),
        ('[rooms.sale]\nrate_per_minute = "5"\n', "rooms.sale.rate_per_minute"),
        ("[rooms.sale]\nrate_per_minute = true\n", "rooms.sale.rate_per_minute"),
        ("[rooms.sale]\ntarget_url = 5\n", "rooms.sale.target_url"),
        ("[rooms.sale]\npaused = 0\n", "rooms.sale.paused"),
        ("[rooms.sale]\nmax_active = 1.5\n", "rooms.sale.max_active"),
        ("[rooms.sale]\nsession_minutes = true\n", "rooms.sale.session_minutes"),
        ("[rooms.sale]\nopens_at = 2030-01-01T10:00:00Z\n", "rooms.sale.opens_at"),
    ],
)
def test_wrong_type_is_refused(tmp_path: Path, text: str, key: str) -> None:
    error = error_of(tmp_path, text)
    assert_one_line(error, key)
    assert "must be" in error.problem


def test_string_for_int_names_the_expected_type(tmp_path: Path) -> None:
    error = error_of(tmp_path, '[server]\nport = "8080"\n')
    assert error.problem == "must be an integer, got '8080'"


def test_int_is_accepted_where_a_float_is_expected(tmp_path: Path) -> None:
    text = (
        "[server]\nshutdown_grace_s = 3\n"
        "[rooms.sale]\nrate_per_minute = 60\nsession_minutes = 15\n"
    )
    config = load_text(tmp_path, text)
    assert config.server.shutdown_grace_s == 3.0
    assert isinstance(config.server.shutdown_grace_s, float)
    assert isinstance(config.rooms["sale"].rate_per_minute, float)
    assert config.rooms["sale"].session_minutes == 15.0


def test_float_rate_is_accepted(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[rooms.sale]\nrate_per_minute = 0.5\n")
    assert config.rooms["sale"].rate_per_minute == 0.5


def test_override_is_type_checked() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=NO_ENV, overrides={"port": "8080"})
    assert_one_line(info.value, "server.port")


# Ranges


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nport = -1\n", "server.port"),
        ("[server]\nport = 65536\n", "server.port"),
        ("[server]\nworkers = 0\n", "server.workers"),
        ('[server]\nhost = ""\n', "server.host"),
        ('[server]\nstate_dir = ""\n', "server.state_dir"),
        ('[server]\nlog_level = "verbose"\n', "server.log_level"),
        ('[server]\nlog_level = "INFO"\n', "server.log_level"),
        ("[server]\nshutdown_grace_s = -1\n", "server.shutdown_grace_s"),
        ("[http]\nmax_headers = 0\n", "http.max_headers"),
        ("[http]\nkeepalive_timeout_s = 0\n", "http.keepalive_timeout_s"),
        ("[tokens]\nqueue_ttl_s = 59\n", "tokens.queue_ttl_s"),
        ("[tokens]\naccess_ttl_s = 0\n", "tokens.access_ttl_s"),
        ('[tokens]\nalgorithm = "none"\n', "tokens.algorithm"),
        ("[admin]\nport = 70000\n", "admin.port"),
        ("[rooms.sale]\nrate_per_minute = -5\n", "rooms.sale.rate_per_minute"),
        ("[rooms.sale]\nrate_per_minute = inf\n", "rooms.sale.rate_per_minute"),
        ("[rooms.sale]\nrate_per_minute = nan\n", "rooms.sale.rate_per_minute"),
        ("[rooms.sale]\nsession_minutes = 0\n", "rooms.sale.session_minutes"),
        ("[rooms.sale]\npow_difficulty = 33\n", "rooms.sale.pow_difficulty"),
        ("[rooms.sale]\npow_max_difficulty = -1\n", "rooms.sale.pow_max_difficulty"),
        (
            "[rooms.sale]\npow_spike_joins_per_s = 0\n",
            "rooms.sale.pow_spike_joins_per_s",
        ),
        ("[rooms.sale]\nmax_overadmit = 0.5\n", "rooms.sale.max_overadmit"),
        ("[rooms.sale]\nmax_active = 0\n", "rooms.sale.max_active"),
        ("[rooms.sale]\nmax_queue = 0\n", "rooms.sale.max_queue"),
        ('[rooms.sale]\nopens_at = "next tuesday"\n', "rooms.sale.opens_at"),
    ],
)
def test_out_of_range_value_is_refused(tmp_path: Path, text: str, key: str) -> None:
    assert_one_line(error_of(tmp_path, text), key)


def test_negative_rate_message_names_the_value(tmp_path: Path) -> None:
    error = error_of(tmp_path, "[rooms.sale]\nrate_per_minute = -5\n")
    assert str(error).startswith("rooms.sale.rate_per_minute: ")
    assert "-5" in str(error)


@pytest.mark.parametrize(
    "target",
    [
        "inside",
        "//evil.example/",
        "//",
        "ftp://files.example/",
        "javascript:alert(1)",
        "",
        "HTTP:/x",
    ],
)
def test_bad_target_url_is_refused(tmp_path: Path, target: str) -> None:
    error = error_of(tmp_path, f'[rooms.sale]\ntarget_url = "{target}"\n')
    assert_one_line(error, "rooms.sale.target_url")


@pytest.mark.parametrize(
    "target", ["/", "/inside?x=1", "http://shop.example", "https://shop.example/a"]
)
def test_good_target_url_is_accepted(tmp_path: Path, target: str) -> None:
    config = load_text(tmp_path, f'[rooms.sale]\ntarget_url = "{target}"\n')
    assert config.rooms["sale"].target_url == target


def test_boundary_values_are_accepted(tmp_path: Path) -> None:
    text = (
        "[server]\nport = 65535\n"
        '[tokens]\nqueue_ttl_s = 60\naccess_ttl_s = 60\n[admin]\nhost = "127.0.0.1"\n'
        "[rooms.sale]\nrate_per_minute = 0\n"
    )
    config = load_text(tmp_path, text)
    assert config.server.port == 65535
    assert config.tokens.queue_ttl_s == 60
    assert config.rooms["sale"].rate_per_minute == 0
    assert math.isfinite(config.rooms["sale"].rate_per_minute)


# Environment text


@pytest.mark.parametrize("var", ["WR_PORT", "WR_WORKERS"])
@pytest.mark.parametrize("text", ["abc", "", "80.5", "0x50"])
def test_bad_env_number_is_refused(var: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={var: text})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{var} ")
    field = "port" if var == "WR_PORT" else "workers"
    assert f"server.{field}" in message.split(":", 1)[0]
    assert "must be an integer" in message


def test_env_port_out_of_range_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"WR_PORT": "70000"})
    assert_one_line(info.value, "server.port")


def test_env_empty_host_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"WR_HOST": ""})
    assert_one_line(info.value, "server.host")


def test_unrelated_env_is_ignored() -> None:
    config = load_config(env={"WR_PROT": "1", "PORT": "1", "WR_BACKEND": "redis://"})
    assert config.server.port == 8080
    assert config.server.backend == "memory"


# Files that cannot be read


def test_invalid_toml_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=NO_ENV)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: invalid TOML")


def test_duplicate_key_is_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 1\nport = 2\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path, env=NO_ENV)


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env=NO_ENV)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: cannot read")


def test_missing_file_named_by_wr_config(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(env={"WR_CONFIG": str(path)})


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env=NO_ENV)
    assert str(info.value).startswith(f"{tmp_path}: cannot read")


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nhost = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env=NO_ENV)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")


# Keys written out at their defaults


AT_DEFAULT = """\
[server]
backend = "memory"
workers = 1
[tokens]
algorithm = "HS256"
[admin]
host = "127.0.0.1"
port = 8081
[rooms.sale]
max_overadmit = 1
pow_difficulty = 0
paused = false
closed = false
passthrough = false
"""


def test_keys_written_at_their_default_change_nothing(tmp_path: Path) -> None:
    config = load_text(tmp_path, AT_DEFAULT)
    assert config.rooms["sale"] == RoomConfig(name="sale")
    assert config.admin.port == 8081


def test_workers_come_from_env_and_flags() -> None:
    assert load_config(env={"WR_WORKERS": "3"}).server.workers == 3
    overridden = load_config(env={"WR_WORKERS": "3"}, overrides={"workers": 4})
    assert overridden.server.workers == 4
