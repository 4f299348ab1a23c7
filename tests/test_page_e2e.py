"""The waiting page in headless Chromium, against a real ``wr serve``.

The browser's clock is Playwright's: it runs at real pace, and a test jumps
it forward to the page's next poll instead of waiting the 20-60 s a person
in line waits. Screenshots land in ``test-artefacts/`` (not committed).
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx
import orjson
import pytest
from playwright.sync_api import (
    Browser,
    Page,
    Request,
    ViewportSize,
    sync_playwright,
)

from tests.serverproc import WrServer, free_port, missing, wait_for
from tests.test_admin_e2e import admin

ROOT = Path(__file__).resolve().parent.parent
ARTEFACTS = ROOT / "test-artefacts"
# Debian's chromium, as Playwright drives it here: root needs no sandbox, and
# a closed network refuses the connections Chromium makes in the background.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
]
DESKTOP = ViewportSize(width=1280, height=860)
PHONE = ViewportSize(width=390, height=844)
# Generous: two cores shared with other test runs.
UI_TIMEOUT_S = 20.0

# One person a minute: whoever joins stays in line for the whole test, with
# an ETA in minutes, unless the test speeds the room up.
CONFIG = """
[server]
workers = 1

[rooms.default]
rate_per_minute = 1
target_url = "/inside"
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"{CHROMIUM} is missing: run scripts/install-test-deps as root")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


def start(tmp_path: Path, config: str = CONFIG) -> WrServer:
    return WrServer(tmp_path, config).start()


@contextmanager
def running(tmp_path: Path, room_settings: str = "") -> Iterator[WrServer]:
    """A wr whose room has ``room_settings`` (TOML lines) on top of CONFIG."""
    wr = start(tmp_path, CONFIG + room_settings)
    try:
        yield wr
    finally:
        if wr.proc is not None and wr.proc.poll() is None:
            wr.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WrServer]:
    with running(tmp_path) as wr:
        yield wr


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(UI_TIMEOUT_S * 1000)
    tab = context.new_page()
    tab.clock.install()
    yield tab
    context.close()


def text(page: Page, selector: str) -> str:
    return page.locator(selector).inner_text().strip()


def shows(page: Page, selector: str, wanted: str) -> bool:
    locator = page.locator(selector)
    return locator.is_visible() and locator.inner_text().strip() == wanted


def advance_until(page: Page, condition: Callable[[], bool], what: str) -> None:
    """Jump the page's clock a few seconds at a time until ``condition()``."""

    def moved() -> bool:
        if condition():
            return True
        page.clock.fast_forward(5_000)
        return False

    wait_for(moved, UI_TIMEOUT_S * 3, what, poll_s=0.1)


def others_join(server: WrServer, count: int) -> None:
    for _ in range(count):
        answer = httpx.post(f"{server.base}/api/v1/rooms/default/join")
        assert answer.status_code == 200


def stored_token(page: Page) -> str:
    value = page.evaluate("localStorage.getItem('wr::default')")
    token: str = orjson.loads(value)["token"]
    return token


def status_of(server: WrServer, token: str) -> dict[str, object]:
    answer = httpx.get(
        f"{server.base}/api/v1/rooms/default/status",
        headers={"authorization": f"Bearer {token}"},
    )
    data: dict[str, object] = answer.json()
    return data


def screenshot(page: Page, name: str) -> None:
    ARTEFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


def admin_patch(server: WrServer, **changes: object) -> None:
    with admin(server) as client:
        answer = client.patch("/admin/v1/rooms/default", json=changes)
        assert answer.status_code == 200, answer.text


def test_join_shows_place_ahead_eta_and_progress(server: WrServer, page: Page) -> None:
    others_join(server, 5)
    page.goto(server.base + "/")
    page.locator("#position").filter(has_text="6").wait_for()

    answer = status_of(server, stored_token(page))
    assert answer["position"] == 6
    assert text(page, "#title") == "You are in line"
    assert text(page, "#ahead") == str(answer["ahead"])
    assert re.fullmatch(r"about \d+ minutes", text(page, "#eta"))
    assert text(page, "#updated").startswith("Last updated at ")
    assert page.locator("#progress").get_attribute("max") == "100"
    assert page.title() == "Waiting room"
    assert page.locator("#notice").inner_text() == ""

    screenshot(page, "waiting-page-desktop")
    page.set_viewport_size(PHONE)
    screenshot(page, "waiting-page-phone")
    page.emulate_media(color_scheme="dark")
    screenshot(page, "waiting-page-phone-dark")


def test_the_page_is_readable_at_200_percent_zoom(server: WrServer, page: Page) -> None:
    # A 640 px wide viewport is what a 1280 px window shows at 200 % zoom.
    page.set_viewport_size(ViewportSize(width=640, height=430))
    page.goto(server.base + "/")
    page.locator("#position").filter(has_text="1").wait_for()
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    screenshot(page, "waiting-page-zoom-200")


