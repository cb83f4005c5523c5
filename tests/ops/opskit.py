"""Helpers for the operations tests: plain HTTP GETs against a server's port, metric samples."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""An opener that ignores proxy variables: every server here is on loopback."""


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str, str]:
    """(status, content type, body) of a GET; error statuses are returned, not raised."""
    try:
        with DIRECT.open(url, timeout=timeout) as answer:
            return answer.status, answer.headers.get("Content-Type", ""), answer.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode("utf-8")


async def aget(url: str) -> tuple[int, str, str]:
    """`http_get` off the event loop (the server answers on the same loop)."""
    return await asyncio.to_thread(http_get, url)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition text: (sample name, sorted labels) -> value."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def family_names(text: str) -> set[str]:
    """The names one queries for each family: counters with `_total`, the others as declared."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)
