"""Tests for the ``wr`` command, in-process and as the installed script."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import wr
from wr.cli import main
from wr.config import TokensConfig
from wr.tokens import KeyRing, Tokens

WR = Path(sys.executable).parent / "wr"
WR_VARS = ("WR_CONFIG", "WR_HOST", "WR_PORT", "WR_WORKERS", "WR_STATE_DIR")
# Far beyond the time the script takes to fail; only a hang would reach it.
SCRIPT_TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs read os.environ; the test's own WR_* must not leak in."""
    for var in WR_VARS:
        monkeypatch.delenv(var, raising=False)


def run_wr(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in WR_VARS}
    return subprocess.run(
        [str(WR), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **(env or {})},
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def issue(state_dir: Path) -> str:
    ring, _ = KeyRing.load_or_create(state_dir)
    return Tokens(ring, TokensConfig()).issue_queue(
        "default", "session-1", 42, 30, 1_700_000_000
    )


def decoded_json(stdout: str) -> Any:
    """The JSON document printed before the signature line."""
    body, _, _ = stdout.rpartition("signature:")
    return json.loads(body)


# Version and help


def test_version_comes_from_the_package(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"wr {wr.__version__}"


def test_installed_script_prints_the_version(tmp_path: Path) -> None:
    result = run_wr("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"wr {wr.__version__}"


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        ([], "serve"),
        (["serve"], "--state-dir"),
        (["keygen"], "--state-dir"),
        (["token"], "decode"),
        (["token", "decode"], "token"),
    ],
)
def test_help(
    capsys: pytest.CaptureFixture[str], argv: list[str], mentions: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: wr")
    assert mentions in out


def test_serve_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--config", "--host", "--port", "--workers", "--state-dir"):
        assert flag in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) != 0
    assert "usage: wr" in capsys.readouterr().out


def test_token_without_action_prints_help_and_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["token"]) != 0
    assert "decode" in capsys.readouterr().err


