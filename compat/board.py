"""Compat's entities on the replica's own board: tasks are tasks, edges are graph edges, the rest graph nodes.

Every entity has two parts. Its *board object* holds the fields every caller sees and
edits (the CLI, the Python API, MCP, Yjs clients): a ``Task`` is ``tasks[id]`` (title,
status, priority, description, properties), an ``Edge`` is
``edges["source|EDGE_TYPE|target"]`` (weight, and confidence as a property), any other
entity is ``nodes[id]`` of its entity type (title as content, every other field as a
property). Its *snapshot* in the collection ``got_entities`` is compat's bookkeeping
record beside it: the whole entity as compat last wrote it (version, checksum, metadata,
entity type, history for ``read_at_version``, write records for recorded conflicts).

Reading composes the two: each board field still equal to what compat projected from the
snapshot gives the snapshot's own value (so a title longer than the board allows, an empty
title, or ``cancelled`` kept across a write-back survive); a field changed on the board
since gives the board's value, and the entity reads one version above its snapshot. An
object on the board with no snapshot (made with the CLI, say) reads as version 1.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, fields as dataclass_fields
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Tuple

from pycrdt import Map

from compat.errors import ValidationError
from compat.types import ENTITY_CLASSES, VALID_EDGE_TYPES, VALID_ENTITY_TYPES
from replica import Replica
from replica.models import Edge as BoardEdge
from replica.models import Node as BoardNode
from replica.models import Task as BoardTask
from replica.models import check_id, edge_key, same_stored, validate_field
from replica.schema import EDGES, observe_keys

BASE_FIELDS = ("id", "entity_type", "version", "created_at", "modified_at")
"""Fields every entity has; they stay in the snapshot (the board has its own times)."""

TASK_SCALARS = ("title", "status", "priority", "description")
TITLE_MAX = 1000
DESCRIPTION_MAX = 100_000
CONTENT_MAX = 1_000_000

BOARD_STATUS_KEY = "agentstate_status"
"""Key of a Task's ``metadata`` naming a board status the old API has no value for (``cancelled``)."""

_STAMP_JSON = json.JSONEncoder(sort_keys=True, default=str)
"""The encoder of board stamps, built once (``json.dumps`` with options builds one per call)."""

STATUS_FOR_OLD_CALLERS: Dict[str, str] = {
    "pending": "pending",
    "in_progress": "in_progress",
    "blocked": "blocked",
    "completed": "completed",
    "cancelled": "completed",
}
"""How each board status reads through compat (the old API has no ``cancelled``)."""

NODE_TYPES = frozenset(VALID_ENTITY_TYPES - {"task", "edge"})
"""Entity types kept as graph nodes of that type."""


@dataclass(frozen=True)
class Place:
    """Where an entity lives on the board: ``task``, ``node`` or ``edge``, and its key there."""

    kind: str
    key: str


def _has_title(entity_type: str) -> bool:
    cls = ENTITY_CLASSES.get(entity_type)
    return cls is None or any(f.name == "title" for f in dataclass_fields(cls))


def place_of(data: Mapping[str, Any]) -> Place:
    """The board place of an entity's data (its type decides the kind)."""
    entity_type = data.get("entity_type")
    if entity_type == "task":
        return Place("task", str(data["id"]))
    if entity_type == "edge":
        return Place("edge", edge_key(str(data.get("source_id")), str(data.get("edge_type")), str(data.get("target_id"))))
    return Place("node", str(data["id"]))


