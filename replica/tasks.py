"""TaskBoard: the tasks of a replica, one Y.Map per task so that concurrent field edits merge."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pycrdt import Map
from pydantic import ValidationError as PydanticValidationError

from .changes import ChangeEvent
from .errors import AlreadyExistsError, FieldError, InvalidRecordError, NotFoundError
from .history import FieldConflict, WriteHistory, WriteRecord, join
from .models import (
    InvalidRecord,
    Priority,
    Task,
    TaskStatus,
    check_id,
    check_properties,
    describe_errors,
    iso_now,
    same_stored,
    utc_now,
    validate_field,
)
from .schema import (MAP_FIELDS, SET_FIELDS, TASKS, as_set_map, get_entry, insert_map, map_at, map_entry, plain,
                     record_dict, record_dicts, set_fields)

if TYPE_CHECKING:
    from .access import DocAccess

SCALAR_FIELDS = ("title", "description", "status", "priority", "owner")
_SCALAR_NAMES = frozenset(SCALAR_FIELDS)
STRATEGIES = ("ours", "theirs", "merge")
"""How a task conflict is settled: our side's values, the other side's, or the merged
(last-writer-wins) values the board shows now, unless values are given."""
DELETED = "__deleted__"


KEPT_VALUE_BYTES = 1024
"""A field value longer than this (as JSON) is kept in write records as a digest, not whole."""


def _kept(values: Mapping[str, Any]) -> dict[str, Any]:
    """What a write record keeps of each value: itself, or a digest when long (see KEPT_VALUE_BYTES)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        text = json.dumps(value, sort_keys=True, default=str)
        if len(text) > KEPT_VALUE_BYTES:
            out[name] = {"sha256": hashlib.sha256(text.encode()).hexdigest()[:32], "bytes": len(text)}
        else:
            out[name] = value
    return out


def _is_digest(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"sha256", "bytes"}


def _flat(data: Mapping[str, Any]) -> dict[str, Any]:
    """A task's conflict-relevant fields flat: scalars and `properties.<key>`."""
    flat = {name: data.get(name) for name in SCALAR_FIELDS}
    props = data.get("properties")
    if isinstance(props, Mapping):
        flat.update({f"properties.{k}": v for k, v in props.items()})
    return flat


def new_task_id() -> str:
    """T-YYYYMMDD-HHMMSS-xxxxxxxx: sortable by creation time, unique without coordination."""
    return f"T-{utc_now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


_STATUS_VALUES = frozenset(m.value for m in TaskStatus)
_PRIORITY_VALUES = frozenset(m.value for m in Priority)


def _scalar(field: str, value: Any) -> Any:
    """Validate one scalar task field and return what the Doc stores for it.

    Plain valid status and priority strings pass a set lookup; everything else goes
    through pydantic, which stays the definition and the source of error messages.
    """
    if type(value) is str and (
        (field == "status" and value in _STATUS_VALUES) or (field == "priority" and value in _PRIORITY_VALUES)
    ):
        return value
    checked = validate_field(Task, "task", field, value)
    if isinstance(checked, (TaskStatus, Priority)):
        return checked.value
    return checked


def _id_set(field: str, values: Iterable[str]) -> list[str]:
    if isinstance(values, str):
        raise FieldError("task", field, "must be a list of strings, not a single string")
    if values is not None and (isinstance(values, (bytes, Mapping)) or not isinstance(values, Iterable)):
        raise FieldError("task", field, f"must be a list of strings; got {type(values).__name__}")
    if not values:
        return []
    checked = validate_field(Task, "task", field, tuple(values))
    return list(checked)


