"""The Y types layout of a replica's Doc (documented for other clients in docs/schema.md)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from pycrdt import Array, Doc, Map
from pycrdt._pycrdt import Map as _IntegratedMap

from .models import MAX_SAFE_INT, from_doc_number

log = logging.getLogger(__name__)

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


def _doc_float(text: str) -> Any:
    """A JSON number with a fraction or exponent, as `from_doc_number` would give it back."""
    value = float(text)
    return int(value) if value.is_integer() and abs(value) <= MAX_SAFE_INT else value


_DOC_JSON = json.JSONDecoder(parse_float=_doc_float)
"""Parses yrs's JSON rendering of a Y type with `from_doc_number` applied on the way: yrs already prints
integral numbers as integers, so only the rare float token needs a look (a walk of the result did not)."""


def doc_json(text: str) -> Any:
    """yrs's JSON rendering of a Y type as plain Python, numbers as `from_doc_number` gives them."""
    return _DOC_JSON.decode(text)


def plain(value: Any) -> Any:
    """A Y value as plain Python, with Yjs's widened numbers turned back into ints.

    A Y.Map or Y.Array goes through yrs's own JSON rendering, which is several times faster
    than `to_py()`.
    """
    if isinstance(value, (Map, Array)):
        try:
            return doc_json(str(value))
        except ValueError:
            value = value.to_py()
    return from_doc_number(value)


def record_dict(ymap: Any) -> dict[str, Any]:
    """A record stored as a Y.Map, as a plain dict; anything else (peer junk) as an empty dict."""
    if isinstance(ymap, Map):
        value = plain(ymap)
        return value if isinstance(value, dict) else {}
    return {}


_PRIMITIVES = frozenset({dict, list, str, int, float, bool, type(None)})
"""What yrs hands back for a plain (not shared) value: returned as is, as pycrdt's `get` would."""


def _active(doc: Doc) -> Any:
    """The yrs transaction the Doc is inside (a write scope holds one), else None.

    A helper called inside a write acts in it directly: entering pycrdt's nested transaction
    (three calls and two property reads) cost more than a one-key read."""
    txn = doc._txn
    return txn._txn if txn is not None else None


def _acting(shared: Map | Array, action: Callable[[Doc, Any, Any], Any]) -> Any:
    """`action(doc, yrs transaction, integrated map or array)` in the Doc's active transaction, else in a new one.

    AttributeError when `shared` is not integrated (or pycrdt's internals differ): callers then
    take pycrdt's public, slower path."""
    doc, integrated = shared._doc, shared._integrated
    if doc is None or integrated is None:
        raise AttributeError("not integrated")
    raw = _active(doc)
    if raw is not None:
        return action(doc, raw, integrated)
    with doc.transaction() as txn:
        return action(doc, txn._txn, integrated)


_FALLBACK = object()
"""Returned by an inner helper when the entry needs pycrdt's public (slower) path."""


def _entry_in(raw: Any, integrated: Any, key: str) -> Any:
    if not integrated.has(raw, key):
        return False, None
    value = integrated.get(raw, key)
    if isinstance(value, _IntegratedMap):
        try:
            return True, doc_json(value.to_json(raw))
        except ValueError:
            return _FALLBACK
    if type(value) in _PRIMITIVES:
        return False, value
    return _FALLBACK


def get_entry(ymap: Map, key: str) -> tuple[bool, Any]:
    """`(True, plain value)` when `key` holds a Y.Map, else `(False, the entry)` (None when absent).

    One transaction and no Python wrapper for a map entry: pycrdt's `get` opens three
    transactions and wraps the entry before `plain` renders it, which cost twice the read.
    """
    try:
        found = _acting(ymap, lambda _doc, raw, integrated: _entry_in(raw, integrated, key))
        if found is not _FALLBACK:
            return found  # type: ignore[no-any-return]
    except (AttributeError, TypeError):  # another pycrdt's internals: the public, slower read
        pass
    entry = ymap.get(key)
    return (True, plain(entry)) if isinstance(entry, Map) else (False, entry)


def _map_in(raw: Any, doc: Doc, integrated: Any, key: str, content: bool) -> tuple[Map | None, dict[str, Any] | None]:
    value = integrated.get(raw, key) if integrated.has(raw, key) else None
    if not isinstance(value, _IntegratedMap):
        return None, None
    wrapper = Map(_doc=doc, _integrated=value)
    if not content:
        return wrapper, None
    try:
        parsed = doc_json(value.to_json(raw))
    except ValueError:
        parsed = plain(wrapper)
    return wrapper, parsed if isinstance(parsed, dict) else {}


def _map_and_content(ymap: Map, key: str, content: bool) -> tuple[Map | None, dict[str, Any] | None]:
    try:
        return _acting(ymap, lambda doc, raw, integrated: _map_in(raw, doc, integrated, key, content))  # type: ignore[no-any-return]
    except (AttributeError, TypeError):  # another pycrdt's internals: the public, slower read
        pass
    entry = ymap.get(key)
    if not isinstance(entry, Map):
        return None, None
    return entry, record_dict(entry) if content else None


def map_at(ymap: Map, key: str) -> Map | None:
    """The Y.Map at `key` as a pycrdt wrapper to write through, or None when absent or not a map.

    One transaction: pycrdt's `get` opens three and tries every wrapper type in turn."""
    return _map_and_content(ymap, key, False)[0]


