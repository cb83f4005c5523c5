"""Rejections are counted one by one but logged at a bounded rate, with a "suppressed N" line."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import msgpack
import pytest

from replica.replica import Replica
from transport.limits import Limits
from transport.metrics import ServerMetrics
from transport.ratelog import RateLimitedLog

from tests.ops.opskit import value
from tests.transport.fuzzclient import FRAME_LIMIT
from tests.transport.meshkit import eventually, mesh, running

FRAMES = 3000
SEED = 1207
REPOSITORY = Path(__file__).resolve().parents[2]


class Lines(logging.Handler):
    """Keeps every formatted message it is handed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if record.levelno >= logging.WARNING:
            self.warnings.append(record.getMessage())


def capture(name: str) -> tuple[logging.Logger, Lines]:
    """A logger (propagating nowhere) and the handler that keeps its lines."""
    logger = logging.getLogger(name)
    handler = Lines()
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, handler


def test_lines_per_interval_then_one_suppressed_line() -> None:
    now = [0.0]
    logger, lines = capture("tests.ops.ratelog.unit")
    limited = RateLimitedLog(logger, lines=3, interval=10.0, clock=lambda: now[0])
    written = [limited.warning("bad", "rejected %d", index) for index in range(100)]
    assert written.count(True) == 3 and limited.suppressed_total == 97
    assert limited.warning("other", "another reason") is True
    now[0] = 10.5
    assert limited.warning("bad", "rejected again") is True
    assert lines.messages == ["rejected 0", "rejected 1", "rejected 2", "another reason",
                              "event=suppressed key=bad count=97 seconds=10.5", "rejected again"]
    limited.warning("bad", "one")
    limited.warning("bad", "two")
    limited.warning("bad", "dropped")
    limited.flush()
    assert lines.messages[-1] == "event=suppressed key=bad count=1 seconds=0.0"


def test_keys_are_bounded() -> None:
    logger, lines = capture("tests.ops.ratelog.keys")
    limited = RateLimitedLog(logger, lines=1, interval=60.0, max_keys=4)
    for index in range(50):
        limited.warning(f"key-{index}", "line %d", index)
        limited.warning(f"key-{index}", "dropped %d", index)
    assert len(limited._windows) <= 4
    assert sum("event=suppressed" in line for line in lines.messages) >= 45


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimitedLog(logging.getLogger("x"), lines=0)
    with pytest.raises(ValueError):
        RateLimitedLog(logging.getLogger("x"), interval=0)


async def test_3000_fuzzed_frames_write_a_bounded_number_of_lines(tmp_path: Path) -> None:
    _, lines = capture("transport.mesh")
    server = Replica.memory("ratelog-target")
    server.tasks.create("seed")
    node = mesh(server, limits=Limits(max_frame_size=FRAME_LIMIT))
    metrics = ServerMetrics()
    metrics.watch(node)
    corpus = tmp_path / "corpus.msgpack"
    corpus.write_bytes(msgpack.packb({"state": server.diff(), "updates": []}))
    started = time.monotonic()
    async with running(node):
        fuzzer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.transport.fuzzclient", str(node.url), str(corpus), str(SEED),
            cwd=REPOSITORY, stderr=asyncio.subprocess.PIPE)
        try:
            await eventually(lambda: node.status()["totals"]["messages_in"] >= FRAMES or fuzzer.returncode is not None,
                             timeout=150, what=f"{FRAMES} fuzzed frames")
        finally:
            if fuzzer.returncode is None:
                fuzzer.terminate()
            await fuzzer.communicate()
        await eventually(lambda: not node.connections(), what="the fuzzer's connections to close")
        rejections = node.status()["rejections"]
        scraped = metrics.render().decode()
    elapsed = time.monotonic() - started
    total = sum(rejections.values())
    rejected_lines = [line for line in lines.warnings if line.startswith("event=rejected")]
    suppressed = [line for line in lines.warnings if line.startswith("event=suppressed")]
    intervals = int(elapsed // node.rejection_log.interval) + 1
    bound = node.rejection_log.lines * len(rejections) * intervals
    print(f"ratelog: {node.status()['totals']['messages_in']} frames, {total} rejections, "
          f"{len(rejected_lines)} rejection lines, {len(suppressed)} suppressed lines, {len(lines.warnings)} warnings in all, "
          f"{len(lines.messages)} lines at any level, {elapsed:.1f}s")
    assert total >= 100, rejections
    assert len(rejected_lines) <= bound
    assert len(lines.warnings) < 300, "the mesh logged more than a bounded number of warnings"
    reported = sum(int(line.split("count=")[1].split()[0]) for line in suppressed)
    assert len(rejected_lines) + reported == total, "every rejection is either logged or counted as suppressed"
    assert sum(value(scraped, "agentstate_rejected_inputs_total", reason=reason) for reason in rejections) == total
