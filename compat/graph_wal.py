"""Write-ahead log for thought-graph operations, the old ``GraphWAL``.

Layout of ``wal_dir`` (identical to cortical's, so old logs and snapshots stay
readable and new ones stay readable by old code):

- ``logs/wal_<YYYY-MM-DD_HHMMSS>_<NNN>.jsonl``: one JSON record per line
  (:class:`WALEntry`), fsynced on every append, rolled over above 10 MB;
- ``snapshots/snap_<YYYYMMDD_HHMMSS>_<micro6>.json[.gz]``: full graph states;
- ``wal_index.json``: current log file, its entry count, snapshots.

Appends and index updates are serialised across threads and processes by a
lock file, so several agents can log into one directory. Timestamps here are
naive local time, as in the old module.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Set, Union

from compat.locking import ProcessLock
from compat.thought_graph import EdgeType, NodeType, ThoughtGraph

LOGS_DIR_NAME = "logs"
SNAPSHOTS_DIR_NAME = "snapshots"
INDEX_FILE_NAME = "wal_index.json"
LOCK_FILE_NAME = ".graph_wal.lock"

MAX_LOG_BYTES = 10 * 1024 * 1024
"""A log file above this size is closed and a new one started."""

MAX_SNAPSHOTS = 3
"""Number of newest snapshots kept."""

SNAPSHOT_FORMAT_VERSION = "2.3"
LOCK_TIMEOUT = 30.0
"""Seconds a writer waits for another one before giving up with ``RuntimeError``."""

_GRAPH_FIELDS = ("node_id", "node_type", "edge_type", "source_id", "target_id", "cluster_id")


def _local_now_iso() -> str:
    return datetime.now().isoformat()


def _legacy_checksum(content: Mapping[str, Any]) -> str:
    """Checksum in the old graph-WAL form: ``json.dumps(sort_keys=True)`` with default separators."""
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()[:16]


@dataclass
class WALEntry:
    """One line of a graph log file (the generic ``cortical.wal`` record GraphWAL lines use)."""

    operation: str
    timestamp: str = field(default_factory=_local_now_iso)
    doc_id: Optional[str] = None
    phase: Optional[str] = None
    reason: Optional[str] = None
    affected_computations: List[str] = field(default_factory=list)
    payload: Dict[str, Any] = field(default_factory=dict)
    checksum: str = ""

    def __post_init__(self) -> None:
        if not self.checksum:
            self.checksum = self._compute_checksum()

    def _compute_checksum(self) -> str:
        return _legacy_checksum(
            {
                "operation": self.operation,
                "timestamp": self.timestamp,
                "doc_id": self.doc_id,
                "phase": self.phase,
                "reason": self.reason,
                "affected_computations": self.affected_computations,
                "payload": self.payload,
            }
        )

    def verify(self) -> bool:
        """True when the stored checksum matches the content."""
        return self.checksum == self._compute_checksum()

    def to_json(self) -> str:
        """The record as one JSON line (without the newline)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WALEntry":
        """Parse a line; ``ValueError`` when it is not a JSON object with an ``operation``."""
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("operation"), str):
            raise ValueError("not a WAL record")
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class GraphWALEntry:
    """A graph operation; the checksum covers the other nine fields and is computed when empty."""

    operation: str
    timestamp: str = field(default_factory=_local_now_iso)
    node_id: Optional[str] = None
    node_type: Optional[str] = None
    edge_type: Optional[str] = None
    source_id: Optional[str] = None
    target_id: Optional[str] = None
    cluster_id: Optional[str] = None
    payload: Dict[str, Any] = field(default_factory=dict)
    checksum: str = ""

    def __post_init__(self) -> None:
        if not self.checksum:
            self.checksum = self._compute_checksum()

    def _compute_checksum(self) -> str:
        return _legacy_checksum({f.name: getattr(self, f.name) for f in fields(self) if f.name != "checksum"})

    def verify(self) -> bool:
        """True when the stored checksum matches the content."""
        return self.checksum == self._compute_checksum()

    def to_json(self) -> str:
        """All ten fields as a JSON string."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "GraphWALEntry":
        """Rebuild from ``to_json()`` output (the stored checksum is kept, so ``verify`` detects tampering)."""
        return cls(**json.loads(text))

    def to_wal_entry(self) -> WALEntry:
        """The log record: ``doc_id`` is the node id, the payload holds the six graph fields plus the payload."""
        graph_fields = {name: getattr(self, name) for name in _GRAPH_FIELDS}
        return WALEntry(
            operation=self.operation,
            timestamp=self.timestamp,
            doc_id=self.node_id,
            payload={**graph_fields, **self.payload},
        )

    @classmethod
    def from_wal_entry(cls, entry: WALEntry) -> "GraphWALEntry":
        """Rebuild a graph entry from a log record (its checksum is recomputed)."""
        payload = dict(entry.payload)
        graph_fields = {name: payload.pop(name, None) for name in _GRAPH_FIELDS}
        return cls(operation=entry.operation, timestamp=entry.timestamp, payload=payload, **graph_fields)


@dataclass
class WALIndex:
    """Contents of ``wal_index.json``: where logging continues and which snapshots exist."""

    latest_snapshot_id: Optional[str] = None
    current_wal_file: str = ""
    wal_entry_count: int = 0
    last_compaction: Optional[str] = None
    snapshots: List[str] = field(default_factory=list)
    version: int = 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "WALIndex":
        """Rebuild from the JSON object, ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


