"""compat.migrate: importing cortical.got directories (the real fixture and made-up ones) losslessly, idempotently."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from compat.checksums import compute_checksum
from compat.graph_wal import GraphWAL
from compat.migrate import EVENTS_COLLECTION, FILES_COLLECTION, WAL_COLLECTION, migrate
from compat.thought_graph import EdgeType, NodeType, ThoughtGraph
from compat.types import Task
from compat.versioned_store import META_KEY, entities_for
from compat.wal import WALManager
from replica import Replica
from replica.models import from_doc_number


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Replica]:
    with Replica.open(tmp_path / "replica", durability="lazy") as replica:
        yield replica


def _wrapper(data: Dict[str, object]) -> Dict[str, object]:
    return {"_checksum": compute_checksum(data), "_written_at": "2025-01-01T00:00:00+00:00", "data": data}


def _write_entity(folder: Path, data: Dict[str, object], wrapper: Dict[str, object] = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{data['id']}.json").write_text(json.dumps(wrapper or _wrapper(data), indent=2, sort_keys=True))


def test_the_real_directory_arrives_whole_and_verified(real_data_dir: Path, target: Replica) -> None:
    report = migrate(real_data_dir, target)
    assert report.problems == [], report.problems
    entities = entities_for(target)
    files = sorted((real_data_dir / "entities").glob("*.json"))
    assert len(files) == 449
    for path in files:
        wrapper = json.loads(path.read_text())
        assert compute_checksum(wrapper["data"]) == wrapper["_checksum"], "the fixture verifies"
        entity = entities.read(path.stem)
        assert entity is not None and entity.compute_checksum() == wrapper["_checksum"], path.name
        stored = {k: v for k, v in entities.raw(path.stem).items() if k != META_KEY}
        assert stored == from_doc_number(wrapper["data"])
    history_dir = real_data_dir / "entities" / "_history"
    deleted = {p.stem for p in history_dir.glob("*.jsonl")} - {p.stem for p in files}
    assert set(entities.ids()) == {p.stem for p in files}, "nothing invented, deleted entities stay deleted"
    assert len(deleted) == 9
    for path in history_dir.glob("*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        writes = entities.records.history(path.stem)
        states = [from_doc_number(line["data"]) for line in lines]
        kept = [None if w.data is None else {k: v for k, v in w.data.items() if k != META_KEY} for w in writes]
        if path.stem in deleted:
            assert kept == states + [None], path.name
        else:
            current = json.loads((real_data_dir / "entities" / f"{path.stem}.json").read_text())["data"]
            assert kept == states + [from_doc_number(current)], path.name
        assert [w.version for w in writes[:-1]] == [line["global_version"] for line in lines]
    events = target.collection(EVENTS_COLLECTION)
    event_lines = {
        f"{p.stem}:{n}": json.loads(line)
        for p in (real_data_dir / "events").glob("*.jsonl")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if line.strip()
    }
    assert len(event_lines) == 920 and set(events.ids()) == set(event_lines)
    assert all(events.get(key) == from_doc_number(value) for key, value in event_lines.items())
    snapshots = target.collection(FILES_COLLECTION)
    for path in (real_data_dir / "snapshots").glob("*.json.gz"):
        kept = snapshots.get(f"snapshots/{path.name}")
        assert base64.b64decode(kept["content"]) == path.read_bytes()
    assert report.version_after >= 449 and entities.current_version() == report.version_after
    assert {item["path"] for item in report.skipped} == {"indexes"}
    again = migrate(real_data_dir, target)
    assert again.changes == 0 and again.problems == [] and again.imported == {}
    assert again.version_after == report.version_after


def test_bad_entities_are_reported_and_not_imported(tmp_path: Path, target: Replica) -> None:
    old = tmp_path / "old"
    good = Task(id="T-good", title="g").to_dict()
    _write_entity(old / "entities", good)
    tampered = Task(id="T-tampered", title="t").to_dict()
    wrapper = _wrapper(tampered)
    wrapper["data"]["title"] = "changed after the checksum"
    _write_entity(old / "entities", tampered, wrapper)
    (old / "entities" / "T-broken.json").write_text("{ not json")
    _write_entity(old / "entities", {"id": "X-1", "entity_type": "spaceship"})
    (old / "entities" / "T-good.json.tmp").write_text("leftover")
    report = migrate(old, target)
    entities = entities_for(target)
    assert entities.ids() == ["T-good"]
    assert any("T-tampered.json" in p and "checksum mismatch" in p for p in report.problems)
    assert any("T-broken.json" in p and "unreadable" in p for p in report.problems)
    assert any("X-1.json" in p and "Unknown entity_type" in p for p in report.problems)
    leftover = {"path": "entities/T-good.json.tmp", "reason": "not an entity file (temporary or lock file)"}
    assert leftover in report.skipped


def test_history_and_version_rules(tmp_path: Path, target: Replica) -> None:
    old = tmp_path / "old"
    first = Task(id="T-1", title="v1", version=2).to_dict()
    second = dict(first, title="v2", version=3)
    current = dict(first, title="v3", version=4)
    _write_entity(old / "entities", current)
    history = old / "entities" / "_history"
    history.mkdir()
    (history / "T-1.jsonl").write_text(
        json.dumps({"global_version": 3, "timestamp": "t3", "data": first}) + "\n"
        + json.dumps({"global_version": 5, "timestamp": "t5", "data": second}) + "\n"
        + "{torn\n"
    )
    gone = Task(id="T-gone", title="deleted later").to_dict()
    (history / "T-gone.jsonl").write_text(json.dumps({"global_version": 6, "timestamp": "t6", "data": gone}) + "\n")
    (old / "entities" / "_version.json").write_text(json.dumps({"version": 42}))
    report = migrate(old, target)
    entities = entities_for(target)
    assert report.version_after == 42 and entities.current_version() == 42
    assert entities.read("T-1").title == "v3" and not entities.exists("T-gone")
    assert entities.read_at_version("T-1", 2) is None
    assert entities.read_at_version("T-1", 3).title == "v1"
    assert entities.read_at_version("T-1", 5).title == "v2"
    assert entities.read_at_version("T-1", 6).title == "v3"
    assert entities.read_at_version("T-gone", 6).title == "deleted later"
    assert any("T-1.jsonl line 3" in p for p in report.problems)
    assert report.imported["deleted_entities"] == 1
    assert migrate(old, target).changes == 0


@pytest.mark.parametrize(
    "stored,entities,expected",
    [("{\"version\": 42}", 0, 42), ("{\"version\": 50}", 2, 50), ("corrupt", 3, 3), (None, 2, 2)],
)
def test_the_self_healing_start_version(
    tmp_path: Path, target: Replica, stored: str, entities: int, expected: int
) -> None:
    old = tmp_path / "old"
    (old / "entities").mkdir(parents=True)
    for n in range(entities):
        _write_entity(old / "entities", Task(id=f"T-{n}", title=str(n)).to_dict())
    if stored is not None:
        (old / "entities" / "_version.json").write_text(stored)
    report = migrate(old, target)
    assert entities_for(target).current_version() == expected
    assert (stored == "corrupt") == any("_version.json" in p for p in report.problems)


def test_wal_lines_are_kept_and_bad_ones_reported(tmp_path: Path, target: Replica) -> None:
    old = tmp_path / "old"
    wal = WALManager(old / "wal")
    wal.log_tx_begin("TX-1", 0)
    wal.log_tx_commit("TX-1", 1)
    archived = wal.truncate(archive=True)
    wal.log_tx_begin("TX-2", 1)
    with open(wal.wal_file, "a") as handle:
        handle.write('{"seq": 9, "torn')
    report = migrate(old, target)
    kept = target.collection(WAL_COLLECTION)
    assert sorted(kept.ids()) == sorted([f"wal/archived/{archived.name}:1", f"wal/archived/{archived.name}:2",
                                         "wal/current.wal:1"])
    assert kept.get("wal/current.wal:1")["op"] == "TX_BEGIN"
    assert any("current.wal line 2" in p for p in report.problems)


def test_a_graph_wal_directory_becomes_the_replica_graph(tmp_path: Path, target: Replica) -> None:
    old = tmp_path / "old"
    graph_wal = GraphWAL(old)
    graph = ThoughtGraph()
    graph.add_node("q", NodeType.QUESTION, "Why?", {"p": 1}, {"m": "x"})
    graph.add_node("a", NodeType.FACT, "Because")
    graph.add_edge("q", "a", EdgeType.ANSWERS, weight=0.5, confidence=0.75)
    graph.add_cluster("c", "Cluster", {"q", "a"})
    graph_wal.create_snapshot(graph)
    graph_wal.log_add_node("h", NodeType.HYPOTHESIS, "Maybe")
    graph_wal.log_add_edge("h", "q", EdgeType.RAISES)
    graph_wal.log_update_node("q", {"content": "Why, really?"})
    report = migrate(old, target)
    assert report.problems == []
    live = ThoughtGraph(target)
    assert set(live.nodes) == {"q", "a", "h"}
    assert live.nodes["q"].content == "Why, really?" and live.nodes["q"].metadata == {"m": "x"}
    assert live.has_edge("h", "q", EdgeType.RAISES)
    edge = live.get_edges_from("q")[0]
    assert (edge.weight, edge.confidence) == (0.5, 0.75)
    assert live.clusters["c"].node_ids == {"q", "a"}
    assert report.imported["graph_wal_entries"] == 3
    assert migrate(old, target).changes == 0


def test_events_are_kept_one_record_per_line(tmp_path: Path, target: Replica) -> None:
    old = tmp_path / "old" / "events"
    old.mkdir(parents=True)
    events: List[Dict[str, object]] = [
        {"event": "node.create", "id": f"task:T-{n}", "data": {"n": n}} for n in range(3)
    ]
    (old / "sess-1.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n\nnot json\n[1]\n")
    report = migrate(tmp_path / "old", target)
    kept = target.collection(EVENTS_COLLECTION)
    assert sorted(kept.ids()) == ["sess-1:1", "sess-1:2", "sess-1:3"]
    assert kept.get("sess-1:2") == events[1]
    assert len([p for p in report.problems if "sess-1.jsonl" in p]) == 2


def test_unknown_entries_are_listed_and_a_missing_source_refused(tmp_path: Path, target: Replica) -> None:
    old = tmp_path / "old"
    (old / "mystery").mkdir(parents=True)
    (old / ".got.lock").write_text("")
    with gzip.open(old / "notes.gz", "wt") as handle:
        handle.write("x")
    report = migrate(old, target)
    reasons = {item["path"]: item["reason"] for item in report.skipped}
    assert reasons["mystery"] == reasons["notes.gz"] == "not part of the cortical.got layout"
    assert reasons[".got.lock"] == "lock or agentstate's own file"
    from compat.errors import NotFoundError

    with pytest.raises(NotFoundError):
        migrate(tmp_path / "absent", target)
