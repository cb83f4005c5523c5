"""Hypothesis stateful test: several Replica objects open on one directory, random ops in random interleavings.

Writes serialise on the log's append lock after catching up, so the directory behaves as one
sequential board: every open must equal a plain reference model after any step (including
reopening one of them and compacting through another), and a fresh open must equal it too.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from replica import Replica

OPENS = 3
TASK_IDS = st.sampled_from([f"T-{i}" for i in range(6)])
WHO = st.integers(min_value=0, max_value=OPENS - 1)
MODES = ("balanced", "lazy", "paranoid")


class SharedDirectory(RuleBasedStateMachine):
    """OPENS replicas on one directory against a model: tasks (title, status) and one counter."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="agentstate-shared-"))
        self.opens = [self._open(i) for i in range(OPENS)]
        self.tasks: dict[str, tuple[str, str]] = {}
        self.counter = 0
        self.serial = 0

    def _open(self, who: int) -> Replica:
        return Replica.open(self.root, durability=MODES[who % len(MODES)], segment_size=8 * 1024)

    @rule(who=WHO, task=TASK_IDS, title=st.text(min_size=1, max_size=12).filter(str.strip))
    def create_or_retitle(self, who: int, task: str, title: str) -> None:
        replica = self.opens[who]
        if task in replica.tasks:
            replica.tasks.update(task, title=title)
            self.tasks[task] = (title, self.tasks[task][1])
        else:
            replica.tasks.create(title, id=task)
            self.tasks[task] = (title, "pending")

    @rule(who=WHO, task=TASK_IDS, status=st.sampled_from(["pending", "in_progress", "blocked", "completed"]))
    def set_status(self, who: int, task: str, status: str) -> None:
        replica = self.opens[who]
        if task in self.tasks:
            replica.tasks.update(task, status=status)
            self.tasks[task] = (self.tasks[task][0], status)

    @rule(who=WHO, task=TASK_IDS)
    def delete(self, who: int, task: str) -> None:
        if task in self.tasks:
            self.opens[who].tasks.delete(task)
            del self.tasks[task]

    @rule(who=WHO, by=st.integers(min_value=-3, max_value=5).filter(bool))
    def count(self, who: int, by: int) -> None:
        if by > 0:
            self.opens[who].counters.incr("n", by)
        else:
            self.opens[who].counters.decr("n", -by)
        self.counter += by

    @rule(who=WHO)
    def transaction(self, who: int) -> None:
        replica = self.opens[who]
        self.serial += 1
        task = f"X-{self.serial}"
        with replica.transaction():
            replica.counters.incr("n", 2)
            replica.tasks.create("in a transaction", id=task)
        self.tasks[task] = ("in a transaction", "pending")
        self.counter += 2

    @rule(who=WHO)
    def reopen(self, who: int) -> None:
        self.opens[who].close()
        self.opens[who] = self._open(who)

    @rule(who=WHO)
    def compact(self, who: int) -> None:
        self.opens[who].compact()

    @invariant()
    def every_open_equals_the_model(self) -> None:
        for replica in self.opens:
            seen = {t.id: (t.title, t.status.value) for t in replica.tasks.list()}
            assert seen == self.tasks
            assert replica.counters.value("n") == self.counter

    def teardown(self) -> None:
        for replica in self.opens:
            replica.close()
        with Replica.open(self.root) as fresh:
            assert {t.id: (t.title, t.status.value) for t in fresh.tasks.list()} == self.tasks
            assert fresh.counters.value("n") == self.counter
        shutil.rmtree(self.root, ignore_errors=True)


SharedDirectory.TestCase.settings = settings(max_examples=settings.default.max_examples, stateful_step_count=30)
TestSharedDirectory = SharedDirectory.TestCase
