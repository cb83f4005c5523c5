"""Daemon: holds a data directory, runs the replica, and serves commands and services until told to stop.

Services (the transport's mesh, for one) come from `replica.services`, so this module
never imports them; it only starts, stops and asks them for status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import commands
from .control import ControlServer, Endpoint, new_token
from .datadir import DAEMON_FILE
from .errors import DataDirLockedError
from .durability import Durability
from .exitcodes import exit_code_for
from .replica import Replica
from .services import Service, register_service, start_services, stop_services

__all__ = ["Daemon", "Service", "error_reply", "register_service"]

log = logging.getLogger(__name__)


AsyncCommand = Callable[[dict[str, Any]], Any]


def error_reply(exc: BaseException) -> dict[str, Any]:
    """How a failed command travels back to the CLI."""
    return {"type": type(exc).__name__, "message": str(exc), "exit_code": int(exit_code_for(exc))}


class Daemon:
    """Owns one replica for the life of `agentstate serve`."""

    def __init__(self, path: Path | str, *, durability: Durability | str = Durability.BALANCED,
                 options: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.durability = Durability.parse(durability)
        self.options = options or {}
        self.replica: Replica | None = None
        self.services: list[Service] = []
        self.started_at = datetime.now(timezone.utc).isoformat()
        self._control: ControlServer | None = None
        self._stop = asyncio.Event()
        self._endpoint_path: Path | None = None

    async def dispatch(self, name: str, params: dict[str, Any]) -> Any:
        """Run a command: service commands first, then the replica's own, off the event loop."""
        assert self.replica is not None
        for service in self.services:
            handler = getattr(service, "commands", {}).get(name) if hasattr(service, "commands") else None
            if handler is not None:
                result = handler(params)
                return await result if asyncio.iscoroutine(result) else result
        result = await asyncio.to_thread(commands.execute, self.replica, name, params)
        if name == "status":
            result["daemon"] = {"pid": os.getpid(), "started_at": self.started_at}
            for service in self.services:
                result[service.name] = service.status()
        return result

    def request_stop(self) -> None:
        """Ask `run` to shut down gracefully (safe from signal handlers)."""
        self._stop.set()

    async def run(self, ready: Callable[[Daemon], None] | None = None) -> None:
        """Open, serve until stopped, then flush and release everything."""
        self.replica = await self._open()
        try:
            for line in self.replica.open_report.warnings:
                log.warning("recovery: %s", line)
            self._control = ControlServer(new_token(), self.dispatch, error_reply)
            port = await self._control.start()
            assert self.replica.datadir is not None
            self._endpoint_path = self.replica.datadir.daemon_file
            Endpoint("127.0.0.1", port, self._control._token, os.getpid()).write(self._endpoint_path)
            self.services = await start_services(self.replica, self.options)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self.request_stop)
                except (NotImplementedError, RuntimeError):
                    pass
            log.info("serving replica %s from %s (control port %d)", self.replica.replica_id, self.path, port)
            if ready is not None:
                ready(self)
            await self._stop.wait()
        finally:
            await self._shutdown()

    async def _open(self, patience: float = 10.0) -> Replica:
        """Open the replica, waiting a little if a one-shot command holds the directory right now."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while True:
            try:
                return Replica.open(self.path, durability=self.durability)
            except DataDirLockedError as error:
                holder = error.holder.get("pid")
                if loop.time() >= deadline or Endpoint.read(self.path / DAEMON_FILE) is not None:
                    raise
                log.info("waiting for pid %s to release %s", holder, self.path)
                await asyncio.sleep(0.05)

    async def _shutdown(self) -> None:
        await stop_services(self.services)
        self.services.clear()
        if self._control is not None:
            await self._control.stop()
        if self._endpoint_path is not None:
            try:
                self._endpoint_path.unlink()
            except FileNotFoundError:
                pass
        if self.replica is not None:
            self.replica.close()
            log.info("replica %s flushed and closed", self.replica.replica_id)
