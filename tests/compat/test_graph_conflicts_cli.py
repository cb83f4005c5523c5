"""The installed `agentstate` command lists, shows and settles node and edge conflicts beside task ones.

Two data directories written by real CLI processes, synced in-process as a mesh would
(state-vector diffs): one conflict with one id on both, settled on one, gone on both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replica import Replica

from ..cli.conftest import Agentstate


def _sync(*dirs: Path) -> None:
    """Exchange every directory's state with every other's (each opened as a replica here, then closed)."""
    replicas = [Replica.open(d) for d in dirs]
    try:
        for _ in range(2):
            for source in replicas:
                for target in replicas:
                    if source is not target:
                        target.apply_update(source.diff(target.state_vector()))
    finally:
        for replica in replicas:
            replica.close()


def _ok(run: Agentstate, *args: str) -> Any:
    result = run(*args)
    assert result.code == 0, result.err
    return result.json() if "--json" in args else result.out


def test_node_and_edge_conflicts_through_the_command(tmp_path: Path) -> None:
    a, b = Agentstate(tmp_path / "a", tmp_path), Agentstate(tmp_path / "b", tmp_path)
    _ok(a, "graph", "node", "add", "N-1", "--type", "idea", "--content", "base")
    _ok(a, "graph", "node", "add", "N-2", "--type", "idea")
    _ok(a, "graph", "edge", "add", "N-1", "N-2", "--type", "supports")
    _ok(b, "init")
    _sync(a.data, b.data)
    _ok(a, "graph", "node", "update", "N-1", "--content", "from a")
    _ok(b, "graph", "node", "update", "N-1", "--content", "from b")
    _ok(a, "graph", "edge", "add", "N-1", "N-2", "--type", "supports", "--weight", "0.25")
    _ok(b, "graph", "edge", "add", "N-1", "N-2", "--type", "supports", "--weight", "0.75")
    _sync(a.data, b.data)
    on_a = _ok(a, "conflicts", "list", "--json")["conflicts"]
    on_b = _ok(b, "conflicts", "list", "--json")["conflicts"]
    assert [c["conflict_id"] for c in on_a] == [c["conflict_id"] for c in on_b] and len(on_a) == 2
    by_type = {c["entity_type"]: c for c in on_a}
    assert by_type["node"]["entity_id"] == "N-1" and by_type["node"]["conflict_fields"] == ["content"]
    assert by_type["node"]["ours"]["values"] == {"content": "from a"}
    assert by_type["edge"]["entity_id"] == "N-1|supports|N-2" and by_type["edge"]["conflict_fields"] == ["weight"]
    node_id, edge_id = by_type["node"]["conflict_id"], by_type["edge"]["conflict_id"]
    shown = _ok(b, "conflicts", "show", node_id, "--json")
    assert shown["theirs"]["values"] == {"content": "from a"} and shown["current"]["id"] == "N-1"
    assert "conflict" in _ok(b, "conflicts", "show", node_id) and "node N-1" in _ok(b, "conflicts", "show", node_id)
    settled = _ok(b, "conflicts", "resolve", node_id, "--strategy", "theirs", "--json")
    assert settled["entity"]["content"] == "from a" and settled["already_settled"] is False
    merged = _ok(a, "conflicts", "resolve", edge_id, "--strategy", "merge", "--value", "weight=0.5", "--json")
    assert merged["entity"]["weight"] == 0.5
    _sync(a.data, b.data)
    for run in (a, b):
        assert _ok(run, "conflicts", "list", "--json")["conflicts"] == []
        assert _ok(run, "graph", "node", "list", "--json")["nodes"][0]["content"] == "from a"
        assert _ok(run, "graph", "edge", "list", "--json")["edges"][0]["weight"] == 0.5
    again = a("conflicts", "resolve", node_id, "--strategy", "ours")
    assert again.code == 0 and "already settled" in again.out
    assert a("conflicts", "resolve", "C-0000000000000000", "--strategy", "ours").code == 3
