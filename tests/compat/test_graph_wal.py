"""compat.graph_wal: enums, GraphWALEntry, GraphWAL logging, replay and snapshots (sheet section 11)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
import shutil
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

import compat.graph_wal as graph_wal_module
from compat.graph_wal import EdgeType, GraphWAL, GraphWALEntry, NodeType, WALEntry
from compat.thought_graph import ThoughtGraph
from tests.compat.conftest import Child

LINE_KEYS = {"operation", "timestamp", "payload", "checksum", "doc_id", "phase", "reason", "affected_computations"}
GRAPH_KEYS = ("node_id", "node_type", "edge_type", "source_id", "target_id", "cluster_id")


def _log_lines(wal: GraphWAL) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in wal.get_current_wal_path().read_text().splitlines() if line.strip()]


def _replay(wal: GraphWAL) -> ThoughtGraph:
    graph = ThoughtGraph()
    for entry in wal.get_all_entries():
        wal.apply_entry(entry, graph)
    return graph


# ------------------------------------------------------------------ enums

NODE_VALUES = [
    "concept", "question", "decision", "fact", "task", "artifact", "insight", "hypothesis", "option",
    "evidence", "observation", "goal", "context", "constraint", "action", "entity", "location", "object",
]  # fmt: skip
EDGE_VALUES = [
    "requires", "enables", "conflicts", "supports", "refutes", "similar", "contains", "contradicts",
    "precedes", "triggers", "blocks", "answers", "raises", "explores", "observes", "suggests", "implements",
    "tests", "depends_on", "refines", "motivates", "justifies", "has_option", "has_aspect", "part_of",
    "located_in", "performs", "uses",
]  # fmt: skip


def test_node_type_members() -> None:
    assert [member.value for member in NodeType] == NODE_VALUES
    assert all(member.name.lower() == member.value for member in NodeType)


def test_edge_type_members() -> None:
    assert [member.value for member in EdgeType] == EDGE_VALUES
    assert all(member.name.lower() == member.value for member in EdgeType)


def test_lookup_by_name_and_value_and_repr() -> None:
    assert EdgeType["DEPENDS_ON"] is EdgeType("depends_on") is EdgeType.DEPENDS_ON
    assert NodeType["TASK"] is NodeType("task")
    assert repr(NodeType.TASK) == "NodeType.TASK"
    assert repr(EdgeType.HAS_OPTION) == "EdgeType.HAS_OPTION"


# ---------------------------------------------------------- GraphWALEntry


def test_entry_defaults_and_naive_local_timestamp() -> None:
    entry = GraphWALEntry(operation="add_node")
    assert all(getattr(entry, name) is None for name in GRAPH_KEYS)
    assert entry.payload == {}
    assert datetime.fromisoformat(entry.timestamp).tzinfo is None


def test_entry_checksum_covers_the_other_nine_fields() -> None:
    entry = GraphWALEntry(operation="add_edge", source_id="a", target_id="b", edge_type="supports", payload={"w": 1})
    body = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry) if f.name != "checksum"}
    assert len(body) == 9
    expected = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    assert entry.checksum == expected
    assert entry.verify()


def test_replace_with_changed_payload_and_old_checksum_fails() -> None:
    entry = GraphWALEntry(operation="add_node", node_id="n", node_type="concept", payload={"content": "x"})
    tampered = dataclasses.replace(entry, payload={"content": "y"})
    assert tampered.checksum == entry.checksum
    assert not tampered.verify()
    changes: Dict[str, Any] = {"node_id": "other", "timestamp": "other", "operation": "other"}
    for name, value in changes.items():
        assert not dataclasses.replace(entry, **{name: value}).verify()


def test_entry_json_round_trip() -> None:
    entry = GraphWALEntry(operation="add_cluster", cluster_id="c", payload={"name": "n", "node_ids": ["a"]})
    data = json.loads(entry.to_json())
    assert set(data) == {"operation", "timestamp", *GRAPH_KEYS, "payload", "checksum"}
    again = GraphWALEntry.from_json(entry.to_json())
    assert again == entry and again.verify()
    data["payload"]["name"] = "changed"
    assert not GraphWALEntry.from_json(json.dumps(data)).verify()


def test_wal_entry_conversion_round_trip() -> None:
    entry = GraphWALEntry(operation="add_node", node_id="n", node_type="task", payload={"content": "c"})
    record = entry.to_wal_entry()
    assert isinstance(record, WALEntry)
    assert record.doc_id == "n" and record.operation == "add_node" and record.timestamp == entry.timestamp
    assert record.payload == {**{key: getattr(entry, key) for key in GRAPH_KEYS}, "content": "c"}
    assert record.verify()
    assert GraphWALEntry.from_wal_entry(record) == entry


# ------------------------------------------------------------- logging


def test_layout(tmp_path: Path) -> None:
    wal = GraphWAL(str(tmp_path / "deep" / "wal"))
    root = tmp_path / "deep" / "wal"
    assert (root / "logs").is_dir() and (root / "snapshots").is_dir()
    index = json.loads((root / "wal_index.json").read_text())
    assert set(index) == {
        "latest_snapshot_id", "current_wal_file", "wal_entry_count", "last_compaction", "snapshots", "version",
    }  # fmt: skip
    assert re.fullmatch(r"wal_\d{4}-\d{2}-\d{2}_\d{6}_\d{3}\.jsonl", index["current_wal_file"])
    assert wal._writer.index.current_wal_file == index["current_wal_file"]
    assert wal.get_current_wal_path() == root / "logs" / index["current_wal_file"]
    assert wal.get_entry_count() == 0


LogCall = Callable[[GraphWAL], None]
LOG_CASES: List[Any] = [
    (
        lambda w: w.log_add_node("n1", NodeType.QUESTION, "What?", {"urgency": "high"}, {"by": "me"}),
        dict(operation="add_node", node_id="n1", node_type="question"),
        {"content": "What?", "properties": {"urgency": "high"}, "metadata": {"by": "me"}},
    ),
    (
        lambda w: w.log_add_node("n1", NodeType.FACT, "x"),
        dict(operation="add_node", node_id="n1", node_type="fact"),
        {"content": "x", "properties": {}, "metadata": {}},
    ),
    (lambda w: w.log_remove_node("n1"), dict(operation="remove_node", node_id="n1"), {}),
    (
        lambda w: w.log_update_node("n1", {"content": "new"}),
        dict(operation="update_node", node_id="n1"),
        {"updates": {"content": "new"}},
    ),
    (
        lambda w: w.log_add_edge("a", "b", EdgeType.SUPPORTS, weight=0.5, confidence=0.7, bidirectional=True),
        dict(operation="add_edge", source_id="a", target_id="b", edge_type="supports"),
        {"weight": 0.5, "confidence": 0.7, "bidirectional": True},
    ),
    (
        lambda w: w.log_add_edge("a", "b", EdgeType.BLOCKS),
        dict(operation="add_edge", source_id="a", target_id="b", edge_type="blocks"),
        {"weight": 1.0, "confidence": 1.0, "bidirectional": False},
    ),
    (
        lambda w: w.log_remove_edge("a", "b", EdgeType.REFUTES),
        dict(operation="remove_edge", source_id="a", target_id="b", edge_type="refutes"),
        {},
    ),
    (
        lambda w: w.log_add_cluster("c1", "Cluster", {"a"}, {"color": "red"}),
        dict(operation="add_cluster", cluster_id="c1"),
        {"name": "Cluster", "node_ids": ["a"], "properties": {"color": "red"}},
    ),
    (
        lambda w: w.log_add_cluster("c1", "Cluster"),
        dict(operation="add_cluster", cluster_id="c1"),
        {"name": "Cluster", "node_ids": [], "properties": {}},
    ),
    (
        lambda w: w.log_merge_nodes(["a", "b"], "ab"),
        dict(operation="merge_nodes", node_id="ab"),
        {"source_ids": ["a", "b"]},
    ),
    (lambda w: w.log_graph_operation("custom_op", {"k": 1}), dict(operation="custom_op"), {"k": 1}),
]


@pytest.mark.parametrize(("call", "expected_fields", "expected_payload"), LOG_CASES)
def test_each_log_method_writes_one_entry(
    tmp_path: Path, call: LogCall, expected_fields: Dict[str, str], expected_payload: Dict[str, Any]
) -> None:
    wal = GraphWAL(tmp_path)
    assert call(wal) is None  # type: ignore[func-returns-value]
    entries = list(wal.get_all_entries())
    assert len(entries) == 1 and wal.get_entry_count() == 1
    entry = entries[0]
    for name in GRAPH_KEYS:
        assert getattr(entry, name) == expected_fields.get(name)
    assert entry.operation == expected_fields["operation"]
    assert entry.payload == expected_payload
    assert entry.verify()
    (line,) = _log_lines(wal)
    assert set(line) == LINE_KEYS
    assert line["doc_id"] == expected_fields.get("node_id")
    assert {key: line["payload"][key] for key in GRAPH_KEYS} == {key: expected_fields.get(key) for key in GRAPH_KEYS}


def _old_record_checksum(line: Dict[str, Any]) -> str:
    body = {
        key: line[key]
        for key in ("operation", "timestamp", "doc_id", "phase", "reason", "affected_computations", "payload")
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def test_log_lines_carry_the_old_record_checksum(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    wal.log_add_node("n", NodeType.TASK, "caf\u00e9", {"k": [1, 2]})
    (line,) = _log_lines(wal)
    assert line["checksum"] == _old_record_checksum(line)
    assert (line["phase"], line["reason"], line["affected_computations"]) == (None, None, [])


def test_lines_written_by_the_old_module_are_read(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    payload: Dict[str, Any] = {
        "node_id": "task:T-1", "node_type": "task", "edge_type": None, "source_id": None,
        "target_id": None, "cluster_id": None, "content": "Old", "properties": {}, "metadata": {},
    }  # fmt: skip
    line: Dict[str, Any] = {
        "operation": "add_node", "timestamp": "2025-12-21T00:40:25.123456", "doc_id": "task:T-1",
        "phase": None, "reason": None, "affected_computations": [], "payload": payload,
    }  # fmt: skip
    line["checksum"] = _old_record_checksum(line)
    wal.get_current_wal_path().write_text(json.dumps(line) + "\n")
    (entry,) = wal.get_all_entries()
    assert (entry.node_id, entry.node_type, entry.payload["content"]) == ("task:T-1", "task", "Old")
    assert _replay(wal).nodes["task:T-1"].content == "Old"


def test_enum_arguments_must_be_members(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    with pytest.raises(AttributeError):
        wal.log_add_node("n", "concept", "x")  # type: ignore[arg-type]
    assert wal.get_entry_count() == 0


def test_every_append_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[int] = []
    monkeypatch.setattr("os.fsync", calls.append)
    wal = GraphWAL(tmp_path)
    wal.log_add_node("a", NodeType.CONCEPT, "a")
    wal.log_remove_node("a")
    assert len(calls) == 2


# ------------------------------------------------------------- reading


def test_new_wal_yields_nothing(tmp_path: Path) -> None:
    assert list(GraphWAL(tmp_path).get_all_entries()) == []


def test_second_instance_sees_earlier_entries(tmp_path: Path) -> None:
    first = GraphWAL(tmp_path)
    first.log_add_node("a", NodeType.CONCEPT, "A")
    second = GraphWAL(tmp_path)
    second.log_add_node("b", NodeType.CONCEPT, "B")
    assert [e.node_id for e in GraphWAL(tmp_path).get_all_entries()] == ["a", "b"]
    assert [e.node_id for e in first.get_all_entries()] == ["a", "b"]
    assert first.get_entry_count() == 2


def test_malformed_and_tampered_lines_are_skipped(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    wal.log_add_node("a", NodeType.CONCEPT, "A")
    wal.log_add_node("b", NodeType.CONCEPT, "B")
    path = wal.get_current_wal_path()
    lines = path.read_text().splitlines()
    tampered = json.loads(lines[0])
    tampered["payload"]["content"] = "evil"
    path.write_text("\n".join([json.dumps(tampered), "not json", "[1, 2]", '{"no": "operation"}', "", lines[1]]) + "\n")
    assert [e.node_id for e in wal.get_all_entries()] == ["b"]


def test_replay_rebuilds_the_graph(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    wal.log_add_node("q", NodeType.QUESTION, "Which approach?", {"urgency": "high"})
    wal.log_add_node("h", NodeType.HYPOTHESIS, "Use CRDTs")
    wal.log_add_edge("q", "h", EdgeType.EXPLORES, weight=0.9)
    graph = _replay(GraphWAL(tmp_path))
    assert graph.node_count() == 2 and graph.edge_count() == 1
    assert graph.nodes["q"].properties == {"urgency": "high"}
    assert graph.nodes["h"].node_type is NodeType.HYPOTHESIS
    (edge,) = graph.edges
    assert (edge.source_id, edge.target_id, edge.edge_type, edge.weight) == ("q", "h", EdgeType.EXPLORES, 0.9)


def test_entries_since_an_offset(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    for name in "abcd":
        wal.log_add_node(name, NodeType.CONCEPT, name)
    assert wal.get_entry_count() == 4
    current = wal._writer.index.current_wal_file
    assert [e.node_id for e in wal.get_entries_since(current, 2)] == ["c", "d"]
    assert [e.node_id for e in wal.get_entries_since(current, 0)] == ["a", "b", "c", "d"]
    assert list(wal.get_entries_since(current, 4)) == []


def test_rollover_above_the_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph_wal_module, "MAX_LOG_BYTES", 600)
    wal = GraphWAL(tmp_path)
    first_file = wal._writer.index.current_wal_file
    for number in range(6):
        wal.log_add_node(f"n{number}", NodeType.CONCEPT, "x" * 100)
    files = sorted(p.name for p in (tmp_path / "logs").glob("wal_*.jsonl"))
    assert len(files) >= 2 and files[0] == first_file
    assert wal._writer.index.current_wal_file != first_file
    since_start = [e.node_id for e in wal.get_entries_since(first_file, 0)]
    assert since_start == [f"n{number}" for number in range(6)]
    assert wal.get_entry_count() < 6, "the count restarts with each new file"
    in_current = [e.node_id for e in wal.get_entries_since(wal._writer.index.current_wal_file, 0)]
    assert [e.node_id for e in wal.get_all_entries()] == in_current, "from the current log file onwards"


# --------------------------------------------------------------- apply_entry


def _entry(operation: str, **kwargs: Any) -> GraphWALEntry:
    return GraphWALEntry(operation=operation, **kwargs)


def _graph_with(*node_ids: str) -> ThoughtGraph:
    graph = ThoughtGraph()
    for node_id in node_ids:
        graph.add_node(node_id, NodeType.CONCEPT, node_id.upper(), {"p": node_id}, {"m": node_id})
    return graph


def test_apply_rejects_a_bad_checksum(tmp_path: Path) -> None:
    entry = dataclasses.replace(
        _entry("add_node", node_id="a", node_type="concept", payload={"content": "x"}), payload={"content": "y"}
    )
    with pytest.raises(ValueError):
        GraphWAL(tmp_path).apply_entry(entry, ThoughtGraph())


def test_apply_add_node_is_idempotent(tmp_path: Path) -> None:
    wal, graph = GraphWAL(tmp_path), ThoughtGraph()
    entry = _entry("add_node", node_id="a", node_type="task", payload={"content": "A", "properties": {"k": 1}})
    wal.apply_entry(entry, graph)
    graph.nodes["a"].content = "kept"
    wal.apply_entry(entry, graph)
    assert graph.node_count() == 1 and graph.nodes["a"].content == "kept"
    assert graph.nodes["a"].node_type is NodeType.TASK and graph.nodes["a"].properties == {"k": 1}


def test_apply_remove_node_only_if_present(tmp_path: Path) -> None:
    wal, graph = GraphWAL(tmp_path), _graph_with("a", "b")
    graph.add_edge("a", "b", EdgeType.SUPPORTS)
    wal.apply_entry(_entry("remove_node", node_id="a"), graph)
    wal.apply_entry(_entry("remove_node", node_id="a"), graph)
    wal.apply_entry(_entry("remove_node", node_id="ghost"), graph)
    assert list(graph.nodes) == ["b"] and graph.edge_count() == 0


def test_apply_update_node(tmp_path: Path) -> None:
    wal, graph = GraphWAL(tmp_path), _graph_with("a")
    updates = {"content": "new", "properties": {"q": 2}, "metadata": {"n": 3}}
    wal.apply_entry(_entry("update_node", node_id="a", payload={"updates": updates}), graph)
    node = graph.nodes["a"]
    assert node.content == "new"
    assert node.properties == {"p": "a", "q": 2}
    assert node.metadata == {"m": "a", "n": 3}
    wal.apply_entry(_entry("update_node", node_id="ghost", payload={"updates": updates}), graph)
    assert graph.node_count() == 1


def test_apply_add_edge_needs_both_nodes_and_skips_duplicates(tmp_path: Path) -> None:
    wal, graph = GraphWAL(tmp_path), _graph_with("a", "b")
    edge = _entry(
        "add_edge", source_id="a", target_id="b", edge_type="supports", payload={"weight": 0.4, "confidence": 0.6}
    )
    wal.apply_entry(edge, graph)
    wal.apply_entry(edge, graph)
    assert graph.edge_count() == 1
    assert (graph.edges[0].weight, graph.edges[0].confidence) == (0.4, 0.6)
    wal.apply_entry(_entry("add_edge", source_id="a", target_id="b", edge_type="refutes"), graph)
    assert graph.edge_count() == 2
    wal.apply_entry(_entry("add_edge", source_id="a", target_id="ghost", edge_type="supports"), graph)
    wal.apply_entry(_entry("add_edge", source_id="ghost", target_id="a", edge_type="supports"), graph)
    assert graph.edge_count() == 2


def test_apply_remove_edge_tolerates_a_missing_edge(tmp_path: Path) -> None:
    wal, graph = GraphWAL(tmp_path), _graph_with("a", "b")
    graph.add_edge("a", "b", EdgeType.SUPPORTS)
    removal = _entry("remove_edge", source_id="a", target_id="b", edge_type="supports")
    wal.apply_entry(removal, graph)
    wal.apply_entry(removal, graph)
    assert graph.edge_count() == 0


def test_apply_add_cluster(tmp_path: Path) -> None:
    wal, graph = GraphWAL(tmp_path), _graph_with("a", "b")
    entry = _entry("add_cluster", cluster_id="c", payload={"name": "C", "node_ids": ["a", "b"], "properties": {"x": 1}})
    wal.apply_entry(entry, graph)
    cluster = graph.clusters["c"]
    assert (cluster.name, cluster.node_ids, cluster.properties) == ("C", {"a", "b"}, {"x": 1})
    other = _entry("add_cluster", cluster_id="c", payload={"name": "Other", "properties": {"y": 2}})
    wal.apply_entry(other, graph)
    assert graph.clusters["c"].name == "C" and graph.clusters["c"].properties == {"x": 1}


def test_apply_merge_of_three_sources(tmp_path: Path) -> None:
    wal, graph = GraphWAL(tmp_path), _graph_with("a", "b", "c", "z")
    graph.add_edge("a", "z", EdgeType.SUPPORTS)
    graph.add_edge("z", "c", EdgeType.BLOCKS)
    wal.apply_entry(_entry("merge_nodes", node_id="abc", payload={"source_ids": ["a", "b", "c"]}), graph)
    assert set(graph.nodes) == {"abc", "z"}
    assert graph.nodes["abc"].content == "A | B | C"
    assert {(e.source_id, e.target_id, e.edge_type) for e in graph.edges} == {
        ("abc", "z", EdgeType.SUPPORTS),
        ("z", "abc", EdgeType.BLOCKS),
    }


def test_apply_merge_of_two_sources_into_a_new_id(tmp_path: Path) -> None:
    wal, graph = GraphWAL(tmp_path), _graph_with("a", "b")
    wal.apply_entry(_entry("merge_nodes", node_id="ab", payload={"source_ids": ["a", "b"]}), graph)
    assert set(graph.nodes) == {"ab"}
    assert graph.nodes["ab"].properties == {"p": "b"}


def test_apply_merge_into_one_of_the_sources(tmp_path: Path) -> None:
    wal, graph = GraphWAL(tmp_path), _graph_with("a", "b")
    wal.apply_entry(_entry("merge_nodes", node_id="a", payload={"source_ids": ["a", "b"]}), graph)
    assert set(graph.nodes) == {"a"} and graph.nodes["a"].content == "A | B"


@pytest.mark.parametrize("sources", [["a"], [], ["a", "ghost"]])
def test_apply_merge_needs_two_existing_sources(tmp_path: Path, sources: List[str]) -> None:
    wal, graph = GraphWAL(tmp_path), _graph_with("a", "b")
    wal.apply_entry(_entry("merge_nodes", node_id="m", payload={"source_ids": sources}), graph)
    assert set(graph.nodes) == {"a", "b"}


def test_apply_ignores_unknown_operations(tmp_path: Path) -> None:
    wal, graph = GraphWAL(tmp_path), _graph_with("a")
    wal.apply_entry(_entry("rebalance", payload={"x": 1}), graph)
    assert graph.node_count() == 1


def test_full_replay_of_every_operation(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    wal.log_add_node("a", NodeType.CONCEPT, "A")
    wal.log_add_node("b", NodeType.CONCEPT, "B")
    wal.log_add_node("c", NodeType.CONCEPT, "C")
    wal.log_add_edge("a", "c", EdgeType.SUPPORTS)
    wal.log_update_node("c", {"content": "C2", "properties": {"v": 2}})
    wal.log_add_cluster("k", "K", ["c"], {"color": "blue"})
    wal.log_merge_nodes(["a", "b"], "ab")
    wal.log_add_edge("ab", "c", EdgeType.REFINES)
    wal.log_remove_edge("ab", "c", EdgeType.SUPPORTS)
    wal.log_graph_operation("note", {"text": "ignored on replay"})
    graph = _replay(wal)
    assert set(graph.nodes) == {"ab", "c"}
    assert graph.nodes["c"].content == "C2" and graph.nodes["c"].properties == {"v": 2}
    assert {(e.source_id, e.target_id, e.edge_type) for e in graph.edges} == {("ab", "c", EdgeType.REFINES)}
    assert graph.clusters["k"].properties == {"color": "blue"}
    twice = ThoughtGraph()
    for entry in wal.get_all_entries():
        wal.apply_entry(entry, twice)
        wal.apply_entry(entry, twice)
    assert set(twice.nodes) == set(graph.nodes) and twice.edge_count() == graph.edge_count()
    assert twice.nodes["c"].properties == {"v": 2} and twice.clusters["k"].node_ids == {"c"}


# ------------------------------------------------------------- snapshots


def _rich_graph() -> ThoughtGraph:
    graph = ThoughtGraph()
    graph.add_node("q", NodeType.QUESTION, "Q?", {"urgency": "high"}, {"author": "a"})
    graph.add_node("h", NodeType.HYPOTHESIS, "H", {"score": 0.5})
    graph.add_node("e", NodeType.EVIDENCE, {"structured": ["content"]})
    graph.add_edge("q", "h", EdgeType.EXPLORES, weight=0.9, confidence=0.8)
    graph.add_edge("e", "h", EdgeType.SUPPORTS, weight=0.3, confidence=0.2, bidirectional=True)
    cluster = graph.add_cluster("c1", "Reasoning", {"q", "h"})
    cluster.properties["color"] = "green"
    return graph


def _assert_same_graph(loaded: ThoughtGraph, original: ThoughtGraph) -> None:
    assert set(loaded.nodes) == set(original.nodes)
    for node_id, node in original.nodes.items():
        other = loaded.nodes[node_id]
        assert (other.node_type, other.content, other.properties, other.metadata) == (
            node.node_type,
            node.content,
            node.properties,
            node.metadata,
        )
    edge_key = lambda e: (e.source_id, e.target_id, e.edge_type, e.weight, e.confidence)  # noqa: E731
    assert sorted(map(edge_key, loaded.edges), key=str) == sorted(map(edge_key, original.edges), key=str)
    assert loaded.edge_count() == original.edge_count()
    assert {cid: (c.name, c.node_ids, c.properties) for cid, c in loaded.clusters.items()} == {
        cid: (c.name, c.node_ids, c.properties) for cid, c in original.clusters.items()
    }


@pytest.mark.parametrize("compress", [True, False])
def test_snapshot_round_trip(tmp_path: Path, compress: bool) -> None:
    wal = GraphWAL(tmp_path)
    graph = _rich_graph()
    snapshot_id = wal.create_snapshot(graph, compress=compress)
    assert re.fullmatch(r"snap_\d{8}_\d{6}_\d{6}", snapshot_id)
    suffix = ".json.gz" if compress else ".json"
    assert (tmp_path / "snapshots" / f"{snapshot_id}{suffix}").exists()
    loaded = wal.load_snapshot(snapshot_id)
    assert isinstance(loaded, ThoughtGraph) and loaded is not graph
    _assert_same_graph(loaded, graph)
    latest = GraphWAL(tmp_path).load_snapshot()
    assert latest is not None
    _assert_same_graph(latest, graph)


def test_snapshot_records_the_log_position_and_updates_the_index(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    wal.log_add_node("a", NodeType.CONCEPT, "A")
    wal.log_add_node("b", NodeType.CONCEPT, "B")
    snapshot_id = wal.create_snapshot(_replay(wal), compress=True)
    with gzip.open(tmp_path / "snapshots" / f"{snapshot_id}.json.gz", "rt") as handle:
        document = json.load(handle)
    assert document["wal_reference"] == {"wal_file": wal._writer.index.current_wal_file, "wal_offset": 2}
    assert set(document["state"]) == {"nodes", "edges", "clusters"}
    index = json.loads((tmp_path / "wal_index.json").read_text())
    assert index["latest_snapshot_id"] == snapshot_id and snapshot_id in index["snapshots"]
    wal.log_add_node("c", NodeType.CONCEPT, "C")
    ref = document["wal_reference"]
    graph = wal.load_snapshot()
    assert graph is not None
    for entry in wal.get_entries_since(ref["wal_file"], ref["wal_offset"]):
        wal.apply_entry(entry, graph)
    assert set(graph.nodes) == {"a", "b", "c"}


def test_load_snapshot_without_any_is_none(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    assert wal.load_snapshot() is None
    assert wal.load_snapshot("snap_20200101_000000_000000") is None
    assert wal.load_snapshot("../../etc/passwd") is None


def test_only_the_three_newest_snapshots_are_kept(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    ids = [wal.create_snapshot(_rich_graph(), compress=bool(n % 2)) for n in range(5)]
    assert len(set(ids)) == 5 and ids == sorted(ids)
    on_disk = sorted(p.name.split(".json")[0] for p in (tmp_path / "snapshots").glob("snap_*"))
    assert on_disk == ids[-3:]
    assert json.loads((tmp_path / "wal_index.json").read_text())["snapshots"] == ids[-3:]
    assert wal.load_snapshot(ids[0]) is None
    assert wal.load_snapshot() is not None


def _edge_record(source: str, target: str, edge_type: str, bidirectional: bool = False) -> Dict[str, Any]:
    return {
        "source_id": source,
        "target_id": target,
        "edge_type": edge_type,
        "weight": 1.0,
        "confidence": 1.0,
        "bidirectional": bidirectional,
    }


def test_loading_skips_edges_with_missing_endpoints_and_duplicate_reverse_edges(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    state = {
        "nodes": {
            "a": {"node_type": "task", "content": "A", "properties": {}, "metadata": {}},
            "b": {"node_type": "goal", "content": "B", "properties": {"k": 1}, "metadata": {}},
        },
        "edges": [
            _edge_record("a", "b", "similar", bidirectional=True),
            _edge_record("b", "a", "similar"),
            _edge_record("a", "gone", "depends_on"),
        ],
        "clusters": {},
    }
    document = {
        "snapshot_id": "snap_20251221_013705_842455",
        "timestamp": "2025-12-21T01:37:05.842455",
        "version": "2.3",
        "state": state,
        "wal_reference": {"wal_file": "wal_2025-12-21_004025_001.jsonl", "wal_offset": 0},
        "metadata": {"document_count": 0},
    }
    with gzip.open(tmp_path / "snapshots" / "snap_20251221_013705_842455.json.gz", "wt") as handle:
        json.dump(document, handle)
    graph = wal.load_snapshot("snap_20251221_013705_842455")
    assert graph is not None
    assert graph.node_count() == 2
    assert {(e.source_id, e.target_id) for e in graph.edges} == {("a", "b"), ("b", "a")}
    assert graph.edge_count() == 2


def test_corrupt_snapshot_raises_or_returns_none(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    (tmp_path / "snapshots" / "snap_20250101_000000_000000.json").write_text("{ broken")
    try:
        result = wal.load_snapshot("snap_20250101_000000_000000")
    except ValueError:
        return
    assert result is None


def test_real_snapshots_load(tmp_path: Path, real_data_dir: Path) -> None:
    wal = GraphWAL(tmp_path)
    for path in sorted((real_data_dir / "snapshots").glob("snap_*.json.gz")):
        shutil.copy(path, tmp_path / "snapshots")
        with gzip.open(path, "rt") as handle:
            state = json.load(handle)["state"]
        graph = wal.load_snapshot(path.name.split(".json")[0])
        assert graph is not None
        assert graph.node_count() == len(state["nodes"])
        assert graph.edge_count() == len({(e["source_id"], e["target_id"], e["edge_type"]) for e in state["edges"]})


def test_compact_wal(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    wal.log_add_node("a", NodeType.CONCEPT, "A")
    wal.log_add_node("b", NodeType.CONCEPT, "B")
    graph = _replay(wal)
    snapshot_id = wal.compact_wal(graph)
    assert (tmp_path / "snapshots" / f"{snapshot_id}.json.gz").exists()
    assert list((tmp_path / "logs").glob("wal_*.jsonl")) == []
    index = json.loads((tmp_path / "wal_index.json").read_text())
    assert index["wal_entry_count"] == 0 and index["last_compaction"]
    assert index["latest_snapshot_id"] == snapshot_id
    assert wal.get_entry_count() == 0
    assert list(wal.get_all_entries()) == []

    wal.log_add_node("c", NodeType.CONCEPT, "C")
    restored = wal.load_snapshot()
    assert restored is not None
    with gzip.open(tmp_path / "snapshots" / f"{snapshot_id}.json.gz", "rt") as handle:
        ref = json.load(handle)["wal_reference"]
    for entry in wal.get_entries_since(ref["wal_file"], ref["wal_offset"]):
        wal.apply_entry(entry, restored)
    assert set(restored.nodes) == {"a", "b", "c"}, "nothing logged after compaction is skipped"


# ------------------------------------------------------------ concurrency

GRAPH_WORKER = r"""
import sys
from compat.graph_wal import GraphWAL, NodeType

