"""First-party commands need no entry point; third-party packages still add theirs through `agentstate.cli`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from replica.app.cli import Invocation, Registry


def registry() -> Registry:
    """An empty registry with the `serve` command the transport's commands extend."""
    fresh = Registry()
    fresh.command("serve", "Serve.")(lambda inv: None)
    return fresh


def test_first_party_commands_load_without_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [])
    cli = registry()
    cli.load_plugins()
    assert {("conflicts", "list"), ("migrate",), ("demo",)} <= set(cli.commands)
    assert "mesh" in cli.status_renderers


def test_a_third_party_plugin_adds_its_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "agentstate_hello.py").write_text(
        "def register(cli):\n"
        "    cli.command('hello', 'Say hello.')(lambda inv: print('hello'))\n")
    dist = tmp_path / "agentstate_hello-1.0.dist-info"
    dist.mkdir()
    (dist / "entry_points.txt").write_text("[agentstate.cli]\nhello = agentstate_hello:register\n"
                                           "broken = agentstate_missing:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cli = registry()
    cli.load_plugins()
    assert ("hello",) in cli.commands and ("conflicts", "list") in cli.commands
    cli.commands[("hello",)].run(Invocation.__new__(Invocation))
    out = capsys.readouterr()
    assert out.out == "hello\n" and "plugin broken failed to load" in out.err
