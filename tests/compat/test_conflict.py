"""compat.conflict: dictionary-based detection and OURS/THEIRS/MERGE resolution (sheet section 9)."""

from __future__ import annotations

from dataclasses import fields

import pytest

import compat
from compat.conflict import ConflictResolver, ConflictStrategy, SyncConflict
from compat.errors import ConflictError
from compat.types import Decision, Task


def _pair(local_version: int = 2, remote_version: int = 3, local_title: str = "a", remote_title: str = "b"):
    local = Task(id="T-1", title=local_title, version=local_version)
    remote = Task(id="T-1", title=remote_title, version=remote_version)
    return local, remote


def test_enum_values() -> None:
    assert {s.name: s.value for s in ConflictStrategy} == {"OURS": "ours", "THEIRS": "theirs", "MERGE": "merge"}


def test_sync_conflict_fields_are_positional_in_order() -> None:
    assert [f.name for f in fields(SyncConflict)] == [
        "entity_id",
        "entity_type",
        "local_version",
        "remote_version",
        "conflict_fields",
    ]
    conflict = SyncConflict("T-1", "task", 2, 3, ["title"])
    assert (conflict.entity_id, conflict.entity_type, conflict.local_version, conflict.remote_version) == (
        "T-1",
        "task",
        2,
        3,
    )
    assert conflict.conflict_fields == ["title"]


def test_default_strategy_is_ours() -> None:
    assert ConflictResolver().strategy is ConflictStrategy.OURS
    assert ConflictResolver(ConflictStrategy.MERGE).strategy is ConflictStrategy.MERGE


def test_entities_on_one_side_only_do_not_conflict() -> None:
    local, remote = _pair()
    resolver = ConflictResolver()
    assert resolver.detect_conflicts({"T-1": local}, {}) == []
    assert resolver.detect_conflicts({}, {"T-1": remote}) == []
    assert resolver.detect_conflicts({"T-1": local}, {"T-2": Task(id="T-2", version=9)}) == []


def test_same_version_never_conflicts_whatever_the_content() -> None:
    local, remote = _pair(local_version=3, remote_version=3)
    assert ConflictResolver().detect_conflicts({"T-1": local}, {"T-1": remote}) == []


def test_different_versions_and_titles_give_one_conflict() -> None:
    local, remote = _pair()
    conflicts = ConflictResolver().detect_conflicts({"T-1": local}, {"T-1": remote})
    assert conflicts == [SyncConflict("T-1", "task", 2, 3, ["title"])]


def test_several_fields_are_reported() -> None:
    local = Task(id="T-1", title="a", status="pending", version=2)
    remote = Task(id="T-1", title="b", status="completed", properties={"x": 1}, version=4)
    (conflict,) = ConflictResolver().detect_conflicts({"T-1": local}, {"T-1": remote})
    assert sorted(conflict.conflict_fields) == ["properties", "status", "title"]


def test_timestamps_and_version_are_never_conflict_fields() -> None:
    local = Task(id="T-1", title="same", version=2, created_at="2020-01-01T00:00:00+00:00")
    remote = Task(id="T-1", title="same", version=5, modified_at="2030-01-01T00:00:00+00:00")
    assert ConflictResolver().detect_conflicts({"T-1": local}, {"T-1": remote}) == []
    remote.title = "other"
    (conflict,) = ConflictResolver().detect_conflicts({"T-1": local}, {"T-1": remote})
    assert not {"created_at", "modified_at", "version"} & set(conflict.conflict_fields)


def test_keys_present_on_one_side_count_and_type_comes_from_local() -> None:
    local = Task(id="X-1", title="t", version=1)
    remote = Decision(id="X-1", title="t", version=2)
    (conflict,) = ConflictResolver().detect_conflicts({"X-1": local}, {"X-1": remote})
    assert conflict.entity_type == "task"
    assert {"entity_type", "rationale", "status"} <= set(conflict.conflict_fields)


def test_ours_and_theirs_return_the_identical_objects() -> None:
    local, remote = _pair()
    conflict = SyncConflict("T-1", "task", 2, 3, ["title"])
    assert ConflictResolver(ConflictStrategy.OURS).resolve(conflict, local, remote) is local
    assert ConflictResolver(ConflictStrategy.THEIRS).resolve(conflict, local, remote) is remote


