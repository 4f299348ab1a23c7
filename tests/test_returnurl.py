"""The return URL: the page a person asked for, never an open redirect."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wr.returnurl import MAX_RETURN_BYTES, safe_return

SHOP = "https://shop.example/"
ALLOWED = ("https://m.shop.example", "http://legacy.shop.example:8080/")


@pytest.mark.parametrize(
    "url",
    ["/", "/cart", "/shop/item?id=7&colour=red", "/a/b/#reviews", "/%7Euser"],
)
def test_a_path_is_kept_for_a_path_target(url: str) -> None:
    assert safe_return(quote(url, safe=""), "/inside") == url


def test_a_path_goes_to_the_origin_of_an_absolute_target() -> None:
    assert safe_return("%2Fcart%3Fx%3D1", SHOP) == "https://shop.example/cart?x=1"


def test_an_unencoded_path_is_accepted_too() -> None:
    assert safe_return("/cart", "/inside") == "/cart"


@pytest.mark.parametrize(
    "url",
    [
        "https://shop.example/cart",
        "https://SHOP.example/cart",
        "https://shop.example:443/cart",
        "https://m.shop.example/",
        "http://legacy.shop.example:8080/old?x=1",
    ],
)
def test_an_absolute_url_on_an_allowed_origin_is_kept(url: str) -> None:
    assert safe_return(quote(url, safe=""), SHOP, ALLOWED) == url


@pytest.mark.parametrize(
    "url",
    [
        # Other hosts, other schemes, other ports.
        "https://evil.example/",
        "http://shop.example/",
        "https://shop.example:8443/",
        "https://shop.example.evil.example/",
        "https://evilshop.example/",
        "http://legacy.shop.example/",
        # Scheme-relative and look-alike paths.
        "//evil.example",
        "//evil.example/path",
        "///evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "/\\/evil.example",
        # Not http(s).
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox",
        "ftp://shop.example/",
        # Broken absolute forms a browser might still follow.
        "https:evil.example",
        "https:/evil.example",
        "https:///evil.example",
        "https://shop.example@evil.example/",
        "https://user:pw@shop.example/",
        # Control characters, spaces, non-ASCII.
        "/\t/evil.example",
        "/\r\n/evil.example",
        "/x\r\nSet-Cookie: a=b",
        "/\x00/evil.example",
        " /cart",
        "/caf\u00e9",
        "https://shop.example\u3002evil.example/",
        # Relative forms that are not paths.
        "cart",
        "evil.example",
        "?x=1",
        "#top",
        "",
    ],
)
def test_hostile_or_foreign_values_are_refused(url: str) -> None:
    assert safe_return(quote(url, safe=""), SHOP, ALLOWED) is None
    assert safe_return(quote(url, safe=""), "/inside", ALLOWED) is None


@pytest.mark.parametrize(
    "raw",
    [
        "%2F%2Fevil.example",
        "%2f%2fevil.example",
        "/%2Fevil.example",
        "%2F%5Cevil.example",
        "%2F%09%2Fevil.example",
        "%2F%0D%0A%2Fevil.example",
        "%2F%E2%80%A8",
        "%2F%FF",
        "javascript%3Aalert(1)",
        "https%3A%2F%2Fevil.example",
    ],
)
def test_encoded_hostile_values_are_refused(raw: str) -> None:
    assert safe_return(raw, "/inside") is None
    assert safe_return(raw, SHOP, ALLOWED) is None


def test_a_second_layer_of_encoding_stays_encoded_and_on_the_site() -> None:
    # Decoded once this is "/%2F/evil": a path on our own host, not "//evil".
    assert safe_return("%2F%252F%2Fevil.example", "/inside") == "/%2F/evil.example"


def test_missing_and_overlong_values_are_refused() -> None:
    assert safe_return(None, "/inside") is None
    assert safe_return("", "/inside") is None
    assert safe_return("/" + "a" * MAX_RETURN_BYTES, "/inside") is None
    assert safe_return("/" + "a" * (MAX_RETURN_BYTES - 1), "/inside") is not None


@given(st.text(max_size=80))
def test_whatever_comes_in_what_goes_out_stays_on_allowed_ground(text: str) -> None:
    for raw in (text, quote(text, safe="")):
        result = safe_return(raw, SHOP, ALLOWED)
        if result is None:
            continue
        allowed = ("https://shop.example", "https://m.shop.example")
        assert (
            result.startswith(
                (*(a + "/" for a in allowed), "http://legacy.shop.example:8080/")
            )
            or result in allowed
        )
        assert all("!" <= ch <= "~" and ch != "\\" for ch in result)
