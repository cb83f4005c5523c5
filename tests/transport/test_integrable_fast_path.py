"""The fast path of `integrable_part` (one client's structs) agrees with the general path.

`transport.updates._integrates_whole` may only say "the whole update integrates" when the
general path would keep all of it; it may say "no" more often (it leaves every doubtful
case to the general path). Checked on real updates from three writers received in random
orders, on forged deletions, and on mutated bytes.
"""

from __future__ import annotations

import random

from pycrdt import Doc, Map

from replica.statevector import decode_state_vector
from transport import updates as updates_module
from transport.updates import UpdateFormatError, _integrates_whole


def general_path(update: bytes, state_vector: dict[int, int]) -> tuple[bytes, str | None] | None:
    """`integrable_part` with the fast path switched off (None when it cannot parse the bytes)."""
    fast = updates_module._integrates_whole
    updates_module._integrates_whole = lambda update, state_vector: False  # type: ignore[assignment]
    try:
        return updates_module.integrable_part(update, state_vector)
    except UpdateFormatError:
        return None
    finally:
        updates_module._integrates_whole = fast


def writer_updates(seed: int, count: int = 60) -> list[bytes]:
    """Updates of three docs that write a shared board and sync now and then (so they depend on each other)."""
    rng = random.Random(seed)
    docs = [Doc(client_id=1000 + index) for index in range(3)]
    produced: list[bytes] = []
    for doc in docs:
        doc.observe(lambda event: produced.append(event.update))
    for step in range(count):
        doc = rng.choice(docs)
        tasks = doc.get("tasks", type=Map)
        key = f"T{rng.randrange(6)}"
        with doc.transaction():
            if key in tasks and rng.random() < 0.7:
                tasks[key]["status"] = rng.choice(["pending", "blocked", "completed"])
            elif key in tasks and rng.random() < 0.3:
                del tasks[key]
            else:
                tasks[key] = Map({"title": f"t{step}", "status": "pending", "tags": Map({"x": True})})
        if rng.random() < 0.3:
            source, target = rng.sample(docs, 2)
            target.apply_update(source.get_update(target.get_state()))
    return produced


def is_single_client(update: bytes) -> bool:
    """Whether the update's struct part names at most one client."""
    return len(updates_module._parse_structs(update)[0]) <= 1


def test_fast_path_never_says_yes_when_the_general_path_would_cut() -> None:
    checked = agreed_yes = 0
    for seed in range(12):
        produced = writer_updates(seed)
        rng = random.Random(seed)
        receiver = Doc()
        order = produced[:]
        rng.shuffle(order)
        for update in order:
            state = decode_state_vector(receiver.get_state())
            fast = _integrates_whole(update, state)
            general = general_path(update, state)
            assert general is not None
            if fast:
                assert general == (update, None)
                agreed_yes += 1
            elif is_single_client(update):
                assert general[1] is not None, "a single-client update the fast path refused must be cut"
            checked += 1
            part, problem = updates_module.integrable_part(update, state)
            assert (part, problem) == general
            receiver.apply_update(part)
    assert checked > 500 and agreed_yes > 50


def test_forged_deletions_and_gaps_are_refused_by_the_fast_path() -> None:
    doc = Doc(client_id=7)
    tasks = doc.get("tasks", type=Map)
    tasks["a"] = "x"
    first = doc.get_state()
    tasks["a"] = "y"  # the update overwrites: it deletes the old value
    second = doc.get_state()
    tasks["a"] = "z"
    known = decode_state_vector(first)
    update = doc.get_update(second)  # builds on clocks the receiver lacks (a gap)
    assert not _integrates_whole(update, known)
    assert general_path(update, known) != (update, None)
    assert _integrates_whole(doc.get_update(first), known)
    # delete-only updates: no structs, client 7 deletes clock 0 (known) or clock 100 (never written)
    known_delete = bytes([0, 1, 7, 1, 0, 1])
    forged_delete = bytes([0, 1, 7, 1, 100, 1])
    assert _integrates_whole(known_delete, known) and general_path(known_delete, known) == (known_delete, None)
    assert not _integrates_whole(forged_delete, known)
    result = general_path(forged_delete, known)
    assert result is not None and result[1] is not None
    # trailing bytes are never waved through
    assert not _integrates_whole(known_delete + b"\x00", known)


def test_mutated_bytes_never_pass_the_fast_path_unless_the_general_path_keeps_them_whole() -> None:
    rng = random.Random(4242)
    produced = writer_updates(99, count=40)
    receiver = Doc()
    for update in produced:
        receiver.apply_update(update)
    state = decode_state_vector(receiver.get_state())
    for _ in range(3000):
        update = bytearray(rng.choice(produced))
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(len(update))
            update[position] = rng.randrange(256)
        mutated = bytes(update)
        if _integrates_whole(mutated, state):
            assert general_path(mutated, state) == (mutated, None)
