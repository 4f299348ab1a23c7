"""HS256Codec against pyjwt, the reference it must match byte for byte."""

from __future__ import annotations

import hmac
from typing import Any

import jwt
import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jwt.types import Options

from wr.config import ROOM_NAME
from wr.hs256 import (
    MAX_TOKEN_BYTES,
    HS256Codec,
    MalformedToken,
    b64url,
    b64url_decode,
)

# The codec does no claim checks; pyjwt must not do any either when it is
# used to read the codec's tokens back.
SIGNATURE_ONLY: Options = {
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}

PROPERTY = settings(max_examples=60, deadline=None)

ascii_text = st.text(st.characters(max_codepoint=0x7F), max_size=24)
int64 = st.integers(-(2**63), 2**63 - 1)
keys = st.binary(min_size=32, max_size=64)
kids = ascii_text


def _pyjwt_accepts(claims: dict[str, Any]) -> bool:
    # pyjwt refuses to encode a non-string "iss"; that is pyjwt's rule, not ours.
    return isinstance(claims.get("iss", ""), str)


arbitrary_claims = (
    st.lists(
        st.tuples(ascii_text, st.one_of(ascii_text, int64)),
        unique_by=lambda item: item[0],
        max_size=8,
    )
    .map(dict)
    .filter(_pyjwt_accepts)
)


@st.composite
def wr_claims(draw: st.DrawFn) -> dict[str, Any]:
    """The claims of a queue or access token, in an arbitrary order."""
    iat = draw(st.integers(0, 2**40))
    claims: dict[str, Any] = {
        "sub": draw(st.from_regex(r"[A-Za-z0-9_-]{22}", fullmatch=True)),
        "room": draw(st.from_regex(ROOM_NAME, fullmatch=True)),
        "pos": draw(st.integers(0, 2**53)),
        "iat": iat,
        "exp": iat + draw(st.integers(60, 10**6)),
    }
    if draw(st.booleans()):
        claims["typ"] = "access"
    else:
        claims["typ"] = "queue"
        claims["eta"] = draw(st.integers(0, 10**6))
    return dict(draw(st.permutations(list(claims.items()))))


claim_sets = st.one_of(arbitrary_claims, wr_claims())


def reference(claims: dict[str, Any], key: bytes, kid: str) -> str:
    return jwt.encode(claims, key, algorithm="HS256", headers={"kid": kid})


def signed(header: bytes, payload: bytes, key: bytes) -> str:
    """A token with any segments, correctly signed with ``key``."""
    signing_input = header + b"." + payload
    signature = hmac.digest(key, signing_input, "sha256")
    return (signing_input + b"." + b64url(signature)).decode("ascii")


def refusal(codec: HS256Codec, token: str) -> str:
    with pytest.raises(MalformedToken) as caught:
        codec.decode(token)
    return caught.value.reason


@PROPERTY
@given(claims=claim_sets, key=keys, kid=kids)
def test_encode_is_pyjwt_byte_for_byte(
    claims: dict[str, Any], key: bytes, kid: str
) -> None:
    assert HS256Codec({kid: key}, kid).encode(claims) == reference(claims, key, kid)


@PROPERTY
@given(claims=claim_sets, key=keys, kid=kids)
def test_pyjwt_decodes_codec_tokens(
    claims: dict[str, Any], key: bytes, kid: str
) -> None:
    token = HS256Codec({kid: key}, kid).encode(claims)

    decoded = jwt.decode(token, key, algorithms=["HS256"], options=SIGNATURE_ONLY)

    assert decoded == claims
    assert jwt.get_unverified_header(token) == {
        "alg": "HS256",
        "kid": kid,
        "typ": "JWT",
    }


@PROPERTY
@given(claims=claim_sets, key=keys, kid=kids)
def test_codec_decodes_pyjwt_tokens(
    claims: dict[str, Any], key: bytes, kid: str
) -> None:
    decoded = HS256Codec({kid: key}, kid).decode(reference(claims, key, kid))

    assert list(decoded.items()) == list(claims.items())


