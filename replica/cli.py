"""The `agentstate` command: people get tables, scripts get `--json` and stable exit codes.

Every command runs through `replica.commands`: on a replica this process opens, or, when
`agentstate serve` holds the directory, inside that daemon over its control channel.
Other packages add commands through the `agentstate.cli` entry point group.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from . import commands
from .control import ControlError, Endpoint, call
from .datadir import DataDir
from .durability import Durability
from .errors import DataDirLockedError, ReplicaError
from .exitcodes import ExitCode, exit_code_for
from .replica import Replica

DEFAULT_DATA = ".agentstate"
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
StatusRenderer = Callable[[Console, Any], None]
_STATUS_RENDERERS: dict[str, StatusRenderer] = {}


def register_status_renderer(section: str, renderer: StatusRenderer) -> None:
    """Let a plugin draw its own section of `agentstate status` (by the key its service reports)."""
    _STATUS_RENDERERS[section] = renderer


class Session:
    """Per-invocation context: where the data lives and how to run a command on it."""

    def __init__(self, data: Path, debug: bool) -> None:
        self.datadir = DataDir(data)
        self.debug = debug

    def endpoint(self) -> Endpoint | None:
        """The running daemon's endpoint, if one published it and its process is alive.

        Never touches the directory lock: probing it by taking it could make a `serve`
        that is just starting fail.
        """
        endpoint = Endpoint.read(self.datadir.daemon_file)
        if endpoint is None:
            return None
        try:
            os.kill(endpoint.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return endpoint

    def run(self, name: str, params: dict[str, Any], *, create: bool = False) -> Any:
        """Run a command via the daemon if one holds the directory, else on a local replica."""
        endpoint = self.endpoint()
        unreachable: ControlError | None = None
        if endpoint is not None:
            try:
                return call(endpoint, name, params)
            except ControlError as error:
                unreachable = error
        if not create and not self.datadir.exists():
            raise ReplicaError(
                f"{self.datadir.path} is not an agentstate data directory (run `agentstate init` first, "
                "or pass --data / set AGENTSTATE_DATA)"
            )
        try:
            replica = Replica.open(self.datadir.path)
        except DataDirLockedError:
            if unreachable is not None:
                raise unreachable from None
            raise
        try:
            self.datadir.daemon_file.unlink(missing_ok=True)
            return commands.execute(replica, name, params)
        finally:
            replica.close()


def _session(ctx: click.Context) -> Session:
    return ctx.find_object(Session)  # type: ignore[return-value]


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print `data` as JSON for scripts or through `render` for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        render(data)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def parse_props(pairs: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs; VALUE is JSON if it parses as JSON, else a plain string."""
    props: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--prop")
        try:
            props[key] = json.loads(raw)
        except ValueError:
            props[key] = raw
    return props


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", type=click.Path(path_type=Path), envvar="AGENTSTATE_DATA", default=DEFAULT_DATA,
              show_default=True, help="Data directory (else $AGENTSTATE_DATA, else ./.agentstate).")
@click.option("--debug", is_flag=True, help="Show tracebacks for internal errors.")
@click.pass_context
def cli(ctx: click.Context, data: Path, debug: bool) -> None:
    """agentstate: replicated task board, graph of thought and counters for AI agents."""
    ctx.obj = Session(data, debug)


@cli.command()
@click.option("--replica-id", default=None, help="Name for this replica (default: generated).")
@json_option
@click.pass_context
def init(ctx: click.Context, replica_id: str | None, as_json: bool) -> None:
    """Create the data directory (nothing changes if it exists)."""
    session = _session(ctx)
    existed = session.datadir.exists()
    if session.endpoint() is not None:
        result = session.run("status", {})["replica"]
    else:
        with Replica.open(session.datadir.path, replica_id=replica_id) as replica:
            result = replica.stats()
    emit({"replica_id": result["replica_id"], "path": str(session.datadir.path), "created": not existed},
         as_json, lambda d: out.print(f"{'initialised' if d['created'] else 'already initialised'} "
                                      f"{d['path']} (replica {d['replica_id']})"))


@cli.command()
@click.option("--durability", type=click.Choice([m.value for m in Durability]), default="balanced",
              envvar="AGENTSTATE_DURABILITY", show_default=True, help="When writes reach the disk.")
