"""Logging for long-running commands: text or JSON lines, and never a blocked event loop.

Every record goes into a bounded queue (`DroppingQueueHandler`); one thread
(`logging.handlers.QueueListener`) writes them to stderr. When stderr is a pipe nobody
reads fast enough, that thread waits and the queue fills; further records are dropped and
counted, and once there is room again one line says how many (`event=log_dropped count=N`).
The event loop never waits to log. `--log-format json` writes one JSON object per line
with ts, level, logger, msg and the message's key=value fields.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass
from logging.handlers import QueueHandler, QueueListener
from typing import IO, Any

from .log_options import LOG_FORMATS, LOG_LEVELS


QUEUE_RECORDS = 10_000
"""Records waiting for the writer thread at most; beyond it they are dropped and counted."""
STOP_WAIT = 2.0
"""Seconds `LogSetup.stop` waits for the writer to empty the queue (stderr may never drain)."""
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})
_FIELD = re.compile(r'(?:^|\s)([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|\S+)')


def message_fields(message: str) -> dict[str, Any]:
    """The key=value pairs of a log message (`event=rejected peer=... detail="json"`); quoted values decoded."""
    fields: dict[str, Any] = {}
    for key, raw in _FIELD.findall(message):
        value: Any = raw
        if raw.startswith('"'):
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        fields[f"field_{key}" if key in RESERVED else key] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601 with milliseconds), level, logger, msg, exc, fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        message = record.getMessage()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {"ts": f"{stamp}.{int(record.msecs):03d}Z", "level": record.levelname.lower(),
                                "logger": record.name, "msg": message}
        exc = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else None)
        if exc:
            line["exc"] = exc
        line.update(message_fields(message))
        return json.dumps(line, default=str, ensure_ascii=False)


class DroppingQueueHandler(QueueHandler):
    """A QueueHandler that never waits: a full queue drops the record and counts it."""

    def __init__(self, records: queue.Queue[Any]) -> None:
        super().__init__(records)
        self.dropped = 0
        """Records dropped since start."""
        self._unreported = 0
        self._count_lock = threading.Lock()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """A copy with the message merged and the traceback as text (the writer thread formats it)."""
        prepared = logging.makeLogRecord(record.__dict__)
        prepared.msg = record.getMessage()
        prepared.args = None
        if record.exc_info and not record.exc_text:
            prepared.exc_text = logging.Formatter().formatException(record.exc_info)
        prepared.exc_info = None
        return prepared

    def enqueue(self, record: logging.LogRecord) -> None:
        """Queue the record (after a line saying how many were dropped, if any); drop it when full."""
        with self._count_lock:
            if self._unreported:
                notice = logging.makeLogRecord({
                    "name": __name__, "levelno": logging.WARNING, "levelname": "WARNING",
                    "msg": f"event=log_dropped count={self._unreported} reason=queue_full"})
                try:
                    self.queue.put_nowait(notice)
                    self._unreported = 0
                except queue.Full:
                    pass
            try:
                self.queue.put_nowait(record)
            except queue.Full:
                self.dropped += 1
                self._unreported += 1


@dataclass
class LogSetup:
    """What `configure` installed; `stop()` flushes (briefly) and removes it."""

    handler: DroppingQueueHandler
    listener: QueueListener

    def stop(self) -> None:
        """Let the writer empty the queue for up to STOP_WAIT seconds, then detach (never hangs on stderr)."""
        root = logging.getLogger()
        root.removeHandler(self.handler)
        thread = getattr(self.listener, "_thread", None)
        try:
            self.listener.queue.put_nowait(self.listener._sentinel)  # type: ignore[attr-defined]
        except queue.Full:
            return
        if thread is not None:
            thread.join(STOP_WAIT)
        self.listener._thread = None  # type: ignore[attr-defined]


def configure(level: str = "info", log_format: str = "text", stream: IO[str] | None = None,
              queue_records: int = QUEUE_RECORDS) -> LogSetup:
    """Send every log record through a bounded queue to one writer thread on `stream` (stderr)."""
    if level not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    writer = logging.StreamHandler(stream if stream is not None else sys.stderr)
    writer.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    records: queue.Queue[Any] = queue.Queue(maxsize=queue_records)
    handler = DroppingQueueHandler(records)
    listener = QueueListener(records, writer, respect_handler_level=False)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    listener.start()
    return LogSetup(handler, listener)
