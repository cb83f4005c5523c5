"""Real `agentstate serve` processes on loopback: topologies, a node that wrote offline, a SIGKILL mid-sync.

Every write goes through the installed CLI (and so through the node's daemon while one
holds the directory); every read is `agentstate task list --json` or `agentstate export -`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from replica import Replica

from tests.cluster.clusterkit import Cluster, Node, Writer, parallel

TOPOLOGIES: dict[str, tuple[int, list[tuple[int, int]]]] = {
    "line": (4, [(1, 0), (2, 1), (3, 2)]),
    "star": (5, [(1, 0), (2, 0), (3, 0), (4, 0)]),
    # every node dials every other: each pair must end up with exactly one connection
    "full": (4, [(a, b) for a in range(4) for b in range(4) if a != b]),
}

pytestmark = pytest.mark.slow

MakeCluster = Callable[[int, list[tuple[int, int]]], Cluster]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[MakeCluster]:
    """Build clusters under tmp_path; every process still running is stopped afterwards."""
    clusters: list[Cluster] = []

    def make(count: int, edges: list[tuple[int, int]]) -> Cluster:
        root = tmp_path / f"c{len(clusters)}"
        root.mkdir()
        cluster = Cluster(root, count, edges)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


def neighbours(cluster: Cluster, edges: list[tuple[int, int]]) -> dict[str, set[str]]:
    """Replica ids each node should be connected to."""
    expected: dict[str, set[str]] = {node.name: set() for node in cluster.nodes}
    for a, b in edges:
        expected[cluster.nodes[a].name].add(cluster.nodes[b].name)
        expected[cluster.nodes[b].name].add(cluster.nodes[a].name)
    return expected


def connections(node: Node) -> list[str]:
    """Replica ids of the node's live mesh connections, from `agentstate status --json`."""
    run = node.cli("status", "--json")
    assert run.code == 0, run.err
    return sorted(peer["replica_id"] for peer in run.json()["mesh"]["peers"] if peer.get("connected"))


def add_task(node: Node, task_id: str, *extra: str) -> None:
    """`agentstate task add` on the node; the command must succeed."""
    run = node.cli("task", "add", f"{task_id} written on {node.name}", "--id", task_id, *extra, "--json")
    assert run.code == 0, f"{node.name}: {run.err}"
    assert run.json()["id"] == task_id


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_writes_anywhere_reach_everyone(make_cluster: MakeCluster, topology: str) -> None:
    count, edges = TOPOLOGIES[topology]
    cluster = make_cluster(count, edges)
    cluster.start()
    nodes = cluster.nodes

    parallel(lambda node: add_task(node, f"T-{node.name}"), nodes)
    first_wave = {f"T-{node.name}" for node in nodes}
    cluster.wait_tasks(first_wave)

    # a second wave from the two ends: a field update and counter increments
    ends = (nodes[0], nodes[-1])
    assert ends[0].cli("task", "update", f"T-{ends[1].name}", "--status", "completed").code == 0
    for node in ends:
        assert node.cli("counter", "incr", "deploys", "--by", "2").code == 0
    _, _, tasks, counters, _ = cluster.wait_converged()
    assert set(tasks) == first_wave
    assert tasks[f"T-{ends[1].name}"]["status"] == "completed"
    assert sum(slot["p"] for slot in counters.values()) == 4

    expected = neighbours(cluster, edges)

    def links() -> str | None:
        seen = dict(zip((node.name for node in nodes), parallel(connections, nodes)))
        wrong = {name: ids for name, ids in seen.items() if ids != sorted(expected[name])}
        return None if not wrong else f"connected {wrong}, expected {expected}"

    cluster.wait_until(links, timeout=15, what="one connection per linked pair")


