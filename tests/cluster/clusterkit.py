"""Clusters of real `agentstate serve` processes on loopback, driven and read through the installed CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pycrdt import Doc, Map

from replica.statevector import decode_state_vector
from transport.updates import state_digest

from tests.transport.meshkit import free_ports

T = TypeVar("T")

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")
ROOM = "cluster"
TOKEN = "cluster-secret"
START_TIMEOUT = 30.0


@dataclass
class Run:
    """What one `agentstate` invocation produced."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.out)


def _env() -> dict[str, str]:
    """The environment for child processes: no inherited data directory or token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Node:
    """One data directory, the `agentstate serve` process holding it (when running), and its log."""

    name: str
    root: Path
    port: int
    dials: list[Node] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def data(self) -> Path:
        """The node's data directory."""
        return self.root / self.name

    @property
    def url(self) -> str:
        """The node's room URL."""
        return f"ws://127.0.0.1:{self.port}/{ROOM}"

    @property
    def log(self) -> Path:
        """Where the current serve process writes its log."""
        return self.root / f"{self.name}.{self.starts}.log"

    def cli(self, *args: str, stdin: bytes | None = None, timeout: float = 60.0) -> Run:
        """Run `agentstate --data <dir> ARGS` (through the daemon whenever one holds the directory)."""
        proc = subprocess.run([AGENTSTATE, "--data", str(self.data), *args], input=stdin, capture_output=True,
                              env=_env(), cwd=self.root, timeout=timeout)
        return Run(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    def cli_bytes(self, *args: str, timeout: float = 60.0) -> bytes:
        """Run a command whose stdout is binary (export -); fail on a non-zero exit."""
        proc = subprocess.run([AGENTSTATE, "--data", str(self.data), *args], capture_output=True,
                              env=_env(), cwd=self.root, timeout=timeout)
        assert proc.returncode == 0, f"{self.name}: {args} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}"
        return proc.stdout

    def start(self) -> None:
        """Start `agentstate serve` on the node's port, dialing its peers; return once it is serving."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is already running"
        self.starts += 1
        argv = [AGENTSTATE, "--data", str(self.data), "serve", "--listen", f"127.0.0.1:{self.port}",
                "--room", ROOM, "--token", TOKEN]
        for peer in self.dials:
            argv += ["--peer", peer.url]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                         env=_env(), cwd=self.root)
        deadline = time.monotonic() + START_TIMEOUT
        while b"\nready " not in b"\n" + self.log.read_bytes():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name}: serve exited {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: serve not ready after {START_TIMEOUT}s:\n{self.log_tail()}")
            time.sleep(0.02)

    def wait_log(self, text: str, *, timeout: float = 10.0) -> None:
        """Wait (polling every millisecond) until the current log contains `text`."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.log.read_bytes():
            assert self.running, f"{self.name} exited:\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"{self.name}: no {text!r} in the log after {timeout}s"
            time.sleep(0.001)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` to the serve process and wait for it to end; return its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code

    @property
    def running(self) -> bool:
        """Whether the serve process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the current log (for failure messages)."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(f"  {self.name}| {line}" for line in text.splitlines()[-lines:])

    def task_ids(self) -> set[str]:
        """Ids of the tasks `agentstate task list --json` shows on this node."""
        run = self.cli("task", "list", "--json")
        assert run.code == 0, f"{self.name}: task list exited {run.code}: {run.err[-2000:]}"
        result = run.json()
        assert result["invalid"] == [], result["invalid"]
        return {task["id"] for task in result["tasks"]}

    def state(self) -> tuple[Any, ...]:
        """The node's whole document (via `agentstate export -`): state vector, digest, tasks, counters, node count."""
        doc: Doc = Doc()
        doc.apply_update(self.cli_bytes("export", "-"))
        state_vector = doc.get_state()
        return (
            tuple(sorted(decode_state_vector(state_vector).items())),
            state_digest(state_vector, doc.get_update(state_vector)),
            doc.get("tasks", type=Map).to_py(),
            doc.get("counters", type=Map).to_py(),
            len(doc.get("nodes", type=Map)),
        )


def parallel(fn: Callable[[Node], T], nodes: Sequence[Node]) -> list[T]:
    """`fn(node)` for every node at once (each is a CLI process), in node order."""
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        return list(pool.map(fn, nodes))


class Cluster:
    """Nodes under one directory; `edges` (a, b) mean node a dials node b."""

    def __init__(self, root: Path, count: int, edges: Iterable[tuple[int, int]]) -> None:
        self.root = root
        self.nodes = [Node(f"n{i}", root, port) for i, port in enumerate(free_ports(count))]
        for a, b in edges:
            self.nodes[a].dials.append(self.nodes[b])
        runs = parallel(lambda node: node.cli("init", "--replica-id", node.name), self.nodes)
        assert all(run.code == 0 for run in runs), [run.err for run in runs]

    def start(self) -> None:
        """Start every node, listeners before their dialers, and return once all serve.

        Nodes start in waves, each node after every node it dials (a cycle starts as one
        wave): a dial refused because the peer is still starting would back off for seconds.
        """
        pending = list(self.nodes)
        while pending:
            wave = [n for n in pending if all(peer not in pending or peer is n for peer in n.dials)] or pending
            parallel(Node.start, wave)
            pending = [n for n in pending if n not in wave]

    def close(self) -> None:
        """Stop whatever still runs (SIGTERM, then SIGKILL if it hangs)."""
        for node in self.nodes:
            if node.running:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                try:
                    node.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
                    raise AssertionError(f"{node.name} ignored SIGTERM:\n{node.log_tail()}") from None

    def logs(self) -> str:
        """Every node's log tail (for failure messages)."""
        return "\n".join(node.log_tail() for node in self.nodes)

    def wait_until(self, check: Callable[[], str | None], *, timeout: float, what: str) -> None:
        """Repeat `check` (None when satisfied, else what is still missing) until it passes or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            missing = check()
            if missing is None:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}: {missing}\n{self.logs()}")
            time.sleep(0.05)

    def wait_tasks(self, expected: set[str], *, timeout: float = 30.0, nodes: Sequence[Node] | None = None) -> None:
        """Wait until `task list --json` on every node shows (at least) the `expected` task ids.

        Tasks are never deleted here, so a node that showed them all is not asked again.
        """
        targets = list(nodes or self.nodes)
        lacking: dict[str, list[str]] = {}

        def check() -> str | None:
            seen = parallel(Node.task_ids, targets)
            lacking.clear()
            lacking.update({node.name: sorted(expected - ids)[:5] for node, ids in zip(targets, seen) if expected - ids})
            targets[:] = [node for node in targets if node.name in lacking]
            return None if not lacking else f"missing {lacking}"

        self.wait_until(check, timeout=timeout, what=f"{len(expected)} tasks on {[n.name for n in targets]}")

    def wait_converged(self, *, timeout: float = 30.0) -> tuple[Any, ...]:
        """Wait until every node's exported document is the same (state vector, digest, tasks, counters)."""
        states: list[tuple[Any, ...]] = []

        def check() -> str | None:
            states[:] = parallel(Node.state, self.nodes)
            if all(state == states[0] for state in states[1:]):
                return None
            return "; ".join(f"{node.name}: {len(state[2])} tasks, sv {state[0]}"
                             for node, state in zip(self.nodes, states))

        self.wait_until(check, timeout=timeout, what="identical documents everywhere")
        return states[0]


class Writer(threading.Thread):
    """Streams `agentstate task add` commands at some nodes until stopped; records what was acknowledged."""

    def __init__(self, nodes: Sequence[Node], prefix: str) -> None:
        super().__init__(name=f"writer-{prefix}", daemon=True)
        self.nodes = list(nodes)
        self.prefix = prefix
        self.acked: list[str] = []
        self.failed: list[tuple[str, int, str]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        """Write round-robin until stopped; a write counts as acknowledged only if the CLI exited 0."""
        index = 0
        while not self._halt.is_set():
            node = self.nodes[index % len(self.nodes)]
            task_id = f"T-{self.prefix}-{index:04d}"
            run = node.cli("task", "add", f"streamed {index} via {node.name}", "--id", task_id, "--json")
            if run.code == 0 and run.json()["id"] == task_id:
                self.acked.append(task_id)
            else:
                self.failed.append((task_id, run.code, run.err[-300:]))
            index += 1

    def wait_acked(self, count: int, timeout: float = 30.0) -> None:
        """Block until at least `count` writes were acknowledged in total."""
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert self.is_alive(), "the writer stopped"
            assert time.monotonic() < deadline, f"only {len(self.acked)} writes acknowledged; failures {self.failed[-3:]}"
            time.sleep(0.02)

    def stop(self) -> None:
        """Finish the write in flight and stop."""
        self._halt.set()
        self.join(timeout=60)
