"""Every Prometheus series ticketd exports, and the one place that serves them.

The series are hooked at the shared mechanisms, not in each servicer: the edge interceptor
counts every RPC (code, duration, error reason, booking and hold outcomes), the database
layer counts pool waits and use, the sign-in throttle its refusals, the gate servicer its
scan results. Nothing is exported unless TICKETING_METRICS_LISTEN is set; the counters cost
a few microseconds per call either way.

With `--workers N` each worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR (set
by the supervisor before the worker starts: prometheus_client picks its storage at import)
and the supervisor alone serves /metrics, summing the workers (gauges: the live workers'
sum). See docs/observability.md for the list, with a Grafana-ready query for each.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client import multiprocess as _multiprocess

log = logging.getLogger("ticketd.metrics")

# Latency buckets from 1 ms (a health check) to 10 s (a statement timeout).
_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5)

RPC_HANDLED = Counter(
    "ticketd_rpc_handled_total",
    "RPCs completed, by full method name and status code.",
    ["method", "code"],
)
RPC_DURATION = Histogram(
    "ticketd_rpc_duration_seconds",
    "Time from the call reaching the interceptor to its answer, by method.",
    ["method"],
    buckets=_RPC_BUCKETS,
)
RPC_ERRORS = Counter(
    "ticketd_rpc_errors_total",
    "RPCs that ended with an error status, by method and ErrorReason.",
    ["method", "reason"],
)
BOOKING_OUTCOMES = Counter(
    "ticketd_booking_outcomes_total",
    "BookingService calls (bookings, holds, refunds) by RPC and outcome: OK or the ErrorReason.",
    ["rpc", "outcome"],
)
GATE_SCANS = Counter(
    "ticketd_gate_scans_total",
    "Ticket scans answered, by result (a rejected scan is a normal answer, not an error).",
    ["result"],
)
AUTH_THROTTLED = Counter(
    "ticketd_auth_throttled_total",
    "Sign-in attempts refused by the throttle or the busy password pool, by reason.",
    ["reason"],
)
DB_POOL_WAIT = Histogram(
    "ticketd_db_pool_wait_seconds",
    "Time a unit of work waited for a pooled database connection.",
    ["budget"],
    buckets=_WAIT_BUCKETS,
)
DB_POOL_IN_USE = Gauge(
    "ticketd_db_pool_in_use",
    "Pooled database connections held by a unit of work right now.",
    multiprocess_mode="livesum",
)
DB_POOL_WAITING = Gauge(
    "ticketd_db_pool_waiting",
    "Units of work waiting for a pooled database connection right now.",
    multiprocess_mode="livesum",
)
DB_LOCK_WAIT = Histogram(
    "ticketd_db_lock_wait_seconds",
    "Time spent in row-lock statements (wrapped with `lock_wait()`), the lock wait included.",
    ["what"],
    buckets=_WAIT_BUCKETS,
)
DB_TRANSACTION = Histogram(
    "ticketd_db_transaction_seconds",
    "Time a transaction held its connection, from BEGIN to COMMIT or ROLLBACK.",
    buckets=_WAIT_BUCKETS,
)
STREAMS_ACTIVE = Gauge(
    "ticketd_streams_active",
    "Server-streaming calls open right now, by method.",
    ["method"],
    multiprocess_mode="livesum",
)


# The refusals of the sign-in throttle (per address and per email) and of the password pool.
_THROTTLE_REASONS = frozenset({"TOO_MANY_ATTEMPTS", "AUTH_BUSY"})


def observe_rpc(method: str, code: str, seconds: float, reason: str | None) -> None:
    """Record one finished RPC (called by the edge interceptor for every unary call)."""
    RPC_HANDLED.labels(method, code).inc()
    RPC_DURATION.labels(method).observe(seconds)
    if reason is not None:
        RPC_ERRORS.labels(method, reason).inc()
        if reason in _THROTTLE_REASONS:
            AUTH_THROTTLED.labels(reason).inc()
    service, _, rpc = method.rpartition("/")
    if service == "/ticketing.v1.BookingService":
        BOOKING_OUTCOMES.labels(rpc, reason or "OK").inc()


@contextlib.contextmanager
def lock_wait(what: str) -> Iterator[None]:
    """Time a row-lock statement: `with lock_wait("seats"): await conn.fetch(...)`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        DB_LOCK_WAIT.labels(what).observe(time.perf_counter() - started)


@contextlib.contextmanager
def pool_wait(budget: str) -> Iterator[None]:
    """Time (and count as waiting) one wait for a pooled connection."""
    started = time.perf_counter()
    DB_POOL_WAITING.inc()
    try:
        yield
    finally:
        DB_POOL_WAITING.dec()
        DB_POOL_WAIT.labels(budget).observe(time.perf_counter() - started)


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Exporter:
    """The /metrics HTTP server (a daemon thread of prometheus_client)."""

    def __init__(self, httpd: Any) -> None:
        self._httpd = httpd

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._httpd.server_address[1])

    def shutdown(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()


def serve(listen: str) -> Exporter:
    """Serve this process's series on `listen` (host:port) at /metrics."""
    host, port = _split(listen)
    httpd, _ = start_http_server(port, addr=host, registry=REGISTRY)
    exporter = Exporter(httpd)
    log.info("metrics on http://%s:%d/metrics", host, exporter.port)
    return exporter


def serve_multiprocess(listen: str, directory: Path) -> Exporter:
    """Serve the sum over the workers that write to `directory` (the supervisor's side)."""
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    host, port = _split(listen)
    httpd, _ = start_http_server(port, addr=host, registry=registry)
    exporter = Exporter(httpd)
    log.info("metrics of all workers on http://%s:%d/metrics", host, exporter.port)
    return exporter


def mark_process_dead(pid: int, directory: Path) -> None:
    """Drop a dead worker's live gauges (its counters stay in the sums)."""
    _multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
