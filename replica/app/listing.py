"""Task listings as JSON text, each task encoded once while the replica hands back the same validated Task.

`agentstate task list --json` prints what `json.dumps(result, sort_keys=True)` would print;
building that text from 1,000 `model_dump` calls and one big `json.dumps` cost more than
reading the board. `TaskBoard.list()` reuses a Task object while its stored fields are
equal (Tasks are frozen), so a task's text is a pure function of that object: it is kept
beside the object and rebuilt when the object changes; nothing can go stale. The daemon
sends the text as one JSON string, which the CLI prints as it is.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

if TYPE_CHECKING:
    from replica.models import Task
    from replica.replica import Replica

COUNT_KEY = "open_conflicts"
"""The field a listing adds to each task: how many of its conflicts are open."""

_Encoded = tuple["Task", str, str]
"""A task, and its JSON text before and after the `open_conflicts` member (keys sorted)."""
_TEXTS: WeakKeyDictionary[Any, dict[str, _Encoded]] = WeakKeyDictionary()
"""Per task board (dropped with its replica): the last listing's encoded tasks by id."""
_ENCODE = json.JSONEncoder(sort_keys=True).encode
"""What `json.dumps(value, sort_keys=True)` does, without building an encoder per call (1,000 per listing)."""
_PLACEHOLDER = f', "{COUNT_KEY}": 0'
"""The count member as the encoder writes it after the keys sorted before it (a task always has some: `id`)."""
_LOCK = threading.Lock()
"""The daemon lists on worker threads; this guards `_TEXTS` itself (the encoding runs outside it)."""


def _encode(task: Task) -> _Encoded:
    """`task`'s sorted-keys JSON text split where `open_conflicts` goes, so the count is spliced in per listing.

    One encoding with a placeholder count, split at the one `, "open_conflicts": 0` (never inside a
    string: quotes there are escaped); if a value holds that member too, the two halves are encoded apart."""
    dumped = task.model_dump(mode="json")
    text = _ENCODE({**dumped, COUNT_KEY: 0})
    if text.count(_PLACEHOLDER) == 1 and not text.startswith("{" + _PLACEHOLDER[2:]):
        head, _, tail = text.partition(_PLACEHOLDER)
        return task, head + _PLACEHOLDER[:-1], tail
    before = _ENCODE({k: v for k, v in dumped.items() if k < COUNT_KEY})[1:-1]
    after = _ENCODE({k: v for k, v in dumped.items() if k > COUNT_KEY})[1:-1]
    return task, "{" + (before + ", " if before else "") + f'"{COUNT_KEY}": ', (", " + after if after else "") + "}"


def task_texts(r: Replica, tasks: list[Task], open_counts: dict[str, int], *, complete: bool) -> list[str]:
    """Each task's JSON text with its open conflict count; `complete`: `tasks` is the whole board (prunes the cache)."""
    board = r.tasks
    with _LOCK:
        known = _TEXTS.get(board) or {}
    fresh: dict[str, _Encoded] = {} if complete else dict(known)
    texts: list[str] = []
    for task in tasks:
        hit = known.get(task.id)
        if hit is None or hit[0] is not task:
            hit = _encode(task)
        fresh[task.id] = hit
        texts.append(f"{hit[1]}{open_counts.get(task.id, 0)}{hit[2]}")
    with _LOCK:
        _TEXTS[board] = fresh
    return texts


def matching(tasks: list[Task], status: Any = None, owner: Any = None, tag: Any = None) -> list[Task]:
    """The tasks among `tasks` that `TaskBoard.list(status=, owner=, tag=)` returns (same filters, same order),
    so that a filtered listing reads the board once: the whole board tells which records are invalid too."""
    from replica.models import Task, validate_field

    want = None
    if status is not None:
        checked = validate_field(Task, "task", "status", status)
        want = getattr(checked, "value", checked)
    return [t for t in tasks if (want is None or t.status.value == want) and (owner is None or t.owner == owner)
            and (tag is None or tag in t.tags)]


def listing_text(r: Replica, params: dict[str, Any]) -> str:
    """The board's tasks (filtered by `status`, `owner`, `tag`; at most `limit`) and invalid records, as
    JSON text equal to `json.dumps({"invalid": [...], "tasks": [...]}, sort_keys=True)`."""
    from replica.errors import FieldError

    unknown = sorted(set(params) - {"status", "owner", "tag", "limit"})
    if unknown:
        raise FieldError("task", unknown[0], "no such filter (status, owner, tag, limit)")
    limit = params.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise FieldError("task", "limit", "must be a positive integer")
    everything = r.tasks.list()
    # Listing validates every record; when every record listed, none is invalid, so the second
    # full scan that `invalid()` does is skipped.
    invalid = [] if len(everything) == len(r.tasks) else [i.model_dump(mode="json") for i in r.tasks.invalid()]
    filtered = any(params.get(k) is not None for k in ("status", "owner", "tag"))
    tasks = matching(everything, params.get("status"), params.get("owner"), params.get("tag")) if filtered \
        else everything
    contested = r.tasks.history.contested()
    open_counts = {tid: len(r.tasks.conflicts(tid)) for tid in contested}
    texts = task_texts(r, tasks if limit is None else tasks[:limit], open_counts,
                       complete=not filtered and limit is None)
    return '{"invalid": ' + json.dumps(invalid, sort_keys=True) + ', "tasks": [' + ", ".join(texts) + "]}"
