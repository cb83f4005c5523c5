"""compat.thought_graph on a replica: nodes, edges and clusters round-trip through the replica's graph and sync."""

from __future__ import annotations

from pathlib import Path

from compat.graph_wal import GraphWAL
from compat.thought_graph import EdgeType, NodeType, ThoughtGraph
from replica import Replica

from .helpers import sync


def _filled(replica: Replica) -> ThoughtGraph:
    graph = ThoughtGraph(replica)
    graph.add_node("q", NodeType.QUESTION, "Why?", {"urgency": 2}, {"author": "a"})
    graph.add_node("a", NodeType.FACT, {"structured": ["content"]})
    graph.add_node("h", NodeType.HYPOTHESIS, "Maybe")
    graph.add_edge("q", "a", EdgeType.ANSWERS, weight=0.5, confidence=0.25)
    graph.add_edge("h", "q", EdgeType.SIMILAR, bidirectional=True)
    graph.add_cluster("c", "Cluster", {"q", "a"}, {"color": "blue"})
    return graph


def _shape(graph: ThoughtGraph) -> tuple:
    nodes = {n.id: (n.node_type, n.content, n.properties, n.metadata) for n in graph.nodes.values()}
    edges = sorted((e.source_id, e.target_id, e.edge_type.value, e.weight, e.confidence, e.bidirectional)
                   for e in graph.edges)
    clusters = {c.id: (c.name, c.node_ids, c.properties) for c in graph.clusters.values()}
    return nodes, edges, clusters


def test_state_round_trips_through_the_replica() -> None:
    replica = Replica.memory()
    graph = _filled(replica)
    again = ThoughtGraph(replica)
    assert _shape(again) == _shape(graph)
    assert again.nodes["a"].content == {"structured": ["content"]}
    assert again.nodes["q"].metadata == {"author": "a"} and again.nodes["q"].properties == {"urgency": 2}
    assert again.edge_count() == 3 and again.has_edge("q", "h", EdgeType.SIMILAR)
    assert {n.id for n in replica.graph.nodes()} == {"q", "a", "h"}, "they are the replica's own nodes"
    assert graph.replica is replica and ThoughtGraph().replica is None


def test_changes_are_stored(tmp_path: Path) -> None:
    with Replica.open(tmp_path / "r") as replica:
        graph = _filled(replica)
        graph.update_node("q", content="Why, really?", properties={"urgency": 3})
        graph.remove_node("h")
        graph.remove_edge("q", "a", EdgeType.ANSWERS)
        merged = graph.merge_nodes("q", "a", "qa")
        assert merged.content == "Why, really? | {'structured': ['content']}"
        expected = _shape(graph)
    with Replica.open(tmp_path / "r") as reopened:
        restored = ThoughtGraph(reopened)
        assert _shape(restored) == expected
        assert set(restored.nodes) == {"qa"} and restored.clusters["c"].node_ids == {"qa"}


def test_in_place_changes_need_a_save() -> None:
    replica = Replica.memory()
    graph = _filled(replica)
    graph.nodes["h"].content = "changed in place"
    assert ThoughtGraph(replica).nodes["h"].content == "Maybe"
    graph.save_node(graph.nodes["h"])
    graph.clusters["c"].properties["size"] = 2
    graph.save_cluster(graph.clusters["c"])
    again = ThoughtGraph(replica)
    assert again.nodes["h"].content == "changed in place"
    assert again.clusters["c"].properties == {"color": "blue", "size": 2}


def test_a_peer_sees_the_graph_and_its_changes() -> None:
    a, b = Replica.memory(), Replica.memory()
    mine = _filled(a)
    theirs = ThoughtGraph(b)
    assert theirs.node_count() == 0
    sync(a, b)
    assert _shape(theirs) == _shape(mine), "a peer's changes show at the next access"
    theirs.add_node("n", NodeType.INSIGHT, "from b")
    theirs.add_edge("n", "q", EdgeType.SUPPORTS)
    sync(a, b)
    assert mine.nodes["n"].content == "from b" and mine.has_edge("n", "q", EdgeType.SUPPORTS)
    theirs.close()


def test_graph_wal_replays_into_a_replica_backed_graph(tmp_path: Path) -> None:
    wal = GraphWAL(tmp_path / "wal")
    wal.log_add_node("q", NodeType.QUESTION, "Why?", {"p": 1})
    wal.log_add_node("a", NodeType.FACT, "Because")
    wal.log_add_edge("q", "a", EdgeType.ANSWERS)
    wal.log_update_node("q", {"content": "Why not?", "properties": {"p": 2}, "metadata": {"m": 1}})
    wal.log_add_cluster("c", "C", ["q"], {"k": "v"})
    replica = Replica.memory()
    graph = ThoughtGraph(replica)
    for entry in wal.get_all_entries():
        wal.apply_entry(entry, graph)
    stored = ThoughtGraph(replica)
    assert stored.nodes["q"].content == "Why not?" and stored.nodes["q"].properties == {"p": 2}
    assert stored.nodes["q"].metadata == {"m": 1}
    assert stored.clusters["c"].properties == {"k": "v"} and stored.has_edge("q", "a", EdgeType.ANSWERS)
