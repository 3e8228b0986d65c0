#!/usr/bin/env python3
"""Enqueues jobstream jobs from Python: XADD with the wire format's fields and the W3C context of a PRODUCER
span `send <Q>`, injected by the standard OpenTelemetry propagator. A Rust `consumer` continues the trace.

    REDIS_URL=redis://127.0.0.1:6379 OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 \\
        python3 producer.py --queue jobs --kind demo --payload '{"n":1}' --count 3

Prints one line per job: `<job id> <trace id>`, like `producer enqueue`. Job ids are UUIDv7. worker.py enqueues
the demo kind's follow-up jobs with the same `enqueue` and `check_partitions`.
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


def uuid7():
    """A UUIDv7 (RFC 9562): 48 bits of unix ms, then version 7, variant 10 and random bits, as the Rust and Node
    producers make them (a lookup finds a job by the time in its id)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version
    value = value & ~(0x3 << 62) | 0x2 << 62  # variant
    return str(uuid.UUID(int=value))


def check_partitions(conn, prefix, queue):
    """Records the queue as unpartitioned (`SET <prefix>:{Q}:partitions 1 NX`) unless a count is recorded, and
    refuses (ValueError) a queue recorded with another count: its jobs go to the partitions `Q:0` … `Q:<n-1>`."""
    key = f"{prefix}:{{{queue}}}:partitions"
    recorded = conn.set(key, "1", nx=True, get=True)
    if recorded is not None and recorded not in (b"1", "1"):
        recorded = recorded.decode() if isinstance(recorded, bytes) else recorded
        raise ValueError(f"queue {queue} has {recorded} partition(s) recorded in Redis ({key}); this example "
                         f"enqueues on one unpartitioned queue: give it a partition's own name ({queue}:<i>)")


def enqueue(conn, tracer, prefix, queue, kind, payload):
    """Enqueues one job of `kind` with `payload` (JSON text) on `queue`: one XADD inside a PRODUCER span
    `send <queue>`, a child of the current span (a root in a producer run, the `process` span in a worker's
    handler: a follow-up job then continues the trace). Returns (job id, trace id as hex)."""
    job_id = uuid7()
    with tracer.start_as_current_span(f"send {queue}", kind=SpanKind.PRODUCER, attributes={
        "messaging.system": "redis", "messaging.operation.type": "send", "messaging.operation.name": "send",
        "messaging.destination.name": queue, "jobstream.job.id": job_id, "jobstream.job.kind": kind,
        "jobstream.job.attempt": 1}) as span:
        fields = {"v": "1", "id": job_id, "kind": kind, "payload": payload,
                  "enqueued_at": str(int(time.time() * 1000)), "attempt": "1"}
        propagate.inject(fields)  # adds traceparent (and tracestate, baggage when present)
        try:
            message_id = conn.xadd(f"{prefix}:{{{queue}}}", fields)
        except redis.exceptions.RedisError:
            span.set_attribute("error.type", "redis")
            raise
        span.set_attribute("messaging.message.id", message_id.decode())
        return job_id, format(span.get_span_context().trace_id, "032x")


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
    try:
        check_partitions(conn, args.prefix, args.queue)
        for _ in range(args.count):
            job_id, trace_id = enqueue(conn, tracer, args.prefix, args.queue, args.kind, args.payload)
            print(job_id, trace_id, flush=True)
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
