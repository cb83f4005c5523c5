"""Reconnect of an up-to-date peer costs under 1 KB of step 2; a real difference still syncs."""

from __future__ import annotations

from pycrdt import Map

from replica.replica import Replica
from replica.statevector import decode_state_vector
from transport.mesh import Mesh

from tests.transport.meshkit import converged, eventually, mesh, running, wait_converged

EDITED_TASKS = 600


def edited_board(replica: Replica) -> list[str]:
    """Tasks created then edited, so that the document carries a sizeable delete set."""
    with replica.transaction():
        ids = [replica.tasks.create(f"task {index}").id for index in range(EDITED_TASKS)]
    for task_id in ids:
        replica.tasks.update(task_id, status="in_progress")
    for task_id in ids[::2]:
        replica.tasks.update(task_id, priority="high")
    return ids


def opened(node: Mesh) -> bool:
    """True once the node's single connection has both sent and received a step 2."""
    conns = node.connections()
    return len(conns) == 1 and conns[0].synced_at is not None and conns[0].counters["step2_frames_out"] >= 1


def delete_only(replica: Replica, task_id: str) -> None:
    """Delete a task as a plain Yjs client would: no write record, so the update is a delete set only."""
    with replica.transaction():
        del replica.doc.get("tasks", type=Map)[task_id]


async def test_up_to_date_reconnect_sends_under_1kb_and_a_delete_only_difference_still_syncs() -> None:
    a, b = Replica.memory("a"), Replica.memory("b")
    ids = edited_board(a)
    node_a = mesh(a)
    async with running(node_a):
        async with running(mesh(b, listen=None, peers=[node_a.url])):
            await wait_converged(a, b)
        plain_diff = len(a.diff(b.state_vector()))
        assert plain_diff > 4 * 1024, "the delete set alone is what a plain reconnect resends"

        node_b = mesh(b, listen=None, peers=[node_a.url])
        async with running(node_b):
            await eventually(lambda: opened(node_a) and opened(node_b), what="reconnect handshake")
            sent_by_a = node_a.connections()[0].counters
            sent_by_b = node_b.connections()[0].counters
            assert sent_by_a["step2_bytes_out"] < 1024 and sent_by_b["step2_bytes_out"] < 1024
            assert sent_by_a["step2_empty"] == 1 and sent_by_b["step2_empty"] == 1
            assert converged(a, b)

        vector = decode_state_vector(a.state_vector())
        delete_only(a, ids[0])
        assert decode_state_vector(a.state_vector()) == vector, "a delete changes the delete set only"
        node_b = mesh(b, listen=None, peers=[node_a.url])
        async with running(node_b):
            await wait_converged(a, b)
            assert ids[0] not in b.tasks and ids[0] not in a.tasks
            assert node_a.connections()[0].counters["step2_empty"] == 0

        delete_only(b, ids[1])
        node_b = mesh(b, listen=None, peers=[node_a.url])
        async with running(node_b):
            await wait_converged(a, b)
            assert ids[1] not in a.tasks


async def test_digest_can_be_turned_off() -> None:
    a, b = Replica.memory("a"), Replica.memory("b")
    edited_board(a)
    node_a = mesh(a, use_digest=False)
    async with running(node_a):
        async with running(mesh(b, listen=None, peers=[node_a.url], use_digest=False)):
            await wait_converged(a, b)
        node_b = mesh(b, listen=None, peers=[node_a.url], use_digest=False)
        async with running(node_b):
            await eventually(lambda: opened(node_a) and opened(node_b), what="reconnect handshake")
            assert node_a.connections()[0].counters["step2_bytes_out"] > 4 * 1024