class _LogWriter:
    """Appends records to the current log file and keeps ``wal_index.json`` in step."""

    def __init__(self, wal_dir: Path, lock: "_DirLock") -> None:
        self.wal_dir = wal_dir
        self.logs_dir = wal_dir / LOGS_DIR_NAME
        self.index_path = wal_dir / INDEX_FILE_NAME
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._lock = lock
        with self._lock:
            self.index = self.load_index()
            if not self.index.current_wal_file:
                self.start_new_file()
                self.save_index()

    def load_index(self) -> WALIndex:
        """The index on disk, or a fresh one when it is missing or unreadable."""
        try:
            with open(self.index_path, "r", encoding="utf-8") as handle:
                return WALIndex.from_dict(json.load(handle))
        except (OSError, ValueError, TypeError, AttributeError):
            return WALIndex()

    def save_index(self) -> None:
        """Write the in-memory index atomically (caller holds the lock)."""
        tmp = self.index_path.with_name(f"{self.index_path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(asdict(self.index), handle, indent=2)
        os.replace(tmp, self.index_path)

    def append(self, entry: WALEntry) -> None:
        """Append and fsync one record, roll over if the file grew too big, update the index."""
        line = (entry.to_json() + "\n").encode("utf-8")
        with self._lock:
            self.index = self.load_index()
            if not self.index.current_wal_file:
                self.start_new_file()
            path = self.get_current_wal_path()
            with open(path, "ab+") as handle:
                end = handle.seek(0, os.SEEK_END)
                if end > 0:
                    handle.seek(end - 1)
                    if handle.read(1) != b"\n":
                        line = b"\n" + line
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
                size = handle.tell()
            self.index.wal_entry_count += 1
            if size > MAX_LOG_BYTES:
                self.start_new_file()
            self.save_index()

    def get_current_wal_path(self) -> Path:
        """Path of the log file appends go to."""
        return self.logs_dir / self.index.current_wal_file

    def get_entry_count(self) -> int:
        """Entries appended to the current log file, as recorded in the index."""
        return self.index.wal_entry_count

    def records_since(self, wal_file: str, offset: int = 0) -> Iterator[WALEntry]:
        """Valid records from line ``offset`` of ``wal_file`` onwards, through all later log files."""
        files = sorted(self.logs_dir.glob("wal_*.jsonl"))
        names = [path.name for path in files]
        start = names.index(wal_file) if wal_file in names else 0
        for position, path in enumerate(files[start:]):
            skip = offset if position == 0 else 0
            yield from _read_records(path, skip)

    def start_new_file(self) -> None:
        """Point the index at a new, not yet existing log file with a zero count."""
        stamp = datetime.now().strftime("%Y-%m-%d_%H%M%S")
        number = len(list(self.logs_dir.glob("wal_*.jsonl"))) + 1
        name = f"wal_{stamp}_{number:03d}.jsonl"
        while (self.logs_dir / name).exists():
            number += 1
            name = f"wal_{stamp}_{number:03d}.jsonl"
        self.index.current_wal_file = name
        self.index.wal_entry_count = 0


def _read_records(path: Path, skip: int) -> Iterator[WALEntry]:
    try:
        handle = open(path, "r", encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with handle:
        for number, line in enumerate(handle):
            if number < skip or not line.strip():
                continue
            try:
                record = WALEntry.from_json(line)
            except (ValueError, TypeError):
                continue
            if record.verify():
                yield record


def _is_plain_name(name: str) -> bool:
    """True for a bare file-name stem, so an id can never point outside the snapshots directory."""
    return bool(name) and name not in (".", "..") and "/" not in name and os.sep not in name and "\0" not in name


class _DirLock:
    """Thread lock plus cross-process lock file guarding one GraphWAL directory."""

    def __init__(self, path: Path) -> None:
        self._thread_lock = threading.RLock()
        self._file_lock = ProcessLock(path, reentrant=True)

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if not self._file_lock.acquire(timeout=LOCK_TIMEOUT):
            self._thread_lock.release()
            raise RuntimeError(f"Failed to acquire lock: {self._file_lock.lock_path}")

    def __exit__(self, *exc_info: object) -> None:
        self._file_lock.release()
        self._thread_lock.release()


def _save(graph: Any, method: str, item: Any) -> None:
    """Let a graph that stores its state elsewhere (a replica-backed ThoughtGraph) persist an in-place change."""
    save = getattr(graph, method, None)
    if callable(save):
        save(item)


def apply_graph_entry(entry: GraphWALEntry, graph: Any) -> None:
    """Apply one entry to a ThoughtGraph-like ``graph`` idempotently; a bad checksum raises ValueError."""
    if not entry.verify():
        raise ValueError(f"Entry checksum verification failed: {entry.operation}")
    op, payload = entry.operation, entry.payload
    if op == "add_node":
        if entry.node_id not in graph.nodes:
            graph.add_node(
                entry.node_id,
                NodeType(entry.node_type),
                payload.get("content", ""),
                payload.get("properties", {}),
                payload.get("metadata", {}),
            )
    elif op == "remove_node":
        if entry.node_id in graph.nodes:
            graph.remove_node(entry.node_id)
    elif op == "update_node":
        node = graph.nodes.get(entry.node_id)
        if node is not None:
            updates = payload.get("updates", {})
            if "content" in updates:
                node.content = updates["content"]
            if "properties" in updates:
                node.properties.update(updates["properties"])
            if "metadata" in updates:
                node.metadata.update(updates["metadata"])
            _save(graph, "save_node", node)
    elif op == "add_edge":
        _apply_add_edge(entry, graph)
    elif op == "remove_edge":
        graph.remove_edge(entry.source_id, entry.target_id, EdgeType(entry.edge_type))
    elif op == "add_cluster":
        if entry.cluster_id not in graph.clusters:
            cluster = graph.add_cluster(entry.cluster_id, payload.get("name", ""), set(payload.get("node_ids", [])))
            cluster.properties.update(payload.get("properties", {}))
            _save(graph, "save_cluster", cluster)
    elif op == "merge_nodes":
        _apply_merge(entry, graph)


def _apply_add_edge(entry: GraphWALEntry, graph: Any) -> None:
    if entry.source_id not in graph.nodes or entry.target_id not in graph.nodes:
        return
    edge_type = EdgeType(entry.edge_type)
    if any(e.target_id == entry.target_id and e.edge_type == edge_type for e in graph.get_edges_from(entry.source_id)):
        return
    graph.add_edge(
        entry.source_id,
        entry.target_id,
        edge_type,
        entry.payload.get("weight", 1.0),
        entry.payload.get("confidence", 1.0),
        entry.payload.get("bidirectional", False),
    )


def _apply_merge(entry: GraphWALEntry, graph: Any) -> None:
    """Merge the sources pairwise into ``node_id``, only when there are two or more and all exist."""
    sources: List[str] = list(entry.payload.get("source_ids", []))
    target = entry.node_id
    if not target or len(sources) < 2 or not all(node_id in graph.nodes for node_id in sources):
        return
    current = sources[0]
    for source in sources[1:]:
        if source == current:
            continue
        try:
            graph.merge_nodes(current, source, target)
        except ValueError:
            continue
        current = target


class GraphWAL:
    """Durable log of graph operations with replay, snapshots and compaction.

    Log with ``log_*``; rebuild with ``apply_entry`` over ``get_all_entries()`` (or a snapshot and the rest)."""

    def __init__(self, wal_dir: Union[str, Path]) -> None:
        self.wal_dir: Path = Path(wal_dir)
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self.snapshots_dir: Path = self.wal_dir / SNAPSHOTS_DIR_NAME
        self.snapshots_dir.mkdir(exist_ok=True)
        self._lock = _DirLock(self.wal_dir / LOCK_FILE_NAME)
        self._writer = _LogWriter(self.wal_dir, self._lock)

    # -------------------------------------------------------------- logging

    def log_add_node(
        self,
        node_id: str,
        node_type: NodeType,
        content: Any,
        properties: Optional[Dict[str, Any]] = None,
        metadata: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Log the creation of a node."""
        self._log(
            GraphWALEntry(
                operation="add_node",
                node_id=node_id,
                node_type=node_type.value,
                payload={"content": content, "properties": properties or {}, "metadata": metadata or {}},
            )
        )

    def log_remove_node(self, node_id: str) -> None:
        """Log the removal of a node."""
        self._log(GraphWALEntry(operation="remove_node", node_id=node_id))

    def log_update_node(self, node_id: str, updates: Dict[str, Any]) -> None:
        """Log an update of a node's content, properties or metadata."""
        self._log(GraphWALEntry(operation="update_node", node_id=node_id, payload={"updates": updates}))

    def log_add_edge(
        self,
        source_id: str,
        target_id: str,
        edge_type: EdgeType,
        weight: float = 1.0,
        confidence: float = 1.0,
        bidirectional: bool = False,
    ) -> None:
        """Log the creation of an edge."""
        self._log(
            GraphWALEntry(
                operation="add_edge",
                source_id=source_id,
                target_id=target_id,
                edge_type=edge_type.value,
                payload={"weight": weight, "confidence": confidence, "bidirectional": bidirectional},
            )
        )

    def log_remove_edge(self, source_id: str, target_id: str, edge_type: EdgeType) -> None:
        """Log the removal of an edge."""
        self._log(
            GraphWALEntry(operation="remove_edge", source_id=source_id, target_id=target_id, edge_type=edge_type.value)
        )

    def log_add_cluster(
        self,
        cluster_id: str,
        name: str,
        node_ids: Optional[Iterable[str]] = None,
        properties: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Log the creation of a cluster."""
        self._log(
            GraphWALEntry(
                operation="add_cluster",
                cluster_id=cluster_id,
                payload={"name": name, "node_ids": list(node_ids or ()), "properties": properties or {}},
            )
        )

    def log_merge_nodes(self, source_ids: List[str], target_id: str) -> None:
        """Log a merge of ``source_ids`` into ``target_id``."""
        self._log(GraphWALEntry(operation="merge_nodes", node_id=target_id, payload={"source_ids": source_ids}))

    def log_graph_operation(self, operation_type: str, payload: Dict[str, Any]) -> None:
        """Log any other operation under its own name."""
        self._log(GraphWALEntry(operation=operation_type, payload=payload))

    def _log(self, entry: GraphWALEntry) -> None:
        self._writer.append(entry.to_wal_entry())

    # -------------------------------------------------------------- reading

    def get_all_entries(self) -> Iterator[GraphWALEntry]:
        """Valid entries in order, from the current log file onwards; bad lines are skipped."""
        with self._lock:
            self._writer.index = self._writer.load_index()
        current = self._writer.index.current_wal_file
        if not current:
            return iter(())
        return self.get_entries_since(current, 0)

    def get_entries_since(self, wal_file: str, offset: int = 0) -> Iterator[GraphWALEntry]:
        """Valid entries from line ``offset`` of ``wal_file`` onwards, through later log files."""
        for record in self._writer.records_since(wal_file, offset):
            try:
                yield GraphWALEntry.from_wal_entry(record)
            except (TypeError, ValueError, AttributeError):
                continue

    def get_entry_count(self) -> int:
        """Entries in the current log file, per the index on disk."""
        self._writer.index = self._writer.load_index()
        return self._writer.get_entry_count()

    def get_current_wal_path(self) -> Path:
        """Path of the log file appends go to."""
        return self._writer.get_current_wal_path()

    # ---------------------------------------------------------------- replay

    def apply_entry(self, entry: GraphWALEntry, graph: Any) -> None:
        """Apply one entry to a ThoughtGraph-like ``graph`` idempotently; a bad checksum raises ValueError."""
        apply_graph_entry(entry, graph)

    # ------------------------------------------------------------- snapshots

    def create_snapshot(self, graph: Any, compress: bool = True) -> str:
        """Store the full graph state with the current log position; keeps the newest snapshots and returns the id."""
        state = self._graph_to_state(graph)
        with self._lock:
            index = self._writer.load_index()
            snapshot_id = self._write_snapshot(state, index.current_wal_file, index.wal_entry_count, compress)
            index.latest_snapshot_id = snapshot_id
            if snapshot_id not in index.snapshots:
                index.snapshots.append(snapshot_id)
            index.snapshots = self._prune_snapshots(index.snapshots)
            self._writer.index = index
            self._writer.save_index()
        return snapshot_id

    def load_snapshot(self, snapshot_id: Optional[str] = None) -> Optional[ThoughtGraph]:
        """A new graph from ``snapshot_id`` (default: the latest), or None when there is none."""
        if snapshot_id is None:
            snapshot_id = self._writer.load_index().latest_snapshot_id
        if not snapshot_id:
            return None
        data = self._read_snapshot(snapshot_id)
        if data is None:
            return None
        return self._state_to_graph(data.get("state", {}))

    def compact_wal(self, graph: Any) -> str:
        """Snapshot the graph (compressed), delete all log files, reset the entry count; returns the snapshot id."""
        # Logging continues in a fresh log file and the snapshot points at its start,
        # so a later snapshot-plus-replay skips nothing.
        with self._lock:
            self._writer.index = self._writer.load_index()
            old_logs = sorted(self._writer.logs_dir.glob("wal_*.jsonl"))
            self._writer.start_new_file()
            self._writer.save_index()
            snapshot_id = self.create_snapshot(graph, compress=True)
            for path in old_logs:
                path.unlink(missing_ok=True)
            index = self._writer.load_index()
            index.wal_entry_count = 0
            index.last_compaction = _local_now_iso()
            self._writer.index = index
            self._writer.save_index()
        return snapshot_id

    def _write_snapshot(self, state: Dict[str, Any], wal_file: str, wal_offset: int, compress: bool) -> str:
        moment = datetime.now()
        while True:
            snapshot_id = f"snap_{moment.strftime('%Y%m%d_%H%M%S')}_{moment.microsecond:06d}"
            if not any(self.snapshots_dir.glob(f"{snapshot_id}.json*")):
                break
            moment += timedelta(microseconds=1)
        document = {
            "snapshot_id": snapshot_id,
            "timestamp": moment.isoformat(),
            "version": SNAPSHOT_FORMAT_VERSION,
            "state": state,
            "wal_reference": {"wal_file": wal_file, "wal_offset": wal_offset},
            "metadata": {"document_count": len(state.get("documents", {}))},
        }
        suffix = ".json.gz" if compress else ".json"
        final = self.snapshots_dir / f"{snapshot_id}{suffix}"
        tmp = final.with_name(final.name + ".tmp")
        if compress:
            with gzip.open(tmp, "wt", encoding="utf-8") as handle:
                json.dump(document, handle)
        else:
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)
        os.replace(tmp, final)
        return snapshot_id

    def _read_snapshot(self, snapshot_id: str) -> Optional[Dict[str, Any]]:
        if not _is_plain_name(snapshot_id):
            return None
        gz_path = self.snapshots_dir / f"{snapshot_id}.json.gz"
        if gz_path.exists():
            with gzip.open(gz_path, "rt", encoding="utf-8") as handle:
                data = json.load(handle)
        else:
            path = self.snapshots_dir / f"{snapshot_id}.json"
            if not path.exists():
                return None
            with open(path, "r", encoding="utf-8") as handle:
                data = json.load(handle)
        return data if isinstance(data, dict) else None

    def _prune_snapshots(self, listed: List[str]) -> List[str]:
        """Delete all but the newest snapshots on disk; returns ``listed`` restricted to the kept ones."""
        on_disk: Dict[str, List[Path]] = {}
        for path in self.snapshots_dir.glob("snap_*.json*"):
            if path.name.endswith(".tmp"):
                continue
            on_disk.setdefault(path.name.split(".json")[0], []).append(path)
        ordered = sorted(on_disk)
        kept: Set[str] = set(ordered[-MAX_SNAPSHOTS:])
        for snapshot_id in ordered[:-MAX_SNAPSHOTS]:
            for path in on_disk[snapshot_id]:
                path.unlink(missing_ok=True)
        return [snapshot_id for snapshot_id in listed if snapshot_id in kept]

    @staticmethod
    def _graph_to_state(graph: Any) -> Dict[str, Any]:
        return {
            "nodes": {
                node_id: {
                    "node_type": node.node_type.value,
                    "content": node.content,
                    "properties": node.properties,
                    "metadata": node.metadata,
                }
                for node_id, node in graph.nodes.items()
            },
            "edges": [
                {
                    "source_id": edge.source_id,
                    "target_id": edge.target_id,
                    "edge_type": edge.edge_type.value,
                    "weight": edge.weight,
                    "confidence": edge.confidence,
                    "bidirectional": edge.bidirectional,
                }
                for edge in graph.edges
            ],
            "clusters": {
                cluster_id: {
                    "name": cluster.name,
                    "node_ids": sorted(cluster.node_ids),
                    "properties": cluster.properties,
                }
                for cluster_id, cluster in graph.clusters.items()
            },
        }

    @staticmethod
    def _state_to_graph(state: Mapping[str, Any]) -> ThoughtGraph:
        graph = ThoughtGraph()
        for node_id, node in state.get("nodes", {}).items():
            graph.add_node(
                node_id,
                NodeType(node["node_type"]),
                node.get("content", ""),
                node.get("properties", {}),
                node.get("metadata", {}),
            )
        for edge in state.get("edges", []):
            source, target = edge["source_id"], edge["target_id"]
            edge_type = EdgeType(edge["edge_type"])
            if source not in graph.nodes or target not in graph.nodes or graph.has_edge(source, target, edge_type):
                continue
            graph.add_edge(
                source,
                target,
                edge_type,
                edge.get("weight", 1.0),
                edge.get("confidence", 1.0),
                edge.get("bidirectional", False),
            )
        for cluster_id, cluster in state.get("clusters", {}).items():
            created = graph.add_cluster(cluster_id, cluster.get("name", ""), set(cluster.get("node_ids", [])))
            created.properties.update(cluster.get("properties", {}))
        return graph


__all__ = ["NodeType", "EdgeType", "GraphWALEntry", "GraphWAL", "WALEntry", "WALIndex", "apply_graph_entry"]