wal = GraphWAL(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[2])):
    wal.log_add_node(f"{sys.argv[3]}-{i}", NodeType.TASK, {"title": "t"})
print("done", flush=True)
"""


def test_processes_logging_into_one_directory(tmp_path: Path, spawn: Callable[..., Child]) -> None:
    GraphWAL(tmp_path)
    workers = [spawn(GRAPH_WORKER, str(tmp_path), "40", f"P{n}") for n in range(2)]
    for worker in workers:
        worker.expect("ready")
    for worker in workers:
        worker.send("go")
    for worker in workers:
        worker.expect("done", timeout=60)
        assert worker.finish() == 0
    wal = GraphWAL(tmp_path)
    ids = [str(entry.node_id) for entry in wal.get_all_entries()]
    assert sorted(ids) == sorted(f"P{n}-{i}" for n in range(2) for i in range(40))
    assert wal.get_entry_count() == 80
    assert _replay(wal).node_count() == 80


# ------------------------------------------------- kept-open writer (fast appends)

ROTATING_WORKER = r"""
import sys
import compat.graph_wal as graph_wal
from compat.graph_wal import GraphWAL, NodeType

graph_wal.MAX_LOG_BYTES = int(sys.argv[4])
wal = GraphWAL(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[2])):
    wal.log_add_node(f"{sys.argv[3]}-{i}", NodeType.TASK, {"title": "t"})
