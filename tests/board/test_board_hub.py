"""The board of a hub's room in a real headless Chromium: `/?room=NAME&token=...` against `agentstate hub`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.board.helpers import artifact_dir, chromium_path, wait_for
from tests.transport.meshkit import free_port

AGENTSTATE = str(Path(sys.executable).parent / "agentstate")
WAIT_MS = 30_000
WRITER, VIEWER = "hub-writer-token", "hub-viewer-token"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`agentstate hub` with a read-write token for rooms team-* and a read-only one for every room."""
    port = free_port()
    proc = subprocess.Popen([AGENTSTATE, "hub", "--data", str(tmp_path / "hub"), "--listen", f"127.0.0.1:{port}",
                             "--room-token", f"team-*={WRITER}", "--read-only-token", VIEWER],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, "hub exited early"
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    try:
        wait_for(ready, "the hub to be ready", timeout=60, every=0.1)
        yield base, tmp_path / "hub" / "rooms"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def room_cli(rooms: Path, room: str, *args: str) -> Any:
    """`agentstate` on the room's directory (another process beside the hub)."""
    done = subprocess.run([AGENTSTATE, "--data", str(rooms / room), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done.stdout


def test_a_rooms_board_shows_and_writes_through_the_hub(hub: tuple[str, Path], tmp_path: Path) -> None:
    base, rooms = hub
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(base + "/", timeout=10)
    assert missing.value.code == 400
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path())
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{base}/?room=team-a&token={WRITER}")
            expect(page.locator("#status")).to_have_text("synced", timeout=WAIT_MS)
            expect(page.locator("#access")).to_have_text("read-write")
            room_cli(rooms, "team-a", "task", "add", "Written beside the hub", "--id", "T-hub-board-1")
            expect(page.locator('[data-task-id="T-hub-board-1"]')).to_be_visible(timeout=WAIT_MS)
            page.fill("#new-title", "Added on the hub's board")
            page.click("#add-task button")

            def added() -> bool:
                listed = json.loads(room_cli(rooms, "team-a", "task", "list", "--json"))["tasks"]
                return any(task["title"] == "Added on the hub's board" for task in listed)

            wait_for(added, "the room's directory to hold the task added on the page")
            target = artifact_dir(tmp_path) / "hub-board.png"
            page.screenshot(path=str(target), full_page=True)
            print(f"board screenshot: {target}")

            viewer = browser.new_page()
            viewer.goto(f"{base}/?room=team-a&token={VIEWER}")
            expect(viewer.locator("#status")).to_have_text("synced", timeout=WAIT_MS)
            expect(viewer.locator("#access")).to_have_text("read-only")
            expect(viewer.locator('[data-task-id="T-hub-board-1"]')).to_be_visible(timeout=WAIT_MS)
            expect(viewer.locator("#new-title")).to_be_disabled()

            outsider = browser.new_page()
            outsider.goto(f"{base}/?room=other&token={WRITER}")  # the writer's token does not open room other
            expect(outsider.locator("#access")).not_to_have_text("read-write", timeout=WAIT_MS)
        finally:
            browser.close()
