"""Claims: who works on a task, with leases and fencing epochs.

A CRDT alone cannot make a claim exclusive (with last-writer-wins, two agents that claim at
once both believe they won until they merge), so a claim is a compare-and-set where
something arbitrates, and honest where nothing can:

* among the processes on one directory: the claim runs inside a write scope, under the log's
  append lock after catching up on every other process's records, so exactly one of any
  number of concurrent claimants wins;
* across replicas, every claim attempt is kept (root `claims`, one key per attempt, so
  concurrent attempts from different replicas all survive) and the holder is
  a pure function of them: the highest epoch wins; among attempts at one epoch, an
  arbitrated one beats a tentative one, then the earlier, then the smaller attempt key.
  Every replica computes the same holder; a claimant that lost learns it (`state` "lost");
* a lease expires at `expires` (unix seconds); renew extends it, release and complete end
  it; a new holder takes the next epoch, and a write fenced with an older epoch is refused
  (`StaleClaimError`), so an agent that slept past its lease cannot clobber the next holder.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pycrdt import Map

from .errors import FieldError, NotFoundError, ReplicaError
from .schema import observe_keys, plain

if TYPE_CHECKING:
    from .access import DocAccess
    from .tasks import TaskBoard

CLAIMS = "claims"
"""Root map: `task id|epoch|agent|nonce` -> plain attempt object (see docs/schema.md). Flat keys,
so attempts made concurrently on different replicas never replace each other."""
MIN_TTL = 1.0
MAX_TTL = 7 * 24 * 3600.0
DEFAULT_TTL = 15 * 60.0
MAX_AGENT = 200
State = Literal["won", "lost", "tentative", "renewed", "released", "completed"]


class StaleClaimError(ReplicaError):
    """A write fenced with an epoch that is no longer the task's current claim (the lease passed on)."""

    def __init__(self, task_id: str, given: int, current: Claim | None) -> None:
        holder = f"{current.agent} holds epoch {current.epoch}" if current is not None else "no one holds it"
        super().__init__(f"task {task_id}: claim epoch {given} is stale ({holder}); claim it again")
        self.task_id = task_id
        self.given = given
        self.current = current


