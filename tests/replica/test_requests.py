"""Idempotency keys: a keyed write applies once, whoever retries it and wherever."""

from __future__ import annotations

from pathlib import Path

import pytest
from pycrdt import Map

from replica import FieldError, Replica
from replica.app.commands import execute
from replica.requests import KEEP_SECONDS, REQUESTS


def test_a_keyed_write_retried_in_another_process_applies_once(tmp_path: Path) -> None:
    with Replica.open(tmp_path) as first:
        created = execute(first, "task.add", {"title": "once", "id": "T-once"}, key="k-1")
        counted = execute(first, "counter.incr", {"name": "n", "by": 2}, key="k-2")
    with Replica.open(tmp_path) as other:
        again = execute(other, "task.add", {"title": "once", "id": "T-once"}, key="k-1")
        assert again == created
        assert execute(other, "counter.incr", {"name": "n", "by": 2}, key="k-2") == counted
        assert other.counters.value("n") == 2
        assert [t.id for t in other.tasks.list()] == ["T-once"]


def test_two_opens_racing_with_one_key_write_once(tmp_path: Path) -> None:
    with Replica.open(tmp_path) as a, Replica.open(tmp_path) as b:
        execute(a, "counter.incr", {"name": "n", "by": 5}, key="same")
        execute(b, "counter.incr", {"name": "n", "by": 5}, key="same")
        assert a.counters.value("n") == b.counters.value("n") == 5


def test_unkeyed_writes_and_bad_keys(tmp_path: Path) -> None:
    with Replica.open(tmp_path) as r:
        execute(r, "counter.incr", {"name": "n", "by": 1})
        execute(r, "counter.incr", {"name": "n", "by": 1})
        assert r.counters.value("n") == 2
        for bad in ("", "x" * 129, "naïve", "tab\there"):
            with pytest.raises(FieldError):
                execute(r, "counter.incr", {"name": "n", "by": 1}, key=bad)
        assert r.counters.value("n") == 2


def test_expired_keys_are_dropped_by_later_writes(tmp_path: Path) -> None:
    with Replica.open(tmp_path) as r:
        execute(r, "counter.incr", {"name": "n", "by": 1}, key="old")
        root = r.doc.get(REQUESTS, type=Map)
        with r.transaction():
            root["old"]["at"] = root["old"]["at"] - KEEP_SECONDS - 1
        execute(r, "counter.incr", {"name": "n", "by": 1}, key="new")
        assert len(r.requests) == 1
        execute(r, "counter.incr", {"name": "n", "by": 1}, key="old")
        assert r.counters.value("n") == 3