def test_stopped_node_that_wrote_offline_rejoins(make_cluster: MakeCluster) -> None:
    # a line n0 - n1 - n2; n1 (which dials both ends) is stopped, which also partitions n0 from n2
    cluster = make_cluster(3, [(1, 0), (1, 2)])
    cluster.start()
    n0, n1, n2 = cluster.nodes
    add_task(n0, "T-shared")
    cluster.wait_tasks({"T-shared"})

    assert n1.stop(signal.SIGTERM) == 0
    assert not (n1.data / "daemon.json").exists(), "the CLI must now write the directory itself"
    add_task(n1, "T-offline-1")
    add_task(n1, "T-offline-2", "--tag", "offline")
    assert n1.cli("task", "update", "T-shared", "--status", "in_progress").code == 0
    assert n1.cli("counter", "incr", "builds", "--by", "5").code == 0

    # meanwhile, on both sides of the partition
    add_task(n0, "T-n0-during")
    add_task(n2, "T-n2-during")
    assert n2.cli("task", "update", "T-shared", "--owner", "agent-2").code == 0
    assert n2.cli("counter", "incr", "builds", "--by", "1").code == 0
    assert "T-n0-during" not in n2.task_ids(), "n0 and n2 have no path while n1 is down"

    n1.start()
    every = {"T-shared", "T-offline-1", "T-offline-2", "T-n0-during", "T-n2-during"}
    cluster.wait_tasks(every)
    _, _, tasks, counters, _ = cluster.wait_converged()
    assert set(tasks) == every
    assert (tasks["T-shared"]["status"], tasks["T-shared"]["owner"]) == ("in_progress", "agent-2")
    assert tasks["T-offline-2"]["tags"] == {"offline": True}
    assert sum(slot["p"] - slot["n"] for slot in counters.values()) == 6


BULK = 10_000
"""Graph nodes imported on n0 just before n1 is killed (about 3 MB: n1 is still receiving it)."""


def bulk_update(path: Path, count: int) -> Path:
    """A Yjs update file with `count` graph nodes (one transaction), for `agentstate import`."""
    source = Replica.memory("bulk")
    with source.transaction():
        for index in range(count):
            source.graph.add_node(f"bulk-{index:05d}", "note", content=f"bulk note {index} " + "x" * 64)
    path.write_bytes(source.diff())
    source.close()
    return path


def test_node_killed_mid_sync_loses_nothing_acknowledged(make_cluster: MakeCluster, tmp_path: Path) -> None:
    # n1 dials n0 and n2, n0 dials n2: a triangle; n1 is the node killed
    cluster = make_cluster(3, [(1, 0), (1, 2), (0, 2)])
    cluster.start()
    n0, n1, n2 = cluster.nodes
    own = ["T-n1-a", "T-n1-b"]
    for task_id in own:
        add_task(n1, task_id)  # acknowledged by n1's daemon, then n1 dies

    writer = Writer([n0, n2], "stream")
    writer.start()
    try:
        writer.wait_acked(3)
        bulk = bulk_update(tmp_path / "bulk.yupdate", BULK)
        assert n0.cli("import", str(bulk)).code == 0
        assert n1.stop(signal.SIGKILL) == -signal.SIGKILL  # while n0 relays the import and the stream
        writer.wait_acked(len(writer.acked) + 2)

        n1.start()  # dials both peers at once and catches up the import and the stream ...
        n1.wait_log("event=connected")
        assert n1.stop(signal.SIGKILL) == -signal.SIGKILL  # ... and dies in the middle of it
        writer.wait_acked(len(writer.acked) + 2)
        n1.start()
        writer.wait_acked(len(writer.acked) + 2)
    finally:
        writer.stop()

    acknowledged = set(writer.acked) | set(own)
    assert not writer.failed, writer.failed
    cluster.wait_tasks(acknowledged)
    _, _, tasks, _, graph_nodes = cluster.wait_converged()
    assert acknowledged <= set(tasks)
    assert graph_nodes == BULK


def test_serve_relays_what_other_local_processes_write(make_cluster: MakeCluster) -> None:
    """`serve` is one more process on its directory: a script's writes (no daemon involved) reach the peer,
    and the peer's writes reach the script's next read."""
    cluster = make_cluster(2, [(1, 0)])
    cluster.start()
    here, there = cluster.nodes
    with Replica.open(here.data) as script:
        script.tasks.create("written by a script beside serve", id="T-script")
        script.counters.incr("scripts", 3)
        cluster.wait_tasks({"T-script"}, nodes=[there])
        add_task(there, "T-there")

        def seen_by_script() -> str | None:
            return None if "T-there" in script.tasks else "T-there not on the script's board yet"

        cluster.wait_until(seen_by_script, timeout=30, what="the peer's write on the script's board")
        assert script.counters.value("scripts") == 3
