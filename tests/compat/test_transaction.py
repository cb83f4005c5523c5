"""compat.transaction: states, ids, read/write sets and serialisation (sheet section 4)."""

from __future__ import annotations

import os
import random
import re
from datetime import datetime, timedelta, timezone

import pytest

import compat
from compat.transaction import Transaction, TransactionState, generate_transaction_id
from compat.types import Entity, Task


def _tx(state: TransactionState = TransactionState.ACTIVE) -> Transaction:
    return Transaction(id="TX-20250101-000000-0123abcd", state=state, started_at="", snapshot_version=0)


def test_five_state_strings() -> None:
    assert {state.name: state.value for state in TransactionState} == {
        "ACTIVE": "active",
        "PREPARING": "preparing",
        "COMMITTED": "committed",
        "ABORTED": "aborted",
        "ROLLED_BACK": "rolled_back",
    }


def test_id_shape() -> None:
    tx_id = generate_transaction_id()
    assert re.fullmatch(r"TX-\d{8}-\d{6}-[0-9a-f]{8}", tx_id)
    assert len(tx_id.split("-")) == 4


def test_id_carries_the_utc_time() -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    tx_id = generate_transaction_id()
    after = datetime.now(timezone.utc)
    stamp = datetime.strptime(tx_id[3:18], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    assert before - timedelta(seconds=1) <= stamp <= after


def test_hundred_ids_are_unique() -> None:
    assert len({generate_transaction_id() for _ in range(100)}) == 100


def test_new_transaction_has_empty_sets() -> None:
    tx = _tx()
    assert tx.write_set == {} and tx.read_set == {}
    assert _tx().write_set is not tx.write_set


def test_add_write_stores_the_object_itself() -> None:
    tx = _tx()
    task = Task(id="T-1", title="x")
    tx.add_write(task)
    assert tx.write_set == {"T-1": task}
    assert tx.get_write("T-1") is task
    task.title = "changed later"
    assert tx.get_write("T-1").title == "changed later"  # type: ignore[union-attr]


def test_get_write_missing_is_none() -> None:
    assert _tx().get_write("nope") is None


def test_add_read_records_and_overwrites() -> None:
    tx = _tx()
    tx.add_read("T-1", 2)
    assert tx.read_set == {"T-1": 2}
    tx.add_read("T-1", 5)
    tx.add_read("T-2", 1)
    assert tx.read_set == {"T-1": 5, "T-2": 1}


@pytest.mark.parametrize("state", list(TransactionState))
def test_predicates_hold_for_exactly_the_right_states(state: TransactionState) -> None:
    tx = _tx(state)
    assert tx.is_active() is (state is TransactionState.ACTIVE)
    assert tx.can_commit() is (state is TransactionState.ACTIVE)
    assert tx.can_rollback() is (state in (TransactionState.ACTIVE, TransactionState.PREPARING))


def test_state_is_a_plain_attribute() -> None:
    tx = _tx()
    tx.state = TransactionState.COMMITTED
    assert not tx.is_active() and not tx.can_rollback()
    tx.state = 3  # type: ignore[assignment]  # the old edge-case test assigns an int
    assert not tx.is_active() and not tx.can_commit() and not tx.can_rollback()


def test_to_dict() -> None:
    tx = Transaction(id="TX-1", state=TransactionState.PREPARING, started_at="2025-01-01", snapshot_version=4)
    task = Task(id="T-1", title="x")
    tx.add_write(task)
    tx.add_read("T-1", 2)
    assert tx.to_dict() == {
        "id": "TX-1",
        "state": "preparing",
        "started_at": "2025-01-01",
        "snapshot_version": 4,
        "write_set": {"T-1": task.to_dict()},
        "read_set": {"T-1": 2},
    }


def test_from_dict_restores_everything() -> None:
    tx = Transaction(id="TX-1", state=TransactionState.ROLLED_BACK, started_at="s", snapshot_version=9)
    tx.add_write(Task(id="T-1", title="x", version=3))
    tx.add_read("T-1", 3)
    tx.add_read("T-9", 1)
    again = Transaction.from_dict(tx.to_dict())
    assert (again.id, again.state, again.started_at, again.snapshot_version) == (
        "TX-1",
        TransactionState.ROLLED_BACK,
        "s",
        9,
    )
    assert again.read_set == {"T-1": 3, "T-9": 1}
    restored = again.write_set["T-1"]
    assert type(restored) is Entity
    assert (restored.id, restored.entity_type, restored.version) == ("T-1", "task", 3)


def test_from_dict_sets_are_optional() -> None:
    tx = Transaction.from_dict({"id": "TX-1", "state": "active", "started_at": "", "snapshot_version": 0})
    assert tx.state is TransactionState.ACTIVE
    assert tx.write_set == {} and tx.read_set == {}


def test_root_exports() -> None:
    assert compat.Transaction is Transaction
    assert compat.TransactionState is TransactionState
    assert compat.generate_transaction_id is generate_transaction_id


def test_ids_do_not_follow_the_callers_seed_nor_repeat_in_a_forked_child() -> None:
    """Seeding ``random`` cannot make two processes draw the same ids, and a forked child draws its own."""
    random.seed(7)
    first = generate_transaction_id()[-8:]
    random.seed(7)
    assert generate_transaction_id()[-8:] != first
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, generate_transaction_id()[-8:].encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child = os.read(read_end, 8).decode()
    os.close(read_end)
    assert len(child) == 8 and child != generate_transaction_id()[-8:]
