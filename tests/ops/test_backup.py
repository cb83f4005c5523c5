"""`agentstate backup` / `restore` with real processes writing during the backup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from replica.replica import Replica

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")
REPOSITORY = Path(__file__).resolve().parents[2]
WRITERS = 3


def agentstate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed command; never a traceback."""
    done = subprocess.run([AGENTSTATE, *args], capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def acknowledged(files: list[Path]) -> set[str]:
    """Every task id the writers have reported as written so far."""
    found: set[str] = set()
    for path in files:
        if path.exists():
            found.update(line for line in path.read_text().splitlines() if line)
    return found


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll until `predicate()` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_backup_while_processes_write_restores_everything_acknowledged_before_it(tmp_path: Path) -> None:
    data = tmp_path / "live"
    assert agentstate("--data", str(data), "init").returncode == 0
    stop = tmp_path / "stop"
    acks = [tmp_path / f"acks-{index}" for index in range(WRITERS)]
    writers = [subprocess.Popen([sys.executable, "-m", "tests.ops.writer", str(data), f"w{index}", str(acks[index]),
                                 str(stop)], cwd=REPOSITORY) for index in range(WRITERS)]
    try:
        wait_for(lambda: all(len(acknowledged([path])) >= 20 for path in acks), 60, "every writer to write")
        before = acknowledged(acks)
        taken = agentstate("--data", str(data), "backup", str(tmp_path / "backup"), "--json")
        assert taken.returncode == 0, taken.stderr
        after_backup = acknowledged(acks)
        wait_for(lambda: len(acknowledged(acks)) >= len(after_backup) + 10, 60, "writes after the backup")
    finally:
        stop.touch()
        for writer in writers:
            assert writer.wait(timeout=60) == 0
    manifest = json.loads(taken.stdout)
    restored = tmp_path / "restored"
    done = agentstate("--data", str(restored), "restore", str(tmp_path / "backup"))
    assert done.returncode == 0, done.stderr
    verified = agentstate("--data", str(restored), "verify")
    assert verified.returncode == 0 and verified.stdout.strip().endswith("ok"), verified.stdout + verified.stderr
    with Replica.open(restored) as replica:
        ids = {task.id for task in replica.tasks.list()}
        assert replica.replica_id == manifest["replica_id"]
    missing = before - ids
    assert not missing, f"{len(missing)} writes acknowledged before the backup are not in it: {sorted(missing)[:5]}"
    assert ids <= after_backup, "the backup holds writes acknowledged only after it finished"
    assert len(ids) == manifest["counts"]["tasks"]
    print(f"backup: {len(before)} acknowledged before, {len(ids)} in the backup, {len(acknowledged(acks))} in all")


def test_restore_refuses_a_directory_that_is_not_empty_and_changes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "source"
    assert agentstate("--data", str(source), "task", "add", "kept").returncode == 0
    assert agentstate("--data", str(source), "backup", str(tmp_path / "backup")).returncode == 0
    occupied = tmp_path / "occupied"
    assert agentstate("--data", str(occupied), "task", "add", "already here", "--id", "T-here").returncode == 0
    listing = sorted(os.listdir(occupied))
    refused = agentstate("--data", str(occupied), "restore", str(tmp_path / "backup"))
    assert refused.returncode == 4 and "not empty" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert sorted(os.listdir(occupied)) == listing
    shown = agentstate("--data", str(occupied), "task", "list", "--json")
    assert [task["id"] for task in json.loads(shown.stdout)["tasks"]] == ["T-here"]
    again = agentstate("--data", str(source), "backup", str(tmp_path / "backup"))
    assert again.returncode == 4 and "not empty" in again.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert agentstate("--data", str(empty), "restore", str(tmp_path / "backup")).returncode == 0


def test_a_damaged_backup_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    source = tmp_path / "source"
    assert agentstate("--data", str(source), "task", "add", "kept").returncode == 0
    backup = tmp_path / "backup"
    assert agentstate("--data", str(source), "backup", str(backup)).returncode == 0
    state = backup / "state.yupdate"
    raw = bytearray(state.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    state.write_bytes(bytes(raw))
    target = tmp_path / "target"
    refused = agentstate("--data", str(target), "restore", str(backup))
    assert refused.returncode == 5 and "checksum" in refused.stderr
    assert not target.exists()
    missing = agentstate("--data", str(target), "restore", str(tmp_path / "nowhere"))
    assert missing.returncode == 5 and "not an agentstate backup" in missing.stderr
    assert not target.exists()
    nothing = agentstate("--data", str(tmp_path / "no-data"), "backup", str(tmp_path / "b2"))
    assert nothing.returncode == 5 and not (tmp_path / "b2").exists()
