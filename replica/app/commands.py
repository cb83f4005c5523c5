"""Named operations on a replica with JSON-able parameters and results.

The CLI runs them on a replica it opens itself, or sends them to the daemon that holds
the directory; both end up here, so the two paths cannot drift apart. Other modules
register their own commands (`compat_commands` adds compat's conflicts and migrate).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from replica.errors import FieldError, NotFoundError, ReplicaError

if TYPE_CHECKING:
    from replica.graph import Kind
    from replica.replica import Replica

MIN_PREFIX = 8
"""Shortest id prefix `task` commands accept in place of a whole id."""
COUNTED = ("tasks", "nodes", "edges", "counters", "lessons")
"""The record counts of `Replica.stats()` that `import` and `verify` report."""

Handler = Callable[["Replica", dict[str, Any]], Any]
SELF_KEYED = frozenset({"task.claim", "task.renew", "task.release", "task.complete"})
"""Commands that store their result under the idempotency key themselves: a claim may be sent to
the room's arbiter, which must not wait inside this process's transaction (it holds the append lock)."""
_COMMANDS: dict[str, Handler] = {}


class UnknownCommandError(ReplicaError):
    """The command name is not registered (for instance a plugin is missing in the daemon)."""


def command(name: str) -> Callable[[Handler], Handler]:
    """Register `handler` under `name`."""

    def decorate(handler: Handler) -> Handler:
        _COMMANDS[name] = handler
        return handler

    return decorate


def execute(replica: Replica, name: str, params: dict[str, Any], *, key: str | None = None) -> Any:
    """Run command `name` on `replica`; errors are ReplicaError subclasses with clear messages.

    With an idempotency `key` (writes only), the command runs in one transaction with the
    key's lookup: if any process already ran a command with this key on the directory,
    its stored result is returned and nothing is written again."""
    handler = _COMMANDS.get(name)
    if handler is None:
        raise UnknownCommandError(f"unknown command {name!r}")
    if key is None:
        return handler(replica, params)
    from replica.requests import check_key

    key = check_key(key)
    if name in SELF_KEYED:
        return handler(replica, {**params, "request_id": key})
    with replica.transaction():
        seen, result = replica.requests.recall(key)
        if seen:
            return result
        result = handler(replica, params)
        replica.requests.remember(key, result)
        return result


def names() -> list[str]:
    """Every registered command name."""
    return sorted(_COMMANDS)


def _json(model: Any) -> Any:
    return model.model_dump(mode="json")


def resolve_task_id(r: Replica, given: str) -> str:
    """The task id `given` names: itself if it exists, else the one task whose id starts with it.

    Prefixes shorter than MIN_PREFIX are not expanded; several matches are refused with
    the candidates named (exit 4), none is NotFoundError (exit 3).
    """
    if given in r.tasks or len(given) < MIN_PREFIX:
        return given
    ids = [t.id for t in r.tasks.list()] + [i.id for i in r.tasks.invalid()]
    matches = sorted(i for i in ids if i.startswith(given))
    if not matches:
        raise NotFoundError("task", given)
    if len(matches) > 1:
        shown = ", ".join(matches[:10]) + (f" and {len(matches) - 10} more" if len(matches) > 10 else "")
        raise FieldError("task", "id", f"{given!r} is the start of {len(matches)} task ids: {shown}; "
                                       "give more characters")
    return matches[0]


@command("task.add")
def _task_add(r: Replica, p: dict[str, Any]) -> Any:
    return _json(r.tasks.create(**p))


@command("task.list")
def _task_list(r: Replica, p: dict[str, Any]) -> Any:
    from .listing import listing_text

    return json.loads(listing_text(r, p))


@command("task.list.json")
def _task_list_json(r: Replica, p: dict[str, Any]) -> Any:
    """`task.list` as its JSON text (keys sorted, one line): the CLI prints it without decoding it."""
    from .listing import listing_text

    return listing_text(r, p)


def task_conflict_view(r: Replica, conflict: Any, *, settled: bool) -> dict[str, Any]:
    """A native task conflict in the shape `agentstate conflicts` prints (ours = this replica's side)."""
    ours, theirs = r.tasks.sides(conflict)
    names = [f for f in conflict.fields if f != "__deleted__"]

    def side(write: Any) -> dict[str, Any]:
        return {"writer": write.writer, "at": write.at, "version": None, "deleted": write.deleted,
                "values": {n: write.fields[n] for n in names if n in write.fields}}

    return {"conflict_id": conflict.id, "entity_id": conflict.record_id, "entity_type": "task",
            "conflict_fields": list(conflict.fields), "settled": settled, "ours": side(ours), "theirs": side(theirs)}


@command("task.conflicts")
def _task_conflicts(r: Replica, p: dict[str, Any]) -> Any:
    task_id = resolve_task_id(r, p["id"]) if p.get("id") else None
    include = bool(p.get("all", False))
    open_ids = {c.id for c in r.tasks.conflicts(task_id)}
    found = r.tasks.conflicts(task_id, include_settled=include)
    return {"conflicts": [task_conflict_view(r, c, settled=c.id not in open_ids) for c in found]}


@command("task.conflict.show")
def _task_conflict_show(r: Replica, p: dict[str, Any]) -> Any:
    conflict = r.tasks.find_conflict(p["id"])
    view = task_conflict_view(r, conflict, settled=r.tasks.history.is_settled(conflict))
    current = r.tasks.find(conflict.record_id)
    return {**view, "current": None if current is None else _json(current)}


@command("task.conflict.resolve")
def _task_conflict_resolve(r: Replica, p: dict[str, Any]) -> Any:
    conflict = r.tasks.find_conflict(p["id"])
    already = r.tasks.history.is_settled(conflict)
    strategy = p.get("strategy", "ours")
    task = r.tasks.resolve(conflict.id, strategy, p.get("values") or None)
    return {"conflict_id": conflict.id, "entity_id": conflict.record_id, "strategy": strategy,
            "already_settled": already, "entity": None if task is None else _json(task)}


def graph_conflict_view(r: Replica, kind: Kind, conflict: Any, *, settled: bool) -> dict[str, Any]:
    """A node or edge conflict in the shape `agentstate conflicts` prints (ours = this replica's side)."""
    ours, theirs = r.graph.sides(kind, conflict)
    names = [f for f in conflict.fields if f != "__deleted__"]

    def side(write: Any) -> dict[str, Any]:
        return {"writer": write.writer, "at": write.at, "version": None, "deleted": write.deleted,
                "values": {n: write.fields[n] for n in names if n in write.fields}}

    return {"conflict_id": conflict.id, "entity_id": conflict.record_id, "entity_type": kind,
            "conflict_fields": list(conflict.fields), "settled": settled, "ours": side(ours), "theirs": side(theirs)}


@command("graph.conflicts")
def _graph_conflicts(r: Replica, p: dict[str, Any]) -> Any:
    include = bool(p.get("all", False))
    found = []
    kinds: tuple[Kind, ...] = ("node", "edge")
    for kind in kinds:
        open_ids = {c.id for c in r.graph.conflicts(kind, p.get("id"))}
        found += [graph_conflict_view(r, kind, c, settled=c.id not in open_ids)
                  for c in r.graph.conflicts(kind, p.get("id"), include_settled=include)]
    return {"conflicts": found}


@command("graph.conflict.show")
def _graph_conflict_show(r: Replica, p: dict[str, Any]) -> Any:
    kind, conflict = r.graph.find_conflict(p["id"])
    view = graph_conflict_view(r, kind, conflict, settled=r.graph.history_of(kind).is_settled(conflict))
    current = r.graph.find_record(kind, conflict.record_id)
    return {**view, "current": None if current is None else _json(current)}


@command("graph.conflict.resolve")
def _graph_conflict_resolve(r: Replica, p: dict[str, Any]) -> Any:
    kind, conflict = r.graph.find_conflict(p["id"])
    already = r.graph.history_of(kind).is_settled(conflict)
    strategy = p.get("strategy", "ours")
    found = r.graph.resolve(conflict.id, strategy, p.get("values") or None)
    return {"conflict_id": conflict.id, "entity_id": conflict.record_id, "strategy": strategy,
            "already_settled": already, "entity": None if found is None else _json(found)}


@command("task.show")
def _task_show(r: Replica, p: dict[str, Any]) -> Any:
    task_id = resolve_task_id(r, p["id"])
    shown = _json(r.tasks.get(task_id))
    shown["conflicts"] = [task_conflict_view(r, c, settled=False) for c in r.tasks.conflicts(task_id)]
    shown["last_writers"] = [{"writer": w.writer, "at": w.at, "fields": sorted(w.fields), "deleted": w.deleted}
                             for w in r.tasks.last_writers(task_id)]
    return shown


@command("task.update")
def _task_update(r: Replica, p: dict[str, Any]) -> Any:
    params = dict(p)
    task_id = resolve_task_id(r, params.pop("id"))
    r.tasks.update(task_id, **params)
    return _json(r.tasks.get(task_id))


def _claims(r: Replica) -> Any:
    """The replica's claims, linked to the room's arbiter when one is named elsewhere (token from the environment)."""
    claims = r.claims
    if claims.link is None:
        named = claims.arbiter()
        if named is not None and named.replica_id != r.replica_id:
            import os

            from transport.arbiter import ArbiterClient

            token = os.environ.get("AGENTSTATE_PEER_TOKEN") or os.environ.get("AGENTSTATE_TOKEN") or None
            claims.link = ArbiterClient(r, token=token)
    return claims


@command("task.claim")
def _task_claim(r: Replica, p: dict[str, Any]) -> Any:
    return _claims(r).claim(resolve_task_id(r, p["id"]), p["agent"], p.get("ttl", 900.0),
                            request_id=p.get("request_id")).as_dict()


@command("task.renew")
def _task_renew(r: Replica, p: dict[str, Any]) -> Any:
    return _claims(r).renew(resolve_task_id(r, p["id"]), p["agent"], int(p["epoch"]), p.get("ttl", 900.0),
                            request_id=p.get("request_id")).as_dict()


@command("task.release")
def _task_release(r: Replica, p: dict[str, Any]) -> Any:
    return _claims(r).release(resolve_task_id(r, p["id"]), p["agent"], int(p["epoch"]),
                              request_id=p.get("request_id")).as_dict()


@command("task.complete")
def _task_complete(r: Replica, p: dict[str, Any]) -> Any:
    return _claims(r).complete(resolve_task_id(r, p["id"]), p["agent"], int(p["epoch"]),
                               request_id=p.get("request_id")).as_dict()


@command("task.claim.state")
def _task_claim_state(r: Replica, p: dict[str, Any]) -> Any:
    return r.claims.state_of(resolve_task_id(r, p["id"]), p["agent"]).as_dict()


@command("task.next")
def _task_next(r: Replica, p: dict[str, Any]) -> Any:
    task_id = r.claims.next_task(p.get("agent"))
    return {"task": None if task_id is None else _json(r.tasks.get(task_id))}


@command("task.rm")
def _task_rm(r: Replica, p: dict[str, Any]) -> Any:
    task_id = resolve_task_id(r, p["id"])
    r.tasks.delete(task_id)
    return {"deleted": task_id}


@command("graph.node.add")
def _node_add(r: Replica, p: dict[str, Any]) -> Any:
    return _json(r.graph.add_node(**p))


@command("graph.node.update")
def _node_update(r: Replica, p: dict[str, Any]) -> Any:
    params = dict(p)
    node_id = params.pop("id")
    r.graph.update_node(node_id, **params)
    return _json(r.graph.get_node(node_id))


@command("graph.node.rm")
def _node_rm(r: Replica, p: dict[str, Any]) -> Any:
    return {"deleted": p["id"], "edges_removed": r.graph.remove_node(p["id"])}


@command("graph.node.list")
def _node_list(r: Replica, p: dict[str, Any]) -> Any:
    return {"nodes": [_json(n) for n in r.graph.nodes(**p)]}


@command("graph.edge.add")
def _edge_add(r: Replica, p: dict[str, Any]) -> Any:
    return _json(r.graph.add_edge(**p))


@command("graph.edge.rm")
def _edge_rm(r: Replica, p: dict[str, Any]) -> Any:
    if not r.graph.remove_edge(p["source"], p["target"], p["type"]):
        raise NotFoundError("edge", f"{p['source']}|{p['type']}|{p['target']}")
    return {"deleted": f"{p['source']}|{p['type']}|{p['target']}"}


@command("graph.edge.list")
def _edge_list(r: Replica, p: dict[str, Any]) -> Any:
    return {"edges": [_json(e) for e in r.graph.edges(**p)],
            "dangling": [_json(e) for e in r.graph.dangling_edges()]}


@command("graph.show")
def _graph_show(r: Replica, p: dict[str, Any]) -> Any:
    walk = r.graph.traverse(p["id"], max_depth=p.get("depth", 1), max_nodes=p.get("limit", 200),
                            direction=p.get("direction", "both"))
    ids = {node.id for node, _ in walk}
    edges = [e for e in r.graph.edges() if e.source in ids and e.target in ids]
    return {"nodes": [{**_json(n), "depth": d} for n, d in walk], "edges": [_json(e) for e in edges]}


@command("counter.incr")
def _counter_incr(r: Replica, p: dict[str, Any]) -> Any:
    return {"name": p["name"], "value": r.counters.incr(p["name"], p.get("by", 1))}


@command("counter.decr")
def _counter_decr(r: Replica, p: dict[str, Any]) -> Any:
    return {"name": p["name"], "value": r.counters.decr(p["name"], p.get("by", 1))}


@command("counter.get")
def _counter_get(r: Replica, p: dict[str, Any]) -> Any:
    return {"name": p["name"], "value": r.counters.get(p["name"])}


@command("counter.list")
def _counter_list(r: Replica, p: dict[str, Any]) -> Any:
    return {"counters": r.counters.all()}


@command("lesson.add")
def _lesson_add(r: Replica, p: dict[str, Any]) -> Any:
    return _json(r.lessons.append(**p))


@command("lesson.list")
def _lesson_list(r: Replica, p: dict[str, Any]) -> Any:
    return {"lessons": [_json(x) for x in r.lessons.list()]}


@command("status")
def _status(r: Replica, p: dict[str, Any]) -> Any:
    from .presence import local_presence

    return {"replica": r.stats(), "invalid_records": len(r.invalid_records()), "presence": local_presence(r)}


@command("compact")
def _compact(r: Replica, p: dict[str, Any]) -> Any:
    report = r.compact()
    return {"snapshot": str(report.snapshot), "lsn": report.lsn,
            "removed_segments": [str(s) for s in report.removed_segments]}


def _counts(r: Replica) -> dict[str, int]:
    stats = r.stats()
    return {key: int(stats.get(key, 0)) for key in COUNTED}


@command("verify")
def _verify(r: Replica, p: dict[str, Any]) -> Any:
    from replica.snapshot import SnapshotStore

    problems: list[str] = []
    checked: dict[str, Any] = {"snapshots": 0, "snapshot_lsn": 0, "segments": 0, "records": 0}
    if r.datadir is not None:
        r.flush()
        found = r.scan_storage()
        problems = found.problems()
        checked = {"snapshots": len(SnapshotStore(r.datadir.snapshot_dir).paths()),
                   "snapshot_lsn": found.snapshot_lsn, "segments": found.segments,
                   "records": len(found.records)}
    invalid = r.invalid_records()
    return {"checked": {**checked, **_counts(r)}, "storage_problems": problems,
            "invalid": [_json(i) for i in invalid], "ok": not problems and not invalid}


@command("export")
def _export(r: Replica, p: dict[str, Any]) -> Any:
    return {"update": base64.b64encode(r.diff(None)).decode()}


@command("import")
def _import(r: Replica, p: dict[str, Any]) -> Any:
    try:
        update = base64.b64decode(p["update"], validate=True)
    except (ValueError, TypeError):
        raise FieldError("import", "update", "not base64") from None
    before = _counts(r)
    changed = r.apply_update(update, origin=p.get("origin", "import"))
    return {"changed": changed, "bytes": len(update), "before": before, "after": _counts(r)}


def _words(query: Any) -> list[str]:
    if not isinstance(query, str) or not query.strip() or len(query) > 1000:
        raise FieldError("search", "query", "must be 1-1000 characters with at least one word")
    return query.lower().split()


def _matches(words: list[str], *texts: Any) -> bool:
    haystack = "\n".join(t if isinstance(t, str) else json.dumps(t, sort_keys=True, default=str)
                         for t in texts).lower()
    return all(word in haystack for word in words)


def _limit(p: dict[str, Any], default: int) -> int:
    limit = p.get("limit", default)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise FieldError("search", "limit", "must be a positive integer")
    return limit


@command("graph.edge.update")
def _edge_update(r: Replica, p: dict[str, Any]) -> Any:
    current = r.graph.get_edge(p["source"], p["target"], p["type"])
    weight = p.get("weight")
    return _json(r.graph.add_edge(p["source"], p["target"], p["type"],
                                  weight=current.weight if weight is None else weight,
                                  properties=p.get("properties") or {}))


@command("graph.neighbours")
def _neighbours(r: Replica, p: dict[str, Any]) -> Any:
    direction = p.get("direction", "both")
    nodes = r.graph.neighbours(p["id"], direction=direction, edge_type=p.get("edge_type"))
    ids = {n.id for n in nodes}
    edges = [e for e in r.graph.edges() if (e.source == p["id"] and e.target in ids and direction != "in")
             or (e.target == p["id"] and e.source in ids and direction != "out")]
    if p.get("edge_type"):
        edges = [e for e in edges if e.type == p["edge_type"]]
    return {"nodes": [_json(n) for n in nodes], "edges": [_json(e) for e in edges]}


@command("graph.search")
def _graph_search(r: Replica, p: dict[str, Any]) -> Any:
    words, limit = _words(p.get("query")), _limit(p, 50)
    found = [n for n in r.graph.nodes(type=p.get("type"))
             if _matches(words, n.id, n.type, n.content, n.properties)]
    return {"nodes": [_json(n) for n in found[:limit]], "total": len(found)}


@command("lesson.search")
def _lesson_search(r: Replica, p: dict[str, Any]) -> Any:
    words, limit = _words(p.get("query")), _limit(p, 20)
    found = [x for x in reversed(r.lessons.list()) if _matches(words, x.context, x.failure, x.resolution, x.author)]
    return {"lessons": [_json(x) for x in found[:limit]], "total": len(found)}


@command("presence.set")
def _presence_set(r: Replica, p: dict[str, Any]) -> Any:
    from .presence import set_presence

    return set_presence(r, p.get("agent"), p.get("working_on"))
