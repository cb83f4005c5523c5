"""Claims with leases: exclusive among the processes of one directory, one winner everywhere after a partition.

The race test runs real processes meeting at a barrier before every round, so that all
of them claim the same task at the same moment.
"""

from __future__ import annotations

import multiprocessing
import queue
from pathlib import Path

import pytest

from replica import FieldError, NotFoundError, Replica
from replica.claims import StaleClaimError

from .helpers import exchange, memory_replica, wait_until

RACERS = 8
ROUNDS = 500


def _racer(path: str, index: int, rounds: int, barrier: "multiprocessing.synchronize.Barrier",
           results: "multiprocessing.Queue[tuple[int, int, str]]") -> None:
    with Replica.open(path) as replica:
        for r in range(rounds):
            barrier.wait(timeout=60)
            state = replica.claims.claim(f"T-{r}", f"agent-{index}", ttl=600).state
            results.put((r, index, state))


def test_racing_processes_on_one_directory_have_exactly_one_winner_per_round(tmp_path: Path) -> None:
    with Replica.open(tmp_path) as setup, setup.transaction():
        for r in range(ROUNDS):
            setup.tasks.create(f"round {r}", id=f"T-{r}")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(RACERS)
    results: multiprocessing.Queue[tuple[int, int, str]] = ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(tmp_path), i, ROUNDS, barrier, results)) for i in range(RACERS)]
    for proc in procs:
        proc.start()
    outcomes: dict[int, list[str]] = {}
    try:
        for _ in range(RACERS * ROUNDS):
            r, _, state = results.get(timeout=120)
            outcomes.setdefault(r, []).append(state)
    except queue.Empty:
        pytest.fail(f"racers stalled after {sum(len(v) for v in outcomes.values())} claims")
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    assert all(proc.exitcode == 0 for proc in procs)
    bad = {r: states for r, states in outcomes.items() if sorted(states) != ["lost"] * (RACERS - 1) + ["won"]}
    assert not bad, f"rounds without exactly one winner: {dict(list(bad.items())[:5])}"
    with Replica.open(tmp_path) as check:
        for r in (0, ROUNDS // 2, ROUNDS - 1):
            holder = check.claims.holder(f"T-{r}")
            assert holder is not None and holder.epoch == 1


def test_a_lease_expires_and_the_next_holder_fences_out_the_old_one() -> None:
    r = memory_replica(1, "r-a")
    r.tasks.create("work", id="T-1")
    first = r.claims.claim("T-1", "alice", ttl=1)
    assert first.state == "won" and first.epoch == 1
    assert r.claims.claim("T-1", "bob", ttl=60).state == "lost"
    assert wait_until(lambda: r.claims.holder("T-1") is None, timeout=5, interval=0.05)
    second = r.claims.claim("T-1", "bob", ttl=60)
    assert second.state == "won" and second.epoch == 2
    with pytest.raises(StaleClaimError):
        r.claims.renew("T-1", "alice", 1)
    with pytest.raises(StaleClaimError):
        r.claims.complete("T-1", "alice", 1)
    assert r.tasks.get("T-1").status.value == "pending", "a stale completion changed the task"
    assert r.claims.state_of("T-1", "alice").state == "lost"
    assert r.claims.renew("T-1", "bob", 2, ttl=120).state == "renewed"
    assert r.claims.complete("T-1", "bob", 2).state == "completed"
    assert r.tasks.get("T-1").status.value == "completed" and r.claims.holder("T-1") is None


def test_release_lets_another_agent_claim_at_once_with_a_higher_epoch() -> None:
    r = memory_replica(2, "r-a")
    r.tasks.create("work", id="T-1")
    won = r.claims.claim("T-1", "alice", ttl=60)
    assert r.claims.claim("T-1", "alice", ttl=60).state == "renewed"
    assert r.claims.release("T-1", "alice", won.epoch or 0).state == "released"
    taken = r.claims.claim("T-1", "bob", ttl=60)
    assert taken.state == "won" and taken.epoch == 2


def test_bad_claims_are_clear_errors() -> None:
    r = memory_replica(3, "r-a")
    r.tasks.create("work", id="T-1")
    with pytest.raises(NotFoundError):
        r.claims.claim("T-none", "alice")
    for agent in ("", "a|b", "x" * 201):
        with pytest.raises(FieldError):
            r.claims.claim("T-1", agent)
    for ttl in (0, -5, 10**9, True):
        with pytest.raises(FieldError):
            r.claims.claim("T-1", "alice", ttl=ttl)  # type: ignore[arg-type]
    assert r.claims.holder("T-1") is None


def test_partitioned_tentative_claims_converge_on_one_winner_and_the_loser_learns_it() -> None:
    a, b = memory_replica(10, "r-a"), memory_replica(20, "r-b")
    a.tasks.create("contested", id="T-1")
    exchange(a, b)
    a.claims.tentative = b.claims.tentative = True
    heard: list[str] = []
    a.subscribe(lambda event: heard.append(f"{event.kind}:{event.id}:{event.origin}"))
    on_a = a.claims.claim("T-1", "alice", ttl=600)
    on_b = b.claims.claim("T-1", "bob", ttl=600)
    assert on_a.state == on_b.state == "tentative" and on_a.epoch == on_b.epoch == 1
    exchange(a, b)
    holder_a, holder_b = a.claims.holder("T-1"), b.claims.holder("T-1")
    assert holder_a is not None and holder_b is not None and holder_a.key == holder_b.key
    states = {a.claims.state_of("T-1", "alice").state, b.claims.state_of("T-1", "bob").state}
    assert states == {"tentative", "lost"}
    assert "claim:T-1:remote" in heard


def test_next_task_is_the_most_urgent_ready_unclaimed_one() -> None:
    r = memory_replica(4, "r-a")
    r.tasks.create("low", id="T-low", priority="low")
    r.tasks.create("blocked by dep", id="T-dep", priority="critical", depends_on=["T-low"])
    r.tasks.create("high", id="T-high", priority="high")
    r.tasks.create("high but claimed", id="T-taken", priority="critical")
    r.claims.claim("T-taken", "bob", ttl=600)
    assert r.claims.next_task("alice") == "T-high"
    assert r.claims.next_task("bob") == "T-taken"
    r.tasks.update("T-high", status="completed")
    r.tasks.update("T-low", status="completed")
    assert r.claims.next_task("alice") == "T-dep"
