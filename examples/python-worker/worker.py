#!/usr/bin/env python3
"""A jobstream worker in Python: consumes a jobstream queue with redis-py, continues each job's trace with the
standard OpenTelemetry propagator, and settles every attempt exactly as the Rust worker does, with the same
Lua scripts.

    REDIS_URL=redis://127.0.0.1:6379 OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 \\
        python3 worker.py --queue jobs [--group workers] [--count N] [--max-attempts 5] [--retry-base-delay-ms 1000]

It runs the kinds `demo`, `noop` and `py-demo` (HANDLERS in worker.py; there is no --kind option: add a handler
there for a kind of your own). `demo` takes the Rust kind's payload options: `{"panic": msg}`,
`{"fail_until_attempt": n}` and `"next": [{"queue": Q, "kind": K}, ...]`, a chain of jobs across workers: after
its steps it enqueues one job of kind K on queue Q, from inside its `process` span (producer.py's `enqueue`), whose
payload is its own without `next[0]`. A handler fails its attempt by raising JobFailure(error_type, message) (with
permanent=True when retrying cannot help); any other exception is a crash, the attempt failing with
error.type `panic` and the message `handler panicked: <the exception's text>`, as a panicking Rust handler's.

It reads as one consumer of the queue's consumer group (XREADGROUP), opens a CONSUMER span `process <Q>` whose
parent is the context extracted from the entry (traceparent, tracestate, baggage), runs the handler inside it,
and settles the attempt by the settle protocol of docs/wire-format.md:
- success: XACK (a reply of 0 means another consumer took the job over; it is theirs now);
- failure with attempts left: the next attempt goes to the delayed set, due after exponential back-off with
  jitter, and this one is acknowledged, in one run of shared/src/lua/settle.lua (move `retry`);
- failure on the last attempt (or a permanent one), an entry that is not a job, a kind without a handler, a
  deadline (`deadline_ms`) passed: the entry goes to the dead stream with the `dead.*` fields, in one run of
  settle.lua (move `dead`);
and, in a background thread, every 200 ms it moves due retries and scheduled jobs back to the stream
(shared/src/lua/promote_due.lua, safe beside any number of other workers) unless the queue is paused (no read
either while it is), and renews its claim on the job it runs every third of --visibility-timeout-ms
(shared/src/lua/renew_claims.lua), so that no worker of the group takes a long job over.

The scripts are the files the Rust crate embeds, read at start-up (--lua-dir, default ../../shared/src/lua from
this file) and run with EVALSHA after one SCRIPT LOAD, loaded again when Redis answers NOSCRIPT. It keeps no
status records (settle.lua without a record key, promote_due.lua with an empty record prefix), does not stop a
running job that is cancelled, ignores `timeout_ms` and runs one job at a time; it reads only new entries, so
it never takes another consumer's jobs over (the jobstream workers of the group do, and dead-letter poison).
"""

import argparse
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import redis
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

import producer
import telemetry

LUA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "src" / "lua"
# Most values one XADD issued from a Lua script may carry (Lua's unpack limit), as the Rust worker passes it.
MAX_SCRIPT_VALUES = 7000
MAX_FIELDS = 256  # a wider entry is not a job
PROMOTE_EVERY = 0.2  # seconds
PROMOTE_BATCH = 256  # most jobs one run of promote_due.lua moves
KIND = re.compile(r"[A-Za-z0-9._:-]{1,64}")
QUEUE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
DECIMAL = re.compile(r"\+?[0-9]+")


def now_ms():
    return time.time_ns() // 1_000_000


def log(message):
    print(message, file=sys.stderr, flush=True)


class JobFailure(Exception):
    """What a handler raises to fail its attempt: `error_type` becomes the span's error.type; a `permanent`
    failure is dead-lettered at once (reason permanent_failure) instead of retried."""

    def __init__(self, error_type, message, permanent=False):
        super().__init__(message)
        self.error_type, self.message, self.permanent = error_type, message, permanent

    def __str__(self):
        return f"{self.error_type}: {self.message}"


class Job:
    """A decoded entry: `fields` holds every field as text; `attempt` is a number and `payload` parsed JSON."""

    def __init__(self, fields, attempt, payload):
        self.fields, self.attempt, self.payload = fields, attempt, payload
        self.id, self.kind = fields["id"], fields["kind"]