def test_a_reload_and_a_new_tab_keep_the_place(server: WrServer, page: Page) -> None:
    others_join(server, 2)
    page.goto(server.base + "/")
    page.locator("#position").filter(has_text="3").wait_for()
    token = stored_token(page)

    page.reload()
    page.locator("#title").filter(has_text="You are in line").wait_for()
    assert text(page, "#position") == "3"
    assert stored_token(page) == token

    tab = page.context.new_page()
    tab.goto(server.base + "/")
    tab.locator("#title").filter(has_text="You are in line").wait_for()
    assert text(tab, "#position") == "3"


def test_a_paused_room_is_shown_as_paused(server: WrServer, page: Page) -> None:
    others_join(server, 1)
    page.goto(server.base + "/")
    page.locator("#position").filter(has_text="2").wait_for()

    admin_patch(server, paused=True)
    advance_until(
        page, lambda: shows(page, "#title", "The line is paused"), "paused shown"
    )
    assert text(page, "#eta") == "on hold"
    assert text(page, "#position") == "2"
    screenshot(page, "waiting-page-paused")

    admin_patch(server, paused=False)
    advance_until(
        page, lambda: shows(page, "#title", "You are in line"), "waiting again"
    )


def test_admission_redirects_to_the_target(server: WrServer, page: Page) -> None:
    others_join(server, 3)
    page.goto(server.base + "/")
    page.locator("#position").filter(has_text="4").wait_for()

    admin_patch(server, rate_per_minute=60_000)
    advance_until(page, lambda: page.url.endswith("/inside"), "the redirect")
    page.locator("h1").filter(has_text="You're in").wait_for()


def test_the_return_url_is_passed_on_unchanged(server: WrServer, page: Page) -> None:
    target = "https://shop.test/cart?item=7&size=m"
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    page.goto(f"{server.base}/?{httpx.QueryParams({'return': target})}")
    page.locator("#position").filter(has_text="1").wait_for()
    advance_until(page, lambda: any("/status?" in url for url in seen), "a poll")
    polls = [url for url in seen if "/status?" in url]
    assert httpx.URL(polls[-1]).params["return"] == target


def test_an_outage_shows_reconnecting_and_recovers(
    tmp_path: Path, browser: Browser
) -> None:
    wr = start(tmp_path)
    context = browser.new_context(viewport=PHONE)
    context.set_default_timeout(UI_TIMEOUT_S * 1000)
    page = context.new_page()
    page.clock.install()
    try:
        others_join(wr, 4)
        page.goto(wr.base + "/")
        page.locator("#position").filter(has_text="5").wait_for()

        assert wr.stop() == 0
        advance_until(
            page,
            lambda: "Reconnecting" in text(page, "#notice"),
            "the reconnecting notice",
        )
        assert text(page, "#position") == "5"
        screenshot(page, "waiting-page-reconnecting")

        wr = WrServer(tmp_path, CONFIG, port=wr.port).start()
        advance_until(page, lambda: text(page, "#notice") == "", "recovery")
        assert text(page, "#position") == "5"
        assert text(page, "#title") == "You are in line"
    finally:
        context.close()
        if wr.proc is not None and wr.proc.poll() is None:
            wr.stop()


def test_before_opening_a_countdown_is_shown(tmp_path: Path, page: Page) -> None:
    opens = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 7200))
    with running(tmp_path, f'opens_at = "{opens}"\n') as wr:
        page.goto(wr.base + "/")
        page.locator("#title").filter(has_text="The line opens soon").wait_for()
        countdown = text(page, "#countdown")
        assert re.fullmatch(r"(01:59:[0-5]\d|02:00:00)", countdown), countdown
        # The draw decides the order at the opening: no place is shown.
        assert page.locator("#line").is_hidden()
        screenshot(page, "waiting-page-prequeue")


@pytest.mark.parametrize(
    ("setting", "title"),
    [("closed = true", "This sale has ended"), ("max_queue = 1", "The line is full")],
)
def test_closed_and_full_rooms_say_so(
    tmp_path: Path, page: Page, setting: str, title: str
) -> None:
    with running(tmp_path, setting + "\n") as wr:
        if setting.startswith("max_queue"):
            others_join(wr, 1)
        page.goto(wr.base + "/")
        page.locator("#title").filter(has_text=title).wait_for()
        assert page.locator("#line").is_hidden()


