"""compat.thought_graph: the ThoughtGraph-compatible graph GraphWAL replays into."""

from __future__ import annotations

import pytest

from compat.thought_graph import EdgeType, NodeType, ThoughtCluster, ThoughtGraph


def _graph(*node_ids: str) -> ThoughtGraph:
    graph = ThoughtGraph()
    for node_id in node_ids:
        graph.add_node(node_id, NodeType.CONCEPT, node_id.upper(), {"from": node_id}, {"m": node_id})
    return graph


def test_empty_graph() -> None:
    graph = ThoughtGraph()
    assert graph.nodes == {} and graph.edges == [] and graph.clusters == {}
    assert (graph.node_count(), graph.edge_count(), graph.cluster_count()) == (0, 0, 0)


def test_add_node() -> None:
    graph = ThoughtGraph()
    node = graph.add_node("q", NodeType.QUESTION, "Why?", {"k": 1})
    assert graph.nodes == {"q": node} and graph.get_node("q") is node
    assert (node.id, node.node_type, node.content, node.properties, node.metadata) == (
        "q",
        NodeType.QUESTION,
        "Why?",
        {"k": 1},
        {},
    )
    assert graph.add_node("t", "task", "by value").node_type is NodeType.TASK
    with pytest.raises(ValueError):
        graph.add_node("q", NodeType.FACT, "again")


def test_add_edge_requires_both_nodes() -> None:
    graph = _graph("a")
    with pytest.raises(ValueError):
        graph.add_edge("a", "missing", EdgeType.SUPPORTS)
    with pytest.raises(ValueError):
        graph.add_edge("missing", "a", EdgeType.SUPPORTS)
    assert graph.edge_count() == 0


def test_edges_and_lookups() -> None:
    graph = _graph("a", "b", "c")
    edge = graph.add_edge("a", "b", EdgeType.SUPPORTS, weight=0.5, confidence=0.25)
    graph.add_edge("c", "b", EdgeType.REFUTES)
    assert (edge.source_id, edge.target_id, edge.edge_type, edge.weight, edge.confidence, edge.bidirectional) == (
        "a",
        "b",
        EdgeType.SUPPORTS,
        0.5,
        0.25,
        False,
    )
    assert graph.get_edges_from("a") == [edge]
    assert len(graph.get_edges_to("b")) == 2
    graph.get_edges_from("a").clear()
    assert graph.get_edges_from("a") == [edge], "lookups return copies"
    assert graph.has_edge("a", "b", EdgeType.SUPPORTS) and not graph.has_edge("b", "a", EdgeType.SUPPORTS)


def test_bidirectional_edge_adds_the_reverse() -> None:
    graph = _graph("a", "b")
    graph.add_edge("a", "b", EdgeType.SIMILAR, bidirectional=True)
    assert graph.edge_count() == 2
    assert graph.has_edge("b", "a", EdgeType.SIMILAR)


def test_remove_edge() -> None:
    graph = _graph("a", "b")
    graph.add_edge("a", "b", EdgeType.SUPPORTS)
    assert graph.remove_edge("a", "b", EdgeType.REFUTES) is False
    assert graph.remove_edge("a", "b", EdgeType.SUPPORTS) is True
    assert graph.remove_edge("a", "b", EdgeType.SUPPORTS) is False
    assert graph.edge_count() == 0 and graph.get_edges_from("a") == [] and graph.get_edges_to("b") == []


def test_remove_node_drops_its_edges_and_memberships() -> None:
    graph = _graph("a", "b", "c")
    graph.add_edge("a", "b", EdgeType.SUPPORTS)
    graph.add_edge("b", "c", EdgeType.SUPPORTS)
    graph.add_edge("a", "c", EdgeType.SUPPORTS)
    graph.add_cluster("k", "K", {"a", "b"})
    removed = graph.remove_node("b")
    assert removed.id == "b"
    assert set(graph.nodes) == {"a", "c"}
    assert [(e.source_id, e.target_id) for e in graph.edges] == [("a", "c")]
    assert graph.clusters["k"].node_ids == {"a"}
    with pytest.raises(ValueError):
        graph.remove_node("b")


def test_add_cluster() -> None:
    graph = _graph("a")
    cluster = graph.add_cluster("k", "Name", {"a"})
    assert isinstance(cluster, ThoughtCluster) and graph.clusters["k"] is cluster
    assert (cluster.name, cluster.node_ids, cluster.properties) == ("Name", {"a"}, {})
    assert cluster.contains_node("a") and not cluster.contains_node("b")
    assert graph.add_cluster("e", "Empty").node_ids == set()
    with pytest.raises(ValueError):
        graph.add_cluster("k", "Again")


def test_merge_into_a_new_node() -> None:
    graph = _graph("a", "b", "x", "y")
    graph.add_edge("a", "x", EdgeType.SUPPORTS, weight=0.5)
    graph.add_edge("b", "x", EdgeType.SUPPORTS)
    graph.add_edge("y", "b", EdgeType.BLOCKS)
    graph.add_edge("a", "b", EdgeType.REFINES)
    graph.add_cluster("k", "K", {"a"})
    merged = graph.merge_nodes("a", "b", "ab")
    assert set(graph.nodes) == {"ab", "x", "y"} and graph.nodes["ab"] is merged
    assert merged.content == "A | B"
    assert merged.properties == {"from": "b"} and merged.metadata == {"m": "b"}
    assert merged.node_type is NodeType.CONCEPT
    edges = {(e.source_id, e.target_id, e.edge_type) for e in graph.edges}
    assert edges == {("ab", "x", EdgeType.SUPPORTS), ("y", "ab", EdgeType.BLOCKS)}, "deduplicated, no self-loop"
    assert graph.edge_count() == 2
    assert graph.clusters["k"].node_ids == {"ab"}


def test_merge_into_one_of_the_two() -> None:
    graph = _graph("a", "b", "x")
    graph.add_edge("b", "x", EdgeType.SUPPORTS)
    merged = graph.merge_nodes("a", "b", "b")
    assert set(graph.nodes) == {"b", "x"} and merged.id == "b"
    assert merged.content == "A | B"
    assert graph.has_edge("b", "x", EdgeType.SUPPORTS) and graph.edge_count() == 1


def test_merge_errors() -> None:
    graph = _graph("a", "b", "c")
    with pytest.raises(ValueError):
        graph.merge_nodes("a", "missing", "m")
    with pytest.raises(ValueError):
        graph.merge_nodes("a", "b", "c")
    assert set(graph.nodes) == {"a", "b", "c"}
