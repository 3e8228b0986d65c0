"""Standard OpenTelemetry set-up for the examples: OTLP over http/protobuf as the OTEL_* variables say
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, ...), batch export, W3C TraceContext + Baggage propagation
(the SDK's default propagators). Nothing here is jobstream-specific."""

import os

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def init(default_service_name):
    """Installs a tracer provider exporting OTLP; returns it so the caller can shut it down (flush)."""
    # OTEL_RESOURCE_ATTRIBUTES is read by Resource.create; OTEL_SERVICE_NAME wins over the default name.
    name = os.environ.get("OTEL_SERVICE_NAME") or default_service_name
    resource = Resource.create({"service.name": name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider
