"""The live board: a page served at `/` on the websocket port, a Yjs client of the same room.

The page (transport/board/, built from src/board.mjs by `make board`) syncs over the
websocket it was served from, passing its `?token=` as y-websocket clients do. Whether it
may write is decided here from that token and told to the page, which disables its
controls otherwise; the mesh refuses a read-only connection's writes anyway. See
docs/board.md.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Protocol

from transport.auth import Access, TokenAuth
from transport.http import Handler, HttpRequest, HttpResponse, HttpRoutes
from transport.rooms import InvalidRoomError, check_room_name

ASSETS = {
    "/board.js": ("board.js", "text/javascript; charset=utf-8"),
    "/board.css": ("board.css", "text/css; charset=utf-8"),
}
"""Paths served from package data besides the page itself: (file under transport/board/, type)."""
CONFIG_MARK = "__BOARD_CONFIG__"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""Every board answer: the page may load only its own files and open only its own websocket."""


@cache
def asset(name: str) -> bytes:
    """One file of the board's package data (read once)."""
    return files("transport").joinpath("board", name).read_bytes()


def page_config(room: str, auth: TokenAuth | None, query: dict[str, str]) -> dict[str, object]:
    """What the page is told: its room, whether its token lets it connect, and whether it may write.

    Read-only by default: it writes only with a read-write token, or, on a server that asks
    for no token at all, with `?write=1`."""
    token = query.get("token")
    checker = auth if auth is not None else TokenAuth()
    access = checker.check(token)
    write = access.allowed and not access.read_only and (checker.required or query.get("write") == "1")
    return {"room": room, "allowed": access.allowed, "write": write, "token_required": checker.required}


def _script_json(value: object) -> str:
    """JSON safe inside a <script> element (no `<`, `>` or `&` can close it)."""
    text = json.dumps(value, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _page(config: dict[str, object]) -> HttpResponse:
    """The board's HTML with its config filled in."""
    html = asset("index.html").decode("utf-8")
    body = html.replace(CONFIG_MARK, _script_json(config), 1)
    return HttpResponse(body=body.encode("utf-8"), content_type="text/html; charset=utf-8",
                        headers=dict(SECURITY_HEADERS))


def _add_assets(routes: HttpRoutes) -> None:
    """The board's script and style."""
    for path, (name, content_type) in ASSETS.items():
        routes.add(path, _static(name, content_type))


def add_board_routes(routes: HttpRoutes, *, room: str, auth: TokenAuth | None = None) -> None:
    """Serve the board at `/` (and its script and style) for `room`; `auth` decides who may write from it."""

    def page(request: HttpRequest) -> HttpResponse:
        return _page(page_config(room, auth, request.query))

    routes.add("/", page)
    _add_assets(routes)


class RoomAccessCheck(Protocol):
    """What a hub's grants answer: may this token open this room, and write in it."""

    @property
    def required(self) -> bool:
        """True when a token must be presented."""

    def check(self, presented: str | None, room: str) -> Access:
        """The access `presented` gives in `room`."""


def add_hub_board_routes(routes: HttpRoutes, auth: RoomAccessCheck) -> None:
    """Serve the board of any room of a hub at `/?room=NAME` (with `&token=` as for `serve`)."""

    def page(request: HttpRequest) -> HttpResponse:
        room = request.query.get("room", "")
        try:
            check_room_name(room)
        except InvalidRoomError as error:
            return HttpResponse.text(f"{error}; open /?room=NAME (and &token=TOKEN)\n", status=400)
        access = auth.check(request.query.get("token"), room)
        write = access.allowed and not access.read_only and (auth.required or request.query.get("write") == "1")
        return _page({"room": room, "allowed": access.allowed, "write": write, "token_required": auth.required})

    routes.add("/", page)
    _add_assets(routes)


def _static(name: str, content_type: str) -> Handler:
    """A handler answering one package-data file."""

    def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(body=asset(name), content_type=content_type, headers=dict(SECURITY_HEADERS))

    return handler
