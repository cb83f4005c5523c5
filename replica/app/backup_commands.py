"""`agentstate backup DEST` and `agentstate restore SRC`: the CLI side of `replica.backup`.

Both run in the CLI's own process on the directory (like `import`), whether or not a
daemon serves it: a backup opens the directory as one more process, so writers go on.
"""

from __future__ import annotations

from pathlib import Path

from .cli import Arg, Invocation, Registry, emit, json_arg, record_lines

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _render(data: dict[str, Any]) -> None:
    """Say what was backed up or restored, where, and the counts."""
    counts = ", ".join(f"{value} {key}" for key, value in sorted(data["counts"].items()))
    if "restored_into" in data:
        where = f"restored {data['restored_into']} from {data['path']}"
    else:
        where = f"backed up to {data['path']}"
    print(f"{where}: replica {data['replica_id']}, {data['state_bytes']} bytes of state ({counts})")
    print("\n".join(record_lines({"sha256": data["sha256"], "taken_at": data["created_at"]})))


def backup_cmd(inv: Invocation) -> None:
    """Back up the data directory into a new directory."""
    from replica.backup import backup

    info = backup(inv.session.path, Path(inv.args.dest))
    emit(info.as_dict(), inv.args.as_json, _render)


def restore_cmd(inv: Invocation) -> None:
    """Build the (new or empty) data directory from a backup; `verify` checks it afterwards."""
    from replica.backup import restore

    info = restore(Path(inv.args.source), inv.session.path, replica_id=inv.args.replica_id)
    emit({**info.as_dict(), "restored_into": str(inv.session.path)}, inv.args.as_json, _render)


def register(cli: Registry) -> None:
    """Add `backup` and `restore`; a target that is not empty exits 4, a damaged backup 5."""
    cli.command("backup", "Write a consistent backup of the data directory into a new directory DEST.",
                Arg("dest", metavar="DEST", help="a new (or empty) directory to hold the backup"),
                json_arg("what the backup holds"),
                description="Safe while other processes (serve, agents, the CLI) write: the backup holds every\n"
                            "write acknowledged before it began, as one consistent state (state.yupdate and\n"
                            "backup.json with its checksum), fsynced before it is renamed into place.")(backup_cmd)
    cli.command("restore", "Build the data directory (new or empty) from a backup made by `agentstate backup`.",
                Arg("source", metavar="SRC", help="the backup directory"),
                Arg("--replica-id", default=None,
                    help="name the restored replica (default: the backed-up replica's id; give a new one when\n"
                         "the original replica still runs)"),
                json_arg("what was restored"),
                description="Restores only into a directory that does not exist or is empty (--data DIR);\n"
                            "the checksum is checked first. Then `agentstate verify` checks the result.")(restore_cmd)
