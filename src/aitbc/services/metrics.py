"""Prometheus metrics of one coordinator process (``GET /metrics``).

One :class:`Metrics` per app, on its own ``CollectorRegistry`` (never the global one:
tests build many apps in one process). Counters and histograms are updated where the
thing happens (requests by the HTTP middleware, claims, receipts, tokens, blocks,
rate-limit refusals by the services); figures that are state, not events (jobs by
status, queue depth, online miners, WebSocket connections) are read when scraped
(:func:`refresh`), so they are right even with several processes on one database.

Names follow Prometheus' conventions: ``aitbc_`` prefix, base units (seconds),
``_total`` on counters; route templates (``/v1/jobs/{job_id}``), never raw paths, as
labels, so a label's values stay few.
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from aitbc.domain.jobs import JobStatus
from aitbc.errors import AuthenticationRequired, PermissionDenied
from aitbc.storage import queries
from aitbc.storage.db import read

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from aitbc.services.runtime import Principal, Runtime

# Request latencies: from a cached read (well under a millisecond) to a long poll.
REQUEST_BUCKETS_SECONDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Submit to claim: a waiting miner takes a job within milliseconds; a queue, minutes.
DISPATCH_BUCKETS_SECONDS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0,
)  # fmt: skip


@dataclass
class _State:
    """What was last read from the database for a scrape."""

    jobs_by_status: dict[str, int] = field(default_factory=dict)
    miners_online: int = 0


class Metrics:
    """The metrics of one coordinator process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        # Requests are the hot path: counted in plain dictionaries on the event loop
        # (prometheus_client's metrics take a lock per update) and reported at scrape.
        self.request_stats = _RequestStats()
        registry.register(self.request_stats)
        self.dispatch_seconds = Histogram(
            "aitbc_dispatch_latency_seconds",
            "Time from a job's submission to its first claim by a miner.",
            buckets=DISPATCH_BUCKETS_SECONDS,
            registry=registry,
        )
        self.tokens = Counter(
            "aitbc_tokens_generated",
            "Completion tokens of completed jobs, by model.",
            ("model",),
            registry=registry,
        )
        self.receipts = Counter(
            "aitbc_receipts_issued", "Signed receipts issued.", registry=registry
        )
        self.blocks = Counter("aitbc_blocks_sealed", "Ledger blocks sealed.", registry=registry)
        self.exchange_orders = Counter(
            "aitbc_exchange_orders", "Exchange orders matched and settled.", registry=registry
        )
        self.exchange_trades = Counter(
            "aitbc_exchange_trades", "Exchange fills settled.", registry=registry
        )
        self.exchange_batches = Counter(
            "aitbc_exchange_batches",
            "Matching-writer batches committed (orders / batches: the mean batch).",
            registry=registry,
        )
        self.rate_limited = Counter(
            "aitbc_rate_limit_rejections",
            "Requests refused with 429 by the rate limiter, by caller kind.",
            ("caller",),
            registry=registry,
        )
        self.state = _State()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        self.request_stats.observe(method, route, status, seconds)

    def install_state_collector(self, runtime: Runtime) -> None:
        """Report the scraped state and the event hub's counters."""
        self.registry.register(_StateCollector(self.state, runtime))

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class _RequestStats(Collector):
    """``aitbc_http_requests_total`` and ``aitbc_http_request_duration_seconds``,
    kept by the event loop's thread only (no locks)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], float] = {}
        # (method, route) -> per-bucket counts (the last one: above every bucket),
        # then the sum of the durations.
        self.latencies: dict[tuple[str, str], list[float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        latency = self.latencies.get((method, route))
        if latency is None:
            latency = self.latencies[(method, route)] = [0.0] * (len(REQUEST_BUCKETS_SECONDS) + 2)
        latency[bisect.bisect_left(REQUEST_BUCKETS_SECONDS, seconds)] += 1
        latency[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "aitbc_http_requests",
            "HTTP requests answered, by method, route template and status.",
            labels=("method", "route", "status"),
        )
        for (method, route, status), count in sorted(self.counts.items()):
            requests.add_metric((method, route, str(status)), count)
        yield requests
        durations = HistogramMetricFamily(
            "aitbc_http_request_duration_seconds",
            "Time to answer an HTTP request (a long poll or stream: until it ends).",
            labels=("method", "route"),
        )
        for (method, route), latency in sorted(self.latencies.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(REQUEST_BUCKETS_SECONDS, latency, strict=False):
                cumulative += count
                buckets.append((str(float(bound)), cumulative))
            buckets.append(("+Inf", cumulative + latency[len(REQUEST_BUCKETS_SECONDS)]))
            durations.add_metric((method, route), buckets, sum_value=latency[-1])
        yield durations


class _StateCollector(Collector):
    def __init__(self, state: _State, runtime: Runtime) -> None:
        self.state = state
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("aitbc_jobs", "Jobs by status.", labels=("status",))
        for status in JobStatus:
            jobs.add_metric((status.value,), self.state.jobs_by_status.get(status.value, 0))
        yield jobs
        yield GaugeMetricFamily(
            "aitbc_queue_depth",
            "Pending jobs waiting for a miner.",
            value=self.state.jobs_by_status.get(JobStatus.PENDING.value, 0),
        )
        yield GaugeMetricFamily(
            "aitbc_miners_online", "Miners seen recently.", value=self.state.miners_online
        )
        hub = self.runtime.events
        yield GaugeMetricFamily(
            "aitbc_websocket_connections",
            "WebSocket connections to /ws in this process.",
            value=hub.connections,
        )
        yield CounterMetricFamily(
            "aitbc_websocket_events_delivered",
            "Events queued to /ws subscribers.",
            value=hub.delivered,
        )
        yield CounterMetricFamily(
            "aitbc_websocket_dropped_consumers",
            "/ws connections closed for being too slow (1013).",
            value=hub.dropped,
        )


def authorize(runtime: Runtime, principal: Principal | None, address: str | None) -> None:
    """Metrics are for operators: the admin key, or an address in
    ``metrics_allow_ips``; anyone else is refused (401 without a key, 403 with one)."""
    if principal is not None and principal.is_admin:
        return
    if address is not None and _allowed(address, runtime.settings.metrics_allow_ips):
        return
    if principal is None:
        raise AuthenticationRequired(
            "metrics need the admin key (or a scraper address in AITBC_METRICS_ALLOW_IPS)",
            error_code="missing_api_key",
        )
    raise PermissionDenied("metrics are for the admin key", error_code="admin_only")


def _allowed(address: str, allowed: str) -> bool:
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in allowed.split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            if peer in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


async def refresh(runtime: Runtime) -> None:
    """Read the state figures from the database (before a scrape)."""
    counts, online = await read(
        runtime.engine,
        queries.job_counts_and_online_miners,
        runtime.clock(),
        runtime.settings.miner_offline_after_seconds,
    )
    runtime.metrics.state.jobs_by_status = counts
    runtime.metrics.state.miners_online = online
