"""``agentstate conflicts list|show|resolve`` and ``agentstate migrate``: compat's commands.

The operations are registered with :mod:`replica.app.commands`, so they run the same way on a
replica the CLI opens itself or inside a running ``agentstate serve``. ``register(cli)``
adds the commands; the CLI calls it when it loads its plugins. This module is imported for
``agentstate --help``, so compat itself loads only when an operation runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from replica.errors import NotFoundError

from .cli import Arg, Invocation, Registry, UsageError, emit, json_arg, parse_props, print_table
from .commands import command, execute
from .exitcodes import ExitCode, register_exit_code

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Optional

    from replica import Replica

EXIT_CODES: Dict[str, ExitCode] = {
    "ConflictError": ExitCode.CONFLICT,
    "CorruptionError": ExitCode.DATA,
    "ValidationError": ExitCode.INVALID,
    "NotFoundError": ExitCode.NOT_FOUND,
    "TransactionError": ExitCode.INVALID,
    "SyncError": ExitCode.UNREACHABLE,
    "DirectoryLockedError": ExitCode.DATA,
}
"""Exit codes of compat's errors (by class name, as ``replica.app.exitcodes`` maps them)."""

for _name, _code in EXIT_CODES.items():
    register_exit_code(_name, _code)


# ------------------------------------------------------------------ operations


def _native_owner(replica: Replica, conflict_id: str) -> str:
    """`task` when a task conflict has this id, else `graph` (whose commands say when none has it)."""
    try:
        replica.tasks.find_conflict(conflict_id)
    except NotFoundError:
        return "graph"
    return "task"


@command("compat.conflicts.list")
def conflicts_list(replica: Replica, params: Dict[str, Any]) -> Dict[str, Any]:
    """Recorded conflicts (``entity_id`` to filter, ``all`` to include settled ones)."""
    from compat.conflict import ConflictResolver

    found = ConflictResolver().recorded_conflicts(
        replica, params.get("entity_id"), include_settled=bool(params.get("all", False))
    )
    include = bool(params.get("all", False))
    native = execute(replica, "task.conflicts", {"id": None, "all": include})["conflicts"]
    native += execute(replica, "graph.conflicts", {"id": None, "all": include})["conflicts"]
    if params.get("entity_id"):
        native = [c for c in native if c["entity_id"] == params["entity_id"]]
    merged = [c.to_dict() for c in found] + native
    return {"conflicts": sorted(merged, key=lambda c: (c["entity_id"], c["conflict_id"]))}


@command("compat.conflicts.show")
def conflicts_show(replica: Replica, params: Dict[str, Any]) -> Dict[str, Any]:
    """One conflict by id, settled or not, with the entity as it stands now."""
    from compat.conflict import recorded_conflict
    from compat.versioned_store import entities_for

    entities = entities_for(replica)
    if params["id"] not in {c.id for c in entities.conflicts(include_settled=True)}:
        return execute(replica, f"{_native_owner(replica, params['id'])}.conflict.show", {"id": params["id"]})
    found = entities.find_conflict(params["id"])
    view = recorded_conflict(entities, found, settled=entities.is_settled(found))
    current = entities.raw(found.record_id)
    return {**view.to_dict(), "current": None if current is None else {k: v for k, v in current.items() if k != "_got"}}


@command("compat.conflicts.resolve")
def conflicts_resolve(replica: Replica, params: Dict[str, Any]) -> Dict[str, Any]:
    """Settle a conflict with ``strategy`` (ours, theirs, merge) and optional ``values``."""
    from compat.conflict import ConflictResolver
    from compat.versioned_store import entities_for

    entities = entities_for(replica)
    if params["id"] not in {c.id for c in entities.conflicts(include_settled=True)}:
        return execute(replica, f"{_native_owner(replica, params['id'])}.conflict.resolve", params)
    found = entities.find_conflict(params["id"])
    already = entities.is_settled(found)
    strategy = params.get("strategy", "ours")
    entity = ConflictResolver().resolve_recorded(replica, found.id, strategy, params.get("values") or None)
    return {
        "conflict_id": found.id,
        "entity_id": found.record_id,
        "strategy": strategy,
        "already_settled": already,
        "entity": None if entity is None else entity.to_dict(),
    }


@command("compat.migrate")
def migrate_command(replica: Replica, params: Dict[str, Any]) -> Dict[str, Any]:
    """Import the cortical.got directory ``source`` into the replica."""
    from compat.migrate import migrate

    return migrate(params["source"], replica).to_dict()


# ------------------------------------------------------------------- rendering


def _side(side: Dict[str, Any]) -> str:
    """One side of a conflict on one line: `deleted`, or its values in full."""
    if side["deleted"]:
        return "deleted"
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in side["values"].items())


