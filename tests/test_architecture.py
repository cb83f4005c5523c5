"""Dependencies point one way: compat -> replica, transport -> replica; replica imports neither."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "replica": {"transport", "compat"},
    "transport": {"compat"},
    "compat": {"transport"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level package names a module imports (absolute imports only; relative stay inside)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_one_way(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
        if imported_packages(path) & FORBIDDEN[package]
    }
    assert offenders == {}, f"{package} must not import {sorted(FORBIDDEN[package])}: {offenders}"


def test_every_package_ships_py_typed() -> None:
    for package in FORBIDDEN:
        assert (ROOT / package / "py.typed").is_file()


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom transport.session import Session\nfrom . import sibling\n")
    assert imported_packages(module) == {"os", "transport"}
