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
* a room may name a claim arbiter (`meta.arbiter`: its replica id and URL). A claimant on
  another replica sends the operation to it through an `ArbiterLink` (the transport installs
  one); the arbiter decides under its own directory's append lock, writes the attempt and
  answers with the update, which the claimant applies at once. A claimant that cannot reach
  it decides locally and marks the attempt tentative; the rule above settles it on heal;
* a lease expires at `expires` (unix seconds); renew extends it, release and complete end
  it; a new holder takes the next epoch, and a write fenced with an older epoch is refused
  (`StaleClaimError`), so an agent that slept past its lease cannot clobber the next holder.

Every operation may carry a request id, kept in the attempt it writes (`request`), so a retry
after a lost reply, here or at the arbiter, finds its own write and answers from it instead of
claiming twice.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pycrdt import Map

from .errors import FieldError, NotFoundError, ReplicaError
from .schema import META, observe_keys, plain

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
ARBITER_KEY = "arbiter"
"""Key in the `meta` root naming the room's claim arbiter: `{"replica_id", "url", "at"}`."""
MAX_URL = 2000
MAX_REQUEST_ID = 100
State = Literal["won", "lost", "tentative", "renewed", "released", "completed"]
Op = Literal["claim", "renew", "release", "complete"]


class ArbiterRefusedError(ReplicaError):
    """The arbiter was reached but refused the request (wrong token, read-only token, wrong room)."""


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
    request: str | None = None

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
            request = raw.get("request")
            return cls(key, task_id, str(raw["agent"]), int(raw["epoch"]), float(raw["expires"]),
                       float(raw["at"]), str(raw.get("writer", "")), bool(raw.get("tentative", False)),
                       str(ended) if ended is not None else None, str(request) if request is not None else None)
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Arbiter:
    """The room's claim arbiter: the replica that decides claims, and the URL claimants send them to."""

    replica_id: str
    url: str
    at: float

    @classmethod
    def parse(cls, raw: Any) -> Arbiter | None:
        """The stored entry, or None when absent or malformed (a peer's junk names no arbiter)."""
        if not isinstance(raw, dict):
            return None
        replica_id, url, at = raw.get("replica_id"), raw.get("url"), raw.get("at", 0)
        if not isinstance(replica_id, str) or not replica_id or not isinstance(url, str) \
                or not url.startswith(("ws://", "wss://")) or len(url) > MAX_URL \
                or isinstance(at, bool) or not isinstance(at, (int, float)):
            return None
        return cls(replica_id, url, float(at))

    def as_dict(self) -> dict[str, Any]:
        """The stored (and JSON) form."""
        return {"replica_id": self.replica_id, "url": self.url, "at": self.at}


@dataclass(frozen=True)
class ArbiterCall:
    """One operation a claimant asks the arbiter to decide."""

    op: Op
    request_id: str
    task_id: str
    agent: str
    ttl: float | None = None
    epoch: int | None = None


@dataclass(frozen=True)
class ArbiterAnswer:
    """What the arbiter said: a result (its update already applied here) or an error kind and message."""

    result: dict[str, Any] | None
    error: str | None = None
    message: str = ""


class ArbiterLink(Protocol):
    """How a claimant reaches the arbiter (the transport provides one: `transport.arbiter.ArbiterClient`)."""

    def send(self, arbiter: Arbiter, call: ArbiterCall) -> ArbiterAnswer | None:
        """Ask `arbiter` to decide `call` and apply the update it answers with; None if it cannot be reached."""


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClaimResult:
        """A result as `as_dict` wrote it (an arbiter's answer); FieldError if it is not one."""
        try:
            state = data["state"]
            if state not in ("won", "lost", "tentative", "renewed", "released", "completed"):
                raise ValueError(state)
            holder_raw = data.get("holder")
            holder = None
            if isinstance(holder_raw, dict):
                holder = Claim.parse(str(data["task_id"]), "", {**holder_raw, "at": holder_raw.get("at", 0)})
            epoch, expires = data.get("epoch"), data.get("expires")
            return cls(state, str(data["task_id"]), str(data["agent"]), int(epoch) if epoch is not None else None,
                       float(expires) if expires is not None else None, holder)
        except (KeyError, TypeError, ValueError):
            raise FieldError("claim", "result", "the arbiter's answer is not a claim result") from None


