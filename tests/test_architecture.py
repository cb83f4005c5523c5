"""Dependencies point one way: replica.app -> compat, transport -> replica; the library imports none above it.

`replica` outside `replica/app/` is a library: it imports neither `replica.app`, `transport`
nor `compat`. `transport` and `compat` import `replica` but not `replica.app`, nor each other.
`replica.app` (the CLI, the daemon, the control channel) may import all three.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("replica", "transport", "compat")
APP = "replica.app"
FORBIDDEN = {
    "replica": {APP, "transport", "compat"},
    "transport": {APP, "compat"},
    "compat": {APP, "transport"},
    APP: set(),
}
"""Layer -> the modules (and their submodules) it must not import. The `replica` layer is
every module under replica/ except those under replica/app/."""


def module_name(path: Path) -> str:
    """The dotted name of the module at `path` (a file under ROOT)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str | None = None) -> set[str]:
    """Dotted names a module imports; relative imports are resolved, `from X import y` counts X and X.y.

    `module` is the file's own dotted name (default: from its path under ROOT).
    """
    name = module or module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            if node.module:
                found.add(source)
            found.update(f"{source}.{alias.name}" if source else alias.name for alias in node.names)
    return found


def reaches(imported: set[str], forbidden: set[str]) -> list[str]:
    """The imported names that are a forbidden module or inside one."""
    return sorted(m for m in imported if any(m == f or m.startswith(f + ".") for f in forbidden))


def layer_files(layer: str) -> list[Path]:
    """The source files of `layer`: replica/app/ for the app, a package minus replica/app/ otherwise."""
    files = sorted((ROOT / layer.replace(".", "/")).rglob("*.py"))
    if layer == "replica":
        files = [p for p in files if not p.is_relative_to(ROOT / "replica" / "app")]
    return files


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_point_one_way(layer: str) -> None:
    files = layer_files(layer)
    assert files, f"no source files for {layer}"
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in files
        if (found := reaches(imported_modules(path), FORBIDDEN[layer]))
    }
    assert offenders == {}, f"{layer} must not import {sorted(FORBIDDEN[layer])}: {offenders}"


def test_every_package_ships_py_typed() -> None:
    for package in PACKAGES:
        assert (ROOT / package / "py.typed").is_file()


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom transport.session import Session\nfrom . import sibling\n"
                      "from ..errors import ReplicaError\n")
    found = imported_modules(module, "replica.sub.m")
    assert found == {"os", "transport.session", "transport.session.Session", "replica.sub.sibling",
                     "replica.errors", "replica.errors.ReplicaError"}
    assert reaches(found, FORBIDDEN["replica"]) == ["transport.session", "transport.session.Session"]


@pytest.mark.parametrize("source", ["from .app import cli\n", "from . import app\n", "from replica import app\n",
                                    "import replica.app.daemon\n", "from replica.app.cli import main\n"])
def test_the_checker_sees_the_library_import_the_app(tmp_path: Path, source: str) -> None:
    module = tmp_path / "m.py"
    module.write_text(source)
    assert reaches(imported_modules(module, "replica.m"), FORBIDDEN["replica"]) != []
    assert reaches(imported_modules(module, "replica.m"), {"replica.application"}) == []
