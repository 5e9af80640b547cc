"""OpenTelemetry tracing: off unless the standard OTEL_* variables ask for it.

On when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, or
OTEL_TRACES_EXPORTER names an exporter (`otlp`, `console`), and not when OTEL_SDK_DISABLED is
true. The exporter and sampler then follow the OTEL_* variables as the SDK reads them. Every
RPC gets a server span (opentelemetry-instrumentation-grpc); the correlation id of an
INTERNAL error is then the span's trace id, so an operator goes from the client's message
to the trace. Everything is imported lazily: without the `otel` extra the server runs
untraced and says so once.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("ticketd.tracing")

_on = False
_provider_set = False
_interceptors: list[Any] | None = None


def wanted(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment asks for tracing."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def server_interceptors() -> list[Any]:
    """The tracing interceptor to put first on the server, or none when tracing is off."""
    if _interceptors is not None:
        # One tracer provider per process (the SDK allows only one), whatever the servers.
        return list(_interceptors)
    if not wanted():
        return []
    try:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter
    except ImportError:
        log.warning("OTEL_* is set but the otel extra is missing: pip install 'ticketing[otel]'")
        return []
    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    install(exporter)
    return list(_interceptors or [])


def install(exporter: Any, *, batch: bool = True) -> None:
    """Trace every server built from now on into `exporter` (an SDK SpanExporter). Called
    by `server_interceptors` from the OTEL_* settings; tests pass an in-memory exporter."""
    global _on, _interceptors, _provider_set
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "ticketd")})
    provider = TracerProvider(resource=resource)
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    if not _provider_set:
        # The SDK takes one global provider per process; later installs (tests) only
        # change which provider the interceptor uses.
        trace.set_tracer_provider(provider)
        _provider_set = True
    _on = True
    log.info("OpenTelemetry tracing on")
    _interceptors = [aio_server_interceptor(tracer_provider=provider)]  # type: ignore[no-untyped-call]


def uninstall() -> None:
    """Servers built from now on are untraced again (tests)."""
    global _on, _interceptors
    _on = False
    _interceptors = None


def current_trace_id() -> str | None:
    """The current span's trace id (32 hex digits) while tracing is on, else None."""
    if not _on:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}"


def shutdown() -> None:
    """Flush spans still buffered (at server stop)."""
    if not _on:
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    flush = getattr(provider, "shutdown", None)
    if flush is not None:
        flush()