def _render_list(data: Dict[str, Any]) -> None:
    rows = [(c["conflict_id"], c["entity_id"], ",".join(c["conflict_fields"]), _side(c["ours"]), _side(c["theirs"]),
             "yes" if c["settled"] else "no") for c in data["conflicts"]]
    print_table(("id", "entity", "fields", "ours", "theirs", "settled"), rows, "no conflicts")


def _render_show(data: Dict[str, Any]) -> None:
    print(f"conflict {data['conflict_id']} on {data['entity_type']} {data['entity_id']}"
          f" ({'settled' if data['settled'] else 'open'})")
    print(f"fields: {', '.join(data['conflict_fields'])}")
    for side in ("ours", "theirs"):
        info = data[side]
        state = "deleted it" if info["deleted"] else json.dumps(info["values"], sort_keys=True)
        version = f" (version {info['version']})" if info.get("version") is not None else ""
        print(f"{side:<7} {info['writer']} at {info['at']}{version}: {state}")


def _render_resolve(data: Dict[str, Any]) -> None:
    if data["already_settled"]:
        print(f"{data['conflict_id']} was already settled; nothing written")
    elif data["entity"] is None:
        print(f"resolved {data['conflict_id']} ({data['strategy']}): {data['entity_id']} deleted")
    else:
        version = data["entity"].get("version")
        print(f"resolved {data['conflict_id']} ({data['strategy']}): {data['entity_id']} "
              + (f"now at version {version}" if version is not None else "settled"))


def _render_migration(data: Dict[str, Any]) -> None:
    print(f"migrated {data['source']}: {data['changes']} change(s); global version "
          f"{data['version_before']} -> {data['version_after']}")
    for kind, count in data["imported"].items():
        print(f"  imported {kind}: {count}")
    for kind, count in data["unchanged"].items():
        print(f"  already present {kind}: {count}")
    for item in data["skipped"]:
        print(f"  skipped {item['path']}: {item['reason']}")
    for problem in data["problems"]:
        print(f"  could not read: {problem}")


# ------------------------------------------------------------------- commands


def _list(inv: Invocation) -> None:
    """List recorded conflicts."""
    data = inv.run("compat.conflicts.list", {"entity_id": inv.args.entity_id, "all": inv.args.include_settled})
    emit(data, inv.args.as_json, _render_list)


def _show(inv: Invocation) -> None:
    """Show one conflict."""
    emit(inv.run("compat.conflicts.show", {"id": inv.args.conflict_id}), inv.args.as_json, _render_show)


def _resolve(inv: Invocation) -> None:
    """Settle one conflict."""
    a = inv.args
    params = {"id": a.conflict_id, "strategy": a.strategy, "values": parse_props(a.values, "--value")}
    emit(inv.run("compat.conflicts.resolve", params), a.as_json, _render_resolve)


def _migrate(inv: Invocation) -> Optional[ExitCode]:
    """Import an old directory; exit 8 when some of it could not be read (the rest is imported)."""
    old_dir = Path(inv.args.old_dir)
    if not old_dir.is_dir():
        raise UsageError(f"OLD_DIR: {old_dir} is not a directory")
    report = inv.run("compat.migrate", {"source": str(old_dir.resolve())})
    emit(report, inv.args.as_json, _render_migration)
    return ExitCode.PROBLEMS_FOUND if report["problems"] else None


def register(cli: Registry) -> None:
    """Add ``conflicts list|show|resolve`` and ``migrate`` to the ``agentstate`` command."""
    cli.group("conflicts", "Conflicts recorded when replicas wrote one field of a task or entity concurrently.")
    cli.command("conflicts list", "List recorded conflicts (open ones unless --all).",
                Arg("--entity", dest="entity_id", default=None, help="only conflicts of this entity"),
                Arg("--all", dest="include_settled", action="store_true", help="include settled conflicts"),
                json_arg("the conflicts"))(_list)
    cli.command("conflicts show", "Show both sides of one conflict.", Arg("conflict_id", metavar="ID"),
                json_arg("the conflict and the entity as it stands"))(_show)
    cli.command("conflicts resolve", "Settle a conflict; the resolution replicates to every peer.",
                Arg("conflict_id", metavar="ID"),
                Arg("--strategy", choices=("ours", "theirs", "merge"), required=True,
                    help="ours: this replica's side; theirs: the other side; merge: the values given "
                         "(for a task conflict, the values the board shows now unless given)"),
                Arg("--value", dest="values", action="append", metavar="FIELD=JSON",
                    help="a merged value; repeatable (merge needs them)"),
                json_arg("the resolution"))(_resolve)
    cli.command("migrate", "Import a cortical.got directory into this replica (safe to run again).",
                Arg("old_dir", metavar="OLD_DIR", help="the cortical.got directory"),
                json_arg("what was imported, unchanged and skipped"))(_migrate)


__all__ = ["register", "EXIT_CODES"]
