"""The script-free waiting page, the ETA in words, and where the words live."""

from __future__ import annotations

import dataclasses
import html.parser
import math
import re
from pathlib import Path

import orjson
import pytest

from tests.test_api import World, body, cookie_value, header
from wr.api import ACCESS_COOKIE, QUEUE_COOKIE
from wr.http import Response
from wr.static import StaticFiles
from wr.waitpage import CLOSED_REFRESH_S, Texts, WaitPage, eta_words

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "static"
WAIT = "/api/v1/rooms/default/wait"
STATES = (
    "loading",
    "waiting",
    "prequeue",
    "paused",
    "closed",
    "full",
    "admitted",
    "error",
)


@pytest.fixture
def world() -> World:
    return World(STATIC)


@pytest.fixture
def texts() -> Texts:
    return Texts.from_static(StaticFiles.load(STATIC))


class _Page(html.parser.HTMLParser):
    """The visible text of a page, its meta refresh and its stylesheets."""

    def __init__(self) -> None:
        super().__init__()
        self.words: list[str] = []
        self.refresh: str | None = None
        self.stylesheets: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("script", "style", "title", "noscript"):
            self._skip += 1
        if tag == "meta" and values.get("http-equiv") == "refresh":
            self.refresh = values.get("content")
        if tag == "link" and values.get("rel") == "stylesheet":
            self.stylesheets.append(str(values.get("href")))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "title", "noscript"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.words.append(data.strip())


def parse(response: Response) -> _Page:
    page = _Page()
    page.feed(response.body.decode())
    return page


@pytest.mark.parametrize(
    ("eta_s", "words"),
    [
        (None, "not known yet"),
        (0, "less than a minute"),
        (59, "less than a minute"),
        (60, "about 1 minute"),
        (89, "about 1 minute"),
        (90, "about 2 minutes"),
        (720, "about 12 minutes"),
        (89 * 60 + 29, "about 89 minutes"),
        (90 * 60, "about 2 hours"),
        (3 * 3600 + 1799, "about 3 hours"),
    ],
)
def test_eta_in_words(texts: Texts, eta_s: int | None, words: str) -> None:
    assert eta_words(texts, eta_s) == words


def test_the_browser_rounds_the_eta_as_the_server_does() -> None:
    # One rule in two languages: the JavaScript must read as the Python does.
    script = (STATIC / "wait.js").read_text()
    assert "Math.floor(s / 60 + 0.5)" in script
    assert "Math.floor(s / 3600 + 0.5)" in script
    assert "if (minutes < 90)" in script
    assert "if (s < 60)" in script


def test_texts_fill_placeholders_and_show_missing_keys(texts: Texts) -> None:
    assert texts.get("eta_minutes", n=7) == "about 7 minutes"
    assert texts.get("no_such_key") == "no_such_key"
    assert Texts({"a": "{n} and {n}"}).get("a", n=2) == "2 and 2"


@pytest.mark.parametrize(
    "config", [b"not json", b"[1, 2]", b'{"lang": "fr"}', b'{"text": "words"}']
)
def test_an_unusable_config_gives_an_empty_table(tmp_path: Path, config: bytes) -> None:
    (tmp_path / "config.json").write_bytes(config)
    assert Texts.from_static(StaticFiles.load(tmp_path)).table == {}
    assert Texts.from_static(StaticFiles({})).table == {}


def test_every_word_of_the_page_comes_from_config_json(texts: Texts) -> None:
    index = (STATIC / "index.html").read_text()
    script = (STATIC / "wait.js").read_text()
    page = _Page()
    page.feed(index)
    assert page.words == [], "index.html shows words of its own"
    used = set(re.findall(r'data-t(?:-label)?="([a-z_]+)"', index))
    used |= set(re.findall(r'\bt\("([a-z_]*[a-z])"', script))
    used |= {f"{kind}_{state}" for kind in ("title", "msg") for state in STATES}
    used |= {"noscript_note", "refresh_now"}
    missing = sorted(used - set(texts.table))
    assert missing == []
    # The JavaScript never puts a literal string on the page.
    assert not re.search(r"textContent\s*=\s*[\"']", script)


