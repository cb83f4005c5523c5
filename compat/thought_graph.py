"""A small graph of thoughts with the duck-typed surface of the old ``ThoughtGraph``.

``GraphWAL.apply_entry`` and ``GraphWAL.load_snapshot`` need a graph to act on;
this is it. Nodes, edges and clusters are plain objects exposed through the
``nodes`` dict, ``edges`` list and ``clusters`` dict the old callers read. Every
mutation goes through the private ``_put_*`` / ``_drop_*`` methods, so the
storage can later be backed by the replica's graph without touching the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional, Set, Tuple, Union


class _NamedEnum(Enum):
    """Enum whose ``repr`` is ``Class.NAME``, as the old graph enums printed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


class NodeType(_NamedEnum):
    """Kind of a thought node; values are the lower-case names."""

    CONCEPT = "concept"
    QUESTION = "question"
    DECISION = "decision"
    FACT = "fact"
    TASK = "task"
    ARTIFACT = "artifact"
    INSIGHT = "insight"
    HYPOTHESIS = "hypothesis"
    OPTION = "option"
    EVIDENCE = "evidence"
    OBSERVATION = "observation"
    GOAL = "goal"
    CONTEXT = "context"
    CONSTRAINT = "constraint"
    ACTION = "action"
    ENTITY = "entity"
    LOCATION = "location"
    OBJECT = "object"


class EdgeType(_NamedEnum):
    """Kind of relation between two thought nodes; values are the lower-case names."""

    REQUIRES = "requires"
    ENABLES = "enables"
    CONFLICTS = "conflicts"
    SUPPORTS = "supports"
    REFUTES = "refutes"
    SIMILAR = "similar"
    CONTAINS = "contains"
    CONTRADICTS = "contradicts"
    PRECEDES = "precedes"
    TRIGGERS = "triggers"
    BLOCKS = "blocks"
    ANSWERS = "answers"
    RAISES = "raises"
    EXPLORES = "explores"
    OBSERVES = "observes"
    SUGGESTS = "suggests"
    IMPLEMENTS = "implements"
    TESTS = "tests"
    DEPENDS_ON = "depends_on"
    REFINES = "refines"
    MOTIVATES = "motivates"
    JUSTIFIES = "justifies"
    HAS_OPTION = "has_option"
    HAS_ASPECT = "has_aspect"
    PART_OF = "part_of"
    LOCATED_IN = "located_in"
    PERFORMS = "performs"
    USES = "uses"


@dataclass
class ThoughtNode:
    """A node: its id, kind, content and free-form properties and metadata."""

    id: str
    node_type: NodeType
    content: Any
    properties: Dict[str, Any] = field(default_factory=dict)
    metadata: Dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class ThoughtEdge:
    """A directed, typed, weighted relation between two nodes (compared by identity)."""

    source_id: str
    target_id: str
    edge_type: EdgeType
    weight: float = 1.0
    confidence: float = 1.0
    bidirectional: bool = False


@dataclass
class ThoughtCluster:
    """A named group of node ids with its own properties."""

    id: str
    name: str
    node_ids: Set[str] = field(default_factory=set)
    properties: Dict[str, Any] = field(default_factory=dict)

    def contains_node(self, node_id: str) -> bool:
        """True when ``node_id`` belongs to the cluster."""
        return node_id in self.node_ids

    def add_node(self, node_id: str) -> None:
        """Add ``node_id`` to the cluster."""
        self.node_ids.add(node_id)


