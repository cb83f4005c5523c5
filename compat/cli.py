"""``agentstate conflicts list|show|resolve`` and ``agentstate migrate``: compat's commands.

The operations are registered with :mod:`replica.commands`, so they run the same way on a
replica the CLI opens itself or inside a running ``agentstate serve``. ``register(cli)``
is the ``agentstate.cli`` entry point that adds the click commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

import click
from rich.table import Table

from compat.conflict import ConflictResolver, recorded_conflict
from compat.errors import GoTError
from compat.migrate import migrate
from compat.versioned_store import entities_for
from replica import Replica
from replica.commands import command
from replica.exitcodes import ExitCode, exit_code_for, register_exit_code
from replica.cli import Session, emit, json_option, out, parse_props

EXIT_CODES: Dict[str, ExitCode] = {
    "ConflictError": ExitCode.CONFLICT,
    "CorruptionError": ExitCode.DATA,
    "ValidationError": ExitCode.INVALID,
    "NotFoundError": ExitCode.NOT_FOUND,
    "TransactionError": ExitCode.INVALID,
    "SyncError": ExitCode.UNREACHABLE,
    "DirectoryLockedError": ExitCode.DATA,
}
"""Exit codes of compat's errors (by class name, as ``replica.exitcodes`` maps them)."""

for _name, _code in EXIT_CODES.items():
    register_exit_code(_name, _code)


# ------------------------------------------------------------------ operations


@command("compat.conflicts.list")
def conflicts_list(replica: Replica, params: Dict[str, Any]) -> Dict[str, Any]:
    """Recorded conflicts (``entity_id`` to filter, ``all`` to include settled ones)."""
    found = ConflictResolver().recorded_conflicts(
        replica, params.get("entity_id"), include_settled=bool(params.get("all", False))
    )
    return {"conflicts": [c.to_dict() for c in found]}


@command("compat.conflicts.show")
def conflicts_show(replica: Replica, params: Dict[str, Any]) -> Dict[str, Any]:
    """One conflict by id, settled or not, with the entity as it stands now."""
    entities = entities_for(replica)
    found = entities.find_conflict(params["id"])
    view = recorded_conflict(entities, found, settled=entities.is_settled(found))
    current = entities.raw(found.record_id)
    return {**view.to_dict(), "current": None if current is None else {k: v for k, v in current.items() if k != "_got"}}


@command("compat.conflicts.resolve")
def conflicts_resolve(replica: Replica, params: Dict[str, Any]) -> Dict[str, Any]:
    """Settle a conflict with ``strategy`` (ours, theirs, merge) and optional ``values``."""
    entities = entities_for(replica)
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
    return migrate(params["source"], replica).to_dict()


# ------------------------------------------------------------------- commands


class CompatCommandError(click.ClickException):
    """A compat error in a command this process ran itself, with the exit code of its class."""

    def __init__(self, error: GoTError) -> None:
        super().__init__(str(error))
        self.exit_code = int(exit_code_for(error))

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _run(ctx: click.Context, name: str, params: Dict[str, Any], *, create: bool = False) -> Any:
    session: Session = ctx.find_object(Session)  # type: ignore[assignment]
    try:
        return session.run(name, params, create=create)
    except GoTError as exc:
        raise CompatCommandError(exc) from None


def _values(pairs: Tuple[str, ...]) -> Dict[str, Any]:
    try:
        return parse_props(pairs)
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message, param_hint="--value") from None


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _side(side: Dict[str, Any]) -> str:
    if side["deleted"]:
        return "deleted"
    return ", ".join(f"{k}={_short(v)}" for k, v in side["values"].items())


def _render_list(data: Dict[str, Any]) -> None:
    conflicts = data["conflicts"]
    if not conflicts:
        out.print("no conflicts")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("id", "entity", "fields", "ours", "theirs", "settled"):
        table.add_column(column)
    for c in conflicts:
        table.add_row(c["conflict_id"], c["entity_id"], ",".join(c["conflict_fields"]), _side(c["ours"]),
                      _side(c["theirs"]), "yes" if c["settled"] else "no")
    out.print(table)


