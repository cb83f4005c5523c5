"""A small graph of thoughts with the duck-typed surface of the old ``ThoughtGraph``.

``GraphWAL.apply_entry`` and ``GraphWAL.load_snapshot`` need a graph to act on;
this is it. Nodes, edges and clusters are plain objects exposed through the
``nodes`` dict, ``edges`` list and ``clusters`` dict the old callers read. Every
mutation goes through the private ``_put_*`` / ``_drop_*`` methods.

``ThoughtGraph()`` lives in memory. ``ThoughtGraph(replica)`` keeps its state in the
replica's graph, so it replicates: each node is a replica node (type = the NodeType
value, content, properties plus the metadata under ``thought:metadata``), each edge a
replica edge (``confidence`` and ``bidirectional`` in its properties), each cluster a
record of the ``thought_clusters`` collection. Changes arriving from peers show up at the
next access. A node or cluster changed in place must be saved with :meth:`save_node` /
:meth:`save_cluster` (or changed through :meth:`update_node`).
"""

from __future__ import annotations

import json
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Dict, List, Optional, Set, Tuple, Union

if TYPE_CHECKING:
    from replica import Replica

METADATA_PROPERTY = "thought:metadata"
"""Replica node property holding a thought node's metadata."""
JSON_CONTENT_PROPERTY = "thought:content_json"
"""Replica node property set when the content is not a string (it is then stored as JSON text)."""
CLUSTERS_COLLECTION = "thought_clusters"
"""Replica collection holding the clusters."""
_UNSET: Any = object()


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


class _ReplicaStorage:
    """Where a replica-backed graph keeps its state, and how it learns of peers' changes."""

    def __init__(self, graph: "ThoughtGraph", replica: "Replica") -> None:
        self.replica = replica
        self.clusters = replica.collection(CLUSTERS_COLLECTION)
        self.stale = False
        ref = weakref.ref(graph)

        def on_update(update: bytes, origin: Optional[str]) -> None:
            if origin is not None and ref() is not None:
                self.stale = True

        self.unsubscribe: Callable[[], None] = replica.on_update(on_update)

    def batch(self) -> ContextManager[Any]:
        """One replica transaction around a graph operation."""
        return self.replica.transaction()

    def put_node(self, node: ThoughtNode) -> None:
        graph = self.replica.graph
        props = dict(node.properties)
        props[METADATA_PROPERTY] = node.metadata
        content = node.content
        if not isinstance(content, str):
            content = json.dumps(content, sort_keys=True)
            props[JSON_CONTENT_PROPERTY] = True
        stored = graph.find_node(node.id)
        if stored is None:
            graph.add_node(node.id, node.node_type.value, content, props)
        else:
            gone = [key for key in stored.properties if key not in props]
            graph.update_node(node.id, type=node.node_type.value, content=content, properties=props,
                              remove_properties=gone)

    def drop_node(self, node_id: str) -> None:
        if self.replica.graph.has_node(node_id):
            self.replica.graph.remove_node(node_id)

    def put_edge(self, edge: ThoughtEdge) -> None:
        self.replica.graph.add_edge(
            edge.source_id,
            edge.target_id,
            edge.edge_type.value,
            edge.weight,
            {"confidence": edge.confidence, "bidirectional": edge.bidirectional},
        )

    def drop_edge(self, edge: ThoughtEdge) -> None:
        self.replica.graph.remove_edge(edge.source_id, edge.target_id, edge.edge_type.value)

    def put_cluster(self, cluster: ThoughtCluster) -> None:
        self.clusters.put(
            cluster.id,
            {"name": cluster.name, "node_ids": sorted(cluster.node_ids), "properties": cluster.properties},
        )

    def load(self) -> Tuple[List[ThoughtNode], List[ThoughtEdge], List[ThoughtCluster]]:
        """Everything the replica holds that a thought graph can show (nodes of a NodeType, edges of an EdgeType)."""
        node_types = {t.value for t in NodeType}
        edge_types = {t.value for t in EdgeType}
        nodes = []
        for stored in self.replica.graph.nodes():
            if stored.type not in node_types:
                continue
            props = dict(stored.properties)
            metadata = props.pop(METADATA_PROPERTY, {})
            content: Any = stored.content
            if props.pop(JSON_CONTENT_PROPERTY, False):
                try:
                    content = json.loads(content)
                except ValueError:
                    pass
            nodes.append(ThoughtNode(stored.id, NodeType(stored.type), content, props,
                                     metadata if isinstance(metadata, dict) else {}))
        edges = []
        for stored_edge in self.replica.graph.edges():
            if stored_edge.type not in edge_types:
                continue
            props = stored_edge.properties
            edges.append(ThoughtEdge(stored_edge.source, stored_edge.target, EdgeType(stored_edge.type),
                                     stored_edge.weight, float(props.get("confidence", 1.0)),
                                     bool(props.get("bidirectional", False))))
        clusters = []
        for cluster_id, data in sorted(self.clusters.all().items()):
            clusters.append(ThoughtCluster(cluster_id, str(data.get("name", "")),
                                           set(data.get("node_ids") or ()), dict(data.get("properties") or {})))
        return nodes, edges, clusters


