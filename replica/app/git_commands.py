"""`agentstate git init|sync|merge|merge-json`: the replica's state committed in a git repository.

The state file is one Yjs update of the whole document; git merges it with the
`agentstate` merge driver (a CRDT merge: never a conflict), and a JSON export beside it
shows changes in diffs and reviews. `git init` installs the attributes, the driver config
of this clone and optionally hooks; `git sync` folds the committed file into the data
directory and writes the directory's whole state back. See docs/git.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from replica.errors import ReplicaError

from .cli import Arg, Invocation, Registry, emit, json_arg
from .exitcodes import ExitCode, register_exit_code

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

STATE_DIR = ".agentstate-git"
STATE_FILE = f"{STATE_DIR}/state.yupdate"
"""The committed state, relative to the worktree's top directory."""
EXPORT_FILE = f"{STATE_DIR}/state.json"
"""The JSON export beside it (for diffs and review; regenerated, never merged by hand)."""
ATTRIBUTES = (f"{STATE_FILE} -text -diff merge=agentstate", f"{EXPORT_FILE} merge=agentstate-json")
"""The .gitattributes lines: the state is binary and merged by the driver; the export by its own driver."""
DATA_RECORD = "agentstate-data"
"""File in each worktree's git directory naming the data directory that worktree's hooks sync."""
HOOK_MARK = "# agentstate git hook"
HOOKS = ("post-merge", "post-checkout", "post-rewrite", "pre-commit")
OCTOPUS_STRATEGY = "agentstate"
"""The merge strategy (`pull.octopus`, read by `git merge` too) that lets octopus merges run the drivers."""
OCTOPUS_STRATEGY_PROGRAM = f"git-merge-{OCTOPUS_STRATEGY}"
"""The program git runs for it (replica/app/git_strategy.py, installed beside agentstate)."""
GIT_TIMEOUT = 120.0
NOTE_TTL = 3600.0
"""Seconds a note of a merged state is kept for the other driver of the same merge."""


class NotInRepositoryError(ReplicaError):
    """The command must run inside a git repository's worktree."""


class GitCommandError(ReplicaError):
    """A git command this one relies on failed."""


class HookTakenError(ReplicaError):
    """A hook that agentstate did not write is already installed."""


register_exit_code("NotInRepositoryError", ExitCode.USAGE)
register_exit_code("GitCommandError", ExitCode.DATA)
register_exit_code("HookTakenError", ExitCode.CONFLICT)


def git(*args: str, cwd: Path | str, data: bytes | None = None) -> bytes:
    """Run `git ARGS` in `cwd` and return its stdout; GitCommandError (with git's message) if it fails."""
    import subprocess

    try:
        proc = subprocess.run(["git", *args], cwd=cwd, input=data, capture_output=True, timeout=GIT_TIMEOUT)
    except FileNotFoundError:
        raise GitCommandError("git is not installed (no `git` on PATH)") from None
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GitCommandError(f"git {' '.join(args)} failed: {message[-1] if message else proc.returncode}")
    return proc.stdout


def toplevel(cwd: Path | str = ".") -> Path:
    """The top directory of the worktree `cwd` is in; NotInRepositoryError outside one (or in a bare one)."""
    try:
        out = git("rev-parse", "--show-toplevel", cwd=cwd)
    except GitCommandError:
        raise NotInRepositoryError(f"{Path(cwd).resolve()} is not inside a git worktree "
                                   "(run it in a clone or `git worktree`)") from None
    return Path(out.decode().strip())


def git_path(top: Path, name: str) -> Path:
    """`git rev-parse --git-path NAME` as an absolute path (hooks, info/exclude: shared by worktrees)."""
    found = Path(git("rev-parse", "--git-path", name, cwd=top).decode().strip())
    return found if found.is_absolute() else top / found


def git_dir(top: Path) -> Path:
    """This worktree's own git directory (`.git`, or `.git/worktrees/NAME` for a linked worktree)."""
    found = Path(git("rev-parse", "--git-dir", cwd=top).decode().strip())
    return found if found.is_absolute() else top / found


def agentstate_command() -> str:
    """How git and hooks should start this same agentstate: `agentstate` if PATH finds it, else its full path."""
    import shlex
    import shutil

    script = Path(sys.argv[0]).absolute() if sys.argv and sys.argv[0] else None
    if script is not None and script.name == "agentstate" and script.is_file():
        found = shutil.which("agentstate")
        if found and Path(found).absolute() == script:
            return "agentstate"
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m replica.app.cli"


def blob_id(top: Path, data: bytes) -> str:
    """The git object id of `data` as a file's content, stored in the repository's objects (`hash-object -w`)."""
    return git("hash-object", "-w", "--no-filters", "--stdin", cwd=top, data=data).decode().strip()


