"""Static serving without a browser: fingerprints, encodings, caching, budget."""

from __future__ import annotations

import gzip
import importlib
import re
from pathlib import Path
from types import ModuleType

import brotli
import pytest

from wr import static as static_module
from wr.http import Request, Response
from wr.static import (
    FINGERPRINT_MAX_AGE_S,
    MAX_COMPRESSED_BYTES,
    StaticFiles,
    choose_encoding,
    default_compressors,
    gzip_compress,
    static_root,
    warm_static,
)

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "static"
# The budget for the whole page, uncompressed.
PAGE_BUDGET_BYTES = 30_000

CSS = b"body { color: red; }\n" * 40
LOGO = b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="9" height="9"/></svg>'


def get(
    files: StaticFiles, name: str, headers: dict[bytes, bytes] | None = None
) -> Response:
    response = files.respond(Request("GET", "/static/" + name, "", headers or {}), name)
    assert response is not None
    return response


def header(response: Response, name: str) -> str | None:
    values = [value for key, value in response.headers if key == name]
    assert len(values) <= 1
    return values[0] if values else None


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text(
        '<!doctype html><link rel="stylesheet" href="/static/site.css">'
        '<script src="/static/app.js"></script><img src="/static/missing.png">'
        + "<p>words</p>"
        * 40
    )
    (tmp_path / "site.css").write_bytes(
        CSS + b':root { --logo: url("/static/logo.svg"); }\n'
    )
    (tmp_path / "app.js").write_text("fetch('/static/config.json');\n" * 40)
    (tmp_path / "logo.svg").write_bytes(LOGO)
    (tmp_path / "config.json").write_text('{"text": {}}')
    (tmp_path / "photo.png").write_bytes(b"\x89PNG" + bytes(range(256)) * 8)
    (tmp_path / ".hidden").write_text("not served")
    return tmp_path


@pytest.fixture
def files(site: Path) -> StaticFiles:
    return StaticFiles.load(site)


def test_assets_get_content_hashed_names_and_pages_keep_theirs(
    files: StaticFiles,
) -> None:
    css = files.fingerprints["site.css"]
    assert re.fullmatch(r"site\.[0-9a-f]{10}\.css", css)
    assert re.fullmatch(r"app\.[0-9a-f]{10}\.js", files.fingerprints["app.js"])
    assert "index.html" not in files.fingerprints
    assert "config.json" not in files.fingerprints
    assert files.url("site.css") == "/static/" + css
    assert files.url("index.html") == "/static/index.html"
    assert files.get(".hidden") is None


def test_the_fingerprint_follows_the_content(site: Path) -> None:
    before = StaticFiles.load(site).fingerprints["app.js"]
    assert StaticFiles.load(site).fingerprints["app.js"] == before
    (site / "app.js").write_text("// a new deploy\n")
    assert StaticFiles.load(site).fingerprints["app.js"] != before


def test_references_in_html_and_css_point_at_fingerprints(files: StaticFiles) -> None:
    page = files.files["index.html"].body.decode()
    assert f'href="{files.url("site.css")}"' in page
    assert f'src="{files.url("app.js")}"' in page
    # A reference to a file that does not exist is left as written.
    assert 'src="/static/missing.png"' in page
    css = files.files[files.fingerprints["site.css"]].body.decode()
    assert files.url("logo.svg") in css
    # JavaScript is not rewritten: it names config.json, which keeps its name.
    assert b"/static/config.json" in files.files["app.js"].body


def test_a_rewritten_css_file_is_fingerprinted_after_rewriting(
    site: Path,
) -> None:
    before = StaticFiles.load(site)
    (site / "logo.svg").write_bytes(LOGO.replace(b"9", b"8"))
    after = StaticFiles.load(site)
    # The CSS did not change on disk, but the logo it names did.
    assert after.fingerprints["site.css"] != before.fingerprints["site.css"]
    page = after.files["index.html"].body.decode()
    assert after.url("site.css") in page


def test_caching_by_kind_of_name(files: StaticFiles) -> None:
    immutable = get(files, files.fingerprints["site.css"])
    assert header(immutable, "cache-control") == (
        f"public, max-age={FINGERPRINT_MAX_AGE_S}, immutable"
    )
    assert header(get(files, "site.css"), "cache-control") == "public, max-age=3600"
    assert header(get(files, "index.html"), "cache-control") == "public, max-age=60"
    assert header(get(files, "config.json"), "cache-control") == "public, max-age=60"


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        (None, None),
        (b"", None),
        (b"identity", None),
        (b"gzip", "gzip"),
        (b"br", "br"),
        (b"gzip, deflate, br, zstd", "br"),
        (b"br;q=0.5, gzip", "gzip"),
        (b"br;q=0, gzip;q=0", None),
        (b"*", "br"),
        (b"*;q=0.2, br;q=0", "gzip"),
        (b"GZIP;Q=1", "gzip"),
        (b"br;q=abc, gzip;q=0.1", "gzip"),
        (b"br;q=7", None),
        (b"deflate", None),
    ],
)
def test_choose_encoding_follows_rfc_9110(accept: bytes | None, coding: str) -> None:
    files = StaticFiles.load(STATIC)
    encoded = files.files["wait.js"].encoded
    assert choose_encoding(accept, encoded) == coding


