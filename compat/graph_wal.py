"""Write-ahead log for thought-graph operations, the old ``GraphWAL``.

Layout of ``wal_dir`` (identical to cortical's, so old logs and snapshots stay
readable and new ones stay readable by old code):

- ``logs/wal_<YYYY-MM-DD_HHMMSS>_<NNN>.jsonl``: one JSON record per line
  (:class:`WALEntry`), fsynced on every append, rolled over above 10 MB;
- ``snapshots/snap_<YYYYMMDD_HHMMSS>_<micro6>.json[.gz]``: full graph states;
- ``wal_index.json``: current log file, snapshots, and the entry count as of
  the index's last write (new file, snapshot, compaction); the live count is the
  number of lines in the current log file (see :class:`_LogWriter`).

Appends and index updates are serialised across threads and processes by a
lock file, so several agents can log into one directory; each writer keeps its
log descriptor and parsed index between appends and checks them with ``stat``.
Timestamps here are naive local time, as in the old module.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Set, Tuple, Union

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


def _record_line(operation: str, payload: Mapping[str, Any], graph_fields: Mapping[str, Optional[str]]) -> bytes:
    """The log line of a graph operation, newline included.

    Byte for byte what ``GraphWALEntry(...).to_wal_entry().to_json()`` gives (same keys in
    field order, same checksum), built directly: the dataclass round trip (an unused
    entry checksum, ``asdict``'s deep copy) cost several times the JSON encoding."""
    fields_in_order = {name: graph_fields.get(name) for name in _GRAPH_FIELDS}
    record: Dict[str, Any] = {
        "operation": operation,
        "timestamp": _local_now_iso(),
        "doc_id": fields_in_order["node_id"],
        "phase": None,
        "reason": None,
        "affected_computations": [],
        "payload": {**fields_in_order, **payload},
    }
    record["checksum"] = _legacy_checksum(record)
    return (json.dumps(record) + "\n").encode("utf-8")


class _LogWriter:
    """Appends records to the current log file and keeps ``wal_index.json`` in step.

    An append costs, under the directory lock: one ``stat`` of the index (re-read only
    when its inode, size or mtime changed), one ``stat`` of the log file (reopened only
    when the index names another file or the path's inode changed), ``os.write`` on a
    kept-open ``O_APPEND`` descriptor and ``os.fsync``. Bytes another writer appended
    since our last look are read once (``pread``), which both keeps the line count
    exact and tells whether the file ends inside a line torn by a crashed writer, in
    which case the record is started on a new line.

    The entry count is not rewritten into the index on every append: an atomic index
    update (temp file + rename) cost more than the fsync itself. The live count is the
    number of newline-terminated lines in the current log file, which is what the index
    count always was for files written by this module (one line per append, restarted
    at each new file). Crash debris differs, in the safer direction: a torn fragment
    that a later append terminated counts as a line, so the count is always a valid
    ``get_entries_since`` line offset (the old index could lag behind it). The index is
    written only when something else changes (new file, rotation, snapshot,
    compaction) and then carries the exact count of that moment.

    Descriptors of the loaded index and of the log file are held open, so their inodes
    cannot be freed and reused: a different ``(st_dev, st_ino)`` at the path reliably
    means the file was replaced.
    """

    def __init__(self, wal_dir: Path, lock: "_DirLock") -> None:
        self.wal_dir = wal_dir
        self.logs_dir = wal_dir / LOGS_DIR_NAME
        self.index_path = wal_dir / INDEX_FILE_NAME
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._lock = lock
        self._index_file = str(self.index_path)
        self._index_fd: Optional[int] = None
        self._index_stamp: Optional[Tuple[int, int, int, int]] = None
        self._log_fd: Optional[int] = None
        self._log_ident: Optional[Tuple[int, int]] = None
        self._tally: Optional[_Tally] = None
        self._path_cache: Tuple[str, str] = ("", "")
        self.index = WALIndex()
        with self._lock:
            self.refresh_index()
            if not self.index.current_wal_file:
                self.start_new_file()
                self.save_index()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown may have torn down ``os``
            pass

    def close(self) -> None:
        """Close the descriptors kept between appends (a later append reopens them)."""
        self._close_log()
        fd = getattr(self, "_index_fd", None)
        self._index_fd = None
        self._index_stamp = None
        if fd is not None:
            _close_quietly(fd)

    # ----------------------------------------------------------------- index

    def load_index(self) -> WALIndex:
        """The index on disk, or a fresh one when it is missing or unreadable (no cached state is touched)."""
        try:
            with open(self.index_path, "r", encoding="utf-8") as handle:
                return WALIndex.from_dict(json.load(handle))
        except (OSError, ValueError, TypeError, AttributeError):
            return WALIndex()

    def refresh_index(self) -> WALIndex:
        """Make ``self.index`` the index on disk, re-reading it only when the file changed (caller holds the lock)."""
        try:
            info = os.stat(self._index_file)
        except OSError:
            info = None
        if info is not None and self._index_stamp == (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns):
            return self.index
        self.index, fd, self._index_stamp = _read_index(self._index_file)
        self._hold_index_fd(fd)
        return self.index

    def save_index(self) -> None:
        """Write the in-memory index atomically (caller holds the lock) and remember the new file as loaded."""
        self._index_stamp = None
        tmp = f"{self._index_file}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, json.dumps(asdict(self.index), indent=2).encode("utf-8"))
            os.replace(tmp, self._index_file)
            info = os.fstat(fd)
        except BaseException:
            _close_quietly(fd)
            raise
        self._hold_index_fd(fd)
        self._index_stamp = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)

    def _hold_index_fd(self, fd: Optional[int]) -> None:
        old, self._index_fd = self._index_fd, fd
        if old is not None:
            _close_quietly(old)

    # ---------------------------------------------------------------- append

    def append(self, line: bytes) -> None:
        """Append and fsync one record line, roll over if the file grew too big."""
        with self._lock:
            self.refresh_index()
            if not self.index.current_wal_file:
                self.start_new_file()
                self.save_index()
            opened = self._current_log(create=True)
            assert opened is not None
            fd, tally = opened
            if not tally.ends_in_newline:
                line = b"\n" + line
            _write_all(fd, line)
            os.fsync(fd)
            tally.offset += len(line)
            tally.lines += line.count(b"\n")
            tally.ends_in_newline = True
            self.index.wal_entry_count = tally.lines
            if tally.offset > MAX_LOG_BYTES:
                self.start_new_file()
                self.save_index()

    def _current_log(self, create: bool) -> Optional[Tuple[int, "_Tally"]]:
        """Descriptor and up-to-date tally of the current log file; None when it does not exist and not ``create``."""
        path = self._current_path()
        try:
            info: Optional[os.stat_result] = os.stat(path)
        except FileNotFoundError:
            info = None
        if info is None or self._log_fd is None or (info.st_dev, info.st_ino) != self._log_ident:
            self._close_log()
            flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0)
            try:
                fd = os.open(path, flags, 0o644)
            except FileNotFoundError:
                if create:
                    raise
                return None
            self._log_fd = fd
            info = os.fstat(fd)
            self._log_ident = (info.st_dev, info.st_ino)
        return self._log_fd, self._catch_up(self._log_fd, self._log_ident, info.st_size)

    def _catch_up(self, fd: int, ident: Tuple[int, int], size: int) -> "_Tally":
        """Count the lines another writer appended since our last look (all of them for a file new to us).

        Log files only grow; one found shorter than already counted is recounted from its start."""
        tally = self._tally
        if tally is None or tally.ident != ident or size < tally.offset:
            tally = self._tally = _Tally(ident)
        while tally.offset < size:
            chunk = os.pread(fd, min(_SCAN_CHUNK, size - tally.offset), tally.offset)
            if not chunk:
                break
            tally.offset += len(chunk)
            tally.lines += chunk.count(b"\n")
            tally.ends_in_newline = chunk.endswith(b"\n")
        return tally

    def _close_log(self) -> None:
        fd = getattr(self, "_log_fd", None)
        self._log_fd = None
        self._log_ident = None
        self._tally = None
        if fd is not None:
            _close_quietly(fd)

    def _current_path(self) -> str:
        name = self.index.current_wal_file
        if self._path_cache[0] != name:
            self._path_cache = (name, str(self.logs_dir / name))
        return self._path_cache[1]

    # --------------------------------------------------------------- queries

    def get_current_wal_path(self) -> Path:
        """Path of the log file appends go to."""
        return self.logs_dir / self.index.current_wal_file

    def get_entry_count(self) -> int:
        """Lines in the current log file, i.e. entries appended to it (read under the lock, from any process)."""
        with self._lock:
            self.refresh_index()
            opened = self._current_log(create=False) if self.index.current_wal_file else None
            self.index.wal_entry_count = opened[1].lines if opened is not None else 0
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
        self._close_log()
        self.index.current_wal_file = name
        self.index.wal_entry_count = 0


