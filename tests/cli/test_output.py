"""What people and scripts read: ids in full when piped, one record per line, id prefixes, help text."""

from __future__ import annotations

import subprocess

from replica.app.cli import PRIORITIES, TASK_STATUSES
from replica.models import Priority, TaskStatus

from .conftest import Agentstate

NOT_FOUND, INVALID = 3, 4


def test_piped_tables_keep_every_id_whole_and_every_record_on_one_line(agentstate: Agentstate) -> None:
    long_title = "a title long enough to push any table past eighty columns " * 3
    ids = [agentstate("task", "add", long_title + str(i), "--owner", "agent-with-a-long-name",
                      "--description", "two\nlines", "--tag", "t").out.strip() for i in range(3)]
    listed = agentstate("task", "list", env={"COLUMNS": "40"})
    assert listed.code == 0
    lines = listed.out.splitlines()
    assert len(lines) == 1 + len(ids), lines
    for task_id, line in zip(ids, lines[1:]):
        assert line.startswith(task_id + " ") and line.rstrip().endswith("t")
        assert "…" not in line and "..." not in line
    shown = agentstate("task", "show", ids[0], env={"COLUMNS": "40"})
    assert f"id           {ids[0]}" in shown.out and "two\\nlines" in shown.out


def test_task_commands_accept_a_unique_id_prefix(agentstate: Agentstate) -> None:
    for task_id in ("T-alpha-1001", "T-alpha-2002", "T-beta-00001"):
        assert agentstate("task", "add", task_id, "--id", task_id).code == 0
    shown = agentstate("task", "show", "T-beta-0", "--json")
    assert shown.code == 0 and shown.json()["id"] == "T-beta-00001"
    updated = agentstate("task", "update", "T-alpha-2", "--status", "blocked", "--json")
    assert updated.code == 0 and updated.json()["id"] == "T-alpha-2002"
    ambiguous = agentstate("task", "update", "T-alpha-", "--status", "blocked")
    assert ambiguous.code == INVALID
    assert "T-alpha-1001" in ambiguous.err and "T-alpha-2002" in ambiguous.err and "Traceback" not in ambiguous.err
    assert agentstate("task", "show", "T-gamma-0").code == NOT_FOUND
    assert agentstate("task", "show", "T-beta").code == NOT_FOUND, "prefixes under 8 characters are not expanded"
    removed = agentstate("task", "rm", "T-beta-00", "--json")
    assert removed.code == 0 and removed.json() == {"deleted": "T-beta-00001"}


def test_prefixes_work_through_the_daemon(agentstate: Agentstate, daemon: subprocess.Popen[bytes]) -> None:
    task_id = agentstate("task", "add", "via daemon").out.strip()
    shown = agentstate("task", "show", task_id[:-3], "--json")
    assert shown.code == 0 and shown.json()["id"] == task_id
    assert agentstate("task", "show", task_id[:-3] + "zzz").code == NOT_FOUND


def test_help_lists_allowed_values_and_never_cuts_descriptions(agentstate: Agentstate) -> None:
    add = agentstate("task", "add", "--help", data=False, env={"COLUMNS": "200"}).out
    for value in TASK_STATUSES + PRIORITIES:
        assert value in add
    assert "type" in agentstate("graph", "node", "add", "--help", data=False).out.lower()
    counter = agentstate("counter", "--help", data=False).out
    assert "incr" in counter and "Add to a counter" in counter and "Subtract from a counter" in counter
    top = agentstate("--help", data=False, env={"COLUMNS": "200"})
    assert top.code == 0 and "..." not in top.out.replace("[ARGS...]", "")
    assert "instead of a table" not in top.out + add


def test_cli_value_lists_match_the_models() -> None:
    assert TASK_STATUSES == tuple(s.value for s in TaskStatus)
    assert PRIORITIES == tuple(p.value for p in Priority)


def test_import_says_what_was_new_and_verify_what_it_checked(agentstate: Agentstate) -> None:
    other = Agentstate(agentstate.data.parent / "other", agentstate.cwd)
    other("task", "add", "from other")
    update = agentstate.data.parent / "other.yupdate"
    assert other("export", str(update)).code == 0
    first = agentstate("import", str(update))
    assert first.code == 0 and "tasks 0 -> 1" in first.out
    again = agentstate("import", str(update))
    assert again.code == 0 and "nothing new" in again.out
    verified = agentstate("verify")
    assert verified.code == 0
    assert "log segment" in verified.out and "record" in verified.out and "1 task" in verified.out
    assert verified.out.strip().endswith("ok")
