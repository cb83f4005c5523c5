"""`git-merge-agentstate`: a git merge strategy that makes octopus merges run the merge drivers.

git's own octopus strategy merges files with `git merge-file` and never runs merge drivers,
so a plain `git merge a b c` where two heads changed the committed state would stop.
`agentstate git init` sets `pull.octopus = agentstate` (which `git merge` also reads for
merges of several heads) when this program is on PATH. git runs it as
`git-merge-agentstate BASE... -- HEAD REMOTE...`; it merges the heads one after another
with `git merge-tree --write-tree` (the same merge as a two-head `git merge`, drivers
included), then moves the index and worktree to the result. Exit 0: merged, git commits
with every head as a parent; exit 2: not handled (a conflict outside the drivers), and
nothing was touched, as git's octopus does.
"""

from __future__ import annotations

import subprocess
import sys

NOT_HANDLED = 2


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    """Run git, capturing its output (never raising on a non-zero exit)."""
    return subprocess.run(["git", *args], capture_output=True, text=True)


def merge_heads(head: str, remotes: list[str]) -> tuple[str | None, str]:
    """The tree of merging `remotes` into `head` in turn, or (None, why) on a conflict."""
    current = head
    tree = ""
    for remote in remotes:
        merged = _git("merge-tree", "--write-tree", "--no-messages", current, remote)
        lines = merged.stdout.splitlines()
        if merged.returncode != 0 or not lines:
            conflicted = ", ".join(line.split("\t", 1)[-1] for line in lines[1:] if "\t" in line) or "?"
            detail = merged.stderr.strip() or f"conflicts in {conflicted}"
            return None, f"merging {remote[:12]} failed: {detail}"
        tree = lines[0].strip()
        step = _git("commit-tree", tree, "-p", current, "-p", remote, "-m", "agentstate octopus step")
        if step.returncode != 0:
            return None, f"cannot record an intermediate merge: {step.stderr.strip()}"
        current = step.stdout.strip()
    return tree, ""


def main(argv: list[str] | None = None) -> int:
    """Entry point of `git-merge-agentstate BASE... -- HEAD REMOTE...`."""
    args = sys.argv[1:] if argv is None else argv
    if "--" not in args:
        print("git-merge-agentstate: git runs this as a merge strategy (BASE... -- HEAD REMOTE...)", file=sys.stderr)
        return NOT_HANDLED
    heads = args[args.index("--") + 1:]
    if len(heads) < 2:
        print("git-merge-agentstate: nothing to merge", file=sys.stderr)
        return NOT_HANDLED
    head, remotes = heads[0], heads[1:]
    tree, why = merge_heads(head, remotes)
    if tree is None:
        print(f"agentstate octopus: {why}; merge the branches one at a time to resolve it", file=sys.stderr)
        return NOT_HANDLED
    moved = _git("read-tree", "-u", "-m", head, tree)
    if moved.returncode != 0:
        print(f"agentstate octopus: cannot update the worktree: {moved.stderr.strip()}", file=sys.stderr)
        return NOT_HANDLED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
