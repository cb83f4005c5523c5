"""The replicas compat objects share, one per directory, and the peers they sync with.

Within one process every compat object on a directory (store, manager, recovery, guard,
...) shares one open replica: this module keeps them in a reference-counted registry. The
replica closes when its last user closes (or, once dropped, at the registry's next call
or at interpreter exit). Other processes open the same directory as freely (the replica's
log is shared among them); only ``agentstate repair`` holds it exclusively, and meanwhile
an opener gets :class:`DirectoryLockedError`. Peers come
from the opener's arguments, else ``agentstate.json`` in the directory, else the
environment (``AGENTSTATE_PEERS``, ``AGENTSTATE_LISTEN``, ``AGENTSTATE_TOKEN``,
``AGENTSTATE_ROOM``); when peers or a listen address are set, the replica's network
services (found through the ``agentstate.services`` entry points) run beside it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from compat.config import DurabilityMode
from compat.errors import GoTError, SyncError, ValidationError
from compat.registry import Entry, RefCountedRegistry
from replica import DataDirLockedError, Durability, Replica
from replica.services import BackgroundServices

CONFIG_FILE_NAME = "agentstate.json"
"""Optional JSON object in a compat directory: ``peers``, ``listen``, ``room``, ``token`` and other service options."""

ENV_PEERS = "AGENTSTATE_PEERS"
ENV_LISTEN = "AGENTSTATE_LISTEN"
ENV_TOKEN = "AGENTSTATE_TOKEN"
ENV_ROOM = "AGENTSTATE_ROOM"

PathLike = Union[str, Path]
log = logging.getLogger(__name__)


class DirectoryLockedError(GoTError, RuntimeError):
    """The directory is held exclusively (by a repair) and cannot be opened now."""


def replica_durability(mode: Union[DurabilityMode, str]) -> Durability:
    """The replica log mode for a compat durability: PARANOID, BALANCED, and RELAXED (LAZY) -> lazy."""
    mode = DurabilityMode(mode)
    if mode is DurabilityMode.PARANOID:
        return Durability.PARANOID
    if mode is DurabilityMode.BALANCED:
        return Durability.BALANCED
    return Durability.LAZY


def _peer_list(value: Any, where: str) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise ValidationError(f"{where}: peers must be a list of URLs or a comma-separated string", peers=value)


def read_config_file(directory: PathLike) -> Dict[str, Any]:
    """The options in ``<directory>/agentstate.json`` ({} when absent); a malformed file raises ValidationError."""
    path = Path(directory) / CONFIG_FILE_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ValidationError(f"{path} is unreadable: {exc}", path=str(path)) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValidationError(f"{path} is not JSON: {exc}", path=str(path)) from None
    if not isinstance(data, dict):
        raise ValidationError(f"{path} must hold a JSON object", path=str(path))
    if "peers" in data:
        data["peers"] = _peer_list(data["peers"], str(path))
    return data


def _env_options() -> Dict[str, Any]:
    options: Dict[str, Any] = {}
    peers = _peer_list(os.environ.get(ENV_PEERS), ENV_PEERS)
    if peers:
        options["peers"] = peers
    for key, name in (("listen", ENV_LISTEN), ("token", ENV_TOKEN), ("room", ENV_ROOM)):
        value = os.environ.get(name, "").strip()
        if value:
            options[key] = value
    return options


def network_options(
    directory: PathLike,
    *,
    peers: Optional[Union[Sequence[str], str]] = None,
    listen: Optional[str] = None,
    token: Optional[str] = None,
    room: Optional[str] = None,
    options: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Service options for a directory, key by key: arguments, then the config file, then the environment.

    Returns {} unless peers or a listen address ends up set: without them nothing syncs."""
    explicit: Dict[str, Any] = dict(options or {})
    if peers is not None:
        explicit["peers"] = _peer_list(peers, "peers")
    for key, value in (("listen", listen), ("token", token), ("room", room)):
        if value is not None:
            explicit[key] = value
    merged = {**_env_options(), **read_config_file(directory), **explicit}
    if not merged.get("peers") and not merged.get("listen"):
        return {}
    merged.setdefault("peers", [])
    return merged


