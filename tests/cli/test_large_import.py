"""`agentstate import` of an export larger than the control channel's body limit, with and without a daemon.

The CLI applies an import on the directory itself, daemon or not; a running daemon reads
it from the shared log (and would relay it to its peers). The export is a real Yjs update
made with pycrdt: thousands of tasks with long descriptions, laid out as docs/schema.md says.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from pycrdt import Doc, Map

from replica.app.control import MAX_BODY

from .conftest import Agentstate

SIZE = 60 * 1024 * 1024
DESCRIPTION = 20_000
"""Characters per task description (the schema allows up to 100,000)."""


def make_export(path: Path) -> int:
    """Write a Yjs update of at least SIZE bytes holding tasks with long descriptions; return the task count."""
    doc = Doc()
    tasks = doc.get("tasks", type=Map)
    count = SIZE // DESCRIPTION + 1
    stamp = "2026-11-24T09:30:00.000000+00:00"
    filler = "".join(chr(ord("a") + i % 26) for i in range(DESCRIPTION))
    with doc.transaction():
        for i in range(count):
            tasks[f"T-big-{i:05d}"] = Map({
                "title": f"imported task {i}", "description": f"{i:05d}" + filler[5:], "status": "pending",
                "priority": "medium", "owner": None, "tags": Map({"bulk": True}), "depends_on": Map(),
                "properties": Map({"index": i}), "created_at": stamp, "updated_at": stamp,
                "created_by": "r-exporter",
            })
    update = doc.get_update()
    assert len(update) >= SIZE and len(update) * 4 // 3 > MAX_BODY
    path.write_bytes(update)
    return count


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """One large export file shared by the tests of this module, and how many tasks it holds."""
    path = tmp_path_factory.mktemp("export") / "big.yupdate"
    began = time.monotonic()
    count = make_export(path)
    print(f"\nmade a {path.stat().st_size / 2**20:.1f} MiB export of {count} tasks in "
          f"{time.monotonic() - began:.1f} s")
    return path, count


@pytest.mark.parametrize("with_daemon", [False, True], ids=["no-daemon", "daemon"])
def test_import_of_a_60_mb_export(agentstate: Agentstate, export: tuple[Path, int], with_daemon: bool) -> None:
    """Imported whole, counted, idempotent, and seen by a running daemon (which never carried it)."""
    path, count = export
    assert agentstate("task", "add", "already here").code == 0
    daemon = agentstate.serve() if with_daemon else None
    try:
        began = time.monotonic()
        imported = agentstate("import", str(path), "--json", timeout=300)
        took = time.monotonic() - began
        assert imported.code == 0, imported.err
        result = imported.json()
        assert result["changed"] is True and result["bytes"] == path.stat().st_size
        assert (result["before"]["tasks"], result["after"]["tasks"]) == (1, count + 1)
        print(f"\nimported {result['bytes'] / 2**20:.1f} MiB in {took:.1f} s "
              f"({'with' if with_daemon else 'without'} a daemon)")
        status = agentstate("status", "--json").json()
        assert status["replica"]["tasks"] == count + 1
        if daemon is not None:
            assert status["daemon"]["pid"] == daemon.pid, "status was answered by the daemon"
        shown = agentstate("task", "show", "T-big-00042", "--json").json()
        assert shown["description"].startswith("00042") and len(shown["description"]) == DESCRIPTION
        again = agentstate("import", str(path), timeout=300)
        assert again.code == 0 and "nothing new" in again.out, again.out + again.err
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0
    assert agentstate("status", "--json").json()["replica"]["tasks"] == count + 1