def read_blob(top: Path, blob: str) -> bytes | None:
    """The content of object `blob`, or None if the repository does not have it."""
    try:
        return git("cat-file", "blob", blob, cwd=top)
    except GitCommandError:
        return None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise GitCommandError(f"cannot read {what} {path}: {exc.strerror}") from None


def _append_lines(path: Path, lines: tuple[str, ...] | list[str]) -> list[str]:
    """Add each line `path` lacks (whole-line match) at its end; the lines added."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    have = set(text.splitlines())
    missing = [line for line in lines if line not in have]
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = "" if not text or text.endswith("\n") else "\n"
        with path.open("a") as out:
            out.write(prefix + "".join(f"{line}\n" for line in missing))
    return missing


# ------------------------------------------------------------------------------ sync


def write_state(inv: Invocation, top: Path, *, import_only: bool = False) -> dict[str, Any]:
    """Fold the committed state file (if any) into the data directory, then write its whole state back.

    The file is validated before anything is imported: a malformed file changes nothing.
    It is rewritten only when the directory holds more (encodings of one state differ),
    and the JSON export from the same bytes, naming their git object id. `import_only`
    stops after the fold (hooks after a checkout or merge keep the worktree clean)."""
    import base64

    from .git_state import export_json, load_state, same_state, write_atomically

    path = top / STATE_FILE
    folded: dict[str, Any] | None = None
    if path.exists():
        current = _read(path, "the state file")
        load_state(current, str(path.relative_to(top)))
        folded = inv.run("import", {"update": base64.b64encode(current).decode(), "origin": f"git:{STATE_FILE}"},
                         here=True)
    else:
        current = b""
    if import_only:
        return {"state_file": str(path), "folded": folded is not None and bool(folded["changed"]),
                "written": False, "bytes": len(current), "data": str(inv.session.path)}
    state = base64.b64decode(inv.run("export", {})["update"])
    written = not current or not same_state(state, current)
    if written:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, state)
    else:
        state = current
    export = export_json(state, state_file=Path(STATE_FILE).name, blob=blob_id(top, state))
    export_path = top / EXPORT_FILE
    if not export_path.exists() or export_path.read_text() != export:
        write_atomically(export_path, export.encode())
    return {"state_file": str(path), "export_file": str(export_path), "bytes": len(state),
            "folded": folded is not None and bool(folded["changed"]), "written": written,
            "data": str(inv.session.path)}


def sync_cmd(inv: Invocation) -> None:
    """`git sync`: fold the committed state into the replica and write the replica's state to the file."""
    top = toplevel()
    result = write_state(inv, top, import_only=inv.args.import_only)
    if inv.args.stage and not inv.args.import_only:
        git("add", "--", STATE_FILE, EXPORT_FILE, cwd=top)
        result["staged"] = True
    if inv.args.quiet and not inv.args.as_json:
        return
    emit(result, inv.args.as_json, lambda d: print(
        f"{'folded the committed state into' if d['folded'] else 'nothing new from the committed state for'} "
        f"{d['data']}" + ("" if inv.args.import_only else
                          f"; {'wrote' if d['written'] else 'unchanged:'} {STATE_FILE} ({d['bytes']} bytes)")
        + (", staged" if d.get("staged") else "")))


# ------------------------------------------------------------------------------ init


def _hook_script(name: str, command: str) -> str:
    """A hook that syncs the data directory recorded for the worktree it runs in (nothing if none is)."""
    extra = {"post-checkout": '[ "$3" = 1 ] || exit 0\n', "pre-commit": ""}.get(name, "")
    mode = " --stage" if name == "pre-commit" else " --import-only"
    return (f"#!/bin/sh\n{HOOK_MARK} ({name}): written by `agentstate git init --hooks`; remove to disable\n"
            f"{extra}record=\"$(git rev-parse --git-dir)/{DATA_RECORD}\"\n"
            '[ -f "$record" ] || exit 0\n'
            f'exec {command} --data "$(cat "$record")" git sync --quiet{mode}\n')


def _hooks_to_write(top: Path, command: str) -> dict[Path, str]:
    """Hook path -> script; HookTakenError (before anything is written) if a hook of someone else is there."""
    directory = git_path(top, "hooks")
    scripts = {directory / name: _hook_script(name, command) for name in HOOKS}
    for path in scripts:
        if path.exists() and HOOK_MARK not in path.read_text(errors="replace"):
            raise HookTakenError(f"{path} exists and was not written by agentstate: add "
                                 f"`{command} git sync --quiet` to it yourself, or move it away and rerun")
    return scripts


