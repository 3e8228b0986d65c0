// Standard OpenTelemetry set-up for the Node examples: OTLP over http/protobuf as the OTEL_* variables say
// (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS,
// OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_SCHEDULE_DELAY, OTEL_TRACES_SAMPLER...), batch export,
// and the W3C TraceContext + Baggage propagators of @opentelemetry/core. Nothing here is jobstream-specific.

import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions';

/**
 * Installs a tracer provider and the W3C propagators; returns the provider, whose shutdown() flushes the spans.
 * With neither OTEL_EXPORTER_OTLP_ENDPOINT nor OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set, spans are made (trace
 * context still travels with the jobs) but not exported, as with the Rust binaries.
 */
export function initTracing(defaultServiceName) {
  const env = process.env;
  const endpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT;
  const protocol = env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || env.OTEL_EXPORTER_OTLP_PROTOCOL;
  if (endpoint && protocol && protocol !== 'http/protobuf') {
    console.error(`telemetry: OTEL_EXPORTER_OTLP_PROTOCOL=${protocol} is not supported here; exporting http/protobuf`);
  }
  // OTEL_SERVICE_NAME, then a service.name in OTEL_RESOURCE_ATTRIBUTES, win over the default name.
  const resource = defaultResource()
    .merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: defaultServiceName }))
    .merge(detectResources({ detectors: [envDetector] }));
  const spanProcessors = endpoint ? [new BatchSpanProcessor(new OTLPTraceExporter())] : [];
  const provider = new NodeTracerProvider({ resource, spanProcessors });
  provider.register({
    propagator: new CompositePropagator({
      propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
    }),
  });
  return provider;
}