@dataclass(frozen=True)
class Claim:
    """One claim attempt: who, at which epoch, until when, and whether it is still held."""

    key: str
    task_id: str
    agent: str
    epoch: int
    expires: float
    at: float
    writer: str
    tentative: bool
    ended: str | None

    @property
    def live(self) -> bool:
        """Held now: not released, not completed, lease not expired."""
        return self.ended is None and self.expires > time.time()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"task_id": self.task_id, "agent": self.agent, "epoch": self.epoch, "expires": self.expires,
                "tentative": self.tentative, "ended": self.ended, "live": self.live}

    @classmethod
    def parse(cls, task_id: str, key: str, raw: Any) -> Claim | None:
        """A stored attempt, or None for anything malformed (a peer's junk is ignored)."""
        if not isinstance(raw, dict):
            return None
        try:
            ended = raw.get("ended")
            return cls(key, task_id, str(raw["agent"]), int(raw["epoch"]), float(raw["expires"]),
                       float(raw["at"]), str(raw.get("writer", "")), bool(raw.get("tentative", False)),
                       str(ended) if ended is not None else None)
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class ClaimResult:
    """What a claim call decided: the state for the caller, and the claim that holds the task now."""

    state: State
    task_id: str
    agent: str
    epoch: int | None
    expires: float | None
    holder: Claim | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the CLI and MCP answer)."""
        return {"state": self.state, "task_id": self.task_id, "agent": self.agent, "epoch": self.epoch,
                "expires": self.expires, "holder": self.holder.as_dict() if self.holder is not None else None}


def _check_agent(agent: object) -> str:
    if not isinstance(agent, str) or not agent.strip() or len(agent) > MAX_AGENT or "|" in agent:
        raise FieldError("claim", "agent", f"must be 1-{MAX_AGENT} characters without '|'")
    return agent


def _check_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not MIN_TTL <= float(ttl) <= MAX_TTL:
        raise FieldError("claim", "ttl", f"must be {MIN_TTL:g} to {MAX_TTL:g} seconds")
    return float(ttl)


def winner(attempts: list[Claim]) -> Claim | None:
    """The attempt that holds the claim history: highest epoch, then arbitrated, earlier, smaller key."""
    if not attempts:
        return None
    return min(attempts, key=lambda c: (-c.epoch, c.tentative, c.at, c.key))


class Claims:
    """Claims on the tasks of one replica (root `claims`)."""

    def __init__(self, access: DocAccess, tasks: TaskBoard) -> None:
        self._access = access
        self._tasks = tasks
        self._root = access.doc.get(CLAIMS, type=Map)
        self._index: dict[str, set[str]] | None = None
        access.keep_subscription(observe_keys(self._root, self._forget_index))
        self.tentative = False
        """Set by a replica that syncs with peers but cannot reach an arbiter: its claims say so."""

    @property
    def _writer(self) -> str:
        return f"{self._access.replica_id}.{self._access.client_id}"

    def _forget_index(self, keys: Any) -> None:
        self._index = None

    def attempts(self, task_id: str) -> list[Claim]:
        """Every claim attempt on a task (all replicas', once synced)."""
        with self._access.read():
            if self._index is None:
                index: dict[str, set[str]] = {}
                for key in self._root.keys():
                    index.setdefault(key.split("|", 1)[0], set()).add(key)
                self._index = index
            raw = {key.split("|", 1)[1]: plain(self._root.get(key)) for key in self._index.get(task_id, ())}
        found = [Claim.parse(task_id, key, value) for key, value in raw.items()]
        return [c for c in found if c is not None]

    def holder(self, task_id: str) -> Claim | None:
        """The claim that holds the task now (live), or None."""
        current = winner(self.attempts(task_id))
        return current if current is not None and current.live else None

    def _current(self, task_id: str) -> tuple[Claim | None, list[Claim]]:
        attempts = self.attempts(task_id)
        return winner(attempts), attempts

    def _put(self, task_id: str, key: str, body: dict[str, Any]) -> None:
        self._root[f"{task_id}|{key}"] = body

    def claim(self, task_id: str, agent: str, ttl: float = DEFAULT_TTL) -> ClaimResult:
        """Take the task for `agent` for `ttl` seconds: won (new epoch), or lost (who holds it, until when).

        The agent that already holds it gets its lease extended (as `renew`)."""
        agent, ttl = _check_agent(agent), _check_ttl(ttl)
        with self._access.write():
            if task_id not in self._tasks:
                raise NotFoundError("task", task_id)
            current, _ = self._current(task_id)
            if current is not None and current.live:
                if current.agent == agent:
                    return self._extend(current, ttl, "renewed")
                return ClaimResult("lost", task_id, agent, None, None, current)
            epoch = (current.epoch if current is not None else 0) + 1
            now = time.time()
            key = f"{epoch}|{agent}|{secrets.token_hex(4)}"
            body = {"agent": agent, "epoch": epoch, "expires": now + ttl, "at": now, "writer": self._writer,
                    "tentative": self.tentative, "ended": None}
            self._put(task_id, key, body)
            mine = Claim.parse(task_id, key, body)
            assert mine is not None
        return ClaimResult("tentative" if self.tentative else "won", task_id, agent, epoch, mine.expires, mine)

    def _extend(self, claim: Claim, ttl: float, state: State) -> ClaimResult:
        body = {"agent": claim.agent, "epoch": claim.epoch, "expires": time.time() + ttl, "at": claim.at,
                "writer": claim.writer, "tentative": claim.tentative, "ended": None}
        self._put(claim.task_id, claim.key, body)
        renewed = Claim.parse(claim.task_id, claim.key, body)
        return ClaimResult(state, claim.task_id, claim.agent, claim.epoch, body["expires"], renewed)

    def _held_by(self, task_id: str, agent: str, epoch: int) -> Claim:
        current, _ = self._current(task_id)
        if current is None or not current.live or current.agent != agent or current.epoch != epoch:
            raise StaleClaimError(task_id, epoch, current if current is not None and current.live else None)
        return current

    def renew(self, task_id: str, agent: str, epoch: int, ttl: float = DEFAULT_TTL) -> ClaimResult:
        """Extend a live lease held by `agent` at `epoch`; StaleClaimError if it passed on or expired."""
        agent, ttl = _check_agent(agent), _check_ttl(ttl)
        with self._access.write():
            return self._extend(self._held_by(task_id, agent, epoch), ttl, "renewed")

    def release(self, task_id: str, agent: str, epoch: int, *, ended: str = "released") -> ClaimResult:
        """End a lease held by `agent` at `epoch` (others may claim at once); StaleClaimError otherwise."""
        agent = _check_agent(agent)
        with self._access.write():
            held = self._held_by(task_id, agent, epoch)
            body = {"agent": held.agent, "epoch": held.epoch, "expires": held.expires, "at": held.at,
                    "writer": held.writer, "tentative": held.tentative, "ended": ended}
            self._put(task_id, held.key, body)
        return ClaimResult("released" if ended == "released" else "completed", task_id, agent, epoch, None, None)

    def complete(self, task_id: str, agent: str, epoch: int) -> ClaimResult:
        """Mark the task completed and end the lease, in one write fenced by the epoch."""
        with self._access.write():
            self.check_fence(task_id, agent, epoch)
            self._tasks.update(task_id, status="completed")
            return self.release(task_id, agent, epoch, ended="completed")

    def check_fence(self, task_id: str, agent: str, epoch: int) -> None:
        """Refuse (StaleClaimError) unless `agent` holds the task's live claim at `epoch` (inside a write)."""
        self._held_by(task_id, _check_agent(agent), epoch)

    def next_task(self, agent: str | None = None) -> str | None:
        """The task to take next: pending, every dependency completed, unclaimed (or `agent`'s own),
        highest priority first, then oldest. None when there is none."""
        rank = {"critical": 0, "high": 1, "medium": 2, "low": 3}
        tasks = self._tasks.list()
        done = {t.id for t in tasks if t.status.value in ("completed", "cancelled")}
        ready = [t for t in tasks if t.status.value == "pending" and all(d in done for d in t.depends_on)]
        ready.sort(key=lambda t: (rank.get(t.priority.value, 9), t.created_at, t.id))
        for task in ready:
            held = self.holder(task.id)
            if held is None or held.agent == agent:
                return task.id
        return None

    def translate(self, events: list[Any], origin: str, peer: str | None) -> list[Any]:
        """Change events for the claims root: one per task whose claims changed (re-read its state)."""
        from .changes import ChangeEvent

        touched: set[str] = set()
        for event in events:
            path = list(event.path)
            touched.update(str(key).split("|", 1)[0] for key in ([path[0]] if path else event.keys))
        return [ChangeEvent("claim", task_id, None, "update", None, None, origin, peer)  # type: ignore[arg-type]
                for task_id in sorted(touched)]

    def state_of(self, task_id: str, agent: str) -> ClaimResult:
        """What `agent` should believe now: won (it holds it), lost (someone else), or released."""
        current, attempts = self._current(task_id)
        mine = [c for c in attempts if c.agent == agent]
        if current is not None and current.live and current.agent == agent:
            return ClaimResult("tentative" if current.tentative else "won", task_id, agent, current.epoch,
                               current.expires, current)
        if mine and current is not None and current.live:
            return ClaimResult("lost", task_id, agent, None, None, current)
        return ClaimResult("released", task_id, agent, None, None, current if current and current.live else None)
