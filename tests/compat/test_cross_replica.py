"""Conflicts across replicas: two and three managers committing to the same entities without seeing each other.

Replicas are real (each a TransactionManager in its own directory) and synced by
exchanging state-vector diffs directly, as the transport would, without a network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest

from compat import ConflictError, ConflictResolver, ConflictStrategy, RecordedConflict, SyncConflict, Task
from compat.tx_manager import TransactionManager

from .helpers import ids, sync

Managers = Callable[[int], List[TransactionManager]]


@pytest.fixture
def managers(tmp_path: Path) -> Iterator[Managers]:
    opened: List[TransactionManager] = []

    def make(count: int) -> List[TransactionManager]:
        for n in range(count):
            opened.append(TransactionManager(tmp_path / f"agent-{len(opened)}"))
        return opened[-count:]

    yield make
    for manager in opened:
        manager.close()


def _create(manager: TransactionManager, **fields: object) -> None:
    tx = manager.begin()
    manager.write(tx, Task(id="T-1", **fields))  # type: ignore[arg-type]
    assert manager.commit(tx).success


def _edit(manager: TransactionManager, entity_id: str = "T-1", **changes: object) -> None:
    tx = manager.begin()
    task = manager.read(tx, entity_id)
    assert task is not None
    for name, value in changes.items():
        setattr(task, name, value)
    manager.write(tx, task)
    assert manager.commit(tx).success


def _state(manager: TransactionManager, entity_id: str = "T-1") -> Dict[str, object]:
    entity = manager.store.read(entity_id)
    return {} if entity is None else entity.to_dict()


def _all_conflicts(*managers: TransactionManager) -> List[List[RecordedConflict]]:
    return [ConflictResolver().recorded_conflicts(m) for m in managers]


def test_same_field_edits_are_recorded_identically_on_both_replicas(managers: Managers) -> None:
    a, b = managers(2)
    _create(a, title="base", description="d")
    sync(a, b)
    _edit(a, title="from A", status="in_progress")
    _edit(b, title="from B", priority="high")
    sync(a, b)
    on_a, on_b = _all_conflicts(a, b)
    assert len(on_a) == len(on_b) == 1
    ca, cb = on_a[0], on_b[0]
    assert ca.conflict_id == cb.conflict_id and ca.entity_id == "T-1" and ca.entity_type == "task"
    assert ca.conflict_fields == cb.conflict_fields == ["title"], "only the field both changed"
    assert (ca.ours, ca.theirs) == ({"title": "from A"}, {"title": "from B"}), "both values are kept"
    assert (cb.ours, cb.theirs) == ({"title": "from B"}, {"title": "from A"}), "ours is the local side"
    assert isinstance(ca, SyncConflict) and not ca.settled
    assert _state(a) == _state(b), "the merged entity is the same everywhere"
    merged = _state(a)
    assert merged["status"] == "in_progress" and merged["priority"] == "high"
    assert merged["title"] in ("from A", "from B")


def test_disjoint_fields_merge_without_a_conflict(managers: Managers) -> None:
    a, b = managers(2)
    _create(a, title="base")
    sync(a, b)
    _edit(a, status="completed")
    _edit(b, description="written by B", properties={"k": 1})
    sync(a, b)
    assert _all_conflicts(a, b) == [[], []]
    for manager in (a, b):
        merged = _state(manager)
        assert (merged["status"], merged["description"]) == ("completed", "written by B")
        assert merged["properties"] == {"k": 1}
        assert manager.store.read("T-1") is not None, "a merged record verifies (every field from one side)"


def test_three_replicas_record_every_pair_identically(managers: Managers) -> None:
    a, b, c = managers(3)
    _create(a, title="base")
    sync(a, b, c)
    for manager, title in ((a, "A"), (b, "B"), (c, "C")):
        _edit(manager, title=title)
    sync(a, b, c)
    found = _all_conflicts(a, b, c)
    assert [len(f) for f in found] == [3, 3, 3]
    assert ids(found[0]) == ids(found[1]) == ids(found[2])
    for conflicts in found:
        values = sorted(tuple(sorted((c.ours["title"], c.theirs["title"]))) for c in conflicts)
        assert values == [("A", "B"), ("A", "C"), ("B", "C")]
    assert _state(a) == _state(b) == _state(c)


def test_the_global_version_counts_commits_on_every_replica(managers: Managers) -> None:
    a, b = managers(2)
    _create(a, title="base")
    sync(a, b)
    _edit(a, title="1")
    _edit(a, title="2")
    _edit(b, status="blocked")
    assert (a.store.current_version(), b.store.current_version()) == (3, 2)
    sync(a, b)
    assert a.store.current_version() == b.store.current_version() == 4


def test_a_synced_update_is_a_version_conflict_inside_a_replica(managers: Managers) -> None:
    a, b = managers(2)
    _create(a, title="base")
    sync(a, b)
    tx = a.begin()
    task = a.read(tx, "T-1")
    _edit(b, title="B got there first")
    sync(a, b)
    task.title = "A, too late"
    a.write(tx, task)
    result = a.commit(tx)
    assert result.success is False and result.reason == "version_conflict"
    assert _all_conflicts(a, b) == [[], []], "seen before the commit: refused, not recorded"


@pytest.mark.parametrize("strategy", ["ours", "theirs"])
def test_ours_and_theirs_settle_the_conflict_everywhere(managers: Managers, strategy: str) -> None:
    a, b = managers(2)
    _create(a, title="base")
    sync(a, b)
    _edit(a, title="from A")
    _edit(b, title="from B")
    sync(a, b)
    conflict = ConflictResolver().recorded_conflicts(a)[0]
    resolved = ConflictResolver(ConflictStrategy(strategy)).resolve_recorded(a, conflict)
    expected = "from A" if strategy == "ours" else "from B"
    assert resolved is not None and resolved.title == expected
    sync(a, b)
    assert _all_conflicts(a, b) == [[], []]
    assert _state(a)["title"] == _state(b)["title"] == expected
    settled = ConflictResolver().recorded_conflicts(b, include_settled=True)
    assert [c.settled for c in settled] == [True] and settled[0].conflict_id == conflict.conflict_id


def test_merge_refuses_same_field_conflicts_unless_given_values(managers: Managers) -> None:
    a, b = managers(2)
    _create(a, title="base")
    sync(a, b)
    _edit(a, title="from A", description="A's words")
    _edit(b, title="from B", description="B's words")
    sync(a, b)
    conflict = ConflictResolver().recorded_conflicts(b)[0]
    resolver = ConflictResolver(ConflictStrategy.MERGE)
    with pytest.raises(ConflictError, match="Cannot auto-merge") as caught:
        resolver.resolve_recorded(b, conflict)
    assert caught.value.context["entity_id"] == "T-1"
    assert caught.value.context["conflict_fields"] == ["description", "title"]
    with pytest.raises(ConflictError, match="description"):
        resolver.resolve_recorded(b, conflict, values={"title": "merged"})
    merged = resolver.resolve_recorded(b, conflict, values={"title": "merged", "description": "both"})
    assert merged is not None and (merged.title, merged.description) == ("merged", "both")
    sync(a, b)
    assert _all_conflicts(a, b) == [[], []]
    assert _state(a)["title"] == "merged" and _state(a)["description"] == "both"


def test_concurrent_resolutions_converge_without_a_new_conflict(managers: Managers) -> None:
    a, b = managers(2)
    _create(a, title="base")
    sync(a, b)
    _edit(a, title="from A")
    _edit(b, title="from B")
    sync(a, b)
    resolver = ConflictResolver(ConflictStrategy.OURS)
    on_a = resolver.resolve_recorded(a, resolver.recorded_conflicts(a)[0])
    on_b = resolver.resolve_recorded(b, resolver.recorded_conflicts(b)[0])
    assert (on_a.title, on_b.title) == ("from A", "from B"), "each side kept its own value"
    sync(a, b)
    assert _all_conflicts(a, b) == [[], []], "resolutions of one conflict never conflict with each other"
    assert _state(a) == _state(b)
    for _ in range(3):
        sync(a, b)
        assert _all_conflicts(a, b) == [[], []] and _state(a) == _state(b), "no flapping"
    _edit(a, status="completed")
    sync(a, b)
    assert _all_conflicts(a, b) == [[], []] and _state(b)["status"] == "completed"


def test_three_replicas_settle_all_their_conflicts(managers: Managers) -> None:
    a, b, c = managers(3)
    _create(a, title="base")
    sync(a, b, c)
    for manager, title in ((a, "A"), (b, "B"), (c, "C")):
        _edit(manager, title=title)
    sync(a, b, c)
    settled = ConflictResolver(ConflictStrategy.THEIRS).resolve_all_recorded(c)
    assert len(settled) == 3
    sync(a, b, c)
    assert _all_conflicts(a, b, c) == [[], [], []]
    assert _state(a) == _state(b) == _state(c)


def test_a_resolved_conflict_is_left_alone(managers: Managers) -> None:
    a, b = managers(2)
    _create(a, title="base")
    sync(a, b)
    _edit(a, title="from A")
    _edit(b, title="from B")
    sync(a, b)
    conflict = ConflictResolver().recorded_conflicts(a)[0]
    ConflictResolver().resolve_recorded(a, conflict, "theirs")
    version = a.store.current_version()
    again = ConflictResolver().resolve_recorded(a, conflict.conflict_id, "ours")
    assert again is not None and again.title == "from B" and a.store.current_version() == version


def test_a_delete_against_an_update(managers: Managers) -> None:
    a, b = managers(2)
    _create(a, title="base")
    sync(a, b)
    assert a.store.delete("T-1")
    _edit(b, title="kept alive by B")
    sync(a, b)
    on_a, on_b = _all_conflicts(a, b)
    assert ids(on_a) == ids(on_b) and len(on_a) == 1
    conflict = on_a[0]
    assert "__deleted__" in conflict.conflict_fields and conflict.ours_deleted and not conflict.theirs_deleted
    with pytest.raises(ConflictError):
        ConflictResolver(ConflictStrategy.MERGE).resolve_recorded(a, conflict)
    restored = ConflictResolver(ConflictStrategy.THEIRS).resolve_recorded(a, conflict)
    assert restored is not None and restored.title == "kept alive by B"
    sync(a, b)
    assert _all_conflicts(a, b) == [[], []]
    assert _state(a)["title"] == _state(b)["title"] == "kept alive by B"


def test_a_delete_wins_when_its_side_is_chosen(managers: Managers) -> None:
    a, b = managers(2)
    _create(a, title="base")
    sync(a, b)
    assert a.store.delete("T-1")
    _edit(b, title="update")
    sync(a, b)
    conflict = ConflictResolver().recorded_conflicts(b)[0]
    assert ConflictResolver(ConflictStrategy.THEIRS).resolve_recorded(b, conflict) is None
    sync(a, b)
    assert _all_conflicts(a, b) == [[], []] and _state(a) == _state(b) == {}


def test_the_old_dictionary_api_still_works_beside_recorded_conflicts(managers: Managers) -> None:
    a, b = managers(2)
    _create(a, title="base")
    sync(a, b)
    _edit(a, title="from A")
    _edit(b, title="from B", version=7)
    local = {"T-1": a.store.read("T-1")}
    remote = {"T-1": b.store.read("T-1")}
    resolver = ConflictResolver(ConflictStrategy.THEIRS)
    found = resolver.detect_conflicts(local, remote)
    assert [c.conflict_fields for c in found] == [["title"]]
    assert resolver.resolve_all(found, local, remote)["T-1"] is remote["T-1"]