class Undecodable(ValueError):
    """The entry is not a version-1 job; dead-lettered with reason `undecodable` and this message."""


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def decode(pairs, max_payload_bytes):
    """The entry's field/value pairs (bytes) as a Job, checked as the Rust worker checks them."""
    if len(pairs) > MAX_FIELDS:
        raise Undecodable(f"the entry has {len(pairs)} fields; a job has at most {MAX_FIELDS}")
    fields = {}
    for name, value in pairs:
        try:
            name = name.decode()
        except UnicodeDecodeError:
            raise Undecodable(f"a field name is not valid UTF-8: {json.dumps(name.decode(errors='replace'))}")
        try:
            fields[name] = value.decode()
        except UnicodeDecodeError:
            raise Undecodable(f"field `{name}` is not valid UTF-8")

    def take(name):
        if name not in fields:
            raise Undecodable(f"field `{name}` is missing")
        return fields[name]

    def number(name, most):
        text = take(name)
        if not DECIMAL.fullmatch(text) or int(text) > most:
            raise Undecodable(f"field `{name}` is invalid: {json.dumps(text)} is not a number from 0 to {most}")
        return int(text)

    if take("v") != "1":
        raise Undecodable(f"wire version {json.dumps(fields['v'])} is not supported (this worker reads version 1)")
    try:
        uuid.UUID(take("id"))
    except ValueError as e:
        raise Undecodable(f"field `id` is invalid: {e}")
    if not KIND.fullmatch(take("kind")):
        raise Undecodable(f"field `kind` is invalid: job kind {json.dumps(fields['kind'])} is invalid: use 1 to 64 "
                          "characters of letters, digits and . _ - :")
    size = len(take("payload").encode())
    if size > max_payload_bytes:
        raise Undecodable(f"payload is {size} bytes; the limit is {max_payload_bytes}")
    try:
        payload = json.loads(fields["payload"], parse_constant=_no_constant)
    except ValueError as e:
        raise Undecodable(f"field `payload` is invalid: payload is not JSON: {e}")
    number("enqueued_at", 2**64 - 1)
    attempt = number("attempt", 2**32 - 1)
    if attempt == 0:
        raise Undecodable("field `attempt` is invalid: must be 1 or more")
    return Job(fields, attempt, payload)


# Handlers: (job, tracer, worker) -> None, raising JobFailure (or anything else, a crash) to fail the attempt;
# `worker` gives them its Redis connection (`worker.conn`) and options (`worker.args`: prefix, queue, ...).

DEMO_STEPS = ("http-request", "load-data", "process-data", "save-data")


def demo_options(payload):
    """`{"panic": msg}` and `{"fail_until_attempt": n}`, read as the Rust `demo` kind reads them: both are ignored
    unless the payload is an object in which each present one has the right type."""
    if not isinstance(payload, dict):
        return None, None
    panic, until = payload.get("panic"), payload.get("fail_until_attempt")
    if panic is not None and not isinstance(panic, str):
        return None, None
    if until is not None and (isinstance(until, bool) or not isinstance(until, int) or not 0 <= until < 2**32):
        return None, None
    return panic, until


def demo_follow_up(payload):
    """The follow-up a demo payload asks for with `"next": [{"queue": Q, "kind": K}, ...]`, as the Rust kind reads
    it: None when there is none (no `next`, null, an empty list, or a payload that is not an object), else (queue,
    kind, payload text): the first hop, and this payload without `next[0]` (`next` dropped when empty). A `next`
    that is not a list of such objects with valid names fails the job at once, permanently (`invalid_payload`):
    every hop is checked here."""
    if not isinstance(payload, dict) or payload.get("next") is None:
        return None
    hops = payload["next"]

    def invalid(why):
        return JobFailure("invalid_payload", f"next: {why}", permanent=True)

    if not isinstance(hops, list):
        raise invalid('not a list of {"queue", "kind"} objects')
    for i, hop in enumerate(hops):
        for field, pattern, what in (("queue", QUEUE, "a queue name"), ("kind", KIND, "a job kind")):
            text = hop.get(field) if isinstance(hop, dict) else None
            if not isinstance(text, str):
                raise invalid(f'element {i} has no text field "{field}"')
            if not pattern.fullmatch(text):
                raise invalid(f"element {i}: {json.dumps(text)} is not {what}")
    if not hops:
        return None
    rest = dict(payload, next=hops[1:])
    if not rest["next"]:
        del rest["next"]
    return hops[0]["queue"], hops[0]["kind"], json.dumps(rest, ensure_ascii=False, separators=(",", ":"))