def test_without_a_token_the_page_joins_and_refreshes_at_the_poll_interval(
    world: World, texts: Texts
) -> None:
    world.join()
    response = world.request("GET", WAIT)
    assert response.status == 200
    assert response.content_type == "text/html; charset=utf-8"
    assert header(response, "cache-control") == ["no-store"]
    (cookie,) = header(response, "set-cookie")
    assert cookie.startswith(f"{QUEUE_COOKIE}=")

    page = parse(response)
    assert "You are in line" in page.words
    assert page.words[page.words.index("Your place in line") + 1] == "2"
    token = cookie_value(cookie)
    status = body(world.status(token))
    eta = status["eta_s"]
    assert isinstance(eta, int)
    assert page.words[page.words.index("Estimated wait") + 1] == eta_words(texts, eta)
    expected = status["next_poll_s"]
    assert isinstance(expected, float)
    assert page.refresh == str(math.ceil(expected))
    static = StaticFiles.load(STATIC)
    assert page.stylesheets == [static.url("theme.css"), static.url("wait.css")]


def test_with_the_queue_cookie_the_place_is_kept(world: World) -> None:
    first = world.request("GET", WAIT)
    cookie = cookie_value(header(first, "set-cookie")[0])
    world.join()
    again = world.request(
        "GET", WAIT, headers={b"cookie": f"{QUEUE_COOKIE}={cookie}".encode()}
    )
    assert header(again, "set-cookie") == []
    page = parse(again)
    assert page.words[page.words.index("Your place in line") + 1] == "1"


def test_once_admitted_it_redirects_with_the_access_cookie(world: World) -> None:
    first = world.request("GET", WAIT)
    cookie = cookie_value(header(first, "set-cookie")[0])
    world.admit("default", 5)
    response = world.request(
        "GET", WAIT, headers={b"cookie": f"{QUEUE_COOKIE}={cookie}".encode()}
    )
    assert response.status == 302
    assert header(response, "location") == ["/inside"]
    assert header(response, "cache-control") == ["no-store"]
    (access,) = header(response, "set-cookie")
    assert access.startswith(f"{ACCESS_COOKIE}=")


def test_a_paused_room_says_so(world: World) -> None:
    room = world.rooms["default"]
    room.config = dataclasses.replace(room.config, paused=True)
    page = parse(world.request("GET", WAIT))
    assert "The line is paused" in page.words
    assert "on hold" in page.words


def test_a_closed_room_says_so_and_checks_back_slowly(world: World) -> None:
    room = world.rooms["default"]
    room.config = dataclasses.replace(room.config, closed=True)
    response = world.request("GET", WAIT)
    assert response.status == 410
    page = parse(response)
    # The same state attribute as the script's page, so the same colours.
    assert b'<main data-state="closed">' in response.body
    assert "This sale has ended" in page.words
    assert page.refresh == str(CLOSED_REFRESH_S)


def test_a_full_line_says_so_and_refreshes_at_retry_after(world: World) -> None:
    room = world.rooms["default"]
    room.config = dataclasses.replace(room.config, max_queue=1)
    world.join()
    response = world.request("GET", WAIT)
    assert response.status == 503
    (retry,) = header(response, "retry-after")
    page = parse(response)
    assert "The line is full" in page.words
    assert page.refresh == retry


def test_before_opening_no_place_is_shown(texts: Texts) -> None:
    page = WaitPage(StaticFiles.load(STATIC))
    data = {"state": "prequeue", "position": 4, "next_poll_s": 30.0}
    answer = Response(200, orjson.dumps(data))
    rendered = _Page()
    rendered.feed(page.respond(answer).body.decode())
    assert texts.get("title_prequeue") in rendered.words
    assert texts.get("position") not in rendered.words
    assert rendered.refresh == "30"


def test_an_unknown_room_is_a_json_404(world: World) -> None:
    response = world.request("GET", "/api/v1/rooms/nope/wait")
    assert response.status == 404
    assert orjson.loads(response.body)["error"] == "unknown_room"


def test_words_are_escaped(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        orjson.dumps({"text": {"title_waiting": "<script>x</script>"}}).decode()
    )
    page = WaitPage(StaticFiles.load(tmp_path))
    rendered = page.render("waiting", {"position": "<b>", "ahead": 1}, 5)
    assert b"<script>x" not in rendered
    assert b"&lt;script&gt;x&lt;/script&gt;" in rendered
    assert b"&lt;b&gt;" in rendered
