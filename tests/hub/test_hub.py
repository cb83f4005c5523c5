"""The hub: many rooms on one address, tokens scoped to rooms, limits, idle unload, real clients."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from replica.replica import Replica
from transport import closecodes
from transport.hub import HubAuth, HubLimits, RoomGrant, resident_memory
from transport.rooms import LocalRoomStore, room_directory_name

from tests.hub.hubkit import HAS_NODE, YjsPeer, room_peer, running_hub
from tests.transport.meshkit import close_code_of, eventually, step1_frame


def task_ids(replica: Replica) -> set[str]:
    """Ids of the tasks a replica holds."""
    return {task.id for task in replica.tasks.list()}


async def test_two_replicas_meet_in_a_room_and_other_rooms_stay_apart(tmp_path: Path) -> None:
    async with running_hub(LocalRoomStore(tmp_path / "hub")) as hub:
        a, b, c = (Replica.open(tmp_path / name) for name in "abc")
        try:
            a.tasks.create("written on a", id="T-hub-a")
            c.tasks.create("written on c", id="T-hub-c")
            async with room_peer(a, hub.url("alpha")), room_peer(b, hub.url("alpha")), \
                    room_peer(c, hub.url("beta")):
                await eventually(lambda: "T-hub-a" in task_ids(b), what="a's task on b through room alpha")
                b.tasks.create("written on b", id="T-hub-b")
                await eventually(lambda: "T-hub-b" in task_ids(a), what="b's task on a")
                await eventually(lambda: "T-hub-c" in {t.id for t in hub.room("beta").opened.replica.tasks.list()},
                                 what="c's task in room beta")
                assert hub.rooms() == ["alpha", "beta"]
                assert "T-hub-c" not in task_ids(a) | task_ids(b)
                assert not {"T-hub-a", "T-hub-b"} & task_ids(c)
        finally:
            for replica in (a, b, c):
                replica.close()
    # each room kept its state in its own directory
    alpha = Replica.open(tmp_path / "hub" / "rooms" / "alpha")
    try:
        assert {"T-hub-a", "T-hub-b"} <= task_ids(alpha)
    finally:
        alpha.close()


async def test_room_names_map_to_safe_distinct_directories(tmp_path: Path) -> None:
    names = ["a/b", "a%2Fb", "..", ".", "ünï cödé", "x" * 200]
    encoded = [room_directory_name(name) for name in names]
    assert len(set(encoded)) == len(names)
    assert all("/" not in e and e not in (".", "..") and not e.startswith(".") for e in encoded)
    async with running_hub(LocalRoomStore(tmp_path / "hub")) as hub:
        replica = Replica.open(tmp_path / "r")
        try:
            async with room_peer(replica, hub.url("..")):
                await eventually(lambda: hub.rooms() == [".."], what="room '..' loaded")
        finally:
            replica.close()
        assert (tmp_path / "hub" / "rooms" / "%2E%2E").is_dir()


async def test_tokens_are_scoped_to_rooms(tmp_path: Path) -> None:
    auth = HubAuth([RoomGrant("proj-token", ("proj-*",)), RoomGrant("viewer", ("proj-*",), read_only=True),
                    RoomGrant("admin")])
    async with running_hub(LocalRoomStore(tmp_path / "hub"), auth=auth) as hub:
        for url, why in ((hub.url("other"), "token not valid for room"), (hub.url("proj-1"), "wrong token")):
            token = "proj-token" if "other" in url else "nope"
            async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                assert await close_code_of(ws) == closecodes.UNAUTHORIZED
                assert why in (ws.close_reason or "")
        async with connect(hub.url("proj-1")) as ws:
            assert await close_code_of(ws) == closecodes.UNAUTHORIZED
        assert hub.rooms() == []  # nothing was loaded for refused clients

        writer, viewer = Replica.open(tmp_path / "w"), Replica.open(tmp_path / "v")
        try:
            viewer.tasks.create("the viewer tries to write", id="T-viewer")
            async with room_peer(writer, hub.url("proj-1"), token="proj-token"), \
                    room_peer(viewer, hub.url("proj-1"), token="viewer"):
                writer.tasks.create("by the writer", id="T-writer")
                await eventually(lambda: "T-writer" in task_ids(viewer), what="viewer reads the room")
                room = hub.room("proj-1")
                assert room is not None
                await eventually(lambda: room.mesh.status()["rejections"].get("read_only_update", 0) >= 1,
                                 what="the viewer's write refused")
                assert "T-viewer" not in task_ids(room.opened.replica)
            admin = Replica.open(tmp_path / "admin")
            try:
                async with room_peer(admin, hub.url("anything"), token="admin"):
                    await eventually(lambda: "anything" in hub.rooms(), what="admin opens any room")
            finally:
                admin.close()
        finally:
            writer.close()
            viewer.close()


def test_tokens_file_is_validated(tmp_path: Path) -> None:
    good = tmp_path / "tokens.json"
    good.write_text('[{"token": "t1", "rooms": ["a-*"], "access": "read-only"}, {"token": "t2"}]')
    auth = HubAuth.from_file(good)
    assert auth.check("t1", "a-1").read_only and auth.check("t1", "a-1").allowed
    assert not auth.check("t1", "b").allowed
    assert auth.check("t2", "b").allowed and not auth.check("t2", "b").read_only
    for text in ('{"token": "x"}', '[{"token": ""}]', '[{"token": "x", "access": "admin"}]',
                 '[{"token": "x", "rooms": "a"}]', '[{"token": "x", "extra": 1}]', "not json"):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ValueError, match="tokens file"):
            HubAuth.from_file(bad)


async def test_limits_refuse_with_clear_codes(tmp_path: Path) -> None:
    limits = HubLimits(max_rooms=2, max_room_connections=1, idle_seconds=60)
    async with running_hub(LocalRoomStore(tmp_path / "hub"), limits=limits) as hub:
        async with connect(hub.url("r1")) as one, connect(hub.url("r2")) as two:
            await one.send(step1_frame())
            await two.send(step1_frame())
            await eventually(lambda: hub.rooms() == ["r1", "r2"], what="two rooms loaded")
            async with connect(hub.url("r3")) as three:
                assert await close_code_of(three) == closecodes.TRY_AGAIN_LATER
                assert "rooms loaded already" in (three.close_reason or "")
            async with connect(hub.url("r1")) as again:
                assert await close_code_of(again) == closecodes.TRY_AGAIN_LATER
                assert "connections already" in (again.close_reason or "")
        async with connect(f"ws://127.0.0.1:{hub.address[1]}/") as nameless:
            assert await close_code_of(nameless) == closecodes.ROOM_MISMATCH
        assert hub.status()["refusals"] == {"room_limit": 1, "room_connection_limit": 1, "invalid_room": 1}


async def test_memory_bound_refuses_new_rooms(tmp_path: Path) -> None:
    used = resident_memory()
    assert used is not None
    limits = HubLimits(max_memory_bytes=max(1, used // 2))
    async with running_hub(LocalRoomStore(tmp_path / "hub"), limits=limits) as hub:
        async with connect(hub.url("big")) as ws:
            assert await close_code_of(ws) == closecodes.TRY_AGAIN_LATER
            assert "MiB" in (ws.close_reason or "")


async def test_idle_rooms_unload_and_reload_from_their_directory(tmp_path: Path) -> None:
    limits = HubLimits(idle_seconds=0.2)
    async with running_hub(LocalRoomStore(tmp_path / "hub"), limits=limits) as hub:
        replica = Replica.open(tmp_path / "r")
        try:
            async with room_peer(replica, hub.url("board")):
                replica.tasks.create("kept across unloads", id="T-kept")
                await eventually(lambda: hub.room("board") is not None
                                 and "T-kept" in task_ids(hub.room("board").opened.replica), what="task in room")
            await eventually(lambda: hub.status()["rooms_closed"] == 1, what="idle room unloaded")
            assert hub.rooms() == []
            fresh = Replica.open(tmp_path / "fresh")
            try:
                async with room_peer(fresh, hub.url("board")):
                    await eventually(lambda: "T-kept" in task_ids(fresh), what="room reloaded with its state")
            finally:
                fresh.close()
        finally:
            replica.close()


async def test_a_client_arriving_while_the_room_unloads_gets_it_reloaded(tmp_path: Path) -> None:
    limits = HubLimits(idle_seconds=0.0)
    async with running_hub(LocalRoomStore(tmp_path / "hub"), limits=limits) as hub:
        for round_ in range(20):
            replica = Replica.open(tmp_path / f"r{round_}")
            try:
                replica.tasks.create(f"round {round_}", id=f"T-round-{round_}")
                async with room_peer(replica, hub.url("churn")):
                    await eventually(lambda: hub.room("churn") is not None
                                     and f"T-round-{round_}" in task_ids(hub.room("churn").opened.replica),
                                     what=f"round {round_} written")
            finally:
                replica.close()
        await eventually(lambda: hub.rooms() == [], what="room unloaded at the end")
    final = Replica.open(tmp_path / "hub" / "rooms" / "churn")
    try:
        assert {f"T-round-{n}" for n in range(20)} <= task_ids(final)
    finally:
        final.close()


async def test_another_process_writing_a_room_directory_reaches_its_clients(tmp_path: Path) -> None:
    store = LocalRoomStore(tmp_path / "hub")
    async with running_hub(store) as hub:
        replica = Replica.open(tmp_path / "r")
        try:
            async with room_peer(replica, hub.url("shared")):
                await eventually(lambda: hub.room("shared") is not None, what="room loaded")
                proc = await asyncio.create_subprocess_exec(
                    str(Path(".venv/bin/agentstate").resolve()), "--data", str(store.path_of("shared")),
                    "task", "add", "from the CLI", "--id", "T-from-cli")
                assert await proc.wait() == 0
                await eventually(lambda: "T-from-cli" in task_ids(replica), what="CLI write relayed by the hub")
        finally:
            replica.close()


async def test_two_hubs_cannot_serve_one_directory(tmp_path: Path) -> None:
    from replica.errors import DataDirLockedError

    first = LocalRoomStore(tmp_path / "hub")
    try:
        with pytest.raises(DataDirLockedError, match="held by another process"):
            LocalRoomStore(tmp_path / "hub")
    finally:
        await first.close()
    second = LocalRoomStore(tmp_path / "hub")
    await second.close()


async def test_two_hundred_rooms_unload_and_memory_returns(tmp_path: Path) -> None:
    limits = HubLimits(idle_seconds=0.1)
    async with running_hub(LocalRoomStore(tmp_path / "hub", durability="lazy"), limits=limits) as hub:

        async def load_and_leave(round_: int) -> tuple[int, int, int]:
            start = resident_memory()
            clients = [await connect(hub.url(f"room-{n}")) for n in range(200)]
            for ws in clients:
                await ws.send(step1_frame())
            await eventually(lambda: len(hub.rooms()) == 200, timeout=60, what="200 rooms loaded")
            peak = resident_memory()
            for ws in clients:
                await ws.close()
            await eventually(lambda: hub.status()["rooms_closed"] == 200 * round_, timeout=60,
                             what="all 200 rooms unloaded")
            await eventually(lambda: hub._trim_timer is None, timeout=10, what="memory handed back")
            end = resident_memory()
            assert start is not None and peak is not None and end is not None
            return start, peak, end

        await load_and_leave(1)  # warm up: imports, thread pool, allocator arenas
        start, peak, end = await load_and_leave(2)
        assert hub.rooms() == [] and hub.status()["rooms_opened"] == 400
        print(f"\nhub RSS: start {start / 2**20:.1f} MiB, 200 rooms loaded {peak / 2**20:.1f} MiB, "
              f"after they unloaded {end / 2**20:.1f} MiB")
        assert end - start < 4 * 2**20 + (peak - start) / 4, "memory did not return near the start"


@pytest.mark.skipif(not HAS_NODE, reason="needs Node.js and `npm ci` in tests/")
async def test_plain_yjs_clients_and_a_replica_share_a_room(tmp_path: Path) -> None:
    async with running_hub(LocalRoomStore(tmp_path / "hub")) as hub:
        base = hub.url("x").rsplit("/", 1)[0]
        first = await YjsPeer.start(base, "yroom", "js1", "js2")
        second = await YjsPeer.start(base, "yroom", "js2", "js1")
        try:
            assert await first.expect("SEEN") == "from-js1".replace("1", "2")
            assert await second.expect("SEEN") == "from-js1"
        finally:
            first.kill()
            second.kill()
        replica = Replica.open(tmp_path / "r")
        try:
            async with room_peer(replica, hub.url("yroom")):
                await eventually(lambda: replica.doc.get("probe", type=__import__("pycrdt").Map).get("js1")
                                 == "from-js1", what="the Yjs clients' writes reach a replica in the room")
        finally:
            replica.close()


def scrape(url: str) -> dict[str, float]:
    """GET /metrics and parse it with prometheus_client's parser: sample name+labels -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode("utf-8")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def test_hub_metrics_and_health_move_with_traffic(tmp_path: Path) -> None:
    async with running_hub(LocalRoomStore(tmp_path / "hub")) as hub:
        base = f"http://127.0.0.1:{hub.address[1]}"
        before = await asyncio.to_thread(scrape, base + "/metrics")
        assert before["agentstate_rooms_loaded{}"] == 0
        a, b = Replica.open(tmp_path / "a"), Replica.open(tmp_path / "b")
        try:
            async with room_peer(a, hub.url("m1")), room_peer(b, hub.url("m2")):
                a.tasks.create("counted", id="T-counted")
                await eventually(lambda: hub.room("m1") is not None
                                 and "T-counted" in task_ids(hub.room("m1").opened.replica), what="write arrived")
                await eventually(lambda: hub.rooms() == ["m1", "m2"]
                                 and all(len(hub.room(name).mesh.connections()) == 1 for name in ("m1", "m2")),
                                 what="both rooms loaded, one connection each")
                during = await asyncio.to_thread(scrape, base + "/metrics")
                assert during["agentstate_rooms_loaded{}"] == 2
                assert during["agentstate_connections{}"] == 2
                received = [v for k, v in during.items() if k.startswith("agentstate_updates_received_total")]
                assert received and sum(received) >= 1
        finally:
            a.close()
            b.close()
        async with connect(f"ws://127.0.0.1:{hub.address[1]}/") as nameless:
            assert await close_code_of(nameless) == closecodes.ROOM_MISMATCH
        after = await asyncio.to_thread(scrape, base + "/metrics")
        assert after["agentstate_rejected_inputs_total{reason=invalid_room}"] == 1
        for path, expected in (("/healthz", (200, b"ok\n")), ("/readyz", (200, b"ready\n"))):
            assert await asyncio.to_thread(http_get, base + path) == expected


def http_get(url: str) -> tuple[int, bytes]:
    """Status and body of a plain GET (run it off the event loop)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


async def test_refusals_are_counted_and_logged_at_a_bounded_rate(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="agentstate.hub")
    auth = HubAuth([RoomGrant("right", ("other",))])
    async with running_hub(LocalRoomStore(tmp_path / "hub"), auth=auth) as hub:
        for _ in range(40):  # a valid token for another room: the reason names this (long, non-ASCII) room
            async with connect(hub.url("ü" * 300) + "?token=right") as ws:
                assert await close_code_of(ws) == closecodes.UNAUTHORIZED
                assert len((ws.close_reason or "").encode("utf-8")) <= 123
        assert hub.status()["refusals"] == {"unauthorized": 40}
    lines = [r.getMessage() for r in caplog.records if "event=refused" in r.getMessage()]
    assert len(lines) == 10, "ten lines per reason per interval, the rest counted"
    assert any("event=suppressed" in r.getMessage() and "count=30" in r.getMessage() for r in caplog.records)