def init_cmd(inv: Invocation) -> None:
    """`git init`: state file, export, attributes, driver config, data record, and hooks with --hooks."""
    import shutil

    top = toplevel()
    command = agentstate_command()
    hooks = _hooks_to_write(top, command) if inv.args.hooks else {}
    state = write_state(inv, top)
    added_attributes = _append_lines(top / ".gitattributes", ATTRIBUTES)
    config = {"merge.agentstate.name": "agentstate: CRDT merge of the replicated state (never conflicts)",
              "merge.agentstate.driver": f"{command} git merge %O %A %B %P",
              "merge.agentstate-json.name": "agentstate: regenerate the JSON export from the merged state",
              "merge.agentstate-json.driver": f"{command} git merge-json %O %A %B %P"}
    strategy = shutil.which(OCTOPUS_STRATEGY_PROGRAM)
    if strategy is not None:
        config["pull.octopus"] = OCTOPUS_STRATEGY
    for key, value in config.items():
        git("config", "--local", key, value, cwd=top)
    data = inv.session.path
    excluded: list[str] = []
    if data.is_relative_to(top) and data != top:
        excluded = _append_lines(git_path(top, "info/exclude"), [f"/{data.relative_to(top).as_posix()}/"])
    (git_dir(top) / DATA_RECORD).write_text(f"{data}\n")
    for hook, script in hooks.items():
        hook.parent.mkdir(parents=True, exist_ok=True)
        hook.write_text(script)
        hook.chmod(0o755)
    result = {**state, "attributes_added": added_attributes, "config": config, "excluded": excluded,
              "hooks": [str(h) for h in hooks]}

    def render(d: dict[str, Any]) -> None:
        print(f"agentstate state for {top}: {STATE_FILE} ({d['bytes']} bytes) and {EXPORT_FILE}, "
              f"from {d['data']}")
        print(".gitattributes: " + ("added " + "; ".join(d["attributes_added"]) if d["attributes_added"]
                                    else "already set"))
        print("merge drivers agentstate and agentstate-json configured for this clone (git config --local)")
        if "pull.octopus" in d["config"]:
            print(f"octopus merges (git merge a b c) use the {OCTOPUS_STRATEGY} strategy, which runs the drivers")
        else:
            print(f"octopus merges: {OCTOPUS_STRATEGY_PROGRAM} (installed beside agentstate) is not on PATH; "
                  "put it there and run `agentstate git init` again, or merge several branches one at a time")
        if d["excluded"]:
            print(f"ignored the data directory: {', '.join(d['excluded'])} in .git/info/exclude")
        if d["hooks"]:
            print(f"hooks: {', '.join(Path(h).name for h in d['hooks'])} run `agentstate git sync` "
                  "(pre-commit writes and stages the state; the others only fold it in)")
        print(f"commit them: git add .gitattributes {STATE_DIR} && git commit -m 'agentstate state'")

    emit(result, inv.args.as_json, render)


# ------------------------------------------------------------------------------ drivers


def merged_blob(top: Path, ours: str, theirs: str, compute: Callable[[], bytes]) -> tuple[str, bytes]:
    """The merged state of the states with object ids `ours` and `theirs`, computed once per pair.

    Yjs encodings are not canonical (two encodings of one document may differ in the order
    of writers), so both drivers of one merge must share one result for the export to name
    the state that is committed: whichever runs first stores it (`git hash-object -w`) and
    notes its id under `agentstate-merges/` in the git directory; the other reads it back."""
    import hashlib

    directory = git_path(top, "agentstate-merges")
    note = directory / hashlib.sha256(f"{ours}\0{theirs}".encode()).hexdigest()
    try:
        blob = note.read_text().strip()
    except OSError:
        blob = ""
    if blob:
        found = read_blob(top, blob)
        if found is not None:
            return blob, found
    merged = compute()
    blob = blob_id(top, merged)
    directory.mkdir(parents=True, exist_ok=True)
    _prune(directory)
    note.write_text(f"{blob}\n")
    return blob, merged


def _prune(directory: Path) -> None:
    """Drop notes of merges older than NOTE_TTL seconds (a merge's drivers run within moments)."""
    import time

    limit = time.time() - NOTE_TTL
    for entry in directory.iterdir():
        try:
            if entry.stat().st_mtime < limit:
                entry.unlink()
        except OSError:
            continue