def test_override_argument_wins() -> None:
    local, remote = _pair()
    conflict = SyncConflict("T-1", "task", 2, 3, ["title"])
    resolver = ConflictResolver(ConflictStrategy.OURS)
    assert resolver.resolve(conflict, local, remote, strategy=ConflictStrategy.THEIRS) is remote
    assert ConflictResolver(ConflictStrategy.THEIRS).resolve(conflict, local, remote, ConflictStrategy.OURS) is local


def test_merge_with_conflict_fields_raises() -> None:
    local, remote = _pair()
    conflict = SyncConflict("T-1", "task", 2, 3, ["title"])
    with pytest.raises(ConflictError) as caught:
        ConflictResolver(ConflictStrategy.MERGE).resolve(conflict, local, remote)
    assert "Cannot auto-merge" in caught.value.message and "T-1" in caught.value.message
    assert caught.value.context == {"entity_id": "T-1", "conflict_fields": ["title"]}


def test_merge_uses_the_stored_field_list_not_a_recomputation() -> None:
    local, remote = _pair(local_title="a", remote_title="different")
    conflict = SyncConflict("T-1", "task", 2, 3, [])
    assert ConflictResolver().resolve(conflict, local, remote, ConflictStrategy.MERGE) is remote


@pytest.mark.parametrize(
    ("local_version", "remote_version", "winner"), [(2, 3, "remote"), (5, 3, "local"), (4, 4, "local")]
)
def test_merge_without_fields_takes_the_higher_version(local_version: int, remote_version: int, winner: str) -> None:
    local, remote = _pair(local_version, remote_version)
    conflict = SyncConflict("T-1", "task", local_version, remote_version, [])
    result = ConflictResolver(ConflictStrategy.MERGE).resolve(conflict, local, remote)
    assert result is (local if winner == "local" else remote)


def test_unknown_strategy_raises_value_error() -> None:
    local, remote = _pair()
    conflict = SyncConflict("T-1", "task", 2, 3, ["title"])
    with pytest.raises(ValueError):
        ConflictResolver().resolve(conflict, local, remote, strategy="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ConflictResolver("bogus")  # type: ignore[arg-type]


def test_strategy_values_are_accepted() -> None:
    local, remote = _pair()
    conflict = SyncConflict("T-1", "task", 2, 3, ["title"])
    assert ConflictResolver("theirs").resolve(conflict, local, remote) is remote  # type: ignore[arg-type]


def test_resolve_all_uses_the_default_strategy_across_types() -> None:
    local = {"T-1": Task(id="T-1", title="a", version=2), "D-1": Decision(id="D-1", rationale="x", version=1)}
    remote = {"T-1": Task(id="T-1", title="b", version=3), "D-1": Decision(id="D-1", rationale="y", version=4)}
    theirs = ConflictResolver(ConflictStrategy.THEIRS)
    conflicts = theirs.detect_conflicts(local, remote)
    assert {c.entity_id for c in conflicts} == {"T-1", "D-1"}
    resolved = theirs.resolve_all(conflicts, local, remote)
    assert resolved == {"T-1": remote["T-1"], "D-1": remote["D-1"]}
    assert all(resolved[key] is remote[key] for key in resolved)
    ours = ConflictResolver().resolve_all(conflicts, local, remote)
    assert all(ours[key] is local[key] for key in ours)


def test_resolve_all_with_missing_ids_raises_key_error() -> None:
    conflict = SyncConflict("T-404", "task", 1, 2, ["title"])
    with pytest.raises(KeyError):
        ConflictResolver().resolve_all([conflict], {}, {"T-404": Task(id="T-404")})
    with pytest.raises(KeyError):
        ConflictResolver().resolve_all([conflict], {"T-404": Task(id="T-404")}, {})


def test_resolve_all_of_nothing() -> None:
    assert ConflictResolver().resolve_all([], {}, {}) == {}


def test_root_exports() -> None:
    assert compat.ConflictResolver is ConflictResolver
    assert compat.ConflictStrategy is ConflictStrategy
    assert compat.SyncConflict is SyncConflict
