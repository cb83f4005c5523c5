"""The `agentstate` command: people get aligned text, scripts get `--json` and stable exit codes.

Every command runs through `replica.app.commands`: inside a running `agentstate serve` over its
control socket (faster), or on a replica this process opens (any number of processes may);
the result is the same either way. Writes carry an idempotency key, so that a request the
daemon may have run before it died is retried without being applied twice.
Agents call this hundreds of times, so a call imports only what it needs: the daemon path
loads argparse, json and a socket, never pycrdt or pydantic. The transport's and compat's
commands (`transport_commands`, `compat_commands`) are imported directly when needed; other
packages add theirs through the `agentstate.cli` entry point group (`register(cli)` with a `Registry`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from replica.errors import ReplicaError

from .control import (
    ENDPOINT_FILE,
    ControlError,
    Endpoint,
    NotDelivered,
    RemoteError,
    ReplyLost,
    call,
    claim_daemon_lock,
)
from .exitcodes import ExitCode, exit_code_for, register_exit_code

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

    Runner = Callable[["Invocation"], "int | None"]
    StatusRenderer = Callable[[Any], "list[str]"]
    ServeNote = Callable[[dict[str, Any], dict[str, Any]], "list[str]"]

DEFAULT_DATA = ".agentstate"
TASK_STATUSES = ("pending", "in_progress", "blocked", "completed", "cancelled")
PRIORITIES = ("low", "medium", "high", "critical")
DURABILITY_MODES = ("paranoid", "balanced", "lazy")
TYPE_RULE = "a letter, then up to 63 letters, digits, '_', '.' or '-'"
PLUGIN_GROUP = "agentstate.cli"
KEYED = frozenset({
    "task.add", "task.update", "task.rm", "graph.node.add", "graph.node.update", "graph.node.rm",
    "graph.edge.add", "graph.edge.rm", "counter.incr", "counter.decr", "lesson.add", "compat.conflicts.resolve",
    "task.claim", "task.renew", "task.release", "task.complete",
})
"""Commands that write: each carries its invocation's idempotency key, so a retry applies once.
Every other command is a read, or changes nothing when run again (`import`, `migrate`, `compact`)."""
RETRY_TIMEOUT = 10.0
"""Seconds a retry on a restarted daemon may take before it is run here instead (still with its key)."""
EXIT_CODES_HELP = ("exit codes: 0 ok, 1 internal error, 2 usage, 3 not found, 4 invalid input, "
                   "5 data directory problem, 6 peer unreachable, 7 conflict, 8 problems found (verify, migrate)")


class UsageError(Exception):
    """The command line itself is wrong (exit 2)."""


class Arg:
    """One argparse argument of a command; `env` names a variable that supplies the default."""

    __slots__ = ("flags", "options", "env")

    def __init__(self, *flags: str, env: str | None = None, **options: Any) -> None:
        self.flags = flags
        self.options = options
        self.env = env

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add this argument to `parser`, taking its default from $env when set."""
        options = dict(self.options)
        if self.env is not None:
            if os.environ.get(self.env):
                options["default"] = os.environ[self.env]
                options.pop("required", None)
            options["help"] = f"{options.get('help', '')} (or ${self.env})".strip()
        parser.add_argument(*self.flags, **options)


def terminal_width() -> int:
    """Columns to wrap help at: $COLUMNS, else the terminal's width, else 100 (without importing shutil)."""
    try:
        return max(40, int(os.environ["COLUMNS"]))
    except (KeyError, ValueError):
        pass
    try:
        return max(40, os.get_terminal_size(sys.stdout.fileno()).columns)
    except (OSError, ValueError, AttributeError):
        return 100


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter with the width decided once (argparse asks shutil on every argument added)."""

    width = 0

    def __init__(self, prog: str) -> None:
        if not HelpFormatter.width:
            HelpFormatter.width = terminal_width() - 2
        super().__init__(prog, width=HelpFormatter.width)


class Command:
    """A command: its words, one-line summary, longer description, arguments and what it runs."""

    __slots__ = ("path", "summary", "description", "args", "run", "plugins")

    def __init__(self, path: tuple[str, ...], summary: str, description: str, args: list[Arg],
                 run: Runner, plugins: bool) -> None:
        self.path = path
        self.summary = summary
        self.description = description
        self.args = args
        self.run = run
        self.plugins = plugins

    def parser(self) -> argparse.ArgumentParser:
        """An argparse parser for this command's own arguments (built only for the command run)."""
        parser = argparse.ArgumentParser(
            prog="agentstate " + " ".join(self.path), description=self.summary + (
                "\n\n" + self.description if self.description else ""),
            formatter_class=HelpFormatter, allow_abbrev=False)
        for argument in self.args:
            argument.add_to(parser)
        return parser


class Registry:
    """Every command and command group, plus the hooks plugins fill (status sections, serve notes)."""

    def __init__(self) -> None:
        self.commands: dict[tuple[str, ...], Command] = {}
        self.groups: dict[tuple[str, ...], str] = {}
        self.status_renderers: dict[str, StatusRenderer] = {}
        self.serve_notes: list[ServeNote] = []
        self.plugins_loaded = False

    def group(self, words: str, summary: str) -> None:
        """Declare a command group (`task`, `graph node`) and its one-line summary."""
        self.groups[tuple(words.split())] = summary

    def command(self, words: str, summary: str, *args: Arg, description: str = "",
                plugins: bool = False) -> Callable[[Runner], Runner]:
        """Register the decorated function as command `words`; `plugins` loads plugins before it runs."""

        def decorate(run: Runner) -> Runner:
            path = tuple(words.split())
            self.commands[path] = Command(path, summary, description, list(args), run, plugins)
            return run

        return decorate

    def extend(self, words: str, *args: Arg) -> None:
        """Add arguments to an existing command (the transport adds its network options to `serve`)."""
        command = self.commands[tuple(words.split())]
        known = {flag for argument in command.args for flag in argument.flags}
        command.args.extend(a for a in args if not known.intersection(a.flags))

    def register_status_renderer(self, section: str, renderer: StatusRenderer) -> None:
        """Let a plugin print its own section of `agentstate status` (by the key its service reports)."""
        self.status_renderers[section] = renderer

    def register_serve_note(self, note: ServeNote) -> None:
        """Let a plugin add lines to what `serve` prints when ready: `note(options, service_status)`."""
        self.serve_notes.append(note)

    def top_words(self) -> set[str]:
        """First words of every command and group."""
        return {path[0] for path in self.commands} | {path[0] for path in self.groups}

    def load_plugins(self) -> None:
        """Add compat's and the transport's commands, then those of installed plugins, once."""
        if self.plugins_loaded:
            return
        self.plugins_loaded = True
        from importlib import import_module

        from . import compat_commands, hub_commands, transport_commands

        compat_commands.register(self)
        transport_commands.register(self)
        import_module(".git_commands", __package__).register(self)
        hub_commands.register(self)
        for name, target in entry_points(PLUGIN_GROUP):
            module, _, attribute = target.partition(":")
            try:
                getattr(import_module(module.strip()), attribute.strip())(self)
            except Exception as exc:
                print(f"warning: plugin {name} failed to load: {exc}", file=sys.stderr)
        import_module(".backup_commands", __package__).register(self)
        import_module(".worker_commands", __package__).register(self)
        import_module(".log_options", __package__).register(self)

    def help_text(self) -> str:
        """The top-level help: global options, then every command with its summary."""
        paths = sorted(self.commands, key=lambda p: _ORDER.get(p[0], 50))
        width = max(len(" ".join(p)) for p in paths) + 2
        lines = [
            "usage: agentstate [--data DIR] [--debug] COMMAND [ARGS...]",
            "",
            "agentstate: replicated task board, graph of thought and counters for AI agents.",
            "",
            "options:",
            "  --data DIR  data directory (default: $AGENTSTATE_DATA, else ./.agentstate);",
            "              created on first use",
            "  --debug     show tracebacks for internal errors, and how a command",
            "              reached the directory (daemon, retry, here)",
            "  -h, --help  show this help",
            "  --version   print agentstate's version",
            "",
            "commands:",
        ]
        lines += [f"  {' '.join(p):<{width}}{self.commands[p].summary}" for p in paths]
        lines += ["", "`agentstate COMMAND --help` shows a command's options.", EXIT_CODES_HELP]
        return "\n".join(lines) + "\n"

    def group_help(self, path: tuple[str, ...]) -> str:
        """Help of one group: its summary and its commands."""
        inner = [p for p in self.commands if p[:len(path)] == path]
        width = max(len(" ".join(p)) for p in inner) + 2
        lines = [f"usage: agentstate {' '.join(path)} COMMAND [ARGS...]", "", self.groups.get(path, ""), "",
                 "commands:"]
        lines += [f"  {' '.join(p):<{width}}{self.commands[p].summary}" for p in inner]
        return "\n".join(lines) + "\n"