def enqueue_follow_up(next_job, tracer, worker):
    """Enqueues the follow-up on its queue (under this worker's prefix) in the current span, the `process` span: its
    `send <Q>` span is that span's child. Any failure is a retryable one (`enqueue_failed`)."""
    queue, kind, payload = next_job
    try:
        producer.check_partitions(worker.conn, worker.args.prefix, queue)
        job_id, _ = producer.enqueue(worker.conn, tracer, worker.args.prefix, queue, kind, payload)
    except (redis.exceptions.RedisError, ValueError) as e:
        raise JobFailure("enqueue_failed", f"follow-up on {queue}: {e}")
    log(f"follow-up {job_id} ({kind}) enqueued on {queue}")


def handle_demo(job, tracer, worker):
    """The seed's worker steps, as child spans of `process`; `process-data` crashes on `{"panic": msg}` and fails
    (error.type simulated_failure) while the attempt is at most `fail_until_attempt`. Then the follow-up of `next`,
    if any."""
    next_job = demo_follow_up(job.payload)
    panic, until = demo_options(job.payload)
    for step in DEMO_STEPS:
        with tracer.start_as_current_span(step) as span:
            time.sleep(0.002)
            if step != "process-data":
                continue
            if panic is not None:
                raise RuntimeError(panic)
            if until is not None and job.attempt <= until:
                failure = JobFailure("simulated_failure",
                                     f"process-data failed on purpose (fail_until_attempt, attempt {job.attempt})")
                span.set_status(Status(StatusCode.ERROR, failure.message))
                span.set_attribute("error.type", failure.error_type)
                raise failure
    if next_job:
        enqueue_follow_up(next_job, tracer, worker)


def handle_noop(job, tracer, worker):
    """Records the run in the queue's `done` hash (job id -> runs), which then expires --retention-ms after this
    write, in one MULTI, as the Rust `noop` does; a payload `{"record": false}` records nothing."""
    if isinstance(job.payload, dict) and job.payload.get("record") is False:
        return
    done = f"{worker.stream}:done"
    pipe = worker.conn.pipeline(transaction=True)
    pipe.hincrby(done, job.id, 1)
    if worker.args.retention_ms > 0:
        pipe.pexpire(done, worker.args.retention_ms)
    pipe.execute()


HANDLERS = {"demo": handle_demo, "noop": handle_noop, "py-demo": handle_demo}


class Script:
    """One of the jobstream Lua scripts: SCRIPT LOAD once, then EVALSHA; loaded again on NOSCRIPT (Redis
    restarted or its script cache was flushed)."""

    def __init__(self, conn, path):
        self.conn, self.text = conn, Path(path).read_text()
        self.sha = conn.script_load(self.text)

    def __call__(self, keys, args):
        try:
            return self.conn.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.sha = self.conn.script_load(self.text)
            return self.conn.evalsha(self.sha, len(keys), *keys, *args)


