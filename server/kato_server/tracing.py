"""OpenTelemetry traces, off unless ``OTEL_TRACES_EXPORTER`` names an exporter.

The standard variables configure them: ``OTEL_TRACES_EXPORTER`` (``otlp`` — OTLP over gRPC,
``OTEL_EXPORTER_OTLP_*`` — or ``console``, comma-separated), ``OTEL_SERVICE_NAME`` (default
``kato-grpc``), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` / ``_ARG``,
``OTEL_PROPAGATORS`` (W3C ``traceparent`` by default), ``OTEL_SDK_DISABLED``. Unlike the
specification's default (``otlp``), unset means off: a service that nobody collects from
should not retry exports forever. Off, no span is made and no interceptor installed.

A call's server span comes from ``opentelemetry-instrumentation-grpc`` (continuing the
caller's trace); its children are the store calls (``server/kato_server/instrumented_stores.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Tracer

DEFAULT_SERVICE_NAME = "kato-grpc"
EXPORTERS = ("otlp", "console")


class TracingError(ValueError):
    """The OTEL_* variables name something this server cannot do."""


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names ([] when traces are off)."""
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or names in ([], ["none"]):
        return []
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TracingError(f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not one of {', '.join(EXPORTERS)}, none")
    return names


def provider_from_env(environ: Mapping[str, str]) -> TracerProvider | None:
    """The tracer provider the ``OTEL_*`` variables describe, or None (traces off)."""
    names = exporter_names(environ)
    if not names:
        return None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    # Imported only when asked for: it brings its own gRPC client stack.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

    return OTLPSpanExporter()


def server_interceptor(provider: TracerProvider) -> grpc.aio.ServerInterceptor:
    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return interceptor


def tracer(provider: TracerProvider) -> Tracer:
    return provider.get_tracer("kato_grpc.stores")
