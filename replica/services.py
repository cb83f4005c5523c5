"""Services that run beside a replica (the network mesh, for one), found without importing them.

Packages declare a factory in the `agentstate.services` entry point group; the daemon and
`BackgroundServices` build them from there, so `replica` never imports `transport`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .replica import Replica

log = logging.getLogger(__name__)


class Service(Protocol):
    """Something that runs beside the replica (for instance the network mesh)."""

    name: str

    async def start(self) -> None:
        """Start serving; return once running."""

    async def stop(self) -> None:
        """Stop gracefully."""

    def status(self) -> dict[str, Any]:
        """A JSON-able view for `agentstate status`."""


ServiceFactory = Callable[["Replica", dict[str, Any]], "Service | None"]
_FACTORIES: list[ServiceFactory] = []
_loaded = False


def register_service(factory: ServiceFactory) -> None:
    """Add a service factory; it gets the replica and options, and may decline by returning None."""
    if factory not in _FACTORIES:
        _FACTORIES.append(factory)


def service_factories() -> list[ServiceFactory]:
    """Registered factories, including those installed packages declare as entry points."""
    global _loaded
    if not _loaded:
        _loaded = True
        for ep in entry_points(group="agentstate.services"):
            try:
                register_service(ep.load())
            except Exception as exc:
                log.warning("service %s failed to load: %s", ep.name, exc)
    return list(_FACTORIES)


async def start_services(replica: Replica, options: dict[str, Any]) -> list[Service]:
    """Build and start every service that accepts these options."""
    started: list[Service] = []
    try:
        for factory in service_factories():
            service = factory(replica, options)
            if service is not None:
                await service.start()
                started.append(service)
    except BaseException:
        await stop_services(started)
        raise
    return started


async def stop_services(services: list[Service]) -> None:
    """Stop services in reverse order; one failing does not keep the others running."""
    for service in reversed(services):
        try:
            await service.stop()
        except Exception:
            log.exception("stopping %s failed", service.name)


class BackgroundServices:
    """Runs services for a replica on an event loop in a daemon thread, for library callers.

    `with BackgroundServices(replica, {"peers": [...]})`: the replica syncs with its peers
    while the caller's own code stays synchronous.
    """

    def __init__(self, replica: Replica, options: dict[str, Any]) -> None:
        self.replica = replica
        self.options = options
        self.services: list[Service] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agentstate-services", daemon=True)
        self._started = False

    def start(self) -> BackgroundServices:
        """Start the loop and the services; raises what a service's start raised."""
        self._thread.start()
        self.services = asyncio.run_coroutine_threadsafe(start_services(self.replica, self.options),
                                                         self._loop).result(timeout=60)
        self._started = True
        return self

    def status(self) -> dict[str, Any]:
        """Each running service's status, by name."""
        return {s.name: s.status() for s in self.services}

    def stop(self) -> None:
        """Stop the services and the loop (idempotent)."""
        if not self._thread.is_alive():
            return
        if self._started:
            asyncio.run_coroutine_threadsafe(stop_services(self.services), self._loop).result(timeout=60)
            self._started = False
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> BackgroundServices:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
