"""The transport's part of the `agentstate` command: network options for `serve`, peers in `status`, `demo`."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from replica.cli import register_status_renderer

SERVE_OPTIONS = [
    click.Option(["--listen"], default=None, metavar="HOST:PORT",
                 help="Accept peers and Yjs clients on this address (room = URL path)."),
    click.Option(["--peer", "peers"], multiple=True, metavar="URL",
                 help="Dial this peer (ws://host:port/room or wss://...); repeatable."),
    click.Option(["--room"], default="agentstate", show_default=True, help="Room (document) name."),
    click.Option(["--token"], default=None, envvar="AGENTSTATE_TOKEN",
                 help="Bearer token peers must present (read-write)."),
    click.Option(["--read-only-token", "read_only_tokens"], multiple=True,
                 help="Token whose holders may read but not write; repeatable."),
    click.Option(["--peer-token"], default=None, envvar="AGENTSTATE_PEER_TOKEN",
                 help="Token to present when dialing peers (default: --token)."),
    click.Option(["--tls-cert"], default=None, type=click.Path(exists=True, dir_okay=False),
                 help="Certificate to listen with wss://."),
    click.Option(["--tls-key"], default=None, type=click.Path(exists=True, dir_okay=False),
                 help="Private key for --tls-cert."),
    click.Option(["--tls-ca"], default=None, type=click.Path(exists=True, dir_okay=False),
                 help="CA bundle to verify wss:// peers."),
    click.Option(["--insecure-no-token-i-understand", "insecure_public"], is_flag=True,
                 help="Allow listening beyond loopback without a token."),
]


def _render_peers(console: Console, data: Any) -> None:
    if not isinstance(data, dict):
        return
    peers = data.get("peers") or []
    table = Table(title="peers", box=None, pad_edge=False, title_justify="left")
    for column in ("peer", "replica", "state", "last seen", "behind"):
        table.add_column(column)
    for peer in peers:
        table.add_row(str(peer.get("url") or peer.get("remote") or ""), str(peer.get("replica_id") or ""),
                      "connected" if peer.get("connected") else "disconnected",
                      str(peer.get("last_seen") or ""), str(peer.get("behind", "")))
    console.print(table)
    online = data.get("online") or []
    if online:
        console.print("online: " + ", ".join(
            f"{a.get('name') or a.get('replica_id') or a.get('client_id')}"
            + (f" ({a['working_on']})" if a.get("working_on") else "") for a in online if isinstance(a, dict)))
    rejected = data.get("rejections") or {}
    if rejected:
        console.print("rejected: " + ", ".join(f"{k}={v}" for k, v in sorted(rejected.items())))


def register(cli: click.Group) -> None:
    """Add the network options to `serve`, the peers section to `status`, and `demo`."""
    serve = cli.commands.get("serve")
    if serve is not None:
        known = {p.name for p in serve.params}
        serve.params.extend(o for o in SERVE_OPTIONS if o.name not in known)
    register_status_renderer("mesh", _render_peers)
    from .demo import demo

    cli.add_command(demo)