def map_entry(ymap: Map, key: str) -> tuple[Map | None, dict[str, Any] | None]:
    """The Y.Map at `key` (a pycrdt wrapper to write through) and its plain content, in one transaction;
    `(None, None)` when the entry is absent or not a map (call it inside a write to act on what it read).

    pycrdt's `get` opens three transactions for the wrapper, and reading the content was another."""
    return _map_and_content(ymap, key, True)


def _fill(doc: Doc, raw: Any, integrated: Any, values: Mapping[str, Any]) -> None:
    """Insert `values` into an integrated yrs map within transaction `raw`: plain values as they are,
    a preliminary Map as a nested map filled the same way (and bound, as pycrdt binds it), other shared
    types through pycrdt."""
    for key, value in values.items():
        if type(value) in _PRIMITIVES:
            integrated.insert(raw, key, value)
        elif type(value) is Map and value._integrated is None:
            nested = integrated.insert_map_prelim(raw, key)
            content = value._integrate(doc, nested)
            if content:
                _fill(doc, raw, nested, content)
        elif isinstance(value, (Map, Array)):
            Map(_doc=doc, _integrated=integrated)[key] = value
        else:
            integrated.insert(raw, key, value)


def set_fields(ymap: Map, values: Mapping[str, Any]) -> None:
    """`ymap[k] = v` for every item (call it inside a write), in one transaction, inserted into the
    integrated map directly, a preliminary Map's content too.

    pycrdt's `__setitem__` opens two transactions and type-checks per key (and per key of a
    nested Map), which cost more than the inserts themselves for the handful of fields a write sets.
    """
    try:
        _acting(ymap, lambda doc, raw, integrated: _fill(doc, raw, integrated, values))
        return
    except AttributeError:  # another pycrdt's internals: the public, slower writes
        pass
    for key, value in values.items():
        ymap[key] = value


def append_plain(yarray: Array, value: dict[str, Any]) -> None:
    """`yarray.append(value)` for a plain JSON object (inside a write), in the active transaction.

    pycrdt's `insert` (a slice assignment) opens four transactions and measures the array
    twice; a write record is appended on every write."""
    try:
        _acting(yarray, lambda _doc, raw, integrated: integrated.insert(raw, integrated.len(raw), value))
        return
    except AttributeError:  # another pycrdt's internals: the public, slower append
        pass
    yarray.append(value)


def insert_map(ymap: Map, key: str, values: Mapping[str, Any]) -> None:
    """`ymap[key] = Map(values)` (inside a write), the new map filled as `set_fields` fills one."""
    try:
        _acting(ymap, lambda doc, raw, integrated: _fill(doc, raw, integrated.insert_map_prelim(raw, key), values))
        return
    except AttributeError:  # another pycrdt's internals: the public, slower write
        pass
    ymap[key] = Map(dict(values))


def record_dicts(ymap: Map, doc: Doc) -> list[tuple[str, dict[str, Any] | None]]:
    """Every entry of a root map as (key, plain dict), or (key, None) where the entry is not a Y.Map.

    Call it inside a read of the Doc. Walks the integrated yrs map directly: pycrdt's
    `items()` builds a Python wrapper per entry, which cost as much as reading the entries.
    """
    try:
        with doc.transaction() as txn:
            raw, integrated = txn._txn, ymap.integrated
            entries = []
            for key in integrated.keys(raw):
                value = integrated.get(raw, key)
                if isinstance(value, _IntegratedMap):
                    try:
                        parsed = doc_json(value.to_json(raw))
                    except ValueError:
                        parsed = record_dict(ymap[key])
                    entries.append((key, parsed if isinstance(parsed, dict) else {}))
                else:
                    entries.append((key, None))
            return entries
    except (AttributeError, TypeError):  # another pycrdt's internals: the public, slower walk
        return [(key, record_dict(value) if isinstance(value, Map) else None) for key, value in ymap.items()]


KeysCallback = Callable[[Mapping[str, Mapping[str, Any]]], None]


def observe_keys(ytype: Map, callback: KeysCallback) -> Any:
    """Call `callback(changed keys)` after each transaction that changes `ytype`'s own keys.

    Subscribes on the integrated yrs type: pycrdt's `observe` wrapper converts every slot
    of every event and walks all new values in Python, which doubled the cost of a write
    for observers that only need the keys. Keep the returned subscription alive: yrs
    unsubscribes when it is garbage-collected.
    """

    def on_event(event: Any) -> None:
        try:
            callback(event.keys)
        except Exception:
            log.exception("key observer %r failed", callback)

    return ytype.integrated.observe(on_event)


def observe_touched(ytype: Map, callback: Callable[[set[str]], None]) -> Any:
    """Call `callback(ids)` with the top-level keys of `ytype` whose entry a transaction changed.

    Deep, but on the integrated type for the reason `observe_keys` gives; only event paths
    and top-level keys are read. Keep the returned subscription alive.
    """

    def on_events(events: Any) -> None:
        touched: set[str] = set()
        try:
            for event in events:
                path = event.path
                if path:
                    touched.add(str(path[0]))
                else:
                    touched.update(event.keys)
            callback(touched)
        except Exception:
            log.exception("deep observer %r failed", callback)

    return ytype.integrated.observe_deep(on_events)


def as_set_map(values: Any) -> Map:
    """A set stored as a Y.Map of key -> true, so concurrent adds from peers all survive."""
    return Map({v: True for v in values})