class Worker:
    def __init__(self, args, conn, tracer):
        self.args, self.conn, self.tracer = args, conn, tracer
        base = f"{args.prefix}:{{{args.queue}}}"
        self.stream, self.dead, self.delayed = base, f"{base}:dead", f"{base}:delayed"
        self.paused_key = f"{base}:paused"
        lua = Path(args.lua_dir)
        self.settle_script = Script(conn, lua / "settle.lua")
        self.promote_script = Script(conn, lua / "promote_due.lua")
        self.renew_script = Script(conn, lua / "renew_claims.lua")
        self.running = None  # entry id of the job running now, for claim renewal
        self.paused = False
        self.stop = threading.Event()
        self.counts = {"ack": 0, "retry": 0, "dead": 0}

    # The attempt.

    def process(self, message_id, pairs):
        """Runs one entry and settles it; returns how it was settled (`ack`, `retry`, `dead`) or None when nothing
        was written (the entry is no longer ours, or Redis refused: it stays pending)."""
        job, error = None, None
        try:
            job = decode(pairs, self.args.max_payload_bytes)
        except Undecodable as e:
            error = str(e)
        text = {}
        for name, value in pairs:  # the trace fields of an entry that did not decode still join its trace
            try:
                text[name.decode()] = value.decode()
            except UnicodeDecodeError:
                pass
        attributes = {
            "messaging.system": "redis",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": self.args.queue,
            "messaging.message.id": message_id,
            "messaging.consumer.group.name": self.args.group,
            "messaging.client.id": self.args.consumer,
            "jobstream.delivery.count": 1,
        }
        if job:
            attributes.update({"jobstream.job.id": job.id, "jobstream.job.kind": job.kind,
                               "jobstream.job.attempt": job.attempt})
        # The standard W3C propagators read traceparent / tracestate / baggage from the fields as they are.
        parent = propagate.extract(text)
        with self.tracer.start_as_current_span(f"process {self.args.queue}", context=parent, kind=SpanKind.CONSUMER,
                                               attributes=attributes, record_exception=False,
                                               set_status_on_exception=False) as span:
            self.running = message_id
            try:
                decision = self.attempt(span, job, error)
                return self.settle(span, message_id, pairs, job, decision)
            finally:
                self.running = None

    def attempt(self, span, job, decode_error):
        """Runs the job if it can run; returns the decision: ("ack",), ("retry", delay_ms) or ("dead", reason,
        error), with error.type and the status recorded on the span."""
        if job is None:
            return self.never_ran(span, "undecodable", decode_error)
        promoted_at = job.fields.get("promoted_at", "")
        if DECIMAL.fullmatch(promoted_at):
            span.add_event("promoted", {"jobstream.job.promoted_at": int(promoted_at)})
        deadline = job.fields.get("deadline_ms", "")
        if DECIMAL.fullmatch(deadline) and int(deadline) < 2**64 and now_ms() >= int(deadline):
            span.add_event("expired", {"jobstream.job.deadline_ms": int(deadline)})
            return self.never_ran(span, "expired",
                                  f"deadline {int(deadline)} (unix ms) passed before attempt {job.attempt} started")
        handler = HANDLERS.get(job.kind)
        if handler is None:
            return self.never_ran(span, "unknown_kind", f'no handler for kind "{job.kind}"')
        try:
            handler(job, self.tracer, self)
            return ("ack",)
        except JobFailure as e:
            failure = e
        except Exception as e:  # a crash fails the attempt, never the worker
            span.record_exception(e)
            failure = JobFailure("panic", f"handler panicked: {e if e.args else type(e).__name__}")
        span.set_attribute("error.type", failure.error_type)
        span.set_status(Status(StatusCode.ERROR, failure.message))
        max_attempts = self.args.max_attempts
        if failure.permanent:
            reason = "permanent_failure"
        elif job.attempt >= max_attempts:
            reason = "max_attempts"
        else:
            return ("retry", self.backoff_ms(job.attempt))
        return ("dead", reason, f"attempt {job.attempt} of {max_attempts}: {failure}")

    @staticmethod
    def never_ran(span, reason, error):
        span.set_attribute("error.type", reason)
        span.set_status(Status(StatusCode.ERROR, error))
        return ("dead", reason, error)

    def backoff_ms(self, attempt):
        """base · 2^(attempt − 1), at most the maximum, then drawn uniformly from its upper half (equal jitter)."""
        cap = min(self.args.retry_base_delay_ms * 2 ** min(attempt - 1, 20), self.args.retry_max_delay_ms)
        return int(cap / 2 + random.random() * (cap - cap / 2))

    # Settling.

    def settle(self, span, message_id, pairs, job, decision):
        if decision[0] == "ack":
            span.add_event("settle", {"jobstream.settle.outcome": "ack"})
            try:
                acked = self.conn.xack(self.stream, self.args.group, message_id)
            except redis.exceptions.RedisError as e:
                log(f"acknowledging entry {message_id} failed; it stays pending and runs again after the visibility "
                    f"timeout: {e}")
                return None
            if acked == 0:
                log(f"entry {message_id} was taken over by another consumer before its acknowledgement; "
                    "its new owner settles it")
                return None
            return "ack"
        if decision[0] == "retry":
            delay_ms = decision[1]
            # The next attempt: the entry's fields without `attempt` and `promoted_at`, plus `attempt` + 1,
            # sorted by name, as a flat JSON array of strings.
            fields = [(k, v) for k, v in pairs_text(pairs) if k not in ("attempt", "promoted_at")]
            fields.append(("attempt", str(job.attempt + 1)))
            fields.sort()
            member = json.dumps([s for pair in fields for s in pair], ensure_ascii=False, separators=(",", ":"))
            keys = [self.stream, self.delayed]
            args = [self.args.group, self.args.consumer, message_id, "retry", "", 0, now_ms() + delay_ms, member]
            event = {"jobstream.settle.outcome": "retry", "jobstream.retry.delay_ms": delay_ms,
                     "jobstream.retry.next_attempt": job.attempt + 1}
        else:
            _, reason, error = decision
            letter = ["dead.reason", reason, "dead.error", error, "dead.source_id", message_id,
                      "dead.deliveries", 1, "dead.consumer", self.args.consumer, "dead.at", now_ms()]
            entry = [x for name, value in pairs if not name.startswith(b"dead.") for x in (name, value)]
            keys = [self.stream, self.dead]
            args = [self.args.group, self.args.consumer, message_id, "dead", "", 0, self.args.dead_maxlen,
                    MAX_SCRIPT_VALUES, len(letter), *entry, *letter]
            event = {"jobstream.settle.outcome": "dead"}
        moved = self.run_settle(keys, args)
        if moved == 1:
            span.add_event("settle", event)
            if decision[0] == "retry":
                log(f"job {job.id} failed; attempt {job.attempt + 1} in {decision[1]} ms")
            else:
                log(f"entry {message_id} dead-lettered ({decision[1]}): {decision[2]}")
            return decision[0]
        if moved == 0:
            log(f"entry {message_id} is no longer pending for this consumer (taken over); its new owner settles "
                "it, nothing was written")
        return None

    def run_settle(self, keys, args):
        """settle.lua, tried three times over about a quarter second: every run is all or nothing, so after an
        error nothing was written and the entry stays pending (delivered again after the visibility timeout)."""
        for pause in (0, 0.05, 0.2):
            time.sleep(pause)
            try:
                return self.settle_script(keys, args)
            except redis.exceptions.RedisError as e:
                error = e
        log(f"settling failed and nothing was written; the entry stays pending: {error}")
        return None

    # Background duties: the pause flag, promotion of due jobs, claim renewal.

    def maintain(self):
        renew_every = self.args.visibility_timeout_ms / 3000
        renewed = time.monotonic()
        advertised = 0.0
        failures = 0
        while not self.stop.wait(PROMOTE_EVERY if failures == 0 else min(10, PROMOTE_EVERY * 2 ** failures)):
            try:
                # Every 5 s, the kinds this worker handles (`<prefix>:{Q}:kinds`, docs/wire-format.md).
                if time.monotonic() - advertised >= 5:
                    me = json.dumps({"consumer": self.args.consumer, "language": "python",
                                     "seen_at": int(time.time() * 1000)}, separators=(",", ":"))
                    self.conn.hset(f"{self.stream}:kinds", mapping={kind: me for kind in HANDLERS})
                    advertised = time.monotonic()
                self.paused = bool(self.conn.exists(self.paused_key))
                if not self.paused:
                    self.promote()
                running = self.running
                if running and time.monotonic() - renewed >= renew_every:
                    lost = self.renew_script([self.stream], [self.args.group, self.args.consumer, running])
                    if lost:
                        log(f"entry {running}, still running here, was taken over by another consumer; it may "
                            "run twice")
                    renewed = time.monotonic()
                elif not running:
                    renewed = time.monotonic()
                failures = 0
            except redis.exceptions.RedisError as e:
                if failures == 0:
                    log(f"promoting or renewing failed; retrying with back-off: {e}")
                failures += 1

    def promote(self):
        while True:
            moved, dead, stuck, cancelled = self.promote_script(
                [self.delayed, self.stream, self.dead],
                [now_ms(), PROMOTE_BATCH, self.args.dead_maxlen, MAX_SCRIPT_VALUES, self.args.consumer, ""])
            if dead:
                log(f"{dead} delayed members that cannot become an entry were dead-lettered (undecodable)")
            if stuck:
                log(f"{stuck} delayed members that cannot become an entry stay: {self.dead} holds another type")
            if moved + dead + stuck + cancelled < PROMOTE_BATCH or moved + dead + cancelled == 0:
                return

    # The read loop.

    def run(self, count):
        settled = 0
        while not stopping and (count == 0 or settled < count):
            if self.paused:
                time.sleep(0.25)
                continue
            reply = self.conn.execute_command("XREADGROUP", "GROUP", self.args.group, self.args.consumer, "COUNT",
                                              16, "BLOCK", 500, "STREAMS", self.stream, ">")
            for _, entries in stream_replies(reply):
                for message_id, flat in entries:
                    pairs = list(zip(flat[::2], flat[1::2]))
                    how = self.process(message_id.decode(), pairs)
                    if how:
                        self.counts[how] += 1
                        settled += 1


