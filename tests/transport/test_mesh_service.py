"""MeshService and its factory: options in, a running mesh with status and commands out."""

from __future__ import annotations

from pathlib import Path

import pytest

from replica.replica import Replica
from transport.auth import InsecureListenError
from transport.mesh import parse_listen
from transport.service import MeshService, build_limits, mesh_service_factory

from tests.transport.meshkit import FAST_RECONNECT, eventually, mesh, running, wait_converged


def test_factory_declines_without_listen_or_peers() -> None:
    replica = Replica.memory("a")
    assert mesh_service_factory(replica, {}) is None
    assert mesh_service_factory(replica, {"listen": None, "peers": []}) is None


def test_factory_reads_the_serve_options() -> None:
    replica = Replica.memory("a")
    service = mesh_service_factory(replica, {
        "listen": "127.0.0.1:0",
        "peers": ["ws://127.0.0.1:9"],
        "room": "project/board",
        "token": "s3cret",
        "read_only_tokens": ["viewer"],
        "limits": {"max_connections": 3},
        "max_frame_size": 1 << 20,
    })
    assert isinstance(service, MeshService) and service.name == "mesh"
    node = service.mesh
    assert node.room == "project/board" and node.listen == ("127.0.0.1", 0)
    assert node.limits.max_connections == 3 and node.limits.max_frame_size == 1 << 20
    assert set(service.commands) >= {"peers", "presence"}
    assert service.status()["peers"][0]["url"] == "ws://127.0.0.1:9"


def test_factory_applies_the_exposure_rule() -> None:
    replica = Replica.memory("a")
    with pytest.raises(InsecureListenError):
        mesh_service_factory(replica, {"listen": "0.0.0.0:0"})
    assert mesh_service_factory(replica, {"listen": "0.0.0.0:0", "insecure_public": True}) is not None
    assert mesh_service_factory(replica, {"listen": "0.0.0.0:0", "token": "t"}) is not None


@pytest.mark.parametrize("bad", [{"limits": {"no_such_limit": 1}}, {"peers": [3]}, {"peers": ["http://x"]}])
def test_factory_refuses_bad_options(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        mesh_service_factory(Replica.memory("a"), {"listen": "127.0.0.1:0", **bad})


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8765", "host:", "host:99999", ":80"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    assert build_limits({}).max_connections > 0


async def test_service_runs_reports_and_takes_commands(tmp_path: Path) -> None:
    a = Replica.open(tmp_path / "a")
    b = Replica.memory("b")
    try:
        service = mesh_service_factory(a, {"listen": "127.0.0.1:0", "presence": {"agent": "builder"}})
        assert service is not None
        await service.start()
        try:
            node_b = mesh(b, listen=None, peers=[service.mesh.url], reconnect=FAST_RECONNECT)
            async with running(node_b):
                a.tasks.create("served")
                await wait_converged(a, b)
                status = service.status()
                assert status["replica_id"] == a.replica_id and status["listening"] == service.mesh.url
                assert [peer["replica_id"] for peer in status["peers"]] == ["b"]
                assert status["peers"][0]["connected"] is True
                assert {"bytes_in", "bytes_out", "messages_in", "messages_out"} <= set(status["totals"])
                assert service.commands["peers"]({})["peers"][0]["replica_id"] == "b"
                reply = service.commands["presence"]({"fields": {"working_on": "T-9"}})
                assert reply["state"]["working_on"] == "T-9" and reply["state"]["agent"] == "builder"
                await eventually(lambda: any(s["state"].get("working_on") == "T-9" for s in node_b.online()),
                                 what="presence reached b")
        finally:
            await service.stop()
        assert a.durable_lsn == a.last_lsn
    finally:
        a.close()