_ORDER = {"init": 0, "task": 1, "graph": 2, "counter": 3, "status": 4, "serve": 5}


def entry_points(group: str) -> list[tuple[str, str]]:
    """(name, "module:attribute") of every installed entry point in `group`.

    Reads the entry_points.txt of each distribution on sys.path (first one of a name wins,
    as importlib.metadata does) without importing importlib.metadata, which costs ~30 ms.
    """
    found: dict[str, str] = {}
    seen: set[str] = set()
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for dist in names:
            if not dist.endswith((".dist-info", ".egg-info")):
                continue
            project = dist.rsplit(".", 1)[0].split("-", 1)[0].lower().replace("_", "-").replace(".", "-")
            if project in seen:
                continue
            seen.add(project)
            try:
                text = Path(entry or ".", dist, "entry_points.txt").read_text()
            except OSError:
                continue
            section = None
            for line in text.splitlines():
                line = line.strip()
                if line.startswith("[") and line.endswith("]"):
                    section = line[1:-1].strip()
                elif section == group and "=" in line and not line.startswith(("#", ";")):
                    name, _, target = line.partition("=")
                    found.setdefault(name.strip(), target.strip())
    return sorted(found.items())


cli = Registry()


class Session:
    """Per-invocation context: where the data lives and how to run a command on it."""

    def __init__(self, data: Path | str, debug: bool = False) -> None:
        self.path = Path(data).expanduser().resolve()
        self.debug = debug

    def note(self, text: str) -> None:
        """Say on stderr, with --debug only, how a command reached the directory."""
        if self.debug:
            print(f"agentstate: {text}", file=sys.stderr)

    def endpoint(self) -> Endpoint | None:
        """The running daemon's endpoint, if one published it and its process is alive.

        A daemon.json naming a dead process is removed, under the daemon lock, so that the
        file a restarted daemon has just published is never the one removed.
        """
        path = self.path / ENDPOINT_FILE
        endpoint = Endpoint.read(path)
        if endpoint is None:
            return None
        try:
            os.kill(endpoint.pid, 0)
        except ProcessLookupError:
            self._remove_stale(endpoint)
            return None
        except PermissionError:
            pass
        return endpoint

    def _remove_stale(self, endpoint: Endpoint) -> None:
        """Remove daemon.json if it still names the dead `endpoint` and no daemon holds the lock."""
        try:
            claim = claim_daemon_lock(self.path)
        except OSError:
            return
        if claim is None:
            return
        try:
            path = self.path / ENDPOINT_FILE
            if Endpoint.read(path) == endpoint:
                path.unlink(missing_ok=True)
        finally:
            os.close(claim)

    def run(self, name: str, params: dict[str, Any], *, key: str | None = None, here: bool = False) -> Any:
        """Run a command in the daemon if one serves the directory (faster), else on a replica opened here.

        What the daemon certainly did not run (no daemon, refused, too large to send) runs
        here. What it may have run (sent whole, no complete reply) is retried with the same
        idempotency `key`: on a restarted daemon if one is published, else here; either way
        `commands.execute` returns the stored result instead of writing twice. Commands
        without a key are safe to run again. `here` skips the daemon (large payloads).
        """
        endpoint = None if here else self.endpoint()
        if endpoint is not None:
            self.note(f"sending {name} to the daemon (pid {endpoint.pid})" + (f" with key {key}" if key else ""))
            try:
                return call(endpoint, name, params, key=key)
            except NotDelivered as error:
                self.note(f"not run by the daemon ({error}); running {name} here")
            except ReplyLost as error:
                self.note(f"{error}; {name} may have run there: retrying" + (f" with key {key}" if key else ""))
                again = self.endpoint()
                if again is not None and again != endpoint:
                    self.note(f"retrying {name} on the restarted daemon (pid {again.pid})")
                    try:
                        return call(again, name, params, key=key, timeout=RETRY_TIMEOUT)
                    except ControlError as retry_error:
                        self.note(f"the restarted daemon did not answer either ({retry_error})")
                self.note(f"retrying {name} here")
        return self.run_here(name, params, key)

    def run_here(self, name: str, params: dict[str, Any], key: str | None = None) -> Any:
        """Run a command on a replica this process opens (created on first use, as `Replica.open` does)."""
        from compat.layout import upgrade_on_open
        from replica.replica import Replica

        from . import commands

        replica = Replica.open(self.path)
        try:
            upgrade_on_open(replica)
            return commands.execute(replica, name, params, key=key)
        finally:
            replica.close()


class Invocation:
    """One run of a command: the session, the parsed arguments and the invocation's idempotency key."""

    __slots__ = ("session", "args", "_key")

    def __init__(self, session: Session, args: argparse.Namespace) -> None:
        self.session = session
        self.args = args
        self._key: str | None = None

    @property
    def key(self) -> str:
        """This invocation's idempotency key: random, made once, sent with every write it runs."""
        if self._key is None:
            self._key = os.urandom(16).hex()
        return self._key

    def run(self, name: str, params: dict[str, Any], *, here: bool = False) -> Any:
        """Run command `name` with `params` (see `Session.run`); writes carry the invocation's key."""
        return self.session.run(name, params, key=self.key if name in KEYED else None, here=here)


