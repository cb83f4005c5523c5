"""Native task writes leave write records: concurrent writes of one field are a recorded conflict everywhere.

The conflicts are a pure function of the shared state: identical ids and sides on every
replica once synced, settled with ours / theirs / merge by one write that dominates both
sides, never flapping, also when several replicas settle at once.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica import FieldError, Replica
from replica.history import COMPACT_EVERY

from .helpers import exchange, memory_replica, sync_all


def _pair() -> tuple[Replica, Replica]:
    a, b = memory_replica(101, "r-a"), memory_replica(202, "r-b")
    a.tasks.create("shared", id="T-1")
    exchange(a, b)
    return a, b


def _state(r: Replica) -> dict[str, tuple[object, ...]]:
    return {t.id: (t.title, t.status.value, t.owner, t.priority.value, tuple(sorted(t.properties.items())))
            for t in r.tasks.list()}


def test_two_owners_claimed_concurrently_are_one_conflict_on_both_replicas() -> None:
    a, b = _pair()
    a.tasks.update("T-1", owner="agent-1", status="in_progress")
    b.tasks.update("T-1", owner="agent-2", status="in_progress")
    exchange(a, b)
    on_a, on_b = a.tasks.conflicts(), b.tasks.conflicts()
    assert [c.id for c in on_a] == [c.id for c in on_b] and len(on_a) == 1
    conflict = on_a[0]
    assert conflict.fields == ("owner",), "the same value on both sides is no conflict"
    assert {conflict.left.fields["owner"], conflict.right.fields["owner"]} == {"agent-1", "agent-2"}
    assert a.tasks.get("T-1").owner == b.tasks.get("T-1").owner
    ours, theirs = a.tasks.sides(conflict)
    assert ours.fields["owner"] == "agent-1" and theirs.fields["owner"] == "agent-2"


def test_theirs_settles_everywhere_and_never_flaps() -> None:
    a, b = _pair()
    a.tasks.update("T-1", owner="agent-1")
    b.tasks.update("T-1", owner="agent-2")
    exchange(a, b)
    conflict = a.tasks.conflicts()[0]
    settled = a.tasks.resolve(conflict.id, "theirs")
    assert settled is not None and settled.owner == "agent-2"
    exchange(a, b)
    assert a.tasks.conflicts() == [] and b.tasks.conflicts() == []
    assert a.tasks.get("T-1").owner == b.tasks.get("T-1").owner == "agent-2"
    assert a.tasks.resolve(conflict.id, "ours") is not None
    exchange(a, b)
    assert a.tasks.get("T-1").owner == "agent-2", "settling a settled conflict changed it"


def test_the_same_conflict_settled_on_two_replicas_at_once_converges() -> None:
    a, b = _pair()
    a.tasks.update("T-1", owner="agent-1", properties={"estimate": 3})
    b.tasks.update("T-1", owner="agent-2", properties={"estimate": 5})
    exchange(a, b)
    conflicts = a.tasks.conflicts()
    assert len(conflicts) == 1 and conflicts[0].fields == ("owner", "properties.estimate")
    a.tasks.resolve(conflicts[0].id, "ours")
    b.tasks.resolve(conflicts[0].id, "ours")
    exchange(a, b)
    assert a.tasks.conflicts() == [] and b.tasks.conflicts() == []
    assert _state(a) == _state(b)


def test_merge_keeps_the_board_and_values_override() -> None:
    a, b = _pair()
    a.tasks.update("T-1", title="from a")
    b.tasks.update("T-1", title="from b")
    exchange(a, b)
    shown = a.tasks.get("T-1").title
    conflict = a.tasks.conflicts()[0]
    assert a.tasks.resolve(conflict.id, "merge").title == shown
    exchange(a, b)
    assert b.tasks.conflicts() == []
    a.tasks.update("T-1", title="x")
    b.tasks.update("T-1", title="y")
    exchange(a, b)
    second = b.tasks.conflicts()[0]
    assert b.tasks.resolve(second.id, "merge", {"title": "both"}).title == "both"
    exchange(a, b)
    assert a.tasks.get("T-1").title == "both" and a.tasks.conflicts() == []


def test_a_delete_against_an_edit_is_a_conflict_either_side_can_win() -> None:
    a, b = _pair()
    a.tasks.delete("T-1")
    b.tasks.update("T-1", status="completed")
    exchange(a, b)
    conflict = a.tasks.conflicts()[0]
    assert "__deleted__" in conflict.fields
    ours, _ = a.tasks.sides(conflict)
    assert ours.deleted
    assert a.tasks.resolve(conflict.id, "theirs") is not None
    exchange(a, b)
    assert a.tasks.get("T-1").status.value == b.tasks.get("T-1").status.value == "completed"
    assert a.tasks.conflicts() == b.tasks.conflicts() == []


def test_write_records_are_compacted_once_every_writer_saw_them() -> None:
    a, b = _pair()
    for i in range(30):
        a.tasks.update("T-1", title=f"a{i}")
        exchange(a, b)
        b.tasks.update("T-1", title=f"b{i}")
        exchange(a, b)
    assert len(a.tasks.history.history("T-1")) <= 2 * COMPACT_EVERY
    assert a.tasks.conflicts() == []


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), steps=st.integers(min_value=5, max_value=40))
def test_random_native_writes_with_partitions_conflict_alike_and_settle_to_one_state(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    replicas = [memory_replica(1000 + i, f"r-{i}") for i in range(3)]
    for i in range(3):
        replicas[0].tasks.create(f"task {i}", id=f"T-{i}")
    sync_all(replicas)
    for _ in range(steps):
        r = rng.choice(replicas)
        task = f"T-{rng.randrange(3)}"
        field = rng.choice(["title", "owner", "status", "properties.size"])
        value = rng.choice(["x", "y", "z"])
        if field == "status":
            r.tasks.update(task, status=rng.choice(["pending", "in_progress", "blocked"]))
        elif field == "properties.size":
            r.tasks.update(task, properties={"size": rng.randrange(3)})
        else:
            r.tasks.update(task, **{field: value})
        if rng.random() < 0.3:
            x, y = rng.sample(replicas, 2)
            exchange(x, y)
    sync_all(replicas)
    seen = [[(c.id, c.fields, c.left.key, c.right.key) for c in r.tasks.conflicts()] for r in replicas]
    assert seen[0] == seen[1] == seen[2]
    for _ in range(10):
        open_now = replicas[0].tasks.conflicts()
        if not open_now:
            break
        for conflict in open_now:
            settler = replicas[int(conflict.record_id[-1])]
            if conflict.id in {c.id for c in settler.tasks.conflicts(conflict.record_id)}:
                settler.tasks.resolve(conflict.id, rng.choice(["ours", "theirs", "merge"]))
        sync_all(replicas)
    assert all(r.tasks.conflicts() == [] for r in replicas)
    assert _state(replicas[0]) == _state(replicas[1]) == _state(replicas[2])


def test_long_values_are_kept_as_digests_and_still_conflict() -> None:
    a, b = _pair()
    a.tasks.update("T-1", description="a" * 5000)
    b.tasks.update("T-1", description="b" * 5000)
    exchange(a, b)
    conflict = a.tasks.conflicts()[0]
    assert conflict.fields == ("description",)
    assert set(conflict.left.fields["description"]) == {"sha256", "bytes"}
    shown = a.tasks.get("T-1").description
    settled = a.tasks.resolve(conflict.id, "merge")
    assert settled is not None and settled.description == shown
    exchange(a, b)
    a.tasks.update("T-1", description="c" * 5000)
    b.tasks.update("T-1", description="d" * 5000)
    exchange(a, b)
    second = a.tasks.conflicts()[0]
    ours, theirs = a.tasks.sides(second)
    shown = a.tasks.get("T-1").description
    loser = ours if shown.startswith("d") else theirs
    with pytest.raises(FieldError, match="give its value"):
        a.tasks.resolve(second.id, "ours" if loser is ours else "theirs")
    assert a.tasks.resolve(second.id, "theirs", {"description": "settled"}).description == "settled"
