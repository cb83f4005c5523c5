"""compat.types: entity dataclasses, defaults, validation and round trips (sheet section 3)."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, Type

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compat
from compat.checksums import compute_checksum
from compat.errors import ValidationError
from compat.types import (
    ENTITY_CLASSES,
    VALID_EDGE_TYPES,
    VALID_ENTITY_TYPES,
    Decision,
    Edge,
    Entity,
    Epic,
    Handoff,
    Sprint,
    Task,
)


def _is_utc_iso(value: str) -> bool:
    parsed = datetime.fromisoformat(value)
    return value.endswith("+00:00") and parsed.utcoffset() == timezone.utc.utcoffset(None)


# ----------------------------------------------------------------- Entity


def test_entity_defaults() -> None:
    entity = Entity(id="x")
    assert entity.entity_type == ""
    assert entity.version == 1
    assert _is_utc_iso(entity.created_at)
    assert _is_utc_iso(entity.modified_at)


def test_entity_field_order() -> None:
    assert [f.name for f in fields(Entity)] == ["id", "entity_type", "version", "created_at", "modified_at"]


def test_entity_can_be_built_directly() -> None:
    entity = Entity(id="x", entity_type="test")
    assert (entity.id, entity.entity_type) == ("x", "test")


def test_entity_to_dict_has_exactly_five_keys() -> None:
    entity = Entity(id="x", entity_type="test", version=3)
    data = entity.to_dict()
    assert set(data) == {"id", "entity_type", "version", "created_at", "modified_at"}
    assert data["id"] == "x" and data["entity_type"] == "test" and data["version"] == 3


def test_entity_round_trip() -> None:
    entity = Entity(id="x", entity_type="test", version=7, created_at="2025-01-01T00:00:00+00:00")
    assert Entity.from_dict(entity.to_dict()) == entity


@pytest.mark.parametrize("missing", ["id", "entity_type"])
def test_entity_from_dict_requires_id_and_type(missing: str) -> None:
    data = {"id": "x", "entity_type": "test"}
    del data[missing]
    with pytest.raises(KeyError):
        Entity.from_dict(data)


def test_entity_from_dict_defaults_the_rest() -> None:
    entity = Entity.from_dict({"id": "x", "entity_type": "test"})
    assert entity.version == 1
    assert _is_utc_iso(entity.created_at) and _is_utc_iso(entity.modified_at)


def test_bump_version_adds_one_and_moves_modified_at() -> None:
    for _ in range(200):
        entity = Entity(id="x", entity_type="test")
        before = entity.modified_at
        entity.bump_version()
        assert entity.version == 2
        assert entity.modified_at != before
        assert datetime.fromisoformat(entity.modified_at) > datetime.fromisoformat(before)


def test_bump_version_keeps_created_at() -> None:
    entity = Entity(id="x", entity_type="test")
    created = entity.created_at
    entity.bump_version()
    entity.bump_version()
    assert entity.version == 3
    assert entity.created_at == created


def test_checksum_is_sixteen_characters_of_to_dict() -> None:
    entity = Entity(id="x", entity_type="test")
    assert re.fullmatch(r"[0-9a-f]{16}", entity.compute_checksum())
    assert entity.compute_checksum() == compute_checksum(entity.to_dict())


def test_checksum_changes_after_bump_and_on_any_field() -> None:
    entity = Entity(id="x", entity_type="test", modified_at="2025-01-01T00:00:00+00:00")
    original = entity.compute_checksum()
    entity.bump_version()
    assert entity.compute_checksum() != original
    task = Task(id="T-1", title="a")
    before = task.compute_checksum()
    task.version += 1
    assert task.compute_checksum() != before
    task.version -= 1
    assert task.compute_checksum() == before
    task.title = "b"
    assert task.compute_checksum() != before


# ------------------------------------------------------------------- Task


def test_task_defaults() -> None:
    task = Task(id="T-1")
    assert task.entity_type == "task"
    assert (task.title, task.status, task.priority, task.description) == ("", "pending", "medium", "")
    assert task.properties == {} and task.metadata == {}
    assert task.version == 1


def test_task_forces_entity_type() -> None:
    assert Task(id="T-1", entity_type="decision").entity_type == "task"


@pytest.mark.parametrize("status", ["pending", "in_progress", "completed", "blocked"])
def test_task_valid_statuses(status: str) -> None:
    assert Task(id="T-1", status=status).status == status


@pytest.mark.parametrize("priority", ["low", "medium", "high", "critical"])
def test_task_valid_priorities(priority: str) -> None:
    assert Task(id="T-1", priority=priority).priority == priority


def test_task_invalid_status() -> None:
    with pytest.raises(ValidationError) as caught:
        Task(id="T-1", status="done")
    assert "Invalid status" in caught.value.message and "done" in caught.value.message
    assert sorted(caught.value.context["valid_statuses"]) == ["blocked", "completed", "in_progress", "pending"]


def test_task_invalid_priority() -> None:
    with pytest.raises(ValidationError) as caught:
        Task(id="T-1", priority="urgent")
    assert "Invalid priority" in caught.value.message and "urgent" in caught.value.message
    assert sorted(caught.value.context["valid_priorities"]) == ["critical", "high", "low", "medium"]


def test_task_from_dict_needs_only_id_and_validates() -> None:
    task = Task.from_dict({"id": "T-1"})
    assert task.status == "pending" and task.entity_type == "task"
    with pytest.raises(ValidationError):
        Task.from_dict({"id": "T-1", "status": "nope"})
    with pytest.raises(KeyError):
        Task.from_dict({"title": "no id"})


def test_task_round_trip() -> None:
    task = Task(
        id="T-1",
        title="Write tests",
        status="in_progress",
        priority="high",
        description="d",
        properties={"category": "feature"},
        metadata={"updated_at": "now"},
        version=4,
    )
    data = task.to_dict()
    assert data["entity_type"] == "task"
    assert Task.from_dict(data) == task
    assert Task.from_dict(data).compute_checksum() == task.compute_checksum()


def test_to_dict_is_a_copy() -> None:
    task = Task(id="T-1", properties={"tags": ["a"]})
    task.to_dict()["properties"]["tags"].append("b")
    assert task.properties == {"tags": ["a"]}


# --------------------------------------------------------------- Decision


def test_decision_defaults_and_round_trip() -> None:
    decision = Decision(id="D-1")
    assert decision.entity_type == "decision"
    assert (decision.title, decision.rationale, decision.affects, decision.properties) == ("", "", [], {})
    full = Decision(id="D-2", title="Use CRDTs", rationale="merge", affects=["T-1", "T-2"], properties={"k": 1})
    assert Decision.from_dict(full.to_dict()) == full


def test_decision_has_no_validation() -> None:
    assert Decision(id="D-1", title="", affects=[]).entity_type == "decision"


# ------------------------------------------------------------------- Edge


def test_valid_edge_types_is_a_frozenset_of_nineteen() -> None:
    assert isinstance(VALID_EDGE_TYPES, frozenset)
    assert VALID_EDGE_TYPES == {
        "DEPENDS_ON", "BLOCKS", "CONTAINS", "RELATES_TO", "REQUIRES", "IMPLEMENTS", "SUPERSEDES",
        "DERIVED_FROM", "PARENT_OF", "CHILD_OF", "PART_OF", "REFERENCES", "CONTRADICTS", "JUSTIFIES",
        "MOTIVATES", "CAUSED_BY", "TRANSFERS", "PRODUCES", "DOCUMENTED_BY",
    }  # fmt: skip
    assert len(VALID_EDGE_TYPES) == 19


def test_valid_entity_types() -> None:
    assert VALID_ENTITY_TYPES == {
        "task", "decision", "edge", "sprint", "epic", "handoff", "claudemd_layer",
        "claudemd_version", "persona_profile", "team", "document",
    }  # fmt: skip


def test_edge_generates_its_id() -> None:
    edge = Edge(id="", source_id="T-1", target_id="T-2", edge_type="DEPENDS_ON")
    assert edge.id == "E-T-1-T-2-DEPENDS_ON"
    assert edge.entity_type == "edge"
    assert (edge.weight, edge.confidence) == (1.0, 1.0)


def test_edge_keeps_an_explicit_id() -> None:
    assert Edge(id="E-custom", source_id="a", target_id="b", edge_type="BLOCKS").id == "E-custom"


@pytest.mark.parametrize("edge_type", sorted(VALID_EDGE_TYPES))
def test_edge_accepts_every_valid_type(edge_type: str) -> None:
    assert Edge(id="", source_id="a", target_id="b", edge_type=edge_type).edge_type == edge_type


@pytest.mark.parametrize("edge_type", ["", "depends_on", "Depends_On", "LINKS_TO"])
def test_edge_rejects_invalid_empty_and_lowercase_types(edge_type: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Edge(id="", source_id="a", target_id="b", edge_type=edge_type)
    assert "Invalid edge_type" in caught.value.message
    assert repr(edge_type) in caught.value.message
    assert caught.value.context["edge_type"] == edge_type
    assert caught.value.context["valid_types"] == sorted(VALID_EDGE_TYPES)


def test_edge_default_type_is_invalid() -> None:
    with pytest.raises(ValidationError):
        Edge(id="E-1")


@pytest.mark.parametrize("weight", [-0.01, 1.01, 5])
def test_edge_weight_bounds(weight: float) -> None:
    with pytest.raises(ValidationError) as caught:
        Edge(id="", source_id="a", target_id="b", edge_type="BLOCKS", weight=weight)
    assert "weight must be in [0.0, 1.0]" in caught.value.message


@pytest.mark.parametrize("confidence", [-0.5, 1.5])
def test_edge_confidence_bounds(confidence: float) -> None:
    with pytest.raises(ValidationError) as caught:
        Edge(id="", source_id="a", target_id="b", edge_type="BLOCKS", confidence=confidence)
    assert "confidence must be in [0.0, 1.0]" in caught.value.message


@pytest.mark.parametrize("value", [0.0, 1.0, 0.5])
def test_edge_bounds_are_inclusive(value: float) -> None:
    edge = Edge(id="", source_id="a", target_id="b", edge_type="BLOCKS", weight=value, confidence=value)
    assert (edge.weight, edge.confidence) == (value, value)


def test_edge_checks_type_before_weight_and_weight_before_confidence() -> None:
    with pytest.raises(ValidationError, match="Invalid edge_type"):
        Edge(id="", edge_type="nope", weight=9, confidence=9)
    with pytest.raises(ValidationError, match="weight must be"):
        Edge(id="", edge_type="BLOCKS", weight=9, confidence=9)


def test_edge_from_dict_without_id() -> None:
    edge = Edge.from_dict({"source_id": "a", "target_id": "b", "edge_type": "CONTAINS"})
    assert edge.id == "E-a-b-CONTAINS"


def test_edge_round_trip() -> None:
    edge = Edge(id="", source_id="a", target_id="b", edge_type="PART_OF", weight=0.25, confidence=0.75)
    data = edge.to_dict()
    assert set(data) == {
        "id", "entity_type", "version", "created_at", "modified_at",
        "source_id", "target_id", "edge_type", "weight", "confidence",
    }  # fmt: skip
    assert Edge.from_dict(data) == edge


# ---------------------------------------------------- Sprint, Epic, Handoff


def test_sprint_defaults() -> None:
    sprint = Sprint(id="S-1")
    assert sprint.entity_type == "sprint"
    assert (sprint.title, sprint.status, sprint.epic_id, sprint.number, sprint.session_id) == (
        "", "available", "", 0, "",
    )  # fmt: skip
    assert (sprint.isolation, sprint.goals, sprint.notes, sprint.properties, sprint.metadata) == ([], [], [], {}, {})


def test_epic_defaults() -> None:
    epic = Epic(id="EP-1")
    assert epic.entity_type == "epic"
    assert (epic.title, epic.status, epic.phase, epic.phases, epic.properties, epic.metadata) == (
        "", "active", 1, [], {}, {},
    )  # fmt: skip


def test_handoff_defaults() -> None:
    handoff = Handoff(id="H-1")
    assert handoff.entity_type == "handoff"
    assert (handoff.source_agent, handoff.target_agent, handoff.task_id, handoff.status) == ("", "", "", "initiated")
    assert (handoff.instructions, handoff.context, handoff.result, handoff.artifacts) == ("", {}, {}, [])
    assert (handoff.accepted_at, handoff.completed_at, handoff.rejected_at, handoff.reject_reason) == ("", "", "", "")
    assert handoff.properties == {}
    assert not hasattr(handoff, "metadata")


def test_handoff_initiated_at_is_auto_set() -> None:
    handoff = Handoff(id="H-1")
    assert handoff.initiated_at and "T" in handoff.initiated_at
    assert _is_utc_iso(handoff.initiated_at)
    assert Handoff(id="H-2", initiated_at="2025-01-01T00:00:00+00:00").initiated_at == "2025-01-01T00:00:00+00:00"


FULL_VALUES: Dict[Type[Any], Dict[str, Any]] = {
    Sprint: dict(
        title="Sprint 1", status="in_progress", epic_id="EP-1", number=3, session_id="s",
        isolation=["compat/"], goals=[{"text": "g", "done": False}], notes=["n"],
        properties={"p": 1}, metadata={"m": 2},
    ),
    Epic: dict(title="Epic", status="on_hold", phase=2, phases=[{"n": 1}], properties={"p": 1}, metadata={"m": 2}),
    Handoff: dict(
        source_agent="a", target_agent="b", task_id="T-1", status="rejected", instructions="do",
        context={"c": 1}, result={"r": 2}, artifacts=["x.py"], initiated_at="2025-01-01T00:00:00+00:00",
        accepted_at="2025-01-02T00:00:00+00:00", completed_at="", rejected_at="2025-01-03T00:00:00+00:00",
        reject_reason="busy", properties={"p": 1},
    ),
}  # fmt: skip


@pytest.mark.parametrize("cls", [Sprint, Epic, Handoff])
def test_all_fields_and_round_trip(cls: Type[Entity]) -> None:
    entity = cls(id="X-1", **FULL_VALUES[cls])
    data = entity.to_dict()
    for name, value in FULL_VALUES[cls].items():
        assert data[name] == value
    again = cls.from_dict(data)
    assert again == entity
    assert again.compute_checksum() == entity.compute_checksum()


@pytest.mark.parametrize(
    ("cls", "valid"),
    [
        (Sprint, ["available", "in_progress", "completed", "blocked"]),
        (Epic, ["active", "completed", "on_hold"]),
        (Handoff, ["initiated", "accepted", "completed", "rejected"]),
    ],
)
def test_status_validation(cls: Type[Entity], valid: list[str]) -> None:
    for status in valid:
        entity: Any = cls(id="X-1", status=status)  # type: ignore[call-arg]
        assert entity.status == status
    with pytest.raises(ValidationError) as caught:
        cls(id="X-1", status="bogus")  # type: ignore[call-arg]
    assert "Invalid status" in caught.value.message and "bogus" in caught.value.message
    assert sorted(caught.value.context["valid_statuses"]) == sorted(valid)
    with pytest.raises(ValidationError):
        cls.from_dict({"id": "X-1", "status": "bogus"})


def test_entity_classes_registry() -> None:
    assert ENTITY_CLASSES == {
        "task": Task, "decision": Decision, "edge": Edge, "sprint": Sprint, "epic": Epic, "handoff": Handoff,
    }  # fmt: skip
    assert set(ENTITY_CLASSES) <= VALID_ENTITY_TYPES


def test_root_exports() -> None:
    for cls in (Entity, Task, Decision, Edge, Sprint, Epic, Handoff):
        assert getattr(compat, cls.__name__) is cls


def test_real_records_round_trip_with_their_checksums(real_data_dir: Path) -> None:
    files = sorted((real_data_dir / "entities").glob("*.json"))
    seen = set()
    for path in files:
        wrapper = json.loads(path.read_text(encoding="utf-8"))
        data = wrapper["data"]
        entity = ENTITY_CLASSES[data["entity_type"]].from_dict(data)
        assert entity.to_dict() == data, path.name
        assert entity.compute_checksum() == wrapper["_checksum"], path.name
        seen.add(data["entity_type"])
    assert seen == set(ENTITY_CLASSES)


_FIELD_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    | st.tuples(inner) | st.sets(st.integers(), max_size=2),
    max_leaves=10,
)


def _containers(value: Any) -> list[int]:
    """Ids of every mutable container inside ``value``."""
    if isinstance(value, dict):
        return [id(value)] + [i for item in value.values() for i in _containers(item)]
    if isinstance(value, (list, set)):
        return [id(value)] + [i for item in value for i in _containers(item)]
    if isinstance(value, tuple):
        return [i for item in value for i in _containers(item)]
    return []


@settings(max_examples=200, deadline=None)
@given(_FIELD_VALUES)
def test_field_copies_are_deep_copies(value: Any) -> None:
    """``to_dict`` / ``from_dict`` copy field values as ``copy.deepcopy`` would: equal, nothing mutable shared."""
    task = Task(id="T-1", properties={"v": value}, metadata={"m": [value]})
    data = task.to_dict()
    assert data == copy.deepcopy(task.to_dict())
    assert not set(_containers(data["properties"])) & set(_containers(task.properties))
    assert not set(_containers(data["metadata"])) & set(_containers(task.metadata))
    rebuilt = Task.from_dict(data)
    assert rebuilt.properties == task.properties
    assert not set(_containers(rebuilt.properties)) & set(_containers(data["properties"]))


def test_field_copies_of_deep_or_cyclic_values_fall_back_to_deepcopy() -> None:
    deep: Any = "leaf"
    for _ in range(60):
        deep = {"d": [deep]}
    cyclic: list = []
    cyclic.append(cyclic)
    task = Task(id="T-1", properties={"deep": deep, "cyclic": cyclic})
    data = task.to_dict()
    assert data["properties"]["deep"] == deep and data["properties"]["deep"] is not deep
    level = data["properties"]["cyclic"]
    for _ in range(100):
        assert level is not cyclic and len(level) == 1
        level = level[0]


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(timezone.utc)))
def test_later_than_follows_any_utc_timestamp_in_isoformat(before: datetime) -> None:
    """Past or future, with or without microseconds: the bumped time is later than ``previous`` and
    written as ``datetime.isoformat`` writes it (the text comparison shortcut changes neither)."""
    from compat.types import _later_than

    stamp = _later_than(before.isoformat())
    after = datetime.fromisoformat(stamp)
    assert after > before and stamp == after.isoformat()
    assert after >= datetime.now(timezone.utc) - timedelta(seconds=5) or before > datetime.now(timezone.utc)


def test_shallow_copies_are_copy_copy() -> None:
    import compat.versioned_store as store

    class Custom(Task):
        def __copy__(self) -> "Custom":
            twin = Custom(id=self.id, title="copied")
            return twin

    task = Task(id="T-1", title="x", properties={"a": [1]})
    twin = store._shallow_copy(task)
    assert type(twin) is Task and twin == task and twin is not task and twin.properties is task.properties
    assert store._shallow_copy(Custom(id="T-2", title="x")).title == "copied"
