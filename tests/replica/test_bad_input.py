"""Bad input: invalid values from the API are refused naming the field and change nothing; junk from
peers is listed as invalid and never crashes a reader; bytes that are not an update change nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map

from replica import (
    FieldError,
    InvalidRecordError,
    InvalidUpdateError,
    NotFoundError,
    Replica,
)
from replica.schema import COUNTERS, EDGES, LESSONS, NODES, TASKS

from .helpers import doc_roots

NAN = float("nan")


@pytest.fixture
def seeded() -> Replica:
    """An in-memory replica holding one task, two nodes, one edge and one counter."""
    r = Replica.memory()
    r.tasks.create("seed", id="t1", tags=["x"])
    r.graph.add_node("n1", "idea")
    r.graph.add_node("n2", "idea")
    r.graph.add_edge("n1", "n2", "rel")
    r.counters.incr("c", 2)
    return r


BAD_CALLS: list[tuple[str, str, Callable[[Replica], Any]]] = [
    ("status", "must be one of", lambda r: r.tasks.create("x", status="done")),
    ("status", "must be one of", lambda r: r.tasks.create("x", status=3)),
    ("status", "must be one of", lambda r: r.tasks.update("t1", status="finished")),
    ("priority", "must be one of", lambda r: r.tasks.create("x", priority="urgent")),
    ("priority", "must be one of", lambda r: r.tasks.update("t1", priority=None)),
    ("title", "at least 1 character", lambda r: r.tasks.create("")),
    ("title", "valid string", lambda r: r.tasks.create(None)),  # type: ignore[arg-type]
    ("title", "at least 1 character", lambda r: r.tasks.update("t1", title="")),
    ("owner", "valid string", lambda r: r.tasks.create("x", owner=5)),  # type: ignore[arg-type]
    ("tags", "list", lambda r: r.tasks.create("x", tags="abc")),
    ("tags", "list", lambda r: r.tasks.create("x", tags=5)),  # type: ignore[arg-type]
    ("tags", "list", lambda r: r.tasks.create("x", tags={"a": 1})),  # type: ignore[arg-type]
    ("tags", "list", lambda r: r.tasks.update("t1", tags=7)),
    ("tags", "list", lambda r: r.tasks.update("t1", add_tags=7)),  # type: ignore[arg-type]
    ("tags", "list", lambda r: r.tasks.update("t1", add_tags="abc")),
    ("tags", "", lambda r: r.tasks.create("x", tags=[""])),
    ("depends_on", "itself", lambda r: r.tasks.create("x", id="s", depends_on=["s"])),
    ("depends_on", "pattern", lambda r: r.tasks.create("x", depends_on=["a|b"])),
    ("properties", "not a JSON value", lambda r: r.tasks.create("x", properties={"a": object()})),
    ("properties", "2**53", lambda r: r.tasks.create("x", properties={"a": 2**53 + 1})),
    ("properties", "2**53", lambda r: r.tasks.update("t1", properties={"deep": [1, {"x": -(2**60)}]})),
    ("properties", "finite", lambda r: r.tasks.create("x", properties={"a": NAN})),
    ("properties", "not a string", lambda r: r.tasks.create("x", properties={"a": {1: 2}})),
    ("properties", "must be a map", lambda r: r.tasks.update("t1", properties=[1])),  # type: ignore[arg-type]
    ("id", "letters, digits", lambda r: r.tasks.create("x", id="a|b")),
    ("id", "letters, digits", lambda r: r.tasks.create("x", id="")),
    ("color", "no such field", lambda r: r.tasks.update("t1", color="red")),
    ("created_at", "no such field", lambda r: r.tasks.update("t1", created_at="2020-01-01")),
    ("type", "pattern", lambda r: r.graph.add_node("n9", "1bad")),
    ("type", "pattern", lambda r: r.graph.add_node("n9", "")),
    ("type", "pattern", lambda r: r.graph.update_node("n1", type="has space")),
    ("id", "letters, digits", lambda r: r.graph.add_node("a|b", "idea")),
    ("content", "valid string", lambda r: r.graph.add_node("n9", "idea", content=5)),  # type: ignore[arg-type]
    ("properties", "2**53", lambda r: r.graph.add_node("n9", "idea", properties={"big": 2**53 + 7})),
    ("weight", "finite", lambda r: r.graph.add_edge("n1", "n2", "rel", weight=NAN)),
    ("weight", "finite", lambda r: r.graph.add_edge("n2", "n1", "rel", weight=float("inf"))),
    ("weight", "number", lambda r: r.graph.add_edge("n1", "n2", "rel", weight="heavy")),  # type: ignore[arg-type]
    ("source", "letters, digits", lambda r: r.graph.add_edge("a|b", "n2", "rel")),
    ("target", "letters, digits", lambda r: r.graph.add_edge("n1", "x|y", "rel")),
    ("type", "pattern", lambda r: r.graph.add_edge("n1", "n2", "a|b")),
    ("target", "does not exist", lambda r: r.graph.add_edge("n1", "nope", "rel")),
    ("properties", "finite", lambda r: r.graph.add_edge("n1", "n2", "rel", properties={"w": NAN})),
    ("by", "positive integer", lambda r: r.counters.incr("c", 0)),
    ("by", "positive integer", lambda r: r.counters.incr("c", -3)),
    ("by", "positive integer", lambda r: r.counters.decr("c", True)),
    ("by", "positive integer", lambda r: r.counters.incr("c", 1.0)),  # type: ignore[arg-type]
    ("name", "letters, digits", lambda r: r.counters.incr("a|b")),
    ("context", "non-empty", lambda r: r.lessons.append("", "failed", "fixed")),
    ("max_depth", "positive", lambda r: r.graph.traverse("n1", max_depth=-1)),
]


@pytest.mark.parametrize(("field", "hint", "call"), BAD_CALLS, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD_CALLS)])
def test_invalid_value_is_refused_naming_the_field_and_changes_nothing(
    seeded: Replica, field: str, hint: str, call: Callable[[Replica], Any]
) -> None:
    """Every invalid value raises FieldError whose message names the field; the Doc is untouched."""
    before_sv = seeded.state_vector()
    before = doc_roots(seeded.doc)
    with pytest.raises(FieldError) as caught:
        call(seeded)
    assert caught.value.field == field
    assert f"'{field}'" in str(caught.value)
    assert hint in str(caught.value)
    assert seeded.state_vector() == before_sv
    assert doc_roots(seeded.doc) == before
    assert seeded.invalid_records() == []


def test_an_update_with_one_bad_field_writes_none_of_its_fields(seeded: Replica) -> None:
    """Validation happens before the write: a good field next to a bad one is not applied either."""
    with pytest.raises(FieldError):
        seeded.tasks.update("t1", status="in_progress", priority="bogus")
    assert seeded.tasks.get("t1").status.value == "pending"


def test_refused_write_to_a_disk_replica_logs_nothing(tmp_path: Path) -> None:
    """A refused write adds no log record."""
    with Replica.open(tmp_path, durability="paranoid") as r:
        r.tasks.create("x", id="t1")
        lsn = r.last_lsn
        with pytest.raises(FieldError):
            r.tasks.update("t1", status="nope")
        with pytest.raises(FieldError):
            r.counters.incr("c", 0)
        assert r.last_lsn == lsn
    with Replica.open(tmp_path) as r:
        assert r.tasks.get("t1").status.value == "pending"


# -- junk from peers -------------------------------------------------------------------


def junk_update(base: bytes) -> bytes:
    """A peer's update writing wrong types into the replica's own root layout."""
    doc = Doc()
    doc.apply_update(base)
    tasks = doc.get(TASKS, type=Map)
    nodes = doc.get(NODES, type=Map)
    edges = doc.get(EDGES, type=Map)
    counters = doc.get(COUNTERS, type=Map)
    lessons = doc.get(LESSONS, type=Array)
    before = doc.get_state()
    with doc.transaction():
        tasks["as-string"] = "not a map"
        tasks["bad-status"] = Map({"title": "x", "status": 42.0, "created_at": "2024-01-01T00:00:00+00:00",
                                   "updated_at": "2024-01-01T00:00:00+00:00", "tags": Map({"x": True})})
        tasks["bad-date"] = Map({"title": "x", "created_at": "yesterday", "updated_at": 5.0})
        tasks["bad|id"] = Map({"title": "x", "created_at": "2024-01-01T00:00:00+00:00",
                               "updated_at": "2024-01-01T00:00:00+00:00"})
        nodes["n-bad"] = Map({"type": 5.0, "created_at": "2024-01-01T00:00:00+00:00",
                              "updated_at": "2024-01-01T00:00:00+00:00"})
        nodes["n-str"] = "junk"
        edges["nopipe"] = Map({"weight": 1.0, "created_at": "2024-01-01T00:00:00+00:00"})
        edges["n1|rel|n-bad"] = Map({"weight": 1.0, "created_at": "2024-01-01T00:00:00+00:00"})
        edges["n1|rel|n-str"] = Map({"weight": "heavy", "created_at": "2024-01-01T00:00:00+00:00"})
        edges["n2|rel|ghost"] = Map({"weight": 2.0, "created_at": "2024-01-01T00:00:00+00:00"})
        counters["c|123"] = "abc"
        counters["c|124"] = {"p": 3.0, "n": -5.0}
        counters["c|125"] = {"p": 40.0, "n": 0.0}
        counters["c|127"] = {"p": "12x"}
        counters["noslot"] = {"p": 1.0}
        counters["c|notanid"] = {"p": 1.0}
        lessons.append("a string, not a lesson")
        lessons.append(Map({"id": "L-1"}))
    return doc.get_update(before)


def test_junk_from_a_peer_is_listed_as_invalid_and_never_crashes_a_reader(seeded: Replica) -> None:
    """Wrong types written by a peer are reported by invalid_records and skipped by every reader."""
    assert seeded.apply_update(junk_update(seeded.diff(None)), origin="peer") is True

    bad_tasks = {rec.id: rec.problems for rec in seeded.tasks.invalid()}
    assert set(bad_tasks) == {"as-string", "bad-status", "bad-date", "bad|id"}
    assert any("status" in p for p in bad_tasks["bad-status"])
    assert any("created_at" in p for p in bad_tasks["bad-date"])
    assert [t.id for t in seeded.tasks.list()] == ["t1"]
    assert seeded.tasks.list(tag="x")[0].id == "t1"
    assert seeded.tasks.get("t1").title == "seed"
    for ident in ("as-string", "bad-status"):
        with pytest.raises(InvalidRecordError) as caught:
            seeded.tasks.get(ident)
        assert caught.value.ident == ident
    assert seeded.tasks.find("absent") is None
    with pytest.raises(InvalidRecordError):
        seeded.tasks.update("as-string", title="fix")

    kinds = {(rec.kind, rec.id) for rec in seeded.invalid_records()}
    assert {("node", "n-bad"), ("node", "n-str"), ("edge", "nopipe"), ("edge", "n1|rel|n-str"),
            ("counter", "c"), ("counter", "noslot"), ("counter", "c|notanid")} <= kinds
    counter_problems = next(rec.problems for rec in seeded.invalid_records() if rec.id == "c")
    assert len(counter_problems) == 3 and all(p.startswith("slot c|12") for p in counter_problems)
    assert any(kind == "lesson" for kind, _ in kinds)

    assert [n.id for n in seeded.graph.nodes()] == ["n1", "n2"]
    # An edge to a node that exists but is invalid is listed; traversal skips the invalid node.
    assert {e.key for e in seeded.graph.edges()} == {"n1|rel|n2", "n1|rel|n-bad"}
    assert {e.key for e in seeded.graph.dangling_edges()} >= {"n2|rel|ghost"}
    assert [n.id for n, _ in seeded.graph.traverse("n1", direction="both")] == ["n1", "n2"]
    assert [n.id for n in seeded.graph.neighbours("n1")] == ["n2"]
    with pytest.raises(InvalidRecordError):
        seeded.graph.get_node("n-bad")

    assert seeded.counters.value("c") == 2 + 40
    assert seeded.counters.all() == {"c": 42}
    assert seeded.lessons.list() == []
    seeded.counters.incr("c", 1)
    assert seeded.counters.value("c") == 43
    seeded.tasks.create("still writable", id="t2")


def test_junk_from_a_peer_survives_reopen_and_is_still_only_reported(tmp_path: Path) -> None:
    """Peer junk stored in the log is replayed at open without crashing and stays listed as invalid."""
    with Replica.open(tmp_path) as r:
        r.graph.add_node("n1", "idea")
        r.graph.add_node("n2", "idea")
        r.tasks.create("ok", id="t1")
        r.apply_update(junk_update(r.diff(None)), origin="peer")
        count = len(r.invalid_records())
    with Replica.open(tmp_path) as r:
        assert len(r.invalid_records()) == count > 0
        assert [t.id for t in r.tasks.list()] == ["t1"]


@pytest.mark.parametrize("junk", [b"hello world", b"\xff" * 64, b"\x01", b"", b"\x00\x01\x02"])
def test_bytes_that_are_not_an_update_raise_and_change_nothing(tmp_path: Path, junk: bytes) -> None:
    """apply_update of junk bytes raises InvalidUpdateError, changes no state and logs nothing."""
    with Replica.open(tmp_path, durability="paranoid") as r:
        r.tasks.create("x", id="t1")
        sv, roots, lsn = r.state_vector(), doc_roots(r.doc), r.last_lsn
        with pytest.raises(InvalidUpdateError):
            r.apply_update(junk, origin="peer")
        assert (r.state_vector(), doc_roots(r.doc), r.last_lsn) == (sv, roots, lsn)
        r.tasks.create("y", id="t2")
    with Replica.open(tmp_path) as r:
        assert [t.id for t in r.tasks.list()] == ["t1", "t2"]


def test_non_bytes_update_and_bad_state_vector_are_refused(seeded: Replica) -> None:
    """A str instead of bytes, or a junk state vector, raises InvalidUpdateError."""
    with pytest.raises(InvalidUpdateError):
        seeded.apply_update("not bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidUpdateError):
        seeded.diff(b"\xff\xff\xff")


@given(junk=st.binary(max_size=200))
def test_random_bytes_either_raise_invalid_update_or_leave_readers_working(junk: bytes) -> None:
    """Whatever bytes arrive: InvalidUpdateError with nothing changed, or accepted without breaking a reader."""
    r = Replica.memory()
    r.tasks.create("x", id="t1")
    r.graph.add_node("n1", "idea")
    sv, roots = r.state_vector(), doc_roots(r.doc)
    try:
        r.apply_update(junk, origin="peer")
    except InvalidUpdateError:
        assert (r.state_vector(), doc_roots(r.doc)) == (sv, roots)
    r.tasks.list()
    r.invalid_records()
    r.graph.traverse("n1")
    r.counters.all()
    assert r.tasks.get("t1").title == "x"


def test_not_found_errors_name_the_record(seeded: Replica) -> None:
    """Missing records raise NotFoundError naming kind and id."""
    with pytest.raises(NotFoundError, match="task 'nope' not found"):
        seeded.tasks.update("nope", title="x")
    with pytest.raises(NotFoundError, match="node 'nope'"):
        seeded.graph.remove_node("nope")
    with pytest.raises(NotFoundError, match="counter 'nope'"):
        seeded.counters.get("nope")


def test_errors_quote_long_values_and_ids_cut_short_and_take_any_id(seeded: Replica) -> None:
    """A value or id over 80 characters is quoted cut, with its length; an 80-character one whole; an id
    that is not a string still makes a plain not-found error (not a TypeError while it is built)."""
    with pytest.raises(FieldError) as refused:
        seeded.tasks.create("t" * 5000)
    assert "'" + "t" * 80 + "'... (5,000 characters)" in str(refused.value) and len(str(refused.value)) < 300
    with pytest.raises(NotFoundError) as missing:
        seeded.tasks.update("n" * 100_000, title="x")
    assert str(missing.value) == "task " + repr("n" * 80) + "... (100,000 characters) not found"
    with pytest.raises(NotFoundError, match="task '" + "m" * 80 + "' not found"):
        seeded.tasks.update("m" * 80, title="x")
    with pytest.raises(NotFoundError, match="counter '5' not found"):
        seeded.counters.get(5)  # type: ignore[arg-type]