def test_without_javascript_the_server_page_keeps_the_place(
    server: WrServer, browser: Browser
) -> None:
    context = browser.new_context(java_script_enabled=False, viewport=PHONE)
    context.set_default_timeout(UI_TIMEOUT_S * 1000)
    page = context.new_page()
    try:
        others_join(server, 1)
        page.goto(server.base + "/")
        page.wait_for_url("**/api/v1/rooms/default/wait")
        page.locator("h1").filter(has_text="You are in line").wait_for()
        assert "2" in page.locator("dl").inner_text()
        refresh = page.locator("meta[http-equiv=refresh]").get_attribute("content")
        assert refresh is not None
        assert int(refresh) >= 1
        screenshot(page, "waiting-page-noscript")

        page.reload()
        assert "2" in page.locator("dl").inner_text()

        admin_patch(server, rate_per_minute=60_000)

        def admitted() -> bool:
            page.reload()
            return page.url.endswith("/inside")

        wait_for(admitted, UI_TIMEOUT_S, "the redirect", poll_s=0.2)
        page.locator("h1").filter(has_text="You're in").wait_for()
    finally:
        context.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_page_on_another_origin_works_through_cors(
    tmp_path: Path, page: Page
) -> None:
    # The page's own origin: a copy of static/ behind a plain file server,
    # reached as "localhost" so that it is cross-site, not only cross-origin.
    site = tmp_path / "cdn"
    shutil.copytree(ROOT / "static", site / "static")
    shutil.copy(ROOT / "static" / "index.html", site / "index.html")
    cdn_port = free_port()
    origin = f"http://localhost:{cdn_port}"
    api_port = free_port()
    config = orjson.loads((site / "static" / "config.json").read_bytes())
    config["api"] = f"http://127.0.0.1:{api_port}"
    (site / "static" / "config.json").write_bytes(orjson.dumps(config))
    files = http.server.ThreadingHTTPServer(
        ("127.0.0.1", cdn_port), partial(_QuietHandler, directory=str(site))
    )
    thread = threading.Thread(target=files.serve_forever, daemon=True)
    thread.start()
    (tmp_path / "wr").mkdir()
    cors = f'\n[http]\ncors_origins = ["{origin}"]\n'
    wr = WrServer(tmp_path / "wr", CONFIG + cors, port=api_port).start()
    try:
        others_join(wr, 2)
        page.goto(origin + "/index.html")
        page.locator("#position").filter(has_text="3").wait_for()
        page.reload()
        page.locator("#title").filter(has_text="You are in line").wait_for()
        assert text(page, "#position") == "3"

        # The target is a path: it is wr's, not the page host's.
        admin_patch(wr, rate_per_minute=60_000)
        advance_until(
            page, lambda: page.url.startswith(wr.base + "/"), "the redirect to wr"
        )
    finally:
        wr.stop()
        files.shutdown()
        files.server_close()


def test_polls_that_change_nothing_announce_nothing(
    server: WrServer, page: Page
) -> None:
    others_join(server, 1)
    page.goto(server.base + "/")
    page.locator("#position").filter(has_text="2").wait_for()
    page.evaluate(
        """() => {
            window.announced = 0;
            const seen = new MutationObserver((records) => {
                window.announced += records.length;
            });
            for (const id of ["title", "message", "notice"]) {
                seen.observe(document.getElementById(id), {
                    childList: true, characterData: true, subtree: true,
                });
            }
        }"""
    )
    before = text(page, "#updated")
    advance_until(page, lambda: text(page, "#updated") != before, "a poll")
    assert page.evaluate("window.announced") == 0
    assert page.locator("[aria-live], [role=status]").count() == 2


def test_reconnecting_backs_off_instead_of_hammering(
    server: WrServer, page: Page
) -> None:
    page.goto(server.base + "/")
    page.locator("#position").filter(has_text="1").wait_for()
    failed: list[str] = []
    pending: set[Request] = set()

    # Playwright wants Python functions as handlers, not built-in methods.
    def started(request: Request) -> None:
        pending.add(request)

    def ended(request: Request) -> None:
        pending.discard(request)

    page.on("request", started)
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on("requestfailed", ended)
    page.on("requestfinished", ended)
    assert server.stop() == 0

    def idle() -> bool:
        # Playwright hands over events only while the test calls into it.
        page.evaluate("0")
        return not pending

    # Two fake minutes in 5 s jumps, each once the last try has failed: a
    # fixed 1 s retry would try at every jump (24 times); doubling from 1 s
    # up to 60 s tries 6 to 9 times.
    for _ in range(24):
        wait_for(idle, UI_TIMEOUT_S, "the last try to fail")
        page.clock.fast_forward(5_000)
    wait_for(idle, UI_TIMEOUT_S, "the last try to fail")
    assert 4 <= len(failed) <= 10, failed
    assert all("/status" in url for url in failed)
    assert text(page, "#position") == "1"


