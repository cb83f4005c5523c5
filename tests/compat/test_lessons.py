"""compat.lessons: timestamped lessons in a markdown file and in the replicated lessons list."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Callable

import pytest

from compat.lessons import append_lesson
from compat.versioned_store import VersionedStore
from replica import Replica

from .conftest import Child
from .helpers import sync

ENTRY = re.compile(
    r"### Lesson \((?P<at>[^)]+)\)\n\n\*\*Context\*\*: (?P<context>.*)\n\n"
    r"\*\*Failure\*\*: (?P<failure>.*)\n\n\*\*Resolution\*\*: (?P<resolution>.*)\n"
)


def test_appends_a_timestamped_entry_to_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "notes" / "CLAUDE.md"
    replica = Replica.memory()
    result = append_lesson("Type checking", "Types broke after rebase", "Re-run the checker", path=path,
                           replica=replica)
    assert result["success"] is True and result["path"] == str(path)
    assert "recorded as L-" in result["message"]
    text = path.read_text()
    assert text.startswith("# Lessons Learned\n")
    match = ENTRY.search(text)
    assert match is not None
    assert (match["context"], match["failure"], match["resolution"]) == (
        "Type checking", "Types broke after rebase", "Re-run the checker")
    assert datetime.fromisoformat(match["at"]).tzinfo is not None
    lesson = replica.lessons.list()[0]
    assert (lesson.context, lesson.failure, lesson.resolution) == (
        "Type checking", "Types broke after rebase", "Re-run the checker")


def test_an_existing_file_gets_the_section_once(tmp_path: Path) -> None:
    path = tmp_path / "CLAUDE.md"
    path.write_text("# Project rules\n\nBe nice.")
    for n in range(3):
        assert append_lesson(f"c{n}", f"f{n}", f"r{n}", path=path, replica=Replica.memory())["success"]
    text = path.read_text()
    assert text.startswith("# Project rules\n\nBe nice.\n") and text.count("## Lessons Learned") == 1
    assert [m["context"] for m in ENTRY.finditer(text)] == ["c0", "c1", "c2"]


def test_the_default_file_is_claude_md_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = append_lesson("c", "f", "r")
    assert result["success"] and result["path"] == str(tmp_path / "CLAUDE.md")
    assert "not shared" in result["message"], "no replica given and none open"


def test_the_replica_can_be_a_directory_or_a_compat_object(tmp_path: Path) -> None:
    result = append_lesson("c1", "f1", "r1", path=tmp_path / "L.md", replica=tmp_path / "agent")
    assert result["success"], result["message"]
    with VersionedStore(tmp_path / "agent") as store:
        assert [lesson.context for lesson in store.replica.lessons.list()] == ["c1"]
        assert append_lesson("c2", "f2", "r2", path=tmp_path / "L.md", replica=store)["success"]
        assert append_lesson("c3", "f3", "r3", path=tmp_path / "L.md")["success"], "the one open replica"
        assert [lesson.context for lesson in store.replica.lessons.list()] == ["c1", "c2", "c3"]


def test_bad_input_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "CLAUDE.md"
    result = append_lesson("context", "  ", "resolution", path=path)
    assert result["success"] is False and "failure" in result["message"] and not path.exists()
    blocked = append_lesson("c", "f", "r", path=tmp_path)
    assert blocked["success"] is False and "could not append" in blocked["message"]


def test_two_replicas_appending_at_once_lose_nothing(tmp_path: Path) -> None:
    a, b = Replica.memory(), Replica.memory()
    for n in range(10):
        append_lesson(f"a{n}", "f", "r", path=tmp_path / "a.md", replica=a)
        append_lesson(f"b{n}", "f", "r", path=tmp_path / "b.md", replica=b)
    sync(a, b)
    for replica in (a, b):
        assert sorted(lesson.context for lesson in replica.lessons.list()) == sorted(
            [f"a{n}" for n in range(10)] + [f"b{n}" for n in range(10)])


_APPENDER = """
import sys
from compat.lessons import append_lesson
sys.stdin.readline()
for n in range(int(sys.argv[3])):
    result = append_lesson(f"{sys.argv[2]}-{n}", "failure " * 50, "resolution", path=sys.argv[1])
    assert result["success"], result
print("done", flush=True)
"""


def test_two_processes_appending_to_one_file_lose_nothing(tmp_path: Path, spawn: Callable[..., Child]) -> None:
    path = tmp_path / "CLAUDE.md"
    children = [spawn(_APPENDER, str(path), name, "40") for name in ("one", "two")]
    for child in children:
        child.send("go")
    for child in children:
        child.expect("done", timeout=60)
        assert child.finish() == 0
    text = path.read_text()
    contexts = [m["context"] for m in ENTRY.finditer(text)]
    assert sorted(contexts) == sorted([f"one-{n}" for n in range(40)] + [f"two-{n}" for n in range(40)])
    assert text.count("# Lessons Learned") == 1 and text.count("**Context**") == 80
