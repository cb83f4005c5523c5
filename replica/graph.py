"""Graph: typed nodes and weighted edges; removing a node removes its edges on every replica.

Edges live under a deterministic key (source|type|target). A removed node leaves a
tombstone, so an edge to it that a peer added concurrently is deleted wherever it lands,
while an edge whose node simply has not arrived yet is kept and reported as dangling.

Every node and edge write also leaves a write record (`nodes_writes`, `edges_writes`, see
replica/history.py), so concurrent writes of one field from two replicas are a recorded
conflict on every replica, settled like a task's (ours, theirs, merge).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pycrdt import Map
from pydantic import ValidationError as PydanticValidationError

from .changes import ChangeEvent
from .errors import AlreadyExistsError, FieldError, InvalidRecordError, NotFoundError, shown
from .history import FieldConflict, WriteHistory, WriteRecord, join
from .models import (
    Edge,
    InvalidRecord,
    Node,
    check_id,
    check_properties,
    describe_errors,
    edge_key,
    iso_now,
    same_stored,
    validate_field,
)
from .schema import EDGES, NODES, REMOVED_NODES, TASKS, get_entry, observe_keys, plain, record_dict
from .tasks import DELETED, KEPT_VALUE_BYTES, STRATEGIES, _is_digest, _kept

if TYPE_CHECKING:
    from .access import DocAccess

Direction = Literal["out", "in", "both"]
Kind = Literal["node", "edge"]
KINDS: tuple[Kind, ...] = ("node", "edge")
_NODE_SCALARS = frozenset(("type", "content"))
_EDGE_SCALARS = frozenset(("weight",))


def _flat(kind: Kind, data: Mapping[str, Any]) -> dict[str, Any]:
    """A node's or edge's conflict-relevant fields flat: its scalars and `properties.<key>`."""
    names = _NODE_SCALARS if kind == "node" else _EDGE_SCALARS
    flat = {name: data.get(name) for name in names}
    props = data.get("properties")
    if isinstance(props, Mapping):
        flat.update({f"properties.{k}": v for k, v in props.items()})
    return flat


def _recorded(scalars: Mapping[str, Any], props: Mapping[str, Any], dropped: Iterable[str] = ()) -> dict[str, Any]:
    """The fields a write sets, as its write record keeps them (long values as digests)."""
    fields = {**scalars, **{f"properties.{k}": v for k, v in props.items()}}
    fields.update({f"properties.{k}": None for k in dropped})
    return _kept(fields)


def _set_changed(entry: Map, values: Mapping[str, Any]) -> bool:
    """Write the values of `entry` that differ; True if any did."""
    changed = False
    for name, value in values.items():
        if name not in entry or not same_stored(plain(entry.get(name)), value):
            entry[name] = value
            changed = True
    return changed


def _sync_map(bag: Map, values: Mapping[str, Any]) -> bool:
    """Make `bag` hold exactly `values`, writing only keys that differ; True if any did."""
    current = plain(bag)
    current = current if isinstance(current, dict) else {}
    changed = _set_changed(bag, {k: v for k, v in values.items() if k not in current or not same_stored(current[k], v)})
    for key in current:
        if key not in values:
            del bag[key]
            changed = True
    return changed


def split_edge_key(key: str) -> tuple[str, str, str] | None:
    """(source, type, target) of an edge key, or None if a peer wrote a malformed key."""
    parts = key.split("|")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


class Graph:
    """The graph of thought: nodes, edges, neighbours and bounded traversal."""

    def __init__(self, access: DocAccess) -> None:
        self._access = access
        self._nodes = access.doc.get(NODES, type=Map)
        self._edges = access.doc.get(EDGES, type=Map)
        self._removed = access.doc.get(REMOVED_NODES, type=Map)
        self._tasks = access.doc.get(TASKS, type=Map)
        self.node_history = WriteHistory(access, NODES, id_scope="node")
        """Write records of every node write (conflicts are found there, see replica/history.py)."""
        self.edge_history = WriteHistory(access, EDGES, id_scope="edge")
        """Write records of every edge write, keyed by edge key (source|type|target)."""
        self._generation = 0
        self._index_generation = -1
        self._out: dict[str, set[str]] = {}
        self._in: dict[str, set[str]] = {}
        self._pending_edges: set[str] = set()
        self._pending_removed: set[str] = set()
        access.keep_subscription(observe_keys(self._edges, self._on_edges))
        access.keep_subscription(observe_keys(self._removed, self._on_removed))

    def _on_edges(self, keys: Mapping[str, Mapping[str, Any]]) -> None:
        self._generation += 1
        if self._access.origin_is_remote():
            self._pending_edges.update(k for k, c in keys.items() if c["action"] != "delete")

    def _on_removed(self, keys: Mapping[str, Mapping[str, Any]]) -> None:
        if self._access.origin_is_remote():
            self._pending_removed.update(k for k, c in keys.items() if c["action"] != "delete")

    def _index(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """Adjacency from edge keys alone, rebuilt only after the edge set changed."""
        if self._index_generation != self._generation:
            out: dict[str, set[str]] = {}
            inc: dict[str, set[str]] = {}
            for key in self._edges.keys():
                parts = split_edge_key(key)
                if parts is None:
                    continue
                out.setdefault(parts[0], set()).add(key)
                inc.setdefault(parts[2], set()).add(key)
            self._out, self._in = out, inc
            self._index_generation = self._generation
        return self._out, self._in

    def add_node(
        self,
        id: str,
        type: str,
        content: str = "",
        properties: dict[str, Any] | None = None,
    ) -> Node:
        """Add a node; its id must be new. Re-adding a removed id clears its tombstone."""
        check_id("node", id)
        node_type = validate_field(Node, "node", "type", type)
        text = validate_field(Node, "node", "content", content)
        props = check_properties("node", properties or {})
        now = iso_now()
        with self._access.write():
            if id in self._nodes:
                raise AlreadyExistsError("node", id)
            self.node_history.record(id, _recorded({"type": node_type, "content": text}, props), {}, None)
            self._nodes[id] = Map(
                {
                    "type": node_type,
                    "content": text,
                    "properties": Map(props),
                    "created_at": now,
                    "updated_at": now,
                    "created_by": self._access.replica_id,
                }
            )
            if id in self._removed:
                del self._removed[id]
        return self.get_node(id)

    def update_node(
        self,
        id: str,
        *,
        type: str | None = None,
        content: str | None = None,
        properties: dict[str, Any] | None = None,
        remove_properties: Iterable[str] = (),
    ) -> None:
        """Change the given fields of a node; properties are set key by key."""
        node_type = validate_field(Node, "node", "type", type) if type is not None else None
        text = validate_field(Node, "node", "content", content) if content is not None else None
        props = check_properties("node", properties or {})
        drop = list(remove_properties)
        with self._access.write():
            entry = self._nodes.get(id)
            if entry is None:
                raise NotFoundError("node", id)
            if not isinstance(entry, Map):
                raise InvalidRecordError("node", id, ["record is not a map"])
            scalars = {k: v for k, v in (("type", node_type), ("content", text)) if v is not None}
            self.node_history.record(id, _recorded(scalars, props, drop), {}, None)
            if node_type is not None:
                entry["type"] = node_type
            if text is not None:
                entry["content"] = text
            if props or drop:
                bag = entry.get("properties")
                if not isinstance(bag, Map):
                    bag = entry["properties"] = Map()
                for key, value in props.items():
                    bag[key] = value
                for key in drop:
                    if key in bag:
                        del bag[key]
            entry["updated_at"] = iso_now()

    def put_node(self, id: str, type: str, content: str, properties: Mapping[str, Any]) -> bool:
        """Make node `id` hold exactly this type, content and properties, creating it if absent.

        Only what differs is written; True if anything changed. For a caller keeping its
        own record of the node (compat's entities), inside that caller's write."""
        check_id("node", id)
        node_type = validate_field(Node, "node", "type", type)
        text = validate_field(Node, "node", "content", content)
        props = check_properties("node", dict(properties))
        now = iso_now()
        with self._access.write():
            entry = self._nodes.get(id)
            if not isinstance(entry, Map):
                self._nodes[id] = Map({"type": node_type, "content": text, "properties": Map(props),
                                       "created_at": now, "updated_at": now,
                                       "created_by": self._access.replica_id})
                if id in self._removed:
                    del self._removed[id]
                return True
            changed = _set_changed(entry, {"type": node_type, "content": text})
            bag = entry.get("properties")
            if not isinstance(bag, Map):
                bag = entry["properties"] = Map()
            changed = _sync_map(bag, props) or changed
            if changed:
                entry["updated_at"] = now
            return changed

    def remove_node_only(self, id: str) -> bool:
        """Delete node `id` but neither its edges nor with a tombstone (their owner removes them); False if absent."""
        with self._access.write():
            if id not in self._nodes:
                return False
            del self._nodes[id]
            return True

    def node_raw(self, id: str) -> dict[str, Any] | None:
        """The node's stored fields as plain values (unvalidated), or None."""
        with self._access.read():
            is_map, value = get_entry(self._nodes, id)
        if not is_map:
            return None
        return value if isinstance(value, dict) else {}

    def node_ids(self) -> list[str]:
        """Ids of every stored node."""
        with self._access.read():
            return list(self._nodes.keys())

    def remove_node(self, id: str) -> int:
        """Remove a node and every edge touching it; returns how many edges went with it."""
        with self._access.write():
            if id not in self._nodes:
                raise NotFoundError("node", id)
            self.node_history.record(id, {}, None, None)
            removed = self._delete_node(id)
        return removed

    def _delete_node(self, id: str) -> int:
        """Delete a node, its edges (no write records: they go with it) and leave its tombstone."""
        del self._nodes[id]
        removed = self._drop_edges_of(id)
        self._removed[id] = iso_now()
        return removed

    def _drop_edges_of(self, node_id: str) -> int:
        out, inc = self._index()
        keys = set(out.get(node_id, ())) | set(inc.get(node_id, ()))
        for key in keys:
            if key in self._edges:
                del self._edges[key]
        return len(keys)

    def get_node(self, id: str) -> Node:
        """The node, validated; NotFoundError or InvalidRecordError otherwise."""
        with self._access.read():
            entry = self._nodes.get(id)
            if entry is None:
                raise NotFoundError("node", id)
            data = record_dict(entry)
        return self._validate_node(id, data)

    def find_node(self, id: str) -> Node | None:
        """The node, or None if absent."""
        try:
            return self.get_node(id)
        except NotFoundError:
            return None

    def has_node(self, id: str) -> bool:
        """True if a node with this id exists (valid or not)."""
        with self._access.read():
            return id in self._nodes

    @staticmethod
    def _validate_node(id: str, data: dict[str, Any]) -> Node:
        try:
            return Node.model_validate({**data, "id": id})
        except PydanticValidationError as exc:
            raise InvalidRecordError("node", id, describe_errors(exc)) from None

    @staticmethod
    def _validate_edge(key: str, data: dict[str, Any]) -> Edge:
        parts = split_edge_key(key)
        if parts is None:
            raise InvalidRecordError("edge", key, ["key is not source|type|target"])
        source, type_, target = parts
        try:
            edge = Edge.model_validate({**data, "source": source, "type": type_, "target": target})
        except PydanticValidationError as exc:
            raise InvalidRecordError("edge", key, describe_errors(exc)) from None
        return edge

    def nodes(self, *, type: str | None = None) -> list[Node]:
        """Valid nodes, optionally of one type, sorted by id."""
        with self._access.read():
            raw = [(k, record_dict(v)) for k, v in self._nodes.items()]
        result = []
        for key, data in raw:
            try:
                node = self._validate_node(key, data)
            except InvalidRecordError:
                continue
            if type is None or node.type == type:
                result.append(node)
        result.sort(key=lambda n: n.id)
        return result

    def add_edge(
        self,
        source: str,
        target: str,
        type: str,
        weight: float = 1.0,
        properties: dict[str, Any] | None = None,
    ) -> Edge:
        """Add (or re-weight) the edge source -type-> target; both ends (nodes or tasks) must exist here."""
        check_id("edge", source, "source")
        check_id("edge", target, "target")
        edge_type = validate_field(Edge, "edge", "type", type)
        w = validate_field(Edge, "edge", "weight", weight)
        if not math.isfinite(w):
            raise FieldError("edge", "weight", f"must be a finite number; got {shown(weight)}")
        props = check_properties("edge", properties or {})
        key = edge_key(source, edge_type, target)
        with self._access.write():
            for field, node_id in (("source", source), ("target", target)):
                if node_id not in self._nodes and node_id not in self._tasks:
                    raise FieldError("edge", field, f"node or task {shown(node_id)} does not exist")
            entry = self._edges.get(key)
            self.edge_history.record(key, _recorded({"weight": w}, props), {}, None)
            if isinstance(entry, Map):
                entry["weight"] = w
                bag = entry.get("properties")
                if not isinstance(bag, Map):
                    bag = entry["properties"] = Map()
                for k, v in props.items():
                    bag[k] = v
            else:
                self._edges[key] = Map(
                    {
                        "source": source,
                        "target": target,
                        "type": edge_type,
                        "weight": w,
                        "properties": Map(props),
                        "created_at": iso_now(),
                        "created_by": self._access.replica_id,
                    }
                )
        return self.get_edge(source, target, edge_type)

    def put_edge(self, source: str, target: str, type: str, weight: float, properties: Mapping[str, Any]) -> bool:
        """Make edge source -type-> target hold exactly this weight and properties; True if anything changed.

        Its ends need not exist yet (they may be tasks, or nodes written later in the same
        transaction). For a caller keeping its own record of the edge (compat's entities)."""
        check_id("edge", source, "source")
        check_id("edge", target, "target")
        edge_type = validate_field(Edge, "edge", "type", type)
        w = validate_field(Edge, "edge", "weight", weight)
        if not math.isfinite(w):
            raise FieldError("edge", "weight", f"must be a finite number; got {shown(weight)}")
        props = check_properties("edge", dict(properties))
        key = edge_key(source, edge_type, target)
        with self._access.write():
            entry = self._edges.get(key)
            if not isinstance(entry, Map):
                self._edges[key] = Map({"source": source, "target": target, "type": edge_type, "weight": w,
                                        "properties": Map(props), "created_at": iso_now(),
                                        "created_by": self._access.replica_id})
                return True
            changed = _set_changed(entry, {"weight": w})
            bag = entry.get("properties")
            if not isinstance(bag, Map):
                bag = entry["properties"] = Map()
            return _sync_map(bag, props) or changed

    def remove_edge_only(self, key: str) -> bool:
        """Delete the edge under `key` without a write record (its owner keeps its own); False if absent."""
        with self._access.write():
            if key not in self._edges:
                return False
            del self._edges[key]
            return True

    def edge_raw(self, key: str) -> dict[str, Any] | None:
        """The edge's stored fields under `source|type|target` as plain values (unvalidated), or None."""
        with self._access.read():
            is_map, value = get_entry(self._edges, key)
        if not is_map:
            return None
        return value if isinstance(value, dict) else {}

    def edge_keys(self) -> list[str]:
        """Keys of every stored edge."""
        with self._access.read():
            return list(self._edges.keys())

    def remove_edge(self, source: str, target: str, type: str) -> bool:
        """Remove one edge; False if it was not there."""
        key = edge_key(source, type, target)
        with self._access.write():
            if key not in self._edges:
                return False
            self.edge_history.record(key, {}, None, None)
            del self._edges[key]
        return True

    def get_edge(self, source: str, target: str, type: str) -> Edge:
        """One edge, validated."""
        key = edge_key(source, type, target)
        with self._access.read():
            entry = self._edges.get(key)
            if entry is None:
                raise NotFoundError("edge", key)
            data = record_dict(entry)
        return self._validate_edge(key, data)

    def _all_edges(self) -> tuple[list[Edge], list[InvalidRecord]]:
        with self._access.read():
            raw = [(k, record_dict(v)) for k, v in self._edges.items()]
        good: list[Edge] = []
        bad: list[InvalidRecord] = []
        for key, data in raw:
            try:
                good.append(self._validate_edge(key, data))
            except InvalidRecordError as exc:
                bad.append(InvalidRecord(kind="edge", id=key, problems=exc.problems))
        return good, bad

    def edges(
        self, *, source: str | None = None, target: str | None = None, type: str | None = None
    ) -> list[Edge]:
        """Valid edges whose both ends exist (a node or a task), filtered; dangling ones are in `dangling_edges`."""
        present = self._ends()
        return [
            e
            for e in self._all_edges()[0]
            if e.source in present
            and e.target in present
            and (source is None or e.source == source)
            and (target is None or e.target == target)
            and (type is None or e.type == type)
        ]

    def _ends(self) -> set[str]:
        """Ids an edge may end at: nodes and tasks (compat's edges link tasks)."""
        with self._access.read():
            return set(self._nodes.keys()) | set(self._tasks.keys())

    def dangling_edges(self) -> list[Edge]:
        """Edges with a missing end (neither a node nor a task: not yet arrived from a peer, or junk)."""
        present = self._ends()
        return [e for e in self._all_edges()[0] if e.source not in present or e.target not in present]

    def neighbours(
        self, id: str, *, direction: Direction = "out", edge_type: str | None = None
    ) -> list[Node]:
        """Nodes one edge away from `id`, sorted by id; missing or invalid ends are skipped."""
        return [node for node, depth in self.traverse(id, max_depth=1, direction=direction,
                                                       edge_types=[edge_type] if edge_type else None)
                if depth == 1]

    def traverse(
        self,
        start: str,
        *,
        max_depth: int = 3,
        max_nodes: int = 1000,
        direction: Direction = "out",
        edge_types: Iterable[str] | None = None,
    ) -> list[tuple[Node, int]]:
        """Breadth-first walk from `start`: (node, depth) pairs, bounded in depth and in count."""
        if max_depth < 0 or max_nodes < 1:
            raise FieldError("traversal", "max_depth" if max_depth < 0 else "max_nodes", "must be positive")
        wanted = set(edge_types) if edge_types is not None else None
        with self._access.read():
            if start not in self._nodes:
                raise NotFoundError("node", start)
            out, inc = self._index()
            seen = {start}
            order: list[tuple[str, int]] = [(start, 0)]
            queue = deque([(start, 0)])
            while queue and len(order) < max_nodes:
                current, depth = queue.popleft()
                if depth >= max_depth:
                    continue
                keys: list[tuple[str, int]] = []
                if direction in ("out", "both"):
                    keys += [(k, 2) for k in out.get(current, ())]
                if direction in ("in", "both"):
                    keys += [(k, 0) for k in inc.get(current, ())]
                for key, other_end in sorted(keys):
                    parts = split_edge_key(key)
                    if parts is None or (wanted is not None and parts[1] not in wanted):
                        continue
                    other = parts[other_end]
                    if other in seen or other not in self._nodes:
                        continue
                    seen.add(other)
                    order.append((other, depth + 1))
                    queue.append((other, depth + 1))
                    if len(order) >= max_nodes:
                        break
            raw = [(node_id, depth, record_dict(self._nodes.get(node_id))) for node_id, depth in order]
        result: list[tuple[Node, int]] = []
        for node_id, depth, data in raw:
            try:
                result.append((self._validate_node(node_id, data), depth))
            except InvalidRecordError:
                continue
        return result

    def invalid(self) -> list[InvalidRecord]:
        """Stored nodes and edges that fail validation, with what is wrong."""
        with self._access.read():
            raw = [(k, record_dict(v)) for k, v in self._nodes.items()]
        bad = []
        for key, data in raw:
            try:
                self._validate_node(key, data)
            except InvalidRecordError as exc:
                bad.append(InvalidRecord(kind="node", id=key, problems=exc.problems))
        return bad + self._all_edges()[1]

    def sweep(self, *, full: bool = False) -> int:
        """Delete edges whose end was removed (tombstoned and absent); returns how many.

        Every replica reaches the same verdict from the same state, so these deletes
        converge instead of fighting. Incremental after remote updates; `full` at open.
        """
        with self._access.read():
            if full:
                candidates = set(self._edges.keys())
                removed_ids = set(self._removed.keys())
            else:
                candidates, removed_ids = self._pending_edges, self._pending_removed
            self._pending_edges, self._pending_removed = set(), set()
            if not candidates and not removed_ids:
                return 0
            doomed: set[str] = set()
            for key in candidates:
                parts = split_edge_key(key)
                if parts is None:
                    continue
                if any(end in self._removed and end not in self._nodes for end in (parts[0], parts[2])):
                    doomed.add(key)
            if removed_ids:
                out, inc = self._index()
                for node_id in removed_ids:
                    if node_id not in self._nodes:
                        doomed.update(out.get(node_id, ()))
                        doomed.update(inc.get(node_id, ()))
            doomed = {k for k in doomed if k in self._edges}
            if not doomed:
                return 0
            with self._access.write():
                for key in doomed:
                    del self._edges[key]
            return len(doomed)

    # -- conflicts -------------------------------------------------------------------------

    def history_of(self, kind: Kind) -> WriteHistory:
        """The write records of nodes or of edges."""
        if kind not in KINDS:
            raise FieldError("conflict", "kind", f"must be one of {', '.join(KINDS)}")
        return self.node_history if kind == "node" else self.edge_history

    def _root_of(self, kind: Kind) -> Map:
        return self._nodes if kind == "node" else self._edges

    def conflicts(self, kind: Kind, record_id: str | None = None, *,
                  include_settled: bool = False) -> list[FieldConflict]:
        """Concurrent writes of one node (or edge) field to different values, alike on every synced replica."""
        return self.history_of(kind).conflicts(record_id, include_settled=include_settled)

    def find_conflict(self, conflict_id: str) -> tuple[Kind, FieldConflict]:
        """(kind, conflict) of a node or edge conflict by id (settled or not); NotFoundError otherwise."""
        for kind in KINDS:
            try:
                return kind, self.history_of(kind).find_conflict(conflict_id)
            except NotFoundError:
                continue
        raise NotFoundError("conflict", conflict_id)

    def last_writers(self, kind: Kind, record_id: str, count: int = 5) -> list[WriteRecord]:
        """The newest write records of a node or edge (who wrote which fields, when), newest last."""
        return self.history_of(kind).history(record_id)[-count:]

    def sides(self, kind: Kind, conflict: FieldConflict) -> tuple[WriteRecord, WriteRecord]:
        """(ours, theirs): this replica's side when exactly one is, else the side the graph shows now."""
        mine = self._access.replica_id
        left, right = conflict.left, conflict.right
        left_mine = left.writer.rsplit(".", 1)[0] == mine
        right_mine = right.writer.rsplit(".", 1)[0] == mine
        if left_mine != right_mine:
            return (left, right) if left_mine else (right, left)
        with self._access.read():
            entry = self._root_of(kind).get(conflict.record_id)
            current = _flat(kind, record_dict(entry)) if isinstance(entry, Map) else None
        if current is None:
            return (left, right) if left.deleted or not right.deleted else (right, left)
        current = _kept(current)
        score = sum((left.fields.get(f) == current.get(f)) - (right.fields.get(f) == current.get(f))
                    for f in conflict.fields if f != DELETED)
        return (left, right) if score >= 0 else (right, left)

    def _checked_values(self, kind: Kind, values: Mapping[str, Any]) -> dict[str, Any]:
        """Values given to settle a conflict, validated as the field they name."""
        scalars = _NODE_SCALARS if kind == "node" else _EDGE_SCALARS
        out: dict[str, Any] = {}
        for name, value in values.items():
            if name.startswith("properties.") and len(name) > len("properties."):
                out[name] = check_properties(kind, {name.split(".", 1)[1]: value})[name.split(".", 1)[1]]
            elif name in scalars:
                model = Node if kind == "node" else Edge
                out[name] = validate_field(model, kind, name, value)
                if name == "weight" and not math.isfinite(out[name]):
                    raise FieldError("edge", "weight", f"must be a finite number; got {shown(value)}")
            else:
                raise FieldError("conflict", "values", f"not {kind} fields: {name}")
        return out

    def resolve(self, conflict_id: str, strategy: str = "ours",
                values: Mapping[str, Any] | None = None) -> Node | Edge | None:
        """Settle a node or edge conflict with one write that dominates both sides and names it.

        As for tasks: `strategy` is ours, theirs or merge (the values shown now); `values`
        (field -> value, `properties.<key>` for properties) override field by field; settling
        a settled conflict changes nothing; None when the node or edge ends deleted."""
        if strategy not in STRATEGIES:
            raise FieldError("conflict", "strategy", f"must be one of {', '.join(STRATEGIES)}")
        kind, conflict = self.find_conflict(conflict_id)
        extra = self._checked_values(kind, dict(values or {}))
        history = self.history_of(kind)
        root = self._root_of(kind)
        record_id = conflict.record_id
        with self._access.write():
            if history.is_settled(conflict):
                return self.find_record(kind, record_id)
            ours, theirs = self.sides(kind, conflict)
            entry = root.get(record_id)
            current = _flat(kind, record_dict(entry)) if isinstance(entry, Map) else {}
            if strategy == "merge":
                chosen = {f: current.get(f) for f in conflict.fields if f != DELETED}
                delete = not isinstance(entry, Map) and not extra
            else:
                side = ours if strategy == "ours" else theirs
                chosen = {f: side.fields.get(f) for f in conflict.fields if f != DELETED and f in side.fields}
                delete = side.deleted and not extra
            chosen.update(extra)
            lost = []
            for name, value in list(chosen.items()):
                if _is_digest(value):
                    if _kept({name: current.get(name)})[name] == value:
                        chosen[name] = current.get(name)
                    else:
                        lost.append(name)
            if lost:
                raise FieldError("conflict", "values", f"the chosen side's {', '.join(lost)} was longer than "
                                 f"{KEPT_VALUE_BYTES} bytes and is no longer in the graph: give its value")
            base = join([history.clock(record_id), conflict.left.clock, conflict.right.clock])
            if delete:
                history.record(record_id, {}, None, base, (conflict.id,))
                if record_id in root:
                    if kind == "node":
                        self._delete_node(record_id)
                    else:
                        del root[record_id]
                return None
            if not isinstance(entry, Map):
                entry = self._revive(kind, record_id)
            self._apply_flat(entry, chosen)
            if kind == "node":
                entry["updated_at"] = iso_now()
            history.record(record_id, _kept(chosen), {}, base, (conflict.id,))
        return self.find_record(kind, record_id)

    def find_record(self, kind: Kind, record_id: str) -> Node | Edge | None:
        """The node or edge (edges by key), or None when absent."""
        if kind == "node":
            return self.find_node(record_id)
        parts = split_edge_key(record_id)
        if parts is None:
            return None
        try:
            return self.get_edge(parts[0], parts[2], parts[1])
        except NotFoundError:
            return None

    def _revive(self, kind: Kind, record_id: str) -> Map:
        """Recreate a deleted node or edge from the newest value each field had in its write records.

        A revived node clears its tombstone; a revived edge whose end was removed is swept again."""
        known: dict[str, Any] = {}
        for write in self.history_of(kind).history(record_id):
            known.update(write.fields)
        now = iso_now()
        if kind == "node":
            entry = self._nodes[record_id] = Map({
                "type": known.get("type") or "node", "content": known.get("content") or "",
                "properties": Map(), "created_at": now, "updated_at": now, "created_by": self._access.replica_id})
            if record_id in self._removed:
                del self._removed[record_id]
        else:
            parts = split_edge_key(record_id)
            if parts is None:
                raise InvalidRecordError("edge", record_id, ["key is not source|type|target"])
            weight = known.get("weight")
            entry = self._edges[record_id] = Map({
                "source": parts[0], "target": parts[2], "type": parts[1],
                "weight": weight if isinstance(weight, (int, float)) else 1.0, "properties": Map(),
                "created_at": now, "created_by": self._access.replica_id})
        self._apply_flat(entry, {k: v for k, v in known.items() if k.startswith("properties.")})
        return entry

    @staticmethod
    def _apply_flat(entry: Map, values: Mapping[str, Any]) -> None:
        for name, value in values.items():
            if name.startswith("properties."):
                bag = entry.get("properties")
                if not isinstance(bag, Map):
                    bag = entry["properties"] = Map()
                key = name.split(".", 1)[1]
                if value is None:
                    if key in bag:
                        del bag[key]
                else:
                    bag[key] = value
            elif name in _NODE_SCALARS or name in _EDGE_SCALARS:
                entry[name] = value

    def translate_nodes(self, events: list[Any], origin: str, peer: str | None) -> list[ChangeEvent]:
        """Typed change events for the nodes root."""
        return _translate("node", events, origin, peer)

    def translate_edges(self, events: list[Any], origin: str, peer: str | None) -> list[ChangeEvent]:
        """Typed change events for the edges root."""
        return _translate("edge", events, origin, peer)


def _translate(kind: str, events: list[Any], origin: str, peer: str | None) -> list[ChangeEvent]:
    out: list[ChangeEvent] = []
    for event in events:
        path = [str(p) for p in event.path]
        for key, change in event.keys.items():
            action = change["action"]
            old = plain(change.get("oldValue")) if action == "update" or (path and action == "delete") else None
            new = plain(change.get("newValue")) if action != "delete" else None
            if not path:
                record, field = key, None
            elif len(path) == 1:
                record, field = path[0], key
            else:
                record, field = path[0], f"{path[1]}.{key}"
            out.append(ChangeEvent(kind, record, field, action, old, new, origin, peer))  # type: ignore[arg-type]
    return out
