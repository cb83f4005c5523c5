"""Node and edge writes leave write records: concurrent writes of one field are a recorded conflict everywhere.

As for tasks (test_task_conflicts.py): identical ids and sides on every replica once synced,
settled with ours / theirs / merge by one write that dominates both sides, never flapping.
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
    a, b = memory_replica(301, "r-a"), memory_replica(402, "r-b")
    a.graph.add_node("N-1", "idea", "shared", {"size": 1})
    a.graph.add_node("N-2", "idea", "other")
    a.graph.add_edge("N-1", "N-2", "supports", 0.5)
    exchange(a, b)
    return a, b


def _graph_state(r: Replica) -> tuple[object, ...]:
    nodes = tuple((n.id, n.type, n.content, tuple(sorted(n.properties.items()))) for n in r.graph.nodes())
    edges = tuple(sorted((e.key, e.weight, tuple(sorted(e.properties.items()))) for e in r.graph.edges()))
    return nodes, edges


def test_one_node_field_written_on_two_replicas_is_one_conflict_with_one_id_on_both() -> None:
    a, b = _pair()
    a.graph.update_node("N-1", content="from a", properties={"size": 2})
    b.graph.update_node("N-1", content="from b", properties={"size": 2})
    exchange(a, b)
    on_a, on_b = a.graph.conflicts("node"), b.graph.conflicts("node")
    assert len(on_a) == 1 and [c.id for c in on_a] == [c.id for c in on_b]
    assert on_a[0].fields == ("content",), "the same value on both sides is no conflict"
    ours, theirs = a.graph.sides("node", on_a[0])
    assert ours.fields["content"] == "from a" and theirs.fields["content"] == "from b"
    assert a.graph.conflicts("edge") == [] and a.tasks.conflicts() == []


@pytest.mark.parametrize("strategy, expected", [("ours", "from a"), ("theirs", "from b"), ("merge", None)])
def test_each_strategy_settles_a_node_conflict_on_both_and_never_flaps(strategy: str, expected: str | None) -> None:
    a, b = _pair()
    a.graph.update_node("N-1", content="from a")
    b.graph.update_node("N-1", content="from b")
    exchange(a, b)
    conflict = a.graph.conflicts("node")[0]
    shown = a.graph.get_node("N-1").content
    settled = a.graph.resolve(conflict.id, strategy)
    assert settled is not None and settled.content == (expected or shown)
    exchange(a, b)
    assert a.graph.conflicts("node") == [] and b.graph.conflicts("node") == []
    assert b.graph.get_node("N-1").content == settled.content
    a.graph.resolve(conflict.id, "theirs" if strategy == "ours" else "ours")
    exchange(a, b)
    assert b.graph.get_node("N-1").content == settled.content, "settling a settled conflict changed it"
    assert len(a.graph.conflicts("node", include_settled=True)) == 1


def test_an_edge_weight_written_on_two_replicas_conflicts_and_settles_with_a_value() -> None:
    a, b = _pair()
    a.graph.add_edge("N-1", "N-2", "supports", 0.9)
    b.graph.add_edge("N-1", "N-2", "supports", 0.1, {"why": "b"})
    exchange(a, b)
    conflicts = b.graph.conflicts("edge")
    assert [c.id for c in conflicts] == [c.id for c in a.graph.conflicts("edge")] and len(conflicts) == 1
    assert conflicts[0].record_id == "N-1|supports|N-2" and conflicts[0].fields == ("weight",)
    with pytest.raises(FieldError):
        b.graph.resolve(conflicts[0].id, "merge", {"weight": "heavy"})
    edge = b.graph.resolve(conflicts[0].id, "merge", {"weight": 0.7})
    assert edge is not None and edge.weight == 0.7
    exchange(a, b)
    assert a.graph.get_edge("N-1", "N-2", "supports").weight == 0.7 and a.graph.conflicts("edge") == []


def test_a_node_removed_against_an_edit_conflicts_and_either_side_can_win() -> None:
    a, b = _pair()
    a.graph.remove_node("N-1")
    b.graph.update_node("N-1", content="kept")
    exchange(a, b)
    conflict = a.graph.conflicts("node")[0]
    assert "__deleted__" in conflict.fields
    assert a.graph.sides("node", conflict)[0].deleted
    revived = a.graph.resolve(conflict.id, "theirs")
    assert revived is not None and revived.content == "kept" and revived.properties == {"size": 1}
    exchange(a, b)
    assert b.graph.get_node("N-1").content == "kept" and b.graph.conflicts("node") == []
    a.graph.remove_node("N-1")
    b.graph.update_node("N-1", content="again")
    exchange(a, b)
    second = b.graph.conflicts("node")[0]
    assert b.graph.resolve(second.id, "theirs" if b.graph.sides("node", second)[1].deleted else "ours") is None
    exchange(a, b)
    assert not a.graph.has_node("N-1") and not b.graph.has_node("N-1")
    assert a.graph.conflicts("node") == b.graph.conflicts("node") == []


def test_the_same_edge_conflict_settled_on_two_replicas_at_once_converges() -> None:
    a, b = _pair()
    a.graph.add_edge("N-1", "N-2", "supports", 0.2)
    b.graph.add_edge("N-1", "N-2", "supports", 0.3)
    exchange(a, b)
    conflict = a.graph.conflicts("edge")[0]
    a.graph.resolve(conflict.id, "ours")
    b.graph.resolve(conflict.id, "ours")
    exchange(a, b)
    assert a.graph.conflicts("edge") == b.graph.conflicts("edge") == []
    assert _graph_state(a) == _graph_state(b)


def test_node_and_edge_write_records_are_compacted_once_every_writer_saw_them() -> None:
    a, b = _pair()
    for i in range(30):
        a.graph.update_node("N-1", content=f"a{i}")
        a.graph.add_edge("N-1", "N-2", "supports", i / 100)
        exchange(a, b)
        b.graph.update_node("N-1", content=f"b{i}")
        b.graph.add_edge("N-1", "N-2", "supports", i / 50)
        exchange(a, b)
    assert len(a.graph.node_history.history("N-1")) <= 2 * COMPACT_EVERY
    assert len(a.graph.edge_history.history("N-1|supports|N-2")) <= 2 * COMPACT_EVERY
    assert a.graph.conflicts("node") == [] and a.graph.conflicts("edge") == []


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), steps=st.integers(min_value=5, max_value=30))
def test_random_graph_writes_with_partitions_conflict_alike_and_settle_to_one_state(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    replicas = [memory_replica(2000 + i, f"r-{i}") for i in range(3)]
    for i in range(3):
        replicas[0].graph.add_node(f"N-{i}", "idea", f"node {i}")
    replicas[0].graph.add_edge("N-0", "N-1", "supports")
    sync_all(replicas)
    for _ in range(steps):
        r = rng.choice(replicas)
        node = f"N-{rng.randrange(3)}"
        choice = rng.randrange(3)
        if choice == 0:
            r.graph.update_node(node, content=rng.choice(["x", "y", "z"]))
        elif choice == 1:
            r.graph.update_node(node, properties={"size": rng.randrange(3)})
        elif r.graph.has_node("N-0") and r.graph.has_node("N-1"):
            r.graph.add_edge("N-0", "N-1", "supports", rng.choice([0.1, 0.2, 0.3]))
        if rng.random() < 0.3:
            x, y = rng.sample(replicas, 2)
            exchange(x, y)
    sync_all(replicas)
    for kind in ("node", "edge"):
        seen = [[(c.id, c.fields, c.left.key, c.right.key) for c in r.graph.conflicts(kind)] for r in replicas]
        assert seen[0] == seen[1] == seen[2]
    for _ in range(10):
        open_now = replicas[0].graph.conflicts("node") + replicas[0].graph.conflicts("edge")
        if not open_now:
            break
        for conflict in open_now:
            settler = rng.choice(replicas)
            kind = "node" if "|" not in conflict.record_id else "edge"
            if conflict.id in {c.id for c in settler.graph.conflicts(kind, conflict.record_id)}:
                settler.graph.resolve(conflict.id, rng.choice(["ours", "theirs", "merge"]))
        sync_all(replicas)
    assert all(r.graph.conflicts("node") == [] and r.graph.conflicts("edge") == [] for r in replicas)
    assert _graph_state(replicas[0]) == _graph_state(replicas[1]) == _graph_state(replicas[2])
