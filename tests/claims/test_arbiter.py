"""The claim arbiter across replicas: real meshes on loopback, real websockets, replicas on disk.

Three replicas: A serves as the room's arbiter (`arbiter` option of the mesh service, as
`serve --arbiter`), B and C dial it and send their claims to it. Races start every
claimant at a barrier, one thread per replica, so all three ask at the same moment.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import connect

from replica import Replica
from replica.claims import ArbiterRefusedError, ClaimResult
from replica.statevector import decode_state_vector
from transport.arbiter import ArbiterClient, ask
from transport.claim_protocol import (
    CLAIM_HEADER,
    MAX_REQUEST_BYTES,
    ClaimProtocolError,
    ClaimRequest,
    decode_request,
    decode_response,
    encode_request,
)
from transport.service import MeshService, mesh_service_factory

from tests.transport.meshkit import free_port

RACES = 200
TOKEN = "s3cret"
FAST = {"reconnect_initial": 0.05, "reconnect_max": 0.3}


async def eventually(predicate: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def service(replica: Replica, **options: Any) -> MeshService:
    """The mesh service `serve` would run for these options."""
    built = mesh_service_factory(replica, {"token": TOKEN, **FAST, **options})
    assert built is not None
    return built


class Cluster:
    """Arbiter A (listening on a fixed port) and claimants B and C dialing it."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.a = Replica.open(root / "a")
        self.b = Replica.open(root / "b")
        self.c = Replica.open(root / "c")
        self.arbiter: MeshService | None = None
        self.others: list[MeshService] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/agentstate"

    @property
    def replicas(self) -> list[Replica]:
        return [self.a, self.b, self.c]

    async def start_arbiter(self) -> None:
        self.arbiter = service(self.a, listen=f"127.0.0.1:{self.port}", arbiter=True)
        await self.arbiter.start()

    async def stop_arbiter(self) -> None:
        assert self.arbiter is not None
        await self.arbiter.stop()
        self.arbiter = None

    async def start(self) -> None:
        await self.start_arbiter()
        for replica in (self.b, self.c):
            dialer = service(replica, peers=[self.url])
            await dialer.start()
            self.others.append(dialer)
        await eventually(lambda: all(r.claims.arbiter() is not None for r in self.replicas), what="arbiter named")

    async def stop(self) -> None:
        for dialer in self.others:
            await dialer.stop()
        if self.arbiter is not None:
            await self.stop_arbiter()
        for replica in self.replicas:
            replica.close()


@asynccontextmanager
async def cluster(root: Path) -> AsyncIterator[Cluster]:
    """A started cluster, stopped and closed at the end."""
    running = Cluster(root)
    try:
        await running.start()
        yield running
    finally:
        await running.stop()


def race(replicas: list[Replica], task_id: str, agents: list[str], ttl: float = 600) -> list[ClaimResult]:
    """One claim per replica, all released at one barrier; results in replica order."""
    barrier = threading.Barrier(len(replicas))
    results: list[Any] = [None] * len(replicas)

    def claimant(index: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[index] = replicas[index].claims.claim(task_id, agents[index], ttl=ttl)
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=claimant, args=(i,)) for i in range(len(replicas))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a claimant hung"
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def holders_agree(replicas: list[Replica], task_id: str) -> bool:
    """True when every replica sees the same live holder of the task."""
    keys = set()
    for replica in replicas:
        holder = replica.claims.holder(task_id)
        keys.add(None if holder is None else holder.key)
    return len(keys) == 1 and None not in keys


