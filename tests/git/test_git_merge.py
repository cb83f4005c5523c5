"""State in git: branches written by different replicas merge with plain `git merge`, rebase, and the driver."""

from __future__ import annotations

import json
from pathlib import Path

from replica.app.git_state import decoded, export_json

from .gitkit import EXPORT, STATE, Workspace, crdt_merge, no_conflict_markers


def start(ws: Workspace) -> tuple[Path, Path]:
    """A repository set up with `agentstate git init` on main, holding one shared task and a counter."""
    repo = ws.repo()
    base = ws.root / "data-main"
    ws.agentstate(repo, base, "task", "add", "Shared task", "--id", "T-shared")
    ws.agentstate(repo, base, "counter", "incr", "builds", "--by", "1")
    ws.agentstate(repo, base, "graph", "node", "add", "q1", "--type", "question", "--content", "why?")
    ws.agentstate(repo, base, "git", "init")
    ws.commit_all(repo, "agentstate state")
    return repo, base


def branch_writes(ws: Workspace, repo: Path, branch: str, start_point: str, data: Path, n: int) -> None:
    """On a new branch, a replica of its own folds the committed state, writes, syncs and commits."""
    ws.git(repo, "checkout", "-q", "-b", branch, start_point)
    ws.agentstate(repo, data, "git", "sync")
    ws.agentstate(repo, data, "task", "add", f"Task of {branch}", "--id", f"T-{branch}", "--tag", branch)
    ws.agentstate(repo, data, "task", "update", "T-shared", "--title", f"Shared, as {branch} sees it")
    ws.agentstate(repo, data, "graph", "node", "add", f"h-{branch}", "--type", "hypothesis", "--content", branch)
    ws.agentstate(repo, data, "graph", "edge", "add", f"h-{branch}", "q1", "--type", "answers")
    ws.agentstate(repo, data, "counter", "incr", "builds", "--by", str(n))
    ws.agentstate(repo, data, "git", "sync")
    (repo / f"{branch}.txt").write_text(f"work of {branch}\n")
    ws.commit_all(repo, f"work on {branch}")


def test_two_branches_merge_without_conflict(ws: Workspace) -> None:
    repo, _ = start(ws)
    branch_writes(ws, repo, "alpha", "main", ws.root / "data-alpha", 2)
    branch_writes(ws, repo, "beta", "main", ws.root / "data-beta", 3)
    ours, theirs = ws.blob(repo, "alpha"), ws.blob(repo, "beta")
    ws.git(repo, "checkout", "-q", "alpha")
    merged = ws.git(repo, "merge", "--no-edit", "beta")
    assert "CONFLICT" not in merged.out + merged.err, merged.out + merged.err
    assert ws.git(repo, "ls-files", "-u").out == ""
    assert ws.git(repo, "status", "--porcelain").out == ""
    assert no_conflict_markers(repo)
    state = (repo / STATE).read_bytes()
    assert state == ws.blob(repo, "HEAD")
    assert decoded(state) == crdt_merge(ours, theirs)
    text = ws.blob(repo, "HEAD", EXPORT).decode()
    export = json.loads(text)
    assert export["state"]["blob"] == ws.git(repo, "rev-parse", f"HEAD:{STATE}").out.strip()
    assert text == export_json(state, state_file="state.yupdate", blob=export["state"]["blob"])
    assert export["counters"] == {"builds": 6}
    assert list(export["open_conflicts"].values()) == [{"fields": ["title"], "task": "T-shared"}]

    fresh = ws.root / "data-reader"
    ws.agentstate(repo, fresh, "git", "sync")
    assert ws.agentstate(repo, fresh, "counter", "get", "builds", "--json").json()["value"] == 1 + 2 + 3
    tasks = {t["id"] for t in ws.agentstate(repo, fresh, "task", "list", "--json").json()["tasks"]}
    assert tasks == {"T-shared", "T-alpha", "T-beta"}
    edges = ws.agentstate(repo, fresh, "graph", "edge", "list", "--json").json()["edges"]
    assert {(e["source"], e["target"]) for e in edges} == {("h-alpha", "q1"), ("h-beta", "q1")}
    conflicts = ws.agentstate(repo, fresh, "conflicts", "list", "--json").json()["conflicts"]
    assert [(c["entity_id"], c["conflict_fields"]) for c in conflicts] == [("T-shared", ["title"])]
    titles = {c["ours"]["values"]["title"] for c in conflicts} | {c["theirs"]["values"]["title"] for c in conflicts}
    assert titles == {"Shared, as alpha sees it", "Shared, as beta sees it"}


