"""Plain HTTP GET routes on a websocket port: the board page, /metrics, health and readiness.

A request that asks to upgrade to a websocket goes on to the sync handler; any other GET is
answered here from a table of exact paths, and an unknown path gets 404. The websockets
library parses GET requests only (no bodies), so every route is a read or carries its
arguments in the query string.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from websockets.datastructures import Headers
from websockets.http11 import Request, Response


@dataclass(frozen=True)
class HttpRequest:
    """What a route handler sees: the path, its query (first value per key) and the headers."""

    path: str
    query: dict[str, str]
    headers: Headers


@dataclass
class HttpResponse:
    """A route's answer; `body` as bytes, `content_type` as sent."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, text: str, status: int = 200) -> HttpResponse:
        """A text/plain answer."""
        return cls(status=status, body=text.encode("utf-8"))


Handler = Callable[[HttpRequest], "HttpResponse | Awaitable[HttpResponse]"]


def _is_upgrade(request: Request) -> bool:
    """Whether the request asks for a websocket (the sync protocol), not a page."""
    upgrade = request.headers.get("Upgrade", "")
    return "websocket" in upgrade.lower()


def _response(answer: HttpResponse) -> Response:
    """A websockets Response from a route's answer (with length, type and no caching)."""
    headers = Headers()
    headers["Content-Type"] = answer.content_type
    headers["Content-Length"] = str(len(answer.body))
    headers["Cache-Control"] = "no-store"
    headers["Connection"] = "close"
    for name, value in answer.headers.items():
        headers[name] = value
    try:
        reason = HTTPStatus(answer.status).phrase
    except ValueError:
        reason = "Status"
    return Response(answer.status, reason, headers, answer.body)


class HttpRoutes:
    """A table of GET paths answered on a websocket server's port (see module docstring)."""

    def __init__(self) -> None:
        self._routes: dict[str, Handler] = {}

    def add(self, path: str, handler: Handler) -> None:
        """Answer GET `path` (exact match, query string ignored) with `handler`."""
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        if path in self._routes:
            raise ValueError(f"route already registered: {path}")
        self._routes[path] = handler

    def paths(self) -> list[str]:
        """The registered paths, sorted."""
        return sorted(self._routes)

    async def process_request(self, connection: Any, request: Request) -> Response | None:
        """websockets' `process_request` hook: None lets a websocket upgrade proceed."""
        if _is_upgrade(request):
            return None
        path, _, raw_query = request.path.partition("?")
        handler = self._routes.get(path)
        if handler is None:
            return _response(HttpResponse.text(f"not found: {path[:200]}\n", status=404))
        query = {key: values[0] for key, values in parse_qs(raw_query, keep_blank_values=True).items()}
        answer = handler(HttpRequest(path=path, query=query, headers=request.headers))
        if inspect.isawaitable(answer):
            answer = await answer
        return _response(answer)