def test_installed_script_help(tmp_path: Path) -> None:
    result = run_wr("token", "decode", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: wr token decode")


# wr serve with a configuration it refuses


def assert_one_error_line(result: subprocess.CompletedProcess[str], key: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0]
    assert "Traceback" not in result.stderr


def test_serve_bad_value_exits_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[rooms.default]\nrate_per_minute = -5\n")
    result = run_wr("serve", "--config", str(config), cwd=tmp_path)
    assert_one_error_line(result, "rooms.default.rate_per_minute")
    assert result.stdout == ""


def test_serve_unknown_key_exits_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nprot = 8080\n")
    result = run_wr("serve", "--config", str(config), cwd=tmp_path)
    assert_one_error_line(result, "server.prot")


def test_serve_bad_wr_port_exits_with_one_line(tmp_path: Path) -> None:
    result = run_wr("serve", cwd=tmp_path, env={"WR_PORT": "abc"})
    assert_one_error_line(result, "WR_PORT")
    assert "server.port" in result.stderr


def test_serve_wr_config_names_the_bad_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[rooms.sale]\ntarget_url = '//evil.example/'\n")
    result = run_wr("serve", cwd=tmp_path, env={"WR_CONFIG": str(config)})
    assert_one_error_line(result, "rooms.sale.target_url")


def test_serve_missing_config_file_exits_with_one_line(tmp_path: Path) -> None:
    result = run_wr("serve", "--config", str(tmp_path / "absent.toml"), cwd=tmp_path)
    assert_one_error_line(result, "absent.toml")


def test_serve_flag_is_checked_like_the_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--workers", "0"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "server.workers" in err


def test_serve_bad_value_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[rooms.default]\nrate_per_minute = inf\n")
    assert main(["serve", "--config", str(config)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "rooms.default.rate_per_minute" in err


# wr keygen


def test_keygen_creates_a_private_key_ring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert main(["keygen", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out

    keys = state / "keys.json"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    ring = KeyRing.load(state)
    assert ring.active in out
    assert "created" in out


def test_keygen_second_run_reports_the_same_kid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert main(["keygen", "--state-dir", str(state)]) == 0
    first = capsys.readouterr().out
    before = (state / "keys.json").read_bytes()

    assert main(["keygen", "--state-dir", str(state)]) == 0
    second = capsys.readouterr().out

    kid = KeyRing.load(state).active
    assert kid in first
    assert kid in second
    assert "exists" in second
    assert "created" not in second
    assert (state / "keys.json").read_bytes() == before


def test_keygen_uses_wr_state_dir(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "from-env"
    monkeypatch.setenv("WR_STATE_DIR", str(state))
    assert main(["keygen"]) == 0
    assert KeyRing.load(state).active in capsys.readouterr().out


def test_keygen_refuses_a_corrupt_key_ring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keys.json").write_text("not json")
    assert main(["keygen", "--state-dir", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "keys.json" in err
    assert (tmp_path / "keys.json").read_text() == "not json"


def test_installed_keygen(tmp_path: Path) -> None:
    first = run_wr("keygen", "--state-dir", "state", cwd=tmp_path)
    second = run_wr("keygen", "--state-dir", "state", cwd=tmp_path)
    kid = KeyRing.load(tmp_path / "state").active
    assert first.returncode == 0
    assert second.returncode == 0
    assert kid in first.stdout
    assert kid in second.stdout
    assert "exists" in second.stdout


# wr token decode


def test_decode_valid_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = issue(tmp_path)
    assert main(["token", "decode", token, "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out

    assert out.rstrip().endswith("signature: valid")
    doc = decoded_json(out)
    assert doc["header"] == {
        "alg": "HS256",
        "kid": KeyRing.load(tmp_path).active,
        "typ": "JWT",
    }
    assert doc["claims"]["room"] == "default"
    assert doc["claims"]["sub"] == "session-1"
    assert doc["claims"]["pos"] == 42
    assert doc["claims"]["typ"] == "queue"


def test_decode_expired_token_still_checks_the_signature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring, _ = KeyRing.load_or_create(tmp_path)
    token = Tokens(ring, TokensConfig()).issue_access("default", "s", 1, 60, 1000.0)
    assert main(["token", "decode", token, "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("signature: valid")


def test_decode_tampered_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    header, _, signature = issue(tmp_path).split(".")
    forged = {"sub": "session-1", "room": "default", "pos": 1, "typ": "queue"}
    token = f"{header}.{b64(json.dumps(forged).encode())}.{signature}"

    assert main(["token", "decode", token, "--state-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "signature: invalid" in out
    assert decoded_json(out)["claims"]["pos"] == 1


def test_decode_token_from_another_ring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = issue(tmp_path / "other")
    KeyRing.load_or_create(tmp_path / "mine")
    assert main(["token", "decode", token, "--state-dir", str(tmp_path / "mine")]) == 1
    assert "signature: unknown kid" in capsys.readouterr().out


def test_decode_without_a_key_ring_is_not_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = issue(tmp_path / "ring")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["token", "decode", token, "--state-dir", str(empty)]) == 0
    out = capsys.readouterr().out
    assert "signature: not checked" in out
    assert decoded_json(out)["claims"]["pos"] == 42
    assert not (empty / "keys.json").exists()


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b.c",
        "",
        f"{b64(b'{}')}.{b64(b'[1]')}.AAAA",
        f"{b64(b'[1]')}.{b64(b'{}')}.AAAA",
    ],
)
def test_decode_non_jwt_fails_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], token: str
) -> None:
    assert main(["token", "decode", token, "--state-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("wr: not a JWT")
    assert captured.err.count("\n") == 1


def test_decode_claims_wider_than_64_bits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    claims = b64(b'{"pos": 18446744073709551616}')
    token = f"{b64(b'{}')}.{claims}.AAAA"
    assert main(["token", "decode", token, "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert decoded_json(out)["claims"]["pos"] == 2**64
    assert "signature: not checked" in out


def test_installed_decode_exit_codes(tmp_path: Path) -> None:
    token = issue(tmp_path)
    header, _, signature = token.split(".")
    forged = b64(b'{"pos": 1}')
    tampered = f"{header}.{forged}.{signature}"

    valid = run_wr("token", "decode", token, "--state-dir", ".", cwd=tmp_path)
    invalid = run_wr("token", "decode", tampered, "--state-dir", ".", cwd=tmp_path)
    garbage = run_wr("token", "decode", "garbage", "--state-dir", ".", cwd=tmp_path)

    assert valid.returncode == 0
    assert "signature: valid" in valid.stdout
    assert invalid.returncode == 1
    assert "signature: invalid" in invalid.stdout
    assert garbage.returncode == 1
    assert "not a JWT" in garbage.stderr
