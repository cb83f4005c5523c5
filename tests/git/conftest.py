"""Fixtures for the git tests: a workspace with its own HOME and no system git config."""

from __future__ import annotations

from pathlib import Path

import pytest

from .gitkit import Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """A fresh workspace under tmp_path."""
    return Workspace(tmp_path)
