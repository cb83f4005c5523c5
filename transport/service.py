"""The mesh as a daemon service: `mesh_service_factory` turns `serve` options into a MeshService.

The `agentstate.services` entry point registers the factory (see `replica.services`); the
daemon starts and stops the service and shows `status()` under the key "mesh".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from replica.replica import Replica
from transport.arbiter import ArbiterClient, ArbiterServer
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

    def __init__(self, mesh: Mesh, *, arbiter: ArbiterServer | None = None, advertise: str | None = None,
                 link: ArbiterClient | None = None) -> None:
        self.mesh = mesh
        self.arbiter = arbiter
        self.advertise = advertise
        self.link = link
        if arbiter is not None:
            mesh.claim_handler = arbiter.handle
        self.commands: dict[str, Callable[[dict[str, Any]], Any]] = {
            "peers": self._peers,
            "presence": self._presence,
        }

    async def start(self) -> None:
        """Listen and start dialing; as the arbiter, name this node in the document; as a claimant, link claims to it."""
        if self.link is not None:
            self.mesh.replica.claims.link = self.link
        await self.mesh.start()
        if self.arbiter is not None:
            url = self.advertise or self.mesh.url
            assert url is not None
            await asyncio.to_thread(self.mesh.replica.claims.name_arbiter, url)

    async def stop(self) -> None:
        """Close every connection with 1001 and flush the replica's log."""
        if self.arbiter is not None:
            await self.arbiter.shutdown()
        await self.mesh.stop()
        if self.link is not None:
            self.link.close()
        if self.arbiter is not None:
            self.arbiter.close()

    def status(self) -> dict[str, Any]:
        """Peers, who is online, rejections and traffic (JSON-able); the claims decided, as the arbiter."""
        status = self.mesh.status()
        if self.arbiter is not None:
            status["arbiter"] = {"url": self.advertise or self.mesh.url, "counts": dict(self.arbiter.counts)}
        return status

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
    reconnect_max, arbiter (bool: decide the room's claims), advertise (the arbiter's URL
    for claimants; default the listen URL).
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
        peer_token=mesh_peer_token(options, tokens),
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
    arbiter, advertise = _arbiter_options(replica, mesh, options)
    link = ArbiterClient(replica, token=mesh_peer_token(options, tokens), cafile=options.get("tls_ca"))
    return MeshService(mesh, arbiter=arbiter, advertise=advertise, link=link)


def mesh_peer_token(options: dict[str, Any], tokens: list[str]) -> str | None:
    """The token this node presents to peers and to the claim arbiter."""
    return options.get("peer_token") or (tokens[0] if tokens else None)


def _arbiter_options(replica: Replica, mesh: Mesh, options: dict[str, Any]) -> tuple[ArbiterServer | None, str | None]:
    """(the claim arbiter server, the URL to advertise) for `arbiter` / `advertise` options."""
    advertise = options.get("advertise")
    if not options.get("arbiter"):
        if advertise:
            raise ValueError("--advertise names the arbiter's URL: it needs --arbiter")
        return None, None
    if mesh.listen is None:
        raise ValueError("--arbiter needs --listen HOST:PORT: claimants must be able to reach it")
    if advertise is not None:
        if not isinstance(advertise, str) or not advertise.startswith(("ws://", "wss://")):
            raise ValueError(f"--advertise must be a ws:// or wss:// URL, got {advertise!r}")
        parts = urlsplit(advertise)
        if parts.path in ("", "/"):
            advertise = urlunsplit(parts._replace(path="/" + quote(mesh.room, safe="/")))
    else:
        host = mesh.listen[0]
        if host in ("", "0.0.0.0", "::"):
            raise ValueError(f"--arbiter listening on {host!r}: give --advertise ws://HOST:PORT/{mesh.room}, "
                             "the URL claimants reach this node at")
    return ArbiterServer(replica, mesh.room), advertise