async def test_races_through_the_arbiter_have_exactly_one_winner_each(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        with c.a.transaction():
            for r in range(RACES):
                c.a.tasks.create(f"race {r}", id=f"T-{r}")
        await eventually(lambda: all(f"T-{RACES - 1}" in r.tasks for r in (c.b, c.c)), what="tasks synced")
        assert c.b.claims.arbiter() is not None and c.b.claims.arbiter().url == c.url  # type: ignore[union-attr]
        bad: dict[int, list[str]] = {}
        for r in range(RACES):
            results = await asyncio.to_thread(race, c.replicas, f"T-{r}", ["agent-a", "agent-b", "agent-c"])
            states = sorted(result.state for result in results)
            if states != ["lost", "lost", "won"]:
                bad[r] = states
        assert not bad, f"races without exactly one winner: {dict(list(bad.items())[:5])}"
        await eventually(lambda: all(holders_agree(c.replicas, f"T-{r}") for r in (0, RACES // 2, RACES - 1)),
                         what="every replica to see the same holders")
        for r in range(RACES):
            holder = c.c.claims.holder(f"T-{r}")
            assert holder is not None and not holder.tentative and holder.epoch == 1


async def test_partitioned_claims_are_tentative_converge_on_one_winner_and_the_arbiter_is_exclusive_again(
        tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        c.a.tasks.create("contested while partitioned", id="T-split")
        c.a.tasks.create("contested after healing", id="T-healed")
        await eventually(lambda: all("T-healed" in r.tasks for r in (c.b, c.c)), what="tasks synced")
        await c.stop_arbiter()
        heard: dict[str, list[str]] = {"b": [], "c": []}
        c.b.subscribe(lambda e: heard["b"].append(e.id) if e.kind == "claim" and e.origin != "local" else None)
        c.c.subscribe(lambda e: heard["c"].append(e.id) if e.kind == "claim" and e.origin != "local" else None)
        on_b, on_c = await asyncio.to_thread(race, [c.b, c.c], "T-split", ["bob", "carol"])
        assert on_b.state == on_c.state == "tentative", (on_b, on_c)
        assert on_b.epoch == on_c.epoch == 1
        await c.start_arbiter()
        await eventually(lambda: holders_agree(c.replicas, "T-split"), what="one holder on every replica")
        winner = c.a.claims.holder("T-split")
        assert winner is not None and winner.agent in ("bob", "carol")
        loser, loser_replica, loser_key = ("carol", c.c, "c") if winner.agent == "bob" else ("bob", c.b, "b")
        assert loser_replica.claims.state_of("T-split", loser).state == "lost"
        assert c.a.claims.state_of("T-split", winner.agent).state == "tentative"
        await eventually(lambda: "T-split" in heard[loser_key], what="the loser's claim change event")
        results = await asyncio.to_thread(race, c.replicas, "T-healed", ["agent-a", "agent-b", "agent-c"])
        assert sorted(r.state for r in results) == ["lost", "lost", "won"]
        assert all(r.holder is not None and not r.holder.tentative for r in results)


async def test_a_retried_request_returns_the_first_answer_and_claims_once(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        c.a.tasks.create("retried", id="T-retry")
        request = ClaimRequest("claim", "rid-123", "T-retry", "bob", ttl=600.0)
        first = await ask(c.url, request, token=TOKEN)
        again = await ask(c.url, request, token=TOKEN)
        assert first.ok and again.ok and first.result == again.result and first.result["state"] == "won"
        assert again.update == first.update and first.update
        assert len(c.a.claims.attempts("T-retry")) == 1
        other = await ask(c.url, ClaimRequest("claim", "rid-456", "T-retry", "carol", ttl=600.0), token=TOKEN)
        assert other.ok and other.result is not None and other.result["state"] == "lost"
        renewed = await ask(c.url, ClaimRequest("renew", "rid-789", "T-retry", "carol", ttl=60.0, epoch=1),
                            token=TOKEN)
        assert renewed.error is not None and renewed.error.kind == "stale"


async def raw_exchange(url: str, frame: bytes | str, *, token: str | None = TOKEN, path: str = "") -> dict[str, Any]:
    """Send one raw frame as a claim request; the arbiter's answer as a plain map."""
    headers = {CLAIM_HEADER: "1"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with connect(url + path, additional_headers=headers, compression=None, proxy=None) as ws:
        await ws.send(frame)
        answer = await asyncio.wait_for(ws.recv(), 10)
    body = msgpack.unpackb(answer, raw=False)
    assert isinstance(body, dict)
    return body


async def test_bad_requests_get_clear_errors_and_change_nothing(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        c.a.tasks.create("guarded", id="T-guarded")
        good = encode_request(ClaimRequest("claim", "rid-1", "T-guarded", "mallory", ttl=60.0))
        await eventually(lambda: len({tuple(sorted(decode_state_vector(r.state_vector()).items()))
                                      for r in c.replicas}) == 1, what="the replicas to converge")
        before = c.a.state_vector()
        cases: list[tuple[bytes | str, dict[str, Any], str]] = [
            (b"\xc1not msgpack", {}, "malformed"),
            ("a text frame", {}, "malformed"),
            (msgpack.packb([1, 2, 3]), {}, "malformed"),
            (msgpack.packb({"v": 1, "op": "claim", "rid": "r", "task": "T-guarded", "agent": "m"}), {}, "malformed"),
            (msgpack.packb({"v": 1, "op": "claim", "rid": "r", "task": "T-guarded", "agent": "m", "ttl": 60.0,
                            "extra": 1}), {}, "malformed"),
            (msgpack.packb({"v": 2, "op": "claim", "rid": "r", "task": "T", "agent": "m", "ttl": 60.0}), {},
             "malformed"),
            (msgpack.packb({"v": 1, "op": "steal", "rid": "r", "task": "T", "agent": "m"}), {}, "malformed"),
            (msgpack.packb({"v": 1, "op": "claim", "rid": "r", "task": "a|b", "agent": "m", "ttl": 60.0}), {},
             "malformed"),
            (msgpack.packb({"v": 1, "op": "claim", "rid": "r", "task": "T", "agent": "m", "ttl": float("nan")}), {},
             "malformed"),
            (b"\x80" + b"x" * MAX_REQUEST_BYTES, {}, "too_large"),
            (good, {"token": "wrong"}, "unauthorized"),
            (good, {"token": None}, "unauthorized"),
            (good, {"path": "x"}, "room"),
        ]
        for frame, options, kind in cases:
            answer = await raw_exchange(c.url, frame, **options)
            assert answer["ok"] is False and answer["error"]["kind"] == kind, (frame[:40], answer)
            assert answer["error"]["message"], answer
        missing = await ask(c.url, ClaimRequest("claim", "rid-2", "T-none", "mallory", ttl=60.0), token=TOKEN)
        assert missing.error is not None and missing.error.kind == "not_found"
        await asyncio.sleep(0.1)
        assert c.a.state_vector() == before, "a refused request changed the arbiter's document"
        assert c.a.claims.attempts("T-guarded") == []
        assert c.arbiter is not None and c.arbiter.arbiter is not None
        assert c.arbiter.arbiter.counts.get("malformed", 0) >= 8


async def test_a_claimant_with_a_wrong_token_is_told_and_claims_nothing(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        c.a.tasks.create("guarded", id="T-token")
        await eventually(lambda: "T-token" in c.b.tasks, what="task synced")
        c.b.claims.link = ArbiterClient(c.b, token="wrong", timeout=2.0)
        with pytest.raises(ArbiterRefusedError, match="unauthorized"):
            await asyncio.to_thread(c.b.claims.claim, "T-token", "bob", 60)
        assert c.a.claims.attempts("T-token") == [] and c.b.claims.attempts("T-token") == []


def test_protocol_round_trip_and_strict_decoding() -> None:
    request = ClaimRequest("renew", "rid", "T-1", "alice", ttl=30.0, epoch=3)
    assert decode_request(encode_request(request)) == request
    with pytest.raises(ClaimProtocolError):
        ClaimRequest("claim", "rid", "T-1", "alice", ttl=30.0, epoch=1)
    with pytest.raises(ClaimProtocolError):
        ClaimRequest("release", "rid", "T-1", "alice")
    with pytest.raises(ClaimProtocolError):
        decode_response(msgpack.packb({"v": 1, "rid": "other", "ok": True, "result": {}, "update": b""}), "rid")
    with pytest.raises(ClaimProtocolError):
        decode_response(msgpack.packb({"v": 1, "rid": "rid", "ok": True, "result": {}}), "rid")


async def test_an_arbiter_with_claimants_connected_stops_promptly(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        c.a.tasks.create("held open", id="T-open")
        await eventually(lambda: "T-open" in c.b.tasks, what="task synced")
        result = await asyncio.to_thread(c.b.claims.claim, "T-open", "bob", 60)
        assert result.state == "won"
        started = time.monotonic()
        await c.stop_arbiter()
        assert time.monotonic() - started < 5, "the arbiter waited for an idle claimant's websocket"
        fallback = await asyncio.to_thread(c.b.claims.claim, "T-open", "bob", 60)
        assert fallback.state == "renewed"


async def test_the_cli_on_a_claimants_directory_claims_through_the_arbiter(tmp_path: Path) -> None:
    import os
    import sys

    async with cluster(tmp_path) as c:
        c.a.tasks.create("for the CLI", id="T-cli")
        await eventually(lambda: "T-cli" in c.b.tasks, what="task synced")
        env = {**os.environ, "AGENTSTATE_TOKEN": TOKEN}
        env.pop("AGENTSTATE_AGENT", None)

        async def cli(*args: str) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "replica.app.cli", "--data", str(tmp_path / "b"), *args,
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            return proc.returncode or 0, (out + err).decode()

        code, text = await cli("task", "claim", "T-cli", "--agent", "zed")
        assert code == 0 and text.startswith("won: T-cli epoch 1"), text
        holder = c.a.claims.holder("T-cli")
        assert holder is not None and holder.agent == "zed" and not holder.tentative
        code, text = await cli("task", "claim", "T-cli", "--agent", "yan")
        assert code == 7 and "held by zed" in text, text
        code, text = await cli("task", "claim-state", "T-cli", "--agent", "zed")
        assert code == 0 and text.startswith("won: T-cli epoch 1"), text
        env["AGENTSTATE_TOKEN"] = "wrong"
        code, text = await cli("task", "release", "T-cli", "--agent", "zed", "--epoch", "1")
        assert code == 6 and "unauthorized" in text and "Traceback" not in text, text
        assert c.a.claims.holder("T-cli") is not None