class ThoughtGraph:
    """In-memory graph of thoughts offering the old ThoughtGraph operations GraphWAL relies on."""

    def __init__(self) -> None:
        self.nodes: Dict[str, ThoughtNode] = {}
        self.edges: List[ThoughtEdge] = []
        self.clusters: Dict[str, ThoughtCluster] = {}
        self._edges_from: Dict[str, List[ThoughtEdge]] = {}
        self._edges_to: Dict[str, List[ThoughtEdge]] = {}

    # ---------------------------------------------------------------- nodes

    def add_node(
        self,
        node_id: str,
        node_type: Union[NodeType, str],
        content: Any,
        properties: Optional[Dict[str, Any]] = None,
        metadata: Optional[Dict[str, Any]] = None,
    ) -> ThoughtNode:
        """Add a node; an existing id raises ValueError."""
        if node_id in self.nodes:
            raise ValueError(f"Node {node_id} already exists")
        node = ThoughtNode(
            id=node_id,
            node_type=NodeType(node_type),
            content=content,
            properties=properties or {},
            metadata=metadata or {},
        )
        self._put_node(node)
        return node

    def remove_node(self, node_id: str) -> ThoughtNode:
        """Remove a node with all its edges and cluster memberships; a missing id raises ValueError."""
        if node_id not in self.nodes:
            raise ValueError(f"Node {node_id} not found")
        for edge in [e for e in self.edges if node_id in (e.source_id, e.target_id)]:
            self._drop_edge(edge)
        for cluster in self.clusters.values():
            if cluster.contains_node(node_id):
                cluster.node_ids.discard(node_id)
                self._put_cluster(cluster)
        return self._drop_node(node_id)

    def get_node(self, node_id: str) -> Optional[ThoughtNode]:
        """The node with ``node_id``, or None."""
        return self.nodes.get(node_id)

    def merge_nodes(self, node_id1: str, node_id2: str, merged_id: str) -> ThoughtNode:
        """Merge two nodes into ``merged_id`` (one of them or a new id): joined content, edges redirected.

        Self-loops from the merge are dropped; missing nodes or a foreign existing ``merged_id`` raise ValueError."""
        if node_id1 not in self.nodes or node_id2 not in self.nodes:
            raise ValueError("Both nodes must exist")
        if merged_id in self.nodes and merged_id not in (node_id1, node_id2):
            raise ValueError(f"Merged ID {merged_id} already exists")
        first, second = self.nodes[node_id1], self.nodes[node_id2]
        merged = ThoughtNode(
            id=merged_id,
            node_type=first.node_type if merged_id != node_id2 else second.node_type,
            content=f"{first.content} | {second.content}",
            properties={**first.properties, **second.properties},
            metadata={**first.metadata, **second.metadata},
        )
        originals = (node_id1, node_id2)
        redirected: List[Tuple[str, str, EdgeType, float, float]] = []
        for edge in self.edges:
            if edge.source_id in originals or edge.target_id in originals:
                source = merged_id if edge.source_id in originals else edge.source_id
                target = merged_id if edge.target_id in originals else edge.target_id
                redirected.append((source, target, edge.edge_type, edge.weight, edge.confidence))
        memberships = [c for c in self.clusters.values() if any(c.contains_node(n) for n in originals)]
        for node_id in originals:
            self.remove_node(node_id)
        self._put_node(merged)
        for cluster in memberships:
            cluster.add_node(merged_id)
            self._put_cluster(cluster)
        for source, target, edge_type, weight, confidence in redirected:
            if source != target and not self.has_edge(source, target, edge_type):
                self.add_edge(source, target, edge_type, weight, confidence)
        return merged

    # ---------------------------------------------------------------- edges

    def add_edge(
        self,
        from_id: str,
        to_id: str,
        edge_type: Union[EdgeType, str],
        weight: float = 1.0,
        confidence: float = 1.0,
        bidirectional: bool = False,
    ) -> ThoughtEdge:
        """Add an edge (and its reverse when bidirectional); a missing endpoint raises ValueError."""
        if from_id not in self.nodes:
            raise ValueError(f"Source node {from_id} not found")
        if to_id not in self.nodes:
            raise ValueError(f"Target node {to_id} not found")
        kind = EdgeType(edge_type)
        edge = ThoughtEdge(from_id, to_id, kind, weight, confidence, bidirectional)
        self._put_edge(edge)
        if bidirectional:
            self._put_edge(ThoughtEdge(to_id, from_id, kind, weight, confidence, False))
        return edge

    def remove_edge(self, from_id: str, to_id: str, edge_type: Union[EdgeType, str]) -> bool:
        """Remove the first edge matching the triple; False when there is none."""
        kind = EdgeType(edge_type)
        for edge in self._edges_from.get(from_id, []):
            if edge.target_id == to_id and edge.edge_type is kind:
                self._drop_edge(edge)
                return True
        return False

    def has_edge(self, from_id: str, to_id: str, edge_type: Union[EdgeType, str]) -> bool:
        """True when an edge of ``edge_type`` goes from ``from_id`` to ``to_id``."""
        kind = EdgeType(edge_type)
        return any(e.target_id == to_id and e.edge_type is kind for e in self._edges_from.get(from_id, []))

    def get_edges_from(self, node_id: str) -> List[ThoughtEdge]:
        """The outgoing edges of ``node_id`` (a copy)."""
        return list(self._edges_from.get(node_id, []))

    def get_edges_to(self, node_id: str) -> List[ThoughtEdge]:
        """The incoming edges of ``node_id`` (a copy)."""
        return list(self._edges_to.get(node_id, []))

    # ------------------------------------------------------------- clusters

    def add_cluster(self, cluster_id: str, name: str, node_ids: Optional[Set[str]] = None) -> ThoughtCluster:
        """Create a cluster and return it; an existing id raises ValueError."""
        if cluster_id in self.clusters:
            raise ValueError(f"Cluster {cluster_id} already exists")
        cluster = ThoughtCluster(id=cluster_id, name=name, node_ids=set(node_ids or ()))
        self._put_cluster(cluster)
        return cluster

    # --------------------------------------------------------------- counts

    def node_count(self) -> int:
        """Number of nodes."""
        return len(self.nodes)

    def edge_count(self) -> int:
        """Number of edges (a bidirectional edge counts twice)."""
        return len(self.edges)

    def cluster_count(self) -> int:
        """Number of clusters."""
        return len(self.clusters)

    # -------------------------------------------------------------- storage

    def _put_node(self, node: ThoughtNode) -> None:
        self.nodes[node.id] = node

    def _drop_node(self, node_id: str) -> ThoughtNode:
        self._edges_from.pop(node_id, None)
        self._edges_to.pop(node_id, None)
        return self.nodes.pop(node_id)

    def _put_edge(self, edge: ThoughtEdge) -> None:
        self.edges.append(edge)
        self._edges_from.setdefault(edge.source_id, []).append(edge)
        self._edges_to.setdefault(edge.target_id, []).append(edge)

    def _drop_edge(self, edge: ThoughtEdge) -> None:
        self.edges.remove(edge)
        self._edges_from[edge.source_id].remove(edge)
        self._edges_to[edge.target_id].remove(edge)

    def _put_cluster(self, cluster: ThoughtCluster) -> None:
        self.clusters[cluster.id] = cluster


__all__ = ["NodeType", "EdgeType", "ThoughtNode", "ThoughtEdge", "ThoughtCluster", "ThoughtGraph"]