class ThoughtGraph:
    """Graph of thoughts offering the old ThoughtGraph operations GraphWAL relies on.

    In memory by default; pass a replica to keep (and share) the state in its graph."""

    def __init__(self, replica: Optional["Replica"] = None) -> None:
        self._nodes: Dict[str, ThoughtNode] = {}
        self._edges: List[ThoughtEdge] = []
        self._clusters: Dict[str, ThoughtCluster] = {}
        self._edges_from: Dict[str, List[ThoughtEdge]] = {}
        self._edges_to: Dict[str, List[ThoughtEdge]] = {}
        self._storage: Optional[_ReplicaStorage] = None
        if replica is not None:
            self._storage = _ReplicaStorage(self, replica)
            self._reload()

    # ------------------------------------------------------------- storage view

    @property
    def replica(self) -> Optional["Replica"]:
        """The replica holding this graph, or None for an in-memory graph."""
        return self._storage.replica if self._storage is not None else None

    @property
    def nodes(self) -> Dict[str, ThoughtNode]:
        """Nodes by id."""
        self._refresh()
        return self._nodes

    @property
    def edges(self) -> List[ThoughtEdge]:
        """Every edge (a bidirectional edge is two)."""
        self._refresh()
        return self._edges

    @property
    def clusters(self) -> Dict[str, ThoughtCluster]:
        """Clusters by id."""
        self._refresh()
        return self._clusters

    def _refresh(self) -> None:
        if self._storage is not None and self._storage.stale:
            self._reload()

    def _reload(self) -> None:
        """Rebuild the in-memory view from the replica."""
        assert self._storage is not None
        self._storage.stale = False
        nodes, edges, clusters = self._storage.load()
        self._nodes = {node.id: node for node in nodes}
        self._edges, self._edges_from, self._edges_to = [], {}, {}
        for edge in edges:
            self._index_edge(edge)
        self._clusters = {cluster.id: cluster for cluster in clusters}

    def _batch(self) -> ContextManager[Any]:
        return self._storage.batch() if self._storage is not None else nullcontext()

    def save_node(self, node: ThoughtNode) -> None:
        """Store a node changed in place (needed only for a replica-backed graph)."""
        self._put_node(node)

    def save_cluster(self, cluster: ThoughtCluster) -> None:
        """Store a cluster changed in place (needed only for a replica-backed graph)."""
        self._put_cluster(cluster)

    def close(self) -> None:
        """Stop following the replica's changes (an in-memory graph has nothing to close)."""
        if self._storage is not None:
            self._storage.unsubscribe()

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
        with self._batch():
            self._put_node(node)
        return node

    def update_node(
        self,
        node_id: str,
        content: Any = _UNSET,
        properties: Optional[Dict[str, Any]] = None,
        metadata: Optional[Dict[str, Any]] = None,
    ) -> ThoughtNode:
        """Replace the content and dict-update properties and metadata of a node; a missing id raises ValueError."""
        node = self.nodes.get(node_id)
        if node is None:
            raise ValueError(f"Node {node_id} not found")
        if content is not _UNSET:
            node.content = content
        if properties:
            node.properties.update(properties)
        if metadata:
            node.metadata.update(metadata)
        with self._batch():
            self._put_node(node)
        return node

    def remove_node(self, node_id: str) -> ThoughtNode:
        """Remove a node with all its edges and cluster memberships; a missing id raises ValueError."""
        if node_id not in self.nodes:
            raise ValueError(f"Node {node_id} not found")
        with self._batch():
            for edge in [e for e in self._edges if node_id in (e.source_id, e.target_id)]:
                self._drop_edge(edge)
            for cluster in self._clusters.values():
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
        nodes = self.nodes
        if node_id1 not in nodes or node_id2 not in nodes:
            raise ValueError("Both nodes must exist")
        if merged_id in nodes and merged_id not in (node_id1, node_id2):
            raise ValueError(f"Merged ID {merged_id} already exists")
        first, second = nodes[node_id1], nodes[node_id2]
        merged = ThoughtNode(
            id=merged_id,
            node_type=first.node_type if merged_id != node_id2 else second.node_type,
            content=f"{first.content} | {second.content}",
            properties={**first.properties, **second.properties},
            metadata={**first.metadata, **second.metadata},
        )
        originals = (node_id1, node_id2)
        redirected: List[Tuple[str, str, EdgeType, float, float]] = []
        for edge in self._edges:
            if edge.source_id in originals or edge.target_id in originals:
                source = merged_id if edge.source_id in originals else edge.source_id
                target = merged_id if edge.target_id in originals else edge.target_id
                redirected.append((source, target, edge.edge_type, edge.weight, edge.confidence))
        memberships = [c for c in self._clusters.values() if any(c.contains_node(n) for n in originals)]
        with self._batch():
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
        nodes = self.nodes
        if from_id not in nodes:
            raise ValueError(f"Source node {from_id} not found")
        if to_id not in nodes:
            raise ValueError(f"Target node {to_id} not found")
        kind = EdgeType(edge_type)
        edge = ThoughtEdge(from_id, to_id, kind, weight, confidence, bidirectional)
        with self._batch():
            self._put_edge(edge)
            if bidirectional:
                self._put_edge(ThoughtEdge(to_id, from_id, kind, weight, confidence, False))
        return edge

    def remove_edge(self, from_id: str, to_id: str, edge_type: Union[EdgeType, str]) -> bool:
        """Remove the first edge matching the triple; False when there is none."""
        kind = EdgeType(edge_type)
        self._refresh()
        for edge in self._edges_from.get(from_id, []):
            if edge.target_id == to_id and edge.edge_type is kind:
                with self._batch():
                    self._drop_edge(edge)
                return True
        return False

    def has_edge(self, from_id: str, to_id: str, edge_type: Union[EdgeType, str]) -> bool:
        """True when an edge of ``edge_type`` goes from ``from_id`` to ``to_id``."""
        kind = EdgeType(edge_type)
        self._refresh()
        return any(e.target_id == to_id and e.edge_type is kind for e in self._edges_from.get(from_id, []))

    def get_edges_from(self, node_id: str) -> List[ThoughtEdge]:
        """The outgoing edges of ``node_id`` (a copy)."""
        self._refresh()
        return list(self._edges_from.get(node_id, []))

    def get_edges_to(self, node_id: str) -> List[ThoughtEdge]:
        """The incoming edges of ``node_id`` (a copy)."""
        self._refresh()
        return list(self._edges_to.get(node_id, []))

    # ------------------------------------------------------------- clusters

    def add_cluster(
        self,
        cluster_id: str,
        name: str,
        node_ids: Optional[Set[str]] = None,
        properties: Optional[Dict[str, Any]] = None,
    ) -> ThoughtCluster:
        """Create a cluster and return it; an existing id raises ValueError."""
        if cluster_id in self.clusters:
            raise ValueError(f"Cluster {cluster_id} already exists")
        cluster = ThoughtCluster(
            id=cluster_id, name=name, node_ids=set(node_ids or ()), properties=dict(properties or {})
        )
        with self._batch():
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
        if self._storage is not None:
            self._storage.put_node(node)
        self._nodes[node.id] = node

    def _drop_node(self, node_id: str) -> ThoughtNode:
        if self._storage is not None:
            self._storage.drop_node(node_id)
        self._edges_from.pop(node_id, None)
        self._edges_to.pop(node_id, None)
        return self._nodes.pop(node_id)

    def _put_edge(self, edge: ThoughtEdge) -> None:
        if self._storage is not None:
            self._storage.put_edge(edge)
        self._index_edge(edge)

    def _index_edge(self, edge: ThoughtEdge) -> None:
        self._edges.append(edge)
        self._edges_from.setdefault(edge.source_id, []).append(edge)
        self._edges_to.setdefault(edge.target_id, []).append(edge)

    def _drop_edge(self, edge: ThoughtEdge) -> None:
        if self._storage is not None:
            self._storage.drop_edge(edge)
        self._edges.remove(edge)
        self._edges_from[edge.source_id].remove(edge)
        self._edges_to[edge.target_id].remove(edge)

    def _put_cluster(self, cluster: ThoughtCluster) -> None:
        if self._storage is not None:
            self._storage.put_cluster(cluster)
        self._clusters[cluster.id] = cluster


__all__ = ["NodeType", "EdgeType", "ThoughtNode", "ThoughtEdge", "ThoughtCluster", "ThoughtGraph"]