print("done", wal.get_entry_count(), flush=True)
"""

KILLED_MID_WRITE = r"""
import os, signal, sys
from compat.graph_wal import GraphWAL, NodeType

wal = GraphWAL(sys.argv[1])

def die_with_half_a_line(fd):
    os.ftruncate(fd, os.fstat(fd).st_size - 60)
    os.kill(os.getpid(), signal.SIGKILL)

os.fsync = die_with_half_a_line
wal.log_add_node("torn", NodeType.TASK, "never completed")
"""
"""Killed while appending: the record's last 60 bytes (newline included) never reached the file."""


def _run_worker(spawn: Callable[..., Child], script: str, *args: str) -> str:
    worker = spawn(script, *args)
    worker.expect("ready")
    worker.send("go")
    said = worker.expect("done", timeout=60)
    assert worker.finish() == 0
    return said


def _all_log_lines(root: Path) -> List[str]:
    return [line for path in sorted((root / "logs").glob("wal_*.jsonl")) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("call", "expected_fields", "expected_payload"), LOG_CASES)
def test_log_lines_are_what_the_record_classes_write(
    tmp_path: Path, call: LogCall, expected_fields: Dict[str, str], expected_payload: Dict[str, Any]
) -> None:
    wal = GraphWAL(tmp_path)
    call(wal)
    (line,) = wal.get_current_wal_path().read_text().splitlines()
    record = WALEntry.from_json(line)
    assert record.to_json() == line
    assert GraphWALEntry.from_wal_entry(record).to_wal_entry().to_json() == line


