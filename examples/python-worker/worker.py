#!/usr/bin/env python3
"""A jobstream worker in Python: consumes a jobstream queue with redis-py and continues each job's trace with
the standard OpenTelemetry propagator, straight from the stream entry's fields.

    REDIS_URL=redis://127.0.0.1:6379 OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 \\
        python3 worker.py --queue jobs [--group workers] [--count N]

It runs the kinds `demo`, `noop` and `py-demo` (HANDLERS in worker.py; there is no --kind option: add a handler
there for a kind of your own).

It reads as one consumer of the queue's consumer group (XREADGROUP), opens a CONSUMER span `process <Q>` whose
parent is the context extracted from the entry (traceparent, tracestate, baggage), runs the handler for the
job's kind inside it, and acknowledges (XACK) after success. A failed job is not acknowledged: it stays pending,
and a jobstream worker of the same group takes it over after its visibility timeout (retries and dead letters
are theirs). Entries of kinds this worker does not handle are left pending for the same reason, so give Python
workers a queue (or group) of their own kinds. The wire format is docs/wire-format.md.
"""

import argparse
import json
import os
import signal
import socket
import sys
import time

import redis
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

import telemetry

REQUIRED = ("v", "id", "kind", "payload", "enqueued_at", "attempt")


def handle_demo(job, tracer):
    """The seed's worker steps, as child spans of `process`."""
    for step in ("http-request", "load-data", "process-data", "save-data"):
        with tracer.start_as_current_span(step):
            time.sleep(0.002)


def handle_noop(job, tracer):
    pass


HANDLERS = {"demo": handle_demo, "noop": handle_noop, "py-demo": handle_demo}


def decode(fields):
    """Entry fields as text; raises ValueError when the entry is not a version-1 job."""
    text = {k.decode(): v.decode() for k, v in fields.items()}
    missing = [f for f in REQUIRED if f not in text]
    if missing:
        raise ValueError(f"missing fields {missing}")
    if text["v"] != "1":
        raise ValueError(f"wire format version {text['v']!r}, expected '1'")
    json.loads(text["payload"])
    return text


def process(conn, tracer, stream, group, consumer, message_id, fields):
    """Runs one entry; returns True when it was acknowledged."""
    try:
        job = decode(fields)
    except (UnicodeDecodeError, ValueError) as e:
        print(f"entry {message_id.decode()} is not a job ({e}); left pending for jobstream to dead-letter",
              file=sys.stderr)
        return False
    handler = HANDLERS.get(job["kind"])
    if handler is None:
        print(f"no Python handler for kind {job['kind']!r}; left pending", file=sys.stderr)
        return False
    # The standard W3C propagators read traceparent / tracestate / baggage from the fields as they are.
    parent = propagate.extract(job)
    queue = stream.split("{", 1)[1].rsplit("}", 1)[0]
    attributes = {
        "messaging.system": "redis",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": message_id.decode(),
        "messaging.consumer.group.name": group,
        "messaging.client.id": consumer,
        "jobstream.job.id": job["id"],
        "jobstream.job.kind": job["kind"],
        "jobstream.job.attempt": int(job["attempt"]),
    }
    with tracer.start_as_current_span(f"process {queue}", context=parent, kind=SpanKind.CONSUMER,
                                      attributes=attributes) as span:
        try:
            handler(job, tracer)
        except Exception as e:  # a failed job stays pending; the span says why
            span.record_exception(e)
            span.set_status(Status(StatusCode.ERROR, str(e)))
            span.set_attribute("error.type", type(e).__name__)
            return False
        conn.xack(stream, group, message_id)
        return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queue", default=os.environ.get("JOBSTREAM_QUEUE", "jobs"))
    ap.add_argument("--prefix", default=os.environ.get("JOBSTREAM_PREFIX", "jobstream"))
    ap.add_argument("--group", default=os.environ.get("JOBSTREAM_GROUP", "workers"))
    ap.add_argument("--consumer", default=f"py-{socket.gethostname()}-{os.getpid()}")
    ap.add_argument("--count", type=int, default=0, help="exit after this many acknowledged jobs (0: run until "
                    "SIGTERM/SIGINT)")
    args = ap.parse_args()

    provider = telemetry.init("jobstream-python-worker")
    tracer = trace.get_tracer("jobstream-python-worker")
    conn = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    stream = f"{args.prefix}:{{{args.queue}}}"
    try:
        conn.xgroup_create(stream, args.group, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise

    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    done = 0
    try:
        while not stopping and (args.count == 0 or done < args.count):
            reply = conn.xreadgroup(args.group, args.consumer, {stream: ">"}, count=16, block=500)
            for _, entries in reply or []:
                for message_id, fields in entries:
                    done += process(conn, tracer, stream, args.group, args.consumer, message_id, fields)
    finally:
        provider.shutdown()  # flushes the batch of spans
    print(f"acknowledged {done} jobs", file=sys.stderr)


if __name__ == "__main__":
    main()
