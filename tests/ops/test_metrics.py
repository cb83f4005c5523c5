"""/metrics, /healthz and /readyz on a serve mesh: the scrape parses and moves with real traffic."""

from __future__ import annotations

from pathlib import Path

from replica.replica import Replica
from transport.http import HttpRoutes
from transport.metrics import ServerMetrics, add_health_routes, add_metrics_routes
from transport.service import mesh_service_factory

from tests.ops.opskit import aget, family_names, value
from tests.transport.meshkit import eventually, mesh, running, wait_converged


def http_base(url: str | None) -> str:
    """http://host:port of a mesh's ws:// URL."""
    assert url is not None
    return "http://" + url.removeprefix("ws://").split("/", 1)[0]


async def test_metrics_parse_and_move_when_a_real_peer_syncs(tmp_path: Path) -> None:
    server = Replica.open(tmp_path / "server", durability="paranoid")
    peer = Replica.open(tmp_path / "peer")
    try:
        for index in range(3):
            server.tasks.create(f"seed {index}")
        claimed = server.tasks.create("claimed", id="T-claimed")
        server.claims.claim(claimed.id, "alice", 60)
        service = mesh_service_factory(server, {"listen": "127.0.0.1:0"})
        assert service is not None
        async with running(service.mesh):
            base = http_base(service.mesh.url)
            status, content_type, before = await aget(base + "/metrics")
            assert status == 200 and content_type.startswith("text/plain")
            assert value(before, "agentstate_connections") == 0
            assert value(before, "agentstate_rooms_loaded") == 1
            assert value(before, "agentstate_claims", result="held") == 1
            assert value(before, "agentstate_log_size_bytes") > 0
            assert {"agentstate_apply_seconds", "agentstate_fsync_seconds",
                    "agentstate_rejected_inputs_total"} <= family_names(before)

            dialer = mesh(peer, listen=None, peers=[service.mesh.url])
            async with running(dialer):
                await wait_converged(server, peer)
                peer.tasks.create("from the peer", id="T-peer")
                await eventually(lambda: "T-peer" in server.tasks, what="the peer's write on the server")
                server.tasks.create("from the server", id="T-server")
                await eventually(lambda: "T-server" in peer.tasks, what="the server's write on the peer")
                _, _, during = await aget(base + "/metrics")
                assert value(during, "agentstate_connections") == 1
                for name in ("agentstate_updates_received_total", "agentstate_updates_sent_total",
                             "agentstate_received_bytes_total", "agentstate_sent_bytes_total",
                             "agentstate_apply_seconds_count", "agentstate_fsync_seconds_count"):
                    assert value(during, name) > value(before, name), name
                assert ("agentstate_peer_lag_operations" in family_names(during))
            await eventually(lambda: not service.mesh.connections(), what="the peer to leave")
            _, _, after = await aget(base + "/metrics")
            assert value(after, "agentstate_connections") == 0
            for name in ("agentstate_updates_received_total", "agentstate_sent_bytes_total"):
                assert value(after, name) >= value(during, name), f"{name} went back after the peer left"
    finally:
        peer.close()
        server.close()


async def test_health_and_readiness(tmp_path: Path) -> None:
    replica = Replica.open(tmp_path / "data")
    service = mesh_service_factory(replica, {"listen": "127.0.0.1:0"})
    assert service is not None
    try:
        async with running(service.mesh):
            base = http_base(service.mesh.url)
            assert (await aget(base + "/healthz"))[0] == 200
            status, _, body = await aget(base + "/readyz")
            assert (status, body) == (200, "ready\n")
            missing = await aget(base + "/nothing-here")
            assert missing[0] == 404
    finally:
        replica.close()


async def test_readiness_is_503_with_the_reason_when_a_check_fails() -> None:
    replica = Replica.memory("ready-check")
    problems: list[str] = []
    routes = HttpRoutes()
    add_health_routes(routes, lambda: list(problems))
    metrics = ServerMetrics()
    add_metrics_routes(routes, metrics)
    node = mesh(replica, routes=routes)
    async with running(node):
        metrics.watch(node)
        base = http_base(node.url)
        assert (await aget(base + "/readyz"))[0] == 200
        problems.append("replica closed")
        status, _, body = await aget(base + "/readyz")
        assert status == 503 and "replica closed" in body
        assert (await aget(base + "/healthz"))[0] == 200


async def test_each_server_has_its_own_registry() -> None:
    first, second = ServerMetrics(), ServerMetrics()
    a, b = Replica.memory("metrics-a"), Replica.memory("metrics-b")
    node_a, node_b = mesh(a), mesh(b)
    first.watch(node_a)
    second.watch(node_b)
    second.watch(mesh(Replica.memory("metrics-c")))
    assert value(first.render().decode(), "agentstate_rooms_loaded") == 1
    assert value(second.render().decode(), "agentstate_rooms_loaded") == 2
    second.unwatch(node_b)
    assert value(second.render().decode(), "agentstate_rooms_loaded") == 1
