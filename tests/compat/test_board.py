"""One board: compat entities are the replica's own tasks, graph nodes and graph edges, both ways round."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compat import Decision, Edge, Sprint, Task, TransactionManager
from compat.board import BOARD_STATUS_KEY
from compat.versioned_store import LAYOUT_COLLECTION, entities_for
from replica import Replica

from ..cli.conftest import Agentstate
from .helpers import sync

LAYOUT1 = Path(__file__).resolve().parents[1] / "fixtures" / "compat-layout1"


def _commit(manager: TransactionManager, *entities: object) -> int:
    tx = manager.begin()
    for entity in entities:
        manager.write(tx, entity)
    result = manager.commit(tx)
    assert result.success, result
    return result.version


def test_a_compat_task_is_a_board_task_and_back(tmp_path: Path) -> None:
    with TransactionManager(tmp_path / "got") as manager:
        _commit(manager, Task(id="T-1", title="From compat", status="in_progress", priority="high",
                              description="d", properties={"estimate": 3}, metadata={"by": "old"}))
        task = manager.replica.tasks.get("T-1")
        assert (task.title, task.status.value, task.priority.value, task.description) == (
            "From compat", "in_progress", "high", "d")
        assert task.properties == {"estimate": 3}, "bookkeeping stays beside the task, not in its fields"
        manager.replica.tasks.update("T-1", status="blocked", properties={"estimate": 5})
        tx = manager.begin()
        seen = manager.read(tx, "T-1")
        assert (seen.status, seen.properties, seen.metadata, seen.version) == ("blocked", {"estimate": 5},
                                                                                 {"by": "old"}, 3)
        native = manager.replica.tasks.create("Made natively", id="T-2", priority="low")
        again = manager.read(tx, "T-2")
        assert isinstance(again, Task) and (again.title, again.priority, again.version) == (
            native.title, "low", 1)
        again.title = "Renamed by compat"
        manager.write(tx, again)
        assert manager.commit(tx).success
        assert manager.replica.tasks.get("T-2").title == "Renamed by compat"
        assert "T-2" in manager.store.ids() and manager.store.read("T-2").version == 2


def test_a_native_write_between_read_and_commit_is_a_version_conflict(tmp_path: Path) -> None:
    with TransactionManager(tmp_path / "got") as manager:
        _commit(manager, Task(id="T-1", title="base"))
        for round_ in range(2):
            tx = manager.begin()
            task = manager.read(tx, "T-1")
            manager.replica.tasks.update("T-1", title=f"native {round_}")
            task.priority = "critical"
            manager.write(tx, task)
            result = manager.commit(tx)
            assert not result.success and result.reason == "version_conflict"
            assert [c.entity_id for c in result.conflicts] == ["T-1"]
        assert manager.replica.tasks.get("T-1").priority.value == "medium", "the refused commit wrote nothing"


def test_cancelled_reads_as_completed_and_survives_a_write_back(tmp_path: Path) -> None:
    with TransactionManager(tmp_path / "got") as manager:
        _commit(manager, Task(id="T-1", title="to cancel", metadata={"keep": 1}))
        manager.replica.tasks.update("T-1", status="cancelled")
        tx = manager.begin()
        task = manager.read(tx, "T-1")
        assert task.status == "completed" and task.metadata == {"keep": 1, BOARD_STATUS_KEY: "cancelled"}
        task.description = "edited by an old caller"
        manager.write(tx, task)
        assert manager.commit(tx).success
        board = manager.replica.tasks.get("T-1")
        assert board.status.value == "cancelled" and board.description == "edited by an old caller"
        manager.replica.tasks.update("T-1", status="pending")
        assert manager.store.read("T-1").metadata == {"keep": 1}


def test_edges_and_other_entities_are_the_graph(tmp_path: Path) -> None:
    with TransactionManager(tmp_path / "got") as manager:
        _commit(manager,
                Task(id="T-1", title="one"), Task(id="T-2", title="two"),
                Edge(id="", source_id="T-1", target_id="T-2", edge_type="DEPENDS_ON", weight=0.5, confidence=0.9),
                Decision(id="D-1", title="Use CRDTs", rationale="no lock", affects=["T-1"]),
                Sprint(id="S-1", title="Sprint one", number=4, goals=["ship"]))
        graph = manager.replica.graph
        [edge] = graph.edges()
        assert (edge.source, edge.type, edge.target, edge.weight) == ("T-1", "DEPENDS_ON", "T-2", 0.5)
        assert edge.properties == {"confidence": 0.9}
        decision, sprint = graph.get_node("D-1"), graph.get_node("S-1")
        assert (decision.type, decision.content, decision.properties["rationale"]) == ("decision", "Use CRDTs", "no lock")
        assert (sprint.type, sprint.properties["number"], sprint.properties["goals"]) == ("sprint", 4, ["ship"])
        graph.update_node("D-1", content="Use CRDTs everywhere", properties={"rationale": "merge offline"})
        graph.add_edge("T-1", "T-2", "DEPENDS_ON", weight=0.25)
        read = manager.store.read("D-1")
        assert (read.title, read.rationale, read.affects, read.version) == (
            "Use CRDTs everywhere", "merge offline", ["T-1"], 3)
        assert manager.store.read("E-T-1-T-2-DEPENDS_ON").weight == 0.25
        graph.add_node("D-2", "decision", "Made natively", properties={"rationale": "why not"})
        native = manager.store.read("D-2")
        assert isinstance(native, Decision) and (native.title, native.rationale, native.version) == (
            "Made natively", "why not", 1)
        graph.add_edge("T-2", "D-2", "JUSTIFIES", weight=0.7)
        assert manager.store.read("E-T-2-D-2-JUSTIFIES").weight == 0.7
        assert manager.store.delete("D-1")
        assert graph.find_node("D-1") is None and manager.store.read("D-1") is None
        manager.replica.tasks.delete("T-2")
        assert manager.store.read("T-2") is None and "T-2" not in manager.store.ids()


def test_the_cli_sees_compat_writes_and_compat_reads_the_clis(tmp_path: Path) -> None:
    got = tmp_path / "got"
    with TransactionManager(got) as manager:
        _commit(manager, Task(id="T-1", title="From compat", status="in_progress"),
                Decision(id="D-1", title="Decided"))
    cli = Agentstate(got, tmp_path)
    listed = json.loads(cli("task", "list", "--json").out)["tasks"]
    assert [(t["id"], t["title"], t["status"]) for t in listed] == [("T-1", "From compat", "in_progress")]
    shown = json.loads(cli("graph", "show", "D-1", "--json").out)
    assert [(n["id"], n["type"], n["content"]) for n in shown["nodes"]] == [("D-1", "decision", "Decided")]
    made = cli("task", "add", "From the CLI", "--id", "T-cli", "--priority", "critical")
    assert made.code == 0, made.err
    assert cli("task", "update", "T-1", "--status", "cancelled").code == 0
    with TransactionManager(got) as manager:
        tx = manager.begin()
        task = manager.read(tx, "T-cli")
        assert (task.title, task.priority, task.version) == ("From the CLI", "critical", 1)
        assert manager.read(tx, "T-1").status == "completed"
        task.status = "completed"
        manager.write(tx, task)
        assert manager.commit(tx).success
    listed = {t["id"]: t["status"] for t in json.loads(cli("task", "list", "--json").out)["tasks"]}
    assert listed == {"T-1": "cancelled", "T-cli": "completed"}


def test_a_yjs_peer_sees_compat_tasks(tmp_path: Path) -> None:
    with TransactionManager(tmp_path / "got") as manager, Replica.open(tmp_path / "peer") as peer:
        _commit(manager, Task(id="T-1", title="shared"))
        sync(manager, peer)
        assert peer.tasks.get("T-1").title == "shared"
        peer.tasks.update("T-1", title="changed by the peer")
        sync(manager, peer)
        assert manager.store.read("T-1").title == "changed by the peer"


def test_a_directory_of_the_previous_layout_is_upgraded_in_place(tmp_path: Path) -> None:
    got = tmp_path / "got"
    shutil.copytree(LAYOUT1, got)
    with Replica.open(got) as before:
        assert len(before.tasks) == 0 and before.collection("got_entities").ids(), "the fixture is layout 1"
    with TransactionManager(got) as manager:
        store = manager.store
        assert store.ids() == ["D-old-1", "E-T-old-2-T-old-1-BLOCKS", "S-old-1", "T-old-1", "T-old-2"]
        assert store.read("T-old-1").title == "Old task one, renamed" and store.read("T-old-3") is None
        tasks = {t.id: (t.title, t.status.value) for t in manager.replica.tasks.list()}
        assert tasks == {"T-old-1": ("Old task one, renamed", "in_progress"), "T-old-2": ("Old task two", "completed")}
        assert [n.id for n in manager.replica.graph.nodes()] == ["D-old-1", "S-old-1"]
        assert [e.key for e in manager.replica.graph.edges()] == ["T-old-2|BLOCKS|T-old-1"]
        assert store.read("T-old-1").properties == {"estimate": 3}
        assert store.history("T-old-1")[0]["data"]["title"] == "Old task one"
        version = store.current_version()
        assert entities_for(manager.replica).upgrade_problems == []
        assert manager.replica.collection(LAYOUT_COLLECTION).get("board")["layout"] == 2
    with TransactionManager(got) as manager:
        assert manager.store.current_version() == version
        assert len(manager.replica.collection(LAYOUT_COLLECTION).history("board")) == 1, "upgraded once"


def test_the_real_directory_lands_on_the_board(real_data_dir: Path, tmp_path: Path) -> None:
    cli = Agentstate(tmp_path / "data", tmp_path)
    done = cli("migrate", str(real_data_dir), "--json")
    assert done.code == 0, done.err
    olds = [json.loads(p.read_text())["data"] for p in (real_data_dir / "entities").glob("*.json")]
    listed = {t["id"]: (t["title"], t["status"]) for t in json.loads(cli("task", "list", "--json").out)["tasks"]}
    tasks = {d["id"]: (d["title"] or d["id"], d["status"]) for d in olds if d["entity_type"] == "task"}
    assert listed == tasks and len(tasks) > 100
    nodes = {n["id"]: n["type"] for n in json.loads(cli("graph", "node", "list", "--json").out)["nodes"]}
    for data in olds:
        if data["entity_type"] not in ("task", "edge"):
            assert nodes[data["id"]] == data["entity_type"], data["id"]
    edges = json.loads(cli("graph", "edge", "list", "--json").out)
    keys = {f"{e['source']}|{e['type']}|{e['target']}" for e in edges["edges"] + edges["dangling"]}
    wanted = {f"{d['source_id']}|{d['edge_type']}|{d['target_id']}" for d in olds if d["entity_type"] == "edge"}
    assert wanted <= keys, "every compat edge is a graph edge (the thought graph's own edges are there too)"
    checked = cli("verify")
    assert checked.code == 0, checked.out + checked.err
    again = json.loads(cli("migrate", str(real_data_dir), "--json").out)
    assert again["changes"] == 0 and again["problems"] == []


@pytest.mark.parametrize("bad", [{"source_id": ""}, {"priority": "urgent"}])
def test_an_entity_the_board_cannot_hold_is_refused_whole(tmp_path: Path, bad: dict) -> None:
    with TransactionManager(tmp_path / "got") as manager:
        _commit(manager, Task(id="T-1", title="kept"))
        tx = manager.begin()
        manager.write(tx, Task(id="T-2", title="not written"))
        entity = Edge(id="E-x", source_id="T-1", target_id="T-2", edge_type="BLOCKS")
        if "priority" in bad:
            entity = Task(id="T-3", title="bad")
        for name, value in bad.items():
            setattr(entity, name, value)
        manager.write(tx, entity)
        result = manager.commit(tx)
        assert not result.success and "write_failed" in (result.reason or "")
        assert [t.id for t in manager.replica.tasks.list()] == ["T-1"]
