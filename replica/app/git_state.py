"""State in git, as pure functions: validate a committed state, merge two states, export them as JSON.

A state file is one Yjs update holding a whole document (what `agentstate export` writes).
Any two such states merge without conflict, so the merge driver needs no base: the merge
of ours and theirs is the document holding both. Nothing here runs git or touches a data
directory; `git_commands` does that.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map, get_state

from replica.errors import InvalidUpdateError
from replica.statevector import decode_state_vector

EMPTY_STATE = b"\x00\x00"
"""The Yjs update of an empty document: the smallest valid state file."""
EXPORT_FORMAT = "agentstate-git-export/1"
"""The `format` of the JSON export, so a reader knows what it holds."""


def load_state(data: bytes, what: str = "state") -> Doc:
    """A Doc holding the whole state `data`, or InvalidUpdateError naming `what` and the problem.

    Refused: an empty file (an empty document is the 2 bytes 00 00), bytes that do not
    decode as a Yjs update, and an update that depends on changes it does not carry (a
    truncated or incremental update, not a whole state): merging it would lose them.
    """
    doc = Doc()
    apply_state(doc, data, what)
    return doc


def apply_state(doc: Doc, data: bytes, what: str) -> None:
    """Apply the whole state `data` to `doc`, refusing what `load_state` refuses.

    On refusal `doc` may hold part of it: use a Doc that is thrown away on error."""
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidUpdateError(f"{what}: a state must be bytes")
    if not data:
        raise InvalidUpdateError(f"{what}: empty file, not a Yjs update (an empty document is the 2 bytes 00 00)")
    try:
        claimed = decode_state_vector(get_state(bytes(data)))
        doc.apply_update(bytes(data))
    except ValueError as exc:
        raise InvalidUpdateError(f"{what}: not a Yjs update ({exc})") from None
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        raise InvalidUpdateError(f"{what}: pycrdt could not integrate the update ({exc})") from None
    held = decode_state_vector(doc.get_state())
    missing = sorted(client for client, clock in claimed.items() if held.get(client, 0) < clock)
    if missing:
        raise InvalidUpdateError(f"{what}: an incomplete Yjs update (it depends on changes it does not carry, "
                                 f"from {len(missing)} writer(s)): not a whole state")


def merge_states(ours: bytes, theirs: bytes) -> bytes:
    """The whole state holding both `ours` and `theirs` (each validated first), as one update.

    The same two inputs give the same bytes in any process: the result is what the
    driver writes, and what the JSON export's driver recomputes."""
    doc = load_state(ours, "ours")
    apply_state(doc, theirs, "theirs")
    return doc.get_update()


def same_state(left: bytes, right: bytes) -> bool:
    """Whether two whole states hold the same changes, however they were encoded (writers' order varies).

    Same state vector (so the same structs) and the same delete set, compared sorted."""
    if left == right:
        return True
    try:
        docs = [load_state(left), load_state(right)]
    except InvalidUpdateError:
        return False
    vectors = [decode_state_vector(doc.get_state()) for doc in docs]
    return vectors[0] == vectors[1] and _delete_set(docs[0]) == _delete_set(docs[1])


def _delete_set(doc: Doc) -> list[tuple[int, list[int]]]:
    """A whole state's delete set as sorted (client, [clock, length, ...]) entries."""
    data = doc.get_update(doc.get_state())
    pos = 0

    def varuint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    if varuint() != 0:
        return [(-1, list(data))]
    entries = []
    for _ in range(varuint()):
        client, count = varuint(), varuint()
        entries.append((client, [varuint() for _ in range(2 * count)]))
    return sorted(entries)


def decoded(data: bytes) -> dict[str, Any]:
    """The agentstate roots of a state as plain Python (for comparing documents)."""
    from replica.replica import ROOTS
    from replica.schema import META

    doc = load_state(data)
    return {root.name: doc.get(root.name, type=root.kind).to_py() for root in ROOTS} | {
        META: doc.get(META, type=Map).to_py()}


def export_json(data: bytes, *, state_file: str, blob: str | None) -> str:
    """A JSON export of the state `data` that reviews well: sorted keys, one record per line.

    `state_file` and `blob` (its git object id) name the state it was made from, so the
    export's own merge driver can find both sides' states in the repository."""
    from replica.replica import Replica

    doc = load_state(data)
    view = Replica(doc, "git-export")
    tasks = {t.id: t.model_dump(mode="json") for t in view.tasks.list()}
    nodes = {n.id: n.model_dump(mode="json") for n in view.graph.nodes()}
    edges = {f"{e.source}|{e.type}|{e.target}": e.model_dump(mode="json") for e in view.graph.edges()}
    conflicts = {c.id: {"task": c.record_id, "fields": sorted(c.fields)} for c in view.tasks.conflicts()}
    sections: list[tuple[str, Any]] = [
        ("format", EXPORT_FORMAT),
        ("state", {"file": state_file, "blob": blob, "bytes": len(data)}),
        ("tasks", tasks),
        ("nodes", nodes),
        ("edges", edges),
        ("counters", view.counters.all()),
        ("lessons", [x.model_dump(mode="json") for x in view.lessons.list()]),
        ("open_conflicts", conflicts),
    ]
    lines = ["{"]
    for index, (name, value) in enumerate(sections):
        comma = "," if index < len(sections) - 1 else ""
        text = json.dumps(value, sort_keys=True) if name in ("format", "state") else _block(value)
        lines.append(f"  {json.dumps(name)}: {text}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _block(value: Any) -> str:
    """A section of the export: each entry of a map or list on its own line, sorted by key."""
    if isinstance(value, dict) and value:
        entries = [f"    {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(value.items())]
        return "{\n" + ",\n".join(entries) + "\n  }"
    if isinstance(value, list) and value:
        return "[\n" + ",\n".join(f"    {json.dumps(v, sort_keys=True)}" for v in value) + "\n  ]"
    return json.dumps(value, sort_keys=True)


def export_source(text: str) -> str | None:
    """The git object id of the state an export was made from, or None if `text` names none."""
    try:
        found = json.loads(text)
    except ValueError:
        return None
    if not isinstance(found, dict) or found.get("format") != EXPORT_FORMAT:
        return None
    state = found.get("state")
    blob = state.get("blob") if isinstance(state, dict) else None
    return blob if isinstance(blob, str) and blob else None


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` all at once: a temp file beside it, fsynced, renamed over it, dir fsynced.

    A reader (git, after the driver) sees the old bytes or the new, never a mix; the
    file keeps the old file's permission bits."""
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
