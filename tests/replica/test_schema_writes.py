"""The direct writes and reads of replica.schema (set_fields, insert_map, append_plain, get_entry) against pycrdt's public API."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map

import json

from replica.models import from_doc_number
from replica.schema import append_plain, doc_json, get_entry, insert_map, plain, set_fields

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=4)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=10,
)
FIELDS = st.dictionaries(st.text(min_size=1, max_size=4), VALUES, max_size=6)
SHARED = st.recursive(
    VALUES,
    lambda inner: st.builds(lambda d: ("map", d), st.dictionaries(st.text(min_size=1, max_size=3), inner, max_size=3)),
    max_leaves=8,
)
"""Plain values and ("map", {...}) markers, built into fresh preliminary Maps for each Doc by `_built`."""
SHARED_FIELDS = st.dictionaries(st.text(min_size=1, max_size=4), SHARED, max_size=5)


def _built(value: Any) -> Any:
    if isinstance(value, tuple):
        return Map({key: _built(item) for key, item in value[1].items()})
    return value


def _root(doc: Doc) -> Map:
    return doc.get("r", type=Map)


@settings(max_examples=150, deadline=None)
@given(FIELDS, FIELDS)
def test_direct_writes_leave_what_the_public_api_leaves(first: dict[str, Any], second: dict[str, Any]) -> None:
    direct, public = Doc(), Doc()
    with direct.transaction():
        insert_map(_root(direct), "k", first)
    _root(public)["k"] = Map(dict(first))
    with direct.transaction():
        set_fields(_root(direct)["k"], second)
    entry = _root(public)["k"]
    for key, value in second.items():
        entry[key] = value
    assert _root(direct).to_py() == _root(public).to_py()
    replica = Doc()
    replica.apply_update(direct.get_update())
    assert _root(replica).to_py() == _root(public).to_py()
    assert get_entry(_root(direct), "k") == (True, plain(_root(public)["k"]))


@settings(max_examples=100, deadline=None)
@given(st.lists(FIELDS, min_size=1, max_size=5))
def test_append_plain_appends_what_pycrdt_appends(objects: list[dict[str, Any]]) -> None:
    """Inside a transaction and outside one, as pycrdt's `append` does, and the update carries it."""
    direct, public = Doc(), Doc()
    direct_array = direct.get("a", type=Array)
    public_array = public.get("a", type=Array)
    with direct.transaction():
        append_plain(direct_array, objects[0])
    public_array.append(objects[0])
    for item in objects[1:]:
        append_plain(direct_array, item)
        public_array.append(item)
    assert direct_array.to_py() == public_array.to_py()
    replica = Doc()
    replica.apply_update(direct.get_update())
    assert replica.get("a", type=Array).to_py() == public_array.to_py()


@settings(max_examples=100, deadline=None)
@given(SHARED_FIELDS, SHARED_FIELDS)
def test_nested_preliminary_maps_go_in_as_pycrdt_puts_them(first: dict[str, Any], second: dict[str, Any]) -> None:
    """Preliminary Maps (nested to any depth) are filled in directly: same content, same update, bound
    to the Doc afterwards as pycrdt binds them."""
    direct, public = Doc(), Doc()
    mine = {key: _built(value) for key, value in first.items()}
    with direct.transaction():
        insert_map(_root(direct), "k", mine)
    _root(public)["k"] = Map({key: _built(value) for key, value in first.items()})
    with direct.transaction():
        set_fields(_root(direct)["k"], {key: _built(value) for key, value in second.items()})
    entry = _root(public)["k"]
    for key, value in second.items():
        entry[key] = _built(value)
    assert _root(direct).to_py() == _root(public).to_py()
    replica = Doc()
    replica.apply_update(direct.get_update())
    assert _root(replica).to_py() == _root(public).to_py()
    for key, value in mine.items():
        if isinstance(value, Map) and key not in second:
            assert value.to_py() == _root(direct)["k"][key].to_py()


def test_shared_values_go_in_as_shared_types() -> None:
    doc = Doc()
    with doc.transaction():
        insert_map(_root(doc), "t", {"title": "x", "tags": Map({"a": True}), "log": Array([1])})
        set_fields(_root(doc)["t"], {"props": Map({"p": 1}), "title": "y"})
    entry = _root(doc)["t"]
    assert isinstance(entry["tags"], Map) and isinstance(entry["log"], Array) and isinstance(entry["props"], Map)
    assert entry.to_py() == {"title": "y", "tags": {"a": True}, "log": [1.0], "props": {"p": 1.0}}


def test_get_entry_tells_a_map_from_other_values_and_absence() -> None:
    doc = Doc()
    root = _root(doc)
    root["plain"] = {"a": 1}
    root["list"] = Array([1, 2])
    with doc.transaction():
        insert_map(root, "map", {"n": 2.0, "s": "x"})
    assert get_entry(root, "absent") == (False, None)
    assert get_entry(root, "map") == (True, {"n": 2, "s": "x"})
    assert get_entry(root, "plain") == (False, {"a": 1.0})
    is_map, value = get_entry(root, "list")
    assert not is_map and isinstance(value, Array)


def test_a_value_the_doc_cannot_hold_is_refused() -> None:
    doc = Doc()
    with doc.transaction():
        insert_map(_root(doc), "k", {"a": 1})
    with pytest.raises(TypeError):
        with doc.transaction():
            set_fields(_root(doc)["k"], {"bad": object()})


NUMBERS = st.recursive(
    st.floats(allow_nan=False) | st.integers(-(2**60), 2**60) | st.integers(-(2**53), 2**53).map(float) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)


def _typed(value: Any) -> Any:
    """`value` with each number tagged by its type, so 1 and 1.0 do not compare equal."""
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    return (type(value).__name__, value)


@settings(max_examples=300, deadline=None)
@given(NUMBERS)
def test_doc_json_gives_numbers_back_as_from_doc_number_does(value: Any) -> None:
    """Parsing with the float hook equals parsing then walking with `from_doc_number`, types included,
    for JSON text of any shape (not only what yrs prints)."""
    text = json.dumps(value)
    assert _typed(doc_json(text)) == _typed(from_doc_number(json.loads(text)))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=3), NUMBERS, max_size=5))
def test_get_entry_reads_numbers_as_from_doc_number_gives_them(fields: dict[str, Any]) -> None:
    doc = Doc()
    with doc.transaction():
        insert_map(_root(doc), "k", fields)
    is_map, value = get_entry(_root(doc), "k")
    assert is_map and _typed(value) == _typed(from_doc_number(json.loads(str(_root(doc)["k"]))))
