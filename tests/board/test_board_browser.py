"""The live board in a real headless Chromium (Debian's, driven by Playwright) against a real `agentstate serve`.

CLI writes appear on the page; a page with a read-write token writes what the CLI then
lists; a read-only page has its controls disabled and even a write forced from page script
never reaches the replica. Screenshots are kept as artifacts (paths printed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.board.helpers import RO_TOKEN, RW_TOKEN, Server, artifact_dir, chromium_path, wait_for

WAIT_MS = 30_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `agentstate serve` for the module's tests (each uses its own task ids)."""
    running = Server(tmp_path_factory.mktemp("board") / "data").start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from /usr/bin/chromium: nothing downloads a browser."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path())
        try:
            yield launched
        finally:
            launched.close()


class Opened:
    """A board page plus everything it requested and every script error it raised."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("websocket", lambda ws: self.requests.append(ws.url))
        page.on("pageerror", lambda error: self.errors.append(str(error)))


@pytest.fixture
def open_board(browser: Browser, server: Server) -> Iterator[Any]:
    """Open the board with a token; closes every page afterwards and checks none raised a script error."""
    opened: list[Opened] = []

    def open_(token: str | None) -> Opened:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        board = Opened(page)
        opened.append(board)
        page.goto(server.page_url(token))
        return board

    yield open_
    for board in opened:
        board.page.close()
        assert board.errors == [], board.errors


def card(page: Page, task_id: str) -> Any:
    """The card of one task."""
    return page.locator(f'[data-task-id="{task_id}"]')


def wait_synced(page: Page) -> None:
    """Wait until the page's provider reports the first sync with the server."""
    expect(page.locator("#status")).to_have_text("synced", timeout=WAIT_MS)


def shoot(page: Page, tmp_path: Path, name: str) -> Path:
    """Keep a full-page screenshot as a test artifact and print where it is."""
    target = artifact_dir(tmp_path) / name
    page.screenshot(path=str(target), full_page=True)
    print(f"board screenshot: {target}")
    return target


def test_cli_writes_appear_live_and_nothing_is_fetched_elsewhere(server: Server, open_board: Any,
                                                                 tmp_path: Path) -> None:
    board = open_board(RO_TOKEN)
    page = board.page
    wait_synced(page)
    server.cli("task", "add", "Written through the CLI", "--id", "T-live-1", "--priority", "critical",
               "--tag", "ui", "--tag", "board", "--owner", "agent-7")
    live = card(page, "T-live-1")
    expect(live).to_be_visible(timeout=WAIT_MS)
    expect(live).to_have_attribute("data-status", "pending")
    expect(live.locator("h3")).to_have_text("Written through the CLI")
    expect(live.locator(".priority")).to_have_text("critical")
    expect(live.locator(".owner")).to_have_text("owner: agent-7")
    expect(live.locator(".tag")).to_have_text(["board", "ui"])

    server.cli("task", "update", "T-live-1", "--status", "in_progress")
    expect(page.locator('[data-column="in_progress"] [data-task-id="T-live-1"]')).to_be_visible(timeout=WAIT_MS)
    server.cli("task", "claim", "T-live-1", "--agent", "alice", "--ttl", "15m")
    expect(live.locator(".claim")).to_contain_text("claimed by alice (epoch 1) until", timeout=WAIT_MS)
    server.cli("counter", "incr", "tokens-spent", "--by", "1200")
    server.cli("counter", "decr", "tokens-spent", "--by", "200")
    expect(page.locator('[data-counter="tokens-spent"] .value')).to_have_text("1000", timeout=WAIT_MS)
    server.cli("graph", "node", "add", "q1", "--type", "question", "--content", "Why is sync slow?")
    server.cli("graph", "node", "add", "h1", "--type", "hypothesis", "--content", "Delete sets are resent")
    server.cli("graph", "edge", "add", "h1", "q1", "--type", "answers", "--weight", "0.8")
    expect(page.locator('[data-node-id="q1"]')).to_be_attached(timeout=WAIT_MS)
    expect(page.locator('[data-edge="h1|answers|q1"]')).to_be_attached(timeout=WAIT_MS)
    server.cli("presence", "set", "reviewing the board", "--agent", "alice")
    expect(page.locator("#online li", has_text="alice")).to_contain_text("reviewing the board", timeout=WAIT_MS)
    shoot(page, tmp_path, "board-live.png")

    origin = server.base.removeprefix("http://")
    foreign = [url for url in board.requests
               if not (url.startswith(f"http://{origin}/") or url.startswith(f"ws://{origin}/"))]
    assert foreign == [], foreign
    assert f"ws://{origin}/agentstate?token={RO_TOKEN}" in board.requests