def _check_agent(agent: object) -> str:
    if not isinstance(agent, str) or not agent.strip() or len(agent) > MAX_AGENT or "|" in agent:
        raise FieldError("claim", "agent", f"must be 1-{MAX_AGENT} characters without '|'")
    return agent


def _check_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not MIN_TTL <= float(ttl) <= MAX_TTL:
        raise FieldError("claim", "ttl", f"must be {MIN_TTL:g} to {MAX_TTL:g} seconds")
    return float(ttl)


def _check_request_id(request_id: object) -> str:
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID or not request_id.isascii() \
            or not request_id.isprintable():
        raise FieldError("claim", "request_id", f"must be 1-{MAX_REQUEST_ID} printable ASCII characters")
    return request_id


def winner(attempts: list[Claim]) -> Claim | None:
    """The attempt that holds the claim history: highest epoch, then arbitrated, earlier, smaller key."""
    if not attempts:
        return None
    return min(attempts, key=lambda c: (-c.epoch, c.tentative, c.at, c.key))


class Claims:
    """Claims on the tasks of one replica (root `claims`), decided here or by the room's arbiter."""

    def __init__(self, access: DocAccess, tasks: TaskBoard) -> None:
        self._access = access
        self._tasks = tasks
        self._root = access.doc.get(CLAIMS, type=Map)
        self._meta = access.doc.get(META, type=Map)
        self._index: dict[str, set[str]] | None = None
        access.keep_subscription(observe_keys(self._root, self._forget_index))
        self.tentative = False
        """Set by a replica that syncs with peers but cannot reach an arbiter: its claims say so."""
        self.link: ArbiterLink | None = None
        """How to reach the room's arbiter; without one, claims on a room with a remote arbiter are tentative."""

    @property
    def _writer(self) -> str:
        return f"{self._access.replica_id}.{self._access.client_id}"

    def _forget_index(self, keys: Any) -> None:
        """Add new attempt keys to the index (a deleted key reads back as nothing, so it may stay)."""
        index = self._index
        if index is None:
            return
        for key in keys:
            if isinstance(key, str) and "|" in key:
                index.setdefault(key.split("|", 1)[0], set()).add(key)

    # -- the arbiter -------------------------------------------------------------------------

    def arbiter(self) -> Arbiter | None:
        """The room's claim arbiter as the document names it (None: claims are decided by each replica)."""
        with self._access.read():
            return Arbiter.parse(plain(self._meta.get(ARBITER_KEY)))

    def name_arbiter(self, url: str) -> Arbiter:
        """Make this replica the room's arbiter, reachable at `url` (written only if it changes)."""
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")) or len(url) > MAX_URL:
            raise FieldError("arbiter", "url", f"must be a ws:// or wss:// URL of at most {MAX_URL} characters")
        with self._access.write():
            current = Arbiter.parse(plain(self._meta.get(ARBITER_KEY)))
            if current is not None and current.replica_id == self._access.replica_id and current.url == url:
                return current
            named = Arbiter(self._access.replica_id, url, time.time())
            self._meta[ARBITER_KEY] = named.as_dict()
        return named

    def _ask_arbiter(self, call: ArbiterCall) -> tuple[ClaimResult | None, bool]:
        """(the arbiter's decision, or None to decide here; whether a claim decided here is tentative)."""
        arbiter = self.arbiter()
        if arbiter is None or arbiter.replica_id == self._access.replica_id:
            return None, self.tentative
        link = self.link
        if link is None:
            return None, True
        answer = link.send(arbiter, call)
        if answer is None:
            return None, True
        if answer.error is None and answer.result is not None:
            return ClaimResult.from_dict(answer.result), False
        message = answer.message or str(answer.error)
        if answer.error == "not_found":
            raise NotFoundError("task", call.task_id)
        if answer.error == "stale":
            holder = ClaimResult.from_dict(answer.result).holder if answer.result is not None else None
            raise StaleClaimError(call.task_id, call.epoch or 0, holder)
        if answer.error == "invalid":
            raise FieldError("claim", "request", f"the arbiter refused it: {message}")
        raise ArbiterRefusedError(f"the claim arbiter at {arbiter.url} refused the request ({answer.error}): {message}")

    def _replay(self, op: Op, task_id: str, agent: str, request_id: str | None) -> ClaimResult | None:
        """The answer to an operation already applied with `request_id` (inside a write), or None.

        The last operation that wrote an attempt leaves its request id in it, so a retry finds
        it among the task's attempts: a claim answers what the claimant holds now, a renew
        the lease, a release or completion that it ended."""
        if request_id is None:
            return None
        done = next((c for c in self.attempts(task_id) if c.request == request_id and c.agent == agent), None)
        if done is None:
            return None
        if op == "claim":
            return self.state_of(task_id, agent)
        if op == "renew":
            return ClaimResult("renewed", task_id, agent, done.epoch, done.expires, done)
        if done.ended == ("completed" if op == "complete" else "released"):
            return ClaimResult(done.ended, task_id, agent, done.epoch, None, None)  # type: ignore[arg-type]
        return None

    # -- operations ------------------------------------------------------------------------------

    def attempts(self, task_id: str) -> list[Claim]:
        """Every claim attempt on a task (all replicas', once synced)."""
        with self._access.read():
            if self._index is None:
                index: dict[str, set[str]] = {}
                for key in self._root.keys():
                    index.setdefault(key.split("|", 1)[0], set()).add(key)
                self._index = index
            raw = {key.split("|", 1)[1]: plain(self._root.get(key)) for key in self._index.get(task_id, ())
                   if "|" in key}
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

    def claim(self, task_id: str, agent: str, ttl: float = DEFAULT_TTL, *,
              request_id: str | None = None) -> ClaimResult:
        """Take the task for `agent` for `ttl` seconds: won (new epoch), or lost (who holds it, until when).

        The agent that already holds it gets its lease extended (as `renew`). With an arbiter
        named elsewhere, it decides; unreachable, the claim is made here as `tentative`."""
        agent, ttl = _check_agent(agent), _check_ttl(ttl)
        request_id = _check_request_id(request_id) if request_id is not None else secrets.token_hex(16)
        if task_id not in self._tasks:
            raise NotFoundError("task", task_id)
        decided, tentative = self._ask_arbiter(ArbiterCall("claim", request_id, task_id, agent, ttl=ttl))
        if decided is not None:
            return decided
        return self.decide_claim(task_id, agent, ttl, request_id=request_id, tentative=tentative)

    def decide_claim(self, task_id: str, agent: str, ttl: float, *, request_id: str | None = None,
                     tentative: bool = False) -> ClaimResult:
        """Decide a claim on this replica, under the log's append lock (what the arbiter runs)."""
        agent, ttl = _check_agent(agent), _check_ttl(ttl)
        with self._access.write():
            if task_id not in self._tasks:
                raise NotFoundError("task", task_id)
            seen = self._replay("claim", task_id, agent, request_id)
            if seen is not None:
                return seen
            current, _ = self._current(task_id)
            if current is not None and current.live:
                if current.agent == agent:
                    return self._extend(current, ttl, "renewed", request_id)
                return ClaimResult("lost", task_id, agent, None, None, current)
            epoch = (current.epoch if current is not None else 0) + 1
            now = time.time()
            key = f"{epoch}|{agent}|{secrets.token_hex(4)}"
            body = {"agent": agent, "epoch": epoch, "expires": now + ttl, "at": now, "writer": self._writer,
                    "tentative": tentative, "ended": None, "request": request_id}
            self._put(task_id, key, body)
            mine = Claim.parse(task_id, key, body)
            assert mine is not None
            return ClaimResult("tentative" if tentative else "won", task_id, agent, epoch, mine.expires, mine)

    def _extend(self, claim: Claim, ttl: float, state: State, request_id: str | None = None) -> ClaimResult:
        body = {"agent": claim.agent, "epoch": claim.epoch, "expires": time.time() + ttl, "at": claim.at,
                "writer": claim.writer, "tentative": claim.tentative, "ended": None, "request": request_id}
        self._put(claim.task_id, claim.key, body)
        renewed = Claim.parse(claim.task_id, claim.key, body)
        return ClaimResult(state, claim.task_id, claim.agent, claim.epoch, body["expires"], renewed)

    def _held_by(self, task_id: str, agent: str, epoch: int) -> Claim:
        current, _ = self._current(task_id)
        if current is None or not current.live or current.agent != agent or current.epoch != epoch:
            raise StaleClaimError(task_id, epoch, current if current is not None and current.live else None)
        return current

    def _fenced(self, op: Op, task_id: str, agent: str, epoch: int, ttl: float | None,
                request_id: str | None) -> ClaimResult:
        """Run renew, release or complete: at the arbiter if one is named and reachable, else here."""
        agent = _check_agent(agent)
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise FieldError("claim", "epoch", "must be an integer")
        request_id = _check_request_id(request_id) if request_id is not None else secrets.token_hex(16)
        decided, _ = self._ask_arbiter(ArbiterCall(op, request_id, task_id, agent, ttl=ttl, epoch=epoch))
        if decided is not None:
            return decided
        return self.decide_fenced(op, task_id, agent, epoch, ttl, request_id=request_id)

    def decide_fenced(self, op: Op, task_id: str, agent: str, epoch: int, ttl: float | None = None, *,
                      request_id: str | None = None) -> ClaimResult:
        """Decide renew, release or complete on this replica, fenced by `epoch` (what the arbiter runs)."""
        agent = _check_agent(agent)
        with self._access.write():
            if op == "claim":
                raise FieldError("claim", "op", "a claim is not fenced")
            if task_id not in self._tasks:
                raise NotFoundError("task", task_id)
            seen = self._replay(op, task_id, agent, request_id)
            if seen is not None:
                return seen
            held = self._held_by(task_id, agent, epoch)
            if op == "renew":
                return self._extend(held, _check_ttl(ttl), "renewed", request_id)
            if op == "complete":
                self._tasks.update(task_id, status="completed")
            ended = "completed" if op == "complete" else "released"
            body = {"agent": held.agent, "epoch": held.epoch, "expires": held.expires, "at": held.at,
                    "writer": held.writer, "tentative": held.tentative, "ended": ended, "request": request_id}
            self._put(task_id, held.key, body)
            state: State = "completed" if op == "complete" else "released"
            return ClaimResult(state, task_id, agent, epoch, None, None)

    def renew(self, task_id: str, agent: str, epoch: int, ttl: float = DEFAULT_TTL, *,
              request_id: str | None = None) -> ClaimResult:
        """Extend a live lease held by `agent` at `epoch`; StaleClaimError if it passed on or expired."""
        return self._fenced("renew", task_id, agent, epoch, _check_ttl(ttl), request_id)

    def release(self, task_id: str, agent: str, epoch: int, *, request_id: str | None = None) -> ClaimResult:
        """End a lease held by `agent` at `epoch` (others may claim at once); StaleClaimError otherwise."""
        return self._fenced("release", task_id, agent, epoch, None, request_id)

    def complete(self, task_id: str, agent: str, epoch: int, *, request_id: str | None = None) -> ClaimResult:
        """Mark the task completed and end the lease, in one write fenced by the epoch."""
        return self._fenced("complete", task_id, agent, epoch, None, request_id)

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
