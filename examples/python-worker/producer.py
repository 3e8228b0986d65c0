#!/usr/bin/env python3
"""Enqueues jobstream jobs from Python: XADD with the wire format's fields and the W3C context of a PRODUCER
span `send <Q>`, injected by the standard OpenTelemetry propagator. A Rust `consumer` continues the trace.

    REDIS_URL=redis://127.0.0.1:6379 OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 \\
        python3 producer.py --queue jobs --kind demo --payload '{"n":1}' --count 3

Prints one line per job: `<job id> <trace id>`, like `producer enqueue`.
"""

import argparse
import json
import os
import time
import uuid

import redis
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

import telemetry


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queue", default=os.environ.get("JOBSTREAM_QUEUE", "jobs"))
    ap.add_argument("--prefix", default=os.environ.get("JOBSTREAM_PREFIX", "jobstream"))
    ap.add_argument("--kind", required=True)
    ap.add_argument("--payload", default="{}", help="the job's data, as JSON")
    ap.add_argument("--count", type=int, default=1)
    args = ap.parse_args()
    json.loads(args.payload)  # the wire format wants JSON text

    provider = telemetry.init("jobstream-python-producer")
    tracer = trace.get_tracer("jobstream-python-producer")
    conn = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    stream = f"{args.prefix}:{{{args.queue}}}"
    try:
        for _ in range(args.count):
            job_id = str(uuid.uuid4())
            with tracer.start_as_current_span(f"send {args.queue}", kind=SpanKind.PRODUCER, attributes={
                "messaging.system": "redis", "messaging.operation.type": "send",
                "messaging.destination.name": args.queue, "jobstream.job.id": job_id,
                "jobstream.job.kind": args.kind}) as span:
                fields = {"v": "1", "id": job_id, "kind": args.kind, "payload": args.payload,
                          "enqueued_at": str(int(time.time() * 1000)), "attempt": "1"}
                propagate.inject(fields)  # adds traceparent (and tracestate, baggage when present)
                message_id = conn.xadd(stream, fields)
                span.set_attribute("messaging.message.id", message_id.decode())
                print(job_id, format(span.get_span_context().trace_id, "032x"), flush=True)
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