def test_open_conflict_is_highlighted_with_the_cli_id(server: Server, open_board: Any, tmp_path: Path) -> None:
    other = Server(tmp_path / "other")
    server.cli("task", "add", "Two replicas disagree", "--id", "T-conflict-1", "--priority", "high")
    state = tmp_path / "state.yupdate"
    server.cli("export", str(state))
    other.cli("import", str(state))
    server.cli("task", "update", "T-conflict-1", "--status", "blocked")
    other.cli("task", "update", "T-conflict-1", "--status", "completed")
    other.cli("export", str(state))
    server.cli("import", str(state))
    conflicts = [c for c in server.json("conflicts", "list")["conflicts"] if c["entity_id"] == "T-conflict-1"]
    assert len(conflicts) == 1 and conflicts[0]["conflict_fields"] == ["status"]

    page = open_board(RO_TOKEN).page
    contested = card(page, "T-conflict-1")
    expect(contested).to_have_class("card conflicted", timeout=WAIT_MS)
    expect(contested.locator(".conflict-note")).to_have_text("conflict on status")
    expect(page.locator(f'#conflicts [data-conflict="{conflicts[0]["conflict_id"]}"]')).to_contain_text(
        "T-conflict-1")
    expect(card(page, "T-live-1")).not_to_have_class("card conflicted")
    shoot(page, tmp_path, "board-conflict.png")

    server.cli("conflicts", "resolve", conflicts[0]["conflict_id"], "--strategy", "theirs")
    expect(contested).to_have_class("card", timeout=WAIT_MS)
    expect(page.locator("#conflicts [data-conflict]")).to_have_count(0)


def test_a_read_write_page_writes_what_the_cli_lists(server: Server, open_board: Any, tmp_path: Path) -> None:
    page = open_board(RW_TOKEN).page
    wait_synced(page)
    expect(page.locator("#access")).to_have_text("read-write")
    server.cli("task", "add", "Status changed from the page", "--id", "T-page-1")
    select = card(page, "T-page-1").locator("select")
    expect(select).to_be_enabled(timeout=WAIT_MS)
    select.select_option("blocked")
    wait_for(lambda: server.tasks().get("T-page-1", {}).get("status") == "blocked", "the CLI to see status blocked")

    page.fill("#new-title", "Added from the browser")
    page.select_option("#new-priority", "high")
    page.click("#add-task button")
    added = wait_for(lambda: next((t for t in server.tasks().values() if t["title"] == "Added from the browser"), None),
                     "the CLI to list the task added from the page")
    assert added["priority"] == "high" and added["status"] == "pending" and added["owner"] is None
    assert added["tags"] == [] and added["depends_on"] == [] and added["properties"] == {}
    assert added["created_by"].startswith("board:")
    expect(card(page, added["id"])).to_be_visible(timeout=WAIT_MS)
    shoot(page, tmp_path, "board-read-write.png")


def test_a_read_only_page_cannot_write(server: Server, open_board: Any) -> None:
    server.cli("task", "add", "Nobody may touch this from a read-only page", "--id", "T-ro-1")
    page = open_board(RO_TOKEN).page
    wait_synced(page)
    expect(page.locator("#access")).to_have_text("read-only")
    expect(card(page, "T-ro-1").locator("select")).to_be_disabled(timeout=WAIT_MS)
    for control in ("#new-title", "#new-priority", "#add-task button"):
        expect(page.locator(control)).to_be_disabled()

    refused_before = server.json("status")["mesh"]["rejections"].get("read_only_update", 0)
    forced = page.evaluate("""() => {
        const board = window.agentstateBoard
        board.api.setStatus('T-ro-1', 'cancelled')
        return board.api.addTask({ title: 'Forced from a read-only page' })
    }""")
    expect(card(page, forced)).to_be_visible(timeout=WAIT_MS)  # only in this page's own copy
    wait_for(lambda: server.json("status")["mesh"]["rejections"].get("read_only_update", 0) > refused_before,
             "serve to refuse the read-only page's update")
    tasks = server.tasks()
    assert forced not in tasks
    assert tasks["T-ro-1"]["status"] == "pending"
    assert all(task["title"] != "Forced from a read-only page" for task in tasks.values())


def test_a_page_without_the_token_does_not_connect(open_board: Any) -> None:
    page = open_board(None).page
    expect(page.locator("#status")).to_have_text("not connected: this server needs ?token=", timeout=WAIT_MS)
    wrong = open_board("not-a-token").page
    expect(wrong.locator("#status")).to_have_text("not connected: this token is not accepted", timeout=WAIT_MS)

