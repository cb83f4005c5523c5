"""Record collections: write records as stored, read back in both layouts, junk refused, conflicts from them."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Map

from replica import Replica
from replica.records import WriteRecord

from .helpers import exchange


def test_a_write_record_stores_field_names_and_reads_their_values_from_its_data() -> None:
    """The stored record names the fields it set; their values are read from its data, stored once."""
    replica = Replica.memory()
    things = replica.collection("things")
    things.put("a", {"title": "one", "size": 1})
    things.put("a", {"title": "two", "size": 1})
    stored = replica.doc.get("things_writes", type=Map).to_py()
    assert sorted(body["fields"] for body in stored.values()) == [["size", "title"], ["title"]]
    history = things.history("a")
    assert [w.fields for w in history] == [{"size": 1, "title": "one"}, {"title": "two"}]
    assert history[-1].data == {"size": 1, "title": "two"}


def _body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"record": "a", "writer": "w", "seq": 1.0, "clock": {"w": 1.0}, "at": "t",
                            "fields": ["title"], "data": {"title": "x", "size": 2.0}, "resolves": []}
    body.update(overrides)
    return body


def test_both_layouts_of_fields_parse_to_the_same_write() -> None:
    """Field names (this version) and a field object (earlier writers) give one and the same write."""
    names = WriteRecord.parse("a|w|1", _body())
    values = WriteRecord.parse("a|w|1", _body(fields={"title": "x"}))
    assert names is not None and names == values
    assert names.fields == {"title": "x"}
    deleted = WriteRecord.parse("a|w|1", _body(fields=[], data=None))
    assert deleted is not None and deleted.deleted and deleted.fields == {}


@pytest.mark.parametrize("junk", [
    {"fields": [1, "title"]},
    {"fields": "title"},
    {"fields": None},
    {"data": ["title"]},
    {"clock": "w"},
    {"seq": "one"},
], ids=["name not text", "names not a list", "no fields", "data not an object", "clock not a map", "bad seq"])
def test_malformed_write_records_are_refused(junk: dict[str, Any]) -> None:
    """A peer's malformed write record parses to None (listed as invalid, never a crash)."""
    assert WriteRecord.parse("a|w|1", _body(**junk)) is None


def test_concurrent_writes_of_one_field_conflict_with_both_values() -> None:
    """Two replicas set one field concurrently: one conflict, both values, from the names-only layout."""
    left, right = Replica.memory(), Replica.memory()
    left.collection("things").put("a", {"title": "base", "size": 1})
    exchange(left, right)
    left.collection("things").put("a", {"title": "left", "size": 1})
    right.collection("things").put("a", {"title": "right", "size": 1})
    exchange(left, right)
    conflicts = left.collection("things").conflicts()
    assert conflicts == right.collection("things").conflicts()
    assert len(conflicts) == 1 and conflicts[0].fields == ("title",)
    assert sorted(conflicts[0].values()["title"]) == ["left", "right"]
