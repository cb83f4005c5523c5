"""The board's files: the committed bundle is exactly what `make board` builds, nothing points off-host,
and the page tells each token what it may do (over real HTTP on a serve's port)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from tests.board.helpers import RO_TOKEN, RW_TOKEN, Server
from transport.auth import TokenAuth
from transport.board import add_board_routes, page_config
from transport.http import HttpRoutes

ROOT = Path(__file__).resolve().parents[2]
BOARD = ROOT / "transport" / "board"
ESBUILD = ROOT / "tests" / "node_modules" / ".bin" / "esbuild"
NOT_FETCHED = {
    "http://www.w3.org/2000/svg",  # the SVG namespace name passed to createElementNS
    "https://github.com/yjs/yjs/issues/438",  # text of a yjs console warning
}
"""The only http(s) strings the bundle may hold: names and message text, never loaded."""


def test_committed_bundle_equals_a_fresh_build(tmp_path: Path) -> None:
    if not ESBUILD.exists() or shutil.which("make") is None:
        pytest.fail("esbuild is missing: run `cd tests && npm ci` (make test does)")
    fresh = tmp_path / "board.js"
    built = subprocess.run(["make", "--no-print-directory", "-o", "tests/node_modules/.installed", "board",
                            f"BOARD_OUT={fresh}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    assert fresh.read_bytes() == (BOARD / "board.js").read_bytes(), \
        "transport/board/board.js is stale: run `make board` and commit it"


def test_page_and_bundle_reference_no_other_host() -> None:
    html = (BOARD / "index.html").read_text()
    css = (BOARD / "board.css").read_text()
    assert not re.search(r"https?://", html + css)
    assert re.findall(r"""(?:src|href)="([^"]*)\"""", html) == ["data:,", "/board.css", "/board.js"]
    urls = set(re.findall(r"""https?://[^\s"'`)]*""", (BOARD / "board.js").read_text()))
    assert urls <= NOT_FETCHED, urls - NOT_FETCHED
    assert "import(" not in (BOARD / "board.js").read_text()


def test_page_config_per_token() -> None:
    auth = TokenAuth(["rw"], ["ro"])
    assert page_config("agentstate", auth, {"token": "rw"})["write"] is True
    assert page_config("agentstate", auth, {"token": "ro"}) == {
        "room": "agentstate", "allowed": True, "write": False, "token_required": True}
    assert page_config("agentstate", auth, {"token": "ro", "write": "1"})["write"] is False
    assert page_config("agentstate", auth, {"token": "nope"})["allowed"] is False
    assert page_config("agentstate", auth, {})["allowed"] is False
    assert page_config("agentstate", None, {})["write"] is False
    assert page_config("agentstate", None, {"write": "1"})["write"] is True


def test_routes_register_once() -> None:
    routes = HttpRoutes()
    add_board_routes(routes, room="agentstate")
    assert {"/", "/board.js", "/board.css"} <= set(routes.paths())
    with pytest.raises(ValueError, match="already registered"):
        add_board_routes(routes, room="agentstate")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("board-http") / "data").start()
    try:
        yield running
    finally:
        running.stop()


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, dict(answer.headers), answer.read()


def test_serve_answers_the_board_over_http(server: Server) -> None:
    status, headers, body = _get(server.page_url(RW_TOKEN))
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    config = json.loads(re.search(rb'id="board-config" type="application/json">(.*?)</script>', body).group(1))
    assert config == {"room": "agentstate", "allowed": True, "write": True, "token_required": True}
    config_ro = re.search(rb'application/json">(.*?)</script>', _get(server.page_url(RO_TOKEN))[2]).group(1)
    assert json.loads(config_ro)["write"] is False
    status, headers, script = _get(f"{server.base}/board.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert script == (BOARD / "board.js").read_bytes()
    assert _get(f"{server.base}/board.css")[2] == (BOARD / "board.css").read_bytes()


async def test_room_text_cannot_close_the_config_script() -> None:
    routes = HttpRoutes()
    room = "</script><b>x&"
    add_board_routes(routes, room=room)
    answer = await routes.process_request(None, Request("/?write=1", Headers()))
    assert answer is not None and answer.status_code == 200
    page = answer.body.decode()
    assert "</script><b>" not in page
    config = json.loads(re.search(r'application/json">(.*?)</script>', page).group(1))
    assert config == {"room": room, "allowed": True, "write": True, "token_required": False}