def test_focus_is_visible(tmp_path: Path, page: Page) -> None:
    with running(tmp_path, "closed = true\n") as wr:
        page.goto(wr.base + "/")
        page.locator("#home-link").wait_for()
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.id")
        assert focused == "home-link"
        outline = page.evaluate(
            "(() => { const s = getComputedStyle(document.activeElement);"
            " return [s.outlineStyle, s.outlineWidth]; })()"
        )
        assert outline == ["solid", "3px"]
        screenshot(page, "waiting-page-closed")


def test_reduced_motion_and_dark_mode_are_respected(
    server: WrServer, page: Page
) -> None:
    page.goto(server.base + "/")
    page.locator("#position").filter(has_text="1").wait_for()

    def look() -> list[str]:
        looks: list[str] = page.evaluate(
            "[getComputedStyle(document.getElementById('updated'), '::before')"
            ".animationName, getComputedStyle(document.body).backgroundColor]"
        )
        return looks

    moving, light = look()
    assert moving == "wr-pulse"
    page.emulate_media(reduced_motion="reduce", color_scheme="dark")
    still, dark = look()
    assert still == "none"
    assert dark != light
    assert dark == "rgb(15, 18, 22)"


def test_the_server_hands_out_fingerprinted_compressed_assets(
    server: WrServer,
) -> None:
    page = httpx.get(server.base + "/", headers={"accept-encoding": "br"})
    assert page.headers["content-encoding"] == "br"
    assert page.headers["vary"] == "accept-encoding"
    links = re.findall(r"/static/[a-z]+\.[0-9a-f]{10}\.(?:css|js)", page.text)
    assert len(links) == 3, page.text
    for link in links:
        asset = httpx.get(server.base + link, headers={"accept-encoding": "gzip"})
        assert asset.status_code == 200
        assert asset.headers["content-encoding"] == "gzip"
        assert asset.headers["cache-control"].endswith("immutable")


def test_a_full_line_is_tried_again_until_there_is_room(
    tmp_path: Path, page: Page
) -> None:
    with running(tmp_path, "max_queue = 1\n") as wr:
        others_join(wr, 1)
        page.goto(wr.base + "/")
        page.locator("#title").filter(has_text="The line is full").wait_for()
        assert page.locator("#notice").inner_text() == ""

        admin_patch(wr, max_queue=10)
        advance_until(page, lambda: shows(page, "#position", "2"), "a place")
        assert text(page, "#title") == "You are in line"


def test_a_token_that_no_longer_verifies_earns_a_new_place(
    server: WrServer, page: Page
) -> None:
    page.goto(server.base + "/")
    page.locator("#position").filter(has_text="1").wait_for()
    page.evaluate("localStorage.setItem('wr::default', '{\"token\": \"x.y.z\"}')")
    page.context.clear_cookies()
    page.reload()
    page.locator("#position").filter(has_text="2").wait_for()
    assert stored_token(page) != "x.y.z"


# Every state the page shows, in order, recorded as it changes.
RECORD_STATES = """
window.__states = [];
new MutationObserver(() => {
  const state = document.getElementById("page").dataset.state;
  if (window.__states[window.__states.length - 1] !== state) {
    window.__states.push(state);
  }
}).observe(document, {
  subtree: true, attributes: true, attributeFilter: ["data-state"]
});
"""


def pow_samples(server: WrServer) -> dict[str, float]:
    samples = {}
    for line in httpx.get(f"{server.base}/metrics").text.splitlines():
        if line.startswith(("wr_pow_solutions_total", "wr_pow_solve_seconds_count")):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_a_room_asking_for_proof_of_work_is_joined_after_checking(
    tmp_path: Path, page: Page
) -> None:
    with running(tmp_path, "pow_difficulty = 12\n") as wr:
        page.add_init_script(RECORD_STATES)
        page.goto(wr.base + "/")
        page.locator("#position").filter(has_text="1").wait_for()

        states = page.evaluate("window.__states")
        assert "checking" in states
        assert states[-1] == "waiting"
        answer = status_of(wr, stored_token(page))
        assert answer["position"] == 1
        samples = pow_samples(wr)
        assert samples['wr_pow_solutions_total{outcome="missing",room="default"}'] == 1
        assert samples['wr_pow_solutions_total{outcome="accepted",room="default"}'] == 1
        assert samples['wr_pow_solve_seconds_count{room="default"}'] == 1

        # A reload keeps the place without new work: the token is enough.
        page.reload()
        page.locator("#position").filter(has_text="1").wait_for()
        assert "checking" not in page.evaluate("window.__states")
        assert len(pow_samples(wr)) == 3


def test_without_javascript_a_proof_of_work_room_says_it_needs_it(
    tmp_path: Path,
) -> None:
    with running(tmp_path, "pow_difficulty = 12\n") as wr:
        answer = httpx.get(f"{wr.base}/api/v1/rooms/default/wait")
        assert answer.status_code == 403
        assert "This line needs JavaScript" in answer.text
        assert answer.headers["cache-control"] == "no-store"
