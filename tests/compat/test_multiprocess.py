"""compat and the replica API from many processes on one directory, with and without `agentstate serve`.

8 real processes at once: 4 compat creators (distinct entities), 2 compat read-modify-write
loops on one shared field that retry on conflict, 2 Replica API writers creating tasks and
incrementing one counter. Every create is present, the shared field equals the number of
successful commits, the counter is exact and the global version is one sequence.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from compat.graph_wal import GraphWAL
from compat.tx_manager import TransactionManager
from compat.types import Task
from replica import Replica

REPO = Path(__file__).resolve().parents[2]
AGENTSTATE = str(Path(sys.executable).parent / "agentstate")
CREATES = 25
INCREMENTS = 15
API_WRITES = 25

CREATOR = """
import sys
from compat.tx_manager import TransactionManager
from compat.types import Task
got, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with TransactionManager(got) as manager:
    for i in range(count):
        tx = manager.begin()
        manager.write(tx, Task(id=f"{name}-{i}", title=f"created by {name}"))
        result = manager.commit(tx)
        if not result.success:
            print("failed", result.reason, flush=True)
            sys.exit(1)
        print("ok", result.version, flush=True)
"""

INCREMENTER = """
import sys
from compat.tx_manager import TransactionManager
got, count = sys.argv[1], int(sys.argv[2])
done = conflicts = 0
with TransactionManager(got) as manager:
    while done < count:
        tx = manager.begin()
        task = manager.read(tx, "SHARED")
        task.properties["n"] = int(task.properties.get("n", 0)) + 1
        manager.write(tx, task)
        result = manager.commit(tx)
        if result.success:
            done += 1
            print("ok", result.version, flush=True)
        elif result.reason == "version_conflict":
            conflicts += 1
        else:
            print("failed", result.reason, flush=True)
            sys.exit(1)
print("conflicts", conflicts, flush=True)
"""

API_WRITER = """
import sys
from replica import Replica
path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Replica.open(path) as replica:
    for i in range(count):
        replica.tasks.create(f"api {name} {i}", id=f"{name}-{i}")
        replica.counters.incr("hits")
        print("ok", flush=True)
"""


def _spawn(script: str, *args: str) -> "subprocess.Popen[str]":
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(params=["alone", "beside serve"])
def got_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A got directory, with `agentstate serve` running on it for the second parameter."""
    got = tmp_path / "got"
    with TransactionManager(got) as manager:
        tx = manager.begin()
        manager.write(tx, Task(id="SHARED", title="shared counter", properties={"n": 0}))
        assert manager.commit(tx).success
    serve: Optional["subprocess.Popen[bytes]"] = None
    if request.param == "beside serve":
        log = tmp_path / "serve.log"
        with log.open("wb") as sink:
            serve = subprocess.Popen([AGENTSTATE, "--data", str(got), "serve", "--listen", f"127.0.0.1:{_free_port()}"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=sink, cwd=str(tmp_path))
        deadline = time.monotonic() + 30
        while b"ready" not in log.read_bytes():
            assert serve.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
    try:
        yield got
    finally:
        if serve is not None:
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=30) == 0


def test_eight_processes_on_one_directory(got_dir: Path) -> None:
    procs: List["subprocess.Popen[str]"] = []
    procs += [_spawn(CREATOR, str(got_dir), f"C{w}", str(CREATES)) for w in range(4)]
    procs += [_spawn(INCREMENTER, str(got_dir), str(INCREMENTS)) for _ in range(2)]
    procs += [_spawn(API_WRITER, str(got_dir), f"R{w}", str(API_WRITES)) for w in range(2)]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, out[-1000:] + err[-3000:]
        assert "Traceback" not in err, err
    versions = sorted(int(line.split()[1]) for out, _ in outputs[:6] for line in out.splitlines()
                      if line.startswith("ok "))
    assert len(versions) == 4 * CREATES + 2 * INCREMENTS
    assert versions == list(range(2, 2 + len(versions))), "the global version is not one sequence"
    with TransactionManager(got_dir) as manager:
        tx = manager.begin()
        for w in range(4):
            for i in range(CREATES):
                assert manager.read(tx, f"C{w}-{i}") is not None, f"C{w}-{i} lost"
        shared = manager.read(tx, "SHARED")
        assert shared is not None and int(shared.properties["n"]) == 2 * INCREMENTS
        assert manager.store.current_version() == 1 + 4 * CREATES + 2 * INCREMENTS
    with Replica.open(got_dir) as replica:
        ids = {t.id for t in replica.tasks.list()}
        assert {f"R{w}-{i}" for w in range(2) for i in range(API_WRITES)} <= ids
        assert replica.counters.value("hits") == 2 * API_WRITES


GRAPH_WRITER = """
import sys
from compat.graph_wal import GraphWAL, NodeType
wal = GraphWAL(sys.argv[1])
for i in range(int(sys.argv[3])):
    wal.log_add_node(f"{sys.argv[2]}-{i}", NodeType.CONCEPT, f"node {i}")
print("ok", flush=True)
"""


def test_graph_wal_from_four_processes(tmp_path: Path) -> None:
    procs = [_spawn(GRAPH_WRITER, str(tmp_path / "gw"), f"g{w}", "40") for w in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]
    entries = GraphWAL(tmp_path / "gw").get_all_entries()
    added = {entry.node_id for entry in entries if entry.operation == "add_node"}
    assert added == {f"g{w}-{i}" for w in range(4) for i in range(40)}
    assert os.path.isdir(tmp_path / "gw")