def test_appends_of_another_process_are_counted_and_followed(tmp_path: Path, spawn: Callable[..., Child]) -> None:
    wal = GraphWAL(tmp_path)
    wal.log_add_node("a0", NodeType.CONCEPT, "A")
    wal.log_add_node("a1", NodeType.CONCEPT, "A")
    _run_worker(spawn, ROTATING_WORKER, str(tmp_path), "3", "P", str(10 * 1024 * 1024))
    assert wal.get_entry_count() == 5
    wal.log_add_node("a2", NodeType.CONCEPT, "A")
    assert wal.get_entry_count() == 6 and GraphWAL(tmp_path).get_entry_count() == 6
    lines = wal.get_current_wal_path().read_text().splitlines()
    assert [WALEntry.from_json(line).doc_id for line in lines] == ["a0", "a1", "P-0", "P-1", "P-2", "a2"]
    snapshot_id = wal.create_snapshot(_replay(wal), compress=False)
    document = json.loads((tmp_path / "snapshots" / f"{snapshot_id}.json").read_text())
    assert document["wal_reference"]["wal_offset"] == 6
    assert json.loads((tmp_path / "wal_index.json").read_text())["wal_entry_count"] == 6


def test_a_line_torn_by_a_killed_writer_is_terminated(tmp_path: Path, spawn: Callable[..., Child]) -> None:
    wal = GraphWAL(tmp_path)
    wal.log_add_node("a", NodeType.CONCEPT, "A")
    killed = spawn(KILLED_MID_WRITE, str(tmp_path))
    assert killed.proc.wait(timeout=20) != 0
    path = wal.get_current_wal_path()
    assert not path.read_bytes().endswith(b"\n"), "the child left half a record"
    wal.log_add_node("b", NodeType.CONCEPT, "B")
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["doc_id"] == "b"
    assert [e.node_id for e in wal.get_all_entries()] == ["a", "b"]
    count = wal.get_entry_count()
    assert count == 3 == GraphWAL(tmp_path).get_entry_count(), "the terminated fragment is a line"
    assert list(wal.get_entries_since(path.name, count)) == [], "the count is a resume offset"
    fresh = GraphWAL(tmp_path)
    fresh.log_add_node("c", NodeType.CONCEPT, "C")
    assert [e.node_id for e in wal.get_all_entries()] == ["a", "b", "c"]