def merge_cmd(inv: Invocation) -> None:
    """The merge driver: write the CRDT merge of %A and %B to %A; on bad input say why and leave %A alone."""
    from replica.errors import InvalidUpdateError

    from .git_state import merge_states, write_atomically

    a = inv.args
    ours_path, theirs_path = Path(a.ours), Path(a.theirs)
    ours, theirs = _read(ours_path, "ours"), _read(theirs_path, "theirs")
    try:
        try:
            top = toplevel()
        except NotInRepositoryError:
            merged = merge_states(ours, theirs)
        else:
            _, merged = merged_blob(top, blob_id(top, ours), blob_id(top, theirs),
                                    lambda: merge_states(ours, theirs))
    except InvalidUpdateError as exc:
        raise InvalidUpdateError(f"cannot merge {a.path or ours_path}: {exc}; ours was left as it was") from None
    if merged != ours:
        write_atomically(ours_path, merged)


def merge_json_cmd(inv: Invocation) -> None:
    """The export's merge driver: the export of the merged state named by both sides; never fails a merge.

    Each export names the git object of the state it was made from; when the repository
    holds both, the result is the export of their CRDT merge (the very bytes the state
    driver writes, see `merged_blob`). Otherwise ours is kept, with a note to run
    `agentstate git sync`."""
    from .git_state import export_json, export_source, merge_states, write_atomically

    a = inv.args
    ours_path = Path(a.ours)
    top = Path.cwd()
    try:
        ours_text = ours_path.read_text()
        sources = [export_source(ours_text), export_source(Path(a.theirs).read_text())]
        states = [read_blob(top, s) if s else None for s in sources]
        if sources[0] is None or sources[1] is None or states[0] is None or states[1] is None:
            raise ValueError("the repository does not hold the state either side was exported from")
        ours_state, theirs_state = states[0], states[1]
        blob, merged = merged_blob(top, sources[0], sources[1], lambda: merge_states(ours_state, theirs_state))
        export = export_json(merged, state_file=Path(STATE_FILE).name, blob=blob)
    except (OSError, ValueError, ReplicaError) as exc:
        print(f"agentstate git merge-json: kept our {a.path or ours_path} ({exc}); "
              "run `agentstate git sync` after the merge to regenerate it", file=sys.stderr)
        return
    if export != ours_text:
        write_atomically(ours_path, export.encode())


DRIVER_ARGS = (
    Arg("base", metavar="O", help="the common ancestor's version (%%O; not needed by a CRDT merge, ignored)"),
    Arg("ours", metavar="A", help="our version (%%A): replaced by the merge"),
    Arg("theirs", metavar="B", help="their version (%%B)"),
    Arg("path", metavar="P", nargs="?", default=None, help="the path in the repository (%%P), for messages"),
)


def register(cli: Registry) -> None:
    """Add the `git` command group."""
    cli.group("git", "The replicated state committed in a git repository, merged by a CRDT merge driver.")
    cli.command("git init", "Set this clone up: state file and JSON export, .gitattributes, merge drivers.",
                Arg("--hooks", action="store_true",
                    help="also install post-merge, post-checkout, post-rewrite and pre-commit hooks that run "
                         "`agentstate git sync`"),
                json_arg("what was written and configured"),
                description=f"Run it once in every clone (git does not version driver config) and in every\n"
                            f"worktree whose hooks should sync. It writes {STATE_FILE} (the state of\n"
                            f"--data, merged with the file if one is committed) and {EXPORT_FILE}; adds\n"
                            "the .gitattributes lines; sets merge.agentstate.* and merge.agentstate-json.*\n"
                            "in the clone's config; keeps a data directory inside the worktree out of git\n"
                            "(.git/info/exclude). Running it again changes nothing that is already set.")(init_cmd)
    cli.command("git sync", f"Fold {STATE_FILE} into the data directory and write the directory's state back.",
                Arg("--stage", action="store_true", help="also `git add` the state file and the export"),
                Arg("--import-only", action="store_true",
                    help="only fold the committed file into the data directory, leaving the worktree as it is "
                         "(the post-merge, post-checkout and post-rewrite hooks)"),
                Arg("--quiet", action="store_true", help="print nothing on success (for hooks)"),
                json_arg("what was folded and written"),
                description="Run it after a merge, checkout or rebase (the hooks do), and before committing.\n"
                            "The data directory may be this worktree's own or shared by several worktrees.")(sync_cmd)
    cli.command("git merge", "Merge driver: write the CRDT merge of A and B to A (git runs it as %O %A %B %P).",
                *DRIVER_ARGS,
                description="Both sides must be whole states (Yjs updates). The base is accepted and ignored:\n"
                            "a CRDT merge of two states needs no ancestor. On malformed input it says which\n"
                            "side is wrong, exits 4 and leaves A as it was.")(merge_cmd)
    cli.command("git merge-json", "Merge driver of the JSON export: regenerate it from both sides' states.",
                *DRIVER_ARGS,
                description="Never fails a merge: when the repository lacks a side's state it keeps ours and\n"
                            "says to run `agentstate git sync`.")(merge_json_cmd)

