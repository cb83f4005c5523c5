"""compat.checksums: the canonical checksum form (sheet section 0)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

import compat
from compat.checksums import compute_checksum, compute_file_checksum, verify_checksum, verify_file_checksum

# A real task record from a cortical.got directory, with the checksum cortical stored for it.
REAL_TASK = {
    "created_at": "2025-12-26T04:40:33.173543+00:00",
    "description": "",
    "entity_type": "task",
    "id": "T-20251226-044033-28ba6a16",
    "metadata": {
        "completed_at": "2025-12-26T04:41:07.916286+00:00",
        "updated_at": "2025-12-26T04:41:07.916296+00:00",
    },
    "modified_at": "2025-12-26T04:41:07.928408+00:00",
    "priority": "high",
    "properties": {"category": "feature"},
    "status": "completed",
    "title": "Woven Mind v1.0 Comprehensive Code Review",
    "version": 4,
}
REAL_TASK_CHECKSUM = "05af62c08baf8ce6"


def test_deterministic() -> None:
    data = {"id": "T-1", "title": "x", "nested": {"b": [1, 2], "a": None}}
    assert compute_checksum(data) == compute_checksum(json.loads(json.dumps(data)))


def test_changes_with_the_data() -> None:
    assert compute_checksum({"a": 1}) != compute_checksum({"a": 2})
    assert compute_checksum({"a": 1}) != compute_checksum({"b": 1})
    assert compute_checksum(b"abc") != compute_checksum(b"abd")


def test_sixteen_lowercase_hex_characters() -> None:
    checksum = compute_checksum({"a": 1})
    assert re.fullmatch(r"[0-9a-f]{16}", checksum)


def test_ignores_key_order() -> None:
    assert compute_checksum({"a": 1, "b": {"x": 1, "y": 2}}) == compute_checksum({"b": {"y": 2, "x": 1}, "a": 1})


def test_canonical_form_is_byte_exact() -> None:
    data = {"b": [1, 2.5, True, None], "a": "caf\u00e9 \u2713"}
    canonical = '{"a":"caf\\u00e9 \\u2713","b":[1,2.5,true,null]}'.encode("utf-8")
    assert compute_checksum(data) == hashlib.sha256(canonical).hexdigest()[:16]


def test_matches_a_checksum_written_by_cortical() -> None:
    assert compute_checksum(REAL_TASK) == REAL_TASK_CHECKSUM


def test_bytes_are_hashed_as_is() -> None:
    assert compute_checksum(b"hello") == hashlib.sha256(b"hello").hexdigest()[:16]


@pytest.mark.parametrize("truncate", [0, None])
def test_zero_or_none_gives_the_full_digest(truncate: int | None) -> None:
    assert compute_checksum(b"hello", truncate=truncate) == hashlib.sha256(b"hello").hexdigest()


def test_custom_truncation() -> None:
    assert compute_checksum(b"hello", truncate=8) == hashlib.sha256(b"hello").hexdigest()[:8]


@pytest.mark.parametrize("bad", ["text", ["a"], 42, None, 1.5])
def test_other_types_raise_type_error(bad: object) -> None:
    with pytest.raises(TypeError):
        compute_checksum(bad)  # type: ignore[arg-type]


def test_verify_checksum() -> None:
    data = {"id": "T-1", "title": "x"}
    checksum = compute_checksum(data)
    assert verify_checksum(data, checksum) is True
    assert verify_checksum(data, "0" * 16) is False
    assert verify_checksum({"id": "T-1", "title": "y"}, checksum) is False


def test_verify_checksum_with_truncation() -> None:
    assert verify_checksum(b"x", compute_checksum(b"x", truncate=None), truncate=None)


@pytest.mark.parametrize("indent", [None, 2, 4])
def test_file_checksum_equals_data_checksum(tmp_path: Path, indent: int | None) -> None:
    data = {"z": 1, "a": {"nested": [1, 2, 3]}, "text": "\u00e9"}
    path = tmp_path / "data.json"
    separators = (",", ":") if indent is None else None
    path.write_text(json.dumps(data, indent=indent, separators=separators, ensure_ascii=False), encoding="utf-8")
    assert compute_file_checksum(path) == compute_checksum(data)
    assert compute_file_checksum(str(path)) == compute_checksum(data)


def test_verify_file_checksum(tmp_path: Path) -> None:
    data = {"id": "T-1"}
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    assert verify_file_checksum(path, compute_checksum(data)) is True
    assert verify_file_checksum(path, compute_checksum({"id": "T-2"})) is False


def test_every_entity_file_of_a_real_directory_verifies(real_data_dir: Path) -> None:
    files = sorted((real_data_dir / "entities").glob("*.json"))
    assert files
    for path in files:
        wrapper = json.loads(path.read_text(encoding="utf-8"))
        assert verify_checksum(wrapper["data"], wrapper["_checksum"]), path.name


def test_root_reexports() -> None:
    assert compat.compute_checksum is compute_checksum
    assert compat.verify_checksum is verify_checksum
    assert compat.compute_file_checksum is compute_file_checksum
    assert compat.verify_file_checksum is verify_file_checksum