@dataclass
class SharedReplica:
    """One open replica, its registry entry (which counts its users) and the services running beside it."""

    path: Path
    replica: Replica
    network: Dict[str, Any] = field(default_factory=dict)
    services: Optional[BackgroundServices] = None
    commit_lock: threading.RLock = field(default_factory=threading.RLock)
    network_lock: threading.Lock = field(default_factory=threading.Lock)
    closing_hooks: List[Callable[[], None]] = field(default_factory=list)
    entry: Optional["Entry[Path, SharedReplica]"] = None

    def add_closing_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` just before the replica closes (once, however often it is added)."""
        if hook not in self.closing_hooks:
            self.closing_hooks.append(hook)

    def start_network(self, options: Dict[str, Any]) -> None:
        """Run the replica's network services with ``options``; SyncError when none accepts them."""
        services = BackgroundServices(self.replica, options)
        try:
            services.start()
        except Exception as exc:
            services.stop()
            raise SyncError(f"could not start syncing {self.path}: {exc}", path=str(self.path)) from exc
        if not services.services:
            services.stop()
            raise SyncError(
                f"peers are configured for {self.path} but no network service is installed "
                "(the agentstate transport provides it)",
                path=str(self.path),
                peers=options.get("peers", []),
            )
        self.services = services
        self.network = dict(options)

    def stop_network(self) -> None:
        """Stop the network services, if any."""
        services, self.services = self.services, None
        if services is not None:
            services.stop()


def _close_shared(shared: SharedReplica) -> None:
    """Stop the services, run the closing hooks and close the replica (the last user left)."""
    shared.stop_network()
    for hook in shared.closing_hooks:
        try:
            hook()
        except Exception:
            log.exception("a closing hook of %s failed", shared.path)
    shared.replica.close()


_REGISTRY: "RefCountedRegistry[Path, SharedReplica]" = RefCountedRegistry("the shared replica", _close_shared)


def _key(directory: PathLike) -> Path:
    return Path(directory).expanduser().resolve()


def _open_shared(path: Path, durability: Union[DurabilityMode, str], network: Optional[Dict[str, Any]]) -> SharedReplica:
    path.mkdir(parents=True, exist_ok=True)
    try:
        replica = Replica.open(path, durability=replica_durability(durability))
    except DataDirLockedError as exc:
        pid = (exc.holder or {}).get("pid", "?")
        raise DirectoryLockedError(
            f"{path} is held exclusively by process {pid} (agentstate repair); try again when it is done",
            path=str(path),
            pid=pid,
        ) from None
    shared = SharedReplica(path, replica)
    if network:
        try:
            shared.start_network(network)
        except BaseException:
            replica.close()
            raise
    return shared


def acquire(
    directory: PathLike,
    durability: Union[DurabilityMode, str] = DurabilityMode.BALANCED,
    network: Optional[Dict[str, Any]] = None,
) -> SharedReplica:
    """Open (or join) the replica in ``directory`` and count one more user; pair with :func:`release`.

    The first opener's durability chooses the replica's log mode. ``network`` (from
    :func:`network_options`) starts syncing if it is not running yet; asking for other
    peers than the running ones raises SyncError. No registry lock is held while the
    replica opens or its services start."""
    path = _key(directory)
    entry = _REGISTRY.acquire(path, lambda: _open_shared(path, durability, network))
    shared = entry.value
    assert shared is not None
    shared.entry = entry
    if network:
        try:
            with shared.network_lock:
                if not shared.network:
                    shared.start_network(network)
                elif network != shared.network:
                    raise SyncError(
                        f"{path} already syncs with other settings ({shared.network.get('peers')}); "
                        "close its other users first",
                        path=str(path),
                    )
        except BaseException:
            _REGISTRY.release(entry)
            raise
    return shared


def release(shared: SharedReplica) -> None:
    """Count one user less; the last one stops the services and closes the replica."""
    assert shared.entry is not None
    _REGISTRY.release(shared.entry)


def release_later(shared: SharedReplica) -> None:
    """:func:`release` for finalizers: never blocks; the registry settles it at its next call or at exit."""
    assert shared.entry is not None
    _REGISTRY.release_later(shared.entry)


def open_directories() -> List[Path]:
    """Directories whose replica this process holds open through compat."""
    return sorted(_REGISTRY.keys())


def find_open(directory: PathLike) -> Optional[SharedReplica]:
    """The shared replica of ``directory`` if this process has it open, else None."""
    return _REGISTRY.get(_key(directory))


class Lease:
    """One compat object's use of a shared replica: released by ``close()``, or, once the
    object is garbage, by the registry's next call or at exit (the finalizer never blocks)."""

    def __init__(self, owner: object, shared: SharedReplica) -> None:
        self.shared = shared
        self._finalizer = weakref.finalize(owner, release_later, shared)

    @property
    def closed(self) -> bool:
        """True once released."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Release the replica (idempotent)."""
        if self._finalizer.detach() is not None:
            release(self.shared)


def lease(
    owner: object,
    directory: PathLike,
    durability: Union[DurabilityMode, str] = DurabilityMode.BALANCED,
    network: Optional[Dict[str, Any]] = None,
) -> Lease:
    """Acquire the replica of ``directory`` on behalf of ``owner``."""
    return Lease(owner, acquire(directory, durability, network))


__all__ = [
    "CONFIG_FILE_NAME",
    "DirectoryLockedError",
    "Lease",
    "SharedReplica",
    "acquire",
    "find_open",
    "lease",
    "network_options",
    "open_directories",
    "read_config_file",
    "release",
    "release_later",
    "replica_durability",
]