class TaskBoard:
    """Create, read, update, delete and list tasks; every write is validated before it touches the Doc."""

    def __init__(self, access: DocAccess) -> None:
        self._access = access
        self._root = access.doc.get(TASKS, type=Map)
        self.history = WriteHistory(access, TASKS)
        """Write records of every task write (conflicts are found there, see replica/history.py)."""
        self._validated: dict[str, tuple[dict[str, Any], Task]] = {}
        """Last scan's tasks by id with the stored fields they were validated from (see `_scan`)."""

    def __len__(self) -> int:
        with self._access.read():
            return len(self._root)

    def __contains__(self, task_id: object) -> bool:
        with self._access.read():
            return isinstance(task_id, str) and task_id in self._root

    def create(
        self,
        title: str,
        *,
        id: str | None = None,
        description: str = "",
        status: TaskStatus | str = TaskStatus.PENDING,
        priority: Priority | str = Priority.MEDIUM,
        owner: str | None = None,
        tags: Iterable[str] = (),
        depends_on: Iterable[str] = (),
        properties: dict[str, Any] | None = None,
    ) -> Task:
        """Create a task and return it; an invalid field is refused with an error naming it."""
        task_id = check_id("task", id) if id is not None else new_task_id()
        fields = {
            "title": _scalar("title", title),
            "description": _scalar("description", description),
            "status": _scalar("status", status),
            "priority": _scalar("priority", priority),
            "owner": _scalar("owner", owner),
        }
        tag_list = _id_set("tags", tags)
        deps = _id_set("depends_on", depends_on)
        if task_id in deps:
            raise FieldError("task", "depends_on", "a task cannot depend on itself")
        props = check_properties("task", properties or {})
        now = iso_now()
        with self._access.write():
            if task_id in self._root:
                raise AlreadyExistsError("task", task_id)
            self.history.record(task_id, _kept({**fields, **{f"properties.{k}": v for k, v in props.items()}}), {}, None)
            insert_map(self._root, task_id, {
                **fields,
                "created_at": now,
                "updated_at": now,
                "created_by": self._access.replica_id,
                "tags": as_set_map(tag_list),
                "depends_on": as_set_map(deps),
                "properties": Map(props),
            })
        return self.get(task_id)

    def _entry(self, task_id: str) -> Map:
        entry = self._root.get(task_id)
        if entry is None:
            raise NotFoundError("task", task_id)
        if not isinstance(entry, Map):
            raise InvalidRecordError("task", task_id, ["record is not a map"])
        return entry

    def update(
        self,
        task_id: str,
        *,
        add_tags: Iterable[str] = (),
        remove_tags: Iterable[str] = (),
        properties: dict[str, Any] | None = None,
        remove_properties: Iterable[str] = (),
        **fields: Any,
    ) -> None:
        """Change some fields of a task; only those fields are written, so peers' other edits survive.

        `tags` / `depends_on` replace the set (as adds and removes of single members);
        `properties` sets the given keys and leaves the others alone.
        """
        scalars: dict[str, Any] = {}
        sets: dict[str, list[str]] = {}
        for name, value in fields.items():
            if name in _SCALAR_NAMES:
                scalars[name] = _scalar(name, value)
            elif name in SET_FIELDS:
                sets[name] = _id_set(name, value)
            else:
                raise FieldError("task", name, "no such field (or not writable)")
        if task_id in sets.get("depends_on", ()):
            raise FieldError("task", "depends_on", "a task cannot depend on itself")
        adds = _id_set("tags", add_tags) if add_tags != () else []
        removes = _id_set("tags", remove_tags) if remove_tags != () else []
        props = check_properties("task", properties) if properties is not None else {}
        if isinstance(remove_properties, str):
            raise FieldError("task", "remove_properties", "must be a list of keys, not a single string")
        drop_props = list(remove_properties) if remove_properties != () else []
        now = iso_now()
        with self._access.write():
            entry = map_at(self._root, task_id)
            if entry is None:
                if task_id not in self._root:
                    raise NotFoundError("task", task_id)
                raise InvalidRecordError("task", task_id, ["record is not a map"])
            set_fields(entry, {**scalars, "updated_at": now})
            recorded = dict(scalars)
            recorded.update({f"properties.{k}": v for k, v in props.items()})
            recorded.update({f"properties.{k}": None for k in drop_props})
            self.history.record(task_id, _kept(recorded), {}, None, at=now)
            for name, replacement in sets.items():
                self._replace_set(entry, name, replacement)
            if adds or removes:
                tags = self._nested(entry, "tags")
                for tag in adds:
                    tags[tag] = True
                for tag in removes:
                    if tag in tags:
                        del tags[tag]
            if props or drop_props:
                bag = self._nested(entry, "properties")
                for key, value in props.items():
                    bag[key] = value
                for key in drop_props:
                    if key in bag:
                        del bag[key]

    @staticmethod
    def _nested(entry: Map, name: str) -> Map:
        """The nested map `name` of a task, created if a peer's record lacks it."""
        nested = entry.get(name)
        if not isinstance(nested, Map):
            nested = entry[name] = Map()
        return nested

    def _replace_set(self, entry: Map, name: str, values: list[str]) -> None:
        target = self._nested(entry, name)
        wanted = set(values)
        for key in list(target.keys()):
            if key not in wanted:
                del target[key]
        for key in wanted:
            if key not in target:
                target[key] = True

    def put_fields(self, task_id: str, scalars: Mapping[str, Any], properties: Mapping[str, Any], *,
                   created_at: str | None = None) -> bool:
        """Make a task hold exactly these scalars and properties, creating it if absent; True if anything changed.

        Only fields that differ are written, and no write record is kept: this is for a
        caller that keeps its own (compat's entity records), inside that caller's write."""
        task_id = check_id("task", task_id)
        checked = {name: _scalar(name, value) for name, value in scalars.items()}
        unknown = set(checked) - _SCALAR_NAMES
        if unknown:
            raise FieldError("task", sorted(unknown)[0], "no such field (or not writable)")
        props = check_properties("task", dict(properties))
        now = iso_now()
        with self._access.write():
            entry, stored = map_entry(self._root, task_id)
            if entry is None or stored is None:
                defaults = {"description": "", "status": TaskStatus.PENDING.value,
                            "priority": Priority.MEDIUM.value, "owner": None}
                insert_map(self._root, task_id, {
                    **defaults, **checked, "created_at": created_at or now, "updated_at": now,
                    "created_by": self._access.replica_id, "tags": as_set_map([]), "depends_on": as_set_map([]),
                    "properties": Map(props),
                })
                return True
            differing = {name: value for name, value in checked.items() if name not in stored or stored[name] != value}
            bag = entry.get("properties")
            if isinstance(bag, Map):
                current = stored["properties"] if isinstance(stored.get("properties"), dict) else plain(bag)
            else:
                bag, current = self._nested(entry, "properties"), {}
            props_changed = False
            for key, value in props.items():
                if key not in current or not same_stored(current[key], value):
                    bag[key] = value
                    props_changed = True
            for key in current:
                if key not in props:
                    del bag[key]
                    props_changed = True
            if differing or props_changed:
                set_fields(entry, {**differing, "updated_at": now})
                return True
            return False

    def remove_quietly(self, task_id: str) -> bool:
        """Delete a task without a write record (for a caller that keeps its own); False if absent."""
        with self._access.write():
            if task_id not in self._root:
                return False
            del self._root[task_id]
            return True

    def raw(self, task_id: str) -> dict[str, Any] | None:
        """The task's stored fields as plain values (unvalidated), or None when absent or not a map."""
        with self._access.read():
            is_map, value = get_entry(self._root, task_id)
        if not is_map:
            return None
        return value if isinstance(value, dict) else {}

    def ids(self) -> list[str]:
        """Ids of every stored task (valid or not)."""
        with self._access.read():
            return list(self._root.keys())

    def delete(self, task_id: str) -> None:
        """Delete a task (a concurrent edit elsewhere does not bring it back)."""
        with self._access.write():
            if task_id not in self._root:
                raise NotFoundError("task", task_id)
            self.history.record(task_id, {}, None, None)
            del self._root[task_id]

    def get(self, task_id: str) -> Task:
        """The task, validated; NotFoundError or InvalidRecordError otherwise."""
        with self._access.read():
            data = record_dict(self._entry(task_id))
        return self._validate(task_id, data)

    def find(self, task_id: str) -> Task | None:
        """The task, or None if it does not exist."""
        try:
            return self.get(task_id)
        except NotFoundError:
            return None

    @staticmethod
    def _validate(task_id: str, data: dict[str, Any]) -> Task:
        try:
            return Task.model_validate({**data, "id": task_id})
        except PydanticValidationError as exc:
            raise InvalidRecordError("task", task_id, describe_errors(exc)) from None

    def _scan(self) -> tuple[list[Task], list[InvalidRecord]]:
        """Every stored task, valid or not. Validation is a pure function of (id, stored fields), so a
        task whose fields equal those it was last validated from is reused (Tasks are frozen): a
        listing costs reading the Doc, not validating 1,000 models again; nothing can go stale."""
        with self._access.read():
            raw = record_dicts(self._root, self._access.doc)
        good: list[Task] = []
        bad: list[InvalidRecord] = []
        previous, validated = self._validated, {}
        for key, data in raw:
            if data is None:
                bad.append(InvalidRecord(kind="task", id=key, problems=["record is not a map"]))
                continue
            known = previous.get(key)
            if known is not None and known[0] == data:
                task = known[1]
            else:
                try:
                    task = self._validate(key, data)
                except InvalidRecordError as exc:
                    bad.append(InvalidRecord(kind="task", id=key, problems=exc.problems))
                    continue
            validated[key] = (data, task)
            good.append(task)
        self._validated = validated
        return good, bad

    def list(
        self,
        *,
        status: TaskStatus | str | None = None,
        owner: str | None = None,
        tag: str | None = None,
    ) -> list[Task]:
        """Valid tasks matching every filter given, oldest first; invalid ones are skipped (see `invalid`)."""
        want_status = _scalar("status", status) if status is not None else None
        tasks, _ = self._scan()
        result = [
            t
            for t in tasks
            if (want_status is None or t.status.value == want_status)
            and (owner is None or t.owner == owner)
            and (tag is None or tag in t.tags)
        ]
        result.sort(key=lambda t: (t.created_at, t.id))
        return result

    def invalid(self) -> list[InvalidRecord]:
        """Stored tasks that fail validation (typically junk from a peer), with what is wrong."""
        return self._scan()[1]

    # -- conflicts -------------------------------------------------------------------------

    def conflicts(self, task_id: str | None = None, *, include_settled: bool = False) -> list[FieldConflict]:
        """Concurrent writes of one task field to different values, the same on every synced replica."""
        return self.history.conflicts(task_id, include_settled=include_settled)

    def find_conflict(self, conflict_id: str) -> FieldConflict:
        """A task conflict by id (settled or not); NotFoundError otherwise."""
        return self.history.find_conflict(conflict_id)

    def last_writers(self, task_id: str, count: int = 5) -> list[WriteRecord]:
        """The newest write records of a task (who wrote which fields, when), newest last."""
        return self.history.history(task_id)[-count:]

    def sides(self, conflict: FieldConflict) -> tuple[WriteRecord, WriteRecord]:
        """(ours, theirs): this replica's side when exactly one is, else the side the board shows now."""
        mine = self._access.replica_id
        left, right = conflict.left, conflict.right
        left_mine = left.writer.rsplit(".", 1)[0] == mine
        right_mine = right.writer.rsplit(".", 1)[0] == mine
        if left_mine != right_mine:
            return (left, right) if left_mine else (right, left)
        with self._access.read():
            entry = self._root.get(conflict.record_id)
            current = _flat(record_dict(entry)) if isinstance(entry, Map) else None
        if current is None:
            return (left, right) if left.deleted or not right.deleted else (right, left)
        current = _kept(current)
        score = sum((left.fields.get(f) == current.get(f)) - (right.fields.get(f) == current.get(f))
                    for f in conflict.fields if f != DELETED)
        return (left, right) if score >= 0 else (right, left)

    def resolve(self, conflict_id: str, strategy: str = "ours", values: Mapping[str, Any] | None = None) -> Task | None:
        """Settle a task conflict: one write dominating both sides that names it (None if the task ends deleted).

        `strategy` is ours, theirs or merge (see STRATEGIES); `values` (field -> value, with
        `properties.<key>` for properties) override the chosen side field by field. Settling
        an already settled conflict changes nothing; replicas settling it at once converge."""
        if strategy not in STRATEGIES:
            raise FieldError("conflict", "strategy", f"must be one of {', '.join(STRATEGIES)}")
        extra = dict(values or {})
        unknown = [f for f in extra if f not in _SCALAR_NAMES and not f.startswith("properties.")]
        if unknown:
            raise FieldError("conflict", "values", f"not task fields: {', '.join(sorted(unknown))}")
        for name in list(extra):
            if name in _SCALAR_NAMES:
                extra[name] = _scalar(name, extra[name])
        with self._access.write():
            conflict = self.find_conflict(conflict_id)
            if self.history.is_settled(conflict):
                return self.find(conflict.record_id)
            ours, theirs = self.sides(conflict)
            entry = self._root.get(conflict.record_id)
            current = _flat(record_dict(entry)) if isinstance(entry, Map) else {}
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
                                 f"{KEPT_VALUE_BYTES} bytes and is no longer on the board: give its value")
            base = join([self.history.clock(conflict.record_id), conflict.left.clock, conflict.right.clock])
            if delete:
                self.history.record(conflict.record_id, {}, None, base, (conflict.id,))
                if conflict.record_id in self._root:
                    del self._root[conflict.record_id]
                return None
            if not isinstance(entry, Map):
                entry = self._revive(conflict.record_id)
            self._apply_flat(entry, chosen)
            entry["updated_at"] = iso_now()
            self.history.record(conflict.record_id, _kept(chosen), {}, base, (conflict.id,))
        return self.get(conflict.record_id)

    def _revive(self, task_id: str) -> Map:
        """Recreate a deleted task from the newest value each field had in its write records."""
        known: dict[str, Any] = {}
        for write in self.history.history(task_id):
            known.update(write.fields)
        now = iso_now()
        entry = self._root[task_id] = Map({
            "title": known.get("title") or task_id, "description": known.get("description") or "",
            "status": known.get("status") or TaskStatus.PENDING.value,
            "priority": known.get("priority") or Priority.MEDIUM.value, "owner": known.get("owner"),
            "created_at": now, "updated_at": now, "created_by": self._access.replica_id,
            "tags": as_set_map([]), "depends_on": as_set_map([]), "properties": Map(),
        })
        self._apply_flat(entry, {k: v for k, v in known.items() if k.startswith("properties.")})
        return entry

    def _apply_flat(self, entry: Map, values: Mapping[str, Any]) -> None:
        for name, value in values.items():
            if name.startswith("properties."):
                bag = self._nested(entry, "properties")
                key = name.split(".", 1)[1]
                if value is None:
                    if key in bag:
                        del bag[key]
                else:
                    bag[key] = value
            elif name in _SCALAR_NAMES:
                entry[name] = value

    def translate(self, events: list[Any], origin: str, peer: str | None) -> list[ChangeEvent]:
        """Turn pycrdt deep events on the tasks root into typed change events."""
        out: list[ChangeEvent] = []
        for event in events:
            path = list(event.path)
            for key, change in event.keys.items():
                action = change["action"]
                old = plain(change.get("oldValue")) if action == "update" or (path and action == "delete") else None
                new = plain(change.get("newValue")) if action != "delete" else None
                if not path:
                    out.append(ChangeEvent("task", key, None, action, old, new, origin, peer))  # type: ignore[arg-type]
                elif len(path) == 1:
                    out.append(ChangeEvent("task", str(path[0]), key, action, old, new, origin, peer))  # type: ignore[arg-type]
                else:
                    field = str(path[1])
                    if field in MAP_FIELDS:
                        out.append(ChangeEvent("task", str(path[0]), f"{field}.{key}", action, old, new, origin, peer))  # type: ignore[arg-type]
                    else:
                        member_old = key if action == "delete" else None
                        member_new = key if action != "delete" else None
                        out.append(ChangeEvent("task", str(path[0]), field, action, member_old, member_new, origin, peer))  # type: ignore[arg-type]
        return out