@PROPERTY
@given(claims=wr_claims(), old=keys, new=keys, old_kid=kids, new_kid=kids)
def test_codec_decodes_tokens_of_every_key_it_holds(
    claims: dict[str, Any], old: bytes, new: bytes, old_kid: str, new_kid: str
) -> None:
    assume(old_kid != new_kid)
    codec = HS256Codec({old_kid: old, new_kid: new}, new_kid)

    assert codec.decode(reference(claims, old, old_kid)) == claims
    assert codec.decode(reference(claims, new, new_kid)) == claims
    assert codec.encode(claims) == reference(claims, new, new_kid)


def test_signing_kid_must_be_held() -> None:
    with pytest.raises(ValueError, match="signing kid"):
        HS256Codec({"a": b"k" * 32}, "b")


@PROPERTY
@given(claims=wr_claims(), key=keys, other=keys, kid=kids)
def test_token_signed_with_another_key_is_bad_signature(
    claims: dict[str, Any], key: bytes, other: bytes, kid: str
) -> None:
    assume(key != other)
    codec = HS256Codec({kid: key}, kid)

    assert refusal(codec, reference(claims, other, kid)) == "bad_signature"


@PROPERTY
@given(claims=wr_claims(), key=keys, kid=kids, other_kid=kids)
def test_token_with_another_kid_is_foreign(
    claims: dict[str, Any], key: bytes, kid: str, other_kid: str
) -> None:
    assume(kid != other_kid)
    codec = HS256Codec({kid: key}, kid)

    assert refusal(codec, reference(claims, key, other_kid)) == "foreign_header"


@PROPERTY
@given(claims=wr_claims(), key=keys, kid=kids)
def test_token_without_kid_is_foreign(
    claims: dict[str, Any], key: bytes, kid: str
) -> None:
    codec = HS256Codec({kid: key}, kid)
    token = jwt.encode(claims, key, algorithm="HS256")

    assert refusal(codec, token) == "foreign_header"


@PROPERTY
@given(claims=wr_claims(), kid=kids)
def test_alg_none_is_foreign(claims: dict[str, Any], kid: str) -> None:
    codec = HS256Codec({kid: b"k" * 32}, kid)
    token = jwt.encode(claims, "", algorithm="none", headers={"kid": kid})

    assert refusal(codec, token) == "foreign_header"


@PROPERTY
@given(
    claims=wr_claims(),
    key=st.binary(min_size=64, max_size=64),
    kid=kids,
    algorithm=st.sampled_from(["HS384", "HS512"]),
)
def test_other_hmac_algorithms_are_foreign(
    claims: dict[str, Any], key: bytes, kid: str, algorithm: str
) -> None:
    codec = HS256Codec({kid: key}, kid)
    token = jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})

    assert refusal(codec, token) == "foreign_header"


@PROPERTY
@given(
    claims=wr_claims(),
    key=keys,
    kid=kids,
    extra=st.dictionaries(
        ascii_text.filter(lambda name: name not in ("alg", "kid", "typ", "b64")),
        st.one_of(ascii_text, int64),
        min_size=1,
        max_size=3,
    ),
)
def test_extra_header_fields_are_foreign(
    claims: dict[str, Any], key: bytes, kid: str, extra: dict[str, Any]
) -> None:
    codec = HS256Codec({kid: key}, kid)
    token = jwt.encode(claims, key, algorithm="HS256", headers={"kid": kid, **extra})

    assert refusal(codec, token) == "foreign_header"


def test_header_in_another_key_order_is_foreign() -> None:
    key = b"k" * 32
    codec = HS256Codec({"a": key}, "a")
    token = jwt.encode(
        {"sub": "s"}, key, algorithm="HS256", headers={"kid": "a"}, sort_headers=False
    )

    assert refusal(codec, token) == "foreign_header"


@PROPERTY
@given(claims=claim_sets, key=keys, kid=kids, data=st.data())
def test_any_single_character_change_is_refused(
    claims: dict[str, Any], key: bytes, kid: str, data: st.DataObject
) -> None:
    codec = HS256Codec({kid: key}, kid)
    token = codec.encode(claims)
    at = data.draw(st.integers(0, len(token) - 1), label="position")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
    replacement = data.draw(
        st.sampled_from(alphabet).filter(lambda c: c != token[at]), label="char"
    )
    tampered = token[:at] + replacement + token[at + 1 :]

    with pytest.raises(MalformedToken):
        codec.decode(tampered)


