"""Mesh safety on loopback: tokens, read-only peers, TLS, exposure rule, limits, bad input."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pycrdt import Doc, Map

from replica.replica import Replica
from transport import closecodes
from transport.auth import InsecureListenError
from transport.limits import Limits
from transport.mesh import Mesh
from transport.messages import (
    AuthPermissionDenied,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    encode,
)
from transport.session import READ_ONLY_REASON

from tests.transport.meshkit import (
    close_code_of,
    converged,
    eventually,
    fingerprint,
    mesh,
    raw_client,
    receive_message,
    running,
    snapshot,
    wait_converged,
)


def rejection_lines(caplog: pytest.LogCaptureFixture, reason: str) -> list[str]:
    """The structured rejection lines logged for `reason`."""
    return [r.getMessage() for r in caplog.records if f"event=rejected reason={reason} " in r.getMessage()]


def foreign_update() -> bytes:
    """A valid update the server does not hold yet."""
    doc = Doc()
    doc.get("notes", type=Map)["foreign"] = "value"
    return doc.get_update()


async def assert_serving(node: Mesh) -> None:
    """The node still accepts a fresh client and opens with step 1."""
    client = await raw_client(node.url)
    await receive_message(client, SyncStep1)
    await client.close()


async def test_missing_or_wrong_token_is_refused_with_4401(caplog: pytest.LogCaptureFixture) -> None:
    a = Replica.memory("a")
    node = mesh(a, tokens=["s3cret"])
    async with running(node):
        before = fingerprint(a)
        for kwargs in ({}, {"additional_headers": {"Authorization": "Bearer wrong"}}):
            client = await raw_client(node.url, **kwargs)
            denied = await receive_message(client, AuthPermissionDenied)
            assert denied.reason in ("missing token", "wrong token")
            assert await close_code_of(client) == closecodes.UNAUTHORIZED
        wrong_query = await raw_client(f"{node.url}?token=nope")
        assert await close_code_of(wrong_query) == closecodes.UNAUTHORIZED
        assert node.status()["rejections"]["unauthorized"] == 3
        assert len(rejection_lines(caplog, "unauthorized")) == 3
        assert fingerprint(a) == before


async def test_query_and_header_tokens_are_accepted() -> None:
    a, b = Replica.memory("a"), Replica.memory("b")
    node_a = mesh(a, tokens=["s3cret"])
    async with running(node_a):
        client = await raw_client(f"{node_a.url}?token=s3cret")
        await receive_message(client, SyncStep1)
        await client.close()
        node_b = mesh(b, listen=None, peers=[node_a.url], peer_token="s3cret")
        async with running(node_b):
            b.tasks.create("via header token")
            await wait_converged(a, b)
        assert "unauthorized" not in node_a.status()["rejections"]


async def test_read_only_token_updates_are_refused_and_never_applied(caplog: pytest.LogCaptureFixture) -> None:
    a = Replica.memory("a")
    a.tasks.create("visible to readers", id="t-1")
    node = mesh(a, tokens=["writer"], read_only_tokens=["reader"], limits=Limits(read_only_strikes=3))
    async with running(node):
        client = await raw_client(f"{node.url}?token=reader")
        await receive_message(client, SyncStep1)
        doc = Doc()
        await client.send(encode(SyncStep1(doc.get_state())))
        step2 = await receive_message(client, SyncStep2)
        doc.apply_update(step2.update)
        assert "t-1" in doc.get("tasks", type=Map)
        before = fingerprint(a)
        await client.send(encode(SyncUpdate(foreign_update())))
        denied = await receive_message(client, AuthPermissionDenied)
        assert denied.reason == READ_ONLY_REASON
        assert fingerprint(a) == before
        a.tasks.create("readers still receive updates", id="t-2")
        while "t-2" not in doc.get("tasks", type=Map):
            doc.apply_update((await receive_message(client, SyncUpdate)).update)
        before = fingerprint(a)
        await client.send(encode(SyncStep2(foreign_update())))
        await client.send(encode(SyncUpdate(foreign_update())))
        assert await close_code_of(client) == closecodes.FORBIDDEN
        assert fingerprint(a) == before
        assert "foreign" not in snapshot(a).get("notes", type=Map)
        rejections = node.status()["rejections"]
        assert rejections["read_only_update"] == 3 and rejections["read_only_writes"] == 1
        assert len(rejection_lines(caplog, "read_only_update")) == 3


async def test_read_only_mesh_peer_receives_but_cannot_write() -> None:
    a, b = Replica.memory("a"), Replica.memory("b")
    node_a = mesh(a, tokens=["writer"], read_only_tokens=["reader"])
    async with running(node_a):
        node_b = mesh(b, listen=None, peers=[node_a.url], peer_token="reader")
        async with running(node_b):
            a.tasks.create("from the writer", id="t-a")
            await eventually(lambda: "t-a" in b.tasks, what="reader got the write")
            before = fingerprint(a)
            b.tasks.create("from the reader", id="t-b")
            await eventually(lambda: node_b.connections()[0].counters["denied_by_peer"] >= 1, what="denial")
            assert "t-b" not in a.tasks and fingerprint(a) == before


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


async def test_tls_round_trip(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    a, b, c = Replica.memory("a"), Replica.memory("b"), Replica.memory("c")
    node_a = mesh(a, certfile=str(cert), keyfile=str(key))
    async with running(node_a):
        assert node_a.url is not None and node_a.url.startswith("wss://")
        node_b = mesh(b, listen=None, peers=[node_a.url], cafile=str(cert))
        untrusting = mesh(c, listen=None, peers=[node_a.url])
        async with running(node_b, untrusting):
            a.tasks.create("over tls")
            b.tasks.create("back over tls")
            await wait_converged(a, b)
            await eventually(lambda: "CERTIFICATE" in (untrusting.status()["peers"][0]["last_error"] or "").upper(),
                             what="a client without the CA refuses the certificate")
            assert len(c.tasks) == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.org"])
def test_refuses_to_listen_beyond_loopback_without_a_token(host: str) -> None:
    replica = Replica.memory("a")
    with pytest.raises(InsecureListenError, match="insecure-no-token-i-understand"):
        Mesh(replica, listen=(host, 0))
    Mesh(replica, listen=(host, 0), tokens=["s3cret"])
    Mesh(replica, listen=(host, 0), allow_insecure_public=True)
    Mesh(replica, listen=("127.0.0.1", 0))
    Mesh(replica, listen=("::1", 0))


async def test_frame_too_big_closes_4413_and_server_stays_up(caplog: pytest.LogCaptureFixture) -> None:
    a = Replica.memory("a")
    node = mesh(a, limits=Limits(max_frame_size=4096))
    async with running(node):
        before = fingerprint(a)
        client = await raw_client(node.url)
        await client.send(encode(SyncUpdate(b"\x00\x00" + bytes(5000))))
        assert await close_code_of(client) == closecodes.FRAME_TOO_BIG
        await eventually(lambda: node.status()["rejections"].get("frame_too_big") == 1, what="counted")
        assert len(rejection_lines(caplog, "frame_too_big")) == 1
        assert fingerprint(a) == before
        await assert_serving(node)


async def test_rate_limit_closes_4429() -> None:
    a = Replica.memory("a")
    node = mesh(a, limits=Limits(messages_per_second=5, message_burst=10))
    async with running(node):
        client = await raw_client(node.url)
        for _ in range(40):
            await client.send(encode(QueryAwareness()))
        assert await close_code_of(client) == closecodes.RATE_LIMITED
        assert node.status()["rejections"]["rate_limited"] == 1
        await assert_serving(node)


async def test_connection_limit_closes_1013() -> None:
    a = Replica.memory("a")
    node = mesh(a, limits=Limits(max_connections=2))
    async with running(node):
        first, second = await raw_client(node.url), await raw_client(node.url)
        for client in (first, second):
            await receive_message(client, SyncStep1)
        third = await raw_client(node.url)
        assert await close_code_of(third) == closecodes.TRY_AGAIN_LATER
        assert node.status()["rejections"]["connection_limit"] == 1
        await first.close()
        await eventually(lambda: len(node.connections()) == 1, what="slot freed")
        await assert_serving(node)
        await second.close()


async def test_wrong_room_closes_4404() -> None:
    a = Replica.memory("a")
    node = mesh(a, room="project/board")
    async with running(node):
        assert node.url is not None and node.url.endswith("/project/board")
        client = await raw_client(node.url.replace("project/board", "other"))
        assert await close_code_of(client) == closecodes.ROOM_MISMATCH
        await assert_serving(node)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (encode(SyncUpdate(b"\x05\x01\x02\x03garbage")), "invalid_update"),
        (b"\x00\x07", "protocol_error"),
        (b"\x42", "protocol_error"),
        ("text frame", "protocol_error"),
    ],
)
async def test_malformed_input_closes_4400_and_changes_nothing(frame: bytes | str, reason: str) -> None:
    a, b = Replica.memory("a"), Replica.memory("b")
    a.tasks.create("existing")
    node_a = mesh(a)
    async with running(node_a):
        node_b = mesh(b, listen=None, peers=[node_a.url])
        async with running(node_b):
            await wait_converged(a, b)
            before = fingerprint(a)
            client = await raw_client(node_a.url)
            await client.send(frame)
            assert await close_code_of(client) == closecodes.PROTOCOL_ERROR
            assert node_a.status()["rejections"][reason] == 1
            assert fingerprint(a) == before
            a.tasks.create("peer unaffected")
            await wait_converged(a, b)
            assert converged(a, b) and len(b.tasks) == 2


async def test_structs_from_the_future_are_held_back_and_repaired() -> None:
    """An update that would leave structs pending is cut; the peer is asked for the rest."""
    a = Replica.memory("a")
    node = mesh(a)
    async with running(node):
        client = await raw_client(node.url)
        await receive_message(client, SyncStep1)
        doc = Doc()
        updates: list[bytes] = []
        doc.observe(lambda event: updates.append(event.update))
        await client.send(encode(SyncStep2(b"\x00\x00")))
        await client.send(encode(SyncStep1(doc.get_state())))
        doc.apply_update((await receive_message(client, SyncStep2)).update)
        updates.clear()
        board = doc.get("notes", type=Map)
        board["first"], board["second"] = "1", "2"
        await eventually(lambda: node.connections()[0].synced_at is not None, what="synced")
        await client.send(encode(SyncUpdate(updates[1])))
        repair = await receive_message(client, SyncStep1)
        assert "second" not in snapshot(a).get("notes", type=Map), "a struct from the future is not applied"
        await client.send(encode(SyncStep2(doc.get_update(repair.state_vector))))
        await eventually(lambda: snapshot(a).get("notes", type=Map).to_py() == {"first": "1", "second": "2"},
                         what="repaired by the client's step 2")
        assert node.connections()[0].counters["updates_deferred"] == 1
        assert node.status()["rejections"] == {}
        await client.close()


async def test_a_forged_future_struct_cannot_hit_the_servers_own_later_writes() -> None:
    a, b = Replica.memory("a"), Replica.memory("b")
    node_a = mesh(a)
    async with running(node_a):
        node_b = mesh(b, listen=None, peers=[node_a.url])
        async with running(node_b):
            await wait_converged(a, b)
            twin = Doc(client_id=a.client_id)
            twin.apply_update(a.diff())
            probe: list[bytes] = []
            twin.observe(lambda event: probe.append(event.update))
            twin.get("notes", type=Map)["ahead"] = "x"
            twin.get("notes", type=Map)["further"] = "y"
            forged = probe[1]
            client = await raw_client(node_a.url)
            await receive_message(client, SyncStep1)
            await client.send(encode(SyncUpdate(forged)))
            await eventually(lambda: any(c.counters["updates_deferred"] for c in node_a.connections()),
                             what="the forged struct held back")
            await client.close()
            for index in range(3):
                a.tasks.create(f"own write {index}")
            await wait_converged(a, b)
            assert "further" not in snapshot(a).get("notes", type=Map)


async def test_an_update_with_trailing_junk_is_refused_not_half_applied() -> None:
    """Found by the live fuzz test: pycrdt ignores bytes after an update's delete set, so a
    malformed update could slip pending parts past the integrity check and later delete a
    peer's real write. Such an update must be refused with 4400 and change nothing."""
    server = Replica.memory("trailing-junk-server")
    server.tasks.create("seed", id="t-seed")
    node = mesh(server)
    async with running(node):
        before = fingerprint(server)
        client = await raw_client(node.url)
        await receive_message(client, SyncStep1)
        forged = server.diff(None) + b"\x01\x02\x03"
        await client.send(encode(SyncUpdate(forged)))
        code = await close_code_of(client)
        assert code == closecodes.PROTOCOL_ERROR
        assert fingerprint(server) == before
        assert node.status()["rejections"].get("invalid_update", 0) == 1
