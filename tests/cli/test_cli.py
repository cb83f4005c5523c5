"""The installed `agentstate` command, run in subprocesses: output, JSON, exit codes, daemon routing."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from .conftest import Agentstate

NOT_FOUND, INVALID, DATA, CONFLICT, PROBLEMS = 3, 4, 5, 7, 8


def test_init_creates_directory_and_is_idempotent(agentstate: Agentstate) -> None:
    first = agentstate("init", "--replica-id", "r-one", "--json")
    assert first.code == 0 and first.json()["created"] is True
    assert first.json()["replica_id"] == "r-one"
    second = agentstate("init", "--json")
    assert second.code == 0 and second.json() == {**first.json(), "created": False}


def test_every_command_creates_the_directory_silently(agentstate: Agentstate) -> None:
    """One rule, as `import`, `serve` and `Replica.open` have it: the first use creates the directory."""
    listed = agentstate("task", "list", "--json")
    assert listed.code == 0 and listed.json()["tasks"] == [] and listed.err == ""
    assert (agentstate.data / "replica.json").is_file()
    other = Agentstate(agentstate.data.parent / "fresh", agentstate.cwd)
    added = other("task", "add", "first")
    assert added.code == 0 and added.out.strip().startswith("T-")


def test_task_lifecycle_with_json(agentstate: Agentstate) -> None:
    agentstate("init")
    added = agentstate("task", "add", "Write docs", "--tag", "docs", "--priority", "high",
                       "--prop", "estimate=3", "--prop", "note=plain text", "--json")
    assert added.code == 0, added.err
    task = added.json()
    assert task["title"] == "Write docs" and task["priority"] == "high"
    assert task["properties"] == {"estimate": 3, "note": "plain text"}
    updated = agentstate("task", "update", task["id"], "--status", "in_progress", "--owner", "agent-7",
                         "--add-tag", "urgent", "--json").json()
    assert updated["status"] == "in_progress" and updated["owner"] == "agent-7"
    assert updated["tags"] == ["docs", "urgent"]
    listed = agentstate("task", "list", "--status", "in_progress", "--json").json()
    assert [t["id"] for t in listed["tasks"]] == [task["id"]]
    assert agentstate("task", "list", "--status", "completed", "--json").json()["tasks"] == []
    shown = agentstate("task", "show", task["id"])
    assert shown.code == 0 and "agent-7" in shown.out
    table = agentstate("task", "list")
    assert "Write docs" in table.out and "in_progress" in table.out
    assert agentstate("task", "rm", task["id"]).code == 0
    assert agentstate("task", "show", task["id"]).code == NOT_FOUND


def test_invalid_value_names_the_field_and_changes_nothing(agentstate: Agentstate) -> None:
    agentstate("init")
    task_id = agentstate("task", "add", "x", "--json").json()["id"]
    before = agentstate("task", "show", task_id, "--json").json()
    bad = agentstate("task", "update", task_id, "--status", "done")
    assert bad.code == INVALID
    assert "status" in bad.err and "done" in bad.err
    assert agentstate("task", "show", task_id, "--json").json() == before
    assert agentstate("task", "add", "").code == INVALID
    assert agentstate("counter", "incr", "c", "--by", "0").code == INVALID
    assert agentstate("task", "add", "y", "--prop", "novalue").code == 2


def test_missing_records_exit_not_found(agentstate: Agentstate) -> None:
    agentstate("init")
    assert agentstate("task", "show", "T-nope").code == NOT_FOUND
    assert agentstate("task", "update", "T-nope", "--title", "z").code == NOT_FOUND
    assert agentstate("counter", "get", "never").code == NOT_FOUND
    assert agentstate("graph", "node", "rm", "n-nope").code == NOT_FOUND


def test_an_oversized_value_or_id_is_named_not_echoed(agentstate: Agentstate) -> None:
    """A 100,000-character title or id gets a one-line error that says its length, not the value back."""
    agentstate("init")
    big = "x" * 100_000
    for args, code in (
        (("task", "add", big), INVALID),
        (("task", "show", big), NOT_FOUND),
        (("task", "update", big, "--title", "z"), NOT_FOUND),
        (("graph", "node", "rm", big), NOT_FOUND),
    ):
        result = agentstate(*args)
        assert result.code == code, (args[:2], result.err[:300])
        assert "100,000 characters" in result.err and len(result.err) < 400, result.err[:300]
    assert agentstate("task", "list", "--json").json()["tasks"] == []


def test_a_bad_listen_address_is_a_usage_error_before_anything_opens(agentstate: Agentstate) -> None:
    """serve, hub and mcp check HOST:PORT as they parse their options: exit 2, no directory created."""
    for args in (("serve", "--listen", "nonsense"), ("serve", "--listen", "127.0.0.1:99999"),
                 ("hub", "--listen", "nowhere"), ("mcp", "--listen", "[::1]")):
        result = agentstate(*args, timeout=30)
        assert result.code == 2 and "HOST:PORT" in result.err, (args, result.code, result.err[-300:])
        assert not agentstate.data.exists(), args

def test_duplicate_id_is_a_conflict(agentstate: Agentstate) -> None:
    agentstate("init")
    assert agentstate("task", "add", "a", "--id", "T-1").code == 0
    again = agentstate("task", "add", "b", "--id", "T-1")
    assert again.code == CONFLICT and "already exists" in again.err


def test_graph_commands(agentstate: Agentstate) -> None:
    agentstate("init")
    for node in ("q1", "a1", "a2"):
        assert agentstate("graph", "node", "add", node, "--type", "concept", "--content", node.upper()).code == 0
    assert agentstate("graph", "edge", "add", "q1", "a1", "--type", "answers", "--weight", "0.5").code == 0
    assert agentstate("graph", "edge", "add", "a1", "a2", "--type", "refines").code == 0
    shown = agentstate("graph", "show", "q1", "--depth", "2", "--direction", "out", "--json").json()
    assert [(n["id"], n["depth"]) for n in shown["nodes"]] == [("q1", 0), ("a1", 1), ("a2", 2)]
    assert {(e["source"], e["target"]) for e in shown["edges"]} == {("q1", "a1"), ("a1", "a2")}
    removed = agentstate("graph", "node", "rm", "a1", "--json").json()
    assert removed["edges_removed"] == 2
    edges = agentstate("graph", "edge", "list", "--json").json()
    assert edges["edges"] == [] and edges["dangling"] == []
    assert agentstate("graph", "edge", "add", "q1", "missing", "--type", "answers").code == INVALID


def test_counters_are_exact(agentstate: Agentstate) -> None:
    agentstate("init")
    big = 2**60
    assert agentstate("counter", "incr", "tokens", "--by", str(big)).code == 0
    assert agentstate("counter", "incr", "tokens", "--by", "3").code == 0
    assert agentstate("counter", "decr", "tokens", "--by", "1").code == 0
    assert agentstate("counter", "get", "tokens", "--json").json()["value"] == big + 2
    assert agentstate("counter", "list", "--json").json()["counters"] == {"tokens": big + 2}


def test_data_directory_resolution(agentstate: Agentstate, tmp_path: Path) -> None:
    env_dir = tmp_path / "from-env"
    assert agentstate("init", env={"AGENTSTATE_DATA": str(env_dir)}, data=False).code == 0
    assert (env_dir / "replica.json").exists()
    default = agentstate("init", "--json", data=False, env={"AGENTSTATE_DATA": ""})
    assert default.code == 0
    assert (tmp_path / ".agentstate" / "replica.json").exists()


def test_export_import_merges_two_directories_offline(agentstate: Agentstate, tmp_path: Path) -> None:
    other = Agentstate(tmp_path / "other", tmp_path)
    agentstate("init")
    other("init")
    a = agentstate("task", "add", "from A", "--json").json()["id"]
    b = other("task", "add", "from B", "--json").json()["id"]
    agentstate("counter", "incr", "n", "--by", "2")
    other("counter", "incr", "n", "--by", "5")
    assert agentstate("export", str(tmp_path / "a.yupdate")).code == 0
    assert other("export", str(tmp_path / "b.yupdate")).code == 0
    assert agentstate("import", str(tmp_path / "b.yupdate"), "--json").json()["changed"] is True
    assert other("import", str(tmp_path / "a.yupdate"), "--json").json()["changed"] is True
    assert other("import", str(tmp_path / "a.yupdate"), "--json").json()["changed"] is False
    for runner in (agentstate, other):
        ids = {t["id"] for t in runner("task", "list", "--json").json()["tasks"]}
        assert ids == {a, b}
        assert runner("counter", "get", "n", "--json").json()["value"] == 7
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff\x01not an update")
    assert agentstate("import", str(junk)).code == INVALID


def test_verify_compact_and_repair(agentstate: Agentstate) -> None:
    agentstate("init")
    for i in range(3):
        assert agentstate("task", "add", f"task {i}").code == 0
    for _ in range(40):
        assert agentstate("counter", "incr", "c").code == 0
    assert agentstate("verify").code == 0
    compacted = agentstate("compact", "--json")
    assert compacted.code == 0 and compacted.json()["lsn"] > 0
    for _ in range(5):
        agentstate("counter", "incr", "c")
    segment = sorted((agentstate.data / "log").glob("*.log"))[-1]
    raw = bytearray(segment.read_bytes())
    middle = 16 + (len(raw) - 16) // 3
    raw[middle] ^= 0xFF
    segment.write_bytes(bytes(raw))
    broken = agentstate("counter", "get", "c")
    assert broken.code == DATA and "repair" in broken.err and "offset" in broken.err
    verified = agentstate("verify", "--json")
    assert verified.code == PROBLEMS and verified.json()["ok"] is False
    repaired = agentstate("repair", "--json")
    assert repaired.code == 0 and repaired.json()["dropped"]
    assert agentstate("verify").code == 0
    value = agentstate("counter", "get", "c", "--json").json()["value"]
    assert 40 <= value < 45


def test_commands_reach_the_running_daemon(agentstate: Agentstate, daemon: subprocess.Popen[bytes]) -> None:
    added = agentstate("task", "add", "through the daemon", "--json")
    assert added.code == 0, added.err
    status = agentstate("status", "--json").json()
    assert status["daemon"]["pid"] == daemon.pid
    assert status["replica"]["tasks"] == 1
    assert agentstate("task", "update", added.json()["id"], "--status", "nope").code == INVALID
    refused = agentstate("repair")
    assert refused.code == DATA and "stop it" in refused.err
    assert agentstate("verify").code == 0
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert not (agentstate.data / "daemon.json").exists()
    listed = agentstate("task", "list", "--json").json()["tasks"]
    assert [t["title"] for t in listed] == ["through the daemon"]


def test_stale_daemon_file_after_kill_is_ignored(agentstate: Agentstate) -> None:
    proc = agentstate.serve()
    assert agentstate("counter", "incr", "c", "--by", "4").code == 0
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (agentstate.data / "daemon.json").exists()
    assert agentstate("counter", "get", "c", "--json").json()["value"] == 4
    assert not (agentstate.data / "daemon.json").exists()


def test_a_directory_another_process_has_open_is_shared(agentstate: Agentstate) -> None:
    """A plain `Replica.open` elsewhere does not stop the CLI: both have the directory open."""
    agentstate("init")
    holder = subprocess.Popen(
        [__import__("sys").executable, "-c",
         "import sys, time; from replica import Replica; r = Replica.open(sys.argv[1]); "
         "print('held', flush=True); time.sleep(60)", str(agentstate.data)],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        added = agentstate("task", "add", "beside the holder")
        assert added.code == 0, added.err
        listed = agentstate("task", "list", "--json")
        assert [t["title"] for t in listed.json()["tasks"]] == ["beside the holder"]
    finally:
        holder.kill()
        holder.wait()


def test_serve_starts_beside_a_process_that_has_the_directory_open(agentstate: Agentstate) -> None:
    """No lock to wait for: another process with the directory open never delays or fails a starting daemon."""
    import sys

    agentstate("init")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from replica import Replica; r = Replica.open(sys.argv[1]); "
         "print('held', flush=True); time.sleep(1.0); r.close()", str(agentstate.data)],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        proc = agentstate.serve()
        try:
            assert agentstate("status", "--json").json()["daemon"]["pid"] == proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    finally:
        holder.wait(timeout=30)
