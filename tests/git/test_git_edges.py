"""The driver on malformed input, worktrees (own and shared data directories), hooks, octopus merges, init."""

from __future__ import annotations

import subprocess

import pytest

from replica.app.exitcodes import ExitCode
from replica.app.git_state import decoded

from .gitkit import AGENTSTATE, EXPORT, STATE, Workspace, crdt_merge
from .test_git_merge import branch_writes, start


def _states(ws: Workspace) -> tuple[bytes, bytes]:
    """Two whole states written by two replicas."""
    a, b = ws.root / "a", ws.root / "b"
    ws.agentstate(ws.root, a, "task", "add", "on a", "--id", "T-a")
    ws.agentstate(ws.root, b, "task", "add", "on b", "--id", "T-b")
    ws.agentstate(ws.root, a, "export", str(ws.root / "a.yupdate"))
    ws.agentstate(ws.root, b, "export", str(ws.root / "b.yupdate"))
    return (ws.root / "a.yupdate").read_bytes(), (ws.root / "b.yupdate").read_bytes()


@pytest.mark.parametrize("bad", ["empty", "truncated", "garbage", "incremental"])
def test_driver_refuses_malformed_input_and_leaves_ours_alone(ws: Workspace, bad: str) -> None:
    ours, theirs = _states(ws)
    incremental = b""
    if bad == "incremental":
        ws.agentstate(ws.root, ws.root / "b", "task", "update", "T-b", "--title", "edited later")
        full = ws.root / "b2.yupdate"
        ws.agentstate(ws.root, ws.root / "b", "export", str(full))
        from pycrdt import Doc, get_state

        doc = Doc()
        doc.apply_update(full.read_bytes())
        incremental = doc.get_update(get_state(theirs))
    broken = {"empty": b"", "truncated": theirs[: len(theirs) // 2], "garbage": b"\x7fELF not a state",
              "incremental": incremental}[bad]
    for side in ("ours", "theirs"):
        a, b = ws.root / "A", ws.root / "B"
        a.write_bytes(broken if side == "ours" else ours)
        b.write_bytes(broken if side == "theirs" else theirs)
        before = a.read_bytes()
        run = ws.run([AGENTSTATE, "git", "merge", str(ws.root / "O"), str(a), str(b), STATE], ws.root, check=False)
        assert run.code == ExitCode.INVALID
        assert a.read_bytes() == before
        assert len(run.err.strip().splitlines()) == 1
        assert run.err.startswith(f"error: cannot merge {STATE}: {side}: ")
        assert "left as it was" in run.err


def test_driver_ignores_the_base_and_merges_both_sides(ws: Workspace) -> None:
    ours, theirs = _states(ws)
    for base in (ours, b"not even a state"):
        a, b, o = ws.root / "A", ws.root / "B", ws.root / "O"
        a.write_bytes(ours)
        b.write_bytes(theirs)
        o.write_bytes(base)
        ws.run([AGENTSTATE, "git", "merge", str(o), str(a), str(b), STATE], ws.root)
        assert decoded(a.read_bytes()) == crdt_merge(ours, theirs)
    a.write_bytes(b"\x00\x00")
    ws.run([AGENTSTATE, "git", "merge", str(o), str(a), str(b)], ws.root)
    assert decoded(a.read_bytes()) == crdt_merge(theirs)


def test_git_merge_with_a_malformed_state_on_one_side_fails_clearly(ws: Workspace) -> None:
    repo, _ = start(ws)
    branch_writes(ws, repo, "alpha", "main", ws.root / "data-alpha", 2)
    ws.git(repo, "checkout", "-q", "-b", "broken", "main")
    (repo / STATE).write_bytes(b"\x01\x02garbage")
    ws.commit_all(repo, "a broken state")
    ws.git(repo, "checkout", "-q", "alpha")
    ours = (repo / STATE).read_bytes()
    head = ws.git(repo, "rev-parse", "HEAD").out
    run = ws.git(repo, "merge", "--no-edit", "broken", check=False)
    assert run.code != 0
    assert f"cannot merge {STATE}: theirs: not a Yjs update" in run.err
    assert (repo / STATE).read_bytes() == ours
    assert ws.git(repo, "rev-parse", "HEAD").out == head
    ws.git(repo, "merge", "--abort")
    assert ws.git(repo, "status", "--porcelain").out == ""


def test_octopus_merge_of_three_branches(ws: Workspace) -> None:
    """A plain `git merge one two three` runs the agentstate strategy (pull.octopus), which runs the drivers."""
    repo, _ = start(ws)
    assert ws.git(repo, "config", "pull.octopus").out.strip() == "agentstate"
    for n, branch in enumerate(("one", "two", "three"), start=2):
        branch_writes(ws, repo, branch, "main", ws.root / f"data-{branch}", n)
    states = [ws.blob(repo, b) for b in ("one", "two", "three")]
    ws.git(repo, "checkout", "-q", "-b", "everything", "main")
    ws.agentstate(repo, ws.root / "data-main", "counter", "incr", "builds", "--by", "100")
    ws.agentstate(repo, ws.root / "data-main", "git", "sync")
    ws.commit_all(repo, "main moves on")
    ours = (repo / STATE).read_bytes()
    heads = [ws.git(repo, "rev-parse", rev).out.strip() for rev in ("HEAD", "one", "two", "three")]
    ws.git(repo, "merge", "--no-edit", "one", "two", "three")
    parents = ws.git(repo, "rev-list", "--parents", "-n", "1", "HEAD").out.split()[1:]
    assert parents == heads, "one octopus commit with every head as a parent"
    assert ws.git(repo, "status", "--porcelain").out == ""
    merged = (repo / STATE).read_bytes()
    assert b"<<<<<<<" not in merged and decoded(merged) == crdt_merge(ours, *states)
    export = (repo / EXPORT).read_text()
    assert "<<<<<<<" not in export and ws.git(repo, "hash-object", STATE).out.strip() in export
    fresh = ws.root / "data-reader"
    ws.agentstate(repo, fresh, "git", "sync")
    assert ws.agentstate(repo, fresh, "counter", "get", "builds", "--json").json()["value"] == 1 + 2 + 3 + 4 + 100


def test_octopus_with_a_conflict_outside_the_state_is_refused_and_changes_nothing(ws: Workspace) -> None:
    repo, _ = start(ws)
    for branch, text in (("left", "left side\n"), ("right", "right side\n")):
        ws.git(repo, "checkout", "-q", "-b", branch, "main")
        (repo / "README").write_text(text)
        ws.commit_all(repo, f"README on {branch}")
    ws.git(repo, "checkout", "-q", "main")
    (repo / "other.txt").write_text("main moves on\n")
    ws.commit_all(repo, "main moves on")
    head = ws.git(repo, "rev-parse", "HEAD").out
    refused = ws.git(repo, "merge", "--no-edit", "left", "right", check=False)
    assert refused.code != 0 and "merge the branches one at a time" in refused.err
    assert ws.git(repo, "rev-parse", "HEAD").out == head
    assert ws.git(repo, "status", "--porcelain").out == ""


def test_worktrees_with_their_own_data_directories(ws: Workspace) -> None:
    repo, _ = start(ws)
    tree = ws.root / "tree-feature"
    ws.git(repo, "worktree", "add", "-q", "-b", "feature", str(tree), "main")
    mine, theirs = ws.root / "data-main-tree", ws.root / "data-feature-tree"
    ws.agentstate(repo, mine, "git", "init", "--hooks")
    ws.agentstate(tree, theirs, "git", "init")
    assert (repo / ".git" / "agentstate-data").read_text().strip() == str(mine)
    assert (repo / ".git" / "worktrees" / tree.name / "agentstate-data").read_text().strip() == str(theirs)
    ws.agentstate(repo, mine, "task", "add", "in the main tree", "--id", "T-main-tree")
    ws.agentstate(tree, theirs, "task", "add", "in the feature tree", "--id", "T-feature-tree")
    ws.git(repo, "commit", "-q", "-am", "main tree work")
    ws.git(tree, "commit", "-q", "-am", "feature tree work")
    assert ws.git(repo, "status", "--porcelain").out == "" and ws.git(tree, "status", "--porcelain").out == ""
    ws.git(repo, "merge", "--no-edit", "feature")
    tasks = {t["id"] for t in ws.agentstate(repo, mine, "task", "list", "--json").json()["tasks"]}
    assert {"T-main-tree", "T-feature-tree", "T-shared"} <= tasks
    assert "T-main-tree" not in {t["id"] for t in
                                 ws.agentstate(tree, theirs, "task", "list", "--json").json()["tasks"]}
    ws.git(tree, "merge", "--no-edit", "main")
    ws.agentstate(tree, theirs, "git", "sync")
    assert "T-main-tree" in {t["id"] for t in ws.agentstate(tree, theirs, "task", "list", "--json").json()["tasks"]}


def test_worktrees_sharing_one_data_directory(ws: Workspace) -> None:
    repo, _ = start(ws)
    tree = ws.root / "tree-feature"
    ws.git(repo, "worktree", "add", "-q", "-b", "feature", str(tree), "main")
    shared = ws.root / "data-shared"
    ws.agentstate(repo, shared, "git", "init")
    ws.agentstate(tree, shared, "git", "init")
    ws.agentstate(repo, shared, "task", "add", "written from the main tree", "--id", "T-from-main")
    ws.agentstate(tree, shared, "git", "sync")
    assert "T-from-main" in (tree / EXPORT).read_text()
    argv = [[AGENTSTATE, "--data", str(shared), "git", "sync", "--json"], ]
    procs = [subprocess.Popen(argv[0], cwd=where, env=ws.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for where in (repo, tree, repo, tree)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    assert decoded((repo / STATE).read_bytes())["tasks"].keys() == decoded((tree / STATE).read_bytes())["tasks"].keys()
    ws.git(tree, "commit", "-q", "-am", "feature tree state")
    ws.git(repo, "commit", "-q", "-am", "main tree state")
    ws.git(repo, "merge", "--no-edit", "feature")
    ws.agentstate(repo, shared, "git", "sync")
    assert {"T-from-main", "T-shared"} <= decoded((repo / STATE).read_bytes())["tasks"].keys()


def test_hooks_sync_on_commit_merge_and_checkout(ws: Workspace) -> None:
    repo, base = start(ws)
    ws.agentstate(repo, base, "git", "init", "--hooks")
    ws.agentstate(repo, base, "task", "add", "staged by the pre-commit hook", "--id", "T-hooked")
    (repo / "notes.txt").write_text("a change\n")
    ws.git(repo, "add", "notes.txt")
    ws.git(repo, "commit", "-q", "-m", "notes")
    assert b"T-hooked" in ws.blob(repo, "HEAD", EXPORT)
    assert ws.git(repo, "status", "--porcelain").out == ""
    ws.git(repo, "checkout", "-q", "-b", "other", "HEAD~1")
    assert ws.git(repo, "status", "--porcelain").out == ""
    other = ws.root / "data-other"
    ws.agentstate(repo, other, "git", "sync")
    ws.agentstate(repo, other, "task", "add", "from another replica", "--id", "T-other")
    ws.agentstate(repo, other, "git", "sync")
    ws.git(repo, "commit", "-q", "--no-verify", "-am", "other, without the pre-commit hook")
    ws.git(repo, "checkout", "-q", "main")
    assert ws.git(repo, "status", "--porcelain").out == ""

    def base_tasks() -> set[str]:
        return {t["id"] for t in ws.agentstate(repo, base, "task", "list", "--json").json()["tasks"]}

    assert "T-other" not in base_tasks()
    ws.git(repo, "merge", "--no-edit", "other")
    assert ws.git(repo, "status", "--porcelain").out == ""
    assert {"T-hooked", "T-other"} <= base_tasks()


def test_init_is_idempotent_and_refuses_outside_a_repository(ws: Workspace) -> None:
    repo, base = start(ws)
    config = ws.git(repo, "config", "--local", "--list").out
    attributes = (repo / ".gitattributes").read_text()
    second = ws.agentstate(repo, base, "git", "init", "--json").json()
    assert second["attributes_added"] == [] and second["written"] is False
    assert ws.git(repo, "config", "--local", "--list").out == config
    assert (repo / ".gitattributes").read_text() == attributes
    assert ws.git(repo, "status", "--porcelain").out == ""
    outside = ws.root / "not-a-repo"
    outside.mkdir()
    run = ws.agentstate(outside, ws.root / "data-x", "git", "init", check=False)
    assert run.code == ExitCode.USAGE
    assert run.err.startswith("error: ") and "not inside a git worktree" in run.err
    assert len(run.err.strip().splitlines()) == 1
    assert not (outside / ".agentstate-git").exists() and not (ws.root / "data-x").exists()
    hooks = repo / ".git" / "hooks"
    (hooks / "pre-commit").write_text("#!/bin/sh\nexit 0\n")
    taken = ws.agentstate(repo, base, "git", "init", "--hooks", check=False)
    assert taken.code == ExitCode.CONFLICT and "not written by agentstate" in taken.err
    assert not (hooks / "post-merge").exists()
