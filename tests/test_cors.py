"""CORS for the configured origins only, and the config key that lists them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_api import World, header
from tests.test_config import error_of, load_text
from wr.config import HttpConfig
from wr.http import Response

CDN = "https://cdn.shop.test"
STATUS = "/api/v1/rooms/default/status"


@pytest.fixture
def world(tmp_path: Path) -> World:
    (tmp_path / "index.html").write_text("<!doctype html><title>wait</title>")
    http = HttpConfig(cors_origins=(CDN, "http://127.0.0.1:8000"), cors_max_age_s=900)
    return World(tmp_path, http)


def cors_headers(response: Response) -> dict[str, str]:
    return {k: v for k, v in response.headers if k.startswith("access-control-")}


def test_a_listed_origin_may_read_the_answer(world: World) -> None:
    response = world.request(
        "POST", "/api/v1/rooms/default/join", headers={b"origin": CDN.encode()}
    )
    assert response.status == 200
    assert cors_headers(response) == {
        "access-control-allow-origin": CDN,
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "retry-after",
    }
    assert "origin" in header(response, "vary")


@pytest.mark.parametrize(
    "origin",
    [
        b"https://evil.test",
        b"https://cdn.shop.test.evil.test",
        b"null",
        b"HTTPS://CDN.SHOP.TEST",
    ],
)
def test_any_other_origin_gets_no_cors_header(world: World, origin: bytes) -> None:
    response = world.request(
        "POST", "/api/v1/rooms/default/join", headers={b"origin": origin}
    )
    assert cors_headers(response) == {}
    # Still keyed on Origin, so a shared cache never hands one origin's
    # answer to another.
    assert "origin" in header(response, "vary")


def test_a_same_origin_request_gets_no_cors_header(world: World) -> None:
    assert cors_headers(world.request("GET", "/healthz")) == {}


def test_a_preflight_names_methods_headers_and_lifetime(world: World) -> None:
    response = world.request(
        "OPTIONS",
        STATUS,
        headers={
            b"origin": CDN.encode(),
            b"access-control-request-method": b"GET",
            b"access-control-request-headers": b"authorization",
        },
    )
    assert response.status == 204
    assert cors_headers(response) == {
        "access-control-allow-origin": CDN,
        "access-control-allow-credentials": "true",
        "access-control-allow-methods": "GET, HEAD",
        "access-control-allow-headers": "authorization, content-type",
        "access-control-max-age": "900",
    }


def test_a_preflight_from_elsewhere_is_not_approved(world: World) -> None:
    response = world.request(
        "OPTIONS",
        STATUS,
        headers={
            b"origin": b"https://evil.test",
            b"access-control-request-method": b"GET",
        },
    )
    assert cors_headers(response) == {}


def test_errors_carry_cors_headers_so_the_page_can_read_them(world: World) -> None:
    response = world.request("GET", STATUS, headers={b"origin": CDN.encode()})
    assert response.status == 401
    assert cors_headers(response)["access-control-allow-origin"] == CDN


def test_without_origins_configured_nothing_is_added(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>wait</title>")
    world = World(tmp_path)
    response = world.request(
        "POST", "/api/v1/rooms/default/join", headers={b"origin": CDN.encode()}
    )
    assert cors_headers(response) == {}
    assert header(response, "vary") == []


def test_the_config_key_takes_a_list_of_origins(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        '[http]\ncors_origins = ["https://cdn.shop.test", "http://[::1]:8000"]\n'
        "cors_max_age_s = 60\n",
    )
    assert config.http.cors_origins == ("https://cdn.shop.test", "http://[::1]:8000")
    assert config.http.cors_max_age_s == 60
    assert load_text(tmp_path, "").http.cors_origins == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"https://cdn.shop.test"', "http.cors_origins: must be a list, got"),
        ("[1]", "http.cors_origins[0]: must be a string, got 1"),
        (
            '["https://a.test", "https://b.test/"]',
            "http.cors_origins[1]: must be an origin",
        ),
        ('["cdn.shop.test"]', "http.cors_origins[0]: must be an origin"),
        ('["*"]', "http.cors_origins[0]: must be an origin"),
        ('["https://CDN.test"]', "http.cors_origins[0]: must be an origin"),
        ('["ftp://cdn.test"]', "http.cors_origins[0]: must be an origin"),
    ],
)
def test_bad_origins_are_refused_by_key(
    tmp_path: Path, value: str, message: str
) -> None:
    error = error_of(tmp_path, f"[http]\ncors_origins = {value}\n")
    assert str(error).startswith(message), str(error)


def test_a_bad_origin_stops_wr_serve_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "wr.toml"
    path.write_text('[http]\ncors_origins = ["https://cdn.test/page"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "wr", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "wr: config: http.cors_origins[0]: must be an origin like "
        "'https://cdn.example.com' (scheme, host, optional port; no path), "
        "got 'https://cdn.test/page'"
    ]