KID = "k1"
KEY = b"s" * 32
CODEC = HS256Codec({KID: KEY}, KID)
OUR_HEADER = CODEC.encode({}).split(".", 1)[0]


json_values = st.recursive(
    st.none() | st.booleans() | int64 | st.floats(allow_nan=False) | ascii_text,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(ascii_text, inner, max_size=3)
    ),
    max_leaves=8,
)


def _decodes_or_is_malformed(token: str) -> None:
    try:
        claims = CODEC.decode(token)
    except MalformedToken as exc:
        reason = exc.reason
    else:
        assert isinstance(claims, dict)
        return
    assert reason in ("malformed", "foreign_header", "bad_signature")


@PROPERTY
@given(text=st.text(max_size=300))
def test_arbitrary_text_raises_only_malformed_token(text: str) -> None:
    _decodes_or_is_malformed(text)


@PROPERTY
@given(rest=st.text(max_size=300))
def test_arbitrary_text_after_our_header_raises_only_malformed_token(
    rest: str,
) -> None:
    _decodes_or_is_malformed(OUR_HEADER + "." + rest)


@PROPERTY
@given(
    payload=st.one_of(
        st.binary(max_size=200).map(b64url),
        st.text(st.characters(max_codepoint=0x7F), max_size=200).map(str.encode),
        json_values.map(orjson.dumps).map(b64url),
    )
)
def test_signed_garbage_payload_raises_only_malformed_token(payload: bytes) -> None:
    # A valid signature takes the codec all the way to the payload parser.
    assume(b"." not in payload)
    _decodes_or_is_malformed(signed(OUR_HEADER.encode(), payload, KEY))


def test_signed_payload_that_is_not_base64_is_malformed() -> None:
    token = signed(OUR_HEADER.encode(), b"a", KEY)

    assert refusal(CODEC, token) == "malformed"


def test_signed_payload_that_is_not_an_object_is_malformed() -> None:
    token = signed(OUR_HEADER.encode(), b64url(b"[1,2]"), KEY)

    assert refusal(CODEC, token) == "malformed"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(f"{OUR_HEADER}.", id="two-segments-empty"),
        pytest.param(f"{OUR_HEADER}.e30", id="two-segments"),
        pytest.param(f"{OUR_HEADER}.e30.sig.more", id="four-segments"),
        pytest.param(f"{OUR_HEADER}.e30.sïg", id="not-ascii"),
    ],
)
def test_wrong_shape_is_malformed(token: str) -> None:
    assert refusal(CODEC, token) == "malformed"


def test_four_segments_with_a_valid_prefix_are_malformed() -> None:
    token = CODEC.encode({"sub": "s"})

    assert refusal(CODEC, token + ".x") == "malformed"


def _token_of_filler(size: int) -> str:
    return CODEC.encode({"sub": "x" * size})


def test_tokens_up_to_max_size_decode_and_longer_ones_are_malformed() -> None:
    # The longest token within the limit, then the next larger one.
    size = 0
    while len(_token_of_filler(size + 1)) <= MAX_TOKEN_BYTES:
        size += 1
    longest = _token_of_filler(size)
    too_long = _token_of_filler(size + 1)
    assert len(longest) <= MAX_TOKEN_BYTES < len(too_long)

    assert CODEC.decode(longest) == {"sub": "x" * size}
    with pytest.raises(MalformedToken) as caught:
        CODEC.decode(too_long)
    assert caught.value.reason == "malformed"


def test_pyjwt_token_too_long_is_malformed() -> None:
    token = reference({"sub": "x" * MAX_TOKEN_BYTES}, KEY, KID)

    assert refusal(CODEC, token) == "malformed"


def test_del_in_claims_is_escaped_like_pyjwt() -> None:
    # Regression: orjson writes DEL raw, json.dumps escapes it.
    claims = {"sub\x7f": "a\x7fb"}
    token = CODEC.encode(claims)

    payload = b64url_decode(token.split(".")[1].encode())

    assert token == reference(claims, KEY, KID)
    assert b"\x7f" not in payload
    assert orjson.loads(payload) == claims