def test_merge_is_the_same_whichever_side_merges(ws: Workspace) -> None:
    repo, _ = start(ws)
    branch_writes(ws, repo, "alpha", "main", ws.root / "data-alpha", 2)
    branch_writes(ws, repo, "beta", "main", ws.root / "data-beta", 3)
    ws.git(repo, "checkout", "-q", "-b", "alpha-into-beta", "beta")
    ws.git(repo, "merge", "--no-edit", "alpha")
    ws.git(repo, "checkout", "-q", "-b", "beta-into-alpha", "alpha")
    ws.git(repo, "merge", "--no-edit", "beta")
    assert decoded(ws.blob(repo, "alpha-into-beta")) == decoded(ws.blob(repo, "beta-into-alpha"))
    exports = [json.loads(ws.blob(repo, rev, EXPORT)) for rev in ("alpha-into-beta", "beta-into-alpha")]
    for export in exports:
        del export["state"]
    assert exports[0] == exports[1]


def test_three_way_merge_after_both_sides_moved_past_a_shared_base(ws: Workspace) -> None:
    repo, _ = start(ws)
    branch_writes(ws, repo, "alpha", "main", ws.root / "data-alpha", 2)
    branch_writes(ws, repo, "beta", "main", ws.root / "data-beta", 3)
    ws.git(repo, "checkout", "-q", "alpha")
    ws.git(repo, "merge", "--no-edit", "beta")
    first = ws.blob(repo, "HEAD")
    # both continue from the merge: the next merge's base holds both histories
    ws.git(repo, "checkout", "-q", "-b", "gamma", "alpha")
    ws.agentstate(repo, ws.root / "data-alpha", "git", "sync")
    ws.agentstate(repo, ws.root / "data-alpha", "counter", "incr", "builds", "--by", "10")
    ws.agentstate(repo, ws.root / "data-alpha", "git", "sync")
    ws.commit_all(repo, "gamma")
    ws.git(repo, "checkout", "-q", "-b", "delta", "alpha")
    ws.agentstate(repo, ws.root / "data-beta", "git", "sync")
    ws.agentstate(repo, ws.root / "data-beta", "task", "update", "T-alpha", "--status", "completed")
    ws.agentstate(repo, ws.root / "data-beta", "git", "sync")
    ws.commit_all(repo, "delta")
    base = ws.git(repo, "merge-base", "gamma", "delta").out.strip()
    assert ws.blob(repo, base) == first
    ours, theirs = ws.blob(repo, "gamma"), ws.blob(repo, "delta")
    ws.git(repo, "checkout", "-q", "gamma")
    ws.git(repo, "merge", "--no-edit", "delta")
    assert decoded((repo / STATE).read_bytes()) == crdt_merge(ours, theirs)
    fresh = ws.root / "data-reader"
    ws.agentstate(repo, fresh, "git", "sync")
    assert ws.agentstate(repo, fresh, "counter", "get", "builds", "--json").json()["value"] == 16
    assert ws.agentstate(repo, fresh, "task", "show", "T-alpha", "--json").json()["status"] == "completed"


def test_rebase_onto_another_branch(ws: Workspace) -> None:
    repo, _ = start(ws)
    branch_writes(ws, repo, "alpha", "main", ws.root / "data-alpha", 2)
    branch_writes(ws, repo, "beta", "main", ws.root / "data-beta", 3)
    ws.git(repo, "checkout", "-q", "beta")
    ws.agentstate(repo, ws.root / "data-beta", "counter", "incr", "builds", "--by", "4")
    ws.agentstate(repo, ws.root / "data-beta", "git", "sync")
    ws.commit_all(repo, "more on beta")
    alpha, beta = ws.blob(repo, "alpha"), ws.blob(repo, "beta")
    ws.git(repo, "rebase", "alpha")
    assert ws.git(repo, "rev-list", "--count", "alpha..beta").out.strip() == "2"
    assert ws.git(repo, "merge-base", "--is-ancestor", "alpha", "beta").code == 0
    assert no_conflict_markers(repo)
    assert decoded(ws.blob(repo, "beta")) == crdt_merge(alpha, beta)
    fresh = ws.root / "data-reader"
    ws.agentstate(repo, fresh, "git", "sync")
    assert ws.agentstate(repo, fresh, "counter", "get", "builds", "--json").json()["value"] == 1 + 2 + 3 + 4
