"""check_json: a fast walk for plain builtin JSON, the slow one (with paths) for anything else; one answer."""

from __future__ import annotations

import enum
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.models import MAX_SAFE_INT, _explained, check_json

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=25,
)


def _answer(fn: Any, value: Any) -> Any:
    try:
        return ("ok", fn(value, "data", 0))
    except ValueError as exc:
        return ("error", str(exc))


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_the_fast_walk_answers_as_the_slow_one(value: Any) -> None:
    fast, slow = _answer(check_json, value), _answer(_explained, value)
    assert fast[0] == slow[0]
    if fast[0] == "error":
        assert fast[1] == slow[1]
    else:
        assert repr(fast[1]) == repr(slow[1])


def test_errors_name_the_path_of_the_bad_value() -> None:
    with pytest.raises(ValueError, match=r"^data\.a\.b\[1\]: nan is not a finite number$"):
        check_json({"a": {"b": [1, float("nan")]}}, "data")
    with pytest.raises(ValueError, match=r"^data\.big: integer .* beyond \+-2\*\*53"):
        check_json({"big": MAX_SAFE_INT + 1}, "data")
    with pytest.raises(ValueError, match=r"^data: key 1 is not a string$"):
        check_json({1: "x"}, "data")
    with pytest.raises(ValueError, match=r"^data\.s: set is not a JSON value$"):
        check_json({"s": {1}}, "data")


def test_depth_is_counted_the_same_on_both_walks() -> None:
    def nested(levels: int) -> dict:
        value: dict = {"leaf": "x"}
        for _ in range(levels):
            value = {"k": value}
        return value

    check_json(nested(31), "d")
    with pytest.raises(ValueError, match="nested more than 32 levels deep"):
        check_json(nested(32), "d")


def test_subclasses_of_json_types_take_the_slow_walk_and_pass() -> None:
    class Colour(str, enum.Enum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    assert check_json({"c": Colour.RED, "l": Level.HIGH}, "data") == {"c": Colour.RED, "l": Level.HIGH}


def test_the_result_is_a_copy_with_tuples_as_lists() -> None:
    inner = {"x": [1, 2]}
    value = {"a": inner, "t": (1, "b")}
    checked = check_json(value, "data")
    assert checked == {"a": {"x": [1, 2]}, "t": [1, "b"]}
    assert checked["a"] is not inner and checked["a"]["x"] is not inner["x"]


@settings(max_examples=400, deadline=None)
@given(JSON, JSON)
def test_json_equal_agrees_with_encoding(a: Any, b: Any) -> None:
    """The field comparison of write records: decided without encoding, it must agree with the encoding."""
    from replica.models import json_equal, same_json

    encoded = json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    verdict = json_equal(a, b)
    assert verdict is None or verdict == encoded
    assert same_json(a, b) == encoded
    assert json_equal(a, a) in (True, None) and same_json(a, a)


def test_json_equal_tells_numbers_apart_as_json_does() -> None:
    from replica.models import json_equal

    assert json_equal(1, 1.0) is False and json_equal(True, 1) is False and json_equal(0.0, -0.0) is False
    assert json_equal({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]}) is True
    assert json_equal({"a": 1}, {"a": 1, "b": 2}) is False
    assert json_equal((1,), [1]) is None and json_equal({1: 2}, {1: 2}) is None
