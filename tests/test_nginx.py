"""examples/nginx/wr.conf for real: nginx, wr and a protected site on loopback.

The config is rendered with free ports, run with ``nginx -p DIR -c FILE``
(its pid file, logs and temp paths in DIR), and a person goes from the
protected URL through the queue and back, with httpx playing the waiting
page. Expired and forged tokens are sent through it too. Under CI a missing
nginx fails the test.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.serverproc import WrServer, free_port, missing, wait_for
from tests.sitestub import SiteStub
from wr.config import load_config
from wr.tokens import KeyRing, Tokens

EXAMPLE = Path(__file__).parent.parent / "examples" / "nginx" / "wr.conf"
WR_CONFIG = """\
[server]
workers = 1

[rooms.default]
rate_per_minute = 6000
target_url = "/welcome"
"""
# nginx starts in a fraction of a second; the machine may be loaded.
NGINX_START_S = 15.0


def render(wr_port: int, site_port: int, listen_port: int) -> str:
    """The example with test ports; each replaced line must be there."""
    text = EXAMPLE.read_text()
    for old, new in (
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{wr_port};"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{site_port};"),
        ("listen 80;", f"listen 127.0.0.1:{listen_port};"),
        # Two cores shared with other tests: one worker is plenty.
        ("worker_processes auto;", "worker_processes 1;"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


class Nginx:
    def __init__(self, root: Path, config: str) -> None:
        self.root = root
        self.port = 0
        (root / "temp").mkdir(parents=True)
        self.conf = root / "wr.conf"
        self.conf.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        # -e: the log nginx writes before it has read the config.
        return [
            binary,
            "-p",
            str(self.root),
            "-c",
            str(self.conf),
            "-e",
            str(self.root / "error.log"),
            *extra,
        ]

    def start(self, port: int) -> None:
        self.port = port
        check = subprocess.run(
            self.command("-t"), capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stderr
        # In the foreground, so the test owns the master process by its pid.
        self.proc = subprocess.Popen(
            self.command("-g", "daemon off;"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for(self._up, NGINX_START_S, f"nginx on port {port}")

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited: {self.error_log()}")
        try:
            httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1.0)
        except httpx.TransportError:
            return False
        return True

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # QUIT: finish the requests in flight, then exit.
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Gateway:
    def __init__(self, wr: WrServer, site: SiteStub, nginx: Nginx) -> None:
        self.wr = wr
        self.site = site
        self.nginx = nginx
        self.base = f"http://127.0.0.1:{nginx.port}"

    def tokens(self) -> Tokens:
        config = load_config(self.wr.config, env={})
        return Tokens(KeyRing.load(self.wr.state_dir), config.tokens)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # One gateway for the module: starting wr and nginx is the slow part.
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        missing("nginx is not installed (Debian package nginx)")
    tmp_path = tmp_path_factory.mktemp("gateway")
    (tmp_path / "wr").mkdir()
    wr = WrServer(tmp_path / "wr", WR_CONFIG).start()
    try:
        with SiteStub() as site:
            port = free_port()
            nginx = Nginx(tmp_path / "nginx", render(wr.port, site.port, port))
            try:
                nginx.start(port)
                yield Gateway(wr, site, nginx)
            finally:
                nginx.stop()
    finally:
        wr.stop()


@pytest.fixture
def gateway(running: Gateway) -> Gateway:
    running.site.requests.clear()
    return running


def guarded(gateway: Gateway) -> list[str]:
    """The paths the site answered, other than the start-up probe."""
    return [path for path, _ in gateway.site.requests if path != "/healthz"]


def client(gateway: Gateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.base, timeout=10.0, follow_redirects=False)


def to_the_waiting_page(response: httpx.Response) -> str:
    """The raw ``return`` value of a redirect to the waiting page."""
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    parts = urlsplit(location)
    assert parts.path == "/queue/"
    assert parse_qs(parts.query)["room"] == ["default"]
    assert response.headers["cache-control"] == "no-store"
    raw = parts.query.split("return=", 1)[1].split("&", 1)[0]
    return raw


def admitted(browser: httpx.Client, raw_return: str) -> dict[str, object]:
    """Join and poll as the waiting page does, until the turn comes."""
    join = browser.post("/api/v1/rooms/default/join")
    assert join.status_code == 200, join.text

    def status() -> dict[str, object] | None:
        answer = browser.get(f"/api/v1/rooms/default/status?return={raw_return}")
        assert answer.status_code == 200, answer.text
        data: dict[str, object] = answer.json()
        return data if data["state"] == "admitted" else None

    return wait_for(status, 30.0, "admission", poll_s=0.2)


def test_a_person_goes_from_the_protected_url_through_the_queue_and_back(
    gateway: Gateway,
) -> None:
    with client(gateway) as browser:
        raw = to_the_waiting_page(browser.get("/shop/item?id=7&colour=red"))
        assert raw == "%2Fshop%2Fitem%3Fid%3D7%26colour%3Dred"
        assert guarded(gateway) == []

        page = browser.get(f"/queue/?room=default&return={raw}")
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
        assert browser.get("/static/wait.js").status_code == 200

        data = admitted(browser, raw)
        assert data["redirect"] == "/shop/item?id=7&colour=red"
        assert "wr_access" in browser.cookies

        inside = browser.get(str(data["redirect"]))
        assert inside.status_code == 200
        assert inside.text == "protected /shop/item?id=7&colour=red"

        # Done: leaving through the gateway ends the session.
        assert browser.post("/api/v1/rooms/default/leave").status_code == 204
        assert "wr_access" not in browser.cookies
        to_the_waiting_page(browser.get("/shop/item?id=7&colour=red"))


def test_unprotected_paths_reach_the_site_without_a_token(gateway: Gateway) -> None:
    with client(gateway) as browser:
        assert browser.get("/healthz").text == "protected /healthz"
        assert browser.get("/assets/app.css").text == "protected /assets/app.css"


def test_a_bearer_token_is_accepted_too(gateway: Gateway) -> None:
    token = gateway.tokens().issue_access("default", "s" * 22, 1, 600, time.time())
    with client(gateway) as other:
        answer = other.get("/api", headers={"authorization": f"Bearer {token}"})
    assert answer.text == "protected /api"


def test_an_expired_token_is_sent_back_to_the_queue(gateway: Gateway) -> None:
    tokens = gateway.tokens()
    expired = tokens.issue_access("default", "s" * 22, 1, 60, time.time() - 3600)
    with client(gateway) as browser:
        browser.cookies.set("wr_access", expired)
        raw = to_the_waiting_page(browser.get("/account"))
    assert raw == "%2Faccount"
    assert guarded(gateway) == []


def test_forged_tokens_are_sent_back_to_the_queue(gateway: Gateway) -> None:
    tokens = gateway.tokens()
    genuine = tokens.issue_access("default", "s" * 22, 1, 600, time.time())
    # Same kid, another secret: what someone without the key would make.
    stranger = KeyRing(
        active=tokens.ring.active, secrets={tokens.ring.active: b"x" * 32}
    )
    forged = Tokens(stranger, tokens.config).issue_access(
        "default", "s" * 22, 1, 600, time.time()
    )
    header, _, signature = genuine.split(".")
    swapped = f"{header}.{forged.split('.')[1][:-2]}AA.{signature}"
    with client(gateway) as browser:
        for token in (forged, swapped, "not-a-token"):
            browser.cookies.set("wr_access", token)
            assert to_the_waiting_page(browser.get("/cart")) == "%2Fcart"
    assert guarded(gateway) == []


def test_a_hostile_return_lands_on_the_target_instead(gateway: Gateway) -> None:
    with client(gateway) as browser:
        data = admitted(browser, "https%3A%2F%2Fevil.example%2F")
    assert data["redirect"] == "/welcome"


def test_upstream_connections_are_kept_alive(gateway: Gateway) -> None:
    token = gateway.tokens().issue_access("default", "s" * 22, 1, 600, time.time())
    with client(gateway) as browser:
        browser.cookies.set("wr_access", token)
        for index in range(10):
            assert browser.get(f"/page/{index}").status_code == 200
    pages = [port for path, port in gateway.site.requests if path.startswith("/page/")]
    ports = set(pages)
    assert len(pages) == 10
    assert len(ports) < 10


def test_the_public_keys_are_published_through_the_gateway(gateway: Gateway) -> None:
    with client(gateway) as browser:
        answer = browser.get("/.well-known/jwks.json")
    assert answer.status_code == 200
    assert answer.json() == {"keys": []}
