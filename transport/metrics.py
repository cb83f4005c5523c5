"""Prometheus metrics for a server (serve's mesh, or a hub's rooms), and its health routes.

Each server owns a `ServerMetrics` with its own `CollectorRegistry` (never the process-wide
default: one test process runs many servers). Almost everything is read at scrape time
from what the mesh and the replica already count (`Mesh.status()`, the data directory's
files, the claims root), so the hot paths are untouched; only apply and fsync times come
from two optional observer hooks (`Mesh.apply_observer`, `UpdateLog.fsync_observer`).
The names, units and meanings are listed in docs/operations.md (a test keeps that list
and a real scrape equal).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pycrdt import Map

from replica.claims import CLAIMS, winner
from replica.replica import Replica
from transport.http import HttpRequest, HttpResponse, HttpRoutes
from transport.mesh import Mesh

PREFIX = "agentstate_"
APPLY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""Seconds: applying one peer update is usually well under a millisecond."""
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds: an fsync takes from under a millisecond (page cache, SSD) to seconds (busy disk)."""
CLIENT_PEER = "yjs-client"
"""The `peer` label of the one lag series that stands for every plain Yjs client (the largest lag)."""
COUNTED_TOTALS = {
    "updates_in": ("updates_received", "Updates received from peers and clients and applied (new or already known)."),
    "updates_out": ("updates_sent", "Updates sent to peers and clients (update and sync step 2 frames)."),
    "bytes_in": ("received_bytes", "Websocket payload bytes received from peers and clients."),
    "bytes_out": ("sent_bytes", "Websocket payload bytes sent to peers and clients."),
}
"""Mesh.status()["totals"] key -> (metric name without prefix and _total, help)."""

ReadyCheck = Callable[[], list[str]]
"""Returns what keeps the server from being ready (an empty list: ready)."""


def _replica_open(replica: Replica) -> bool:
    """Whether the replica is still open (it has no public flag; closing sets `_closed`)."""
    return not getattr(replica, "_closed", False)


def _files_bytes(directory: Path, pattern: str) -> int:
    """Sum of the sizes of the files matching `pattern` in `directory` (0 if it is gone)."""
    total = 0
    try:
        for path in directory.glob(pattern):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
    except OSError:
        return 0
    return total


def claim_results(replica: Replica) -> Counter[str]:
    """Tasks by the result of their latest claim: held, expired, released, completed.

    Read from the shared claims root, so it covers every process's and peer's claims.
    """
    results: Counter[str] = Counter()
    with replica.access.read():
        task_ids = {str(key).split("|", 1)[0] for key in replica.doc.get(CLAIMS, type=Map).keys()}
    now = time.time()
    for task_id in task_ids:
        latest = winner(replica.claims.attempts(task_id))
        if latest is None:
            continue
        if latest.ended is not None:
            results[latest.ended] += 1
        else:
            results["held" if latest.expires > now else "expired"] += 1
    return results


class ServerMetrics:
    """The metrics of one server: watched meshes (one per room), their replicas, two histograms."""

    def __init__(self) -> None:
        disable_created_metrics()  # no `_created` series: they double every histogram's families for nothing
        self.registry = CollectorRegistry(auto_describe=False)
        self.apply_seconds = Histogram(
            f"{PREFIX}apply_seconds", "Time to apply one update from a peer or client to the replica.",
            buckets=APPLY_BUCKETS, registry=self.registry)
        self.fsync_seconds = Histogram(
            f"{PREFIX}fsync_seconds", "Time of one fsync of the update log (group commit: one per batch).",
            buckets=FSYNC_BUCKETS, registry=self.registry)
        self._meshes: list[Mesh] = []
        self._rejection_sources: list[Callable[[], Mapping[str, int]]] = []
        self._retired_totals: Counter[str] = Counter()
        self._retired_rejections: Counter[str] = Counter()
        self._high_water: dict[tuple[str, str], float] = {}
        self.registry.register(_ScrapeCollector(self))

    def watch(self, mesh: Mesh) -> None:
        """Count `mesh` (a loaded room) and time its applies and its replica's fsyncs."""
        if mesh in self._meshes:
            return
        self._meshes.append(mesh)
        mesh.apply_observer = self.apply_seconds.observe
        update_log = getattr(mesh.replica, "_log", None)
        if update_log is not None:
            update_log.fsync_observer = self.fsync_seconds.observe

    def unwatch(self, mesh: Mesh) -> None:
        """Stop counting `mesh` (its room unloaded); its counts stay in the totals."""
        if mesh not in self._meshes:
            return
        status = mesh.status()
        self._retired_totals.update({key: int(status["totals"].get(key, 0)) for key in COUNTED_TOTALS})
        self._retired_rejections.update(status["rejections"])
        self._meshes.remove(mesh)
        mesh.apply_observer = None
        update_log = getattr(mesh.replica, "_log", None)
        if update_log is not None:
            update_log.fsync_observer = None

    def count_rejections_from(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Add `source()` (reason -> count so far) to rejected_inputs: a hub's refusals, a store's bad entries."""
        self._rejection_sources.append(source)

    def meshes(self) -> list[Mesh]:
        """The watched meshes (loaded rooms)."""
        return list(self._meshes)

    def monotonic(self, name: str, label: str, value: float) -> float:
        """`value`, or the highest value reported before: a counter never goes back.

        A closing connection's counts leave the live view a moment before they join the
        mesh's totals; a scrape in between would otherwise see a counter drop.
        """
        key = (name, label)
        kept = max(self._high_water.get(key, 0.0), value)
        self._high_water[key] = kept
        return kept

    def render(self) -> bytes:
        """The exposition text of every metric (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry)


class _ScrapeCollector(Collector):
    """Reads the watched meshes and replicas when scraped."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """Every scrape-time metric family."""
        metrics = self._metrics
        meshes = metrics.meshes()
        statuses = [mesh.status() for mesh in meshes]
        yield GaugeMetricFamily(f"{PREFIX}connections", "Open websocket connections (peers and clients).",
                                value=sum(len(mesh.connections()) for mesh in meshes))
        yield GaugeMetricFamily(f"{PREFIX}rooms_loaded", "Rooms (replicas) this server holds open.",
                                value=len(meshes))
        totals: Counter[str] = Counter(metrics._retired_totals)
        rejections: Counter[str] = Counter(metrics._retired_rejections)
        for status in statuses:
            totals.update({key: int(status["totals"].get(key, 0)) for key in COUNTED_TOTALS})
            rejections.update(status["rejections"])
        for source in metrics._rejection_sources:
            rejections.update(source())
        for key, (name, help_text) in COUNTED_TOTALS.items():
            yield CounterMetricFamily(f"{PREFIX}{name}", help_text,
                                      value=metrics.monotonic(name, "", float(totals[key])))
        rejected = CounterMetricFamily(f"{PREFIX}rejected_inputs", "Inputs refused (the connection closed or the "
                                       "write refused), by reason.", labels=["reason"])
        for reason, count in sorted(rejections.items()):
            rejected.add_metric([reason], metrics.monotonic("rejected_inputs", reason, float(count)))
        yield rejected
        yield self._lag(statuses)
        replicas = [mesh.replica for mesh in meshes if _replica_open(mesh.replica)]
        log_bytes = snapshot_bytes = 0
        for replica in replicas:
            if replica.datadir is not None:
                log_bytes += _files_bytes(replica.datadir.log_dir, "*.log")
                snapshot_bytes += _files_bytes(replica.datadir.snapshot_dir, "*.snap")
        yield GaugeMetricFamily(f"{PREFIX}log_size_bytes", "Bytes of update log segment files on disk (the open "
                                "segment counts its preallocated space).", value=log_bytes)
        yield GaugeMetricFamily(f"{PREFIX}snapshot_size_bytes", "Bytes of snapshot files on disk.",
                                value=snapshot_bytes)
        claims: Counter[str] = Counter()
        for replica in replicas:
            claims.update(claim_results(replica))
        family = GaugeMetricFamily(f"{PREFIX}claims", "Tasks by the result of their latest claim "
                                   "(held, expired, released, completed).", labels=["result"])
        for result in ("held", "expired", "released", "completed"):
            family.add_metric([result], claims.pop(result, 0))
        for result, count in sorted(claims.items()):
            family.add_metric([result], count)
        yield family

    @staticmethod
    def _lag(statuses: list[dict[str, Any]]) -> GaugeMetricFamily:
        """Operations each peer lacks, by peer (replica id or URL); plain clients as one series."""
        family = GaugeMetricFamily(f"{PREFIX}peer_lag_operations", "Operations of ours a peer still lacks, as far "
                                   f"as we know; plain Yjs clients are one series, peer=\"{CLIENT_PEER}\", "
                                   "with the largest lag.", labels=["peer"])
        lags: dict[str, float] = {}
        for status in statuses:
            for peer in status["peers"]:
                behind = peer.get("behind")
                if not isinstance(behind, (int, float)):
                    continue
                name = peer.get("replica_id") or peer.get("url") or CLIENT_PEER
                lags[name] = max(lags.get(name, 0.0), float(behind))
        for name, lag in sorted(lags.items()):
            family.add_metric([name], lag)
        return family


def add_metrics_routes(routes: HttpRoutes, metrics: ServerMetrics) -> None:
    """Answer GET /metrics from `metrics` (Prometheus text format)."""

    def scrape(request: HttpRequest) -> HttpResponse:
        return HttpResponse(body=metrics.render(), content_type=CONTENT_TYPE_LATEST)

    routes.add("/metrics", scrape)


def add_health_routes(routes: HttpRoutes, ready: ReadyCheck) -> None:
    """GET /healthz: 200 while the process answers; GET /readyz: 200 when `ready()` finds nothing wrong, else 503."""

    def healthz(request: HttpRequest) -> HttpResponse:
        return HttpResponse.text("ok\n")

    def readyz(request: HttpRequest) -> HttpResponse:
        problems = ready()
        if problems:
            return HttpResponse.text("not ready: " + "; ".join(problems) + "\n", status=503)
        return HttpResponse.text("ready\n")

    routes.add("/healthz", healthz)
    routes.add("/readyz", readyz)


def mesh_ready(mesh: Mesh) -> ReadyCheck:
    """A readiness check for serve: the replica is open and the mesh listens (when it was asked to)."""

    def check() -> list[str]:
        problems = []
        if not _replica_open(mesh.replica):
            problems.append("replica closed")
        if mesh.listen is not None and mesh.address is None:
            problems.append("not listening")
        return problems

    return check