@click.pass_context
def serve(ctx: click.Context, durability: str, **options: Any) -> None:
    """Hold the data directory and run the replica until SIGTERM / Ctrl-C."""
    from .daemon import Daemon

    session = _session(ctx)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    daemon = Daemon(session.datadir.path, durability=durability, options=options)
    asyncio.run(daemon.run(ready=lambda d: click.echo(f"ready {d.replica.replica_id if d.replica else ''}",
                                                      err=True)))


def _task_table(tasks: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("id", "status", "priority", "owner", "title", "tags"):
        table.add_column(column)
    for t in tasks:
        table.add_row(t["id"], t["status"], t["priority"], t.get("owner") or "", t["title"], ",".join(t["tags"]))
    return table


def _show_record(data: dict[str, Any]) -> None:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in data.items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else str(value if value is not None else "")
        table.add_row(key, text)
    out.print(table)


@cli.group()
def task() -> None:
    """Tasks on the shared board."""


@task.command("add")
@click.argument("title")
@click.option("--id", "task_id", default=None, help="Task id (default: generated T-...).")
@click.option("--description", default="")
@click.option("--status", default="pending")
@click.option("--priority", default="medium")
@click.option("--owner", default=None)
@click.option("--tag", "tags", multiple=True, help="Repeatable.")
@click.option("--depends-on", "depends_on", multiple=True, help="Repeatable.")
@click.option("--prop", "props", multiple=True, help="KEY=VALUE (JSON value), repeatable.")
@json_option
@click.pass_context
def task_add(ctx: click.Context, title: str, task_id: str | None, description: str, status: str, priority: str,
             owner: str | None, tags: tuple[str, ...], depends_on: tuple[str, ...], props: tuple[str, ...],
             as_json: bool) -> None:
    """Create a task."""
    params = {"title": title, "id": task_id, "description": description, "status": status,
              "priority": priority, "owner": owner, "tags": list(tags), "depends_on": list(depends_on),
              "properties": parse_props(props)}
    result = _session(ctx).run("task.add", params)
    emit(result, as_json, lambda d: out.print(d["id"]))


@task.command("list")
@click.option("--status", default=None)
@click.option("--owner", default=None)
@click.option("--tag", default=None)
@json_option
@click.pass_context
def task_list(ctx: click.Context, status: str | None, owner: str | None, tag: str | None, as_json: bool) -> None:
    """List tasks, optionally filtered."""
    params = {k: v for k, v in {"status": status, "owner": owner, "tag": tag}.items() if v is not None}
    result = _session(ctx).run("task.list", params)

    def render(d: dict[str, Any]) -> None:
        out.print(_task_table(d["tasks"]))
        if d["invalid"]:
            err.print(f"{len(d['invalid'])} invalid task record(s) skipped; see `agentstate verify`")

    emit(result, as_json, render)


@task.command("show")
@click.argument("task_id")
@json_option
@click.pass_context
def task_show(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Show one task."""
    emit(_session(ctx).run("task.show", {"id": task_id}), as_json, _show_record)


@task.command("update")
@click.argument("task_id")
@click.option("--title", default=None)
@click.option("--description", default=None)
@click.option("--status", default=None)
@click.option("--priority", default=None)
@click.option("--owner", default=None)
@click.option("--add-tag", "add_tags", multiple=True)
@click.option("--remove-tag", "remove_tags", multiple=True)
@click.option("--depends-on", "depends_on", multiple=True, help="Replaces the dependency set.")
@click.option("--prop", "props", multiple=True, help="KEY=VALUE (JSON value), repeatable.")
@click.option("--remove-prop", "remove_props", multiple=True)
@json_option
@click.pass_context
def task_update(ctx: click.Context, task_id: str, title: str | None, description: str | None,
                status: str | None, priority: str | None, owner: str | None, add_tags: tuple[str, ...],
                remove_tags: tuple[str, ...], depends_on: tuple[str, ...], props: tuple[str, ...],
                remove_props: tuple[str, ...], as_json: bool) -> None:
    """Change fields of a task (only those given)."""
    params: dict[str, Any] = {"id": task_id}
    for key, value in (("title", title), ("description", description), ("status", status),
                       ("priority", priority), ("owner", owner)):
        if value is not None:
            params[key] = value
    if add_tags:
        params["add_tags"] = list(add_tags)
    if remove_tags:
        params["remove_tags"] = list(remove_tags)
    if depends_on:
        params["depends_on"] = list(depends_on)
    if props:
        params["properties"] = parse_props(props)
    if remove_props:
        params["remove_properties"] = list(remove_props)
    emit(_session(ctx).run("task.update", params), as_json, _show_record)


@task.command("rm")
@click.argument("task_id")
@json_option
@click.pass_context
def task_rm(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Delete a task."""
    emit(_session(ctx).run("task.rm", {"id": task_id}), as_json, lambda d: out.print(f"deleted {d['deleted']}"))


@cli.group()
def graph() -> None:
    """The graph of thought: nodes and edges."""


@graph.group("node")
def graph_node() -> None:
    """Graph nodes."""


@graph_node.command("add")
@click.argument("node_id")
@click.option("--type", "node_type", required=True)
@click.option("--content", default="")
@click.option("--prop", "props", multiple=True, help="KEY=VALUE (JSON value), repeatable.")
@json_option
@click.pass_context
def node_add(ctx: click.Context, node_id: str, node_type: str, content: str, props: tuple[str, ...],
             as_json: bool) -> None:
    """Add a node."""
    params = {"id": node_id, "type": node_type, "content": content, "properties": parse_props(props)}
    emit(_session(ctx).run("graph.node.add", params), as_json, lambda d: out.print(d["id"]))


@graph_node.command("update")
@click.argument("node_id")
@click.option("--type", "node_type", default=None)
@click.option("--content", default=None)
@click.option("--prop", "props", multiple=True)
@click.option("--remove-prop", "remove_props", multiple=True)
@json_option
@click.pass_context
def node_update(ctx: click.Context, node_id: str, node_type: str | None, content: str | None,
                props: tuple[str, ...], remove_props: tuple[str, ...], as_json: bool) -> None:
    """Change fields of a node."""
    params: dict[str, Any] = {"id": node_id}
    if node_type is not None:
        params["type"] = node_type
    if content is not None:
        params["content"] = content
    if props:
        params["properties"] = parse_props(props)
    if remove_props:
        params["remove_properties"] = list(remove_props)
    emit(_session(ctx).run("graph.node.update", params), as_json, _show_record)


@graph_node.command("rm")
@click.argument("node_id")
@json_option
@click.pass_context
def node_rm(ctx: click.Context, node_id: str, as_json: bool) -> None:
    """Remove a node and its edges."""
    emit(_session(ctx).run("graph.node.rm", {"id": node_id}), as_json,
         lambda d: out.print(f"deleted {d['deleted']} and {d['edges_removed']} edge(s)"))


@graph_node.command("list")
@click.option("--type", "node_type", default=None)
@json_option
@click.pass_context
def node_list(ctx: click.Context, node_type: str | None, as_json: bool) -> None:
    """List nodes."""
    params = {"type": node_type} if node_type else {}

    def render(d: dict[str, Any]) -> None:
        table = Table(box=None, pad_edge=False)
        for column in ("id", "type", "content"):
            table.add_column(column)
        for n in d["nodes"]:
            table.add_row(n["id"], n["type"], n["content"])
        out.print(table)

    emit(_session(ctx).run("graph.node.list", params), as_json, render)


@graph.group("edge")
def graph_edge() -> None:
    """Graph edges."""


def _edge_table(edges: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("source", "type", "target", "weight"):
        table.add_column(column)
    for e in edges:
        table.add_row(e["source"], e["type"], e["target"], f"{e['weight']:g}")
    return table


@graph_edge.command("add")
@click.argument("source")
@click.argument("target")
@click.option("--type", "edge_type", required=True)
@click.option("--weight", type=float, default=1.0, show_default=True)
@click.option("--prop", "props", multiple=True)
@json_option
@click.pass_context
def edge_add(ctx: click.Context, source: str, target: str, edge_type: str, weight: float,
             props: tuple[str, ...], as_json: bool) -> None:
    """Add (or re-weight) an edge."""
    params = {"source": source, "target": target, "type": edge_type, "weight": weight,
              "properties": parse_props(props)}
    emit(_session(ctx).run("graph.edge.add", params), as_json,
         lambda d: out.print(f"{d['source']} -{d['type']}-> {d['target']}"))


@graph_edge.command("rm")
@click.argument("source")
@click.argument("target")
@click.option("--type", "edge_type", required=True)
@json_option
@click.pass_context
def edge_rm(ctx: click.Context, source: str, target: str, edge_type: str, as_json: bool) -> None:
    """Remove an edge."""
    emit(_session(ctx).run("graph.edge.rm", {"source": source, "target": target, "type": edge_type}),
         as_json, lambda d: out.print(f"deleted {d['deleted']}"))


@graph_edge.command("list")
@click.option("--source", default=None)
@click.option("--target", default=None)
@click.option("--type", "edge_type", default=None)
@json_option
@click.pass_context
def edge_list(ctx: click.Context, source: str | None, target: str | None, edge_type: str | None,
              as_json: bool) -> None:
    """List edges (and any dangling ones)."""
    params = {k: v for k, v in {"source": source, "target": target, "type": edge_type}.items() if v}

    def render(d: dict[str, Any]) -> None:
        out.print(_edge_table(d["edges"]))
        if d["dangling"]:
            err.print(f"{len(d['dangling'])} dangling edge(s) (an end not present here yet)")

    emit(_session(ctx).run("graph.edge.list", params), as_json, render)


@graph.command("show")
@click.argument("node_id")
@click.option("--depth", type=click.IntRange(0, 20), default=1, show_default=True)
@click.option("--limit", type=click.IntRange(1, 100_000), default=200, show_default=True)
@click.option("--direction", type=click.Choice(["out", "in", "both"]), default="both", show_default=True)
@json_option
@click.pass_context
def graph_show(ctx: click.Context, node_id: str, depth: int, limit: int, direction: str, as_json: bool) -> None:
    """Show a node and its neighbourhood (bounded traversal)."""
    params = {"id": node_id, "depth": depth, "limit": limit, "direction": direction}

    def render(d: dict[str, Any]) -> None:
        table = Table(box=None, pad_edge=False)
        for column in ("depth", "id", "type", "content"):
            table.add_column(column)
        for n in d["nodes"]:
            table.add_row(str(n["depth"]), n["id"], n["type"], n["content"])
        out.print(table)
        out.print(_edge_table(d["edges"]))

    emit(_session(ctx).run("graph.show", params), as_json, render)


@cli.group()
def counter() -> None:
    """Exact PN-counters."""


def _counter_command(name: str, verb: str) -> None:
    @counter.command(verb)
    @click.argument("counter_name")
    @click.option("--by", type=int, default=1, show_default=True)
    @json_option
    @click.pass_context
    def run(ctx: click.Context, counter_name: str, by: int, as_json: bool) -> None:
        result = _session(ctx).run(name, {"name": counter_name, "by": by})
        emit(result, as_json, lambda d: out.print(str(d["value"])))

    run.__doc__ = f"{verb.capitalize()} a counter and print its new value."


_counter_command("counter.incr", "incr")
_counter_command("counter.decr", "decr")


@counter.command("get")
@click.argument("counter_name")
@json_option
@click.pass_context
def counter_get(ctx: click.Context, counter_name: str, as_json: bool) -> None:
    """Print a counter's value."""
    emit(_session(ctx).run("counter.get", {"name": counter_name}), as_json, lambda d: out.print(str(d["value"])))


@counter.command("list")
@json_option
@click.pass_context
def counter_list(ctx: click.Context, as_json: bool) -> None:
    """List every counter."""

    def render(d: dict[str, Any]) -> None:
        table = Table(box=None, pad_edge=False)
        table.add_column("name")
        table.add_column("value", justify="right")
        for name, value in sorted(d["counters"].items()):
            table.add_row(name, str(value))
        out.print(table)

    emit(_session(ctx).run("counter.list", {}), as_json, render)


@cli.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the replica, the daemon and (with the network) its peers."""
    session = _session(ctx)
    result = session.run("status", {})
    result.setdefault("daemon", None)

    def render(d: dict[str, Any]) -> None:
        _show_record(d["replica"])
        out.print(f"daemon: {'pid ' + str(d['daemon']['pid']) if d['daemon'] else 'not running'}")
        if d.get("invalid_records"):
            out.print(f"invalid records: {d['invalid_records']} (see `agentstate verify`)")
        for key, renderer in _STATUS_RENDERERS.items():
            if key in d:
                renderer(out, d[key])

    emit(result, as_json, render)


@cli.command()
@json_option
@click.pass_context
def compact(ctx: click.Context, as_json: bool) -> None:
    """Snapshot the state and drop log segments it makes redundant."""
    emit(_session(ctx).run("compact", {}), as_json,
         lambda d: out.print(f"snapshot at record {d['lsn']}; removed {len(d['removed_segments'])} segment(s)"))


@cli.command()
@json_option
@click.pass_context
def verify(ctx: click.Context, as_json: bool) -> None:
    """Check every log record and snapshot, and list invalid records; exit 8 if anything is wrong."""
    session = _session(ctx)
    try:
        result = session.run("verify", {})
    except ReplicaError as exc:
        if isinstance(exc, DataDirLockedError) or not session.datadir.exists():
            raise
        from .repair import scan

        problems = scan(session.datadir).problems() or [f"cannot open: {exc}"]
        result = {"storage_problems": problems, "invalid": [], "ok": False}

    def render(d: dict[str, Any]) -> None:
        for line in d["storage_problems"]:
            out.print(f"storage: {line}")
        for record in d["invalid"]:
            out.print(f"invalid {record['kind']} {record['id']}: {'; '.join(record['problems'])}")
        if d["ok"]:
            out.print("ok")

    emit(result, as_json, render)
    if not result["ok"]:
        ctx.exit(ExitCode.PROBLEMS_FOUND)


@cli.command()
@json_option
@click.pass_context
def repair(ctx: click.Context, as_json: bool) -> None:
    """Salvage every readable record of a damaged directory (damaged files are kept aside)."""
    from .repair import repair as run_repair

    session = _session(ctx)
    if session.endpoint() is not None:
        raise ReplicaError("`agentstate serve` holds this directory: stop it before repairing")
    report = run_repair(session.datadir.path)
    data = {"salvaged_records": report.salvaged_records, "dropped": report.dropped,
            "moved_to": str(report.moved_to) if report.moved_to else None, "snapshot_lsn": report.snapshot_lsn}

    def render(d: dict[str, Any]) -> None:
        out.print(f"salvaged {d['salvaged_records']} record(s); state saved as snapshot {d['snapshot_lsn']}")
        for line in d["dropped"]:
            out.print(f"dropped: {line}")
        if d["moved_to"]:
            out.print(f"the damaged files were moved to {d['moved_to']}")

    emit(data, as_json, render)


@cli.command("export")
@click.argument("file", type=click.Path(path_type=Path, allow_dash=True))
@click.pass_context
def export_cmd(ctx: click.Context, file: Path) -> None:
    """Write the whole state as a Yjs update file (`-` for stdout)."""
    update = base64.b64decode(_session(ctx).run("export", {})["update"])
    if str(file) == "-":
        sys.stdout.buffer.write(update)
        sys.stdout.buffer.flush()
    else:
        file.write_bytes(update)
        err.print(f"wrote {len(update)} bytes to {file}")


@cli.command("import")
@click.argument("file", type=click.Path(path_type=Path, allow_dash=True))
@json_option
@click.pass_context
def import_cmd(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Merge a Yjs update file (from `export`) into this replica."""
    try:
        update = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as exc:
        raise click.FileError(str(file), hint=exc.strerror) from None
    params = {"update": base64.b64encode(update).decode(), "origin": f"import:{file}"}
    emit(_session(ctx).run("import", params, create=True), as_json,
         lambda d: out.print("merged" if d["changed"] else "nothing new"))


def load_plugins() -> None:
    """Let installed packages (transport, compat) add their commands and options."""
    for ep in entry_points(group="agentstate.cli"):
        try:
            ep.load()(cli)
        except Exception as exc:
            err.print(f"warning: plugin {ep.name} failed to load: {exc}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn every error into a message and an exit code."""
    load_plugins()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        code = cli.main(args=argv, prog_name="agentstate", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        err.print("aborted")
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except ControlError as exc:
        err.print(f"error: {exc}")
        code = ExitCode.UNREACHABLE
    except ReplicaError as exc:
        err.print(f"error: {exc}")
        code = exit_code_for(exc)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        err.print(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)")
        code = ExitCode.INTERNAL
    sys.exit(int(code or 0))
