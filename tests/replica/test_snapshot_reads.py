"""DocAccess.snapshot: several reads in one Doc transaction, one state, no writes inside."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from replica import Replica


def test_reads_in_a_snapshot_share_one_transaction_and_give_what_plain_reads_give(tmp_path: Path) -> None:
    with Replica.open(tmp_path) as r:
        r.tasks.create("first", id="T-1")
        r.graph.add_node("N-1", "idea")
        notes = r.collection("notes")
        notes.put("n1", {"text": "hello", "count": 3})
        plain = (r.tasks.get("T-1"), r.graph.get_node("N-1"), notes.get("n1"), notes.get("missing"))
        with r.access.snapshot():
            txn = r.doc._txn
            assert txn is not None
            inside = (r.tasks.get("T-1"), r.graph.get_node("N-1"), notes.get("n1"), notes.get("missing"))
            with r.access.snapshot():
                assert r.doc._txn is txn
                assert notes.get("n1") == plain[2]
            assert r.doc._txn is txn
        assert r.doc._txn is None
        assert inside == plain


def test_a_write_inside_a_snapshot_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    with Replica.open(tmp_path) as r:
        r.tasks.create("first", id="T-1")
        before = r.last_lsn
        with r.access.snapshot():
            with pytest.raises(RuntimeError, match="snapshot"):
                r.tasks.update("T-1", title="changed")
            with pytest.raises(RuntimeError, match="snapshot"):
                with r.transaction():
                    r.tasks.create("second", id="T-2")
        assert r.last_lsn == before
        assert r.tasks.get("T-1").title == "first"
        assert "T-2" not in r.tasks
        r.tasks.update("T-1", title="after")
        assert r.tasks.get("T-1").title == "after"


def test_a_snapshot_sees_one_state_and_catches_up_when_it_begins(tmp_path: Path) -> None:
    """Another open's write lands between two reads of a snapshot: both reads see the state the snapshot
    began with; the next snapshot begins by applying it."""
    with Replica.open(tmp_path) as reader, Replica.open(tmp_path) as writer:
        writer.tasks.create("one", id="T-1")
        with reader.access.snapshot():
            assert reader.tasks.get("T-1").title == "one"
            writer.tasks.update("T-1", title="two")
            assert reader.tasks.get("T-1").title == "one"
            assert "T-1" in reader.tasks
        with reader.access.snapshot():
            assert reader.tasks.get("T-1").title == "two"


def test_a_snapshot_inside_a_write_reads_the_write_in_progress(tmp_path: Path) -> None:
    with Replica.open(tmp_path) as r:
        with r.transaction():
            r.tasks.create("draft", id="T-1")
            with r.access.snapshot():
                assert r.tasks.get("T-1").title == "draft"
            r.tasks.update("T-1", title="final")
        assert r.tasks.get("T-1").title == "final"


def test_refresh_inside_a_snapshot_applies_nothing_and_says_so(tmp_path: Path) -> None:
    """refresh() in the thread's own snapshot returns False and the snapshot keeps its state; a refresh
    from another thread waits for the snapshot to end and then applies the write."""
    with Replica.open(tmp_path) as reader, Replica.open(tmp_path) as writer:
        writer.tasks.create("one", id="T-1")
        assert reader.refresh() is True
        result: list[bool] = []
        with reader.access.snapshot():
            writer.tasks.update("T-1", title="two")
            assert reader.refresh() is False
            assert reader.tasks.get("T-1").title == "one"
            other = threading.Thread(target=lambda: result.append(reader.refresh()), daemon=True)
            other.start()
            other.join(timeout=0.2)
            assert other.is_alive() and result == [], "a refresh from another thread ran inside the snapshot"
            assert reader.tasks.get("T-1").title == "one"
        other.join(timeout=30)
        assert result == [True]
        assert reader.refresh() is False
        assert reader.tasks.get("T-1").title == "two"
