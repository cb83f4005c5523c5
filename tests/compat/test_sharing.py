"""compat.sharing: one replica per directory and process, peers for old callers, network services' lifetime."""

from __future__ import annotations

import gc
import json
import socket
from pathlib import Path
from typing import Any, Dict, List

import pytest

import replica.services as services
from compat import RecoveryManager, SyncError, Task, TransactionManager, ValidationError, VersionedStore
from compat.sharing import CONFIG_FILE_NAME, find_open, network_options

from .conftest import wait_until


class FakeService:
    """Stands in for the mesh: records what it was started with and whether it runs."""

    name = "fake"
    instances: List["FakeService"] = []

    def __init__(self, replica: Any, options: Dict[str, Any]) -> None:
        self.replica, self.options, self.running = replica, options, False
        FakeService.instances.append(self)

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False

    def status(self) -> Dict[str, Any]:
        return {"running": self.running}


@pytest.fixture
def fake_only(monkeypatch: pytest.MonkeyPatch) -> List[FakeService]:
    FakeService.instances = []
    monkeypatch.setattr(services, "service_factories", lambda: [FakeService])
    return FakeService.instances


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AGENTSTATE_PEERS", "AGENTSTATE_LISTEN", "AGENTSTATE_TOKEN", "AGENTSTATE_ROOM"):
        monkeypatch.delenv(name, raising=False)


def test_no_peers_means_no_network(tmp_path: Path) -> None:
    assert network_options(tmp_path) == {}
    assert network_options(tmp_path, token="t", room="r") == {}, "a token or room alone syncs with nobody"


def test_options_come_from_arguments_then_the_file_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTSTATE_PEERS", "ws://env-1, ws://env-2")
    monkeypatch.setenv("AGENTSTATE_TOKEN", "env-token")
    monkeypatch.setenv("AGENTSTATE_ROOM", "env-room")
    assert network_options(tmp_path) == {"peers": ["ws://env-1", "ws://env-2"], "token": "env-token",
                                         "room": "env-room"}
    (tmp_path / CONFIG_FILE_NAME).write_text(json.dumps({"peers": "ws://file", "listen": "127.0.0.1:0",
                                                         "max_connections": 4}))
    from_file = network_options(tmp_path)
    assert from_file["peers"] == ["ws://file"] and from_file["listen"] == "127.0.0.1:0"
    assert from_file["token"] == "env-token" and from_file["max_connections"] == 4
    explicit = network_options(tmp_path, peers=["ws://arg"], token="arg-token")
    assert explicit["peers"] == ["ws://arg"] and explicit["token"] == "arg-token" and explicit["room"] == "env-room"


@pytest.mark.parametrize("content", ["{oops", "[1, 2]", '{"peers": 5}'])
def test_a_malformed_config_file_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / CONFIG_FILE_NAME).write_text(content)
    with pytest.raises(ValidationError):
        network_options(tmp_path)


def test_a_manager_with_peers_runs_the_services_until_its_last_user_closes(
    tmp_path: Path, fake_only: List[FakeService]
) -> None:
    first = TransactionManager(tmp_path / "got", peers=["ws://127.0.0.1:9"], room="compat")
    assert len(fake_only) == 1
    service = fake_only[0]
    assert service.running and service.replica is first.replica
    assert service.options["peers"] == ["ws://127.0.0.1:9"] and service.options["room"] == "compat"
    second = TransactionManager(tmp_path / "got", peers=["ws://127.0.0.1:9"], room="compat")
    with RecoveryManager(tmp_path / "got") as recovery:
        assert recovery.store.replica is first.replica
    assert len(fake_only) == 1, "one service per directory"
    first.close()
    assert service.running, "still used by the second manager"
    second.close()
    assert not service.running and find_open(tmp_path / "got") is None


def test_peers_from_the_config_file_and_the_environment(
    tmp_path: Path, fake_only: List[FakeService], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / CONFIG_FILE_NAME).write_text(json.dumps({"listen": "127.0.0.1:0", "room": "r"}))
    with TransactionManager(tmp_path / "a"):
        assert fake_only[-1].options == {"listen": "127.0.0.1:0", "room": "r", "peers": []}
    monkeypatch.setenv("AGENTSTATE_PEERS", "ws://127.0.0.1:9")
    with VersionedStore(tmp_path / "b"):
        assert fake_only[-1].options["peers"] == ["ws://127.0.0.1:9"] and fake_only[-1].running
    assert not fake_only[-1].running


def test_other_peers_while_syncing_are_refused(tmp_path: Path, fake_only: List[FakeService]) -> None:
    with TransactionManager(tmp_path / "got", peers=["ws://127.0.0.1:9"]):
        with pytest.raises(SyncError, match="already syncs"):
            TransactionManager(tmp_path / "got", peers=["ws://127.0.0.1:10"])
        with TransactionManager(tmp_path / "got") as joined:
            assert joined.store.shared.network["peers"] == ["ws://127.0.0.1:9"]


def test_peers_without_a_network_service_are_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "service_factories", lambda: [])
    with pytest.raises(SyncError, match="no network service"):
        TransactionManager(tmp_path / "got", peers=["ws://127.0.0.1:9"])
    assert find_open(tmp_path / "got") is None, "the replica was closed again"


def test_a_dropped_manager_releases_its_replica(tmp_path: Path) -> None:
    manager = TransactionManager(tmp_path / "got")
    assert find_open(tmp_path / "got") is not None
    del manager
    gc.collect()
    assert find_open(tmp_path / "got") is None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_managers_sync_over_real_loopback_websockets(tmp_path: Path) -> None:
    port = _free_port()
    with TransactionManager(tmp_path / "a", listen=f"127.0.0.1:{port}", room="compat-test") as a, TransactionManager(
        tmp_path / "b", peers=[f"ws://127.0.0.1:{port}"], room="compat-test"
    ) as b:
        tx = a.begin()
        a.write(tx, Task(id="T-1", title="from A"))
        assert a.commit(tx).success
        assert wait_until(lambda: b.store.exists("T-1"), timeout=20)
        tx = b.begin()
        task = b.read(tx, "T-1")
        task.status = "completed"
        b.write(tx, task)
        assert b.commit(tx).success
        assert wait_until(lambda: a.store.read("T-1").status == "completed", timeout=20)
        assert a.store.current_version() == b.store.current_version() == 2
        shared_a = a.store.shared
        assert shared_a.services is not None and "mesh" in shared_a.services.status()
    assert shared_a.services is None and find_open(tmp_path / "a") is None
