"""compat.config: durability modes and their fsync behaviour (sheet section 2)."""

from __future__ import annotations

import inspect
from pathlib import Path
from unittest import mock

import pytest

import compat
from compat.config import DurabilityMode, GoTConfig
from compat.wal import WALManager


def test_three_enum_values() -> None:
    assert DurabilityMode.PARANOID.value == "paranoid"
    assert DurabilityMode.BALANCED.value == "balanced"
    assert DurabilityMode.RELAXED.value == "relaxed"


def test_iteration_yields_exactly_three_members() -> None:
    members = list(DurabilityMode)
    assert len(members) == 3
    assert members == [DurabilityMode.PARANOID, DurabilityMode.BALANCED, DurabilityMode.RELAXED]


def test_lazy_is_an_alias_of_relaxed() -> None:
    assert DurabilityMode.LAZY is DurabilityMode.RELAXED
    assert DurabilityMode["LAZY"] is DurabilityMode.RELAXED
    assert DurabilityMode("lazy") is DurabilityMode.RELAXED
    assert DurabilityMode("LAZY") is DurabilityMode.RELAXED
    assert DurabilityMode("relaxed") is DurabilityMode.RELAXED


def test_unknown_value_is_rejected() -> None:
    with pytest.raises(ValueError):
        DurabilityMode("sloppy")


def test_goconfig_defaults_to_balanced() -> None:
    assert GoTConfig().durability is DurabilityMode.BALANCED
    assert GoTConfig(durability=DurabilityMode.PARANOID).durability is DurabilityMode.PARANOID


def test_goconfig_accepts_the_lazy_name() -> None:
    assert GoTConfig(durability="lazy").durability is DurabilityMode.RELAXED  # type: ignore[arg-type]


def test_root_exports() -> None:
    assert compat.DurabilityMode is DurabilityMode
    assert compat.GoTConfig is GoTConfig


def test_durability_parameters_default_to_balanced() -> None:
    default = inspect.signature(WALManager).parameters["durability"].default
    assert default is DurabilityMode.BALANCED


def test_paranoid_fsyncs_in_log(tmp_path: Path) -> None:
    wal = WALManager(tmp_path, durability=DurabilityMode.PARANOID)
    with mock.patch("os.fsync") as fsync:
        wal.log("TX-1", "TX_BEGIN", {"snapshot": 0})
    assert fsync.call_count >= 2  # the WAL line and the sequence file


def test_paranoid_fsyncs_in_next_seq(tmp_path: Path) -> None:
    wal = WALManager(tmp_path, durability=DurabilityMode.PARANOID)
    with mock.patch("os.fsync") as fsync:
        wal._next_seq()
    assert fsync.call_count >= 1


def test_balanced_log_makes_no_fsync(tmp_path: Path) -> None:
    wal = WALManager(tmp_path, durability=DurabilityMode.BALANCED)
    with mock.patch("os.fsync") as fsync:
        wal.log("TX-1", "TX_BEGIN", {"snapshot": 0})
        wal.log_tx_commit("TX-1", 1)
    assert fsync.call_count == 0


def test_balanced_fsync_now_fsyncs(tmp_path: Path) -> None:
    wal = WALManager(tmp_path, durability=DurabilityMode.BALANCED)
    wal.log("TX-1", "TX_BEGIN", {"snapshot": 0})
    with mock.patch("os.fsync") as fsync:
        wal.fsync_now()
    assert fsync.call_count >= 1


@pytest.mark.parametrize("mode", [DurabilityMode.RELAXED, DurabilityMode.LAZY])
def test_relaxed_wal_logging_makes_no_fsync(tmp_path: Path, mode: DurabilityMode) -> None:
    wal = WALManager(tmp_path, durability=mode)
    with mock.patch("os.fsync") as fsync:
        seq = wal.log_tx_begin("TX-1", 0)
        wal.log_write("TX-1", "T-1", 0, 1)
        wal._next_seq()
        wal.log_tx_commit("TX-1", 1)
    assert seq == 1
    assert fsync.call_count == 0


def test_mode_flags() -> None:
    assert DurabilityMode.PARANOID.fsync_every_append
    assert not DurabilityMode.BALANCED.fsync_every_append
    assert not DurabilityMode.RELAXED.fsync_every_append
    assert DurabilityMode.BALANCED.fsync_at_commit
    assert not DurabilityMode.PARANOID.fsync_at_commit
    assert DurabilityMode.PARANOID.fsync_store_files
    assert DurabilityMode.BALANCED.fsync_store_files
    assert not DurabilityMode.RELAXED.fsync_store_files
