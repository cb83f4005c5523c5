"""Import an existing cortical.got directory into a replica, losing nothing, idempotently.

What is read (the layout ``compat-api.md`` describes, plus what real directories hold):

- ``entities/<id>.json`` (wrapper with checksum, verified) and ``entities/_history/<id>.jsonl``:
  every historic state becomes a write of the entity stamped with its old global
  version, then the current state; a history without a current file is an entity that
  was deleted, and is deleted again after its history. ``entities/_version.json`` and the
  self-healing rules give the global version.
- ``wal/current.wal`` and ``wal/archived/*.wal``: every verified line, kept in the
  collection ``got_wal``.
- GraphWAL ``logs/wal_*.jsonl`` and ``snapshots/snap_*.json[.gz]``: the graph they describe
  (latest snapshot plus the log after it) goes into the replica's graph; log lines are
  kept in ``got_graph_wal``, snapshot files verbatim in ``got_files``.
- ``events/*.jsonl`` (the event-sourcing log): every event, in ``got_events`` keyed
  ``<session>:<line>``.
- ``diffs/``: kept verbatim in ``got_files``. ``indexes/`` is derived and skipped.

Nothing that fails its checksum or cannot be parsed is imported; the report lists it.
Writes are skipped when the replica already holds identical data, so a second run
changes nothing.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from compat.checksums import compute_checksum
from compat.errors import NotFoundError
from compat.graph_wal import GraphWALEntry, WALEntry, apply_graph_entry
from compat.thought_graph import EdgeType, NodeType, ThoughtCluster, ThoughtEdge, ThoughtGraph, ThoughtNode
from compat.versioned_store import META_KEY, ReplicaEntities, entities_for, entity_class, stored_checksum
from replica import Replica
from replica.errors import shown
from replica.models import check_id, check_json, same_stored

EVENTS_COLLECTION = "got_events"
WAL_COLLECTION = "got_wal"
GRAPH_WAL_COLLECTION = "got_graph_wal"
FILES_COLLECTION = "got_files"

OWN_FILES = frozenset(
    {"replica.json", "LOCK", "log", "daemon.json", "agentstate.json", "guard_snapshots.jsonl", ".compat-verified.json"}
)
"""Entries agentstate itself keeps in a directory (when migrating a directory in place)."""


@dataclass
class MigrationReport:
    """What a migration imported, left unchanged (already there), could not read, and skipped on purpose."""

    source: str
    imported: Dict[str, int] = field(default_factory=dict)
    unchanged: Dict[str, int] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    skipped: List[Dict[str, str]] = field(default_factory=list)
    version_before: int = 0
    version_after: int = 0

    @property
    def changes(self) -> int:
        """Writes made in the replica (0 when everything was already there)."""
        return sum(self.imported.values())

    def count(self, kind: str, changed: bool, by: int = 1) -> None:
        """Count one item as imported (changed) or as already present."""
        target = self.imported if changed else self.unchanged
        target[kind] = target.get(kind, 0) + by

    def problem(self, text: str) -> None:
        """Record something that could not be read (and was not imported)."""
        self.problems.append(text)

    def skip(self, path: str, reason: str) -> None:
        """Record something left out on purpose, and why."""
        self.skipped.append({"path": path, "reason": reason})

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form."""
        return {
            "source": self.source,
            "changes": self.changes,
            "imported": dict(sorted(self.imported.items())),
            "unchanged": dict(sorted(self.unchanged.items())),
            "problems": list(self.problems),
            "skipped": list(self.skipped),
            "version_before": self.version_before,
            "version_after": self.version_after,
        }


def _lines(path: Path) -> Iterator[Tuple[int, str]]:
    """(1-based line number, text) of every non-blank line."""
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, line


