"""`agentstate hub`: serve many rooms on one address, each room a replica directory (or a Redis Stream).

Imported for `--help` and the hub command only; the hub itself loads when it runs.
"""

from __future__ import annotations

import os
import sys

from .cli import Arg, Invocation, Registry, UsageError, listen_address

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from transport.hub import HubAuth, HubLimits


def _pattern_token(text: str) -> tuple[str, str]:
    """PATTERN=TOKEN from a --room-token option."""
    import argparse

    pattern, sep, token = text.partition("=")
    if not sep or not pattern or not token:
        raise argparse.ArgumentTypeError(f"expected ROOM-PATTERN=TOKEN, got {text!r}")
    return pattern, token


HUB_OPTIONS = [
    Arg("--data", dest="hub_data", default=None, metavar="DIR",
        help="directory holding one replica directory per room under DIR/rooms (default: the global --data)"),
    Arg("--listen", default="127.0.0.1:8765", type=listen_address, metavar="HOST:PORT",
        help="address clients connect to; the URL path names the room (default 127.0.0.1:8765)"),
    Arg("--token", dest="tokens", action="append", metavar="TOKEN",
        help="read-write token for every room; repeatable"),
    Arg("--read-only-token", dest="read_only_tokens", action="append", metavar="TOKEN",
        help="read-only token for every room; repeatable"),
    Arg("--room-token", dest="room_tokens", action="append", type=_pattern_token, metavar="PATTERN=TOKEN",
        help="read-write token for rooms matching a shell pattern (e.g. 'proj-*=s3cret'); repeatable"),
    Arg("--room-read-only-token", dest="room_read_only_tokens", action="append", type=_pattern_token,
        metavar="PATTERN=TOKEN", help="read-only token for rooms matching a pattern; repeatable"),
    Arg("--tokens-file", default=None, metavar="FILE",
        help='JSON list of grants: [{"token": "...", "rooms": ["proj-*"], "access": "read-write"|"read-only"}]'),
    Arg("--redis", default=None, metavar="URL",
        help="keep rooms in Redis Streams (redis://host:port/db) instead of directories: stateless hubs"),
    Arg("--max-rooms", type=int, default=1000, help="rooms loaded at once (default 1000)"),
    Arg("--max-connections", type=int, default=4096, help="connections over all rooms (default 4096)"),
    Arg("--max-room-connections", type=int, default=256, help="connections in one room (default 256)"),
    Arg("--max-memory-mb", type=int, default=None, metavar="MB",
        help="load no further room while the hub's resident memory is above this"),
    Arg("--idle", type=float, default=30.0, metavar="SECONDS",
        help="close a room this long after its last client left (default 30)"),
    Arg("--durability", default="balanced", choices=["paranoid", "balanced", "lazy"],
        help="durability of each room's log (default balanced)"),
    Arg("--tls-cert", default=None, metavar="FILE", help="certificate to listen with wss://"),
    Arg("--tls-key", default=None, metavar="FILE", help="private key for --tls-cert"),
    Arg("--insecure-no-token-i-understand", dest="insecure_public", action="store_true",
        help="allow listening beyond loopback without a token"),
]


def build_auth(args: Any) -> HubAuth:
    """The hub's grants from the token options and the tokens file."""
    from transport.hub import HubAuth, RoomGrant

    grants = [RoomGrant(token) for token in args.tokens or []]
    grants += [RoomGrant(token, read_only=True) for token in args.read_only_tokens or []]
    grants += [RoomGrant(token, (pattern,)) for pattern, token in args.room_tokens or []]
    grants += [RoomGrant(token, (pattern,), True) for pattern, token in args.room_read_only_tokens or []]
    if args.tokens_file:
        grants += HubAuth.from_file(args.tokens_file).grants
    return HubAuth(grants)


def build_limits(args: Any) -> HubLimits:
    """The hub's bounds from its options."""
    from transport.hub import HubLimits

    memory = None if args.max_memory_mb is None else args.max_memory_mb * 2**20
    return HubLimits(max_rooms=args.max_rooms, max_connections=args.max_connections,
                     max_room_connections=args.max_room_connections, max_memory_bytes=memory,
                     idle_seconds=args.idle)


def hub_cmd(inv: Invocation) -> int:
    """Run a hub in the foreground until SIGTERM or Ctrl-C (logging is set up by `log_options`)."""
    import asyncio

    from transport.mesh import parse_listen

    data = inv.args.hub_data or str(inv.session.path)
    try:
        listen = parse_listen(inv.args.listen)
        auth = build_auth(inv.args)
        limits = build_limits(inv.args)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return asyncio.run(_run_hub(inv, data, listen, auth, limits))


async def _run_hub(inv: Invocation, data: str, listen: tuple[str, int], auth: HubAuth, limits: HubLimits) -> int:
    """Open the store, listen, print where clients connect, and wait for a stop signal."""
    import asyncio
    import signal

    from transport.hub import Hub
    from transport.rooms import LocalRoomStore

    store: Any
    if inv.args.redis:
        from transport.redis_store import RedisRoomStore

        store = RedisRoomStore(inv.args.redis)
        where = f"Redis {inv.args.redis}"
    else:
        store = LocalRoomStore(data, durability=inv.args.durability)
        where = f"{os.path.abspath(data)}/rooms"
    try:
        hub = Hub(store, listen=listen, auth=auth, limits=limits, certfile=inv.args.tls_cert,
                  keyfile=inv.args.tls_key, allow_insecure_public=inv.args.insecure_public)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await hub.start()
        try:
            example = hub.url("ROOM")
            token = " (token required: `Authorization: Bearer TOKEN` or ?token=TOKEN)" if auth.required else ""
            print("\n".join([
                f"agentstate hub: rooms in {where} (pid {os.getpid()})",
                f"  peers, Yjs clients and MCP servers connect to {example}{token}; any room name works",
                f"  health: http://{example.split('://', 1)[1].rsplit('/', 1)[0]}/healthz, readiness /readyz",
                f"  stop: Ctrl-C here, or kill -TERM {os.getpid()}",
            ]), file=sys.stderr)
            print("ready hub", file=sys.stderr, flush=True)
            await stop.wait()
        finally:
            await hub.stop()
    finally:
        await store.close()
    return 0


def register(cli: Registry) -> None:
    """Add `agentstate hub`."""
    cli.command(
        "hub", "Serve many rooms (one board each) on one address; rooms load on first connect.",
        *HUB_OPTIONS,
        description=(
            "Each room is named by the URL path (ws://HOST:PORT/ROOM, as y-websocket does) and kept in\n"
            "its own replica directory under DIR/rooms, opened on its first connection and closed\n"
            "after --idle seconds without one. With --redis, rooms live in Redis Streams instead and\n"
            "any number of hubs serve any room (see docs/hub.md). Tokens may be scoped to rooms.\n"
            "Refusals close with 1013 (limits: retry later), 4401 (token) or 4404 (bad room name)."),
    )(hub_cmd)