# ---------------------------------------------------------------------------------- output


def _styled() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def one_line(value: Any) -> str:
    """A field as text on one line: JSON for lists and maps, newlines and tabs escaped, never cut."""
    if value is None:
        return ""
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def table_lines(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Aligned columns, one row per line, every cell in full (ids are never cut, on a terminal or not)."""
    cells = [[one_line(cell) for cell in row] for row in rows]
    widths = [max([len(column)] + [len(row[i]) for row in cells]) for i, column in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    header = line(columns)
    if _styled():
        header = f"\033[1m{header}\033[0m"
    return [header] + [line(row) for row in cells]


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str) -> None:
    """Print a table, or `empty` when there are no rows."""
    rows = list(rows)
    print("\n".join(table_lines(columns, rows)) if rows else empty)


def record_lines(data: dict[str, Any]) -> list[str]:
    """`key  value` lines of one record, aligned."""
    width = max((len(key) for key in data), default=0)
    return [f"{key:<{width}}  {one_line(value)}".rstrip() for key, value in data.items()]


def show_record(data: dict[str, Any]) -> None:
    """Print one record as aligned `key  value` lines."""
    print("\n".join(record_lines(data)))


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print `data` as JSON for scripts or through `render` for people.

    JSON is indented on a terminal and one line when piped: indenting makes json use its
    pure-Python encoder, 40 ms for a 1,000-task list.
    """
    if as_json:
        print(json.dumps(data, indent=2 if sys.stdout.isatty() else None, sort_keys=True, default=str))
    else:
        render(data)


def listen_address(text: str) -> str:
    """An argparse type: HOST:PORT (an IPv6 host in brackets), checked before anything is opened."""
    from transport.mesh import parse_listen  # only when the option is given: the CLI starts without websockets

    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def json_arg(what: str = "the result") -> Arg:
    """The `--json` flag, saying what it prints."""
    return Arg("--json", dest="as_json", action="store_true", help=f"print {what} as JSON (for scripts)")


def parse_props(pairs: Sequence[str] | None, option: str = "--prop") -> dict[str, Any]:
    """KEY=VALUE pairs; VALUE is JSON if it parses as JSON, else a plain string."""
    props: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{option}: {pair!r} is not KEY=VALUE")
        try:
            props[key] = json.loads(raw)
        except ValueError:
            props[key] = raw
    return props


def int_range(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer between low and high inclusive."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    parse.__name__ = f"integer {low}..{high}"
    return parse


def _given(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


PROP = Arg("--prop", dest="props", action="append", metavar="KEY=VALUE",
           help="set a property; VALUE is JSON if it parses as JSON, else text; repeatable")
STATUS_HELP = "one of: " + ", ".join(TASK_STATUSES)
PRIORITY_HELP = "one of: " + ", ".join(PRIORITIES)
TASK_ID = Arg("task_id", metavar="ID", help="task id, or any unique prefix of it (8+ characters)")

# -------------------------------------------------------------------------------- commands

cli.group("task", "Tasks on the shared board.")
cli.group("graph", "The graph of thought: nodes and edges.")
cli.group("graph node", "Graph nodes.")
cli.group("graph edge", "Graph edges.")
cli.group("counter", "Exact PN-counters (each replica adds and subtracts; the sum is exact).")


@cli.command("init", "Create the data directory (nothing changes if it exists).",
             Arg("--replica-id", default=None, help="name for this replica (default: generated r-...)"),
             json_arg("the replica id, path and whether it was created"),
             description="Other commands create the directory too; `init` lets you choose the replica id.")
def init_cmd(inv: Invocation) -> None:
    """Create (or find) the data directory and say which."""
    session = inv.session
    existed = (session.path / "replica.json").is_file()
    if session.endpoint() is not None:
        result = session.run("status", {})["replica"]
    else:
        from replica.replica import Replica

        with Replica.open(session.path, replica_id=inv.args.replica_id) as replica:
            result = replica.stats()
    data = {"replica_id": result["replica_id"], "path": str(session.path), "created": not existed}
    emit(data, inv.args.as_json, lambda d: print(
        f"{'initialised' if d['created'] else 'already initialised'} {d['path']} (replica {d['replica_id']})"))


@cli.command("serve", "Hold the data directory and run the replica (and network) until Ctrl-C.",
             Arg("--durability", choices=DURABILITY_MODES, default="balanced", env="AGENTSTATE_DURABILITY",
                 help="when writes reach the disk: paranoid (each fsynced), balanced (fsync within 50 ms), "
                      "lazy (the OS decides); default balanced"),
             plugins=True,
             description="It is one more process on the directory: other processes may open it too, and it\n"
                         "relays what they write to its peers. While it runs, other `agentstate` commands\n"
                         "on this directory are carried out by it for speed (same results), over a Unix\n"
                         "socket in the directory that only its owner can use; `import` runs in its own\n"
                         "process. One daemon per directory. Stop it with Ctrl-C or SIGTERM: it flushes\n"
                         "and closes the replica.")
def serve_cmd(inv: Invocation) -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl-C."""
    import asyncio
    import logging

    from .daemon import Daemon

    options = {k: v for k, v in vars(inv.args).items() if k != "durability"}
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    daemon = Daemon(inv.session.path, durability=inv.args.durability, options=options)

    def ready(d: Daemon) -> None:
        import gc

        # What starting allocated stays for the daemon's life: out of the collector's sight, a full
        # collection walks only what requests allocate (see mcp_server.freeze_startup_heap).
        gc.collect()
        gc.freeze()
        replica_id = d.replica.replica_id if d.replica else ""
        lines = [f"agentstate serve: replica {replica_id} in {inv.session.path} "
                 f"(durability {inv.args.durability}, pid {os.getpid()})"]
        status = d.service_status()
        for note in cli.serve_notes:
            lines += [f"  {line}" for line in note(options, status)]
        lines += [f"  other agentstate commands on this directory run here for speed (control socket "
                  f"{d.control.path if d.control else ''}, owner only)",
                  f"  stop: Ctrl-C here, or kill -TERM {os.getpid()}"]
        print("\n".join(lines), file=sys.stderr)
        print(f"ready {replica_id}", file=sys.stderr, flush=True)

    asyncio.run(daemon.run(ready=ready))


@cli.command("task add", "Create a task and print its id.",
             Arg("title", help="what the task is"),
             Arg("--id", dest="task_id", default=None, help="task id (default: generated T-<time>-<random>)"),
             Arg("--description", default="", help="longer text"),
             Arg("--status", default="pending", help=f"{STATUS_HELP} (default pending)"),
             Arg("--priority", default="medium", help=f"{PRIORITY_HELP} (default medium)"),
             Arg("--owner", default=None, help="who works on it (an agent or person name)"),
             Arg("--tag", dest="tags", action="append", metavar="TAG", help="a tag; repeatable"),
             Arg("--depends-on", dest="depends_on", action="append", metavar="ID",
                 help="a task this one waits for; repeatable"),
             PROP, json_arg("the whole task"))
def task_add(inv: Invocation) -> None:
    """Create a task; plain output is the id alone, so `ID=$(agentstate task add ...)` works."""
    a = inv.args
    params = {"title": a.title, "id": a.task_id, "description": a.description, "status": a.status,
              "priority": a.priority, "owner": a.owner, "tags": a.tags or [], "depends_on": a.depends_on or [],
              "properties": parse_props(a.props)}
    emit(inv.run("task.add", params), a.as_json, lambda d: print(d["id"]))


@cli.command("task list", "List tasks, oldest first, optionally filtered.",
             Arg("--status", default=None, help=f"only tasks with this status: {', '.join(TASK_STATUSES)}"),
             Arg("--owner", default=None, help="only tasks of this owner"),
             Arg("--tag", default=None, help="only tasks with this tag"),
             Arg("--limit", type=int_range(1, 1_000_000_000), default=None, help="only the oldest N that match"),
             json_arg("the tasks (and any invalid records)"),
             description="Prints one task per line with every field in full (ids are never cut).")
def task_list(inv: Invocation) -> None:
    """List tasks as aligned lines or JSON; piped JSON is the text the replica built, printed undecoded.

    The listing travels as its JSON text (one string in the daemon's reply): decoding 1,000 tasks
    once here is cheaper than the daemon decoding, re-encoding and this process decoding them."""
    a = inv.args
    params = _given(status=a.status, owner=a.owner, tag=a.tag, limit=a.limit)
    try:
        text = inv.run("task.list.json", params)
    except RemoteError as error:
        if error.error_type != "UnknownCommandError":
            raise
        inv.session.note("the daemon predates task.list.json; listing with task.list")
        result = inv.run("task.list", params)
    else:
        if a.as_json and not sys.stdout.isatty():
            print(text)
            return
        result = json.loads(text)

    def render(d: dict[str, Any]) -> None:
        print_table(("id", "status", "priority", "owner", "title", "tags", "conflicts"),
                    ((t["id"], t["status"], t["priority"], t.get("owner"), t["title"], ",".join(t["tags"]),
                      f"{t['open_conflicts']} open" if t.get("open_conflicts") else "")
                     for t in d["tasks"]), "no tasks")
        if d["invalid"]:
            print(f"{len(d['invalid'])} invalid task record(s) skipped; see `agentstate verify`", file=sys.stderr)

    emit(result, a.as_json, render)


@cli.command("task show", "Show one task, every field.", TASK_ID, json_arg("the task"))
def task_show(inv: Invocation) -> None:
    """Show one task."""
    emit(inv.run("task.show", {"id": inv.args.task_id}), inv.args.as_json, _show_task)


def _show_task(data: dict[str, Any]) -> None:
    """A task's fields, then its open conflicts and its last writers."""
    conflicts, writers = data.pop("conflicts", []), data.pop("last_writers", [])
    data.pop("open_conflicts", None)
    show_record(data)
    for conflict in conflicts:
        sides = "; ".join(f"{name} {conflict[name]['writer']}: "
                          + ("deleted" if conflict[name]["deleted"] else one_line(conflict[name]["values"]))
                          for name in ("ours", "theirs"))
        print(f"conflict {conflict['conflict_id']} on {','.join(conflict['conflict_fields'])}: {sides}")
    for write in writers:
        what = "deleted" if write["deleted"] else ",".join(write["fields"]) or "(sets only)"
        print(f"written by {write['writer']} at {write['at']}: {what}")


@cli.command("task update", "Change the fields of a task that are given; print the task.",
             TASK_ID,
             Arg("--title", default=None, help="new title"),
             Arg("--description", default=None, help="new description"),
             Arg("--status", default=None, help=STATUS_HELP),
             Arg("--priority", default=None, help=PRIORITY_HELP),
             Arg("--owner", default=None, help="new owner"),
             Arg("--add-tag", dest="add_tags", action="append", metavar="TAG", help="add a tag; repeatable"),
             Arg("--remove-tag", dest="remove_tags", action="append", metavar="TAG",
                 help="remove a tag; repeatable"),
             Arg("--depends-on", dest="depends_on", action="append", metavar="ID",
                 help="replaces the dependency set; repeatable"),
             PROP,
             Arg("--remove-prop", dest="remove_props", action="append", metavar="KEY",
                 help="remove a property; repeatable"),
             json_arg("the updated task"))
def task_update(inv: Invocation) -> None:
    """Update a task."""
    a = inv.args
    params: dict[str, Any] = {"id": a.task_id, **_given(title=a.title, description=a.description,
                                                         status=a.status, priority=a.priority, owner=a.owner)}
    for key, value in (("add_tags", a.add_tags), ("remove_tags", a.remove_tags), ("depends_on", a.depends_on),
                       ("remove_properties", a.remove_props)):
        if value:
            params[key] = value
    if a.props:
        params["properties"] = parse_props(a.props)
    emit(inv.run("task.update", params), a.as_json, show_record)


def parse_ttl(text: str) -> float:
    """A lease length: seconds, or a number with s, m, h or d (`15m`, `2h`)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    value = text.strip().lower()
    scale = units.get(value[-1:], None)
    try:
        return float(value[:-1] if scale else value) * (scale or 1.0)
    except ValueError:
        raise UsageError(f"--ttl: {text!r} is not a duration (e.g. 90, 15m, 2h)") from None


AGENT = Arg("--agent", required=True, env="AGENTSTATE_AGENT", help="the agent's name")
TTL = Arg("--ttl", default="15m", help="lease length: seconds or 30s, 15m, 2h, 1d (default 15m)")
EPOCH = Arg("--epoch", type=int, required=True, help="the fencing epoch the claim returned")
register_exit_code("ArbiterRefusedError", ExitCode.UNREACHABLE)


def _claim_line(d: dict[str, Any]) -> None:
    holder = d.get("holder") or {}
    if d["state"] == "lost":
        print(f"lost: {d['task_id']} is held by {holder.get('agent')} (epoch {holder.get('epoch')}) "
              f"until {_when(holder.get('expires'))}")
    elif d["state"] in ("released", "completed"):
        print(f"{d['state']} {d['task_id']}")
    else:
        print(f"{d['state']}: {d['task_id']} epoch {d['epoch']} until {_when(d['expires'])}")


def _when(stamp: Any) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(float(stamp), timezone.utc).isoformat(timespec="seconds") if stamp else "-"


def _claim_result(inv: Invocation, name: str, params: dict[str, Any]) -> None:
    data = inv.run(name, params)
    emit(data, inv.args.as_json, _claim_line)
    if data["state"] == "lost":
        raise SystemExit(7)


@cli.command("task claim", "Claim a task for an agent with a lease: won (with its fencing epoch) or lost (exit 7).",
             TASK_ID, AGENT, TTL, json_arg("the claim"),
             description="Exactly one of any number of agents claiming at once wins on one data directory.")
def task_claim(inv: Invocation) -> None:
    """Claim a task."""
    _claim_result(inv, "task.claim", {"id": inv.args.task_id, "agent": inv.args.agent, "ttl": parse_ttl(inv.args.ttl)})


@cli.command("task renew", "Extend a lease the agent holds (exit 7 if it passed on).", TASK_ID, AGENT, EPOCH, TTL,
             json_arg("the claim"))
def task_renew(inv: Invocation) -> None:
    """Renew a lease."""
    a = inv.args
    _claim_result(inv, "task.renew", {"id": a.task_id, "agent": a.agent, "epoch": a.epoch, "ttl": parse_ttl(a.ttl)})


@cli.command("task release", "End a lease so another agent can claim the task.", TASK_ID, AGENT, EPOCH,
             json_arg("the result"))
def task_release(inv: Invocation) -> None:
    """Release a lease."""
    a = inv.args
    _claim_result(inv, "task.release", {"id": a.task_id, "agent": a.agent, "epoch": a.epoch})


@cli.command("task complete", "Mark a claimed task completed and end its lease (fenced by the epoch).", TASK_ID,
             AGENT, EPOCH, json_arg("the result"))
def task_complete(inv: Invocation) -> None:
    """Complete a claimed task."""
    a = inv.args
    _claim_result(inv, "task.complete", {"id": a.task_id, "agent": a.agent, "epoch": a.epoch})


@cli.command("task claim-state", "Print what an agent's claim on a task is now: won, tentative, lost (exit 7) or "
             "released.", TASK_ID, AGENT, json_arg("the claim state"),
             description="After a partition heals, a tentative claim that lost says so here.")
def task_claim_state(inv: Invocation) -> None:
    """An agent's claim state."""
    _claim_result(inv, "task.claim.state", {"id": inv.args.task_id, "agent": inv.args.agent})


@cli.command("task next", "Print the task to take next: pending, ready, unclaimed, most urgent first.",
             Arg("--agent", default=None, env="AGENTSTATE_AGENT", help="count this agent's own claims as free"),
             json_arg("the task (null when there is none)"))
def task_next(inv: Invocation) -> None:
    """The next task."""
    data = inv.run("task.next", _given(agent=inv.args.agent))
    emit(data, inv.args.as_json, lambda d: print(d["task"]["id"] if d["task"] else "no task is ready"))
    if data["task"] is None:
        raise SystemExit(3)


@cli.command("task rm", "Delete a task.", TASK_ID, json_arg("the id deleted"))
def task_rm(inv: Invocation) -> None:
    """Delete a task."""
    emit(inv.run("task.rm", {"id": inv.args.task_id}), inv.args.as_json, lambda d: print(f"deleted {d['deleted']}"))


NODE_TYPE_HELP = f"node type: any name ({TYPE_RULE}), e.g. question, hypothesis, decision, concept"
EDGE_TYPE_HELP = f"edge type: any name ({TYPE_RULE}), e.g. answers, supports, refines, depends_on"


@cli.command("graph node add", "Add a node and print its id.",
             Arg("node_id", metavar="ID", help="node id (letters, digits and _.:@/+#~-)"),
             Arg("--type", dest="node_type", required=True, help=NODE_TYPE_HELP),
             Arg("--content", default="", help="the node's text"),
             PROP, json_arg("the node"))
def node_add(inv: Invocation) -> None:
    """Add a node."""
    a = inv.args
    params = {"id": a.node_id, "type": a.node_type, "content": a.content, "properties": parse_props(a.props)}
    emit(inv.run("graph.node.add", params), a.as_json, lambda d: print(d["id"]))


@cli.command("graph node update", "Change the fields of a node that are given; print the node.",
             Arg("node_id", metavar="ID"),
             Arg("--type", dest="node_type", default=None, help=NODE_TYPE_HELP),
             Arg("--content", default=None, help="new text"),
             PROP,
             Arg("--remove-prop", dest="remove_props", action="append", metavar="KEY",
                 help="remove a property; repeatable"),
             json_arg("the updated node"))
def node_update(inv: Invocation) -> None:
    """Update a node."""
    a = inv.args
    params: dict[str, Any] = {"id": a.node_id, **_given(type=a.node_type, content=a.content)}
    if a.props:
        params["properties"] = parse_props(a.props)
    if a.remove_props:
        params["remove_properties"] = a.remove_props
    emit(inv.run("graph.node.update", params), a.as_json, show_record)


@cli.command("graph node rm", "Remove a node and its edges.", Arg("node_id", metavar="ID"),
             json_arg("what was removed"))
def node_rm(inv: Invocation) -> None:
    """Remove a node."""
    emit(inv.run("graph.node.rm", {"id": inv.args.node_id}), inv.args.as_json,
         lambda d: print(f"deleted {d['deleted']} and {d['edges_removed']} edge(s)"))


@cli.command("graph node list", "List nodes, optionally of one type.",
             Arg("--type", dest="node_type", default=None, help="only nodes of this type"),
             json_arg("the nodes"))
def node_list(inv: Invocation) -> None:
    """List nodes."""
    emit(inv.run("graph.node.list", _given(type=inv.args.node_type)), inv.args.as_json,
         lambda d: print_table(("id", "type", "content"), ((n["id"], n["type"], n["content"]) for n in d["nodes"]),
                               "no nodes"))


def _edge_rows(edges: list[dict[str, Any]]) -> Iterable[tuple[Any, ...]]:
    return ((e["source"], e["type"], e["target"], f"{e['weight']:g}") for e in edges)


@cli.command("graph edge add", "Add an edge (or change its weight).",
             Arg("source", help="node id the edge starts at"), Arg("target", help="node id it points to"),
             Arg("--type", dest="edge_type", required=True, help=EDGE_TYPE_HELP),
             Arg("--weight", type=float, default=1.0, help="weight (default 1.0)"),
             PROP, json_arg("the edge"))
def edge_add(inv: Invocation) -> None:
    """Add an edge."""
    a = inv.args
    params = {"source": a.source, "target": a.target, "type": a.edge_type, "weight": a.weight,
              "properties": parse_props(a.props)}
    emit(inv.run("graph.edge.add", params), a.as_json, lambda d: print(f"{d['source']} -{d['type']}-> {d['target']}"))


@cli.command("graph edge rm", "Remove an edge.", Arg("source"), Arg("target"),
             Arg("--type", dest="edge_type", required=True, help=EDGE_TYPE_HELP), json_arg("the edge removed"))
def edge_rm(inv: Invocation) -> None:
    """Remove an edge."""
    a = inv.args
    emit(inv.run("graph.edge.rm", {"source": a.source, "target": a.target, "type": a.edge_type}), a.as_json,
         lambda d: print(f"deleted {d['deleted']}"))


@cli.command("graph edge list", "List edges (and count dangling ones), optionally filtered.",
             Arg("--source", default=None, help="only edges from this node"),
             Arg("--target", default=None, help="only edges to this node"),
             Arg("--type", dest="edge_type", default=None, help="only edges of this type"),
             json_arg("the edges and the dangling ones"))
def edge_list(inv: Invocation) -> None:
    """List edges."""
    a = inv.args

    def render(d: dict[str, Any]) -> None:
        print_table(("source", "type", "target", "weight"), _edge_rows(d["edges"]), "no edges")
        if d["dangling"]:
            print(f"{len(d['dangling'])} dangling edge(s) (an end not present here yet)", file=sys.stderr)

    emit(inv.run("graph.edge.list", _given(source=a.source, target=a.target, type=a.edge_type)), a.as_json, render)


@cli.command("graph show", "Show a node and its neighbourhood (bounded walk).",
             Arg("node_id", metavar="ID"),
             Arg("--depth", type=int_range(0, 20), default=1, help="how many edges away, 0-20 (default 1)"),
             Arg("--limit", type=int_range(1, 100_000), default=200, help="at most this many nodes (default 200)"),
             Arg("--direction", choices=("out", "in", "both"), default="both",
                 help="follow edges out of nodes, into them, or both (default both)"),
             json_arg("the nodes and edges"))
def graph_show(inv: Invocation) -> None:
    """Show a neighbourhood."""
    a = inv.args

    def render(d: dict[str, Any]) -> None:
        print_table(("depth", "id", "type", "content"), ((n["depth"], n["id"], n["type"], n["content"])
                                                         for n in d["nodes"]), "no nodes")
        print_table(("source", "type", "target", "weight"), _edge_rows(d["edges"]), "no edges")

    emit(inv.run("graph.show", {"id": a.node_id, "depth": a.depth, "limit": a.limit, "direction": a.direction}),
         a.as_json, render)


def _counter_step(verb: str, description: str) -> None:
    @cli.command(f"counter {verb}", description, Arg("counter_name", metavar="NAME"),
                 Arg("--by", type=int, default=1, help="amount, a positive integer (default 1)"),
                 json_arg("the counter's name and new value"))
    def run(inv: Invocation) -> None:
        result = inv.run(f"counter.{verb}", {"name": inv.args.counter_name, "by": inv.args.by})
        emit(result, inv.args.as_json, lambda d: print(d["value"]))


_counter_step("incr", "Add to a counter (created at 0 if new) and print its new value.")
_counter_step("decr", "Subtract from a counter (created at 0 if new) and print its new value.")


@cli.command("counter get", "Print a counter's value.", Arg("counter_name", metavar="NAME"),
             json_arg("the counter's name and value"))
def counter_get(inv: Invocation) -> None:
    """Print one counter."""
    emit(inv.run("counter.get", {"name": inv.args.counter_name}), inv.args.as_json, lambda d: print(d["value"]))


@cli.command("counter list", "List every counter and its value.", json_arg("the counters"))
def counter_list(inv: Invocation) -> None:
    """List counters."""
    emit(inv.run("counter.list", {}), inv.args.as_json,
         lambda d: print_table(("name", "value"), sorted(d["counters"].items()), "no counters"))


@cli.command("status", "Show the replica, the daemon and (with the network) its peers.",
             json_arg("the status"), plugins=True)
def status(inv: Invocation) -> None:
    """Show status."""
    result = inv.run("status", {})
    result.setdefault("daemon", None)

    def render(d: dict[str, Any]) -> None:
        show_record(d["replica"])
        print(f"daemon: {'pid ' + str(d['daemon']['pid']) if d['daemon'] else 'not running'}")
        if d.get("invalid_records"):
            print(f"invalid records: {d['invalid_records']} (see `agentstate verify`)")
        for entry in d.get("presence") or []:
            print(f"presence: {entry['agent']}: {entry['working_on']} ({_ago(entry['age_seconds'])})")
        for key, renderer in cli.status_renderers.items():
            if key in d:
                lines = renderer(d[key])
                if lines:
                    print("\n".join(lines))

    emit(result, inv.args.as_json, render)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


@cli.command("compact", "Snapshot the state and drop the log segments it makes redundant.",
             json_arg("the snapshot and the segments removed"))
def compact(inv: Invocation) -> None:
    """Compact."""
    emit(inv.run("compact", {}), inv.args.as_json,
         lambda d: print(f"snapshot at record {d['lsn']}; removed {len(d['removed_segments'])} segment(s)"))


COUNTED = ("tasks", "nodes", "edges", "counters", "lessons")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


@cli.command("verify", "Check every snapshot, log record and stored record; exit 8 if anything is wrong.",
             json_arg("what was checked and what is wrong"))
def verify(inv: Invocation) -> int | None:
    """Verify, saying what was checked."""
    session = inv.session
    try:
        result = session.run("verify", {})
    except ReplicaError as exc:
        from replica.errors import DataDirLockedError

        if isinstance(exc, (DataDirLockedError, ControlError, RemoteError)) or not (session.path / "replica.json").is_file():
            raise
        from replica.datadir import DataDir
        from replica.repair import scan

        found = scan(DataDir(session.path))
        result = {"checked": {"snapshots": None, "snapshot_lsn": found.snapshot_lsn, "segments": found.segments,
                              "records": len(found.records)},
                  "storage_problems": found.problems() or [f"cannot open: {exc}"], "invalid": [], "ok": False}

    def render(d: dict[str, Any]) -> None:
        c = d["checked"]
        parts = []
        if c.get("snapshots") is not None:
            latest = f" (latest at record {c['snapshot_lsn']})" if c["snapshot_lsn"] else ""
            parts.append(_plural(c["snapshots"], "snapshot") + latest)
        after = " after it" if c["snapshot_lsn"] else ""
        parts.append(f"{_plural(c['segments'], 'log segment')} holding {_plural(c['records'], 'record')}{after}")
        parts += [_plural(c[k], k[:-1]) for k in COUNTED if k in c]
        print("checked " + ", ".join(parts))
        for line in d["storage_problems"]:
            print(f"storage: {line}")
        for record in d["invalid"]:
            print(f"invalid {record['kind']} {record['id']}: {'; '.join(record['problems'])}")
        print("ok" if d["ok"] else "problems found (see `agentstate repair`)")

    emit(result, inv.args.as_json, render)
    return None if result["ok"] else ExitCode.PROBLEMS_FOUND


@cli.command("repair", "Salvage every readable record of a damaged directory (damaged files are kept aside).",
             json_arg("what was salvaged and dropped"))
def repair(inv: Invocation) -> None:
    """Repair a stopped directory."""
    from replica.repair import repair as run_repair

    if inv.session.endpoint() is not None:
        raise ReplicaError("`agentstate serve` holds this directory: stop it before repairing")
    report = run_repair(inv.session.path)
    data = {"salvaged_records": report.salvaged_records, "dropped": report.dropped,
            "moved_to": str(report.moved_to) if report.moved_to else None, "snapshot_lsn": report.snapshot_lsn}

    def render(d: dict[str, Any]) -> None:
        print(f"salvaged {d['salvaged_records']} record(s); state saved as snapshot {d['snapshot_lsn']}")
        for line in d["dropped"]:
            print(f"dropped: {line}")
        if d["moved_to"]:
            print(f"the damaged files were moved to {d['moved_to']}")

    emit(data, inv.args.as_json, render)


@cli.command("export", "Write the whole state as one Yjs update file (`-` for stdout).",
             Arg("file", metavar="FILE", help="where to write (`-`: stdout)"))
def export_cmd(inv: Invocation) -> None:
    """Export the state."""
    import base64

    update = base64.b64decode(inv.run("export", {})["update"])
    if inv.args.file == "-":
        sys.stdout.buffer.write(update)
        sys.stdout.buffer.flush()
    else:
        Path(inv.args.file).write_bytes(update)
        print(f"wrote {len(update)} bytes to {inv.args.file}", file=sys.stderr)


@cli.command("import", "Merge a Yjs update file (from `export`) into this replica and say what was new.",
             Arg("file", metavar="FILE", help="the update file (`-`: stdin), any size"),
             json_arg("whether anything changed and the record counts before and after"),
             description="This process applies the file on the directory itself, daemon or not (a running\n"
                         "daemon reads it from the shared log and relays it to its peers). Importing the\n"
                         "same file again changes nothing.")
def import_cmd(inv: Invocation) -> None:
    """Import an update here, never through the daemon: a file of any size needs no trip over the socket."""
    import base64

    name = inv.args.file
    try:
        update = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from None
    encoded = base64.b64encode(update).decode()
    del update
    result = inv.run("import", {"update": encoded, "origin": f"import:{name}"}, here=True)

    def render(d: dict[str, Any]) -> None:
        if not d["changed"]:
            print(f"nothing new in {name} ({d['bytes']} bytes, all already here)")
            return
        before, after = d["before"], d["after"]
        grown = [f"{k} {before[k]} -> {after[k]}" for k in COUNTED if before.get(k) != after.get(k)]
        if grown:
            print(f"merged {name}: {', '.join(grown)}")
        else:
            print(f"merged {name}: changes to existing records or replica metadata; counts unchanged")

    emit(result, inv.args.as_json, render)


# ------------------------------------------------------------------ lessons, presence, watch, mcp

cli.group("lesson", "Lessons: what agents learnt (context, what failed, what resolved it), append-only.")
cli.group("presence", "What each agent on this directory says it is doing (shown by `status`).")


def _lesson_rows(lessons: list[dict[str, Any]]) -> Iterable[tuple[Any, ...]]:
    return ((x["at"], x["author"], x["context"], x["failure"], x["resolution"]) for x in lessons)


@cli.command("lesson add", "Record a lesson and print its id.",
             Arg("--context", required=True, help="where it happened (what the agent was doing)"),
             Arg("--failure", required=True, help="what went wrong"),
             Arg("--resolution", required=True, help="what fixed it, or what to do next time"),
             Arg("--author", default=None, env="AGENTSTATE_AGENT", help="who learnt it (default: the replica id)"),
             json_arg("the lesson"))
def lesson_add(inv: Invocation) -> None:
    """Append a lesson."""
    a = inv.args
    data = inv.run("lesson.add", _given(context=a.context, failure=a.failure, resolution=a.resolution,
                                        author=a.author))
    emit(data, a.as_json, lambda d: print(d["id"]))


@cli.command("lesson list", "List lessons, oldest first.",
             Arg("--limit", type=int_range(1, 1_000_000), default=None, help="only the newest N"),
             json_arg("the lessons"))
def lesson_list(inv: Invocation) -> None:
    """List lessons."""
    data = inv.run("lesson.list", {})
    if inv.args.limit is not None:
        data["lessons"] = data["lessons"][-inv.args.limit:]
    emit(data, inv.args.as_json, lambda d: print_table(("at", "author", "context", "failure", "resolution"),
                                                       _lesson_rows(d["lessons"]), "no lessons"))


@cli.command("lesson search", "Lessons whose text contains every word given (case-insensitive), newest first.",
             Arg("query", metavar="WORDS", help="words that must all appear in context, failure or resolution"),
             Arg("--limit", type=int_range(1, 1000), default=20, help="at most this many (default 20)"),
             json_arg("the lessons found and how many matched"))
def lesson_search(inv: Invocation) -> None:
    """Search lessons."""
    data = inv.run("lesson.search", {"query": inv.args.query, "limit": inv.args.limit})
    emit(data, inv.args.as_json, lambda d: print_table(("at", "author", "context", "failure", "resolution"),
                                                       _lesson_rows(d["lessons"]), "no lesson matches"))


@cli.command("presence set", "Say what this agent is doing; `status` shows it (and peers, while serve syncs).",
             Arg("working_on", metavar="TEXT", help='e.g. "reviewing PR 42"'),
             Arg("--agent", default=None, env="AGENTSTATE_AGENT", help="the agent's name (default: the user name)"),
             json_arg("the presence recorded"),
             description="It is kept in the data directory (presence/, one file per agent), so `status` on this\n"
                         "directory shows it with or without a daemon. While `agentstate serve` syncs with\n"
                         "peers, it is also sent to them as this replica's awareness state (who is online).")
def presence_set(inv: Invocation) -> None:
    """Record presence, and tell a running mesh."""
    agent = inv.args.agent or os.environ.get("USER") or "agent"
    data = inv.run("presence.set", {"agent": agent, "working_on": inv.args.working_on})
    if inv.session.endpoint() is not None:
        try:
            inv.session.run("presence", {"fields": {"agent": agent, "working_on": inv.args.working_on}})
            data["sent_to_peers"] = True
        except ReplicaError:
            data["sent_to_peers"] = False
    emit(data, inv.args.as_json, lambda d: print(f"{d['agent']}: {d['working_on']}"))


def _change_line(event: Any) -> str:
    from datetime import datetime, timezone

    at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    where = event.origin + (f" {event.peer}" if event.peer else "")
    what = f"{event.kind} {event.id}" + (f" {event.field}" if event.field else "")
    if event.action == "update":
        change = f": {one_line(event.old)} -> {one_line(event.new)}"
    elif event.action == "add" and event.field:
        change = f": {one_line(event.new)}"
    else:
        change = ""
    return f"{at} {where} {event.action} {what}{change}"


@cli.command("watch", "Print one line per change (this process's, other processes', peers') until Ctrl-C.",
             Arg("--count", type=int_range(1, 1_000_000_000), default=None, help="stop after N changes"),
             Arg("--timeout", type=float, default=None, metavar="SECONDS", help="stop after this many seconds"),
             json_arg("each change as one JSON object per line"),
             description="It opens the directory like any process and follows its shared log, so it sees\n"
                         "writes by the CLI, scripts, MCP servers and a daemon (which writes what its peers\n"
                         "send). Origins: local (this process), process (another process on this\n"
                         "directory), remote (a peer, when this process applies it itself).")
def watch(inv: Invocation) -> None:
    """Follow the change feed."""
    import queue
    import time

    from replica.replica import Replica

    a = inv.args
    events: queue.Queue[Any] = queue.Queue()
    replica = Replica.open(inv.session.path)
    try:
        replica.subscribe(events.put)
        print(f"watching {inv.session.path} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        deadline = None if a.timeout is None else time.monotonic() + a.timeout
        seen = 0
        while a.count is None or seen < a.count:
            wait = 0.5 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            try:
                event = events.get(timeout=min(wait, 0.5))
            except queue.Empty:
                continue
            seen += 1
            if a.as_json:
                print(json.dumps({"kind": event.kind, "id": event.id, "field": event.field, "action": event.action,
                                  "old": event.old, "new": event.new, "origin": event.origin, "peer": event.peer},
                                 sort_keys=True, default=str), flush=True)
            else:
                print(_change_line(event), flush=True)
    finally:
        replica.close()


@cli.command("mcp", "Serve this directory to an AI agent over MCP (stdio; --http for streamable HTTP).",
             Arg("--agent", default=None, env="AGENTSTATE_AGENT",
                 help="this agent's name, used for claims, lessons and the hash guard (default mcp-HOST-PID)"),
             Arg("--http", default=None, metavar="HOST:PORT",
                 help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (port 0: any free port)"),
             Arg("--token", default=None, env="AGENTSTATE_TOKEN",
                 help="bearer token clients must send (Authorization: Bearer TOKEN); required beyond loopback; "
                      "with --listen, peers must present it too"),
             Arg("--listen", default=None, type=listen_address, metavar="HOST:PORT",
                 help="also accept sync peers here, as serve does"),
             Arg("--peer", dest="peers", action="append", metavar="URL", help="also sync with this peer; repeatable"),
             Arg("--room", default="agentstate", help="sync room (default agentstate)"),
             Arg("--peer-token", default=None, env="AGENTSTATE_PEER_TOKEN",
                 help="token to present when dialing peers (default: --token)"),
             Arg("--durability", choices=DURABILITY_MODES, default="balanced", env="AGENTSTATE_DURABILITY",
                 help="when writes reach the disk (default balanced)"),
             description="One server per agent: it opens the data directory like any other process (any\n"
                         "number of MCP servers, CLI calls and one `serve` may share it). Register it with an\n"
                         'MCP client as command `agentstate`, args ["--data", DIR, "mcp"] (see README.md).\n'
                         "With --peer or --listen it also syncs, as `serve` does. Stop it by closing its\n"
                         "stdin (stdio), or with Ctrl-C / SIGTERM.")
def mcp_cmd(inv: Invocation) -> None:
    """Run the MCP server until its client goes away or it is told to stop."""
    import logging

    import anyio

    from . import mcp_server

    a = inv.args
    if a.http:
        try:
            address = mcp_server.parse_http(a.http)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not address.loopback and not a.token:
            raise UsageError(f"--http {a.http}: listening beyond loopback needs --token (clients send it as "
                             "Authorization: Bearer TOKEN)")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    sync = _given(listen=a.listen, peers=a.peers, room=a.room if (a.listen or a.peers) else None,
                  token=a.token if a.listen else None, peer_token=a.peer_token or a.token)
    if not (a.listen or a.peers):
        sync = {}

    def ready(where: str) -> None:
        if where != "stdio":
            guarded = " (token required: Authorization: Bearer TOKEN)" if a.token else ""
            print(f"agentstate mcp: serving {inv.session.path} at {where}{guarded}; stop: Ctrl-C or "
                  f"kill -TERM {os.getpid()}", file=sys.stderr, flush=True)

    anyio.run(lambda: mcp_server.serve(inv.session.path, agent=a.agent, durability=a.durability, http=a.http,
                                       token=a.token, sync_options=sync, ready=ready))


# ------------------------------------------------------------------------------------ main


def version() -> str:
    """The installed agentstate's version (from its package metadata)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("agentstate")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _global_options(argv: list[str]) -> tuple[str, bool, bool, list[str]]:
    """--data, --debug and --help before the command; the rest of the line."""
    data = os.environ.get("AGENTSTATE_DATA") or DEFAULT_DATA
    debug = wants_help = False
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        option = argv[index]
        if option == "--data":
            if index + 1 >= len(argv):
                raise UsageError("--data needs a directory")
            data = argv[index + 1]
            index += 1
        elif option.startswith("--data="):
            data = option.partition("=")[2]
        elif option == "--debug":
            debug = True
        elif option in ("-h", "--help"):
            wants_help = True
        elif option == "--version":
            print(f"agentstate {version()}")
            raise SystemExit(0)
        elif option == "--":
            index += 1
            break
        else:
            raise UsageError(f"unknown option {option} (global options: --data DIR, --debug, --help, --version)")
        index += 1
    return data, debug, wants_help, argv[index:]


def _find(words: list[str]) -> tuple[str, ...]:
    """The longest command or group path `words` starts with (options end the search)."""
    path: tuple[str, ...] = ()
    for word in words:
        candidate = path + (word,)
        if word.startswith("-") or (candidate not in cli.commands and candidate not in cli.groups):
            break
        path = candidate
        if path in cli.commands:
            break
    return path


def _dispatch(argv: list[str]) -> int:
    data, debug, wants_help, rest = _global_options(argv)
    if not rest or wants_help:
        cli.load_plugins()
        text = cli.help_text()
        if wants_help:
            sys.stdout.write(text)
            return 0
        sys.stderr.write(text)
        return ExitCode.USAGE
    if rest[0] not in cli.top_words():
        cli.load_plugins()
    path = _find(rest)
    if not path:
        import difflib

        close = difflib.get_close_matches(rest[0], sorted(cli.top_words()), n=1)
        raise UsageError(f"unknown command {rest[0]!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                         + " (see `agentstate --help`)")
    if path not in cli.commands:
        text = cli.group_help(path)
        remaining = rest[len(path):]
        if remaining and remaining[0] in ("-h", "--help"):
            sys.stdout.write(text)
            return 0
        sys.stderr.write(text)
        if remaining:
            raise UsageError(f"unknown command {' '.join(path + (remaining[0],))!r}")
        return ExitCode.USAGE
    command = cli.commands[path]
    if command.plugins:
        cli.load_plugins()
    args = command.parser().parse_args(rest[len(path):])
    return int(command.run(Invocation(Session(data, debug), args)) or 0)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn every error into a message and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        code = _dispatch(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    except UsageError as exc:
        print(f"agentstate: error: {exc}", file=sys.stderr)
        code = ExitCode.USAGE
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 0
    except Exception as exc:
        code = exit_code_for(exc)
        if debug:
            import traceback

            traceback.print_exc()
        if code == ExitCode.INTERNAL:
            print(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)",
                  file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
    sys.exit(int(code or 0))


if __name__ == "__main__":
    main()