def pairs_text(pairs):
    return [(k.decode(), v.decode()) for k, v in pairs]


def stream_replies(reply):
    """The (stream, entries) of an XREADGROUP reply, RESP2 (a list) or RESP3 (a map); None when it timed out."""
    if not reply:
        return []
    return reply.items() if isinstance(reply, dict) else reply


stopping = []


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ.get
    ap.add_argument("--queue", default=env("JOBSTREAM_QUEUE", "jobs"))
    ap.add_argument("--prefix", default=env("JOBSTREAM_PREFIX", "jobstream"))
    ap.add_argument("--group", default=env("JOBSTREAM_GROUP", "workers"))
    ap.add_argument("--consumer", default=f"py-{socket.gethostname()}-{os.getpid()}")
    ap.add_argument("--count", type=int, default=0, help="exit after this many settled attempts (acknowledged, "
                    "retried or dead-lettered; 0: run until SIGTERM/SIGINT)")
    ap.add_argument("--max-attempts", type=int, default=int(env("JOBSTREAM_MAX_ATTEMPTS", "5")),
                    help="attempts per job, the first included; then the job is dead-lettered (default 5)")
    ap.add_argument("--retry-base-delay-ms", type=int, default=1000,
                    help="delay before the second attempt; it doubles for each further one, with jitter (default 1000)")
    ap.add_argument("--retry-max-delay-ms", type=int, default=300_000, help="longest delay between attempts "
                    "(default 300000)")
    ap.add_argument("--visibility-timeout-ms", type=int, default=60_000, help="the group's visibility timeout, as "
                    "its jobstream workers are configured (it is not in Redis); the running job's claim is renewed "
                    "every third of it (default 60000)")
    ap.add_argument("--dead-maxlen", type=int, default=100_000, help="approximate cap on the dead stream's "
                    "length; 0 for none (default 100000)")
    ap.add_argument("--max-payload-bytes", type=int, default=1_048_576, help="a longer payload is undecodable")
    ap.add_argument("--retention-ms", type=int, default=3_600_000, help="how long the `done` hash the noop kind "
                    "writes lives after its last write; 0 keeps it")
    ap.add_argument("--lua-dir", default=env("JOBSTREAM_LUA_DIR", str(LUA_DIR)),
                    help="where settle.lua, promote_due.lua and renew_claims.lua are (default: jobstream's "
                    "shared/src/lua)")
    args = ap.parse_args()
    if args.max_attempts < 1 or args.retry_base_delay_ms < 0 or args.visibility_timeout_ms < 100:
        ap.error("--max-attempts must be at least 1, --retry-base-delay-ms at least 0, --visibility-timeout-ms "
                 "at least 100")
    args.dead_maxlen = min(args.dead_maxlen, 2**63 - 1)

    provider = telemetry.init("jobstream-python-worker")
    tracer = trace.get_tracer("jobstream-python-worker")
    conn = redis.Redis.from_url(env("REDIS_URL", "redis://127.0.0.1:6379"))
    # Entries as Redis sends them: field/value pairs in order, bytes, duplicates kept.
    conn.set_response_callback("XREADGROUP", lambda response, **options: response)
    worker = Worker(args, conn, tracer)
    try:
        conn.xgroup_create(worker.stream, args.group, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    background = threading.Thread(target=worker.maintain, name="promote-renew", daemon=True)
    background.start()
    try:
        worker.run(args.count)
    finally:
        worker.stop.set()
        background.join(timeout=5)
        provider.shutdown()  # flushes the batch of spans
    c = worker.counts
    log(f"acknowledged {c['ack']} jobs, retried {c['retry']}, dead-lettered {c['dead']}")


if __name__ == "__main__":
    main()