class _Migration:
    def __init__(self, source: Path, replica: Replica) -> None:
        self.source = source
        self.replica = replica
        self.entities: ReplicaEntities = entities_for(replica)
        self.report = MigrationReport(str(source))

    # ----------------------------------------------------------------- helpers

    def rel(self, path: Path) -> str:
        return path.relative_to(self.source).as_posix()

    def put_if_changed(self, collection: str, record_id: str, data: Dict[str, Any], kind: str) -> None:
        records = self.replica.collection(collection)
        try:
            check_id(collection, record_id)
            check_json(data, record_id)
        except ValueError as exc:
            self.report.problem(f"{record_id}: cannot be stored: {exc}")
            return
        current = records.get(record_id)
        if current is not None and same_stored(current, data):
            self.report.count(kind, False)
            return
        records.put(record_id, data)
        self.report.count(kind, True)

    # ---------------------------------------------------------------- entities

    def run(self) -> MigrationReport:
        if not self.source.is_dir():
            raise NotFoundError(f"{self.source} is not a directory", path=str(self.source))
        self.report.version_before = self.entities.current_version()
        handled = {"entities", "wal", "logs", "snapshots", "wal_index.json", "events", "diffs", "indexes"}
        self.migrate_entities()
        self.migrate_wal()
        self.migrate_graph()
        self.migrate_events()
        self.archive_dir("diffs")
        indexes = self.source / "indexes"
        if indexes.exists():
            self.report.skip("indexes", "derived from the entities (rebuilt on demand); nothing to import")
        for entry in sorted(self.source.iterdir()):
            if entry.name in handled:
                continue
            if entry.name in OWN_FILES or (entry.name.startswith(".") and entry.name.endswith(".lock")):
                self.report.skip(entry.name, "lock or agentstate's own file")
            else:
                self.report.skip(entry.name, "not part of the cortical.got layout")
        self.replica.flush()
        self.report.version_after = self.entities.current_version()
        return self.report

    def _wrapper(self, path: Path) -> Optional[Tuple[Dict[str, Any], Any]]:
        """(verified data, ``_written_at``) of an entity file, or None (and a problem) when it cannot be trusted."""
        where = self.rel(path)
        try:
            wrapper = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self.report.problem(f"{where}: unreadable ({exc}); not imported")
            return None
        if not isinstance(wrapper, dict) or not isinstance(wrapper.get("data"), dict) or "_checksum" not in wrapper:
            self.report.problem(f"{where}: not an entity wrapper (_checksum, data); not imported")
            return None
        data = wrapper["data"]
        actual = compute_checksum(data)
        if actual != wrapper["_checksum"]:
            self.report.problem(
                f"{where}: checksum mismatch (stored {wrapper['_checksum']}, computed {actual}); not imported"
            )
            return None
        if not self._usable(where, path.stem, data):
            return None
        return data, wrapper.get("_written_at")

    def _usable(self, where: str, entity_id: str, data: Any) -> bool:
        """True when ``data`` is an entity the replica can hold and the store can read back."""
        if not isinstance(data, dict):
            self.report.problem(f"{where}: entity data is not an object; not imported")
            return False
        if data.get("id") != entity_id:
            self.report.problem(f"{where}: id {shown(data.get('id'))} does not match the file name; not imported")
            return False
        try:
            check_id("entity", entity_id)
            check_json(data, "data")
            entity_class(data.get("entity_type"), entity_id).from_dict(data)
        except Exception as exc:
            self.report.problem(f"{where}: {exc}; not imported")
            return False
        return True

    def _history(self, path: Path, entity_id: str) -> Tuple[List[Tuple[int, Dict[str, Any], Dict[str, Any]]], bool]:
        """Readable history states (global version, data, source) and whether every line was readable."""
        states = []
        complete = True
        where = self.rel(path)
        for number, line in _lines(path):
            try:
                item = json.loads(line)
            except ValueError as exc:
                self.report.problem(f"{where} line {number}: not JSON ({exc}); not imported")
                complete = False
                continue
            version = item.get("global_version") if isinstance(item, dict) else None
            data = item.get("data") if isinstance(item, dict) else None
            if not isinstance(version, int) or not self._usable(f"{where} line {number}", entity_id, data):
                if not isinstance(version, int):
                    self.report.problem(f"{where} line {number}: no global_version; not imported")
                complete = False
                continue
            assert isinstance(data, dict)
            states.append((version, data, {"file": where, "line": number, "timestamp": item.get("timestamp")}))
        return states, complete

    def migrate_entities(self) -> None:
        folder = self.source / "entities"
        if not folder.is_dir():
            return
        history_dir = folder / "_history"
        files = {p.stem: p for p in folder.glob("*.json") if p.name != "_version.json"}
        histories = {p.stem: p for p in history_dir.glob("*.jsonl")} if history_dir.is_dir() else {}
        for entry in sorted(folder.iterdir()):
            if entry.name == "_version.json" or entry.name == "_history" or entry.suffix == ".json":
                continue
            self.report.skip(self.rel(entry), "not an entity file (temporary or lock file)")
        if history_dir.is_dir():
            for entry in sorted(history_dir.iterdir()):
                if entry.suffix != ".jsonl":
                    self.report.skip(self.rel(entry), "not a history file")

        parsed_histories = {eid: self._history(path, eid) for eid, path in sorted(histories.items())}
        old_version = max(
            [self._stored_version(folder / "_version.json"), len(files)]
            + [v for states, _ in parsed_histories.values() for v, _, _ in states]
        )
        for entity_id in sorted(set(files) | set(parsed_histories)):
            current = self._wrapper(files[entity_id]) if entity_id in files else None
            if entity_id in files and current is None:
                continue
            states = parsed_histories.get(entity_id, ([], True))[0]
            with self.replica.transaction(wait=False):
                self._import_entity(entity_id, current, states, old_version)
        with self.replica.transaction(wait=False):
            missing = old_version - self.entities.current_version()
            if missing > 0:
                self.entities.add_versions(missing)
                self.report.count("global_version", True, missing)

    def _stored_version(self, path: Path) -> int:
        try:
            value = json.loads(path.read_text(encoding="utf-8")).get("version", 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, AttributeError) as exc:
            self.report.problem(f"{self.rel(path)}: unreadable ({exc}); the version is rebuilt from the entities")
            return 0
        return value if isinstance(value, int) and value >= 0 else 0

    def _import_entity(
        self,
        entity_id: str,
        current: Optional[Tuple[Dict[str, Any], Any]],
        states: List[Tuple[int, Dict[str, Any], Dict[str, Any]]],
        old_version: int,
    ) -> None:
        entities = self.entities
        known = set()
        for write in entities.records.history(entity_id):
            if write.data is not None:
                meta = write.data.get(META_KEY)
                source = meta.get("source") if isinstance(meta, dict) else None
                if isinstance(source, dict):
                    known.add((source.get("file"), source.get("line"), meta.get("checksum")))
        added = False
        for version, data, source in states:
            key = (source["file"], source["line"], stored_checksum(data))
            if key in known:
                self.report.count("history_states", False)
                continue
            entities.put_raw(entity_id, data, version=version, source=source)
            known.add(key)
            added = True
            self.report.count("history_states", True)
        last = states[-1][0] if states else None
        if current is not None:
            data, written_at = current
            if (f"entities/{entity_id}.json", None, stored_checksum(data)) in known:
                self.report.count("entities", False)
                return
            stamp = last + 1 if last is not None else old_version
            source = {"file": f"entities/{entity_id}.json", "written_at": written_at}
            entities.put_raw(entity_id, data, version=stamp, source=source)
            self.report.count("entities", True)
        elif added and last is not None and entities.exists(entity_id):
            entities.delete_raw(entity_id, version=last + 1)
            self.report.count("deleted_entities", True)

    # --------------------------------------------------------------------- WAL

    def migrate_wal(self) -> None:
        folder = self.source / "wal"
        if not folder.is_dir():
            return
        files = [folder / "current.wal"] + sorted((folder / "archived").glob("*.wal"))
        for path in files:
            if not path.is_file():
                continue
            where = self.rel(path)
            with self.replica.transaction(wait=False):
                for number, line in _lines(path):
                    try:
                        item = json.loads(line)
                    except ValueError:
                        self.report.problem(f"{where} line {number}: not JSON (a torn line); not imported")
                        continue
                    if not isinstance(item, dict) or not item.get("checksum"):
                        self.report.problem(f"{where} line {number}: no checksum; not imported")
                        continue
                    body = {k: v for k, v in item.items() if k != "checksum"}
                    if compute_checksum(body) != item["checksum"]:
                        self.report.problem(f"{where} line {number}: checksum mismatch; not imported")
                        continue
                    self.put_if_changed(WAL_COLLECTION, f"{where}:{number}", item, "wal_entries")
        for entry in sorted(folder.iterdir()):
            if entry.name not in ("current.wal", "archived"):
                self.report.skip(self.rel(entry), "WAL bookkeeping (sequence counter or lock)")

    # ------------------------------------------------------------------- graph

    def migrate_graph(self) -> None:
        snapshots = sorted(
            p for p in (self.source / "snapshots").glob("snap_*.json*") if not p.name.endswith(".tmp")
        ) if (self.source / "snapshots").is_dir() else []
        logs = sorted((self.source / "logs").glob("wal_*.jsonl")) if (self.source / "logs").is_dir() else []
        if not snapshots and not logs:
            return
        for path in snapshots:
            self.archive_file(path, "snapshot_files")
        graph = ThoughtGraph()
        start: Optional[Tuple[str, int]] = None
        for path in reversed(snapshots):
            document = self._read_snapshot(path)
            if document is not None:
                graph = _graph_from_state(document.get("state", {}), self.report, self.rel(path))
                reference = document.get("wal_reference") or {}
                start = (str(reference.get("wal_file", "")), int(reference.get("wal_offset", 0) or 0))
                break
        names = [p.name for p in logs]
        first = names.index(start[0]) if start is not None and start[0] in names else 0
        with self.replica.transaction(wait=False):
            for index, path in enumerate(logs):
                where = self.rel(path)
                skip_before = start[1] if start is not None and index == first and names[first] == start[0] else 0
                for number, line in _lines(path):
                    try:
                        record = WALEntry.from_json(line)
                    except (ValueError, TypeError) as exc:
                        self.report.problem(f"{where} line {number}: unreadable ({exc}); not imported")
                        continue
                    if not record.verify():
                        self.report.problem(f"{where} line {number}: checksum mismatch; not imported")
                        continue
                    key = f"{where}:{number}"
                    self.put_if_changed(GRAPH_WAL_COLLECTION, key, json.loads(line), "graph_wal_entries")
                    if index < first or number <= skip_before:
                        continue
                    try:
                        apply_graph_entry(GraphWALEntry.from_wal_entry(record), graph)
                    except (ValueError, TypeError, KeyError) as exc:
                        self.report.problem(f"{where} line {number}: cannot be applied ({exc})")
        self._reconcile_graph(graph)

    def _read_snapshot(self, path: Path) -> Optional[Dict[str, Any]]:
        try:
            if path.name.endswith(".gz"):
                with gzip.open(path, "rt", encoding="utf-8") as handle:
                    document = json.load(handle)
            else:
                document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, EOFError) as exc:
            self.report.problem(f"{self.rel(path)}: unreadable snapshot ({exc})")
            return None
        if not isinstance(document, dict):
            self.report.problem(f"{self.rel(path)}: not a snapshot document")
            return None
        return document

    def _reconcile_graph(self, old: ThoughtGraph) -> None:
        """Write into the replica's graph every node, edge and cluster of ``old`` it does not hold identically."""
        live = ThoughtGraph(self.replica)
        try:
            with self.replica.transaction(wait=False):
                for node_id, node in sorted(old.nodes.items()):
                    have = live.nodes.get(node_id)
                    if have == node:
                        self.report.count("graph_nodes", False)
                        continue
                    try:
                        check_id("node", node_id)
                        live.save_node(ThoughtNode(node.id, node.node_type, node.content, dict(node.properties),
                                                   dict(node.metadata)))
                    except ValueError as exc:
                        self.report.problem(f"graph node {node_id}: cannot be stored ({exc})")
                        continue
                    self.report.count("graph_nodes", True)
                for edge in old.edges:
                    if edge.source_id not in live.nodes or edge.target_id not in live.nodes:
                        continue
                    same = [
                        e for e in live.get_edges_from(edge.source_id)
                        if e.target_id == edge.target_id and e.edge_type is edge.edge_type
                    ]
                    if same and (same[0].weight, same[0].confidence, same[0].bidirectional) == (
                        edge.weight, edge.confidence, edge.bidirectional
                    ):
                        self.report.count("graph_edges", False)
                        continue
                    live._put_edge(edge)
                    self.report.count("graph_edges", True)
                for cluster_id, cluster in sorted(old.clusters.items()):
                    have_cluster = live.clusters.get(cluster_id)
                    if have_cluster == cluster:
                        self.report.count("graph_clusters", False)
                        continue
                    live.save_cluster(ThoughtCluster(cluster.id, cluster.name, set(cluster.node_ids),
                                                     dict(cluster.properties)))
                    self.report.count("graph_clusters", True)
        finally:
            live.close()

    # ------------------------------------------------------------------ events

    def migrate_events(self) -> None:
        folder = self.source / "events"
        if not folder.is_dir():
            return
        for path in sorted(folder.iterdir()):
            if path.suffix != ".jsonl":
                self.report.skip(self.rel(path), "not an event log")
                continue
            where = self.rel(path)
            with self.replica.transaction(wait=False):
                for number, line in _lines(path):
                    try:
                        event = json.loads(line)
                    except ValueError as exc:
                        self.report.problem(f"{where} line {number}: not JSON ({exc}); not imported")
                        continue
                    if not isinstance(event, dict):
                        self.report.problem(f"{where} line {number}: not an event object; not imported")
                        continue
                    self.put_if_changed(EVENTS_COLLECTION, f"{path.stem}:{number}", event, "events")

    # ------------------------------------------------------------------- files

    def archive_dir(self, name: str) -> None:
        """Keep every file under ``name`` verbatim (captured data that nothing else holds)."""
        folder = self.source / name
        if not folder.is_dir():
            return
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.archive_file(path, "files")

    def archive_file(self, path: Path, kind: str) -> None:
        """Keep a file byte for byte in ``got_files`` (base64), keyed by its path in the old directory."""
        try:
            content = path.read_bytes()
        except OSError as exc:
            self.report.problem(f"{self.rel(path)}: unreadable ({exc}); not imported")
            return
        data = {
            "path": self.rel(path),
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "encoding": "base64",
            "content": base64.b64encode(content).decode("ascii"),
        }
        with self.replica.transaction(wait=False):
            self.put_if_changed(FILES_COLLECTION, self.rel(path), data, kind)


