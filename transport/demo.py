"""`agentstate demo`: three replicas on loopback, partitioned writes, healing, convergence."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from replica import Replica
from replica.services import Service, start_services, stop_services
from replica.statevector import decode_state_vector
from transport.updates import state_digest

NAMES = ("alpha", "beta", "gamma")


def _free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _board(console: Console, title: str, replicas: dict[str, Replica]) -> None:
    """One row per task: "status, owner" as each replica sees it (blank: the replica lacks it)."""
    table = Table(title=title, title_justify="left")
    table.add_column("task")
    for name in replicas:
        table.add_column(name)
    ids = sorted({t.id for r in replicas.values() for t in r.tasks.list()})
    for task_id in ids:
        found = [replica.tasks.find(task_id) for replica in replicas.values()]
        cells = [f"{task.status.value}, {task.owner or '-'}" if task else "" for task in found]
        table.add_row(task_id, *(escape(cell) for cell in cells))
    table.add_row("commits", *(str(r.counters.value("commits")) for r in replicas.values()))
    console.print(table)


def _text(value: Any) -> str:
    """A field value as shown: enums by their value, None as "-"."""
    if value is None:
        return "-"
    return str(value.value if hasattr(value, "value") else value)


def _fingerprint(replica: Replica) -> tuple[tuple[tuple[int, int], ...], bytes]:
    """State vector and state digest, both independent of yrs' (hash-map) encoding order."""
    state_vector = replica.state_vector()
    digest = state_digest(state_vector, replica.diff(state_vector))
    return tuple(sorted(decode_state_vector(state_vector).items())), digest


async def _converged(replicas: list[Replica], timeout: float) -> float:
    """Seconds until every replica holds the same document (raw encodings differ in client order)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if len({_fingerprint(r) for r in replicas}) == 1:
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise click.ClickException(f"replicas did not converge within {timeout:.0f} s")


async def run_demo(console: Console, workdir: Path, timeout: float) -> dict[str, Any]:
    """The demo itself; returns what it showed, for `--json` and for tests."""
    replicas = {name: Replica.open(workdir / name, replica_id=name, durability="lazy") for name in NAMES}
    services: list[Service] = []
    try:
        a, b, c = (replicas[n] for n in NAMES)
        shared = a.tasks.create("Ship the sync layer", id="T-shared", owner="alpha")
        for other in (b, c):
            other.apply_update(a.diff(other.state_vector()), origin="bootstrap")
        console.print("[bold]1. partitioned[/bold]: three replicas, no network; each writes on its own")
        a.tasks.update(shared.id, status="in_progress")
        b.tasks.update(shared.id, status="blocked", description="waiting on review")
        c.tasks.update(shared.id, owner="gamma", add_tags=["urgent"])
        for name, replica in replicas.items():
            replica.tasks.create(f"Written offline on {name}", id=f"T-{name}")
            replica.counters.incr("commits", by=NAMES.index(name) + 1)
        before = {n: r.tasks.get(shared.id) for n, r in replicas.items()}
        _board(console, "before healing", replicas)

        console.print("[bold]2. healing[/bold]: alpha listens, beta and gamma dial it")
        port = _free_port()
        room = "demo"
        services += await start_services(a, {"listen": f"127.0.0.1:{port}", "room": room})
        for replica in (b, c):
            services += await start_services(replica, {"peers": [f"ws://127.0.0.1:{port}/{room}"], "room": room})
        if not services:
            raise click.ClickException("no network service is installed (transport.service)")
        seconds = await _converged(list(replicas.values()), timeout)
        console.print(f"[bold]3. converged[/bold] in {seconds * 1000:.0f} ms")
        _board(console, "after healing", replicas)

        after = a.tasks.get(shared.id)
        conflicts = []
        for field in ("status", "owner", "description"):
            written = {n: getattr(t, field) for n, t in before.items()
                       if getattr(t, field) != getattr(shared, field)}
            values = {_text(v) for v in written.values()}
            if len(written) > 1 and len(values) > 1:
                conflicts.append({"task": shared.id, "field": field,
                                  "written": {n: _text(v) for n, v in written.items()},
                                  "converged_to": _text(getattr(after, field))})
        table = Table(title="one field written concurrently", caption="every replica kept the same winner",
                      title_justify="left", caption_justify="left")
        for column in ("task", "field", "written", "converged to"):
            table.add_column(column)
        for item in conflicts:
            table.add_row(item["task"], item["field"],
                          ", ".join(f"{n}={v}" for n, v in item["written"].items()), item["converged_to"])
        console.print(table if conflicts else "no field was written concurrently on two replicas")
        console.print(f"{shared.id} after healing: each field merged on its own")
        for field in ("status", "owner", "description", "tags"):
            writers = [n for n, t in before.items() if getattr(t, field) != getattr(shared, field)]
            if writers:
                final = getattr(after, field)
                shown = ", ".join(final) if field == "tags" else _text(final)
                console.print(escape(f"  {field:<12} {shown!r:<24} written on {' and '.join(writers)}"))
        increments = " + ".join(str(NAMES.index(n) + 1) for n in NAMES)
        console.print(f"counter commits = {a.counters.value('commits')} everywhere ({increments}, one slot per replica)")
        merged = {"status": _text(after.status), "owner": _text(after.owner), "description": after.description,
                  "tags": list(after.tags)}
        views = {name: {"digest": _fingerprint(r)[1].hex(), "tasks": sorted(t.id for t in r.tasks.list()),
                        "commits": r.counters.value("commits")} for name, r in replicas.items()}
        return {"converged": True, "converged_seconds": seconds, "conflicts": conflicts, "merged": merged,
                "tasks": sorted(t.id for t in a.tasks.list()), "commits": a.counters.value("commits"),
                "replicas": views}
    finally:
        await stop_services(services)
        for replica in replicas.values():
            replica.close()


@click.command()
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Give up converging after this long.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def demo(timeout: float, as_json: bool) -> None:
    """Start three replicas on loopback, write while partitioned, heal, and show them converge."""
    import json

    console = Console(stderr=as_json, highlight=False)
    with tempfile.TemporaryDirectory(prefix="agentstate-demo-") as workdir:
        outcome = asyncio.run(run_demo(console, Path(workdir), timeout))
    if as_json:
        click.echo(json.dumps(outcome, indent=2))