_SCAN_CHUNK = 1 << 20
"""Bytes read at a time when counting lines another writer appended."""


@dataclass
class _Tally:
    """What is known of the first ``offset`` bytes of one log file (by inode): lines, and whether they end one."""

    ident: Tuple[int, int]
    offset: int = 0
    lines: int = 0
    ends_in_newline: bool = True


def _read_index(path: str) -> Tuple[WALIndex, Optional[int], Optional[Tuple[int, int, int, int]]]:
    """Index at ``path`` with its still open descriptor and stamp; a fresh index (and no stamp) when unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return WALIndex(), None, None
    try:
        info = os.fstat(fd)
        parts: List[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            parts.append(chunk)
        index = WALIndex.from_dict(json.loads(b"".join(parts).decode("utf-8")))
    except (OSError, ValueError, TypeError, AttributeError):
        _close_quietly(fd)
        return WALIndex(), None, None
    return index, fd, (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a regular file may accept a short write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


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
            "add_node",
            {"content": content, "properties": properties or {}, "metadata": metadata or {}},
            node_id=node_id,
            node_type=node_type.value,
        )

    def log_remove_node(self, node_id: str) -> None:
        """Log the removal of a node."""
        self._log("remove_node", {}, node_id=node_id)

    def log_update_node(self, node_id: str, updates: Dict[str, Any]) -> None:
        """Log an update of a node's content, properties or metadata."""
        self._log("update_node", {"updates": updates}, node_id=node_id)

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
            "add_edge",
            {"weight": weight, "confidence": confidence, "bidirectional": bidirectional},
            source_id=source_id,
            target_id=target_id,
            edge_type=edge_type.value,
        )

    def log_remove_edge(self, source_id: str, target_id: str, edge_type: EdgeType) -> None:
        """Log the removal of an edge."""
        self._log("remove_edge", {}, source_id=source_id, target_id=target_id, edge_type=edge_type.value)

    def log_add_cluster(
        self,
        cluster_id: str,
        name: str,
        node_ids: Optional[Iterable[str]] = None,
        properties: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Log the creation of a cluster."""
        self._log(
            "add_cluster",
            {"name": name, "node_ids": list(node_ids or ()), "properties": properties or {}},
            cluster_id=cluster_id,
        )

    def log_merge_nodes(self, source_ids: List[str], target_id: str) -> None:
        """Log a merge of ``source_ids`` into ``target_id``."""
        self._log("merge_nodes", {"source_ids": source_ids}, node_id=target_id)

    def log_graph_operation(self, operation_type: str, payload: Dict[str, Any]) -> None:
        """Log any other operation under its own name."""
        self._log(operation_type, payload)

    def _log(self, operation: str, payload: Dict[str, Any], **graph_fields: Optional[str]) -> None:
        self._writer.append(_record_line(operation, payload, graph_fields))

    # -------------------------------------------------------------- reading

    def get_all_entries(self) -> Iterator[GraphWALEntry]:
        """Valid entries in order, from the current log file onwards; bad lines are skipped."""
        with self._lock:
            current = self._writer.refresh_index().current_wal_file
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
        """Entries in the current log file (its lines), as any process sees them."""
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
            count = self._writer.get_entry_count()
            index = replace(self._writer.index, snapshots=list(self._writer.index.snapshots))
            snapshot_id = self._write_snapshot(state, index.current_wal_file, count, compress)
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
            self._writer.refresh_index()
            old_logs = sorted(self._writer.logs_dir.glob("wal_*.jsonl"))
            self._writer.start_new_file()
            self._writer.save_index()
            snapshot_id = self.create_snapshot(graph, compress=True)
            for path in old_logs:
                path.unlink(missing_ok=True)
            index = self._writer.refresh_index()
            index.wal_entry_count = 0
            index.last_compaction = _local_now_iso()
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