@pytest.mark.parametrize(
    ("accept", "coding"), [(b"br, gzip", "br"), (b"gzip", "gzip"), (b"", None)]
)
def test_each_encoding_is_served_with_its_own_headers_and_etag(
    files: StaticFiles, accept: bytes, coding: str | None
) -> None:
    name = files.fingerprints["app.js"]
    response = get(files, name, {b"accept-encoding": accept})
    original = files.files[name].body
    assert response.status == 200
    assert header(response, "content-encoding") == coding
    assert header(response, "vary") == "accept-encoding"
    # text/javascript since RFC 9239; older Pythons say application/javascript.
    assert response.content_type is not None
    assert response.content_type.endswith("/javascript; charset=utf-8")
    unpack = {"br": brotli.decompress, "gzip": gzip.decompress, None: bytes}[coding]
    assert unpack(response.body) == original
    if coding is not None:
        assert len(response.body) < len(original)

    etag = header(response, "etag")
    assert etag is not None
    again = get(
        files, name, {b"accept-encoding": accept, b"if-none-match": etag.encode()}
    )
    assert again.status == 304
    assert again.body == b""
    assert header(again, "content-encoding") == coding


def test_etags_differ_between_encodings(files: StaticFiles) -> None:
    name = "app.js"
    tags = {
        header(get(files, name, {b"accept-encoding": accept}), "etag")
        for accept in (b"br", b"gzip", b"identity")
    }
    assert len(tags) == 3
    gzip_tag = header(get(files, name, {b"accept-encoding": b"gzip"}), "etag")
    assert gzip_tag is not None
    stale = get(
        files, name, {b"accept-encoding": b"br", b"if-none-match": gzip_tag.encode()}
    )
    assert stale.status == 200


def test_files_that_do_not_shrink_are_not_compressed(files: StaticFiles) -> None:
    photo = get(files, "photo.png", {b"accept-encoding": b"br, gzip"})
    assert header(photo, "content-encoding") is None
    assert header(photo, "vary") is None
    tiny = get(files, "config.json", {b"accept-encoding": b"br, gzip"})
    assert header(tiny, "content-encoding") is None
    assert tiny.body == b'{"text": {}}'


def test_files_too_large_to_compress_quickly_are_served_as_they_are(
    site: Path,
) -> None:
    (site / "big.txt").write_bytes(b"a" * (MAX_COMPRESSED_BYTES + 1))
    files = StaticFiles.load(site)
    response = get(files, "big.txt", {b"accept-encoding": b"br, gzip"})
    assert header(response, "content-encoding") is None
    assert len(response.body) == MAX_COMPRESSED_BYTES + 1


def test_gzip_output_is_reproducible() -> None:
    assert gzip_compress(CSS) == gzip_compress(CSS)


def test_without_the_brotli_package_gzip_is_served(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.import_module

    def no_brotli(name: str, package: str | None = None) -> ModuleType:
        if name == "brotli":
            raise ImportError("no brotli here")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", no_brotli)
    assert set(default_compressors()) == {"gzip"}
    files = StaticFiles.load(site)
    response = get(files, "app.js", {b"accept-encoding": b"br, gzip"})
    assert header(response, "content-encoding") == "gzip"
    assert response.status == 200


def test_the_page_fits_the_size_budget() -> None:
    total = sum(path.stat().st_size for path in STATIC.rglob("*") if path.is_file())
    assert total < PAGE_BUDGET_BYTES, f"static/ is {total} bytes"


def test_every_reference_of_the_real_page_resolves() -> None:
    files = StaticFiles.load(STATIC)
    for name in ("index.html", "inside.html", files.fingerprints["theme.css"]):
        text = files.files[name].body.decode()
        for reference in re.findall(r"/static/([A-Za-z0-9_./-]+)", text):
            assert reference in files.files, f"{name} names missing {reference}"
            assert reference in set(files.fingerprints.values()), reference
        assert "/static/" in text


def test_the_real_page_is_served_compressed() -> None:
    files = StaticFiles.load(STATIC)
    for name in ("index.html", "wait.js", "wait.css", "theme.css", "config.json"):
        response = get(files, name, {b"accept-encoding": b"br"})
        assert header(response, "content-encoding") == "br", name


def test_a_load_reuses_the_copies_the_last_load_made(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compressed: list[bytes] = []

    def counting(body: bytes) -> bytes:
        compressed.append(body)
        return gzip_compress(body)

    monkeypatch.setattr(
        static_module, "default_compressors", lambda: {"gzip": counting}
    )
    first = StaticFiles.load(site)
    assert compressed
    compressed.clear()

    again = StaticFiles.load(site)
    assert compressed == []
    name = "app.js"
    assert again.files[name].encoded == first.files[name].encoded

    (site / "app.js").write_text("// changed\n" * 40)
    changed = StaticFiles.load(site)
    # The new script, and the page whose link to it changed with it.
    assert compressed == [b"// changed\n" * 40, changed.files["index.html"].body]
    # Only what the latest load used is kept.
    latest = StaticFiles.load(site)
    kept = {
        (coding, copy.etag.strip('"').rsplit("-", 1)[0])
        for file in latest.files.values()
        for coding, copy in file.encoded.items()
    }
    # Copies that did not shrink stay remembered too, so none is redone.
    assert kept <= set(static_module._MEMO)
    assert len(static_module._MEMO) <= len(list(site.iterdir()))


def test_warming_a_missing_folder_is_quietly_nothing(tmp_path: Path) -> None:
    warm_static(str(tmp_path / "nowhere"))
    assert static_root("") == ROOT / "static"
    assert static_root(str(tmp_path)) == tmp_path