def test_a_torn_line_seen_by_a_new_instance_is_terminated(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    wal.log_add_node("a", NodeType.CONCEPT, "A")
    path = wal.get_current_wal_path()
    with open(path, "ab") as handle:
        handle.write(b'{"operation": "add_no')
    again = GraphWAL(tmp_path)
    again.log_add_node("b", NodeType.CONCEPT, "B")
    lines = path.read_text().splitlines()
    assert lines[1] == '{"operation": "add_no' and json.loads(lines[2])["doc_id"] == "b"
    assert [e.node_id for e in again.get_all_entries()] == ["a", "b"]


def test_appends_follow_a_rotation_by_another_process(tmp_path: Path, spawn: Callable[..., Child]) -> None:
    wal = GraphWAL(tmp_path)
    first = wal._writer.index.current_wal_file
    wal.log_add_node("before", NodeType.CONCEPT, "x")
    _run_worker(spawn, ROTATING_WORKER, str(tmp_path), "3", "P", "200")
    wal.log_add_node("after", NodeType.CONCEPT, "x")
    on_disk = json.loads((tmp_path / "wal_index.json").read_text())["current_wal_file"]
    assert on_disk != first and wal._writer.index.current_wal_file == on_disk
    assert [e.node_id for e in wal.get_all_entries()] == ["after"]
    assert [e.node_id for e in wal.get_entries_since(first, 0)] == ["before", "P-0", "P-1", "P-2", "after"]
    assert wal.get_entry_count() == 1


def test_appends_follow_compaction_by_another_instance(tmp_path: Path) -> None:
    writer, compactor = GraphWAL(tmp_path), GraphWAL(tmp_path)
    writer.log_add_node("a", NodeType.CONCEPT, "A")
    old_path = writer.get_current_wal_path()
    compactor.compact_wal(_replay(compactor))
    assert writer.get_entry_count() == 0
    writer.log_add_node("b", NodeType.CONCEPT, "B")
    assert not old_path.exists(), "the deleted log is not written again"
    assert [e.node_id for e in compactor.get_all_entries()] == ["b"]
    assert compactor.get_entry_count() == 1 == writer.get_entry_count()
    graph = compactor.load_snapshot()
    assert graph is not None and set(graph.nodes) == {"a"}


def test_a_removed_log_file_is_recreated(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    wal.log_add_node("a", NodeType.CONCEPT, "A")
    wal.get_current_wal_path().unlink()
    assert wal.get_entry_count() == 0
    wal.log_add_node("b", NodeType.CONCEPT, "B")
    assert [e.node_id for e in GraphWAL(tmp_path).get_all_entries()] == ["b"]
    assert wal.get_entry_count() == 1


def test_a_deleted_index_starts_a_new_log_file(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path)
    wal.log_add_node("a", NodeType.CONCEPT, "A")
    first = wal._writer.index.current_wal_file
    (tmp_path / "wal_index.json").unlink()
    wal.log_add_node("b", NodeType.CONCEPT, "B")
    index = json.loads((tmp_path / "wal_index.json").read_text())
    assert index["current_wal_file"] != first
    assert [e.node_id for e in wal.get_entries_since(first, 0)] == ["a", "b"]


def test_threads_and_instances_share_one_directory(tmp_path: Path) -> None:
    wals = [GraphWAL(tmp_path), GraphWAL(tmp_path)]

    def work(wal: GraphWAL, name: str) -> None:
        for i in range(50):
            wal.log_add_node(f"{name}-{i}", NodeType.CONCEPT, "x")

    threads = [threading.Thread(target=work, args=(wals[n % 2], f"T{n}")) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = wals[0].get_current_wal_path().read_text().splitlines()
    assert sorted(WALEntry.from_json(line).doc_id or "" for line in lines) == sorted(
        f"T{n}-{i}" for n in range(4) for i in range(50)
    )
    assert wals[0].get_entry_count() == wals[1].get_entry_count() == 200


def test_processes_logging_and_rotating_into_one_directory(tmp_path: Path, spawn: Callable[..., Child]) -> None:
    GraphWAL(tmp_path)
    workers = [spawn(ROTATING_WORKER, str(tmp_path), "60", f"P{n}", "3000") for n in range(3)]
    for worker in workers:
        worker.expect("ready")
    for worker in workers:
        worker.send("go")
    for worker in workers:
        worker.expect("done", timeout=60)
        assert worker.finish() == 0
    lines = _all_log_lines(tmp_path)
    records = [WALEntry.from_json(line) for line in lines]
    assert all(record.verify() for record in records), "no torn or interleaved lines"
    assert sorted(str(record.doc_id) for record in records) == sorted(
        f"P{n}-{i}" for n in range(3) for i in range(60)
    )
    for n in range(3):
        mine = [int(str(r.doc_id).split("-")[1]) for r in records if str(r.doc_id).startswith(f"P{n}-")]
        assert mine == list(range(60)), "each writer's entries stay in order across files"
    assert len(list((tmp_path / "logs").glob("wal_*.jsonl"))) > 3
    wal = GraphWAL(tmp_path)
    current = wal.get_current_wal_path()
    expected = len(current.read_text().splitlines()) if current.exists() else 0
    assert wal.get_entry_count() == expected
