"""Lessons: an append-only, replicated list of what agents learnt; concurrent appends all survive."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from pycrdt import Array
from pydantic import ValidationError as PydanticValidationError

from .changes import ChangeEvent
from .errors import FieldError
from .models import InvalidRecord, Lesson, describe_errors, utc_now
from .schema import LESSONS, plain

if TYPE_CHECKING:
    from .access import DocAccess


class Lessons:
    """Append and read lessons (context, failure, resolution), ordered by time."""

    def __init__(self, access: DocAccess) -> None:
        self._access = access
        self._root = access.doc.get(LESSONS, type=Array)

    def append(self, context: str, failure: str, resolution: str, *, author: str | None = None) -> Lesson:
        """Record a lesson and return it."""
        for name, value in (("context", context), ("failure", failure), ("resolution", resolution)):
            if not isinstance(value, str) or not value.strip():
                raise FieldError("lesson", name, "must be a non-empty string")
        lesson = Lesson(
            id=f"L-{utc_now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}",
            context=context,
            failure=failure,
            resolution=resolution,
            author=author if author is not None else self._access.replica_id,
            at=utc_now(),
        )
        with self._access.write():
            self._root.append(lesson.model_dump(mode="json"))
        return lesson

    def _scan(self) -> tuple[list[Lesson], list[InvalidRecord]]:
        with self._access.read():
            raw = [plain(v) for v in self._root]
        good, bad = [], []
        for index, item in enumerate(raw):
            try:
                good.append(Lesson.model_validate(item))
            except PydanticValidationError as exc:
                ident = item.get("id", f"#{index}") if isinstance(item, dict) else f"#{index}"
                bad.append(InvalidRecord(kind="lesson", id=str(ident), problems=describe_errors(exc)))
        good.sort(key=lambda lesson: (lesson.at, lesson.id))
        return good, bad

    def list(self) -> list[Lesson]:
        """Every valid lesson, oldest first."""
        return self._scan()[0]

    def invalid(self) -> list[InvalidRecord]:
        """Lessons a peer filled with junk."""
        return self._scan()[1]

    def translate(self, events: list[Any], origin: str, peer: str | None) -> list[ChangeEvent]:
        """One `add` event per lesson appended."""
        out: list[ChangeEvent] = []
        for event in events:
            for part in getattr(event, "delta", []) or []:
                for item in part.get("insert", []) or []:
                    value = plain(item)
                    ident = value.get("id", "") if isinstance(value, dict) else ""
                    out.append(ChangeEvent("lesson", str(ident), None, "add", None, value, origin, peer))  # type: ignore[arg-type]
        return out
