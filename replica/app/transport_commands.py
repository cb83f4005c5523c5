"""The transport's part of the `agentstate` command: network options for `serve`, peers in `status`, `demo`.

Imported on every `serve`, `status` and `--help`, so it imports only `replica.app.cli`; the
mesh and the demo load when they run.
"""

from __future__ import annotations

import os
import sys

from .cli import Arg, Invocation, Registry, listen_address, table_lines

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def existing_file(text: str) -> str:
    """An argparse type: a path to an existing regular file."""
    import argparse

    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return text


SERVE_OPTIONS = [
    Arg("--listen", default=None, type=listen_address, metavar="HOST:PORT",
        help="accept peers and Yjs clients on this address (room = URL path), e.g. 127.0.0.1:8765"),
    Arg("--peer", dest="peers", action="append", metavar="URL",
        help="dial this peer (ws://host:port/room or wss://...); repeatable"),
    Arg("--room", default="agentstate", help="room (document) name (default agentstate)"),
    Arg("--token", default=None, env="AGENTSTATE_TOKEN", help="bearer token peers must present (read-write)"),
    Arg("--read-only-token", dest="read_only_tokens", action="append", metavar="TOKEN",
        help="token whose holders may read but not write; repeatable"),
    Arg("--peer-token", default=None, env="AGENTSTATE_PEER_TOKEN",
        help="token to present when dialing peers (default: --token)"),
    Arg("--tls-cert", type=existing_file, default=None, metavar="FILE", help="certificate to listen with wss://"),
    Arg("--tls-key", type=existing_file, default=None, metavar="FILE", help="private key for --tls-cert"),
    Arg("--tls-ca", type=existing_file, default=None, metavar="FILE", help="CA bundle to verify wss:// peers"),
    Arg("--insecure-no-token-i-understand", dest="insecure_public", action="store_true",
        help="allow listening beyond loopback without a token"),
    Arg("--arbiter", action="store_true",
        help="decide the room's task claims: recorded in the document, claimants on other replicas ask this node"),
    Arg("--advertise", default=None, metavar="URL",
        help="with --arbiter: the URL claimants reach this node at (default: the --listen URL)"),
]


def peer_lines(data: Any) -> list[str]:
    """The peers section of `agentstate status`: one line per peer, then who is online and rejections."""
    if not isinstance(data, dict):
        return []
    lines = [f"listening: {data.get('listening') or 'no'}", "peers:"]
    rows = [(peer.get("url") or peer.get("remote") or "", peer.get("replica_id") or "",
             "connected" if peer.get("connected") else "disconnected", peer.get("last_seen") or "",
             peer.get("behind", "")) for peer in data.get("peers") or []]
    lines += [f"  {line}" for line in table_lines(("peer", "replica", "state", "last seen", "behind"), rows)] \
        if rows else ["  none"]
    online = [a for a in data.get("online") or [] if isinstance(a, dict)]
    if online:
        lines.append("online: " + ", ".join(
            f"{a.get('name') or a.get('replica_id') or a.get('client_id')}"
            + (f" ({a['working_on']})" if a.get("working_on") else "") for a in online))
    rejected = data.get("rejections") or {}
    if rejected:
        lines.append("rejected: " + ", ".join(f"{k}={v}" for k, v in sorted(rejected.items())))
    return lines


def serve_note(options: dict[str, Any], status: dict[str, Any]) -> list[str]:
    """What `serve` says about the network: the URL peers and Yjs clients use, or how to get one."""
    mesh = status.get("mesh") or {}
    url = mesh.get("listening")
    lines: list[str] = []
    if url:
        token = " (token required: `Authorization: Bearer TOKEN` or ?token=TOKEN)" if mesh.get("token_required") else ""
        lines.append(f"peers and Yjs clients connect to: {url}{token}")
    else:
        lines.append("not accepting peers or Yjs clients: restart with --listen 127.0.0.1:8765 "
                     "(and --token SECRET) to give them an address")
    for peer in options.get("peers") or []:
        lines.append(f"dialing peer {peer}")
    return lines


def demo(inv: Invocation) -> int:
    """Run the demo in a temporary directory; JSON on stdout with --json, tables otherwise."""
    import asyncio
    import json
    import tempfile
    from pathlib import Path

    import click
    from rich.console import Console

    from transport.demo import run_demo

    console = Console(stderr=inv.args.as_json, highlight=False)
    with tempfile.TemporaryDirectory(prefix="agentstate-demo-") as workdir:
        try:
            outcome = asyncio.run(run_demo(console, Path(workdir), inv.args.timeout))
        except click.ClickException as exc:
            print(f"error: {exc.format_message()}", file=sys.stderr)
            return 1
    if inv.args.as_json:
        print(json.dumps(outcome, indent=2))
    return 0


def register(cli: Registry) -> None:
    """Add the network options to `serve`, the peers section to `status`, the serve note, and `demo`."""
    cli.extend("serve", *SERVE_OPTIONS)
    cli.register_status_renderer("mesh", peer_lines)
    cli.register_serve_note(serve_note)
    cli.command("demo", "Start three replicas on loopback, write while partitioned, heal, and show them converge.",
                Arg("--timeout", type=float, default=30.0, help="give up converging after this many seconds "
                                                                 "(default 30)"),
                Arg("--json", dest="as_json", action="store_true", help="print the outcome as JSON"))(demo)
