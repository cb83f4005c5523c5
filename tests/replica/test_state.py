"""Typed state and its semantics: tasks, graph removal and traversal, the change feed, the sync surface."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from replica import AlreadyExistsError, ChangeEvent, NotFoundError, Replica

from .helpers import doc_roots, edge_keys, exchange, sync_all

# -- tasks -------------------------------------------------------------------------------


def test_task_crud_and_list_filters() -> None:
    """Create, get, update, delete and list with status, owner and tag filters."""
    r = Replica.memory(replica_id="r-me")
    a = r.tasks.create("alpha", id="a", owner="ann", tags=["x", "y"], priority="high",
                       properties={"estimate": 3, "big": 2**53 - 1, "nested": {"k": [1, 2.5, None]}})
    assert (a.title, a.owner, a.priority.value, set(a.tags), a.created_by) == ("alpha", "ann", "high", {"x", "y"}, "r-me")
    assert a.properties == {"estimate": 3, "big": 2**53 - 1, "nested": {"k": [1, 2.5, None]}}
    assert isinstance(a.properties["estimate"], int)
    r.tasks.create("beta", id="b", owner="bob", tags=["y"], depends_on=["a"])
    r.tasks.create("gamma", id="c", status="blocked")
    with pytest.raises(AlreadyExistsError):
        r.tasks.create("dup", id="a")
    r.tasks.update("a", status="completed", tags=["z"], remove_properties=["estimate"])
    got = r.tasks.get("a")
    assert got.status.value == "completed" and got.tags == ("z",) and "estimate" not in got.properties
    assert got.updated_at >= got.created_at
    assert [t.id for t in r.tasks.list()] == ["a", "b", "c"]
    assert [t.id for t in r.tasks.list(status="blocked")] == ["c"]
    assert [t.id for t in r.tasks.list(owner="bob")] == ["b"]
    assert [t.id for t in r.tasks.list(tag="y")] == ["b"]
    assert r.tasks.get("b").depends_on == ("a",)
    r.tasks.delete("b")
    assert r.tasks.find("b") is None
    with pytest.raises(NotFoundError):
        r.tasks.delete("b")
    before = r.last_lsn
    with pytest.raises(NotFoundError):
        r.tasks.update("b", title="gone")
    assert r.last_lsn == before and r.tasks.find("b") is None
    generated = r.tasks.create("no id given")
    assert generated.id.startswith("T-") and r.tasks.get(generated.id).title == "no id given"


def test_delete_wins_over_a_concurrent_field_edit() -> None:
    """A task deleted on one replica stays deleted although another edited it concurrently."""
    a, b = Replica.memory(), Replica.memory()
    a.tasks.create("x", id="t1")
    exchange(a, b)
    a.tasks.delete("t1")
    b.tasks.update("t1", title="edited meanwhile", add_tags=["late"])
    exchange(a, b)
    assert a.tasks.find("t1") is None and b.tasks.find("t1") is None
    assert a.invalid_records() == b.invalid_records() == []


def test_concurrent_tag_adds_all_survive() -> None:
    """Tags are a set of keys: concurrent adds from three replicas all survive, a remove removes one."""
    reps = [Replica.memory() for _ in range(3)]
    reps[0].tasks.create("x", id="t1", tags=["base"])
    sync_all(reps)
    for i, r in enumerate(reps):
        r.tasks.update("t1", add_tags=[f"tag{i}"])
    reps[1].tasks.update("t1", remove_tags=["base"])
    sync_all(reps)
    assert {tuple(r.tasks.get("t1").tags) for r in reps} == {("tag0", "tag1", "tag2")}


# -- graph ------------------------------------------------------------------------------


def test_remove_node_removes_its_edges_locally() -> None:
    """Removing a node removes every edge touching it and reports how many."""
    r = Replica.memory()
    for n in ("a", "b", "c"):
        r.graph.add_node(n, "idea")
    r.graph.add_edge("a", "b", "rel")
    r.graph.add_edge("c", "a", "dep", weight=0.5)
    r.graph.add_edge("b", "c", "rel")
    assert r.graph.remove_node("a") == 2
    assert edge_keys(r) == ["b|rel|c"]
    assert r.graph.dangling_edges() == []


def test_edge_added_concurrently_to_a_removed_node_disappears_on_both_replicas() -> None:
    """One replica removes a node while another adds an edge to it: after sync the edge is gone everywhere."""
    a, b = Replica.memory(), Replica.memory()
    a.graph.add_node("x", "idea")
    a.graph.add_node("y", "idea")
    exchange(a, b)
    a.graph.remove_node("y")
    b.graph.add_edge("x", "y", "rel")
    b.graph.add_edge("y", "x", "rel")
    assert len(b.graph.edges()) == 2
    sync_all([a, b])
    for r in (a, b):
        assert not r.graph.has_node("y")
        assert r.graph.edges() == [] and r.graph.dangling_edges() == []
    assert doc_roots(a.doc) == doc_roots(b.doc)


def test_edge_removal_verdict_reaches_a_third_replica_in_any_order() -> None:
    """A third replica receiving the removal and the concurrent edge in either order ends without the edge."""
    for removal_first in (True, False):
        a, b, c = Replica.memory(), Replica.memory(), Replica.memory()
        a.graph.add_node("x", "idea")
        a.graph.add_node("y", "idea")
        sync_all([a, b, c])
        sv = c.state_vector()
        a.graph.remove_node("y")
        b.graph.add_edge("x", "y", "rel")
        removal, edge = a.diff(sv), b.diff(sv)
        for update in ((removal, edge) if removal_first else (edge, removal)):
            c.apply_update(update, origin="peer")
        assert c.graph.edges() == [] and c.graph.dangling_edges() == []
        sync_all([a, b, c])
        assert all(r.graph.edges() == [] for r in (a, b, c))


def test_edge_arriving_before_its_node_is_kept_as_dangling() -> None:
    """An edge whose end has not arrived yet is kept (reported as dangling), and becomes whole when it does."""
    a, b, c = Replica.memory(), Replica.memory(), Replica.memory()
    a.graph.add_node("x", "idea")
    a.graph.add_node("y", "idea")
    exchange(a, b)
    b.graph.add_edge("x", "y", "rel")
    c.apply_update(b.diff(a.state_vector()), origin="b")  # b's edge alone, without a's nodes
    assert not c.graph.has_node("y")
    assert c.graph.edges() == []
    assert [e.key for e in c.graph.dangling_edges()] == ["x|rel|y"]
    assert c.graph.sweep(full=True) == 0, "a node that was never removed keeps its edges"
    c.apply_update(a.diff(c.state_vector()), origin="a")
    assert edge_keys(c) == ["x|rel|y"] and c.graph.dangling_edges() == []


def test_readding_a_removed_node_clears_its_tombstone() -> None:
    """A node removed and added again keeps edges added after its return, here and on peers."""
    a, b = Replica.memory(), Replica.memory()
    a.graph.add_node("x", "idea")
    a.graph.add_node("y", "idea")
    a.graph.remove_node("y")
    a.graph.add_node("y", "fact")
    a.graph.add_edge("x", "y", "rel")
    exchange(a, b)
    assert edge_keys(a) == edge_keys(b) == ["x|rel|y"]
    assert b.graph.get_node("y").type == "fact"


def test_traversal_is_bounded_by_depth_and_node_count() -> None:
    """traverse stops at max_depth and at max_nodes; neighbours are one hop away; cycles do not loop."""
    r = Replica.memory()
    with r.transaction():
        for i in range(40):
            r.graph.add_node(f"n{i:02d}", "idea")
        for i in range(39):
            r.graph.add_edge(f"n{i:02d}", f"n{i + 1:02d}", "next")
            r.graph.add_edge(f"n{i:02d}", f"n{(i * 7) % 40:02d}", "jump")
        r.graph.add_edge("n39", "n00", "next")
    walk = r.graph.traverse("n00", max_depth=2, edge_types=["next"])
    assert [(n.id, d) for n, d in walk] == [("n00", 0), ("n01", 1), ("n02", 2)]
    assert all(d <= 3 for _, d in r.graph.traverse("n00", max_depth=3))
    limited = r.graph.traverse("n00", max_depth=100, max_nodes=5)
    assert len(limited) == 5 and limited[0][0].id == "n00"
    whole = r.graph.traverse("n00", max_depth=100, max_nodes=1000, edge_types=["next"])
    assert len(whole) == 40 and len({n.id for n, _ in whole}) == 40
    assert [n.id for n in r.graph.neighbours("n05", edge_type="next")] == ["n06"]
    assert [n.id for n in r.graph.neighbours("n05", direction="in", edge_type="next")] == ["n04"]
    assert [n.id for n, _ in r.graph.traverse("n00", max_depth=0)] == ["n00"]
    with pytest.raises(NotFoundError):
        r.graph.traverse("missing")


# -- change feed --------------------------------------------------------------------------


def test_change_callbacks_carry_origin_and_old_and_new_values() -> None:
    """Callbacks see local and remote changes with what changed, old and new value, and the peer."""
    a, b = Replica.memory(), Replica.memory()
    events: list[ChangeEvent] = []
    unsubscribe = a.subscribe(events.append)
    a.tasks.create("x", id="t1")
    a.tasks.update("t1", status="in_progress", properties={"k": 5})
    a.counters.incr("c", 5)
    a.graph.add_node("n1", "idea")
    b.counters.incr("c", 2)
    b.tasks.create("remote", id="t2")
    a.apply_update(b.diff(a.state_vector()), origin="peer-b")

    def find(kind: str, ident: str, field: str | None, origin: str) -> ChangeEvent:
        return next(e for e in events if (e.kind, e.id, e.field, e.origin) == (kind, ident, field, origin))

    added = find("task", "t1", None, "local")
    assert added.action == "add" and added.new["title"] == "x" and added.peer is None
    status = find("task", "t1", "status", "local")
    assert (status.action, status.old, status.new) == ("update", "pending", "in_progress")
    prop = find("task", "t1", "properties.k", "local")
    assert prop.new == 5 and isinstance(prop.new, int)
    counter = find("counter", "c", None, "local")
    assert (counter.old, counter.new) == (0, 5)
    assert find("node", "n1", None, "local").action == "add"
    remote_counter = find("counter", "c", None, "remote")
    assert (remote_counter.old, remote_counter.new, remote_counter.peer) == (5, 7, "peer-b")
    remote_task = find("task", "t2", None, "remote")
    assert remote_task.new["title"] == "remote" and remote_task.peer == "peer-b"

    unsubscribe()
    count = len(events)
    a.tasks.delete("t1")
    assert len(events) == count


def test_failing_callback_does_not_break_writes_or_other_subscribers() -> None:
    """A callback that raises is logged; the write stands and other subscribers still get the event."""
    r = Replica.memory()
    seen: list[ChangeEvent] = []

    def broken(event: ChangeEvent) -> None:
        raise RuntimeError("subscriber bug")

    r.subscribe(broken)
    r.subscribe(seen.append)
    r.tasks.create("x", id="t1")
    assert r.tasks.get("t1").title == "x"
    assert any(e.id == "t1" for e in seen)


async def test_async_change_iterator_yields_local_and_remote_changes(tmp_path: Path) -> None:
    """`async for ev in r.changes()` yields changes as they happen and ends when the replica closes."""
    r = Replica.open(tmp_path)
    peer = Replica.memory()
    got: list[ChangeEvent] = []
    started = asyncio.Event()

    async def consume() -> None:
        iterator = r.changes()
        first = asyncio.ensure_future(iterator.__anext__())
        started.set()
        got.append(await first)
        async for event in iterator:
            got.append(event)

    consumer = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), timeout=5)
    await asyncio.sleep(0)  # let the iterator register its queue
    deadline = asyncio.get_running_loop().time() + 5
    while not r._feed.active and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.001)
    r.tasks.create("local", id="t1")
    r.tasks.update("t1", status="blocked")
    peer.counters.incr("c", 3)
    r.apply_update(peer.diff(None), origin="peer")
    while len(got) < 3 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.005)
    r.close()
    await asyncio.wait_for(consumer, timeout=5)
    assert ("task", "t1", None, "local") in [(e.kind, e.id, e.field, e.origin) for e in got]
    assert any(e.field == "status" and e.old == "pending" and e.new == "blocked" for e in got)
    assert any(e.kind == "counter" and e.origin == "remote" and e.new == 3 and e.peer == "peer" for e in got)


# -- sync surface ----------------------------------------------------------------------


def test_apply_update_reports_whether_anything_changed_and_listeners_get_local_updates() -> None:
    """apply_update returns True only when state changed; on_update sees local updates with origin None."""
    a, b = Replica.memory(), Replica.memory()
    local: list[tuple[bytes, str | None]] = []
    unsubscribe = b.on_update(lambda update, origin: local.append((update, origin)))
    a.tasks.create("x", id="t1")
    update = a.diff(b.state_vector())
    assert b.apply_update(update, origin="a") is True
    assert b.apply_update(update, origin="a") is False, "a duplicate changes nothing"
    assert local[-1][1] == "a"
    b.tasks.update("t1", title="y")
    assert local[-1][1] is None
    fresh = Replica.memory()
    fresh.apply_update(local[-1][0], origin="b")  # pending until it has the base
    fresh.apply_update(a.diff(None), origin="a")
    assert fresh.tasks.get("t1").title == "y"
    unsubscribe()
    n = len(local)
    b.tasks.update("t1", title="z")
    assert len(local) == n


@pytest.mark.parametrize("threshold", [10**12, 0], ids=["small-update path", "large-update path"])
def test_large_updates_change_log_and_notify_exactly_as_small_ones(
        tmp_path: Path, threshold: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both apply paths agree on "changed" (new structs, new deletes only, duplicates) and log what changed."""
    import replica.replica as replica_module

    monkeypatch.setattr(replica_module, "LARGE_UPDATE_BYTES", threshold)
    a = Replica.memory()
    with a.transaction():
        for n in range(20):
            a.tasks.create(f"task {n}", id=f"t{n}")
    created = a.diff(None)
    b = Replica.open(tmp_path / "b")
    relayed: list[tuple[bytes, str | None]] = []
    b.on_update(lambda update, origin: relayed.append((update, origin)))
    changes: list[ChangeEvent] = []
    b.subscribe(changes.append)
    assert b.apply_update(created, origin="a") is True
    assert relayed == [(created, "a")] and {c.id for c in changes} == {f"t{n}" for n in range(20)}
    assert b.apply_update(created, origin="a") is False, "a duplicate changes nothing"
    before = a.state_vector()
    a.tasks.delete("t3")
    deletion = a.diff(before)
    a.tasks.update("t4", status="completed")
    both = a.diff(before)
    assert b.apply_update(a.diff(b.state_vector()), origin="a") is True, "new structs and deletes"
    assert b.apply_update(both, origin="a") is False, "already integrated"
    c = Replica.memory()
    c.apply_update(created, origin="a")
    c.apply_update(b.diff(c.state_vector()), origin="b")
    assert c.apply_update(deletion, origin="a") is False, "its deletes are known already"
    d = Replica.memory()
    d.apply_update(created, origin="a")
    d.apply_update(a.diff(d.state_vector()), origin="a")
    assert d.tasks.get("t4").status == "completed"
    e = Replica.memory()
    e.apply_update(created, origin="a")
    assert e.apply_update(deletion, origin="a") is True, "a delete-only update that deletes something"
    assert [t.id for t in e.tasks.list() if t.id == "t3"] == []
    logged = len(relayed)
    b.close()
    with Replica.open(tmp_path / "b") as reopened:
        assert doc_roots(reopened.doc) == doc_roots(a.doc)
    assert logged == 2


def test_diff_against_a_state_vector_carries_exactly_what_is_missing(tmp_path: Path) -> None:
    """A disk replica and a memory replica converge through diff/state_vector both ways, also after reopen."""
    peer = Replica.memory()
    with Replica.open(tmp_path) as r:
        r.tasks.create("disk", id="d1")
        peer.tasks.create("mem", id="m1")
        exchange(r, peer)
        assert doc_roots(r.doc) == doc_roots(peer.doc)
    with Replica.open(tmp_path) as r:
        assert {t.id for t in r.tasks.list()} == {"d1", "m1"}
        assert r.apply_update(r.diff(peer.state_vector()), origin="self") is False