def _render_show(data: Dict[str, Any]) -> None:
    out.print(f"conflict {data['conflict_id']} on {data['entity_type']} {data['entity_id']}"
              f" ({'settled' if data['settled'] else 'open'})")
    out.print(f"fields: {', '.join(data['conflict_fields'])}")
    for side in ("ours", "theirs"):
        info = data[side]
        state = "deleted it" if info["deleted"] else json.dumps(info["values"], sort_keys=True)
        out.print(f"{side:<7} {info['writer']} at {info['at']} (version {info['version']}): {state}")


def _render_resolve(data: Dict[str, Any]) -> None:
    if data["already_settled"]:
        out.print(f"{data['conflict_id']} was already settled; nothing written")
    elif data["entity"] is None:
        out.print(f"resolved {data['conflict_id']} ({data['strategy']}): {data['entity_id']} deleted")
    else:
        out.print(f"resolved {data['conflict_id']} ({data['strategy']}): {data['entity_id']} "
                  f"now at version {data['entity']['version']}")


def _render_migration(data: Dict[str, Any]) -> None:
    out.print(f"migrated {data['source']}: {data['changes']} change(s); global version "
              f"{data['version_before']} -> {data['version_after']}")
    for kind, count in data["imported"].items():
        out.print(f"  imported {kind}: {count}")
    for kind, count in data["unchanged"].items():
        out.print(f"  already present {kind}: {count}")
    for item in data["skipped"]:
        out.print(f"  skipped {item['path']}: {item['reason']}")
    for problem in data["problems"]:
        out.print(f"  could not read: {problem}")


def register(cli: click.Group) -> None:
    """Add ``conflicts`` and ``migrate`` to the ``agentstate`` command."""

    @cli.group("conflicts")
    def conflicts() -> None:
        """Conflicts recorded when replicas committed to the same entity concurrently."""

    @conflicts.command("list")
    @click.option("--entity", "entity_id", default=None, help="Only conflicts of this entity.")
    @click.option("--all", "include_settled", is_flag=True, help="Include settled conflicts.")
    @json_option
    @click.pass_context
    def list_cmd(ctx: click.Context, entity_id: str, include_settled: bool, as_json: bool) -> None:
        """List recorded conflicts (open ones unless --all)."""
        data = _run(ctx, "compat.conflicts.list", {"entity_id": entity_id, "all": include_settled})
        emit(data, as_json, _render_list)

    @conflicts.command("show")
    @click.argument("conflict_id")
    @json_option
    @click.pass_context
    def show_cmd(ctx: click.Context, conflict_id: str, as_json: bool) -> None:
        """Show both sides of one conflict."""
        emit(_run(ctx, "compat.conflicts.show", {"id": conflict_id}), as_json, _render_show)

    @conflicts.command("resolve")
    @click.argument("conflict_id")
    @click.option("--strategy", type=click.Choice(["ours", "theirs", "merge"]), required=True,
                  help="ours: this replica's side; theirs: the other side; merge: the values given.")
    @click.option("--value", "values", multiple=True, help="FIELD=JSON, repeatable (required by merge).")
    @json_option
    @click.pass_context
    def resolve_cmd(
        ctx: click.Context, conflict_id: str, strategy: str, values: Tuple[str, ...], as_json: bool
    ) -> None:
        """Settle a conflict; the resolution replicates to every peer."""
        params = {"id": conflict_id, "strategy": strategy, "values": _values(values)}
        emit(_run(ctx, "compat.conflicts.resolve", params), as_json, _render_resolve)

    @cli.command("migrate")
    @click.argument("old_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
    @json_option
    @click.pass_context
    def migrate_cmd(ctx: click.Context, old_dir: Path, as_json: bool) -> None:
        """Import a cortical.got directory into this replica (safe to run again)."""
        data = _run(ctx, "compat.migrate", {"source": str(old_dir.resolve())}, create=True)
        emit(data, as_json, _render_migration)


__all__ = ["register", "EXIT_CODES", "CompatCommandError"]