def _graph_from_state(state: Dict[str, Any], report: MigrationReport, where: str) -> ThoughtGraph:
    """An in-memory graph from a snapshot state (GraphWAL's layout), reporting what it cannot use."""
    graph = ThoughtGraph()
    for node_id, node in (state.get("nodes") or {}).items():
        try:
            graph.add_node(node_id, NodeType(node["node_type"]), node.get("content", ""),
                           dict(node.get("properties") or {}), dict(node.get("metadata") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            report.problem(f"{where}: node {node_id}: {exc}")
    for edge in state.get("edges") or []:
        try:
            source, target, kind = edge["source_id"], edge["target_id"], EdgeType(edge["edge_type"])
        except (KeyError, TypeError, ValueError) as exc:
            report.problem(f"{where}: edge {shown(edge)}: {exc}")
            continue
        if source not in graph.nodes or target not in graph.nodes:
            report.skip(f"{where}: edge {source} -{kind.value}-> {target}", "an endpoint is missing from the snapshot")
            continue
        if graph.has_edge(source, target, kind):
            continue
        graph._put_edge(
            ThoughtEdge(source, target, kind, float(edge.get("weight", 1.0)), float(edge.get("confidence", 1.0)),
                        bool(edge.get("bidirectional", False)))
        )
    for cluster_id, cluster in (state.get("clusters") or {}).items():
        graph.add_cluster(cluster_id, str(cluster.get("name", "")), set(cluster.get("node_ids") or ()),
                          dict(cluster.get("properties") or {}))
    return graph


def migrate(source: Union[str, Path], replica: Replica) -> MigrationReport:
    """Import the cortical.got directory ``source`` into ``replica`` and report what happened."""
    return _Migration(Path(source).expanduser().resolve(), replica).run()


__all__ = [
    "migrate",
    "MigrationReport",
    "EVENTS_COLLECTION",
    "WAL_COLLECTION",
    "GRAPH_WAL_COLLECTION",
    "FILES_COLLECTION",
]
