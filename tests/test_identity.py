"""identity.py: the canonical serialisation (what is hashed and sent) must be exactly what
json.dumps writes with the canonical options, for any JSON value; it is written with json's
C encoder built once, not through JSONEncoder.encode."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.identity import canonical_json, request_hash

# Any text, lone surrogates included (json escapes them; UTF-8 cannot encode the result).
KEYS = st.text(max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)


def canonical_by_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@settings(max_examples=500)
@given(VALUES)
def test_canonical_json_is_json_dumps_with_the_canonical_options(value: Any) -> None:
    expected = canonical_by_json(value)
    try:
        encoded = expected.encode()
    except UnicodeEncodeError:  # a lone surrogate: neither can be written as UTF-8
        with pytest.raises(UnicodeEncodeError):
            canonical_json(value)
        return
    assert canonical_json(value) == encoded


def test_a_request_hash_is_the_sha256_of_that_text() -> None:
    request = {"path": {"streamName": "直播 1"}, "body": {"b": [1, True, None], "a": "\n"}}
    text = canonical_by_json(request).encode()
    assert text == '{"body":{"a":"\\n","b":[1,true,null]},"path":{"streamName":"直播 1"}}'.encode()
    assert request_hash(request) == hashlib.sha256(text).hexdigest()


def test_what_json_cannot_write_is_refused_as_json_refuses_it() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        canonical_json({"a": {1, 2}})
    with pytest.raises(TypeError):
        canonical_json({("a",): 1})  # a key json would not write


def test_without_the_c_encoder_the_text_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    import reconciler.identity

    value = {"b": [1.5, "é\u2028"], "a": {"z": None, "y": False}}
    fast = canonical_json(value)
    monkeypatch.setattr(reconciler.identity, "_ENCODE", None)
    assert canonical_json(value) == fast == canonical_by_json(value).encode()
