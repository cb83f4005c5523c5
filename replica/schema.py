"""The Y types layout of a replica's Doc (documented for other clients in docs/schema.md)."""

from __future__ import annotations

import json
from typing import Any

from pycrdt import Array, Map

from .models import from_doc_number

SCHEMA_VERSION = 1

TASKS = "tasks"
NODES = "nodes"
EDGES = "edges"
REMOVED_NODES = "removed_nodes"
COUNTERS = "counters"
LESSONS = "lessons"
META = "meta"

SET_FIELDS = ("tags", "depends_on")
MAP_FIELDS = ("properties",)


def plain(value: Any) -> Any:
    """A Y value as plain Python, with Yjs's widened numbers turned back into ints.

    A Y.Map or Y.Array goes through yrs's own JSON rendering, which is several times faster
    than `to_py()` and already prints integral numbers as integers.
    """
    if isinstance(value, (Map, Array)):
        try:
            return json.loads(str(value))
        except ValueError:
            value = value.to_py()
    return from_doc_number(value)


def record_dict(ymap: Any) -> dict[str, Any]:
    """A record stored as a Y.Map, as a plain dict; anything else (peer junk) as an empty dict."""
    if isinstance(ymap, Map):
        value = plain(ymap)
        return value if isinstance(value, dict) else {}
    return {}


def as_set_map(values: Any) -> Map:
    """A set stored as a Y.Map of key -> true, so concurrent adds from peers all survive."""
    return Map({v: True for v in values})
