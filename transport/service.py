"""The mesh as a daemon service: `mesh_service_factory` turns `serve` options into a MeshService.

The `agentstate.services` entry point registers the factory (see `replica.services`); the
daemon starts and stops the service and shows `status()` under the key "mesh".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

from replica.replica import Replica
from transport.auth import TokenAuth
from transport.board import add_board_routes
from transport.http import HttpRoutes
from transport.limits import Limits, ReconnectPolicy
from transport.mesh import DEFAULT_AWARENESS_INTERVAL, Mesh, parse_listen
from transport.metrics import ServerMetrics, add_health_routes, add_metrics_routes, mesh_ready

LIMIT_KEYS = frozenset(field.name for field in fields(Limits))
"""Option keys (flat, or inside options["limits"]) that set a `Limits` field."""


class MeshService:
    """Runs a Mesh inside the daemon; commands: "peers" (the status view) and "presence"."""

    name = "mesh"

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.commands: dict[str, Callable[[dict[str, Any]], Any]] = {
            "peers": self._peers,
            "presence": self._presence,
        }

    async def start(self) -> None:
        """Listen and start dialing."""
        await self.mesh.start()

    async def stop(self) -> None:
        """Close every connection with 1001 and flush the replica's log."""
        await self.mesh.stop()

    def status(self) -> dict[str, Any]:
        """Peers, who is online, rejections and traffic (JSON-able)."""
        return self.mesh.status()

    def _peers(self, params: dict[str, Any]) -> dict[str, Any]:
        """The status view (the `agentstate status` peers table reads it)."""
        return self.mesh.status()

    def _presence(self, params: dict[str, Any]) -> dict[str, Any]:
        """Merge params["fields"] (what this agent works on) into our awareness state."""
        fields_ = params.get("fields", {})
        if not isinstance(fields_, dict):
            raise ValueError("presence fields must be an object")
        return {"state": self.mesh.set_presence(fields_)}


def _strings(value: Any, what: str) -> list[str]:
    """A list of strings from None, one string or an iterable of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        items = list(value)
        if all(isinstance(item, str) for item in items):
            return items
    raise ValueError(f"{what} must be a string or a list of strings")


def build_limits(options: dict[str, Any]) -> Limits:
    """Limits from options["limits"] (a dict) and/or flat keys named like Limits fields."""
    values = dict(options.get("limits") or {})
    values.update({key: options[key] for key in LIMIT_KEYS if options.get(key) is not None})
    unknown = set(values) - LIMIT_KEYS
    if unknown:
        raise ValueError(f"unknown limit(s): {', '.join(sorted(unknown))}")
    return Limits(**values)


def mesh_service_factory(replica: Replica, options: dict[str, Any]) -> MeshService | None:
    """A MeshService for the serve options, or None when neither `listen` nor `peers` is given.

    A listening mesh also answers GET /metrics, /healthz and /readyz (transport.metrics) and
    serves the live board at / (transport.board).
    Keys: listen ("HOST:PORT"), peers (URLs), room, token / tokens, read_only_tokens,
    peer_token (default: the first token), tls_cert, tls_key, tls_ca, insecure_public,
    limits (or flat Limits keys), awareness_interval, presence, reconnect_initial,
    reconnect_max.
    """
    listen_option = options.get("listen")
    peers = _strings(options.get("peers"), "peers")
    if not listen_option and not peers:
        return None
    listen = parse_listen(listen_option) if listen_option else None
    routes = HttpRoutes()
    tokens = _strings(options.get("token"), "token") + _strings(options.get("tokens"), "tokens")
    reconnect = ReconnectPolicy(
        initial=float(options.get("reconnect_initial") or ReconnectPolicy.initial),
        maximum=float(options.get("reconnect_max") or ReconnectPolicy.maximum),
    )
    mesh = Mesh(
        replica,
        room=options.get("room") or "agentstate",
        listen=listen,
        peers=peers,
        tokens=tokens,
        read_only_tokens=_strings(options.get("read_only_tokens"), "read_only_tokens"),
        peer_token=options.get("peer_token") or (tokens[0] if tokens else None),
        certfile=options.get("tls_cert"),
        keyfile=options.get("tls_key"),
        cafile=options.get("tls_ca"),
        allow_insecure_public=bool(options.get("insecure_public", False)),
        limits=build_limits(options),
        reconnect=reconnect,
        awareness_interval=float(options.get("awareness_interval") or DEFAULT_AWARENESS_INTERVAL),
        presence=options.get("presence"),
        routes=routes,
    )
    metrics = ServerMetrics()
    metrics.watch(mesh)
    add_metrics_routes(routes, metrics)
    add_health_routes(routes, mesh_ready(mesh))
    read_only_tokens = _strings(options.get("read_only_tokens"), "read_only_tokens")
    add_board_routes(routes, room=mesh.room, auth=TokenAuth(tokens, read_only_tokens))
    return MeshService(mesh)