def _unit(value: Any, default: float = 1.0) -> float:
    """A number clamped to [0, 1] (the old API's range for weight and confidence)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(min(1.0, max(0.0, value)))


def projection(data: Mapping[str, Any]) -> Dict[str, Any]:
    """The board fields compat writes for an entity: ``{field: value}`` as the board object holds them."""
    entity_type = data.get("entity_type")
    if entity_type == "task":
        status = data.get("status")
        metadata = data.get("metadata")
        if status == "completed" and isinstance(metadata, dict) and metadata.get(BOARD_STATUS_KEY) == "cancelled":
            status = "cancelled"
        title = str(data.get("title") or "")[:TITLE_MAX] or str(data["id"])
        props = data.get("properties")
        return {
            "title": title,
            "status": status,
            "priority": data.get("priority"),
            "description": str(data.get("description") or "")[:DESCRIPTION_MAX],
            "properties": dict(props) if isinstance(props, dict) else {},
        }
    if entity_type == "edge":
        return {"weight": data.get("weight", 1.0), "properties": {"confidence": data.get("confidence", 1.0)}}
    skip = set(BASE_FIELDS)
    content = ""
    if _has_title(str(entity_type)):
        skip.add("title")
        content = str(data.get("title") or "")[:CONTENT_MAX]
    return {
        "type": entity_type,
        "content": content,
        "properties": {k: v for k, v in data.items() if k not in skip},
    }


def check_projection(data: Mapping[str, Any]) -> None:
    """ValidationError when the entity cannot be put on the board (checked before anything is written)."""
    problems: List[str] = []
    place = place_of(data)
    values = projection(data)
    try:
        if place.kind == "task":
            check_id("task", place.key)
            for name in TASK_SCALARS:
                validate_field(BoardTask, "task", name, values[name])
        elif place.kind == "edge":
            check_id("edge", str(data.get("source_id")), "source")
            check_id("edge", str(data.get("target_id")), "target")
            validate_field(BoardEdge, "edge", "type", data.get("edge_type"))
        else:
            check_id("node", place.key)
            validate_field(BoardNode, "node", "type", values["type"])
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise ValidationError(
            f"Entity {data.get('id')} cannot be put on the board: {'; '.join(problems)}",
            entity_type=data.get("entity_type"),
            entity_id=data.get("id"),
            errors=problems,
        )


def _iso(value: Any) -> Optional[str]:
    """``value`` when it is an ISO-8601 time the board accepts, else None."""
    if not isinstance(value, str):
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return None
    return value


class Board:
    """Reads and writes compat entities' board objects on one replica (inside compat's transactions)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self._edge_ids: Optional[Dict[str, str]] = None
        self._edge_lock = threading.Lock()
        replica.keep_subscription(observe_keys(replica.doc.get(EDGES, type=Map), self._on_edges))

    def _on_edges(self, keys: Mapping[str, Any]) -> None:
        self._edge_ids = None

    # ------------------------------------------------------------------- reading

    def current(self, place: Place) -> Optional[Dict[str, Any]]:
        """The board fields of ``place`` as :func:`projection` names them, or None when absent."""
        if place.kind == "task":
            raw = self.replica.tasks.raw(place.key)
            if raw is None:
                return None
            props = raw.get("properties")
            out = {name: raw.get(name) for name in TASK_SCALARS}
            out["properties"] = props if isinstance(props, dict) else {}
            return out
        if place.kind == "edge":
            raw = self.replica.graph.edge_raw(place.key)
            if raw is None:
                return None
            props = raw.get("properties")
            return {"weight": raw.get("weight", 1.0), "properties": props if isinstance(props, dict) else {}}
        raw = self.replica.graph.node_raw(place.key)
        if raw is None:
            return None
        props = raw.get("properties")
        return {"type": raw.get("type"), "content": raw.get("content", ""),
                "properties": props if isinstance(props, dict) else {}}

    def stamp(self, place: Optional[Place]) -> str:
        """A fingerprint of the board object (any change to its fields changes it)."""
        return "" if place is None else self.stamp_of(self.current(place))

    @staticmethod
    def stamp_of(board: Optional[Mapping[str, Any]]) -> str:
        """The fingerprint of board fields :meth:`current` returned ("" for none)."""
        return "" if board is None else _STAMP_JSON.encode(board)

    def native_place(self, entity_id: str) -> Optional[Place]:
        """The place of a board object compat has no snapshot of (made natively), or None."""
        if self.replica.tasks.raw(entity_id) is not None:
            return Place("task", entity_id)
        node = self.replica.graph.node_raw(entity_id)
        if node is not None and node.get("type") in NODE_TYPES:
            return Place("node", entity_id)
        if entity_id.startswith("E-"):
            key = self._native_edges().get(entity_id)
            if key is not None:
                return Place("edge", key)
        return None

    def _native_edges(self) -> Dict[str, str]:
        """Old-style ids ``E-source-target-TYPE`` of board edges whose type the old API knows."""
        with self._edge_lock:
            found = self._edge_ids
            if found is None:
                found = {}
                for key in self.replica.graph.edge_keys():
                    parts = key.split("|")
                    if len(parts) == 3 and parts[1] in VALID_EDGE_TYPES:
                        found[f"E-{parts[0]}-{parts[2]}-{parts[1]}"] = key
                self._edge_ids = found
            return found

    def compose(self, entity_id: str, snapshot: Optional[Mapping[str, Any]], place: Place,
                board: Optional[Mapping[str, Any]] = None) -> Optional[Dict[str, Any]]:
        """The entity's data as every caller sees it now (see the module docstring), or None when off the board.

        ``board``: the place's fields as :meth:`current` just returned them (else they are read here)."""
        return self.compose_checked(entity_id, snapshot, place, board)[0]

    def compose_checked(self, entity_id: str, snapshot: Optional[Mapping[str, Any]], place: Place,
                        board: Optional[Mapping[str, Any]] = None) -> Tuple[Optional[Dict[str, Any]], bool]:
        """:meth:`compose`, and whether its data differs from ``snapshot`` (told without comparing them whole)."""
        if board is None:
            board = self.current(place)
        if board is None:
            return None, snapshot is not None
        if snapshot is None:
            return self._native(entity_id, place, board), True
        data = dict(snapshot)
        differs = False
        projected = projection(snapshot)
        changed = [name for name in board if not same_stored(board[name], projected.get(name))]
        if place.kind == "task":
            changed_props = "properties" in changed
            for name in changed:
                if name in TASK_SCALARS:
                    data[name] = board[name]
            if changed_props:
                data["properties"] = dict(board["properties"])
            if board["status"] == "cancelled":
                data["status"] = "cancelled"
            data = _task_status(data)
            differs = (data["status"] != snapshot.get("status")
                       or data["metadata"] != (snapshot.get("metadata") or {}))
        elif place.kind == "edge":
            if "weight" in changed:
                data["weight"] = _unit(board["weight"])
            if "properties" in changed:
                data["confidence"] = _unit(board["properties"].get("confidence", data.get("confidence", 1.0)))
        else:
            if "content" in changed and _has_title(str(snapshot.get("entity_type"))):
                data["title"] = board["content"]
            if "properties" in changed:
                for name, value in board["properties"].items():
                    if name not in BASE_FIELDS and name != "title" and not same_stored(value, projected["properties"].get(name)):
                        data[name] = value
        if changed:
            version = snapshot.get("version", 1)
            data["version"] = (version if isinstance(version, int) else 1) + 1
        return data, bool(changed) or differs

    def _native(self, entity_id: str, place: Place, board: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
        """Compat data for a board object compat never wrote: version 1, its fields mapped."""
        if place.kind == "task":
            raw = self.replica.tasks.raw(place.key) or {}
            data: Dict[str, Any] = {
                "id": entity_id, "entity_type": "task", "version": 1,
                "created_at": raw.get("created_at"), "modified_at": raw.get("updated_at"),
                **{name: board[name] for name in TASK_SCALARS},
                "properties": dict(board["properties"]), "metadata": {},
            }
            return _task_status(data)
        if place.kind == "edge":
            raw = self.replica.graph.edge_raw(place.key) or {}
            return {
                "id": entity_id, "entity_type": "edge", "version": 1,
                "created_at": raw.get("created_at"), "modified_at": raw.get("created_at"),
                "source_id": raw.get("source"), "target_id": raw.get("target"), "edge_type": raw.get("type"),
                "weight": _unit(board["weight"]), "confidence": _unit(board["properties"].get("confidence", 1.0)),
            }
        raw = self.replica.graph.node_raw(place.key) or {}
        entity_type = str(board["type"])
        data = {name: value for name, value in board["properties"].items() if name not in BASE_FIELDS}
        data.update({"id": entity_id, "entity_type": entity_type, "version": 1,
                     "created_at": raw.get("created_at"), "modified_at": raw.get("updated_at")})
        if _has_title(entity_type):
            data["title"] = board["content"]
        return data

    # ------------------------------------------------------------------- writing

    def put(self, data: Mapping[str, Any], previous: Optional[Mapping[str, Any]] = None) -> None:
        """Write the entity's board object (only fields that differ); the old place goes if it moved.

        Runs inside the caller's write; :func:`check_projection` has vetted ``data``."""
        place = place_of(data)
        if previous is not None and previous.get("entity_type"):
            old = place_of(previous)
            if old != place:
                self.remove(old)
        values = projection(data)
        if place.kind == "task":
            self.replica.tasks.put_fields(
                place.key, {name: values[name] for name in TASK_SCALARS}, values["properties"],
                created_at=_iso(data.get("created_at")),
            )
        elif place.kind == "edge":
            self.replica.graph.put_edge(str(data["source_id"]), str(data["target_id"]), str(data["edge_type"]),
                                        float(values["weight"]), values["properties"])
        else:
            self.replica.graph.put_node(place.key, str(values["type"]), values["content"], values["properties"])

    def remove(self, place: Place) -> bool:
        """Delete a board object (a node's edges stay: they are entities of their own); False if absent."""
        if place.kind == "task":
            return self.replica.tasks.remove_quietly(place.key)
        if place.kind == "edge":
            return self.replica.graph.remove_edge_only(place.key)
        return self.replica.graph.remove_node_only(place.key)


def _task_status(data: Dict[str, Any]) -> Dict[str, Any]:
    """Map a board status to the old API's (``cancelled`` reads as ``completed``, noted in ``metadata``)."""
    metadata = dict(data.get("metadata") or {})
    metadata.pop(BOARD_STATUS_KEY, None)
    status = data.get("status")
    if status in STATUS_FOR_OLD_CALLERS and STATUS_FOR_OLD_CALLERS[status] != status:
        metadata[BOARD_STATUS_KEY] = status
        data["status"] = STATUS_FOR_OLD_CALLERS[status]
    data["metadata"] = metadata
    return data


__all__ = [
    "Board",
    "Place",
    "place_of",
    "projection",
    "check_projection",
    "STATUS_FOR_OLD_CALLERS",
    "BOARD_STATUS_KEY",
    "NODE_TYPES",
]
