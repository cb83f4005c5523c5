"""compat.versioned_store: the old store's behaviours; entities, versions and history in the replica (sheet §5)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

import compat
from compat.checksums import compute_checksum
from compat.config import DurabilityMode
from compat.errors import CorruptionError, ValidationError
from compat.sharing import find_open
from compat.types import Decision, Edge, Entity, Epic, Handoff, Sprint, Task
from compat.versioned_store import GenericEntity, VersionedStore, default_replica_dir
from replica import Replica

from .conftest import Child
from .helpers import peer_write, raw_junk


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VersionedStore]:
    with VersionedStore(tmp_path / "store") as opened:
        yield opened


def test_creates_the_store_and_history_directories(tmp_path: Path) -> None:
    with VersionedStore(tmp_path / "a" / "b", DurabilityMode.RELAXED, validate_on_save=False) as store:
        assert store.store_dir == tmp_path / "a" / "b" and store.store_dir.is_dir()
        assert store.history_dir == store.store_dir / "_history" and store.history_dir.is_dir()
        assert store.durability is DurabilityMode.RELAXED and store.validate_on_save is False
        assert compat.VersionedStore is VersionedStore


def test_an_empty_store(store: VersionedStore) -> None:
    assert store.current_version() == 0
    assert store.read("T-none") is None and store.exists("T-none") is False
    assert store.read_at_version("T-none", 5) is None


@pytest.mark.parametrize(
    "entity",
    [
        Task(id="T-1", title="t", status="in_progress", priority="high", properties={"k": [1, 2]}),
        Decision(id="D-1", title="d", rationale="because", affects=["T-1"]),
        Edge(id="", source_id="T-1", target_id="T-2", edge_type="DEPENDS_ON", weight=0.5),
        Sprint(id="S-1", title="s", number=3, goals=[{"g": 1}]),
        Epic(id="EP-1", title="e", phase=2),
        Handoff(id="H-1", source_agent="a", target_agent="b", context={"x": 1}),
    ],
    ids=lambda e: type(e).__name__,
)
def test_reads_return_the_right_class_with_every_field(store: VersionedStore, entity: Entity) -> None:
    store.write(entity)
    found = store.read(entity.id)
    assert type(found) is type(entity)
    assert found is not None and found.to_dict() == entity.to_dict()
    assert found.compute_checksum() == entity.compute_checksum()


def test_the_wrapper_checksum_is_the_checksum_of_the_data(store: VersionedStore) -> None:
    edge = Edge(id="", source_id="a", target_id="b", edge_type="BLOCKS")
    store.write(edge)
    wrapper = store._read_and_verify(edge.id)
    assert set(wrapper) == {"_checksum", "_written_at", "data"}
    assert wrapper["_checksum"] == compute_checksum(wrapper["data"]) == edge.compute_checksum()
    assert isinstance(wrapper["data"]["weight"], float), "integral floats come back as floats"
    assert store._read_and_verify(f"{edge.id}.json") == wrapper


def test_stored_version_is_the_written_version_plus_one(store: VersionedStore) -> None:
    task = Task(id="T-1", title="a")
    before = task.modified_at
    store.write(task)
    assert task.version == 2 and task.modified_at != before, "the caller's object is bumped"
    assert store.read("T-1").version == 2
    store.write(Task(id="T-1", title="fresh object"))
    assert store.read("T-1").version == 2, "versions are copied, not tracked"
    store.write(task)
    assert store.read("T-1").version == 3


def test_versions_and_reads_at_earlier_versions(store: VersionedStore) -> None:
    task = Task(id="T-1", title="v1")
    store.write(task)
    assert store.current_version() == 1
    task.title = "v2"
    store.write(task)
    assert store.current_version() == 2
    task.title = "v3"
    store.write(task)
    assert store.current_version() == 3
    assert store.read_at_version("T-1", 0) is None
    assert store.read_at_version("T-1", 1).title == "v1"
    assert store.read_at_version("T-1", 2).title == "v2"
    assert store.read_at_version("T-1", 3).title == "v3"
    assert store.read_at_version("T-1", 99).title == "v3"


def test_a_never_modified_entity_is_visible_at_any_version_from_one(store: VersionedStore) -> None:
    store.write(Task(id="T-a", title="a"))
    store.write(Task(id="T-b", title="b"))
    store.write(Task(id="T-c", title="c"))
    assert store.read_at_version("T-c", 1).title == "c", "the old quirk: no history, so always there"
    assert store.read_at_version("T-c", 0) is None


def test_a_modified_entity_is_absent_before_its_first_write(store: VersionedStore) -> None:
    store.write(Task(id="T-a", title="a"))
    task = Task(id="T-b", title="b1")
    store.write(task)
    task.title = "b2"
    store.write(task)
    assert store.read_at_version("T-b", 1) is None
    assert store.read_at_version("T-b", 2).title == "b1"


def test_a_batch_adds_exactly_one_version(store: VersionedStore) -> None:
    assert store.apply_writes({f"T-{i}": Task(id=f"T-{i}", title=str(i)) for i in range(3)}) == 1
    assert all(store.exists(f"T-{i}") for i in range(3))
    store.write(Task(id="T-x", title="x"))
    assert store.apply_writes({"D-1": Decision(id="D-1", title="d")}) == 3
    assert store.apply_writes({}) == 4, "an empty batch still uses up a version"


def test_a_failing_batch_leaves_none_of_its_entities(store: VersionedStore) -> None:
    good = Task(id="T-good", title="g")
    unstorable = Task(id="T-bad", title="b", properties={"when": {1, 2}})
    with pytest.raises(ValidationError):
        store.apply_writes({good.id: good, unstorable.id: unstorable})
    bad_id = Task(id="bad|id", title="x")
    with pytest.raises(ValidationError):
        store.apply_writes({good.id: good, bad_id.id: bad_id})
    assert not store.exists("T-good") and not store.exists("T-bad")
    assert store.current_version() == 0 and good.version == 1, "nothing was bumped either"


def test_schema_validation_fails_before_anything_is_written(store: VersionedStore) -> None:
    task = Task(id="T-1", title="t")
    task.status = "bogus"
    with pytest.raises(ValidationError) as caught:
        store.write(task)
    assert caught.value.context["entity_type"] == "task"
    assert any("status" in error for error in caught.value.context["errors"])
    edge = Edge(id="", source_id="a", target_id="b", edge_type="BLOCKS")
    edge.weight = 3.0
    with pytest.raises(ValidationError):
        store.write(edge)
    assert store.current_version() == 0 and not store.exists("T-1")


def test_without_validation_bad_data_is_stored_and_refused_on_read(tmp_path: Path) -> None:
    with VersionedStore(tmp_path / "s", validate_on_save=False) as store:
        task = Task(id="T-1", title="t")
        task.priority = "urgent"
        store.write(task)
        with pytest.raises(CorruptionError):
            store.read("T-1")


def test_a_tampered_record_raises_corruption(store: VersionedStore) -> None:
    store.write(Task(id="T-1", title="honest"))
    raw = store.entities.raw("T-1")
    tampered = {k: v for k, v in raw.items() if k != "_got"}
    tampered["title"] = "forged"
    peer_write(store.replica, "T-1", tampered, checksum=raw["_got"]["checksum"])
    with pytest.raises(CorruptionError) as caught:
        store.read("T-1")
    assert "Checksum mismatch" in str(caught.value)
    assert set(caught.value.context) >= {"expected", "actual", "path"}
    assert caught.value.context["expected"] == raw["_got"]["checksum"]


def test_junk_from_a_peer_raises_corruption_on_read(store: VersionedStore) -> None:
    peer = Replica.memory()
    peer_write(peer, "T-junk", {"id": "T-junk", "entity_type": "task", "status": 5}, checksum="0000")
    store.replica.apply_update(peer.diff())
    with pytest.raises(CorruptionError):
        store.read("T-junk")
    raw_junk(store.replica, "T-str", "not a record")
    with pytest.raises(CorruptionError):
        store.read("T-str")


def test_missing_empty_and_unknown_entity_types(store: VersionedStore) -> None:
    peer_write(store.replica, "X-1", {"id": "X-1", "version": 1})
    peer_write(store.replica, "X-2", {"id": "X-2", "entity_type": ""})
    peer_write(store.replica, "X-3", {"id": "X-3", "entity_type": "spaceship"})
    for entity_id in ("X-1", "X-2"):
        with pytest.raises(ValueError, match="Missing entity_type") as caught:
            store.read(entity_id)
        assert entity_id in str(caught.value)
    with pytest.raises(ValueError, match="Unknown entity_type") as unknown:
        store.read("X-3")
    assert "spaceship" in str(unknown.value) and "X-3" in str(unknown.value)


def test_types_without_a_class_keep_every_field(store: VersionedStore) -> None:
    data = {"id": "L-1", "entity_type": "claudemd_layer", "version": 3, "created_at": "c", "modified_at": "m",
            "layer": "core", "rules": ["a", "b"], "weights": {"x": 0.5}}
    peer_write(store.replica, "L-1", data)
    found = store.read("L-1")
    assert isinstance(found, GenericEntity) and found.to_dict() == data
    store.write(found)
    again = store.read("L-1")
    assert again.version == 4 and again.to_dict()["rules"] == ["a", "b"]


def test_delete(store: VersionedStore) -> None:
    store.write(Task(id="T-1", title="t"))
    assert store.delete("T-1") is True
    assert store.delete("T-1") is False
    assert store.current_version() == 2 and store.read("T-1") is None and not store.exists("T-1")
    assert store.read_at_version("T-1", 1).title == "t"
    assert store.read_at_version("T-1", 2) is None


def test_history_lines(store: VersionedStore) -> None:
    task = Task(id="T-1", title="0")
    store.write(task)
    assert store.history("T-1") == []
    for n in range(1, 4):
        task.title = str(n)
        store.write(task)
    lines = store.history("T-1")
    assert [line["data"]["title"] for line in lines] == ["0", "1", "2"], "the state before each overwrite"
    assert [line["global_version"] for line in lines] == [1, 2, 3]
    assert all(set(line) == {"global_version", "timestamp", "data"} for line in lines)
    store.delete("T-1")
    assert [line["data"]["title"] for line in store.history("T-1")] == ["0", "1", "2", "3"]


@pytest.mark.parametrize("mode", [DurabilityMode.PARANOID, DurabilityMode.BALANCED])
def test_writes_are_on_disk_when_they_return(tmp_path: Path, mode: DurabilityMode) -> None:
    with VersionedStore(tmp_path / "s", mode) as store:
        for n in range(3):
            store.write(Task(id=f"T-{n}", title="x"))
            assert store.replica.durable_lsn >= store.replica.last_lsn


def test_relaxed_writes_never_wait_for_the_disk(tmp_path: Path) -> None:
    with VersionedStore(tmp_path / "s", DurabilityMode.LAZY) as store:
        start = store.replica.durable_lsn
        for n in range(3):
            store.write(Task(id=f"T-{n}", title="x"))
        assert store.replica.durable_lsn == start < store.replica.last_lsn
        store.fsync_all()
        assert store.replica.durable_lsn == store.replica.last_lsn


def test_stores_on_one_directory_share_one_replica(tmp_path: Path) -> None:
    first = VersionedStore(tmp_path / "s")
    second = VersionedStore(tmp_path / "s", DurabilityMode.RELAXED)
    assert first.replica is second.replica
    first.write(Task(id="T-1", title="seen by both"))
    assert second.read("T-1").title == "seen by both"
    first.close()
    second.write(Task(id="T-2", title="still open"))
    second.close()
    assert find_open(tmp_path / "s") is None
    with Replica.open(tmp_path / "s") as reopened:
        assert set(reopened.collection("got_entities").ids()) == {"T-1", "T-2"}


def test_the_replica_of_an_entities_directory_is_its_got_directory(tmp_path: Path) -> None:
    assert default_replica_dir(tmp_path / "got" / "entities") == tmp_path / "got"
    assert default_replica_dir(tmp_path / "store") == tmp_path / "store"
    with VersionedStore(tmp_path / "got" / "entities") as store:
        store.write(Task(id="T-1", title="t"))
        assert (tmp_path / "got" / "replica.json").is_file()
        assert not (tmp_path / "got" / "entities" / "replica.json").exists()


_SHARER = """
import sys
from compat.types import Task
from compat.versioned_store import VersionedStore
store = VersionedStore(sys.argv[1])
store.write(Task(id="T-child", title="from the child"))
print("ready", flush=True)
sys.stdin.readline()
print(store.read("T-parent").title, store.current_version(), flush=True)
store.close()
print("closed", flush=True)
"""


def test_another_process_shares_the_directory(tmp_path: Path, spawn: Callable[..., Child]) -> None:
    child = spawn(_SHARER, str(tmp_path / "s"))
    child.expect("ready")
    with VersionedStore(tmp_path / "s") as store:
        assert store.read("T-child").title == "from the child"
        assert store.current_version() == 1
        store.write(Task(id="T-parent", title="from the parent"))
        child.send("")
        child.expect("from the parent 2")
        child.expect("closed")
        assert child.finish() == 0
        assert store.current_version() == 2


def test_a_stronger_opener_on_a_lazy_replica_still_gets_durable_writes(tmp_path: Path) -> None:
    with VersionedStore(tmp_path / "s", DurabilityMode.RELAXED) as lazy:
        lazy.write(Task(id="T-lazy", title="x"))
        assert lazy.replica.durable_lsn < lazy.replica.last_lsn
        with VersionedStore(tmp_path / "s", DurabilityMode.PARANOID) as strict:
            assert strict.replica is lazy.replica
            strict.write(Task(id="T-strict", title="y"))
            assert strict.replica.durable_lsn == strict.replica.last_lsn
