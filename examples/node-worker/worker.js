#!/usr/bin/env node
// A jobstream worker in Node.js, with the Rust worker's guarantees: it reads a queue as one consumer of its consumer
// group, continues each job's trace with the standard W3C propagator, runs the job's handler, and settles the
// entry the way the Rust `consumer` does — acknowledged after success; after a failure, scheduled to run again
// with exponential back-off (the delayed set) or, out of attempts, moved to the dead stream — with the very Lua
// scripts the Rust crate embeds (shared/src/lua). It moves due retries back to the stream, takes over entries
// that dead consumers left idle past the visibility timeout, renews the claim on its own running jobs, honours
// the queue's pause flag and cancel set, and keeps the status records of docs/wire-format.md.
//
//     REDIS_URL=redis://127.0.0.1:6379 OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 \
//         node worker.js --queue jobs [--group workers] [--concurrency 16] [--count N]
//
// Kinds: `demo` (the four seed steps as child spans, like the Rust kind, then the follow-up job its payload's
// `next` asks for), `noop` (counts its run) and `node-demo` (the demo, for a queue that only Node workers serve):
// HANDLERS below. Any other kind is dead-lettered at once with reason `unknown_kind`, as the Rust worker does —
// give a Node worker a queue (or group) of the kinds it knows. SIGTERM or SIGINT: stop reading, let running jobs
// finish (--shutdown-grace-ms), flush spans, exit 0. The wire format is docs/wire-format.md; ioredis and the
// OpenTelemetry SDK are all it uses.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import { context, isSpanContextValid, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import Redis from 'ioredis';

import {
  checkPartitions,
  enqueue,
  integer,
  KIND_NAME,
  matching,
  MAX_PAYLOAD_BYTES,
  number,
  parseOptions,
  QUEUE_NAME,
  queueKeys,
} from './common.js';
import { initTracing } from './telemetry.js';

const PROMOTE_EVERY_MS = 200; // due retries and scheduled jobs are moved to the stream this often
const PROMOTE_BATCH = 256; // jobs moved by one run of promote_due.lua
const CONTROL_EVERY_MS = 250; // the pause flag and the cancel set are read this often
const MAX_READ = 64; // most entries one XREADGROUP asks for
const MAX_SCRIPT_VALUES = 7000; // most values one XADD from a script may carry (Lua's unpack limit)
const MAX_FIELDS = 256; // a wider entry is not a job
const MAX_PROGRESS_BYTES = 4096;
const HOUR_MS = 3_600_000;
const CANCEL_MEMORY_MS = 24 * HOUR_MS;
const DEAD_PREFIX = Buffer.from('dead.');

const opts = parseOptions('usage: node worker.js --queue Q [options]', {
  queue: { default: 'jobs', parse: matching(QUEUE_NAME, 'a queue name (1-128 of A-Z a-z 0-9 . _ : -)'), help: 'queue to serve' },
  prefix: { default: 'jobstream', help: 'prefix of every Redis key' },
  group: { default: 'workers', parse: matching(QUEUE_NAME, 'a group name (1-128 of A-Z a-z 0-9 . _ : -)'), help: 'consumer group; created with MKSTREAM when missing' },
  consumer: {
    default: `${os.hostname()}-${process.pid}`,
    parse: (name) => {
      if (name.trim() === '' || [...name].length > 200 || /\p{Cc}/u.test(name)) {
        throw new Error('a consumer name is 1 to 200 characters, not all blank, with no control characters');
      }
      return name;
    },
    help: 'consumer name, unique per process (<hostname>-<pid>)',
  },
  concurrency: { default: '16', parse: integer(1, 100_000), help: 'most jobs running at once' },
  count: { default: '0', parse: integer(0), help: 'exit after this many jobs settled (acknowledged, retried or dead); 0: run until SIGTERM' },
  'max-attempts': { default: '5', parse: integer(1), help: 'attempts per job, the first included; then it is dead-lettered' },
  'retry-base-delay-ms': { default: '1000', parse: integer(0), help: 'delay before the second attempt; doubles for each further one (with jitter)' },
  'retry-max-delay-ms': { default: '300000', parse: integer(0), help: 'longest delay between attempts' },
  'max-deliveries': { default: '5', parse: integer(1), help: 'an entry delivered more often without an outcome is dead-lettered as poison' },
  'visibility-timeout-ms': { default: '60000', parse: integer(100), help: "another consumer's entry idle this long is taken over" },
  'block-ms': { default: '2000', parse: integer(10, 60_000), help: 'how long one XREADGROUP waits for new entries' },
  'shutdown-grace-ms': { default: '30000', parse: integer(0), help: 'how long running jobs may take to finish after SIGTERM' },
  'job-timeout-ms': { default: '0', parse: integer(0), help: "longest one attempt may run (a job's timeout_ms wins); 0: none" },
  'trace-mode': { default: 'parent', parse: matching(/^(parent|link)$/, 'parent or link'), help: 'parent: process spans continue the trace; link: new trace with a link' },
  'dead-maxlen': { default: '100000', parse: integer(0), help: 'approximate cap on the dead stream; 0 for none' },
  'job-retention-ms': { default: '86400000', parse: integer(1000), help: "how long a finished job's status record is kept" },
  'no-job-records': { type: 'boolean', default: false, help: 'keep no status records (pass no record key to the scripts)' },
  'retention-ms': { default: '3600000', parse: integer(0), help: "how long the kinds' `done` hash lives after its last write; 0 keeps it" },
  'result-ttl-ms': { default: '86400000', parse: integer(1), help: "how long the demo kind's results stay in Redis" },
  'demo-latency-scale': { default: '1', parse: number(0, 1000), help: "multiplies the demo steps' simulated latency" },
  'demo-failure-rate': { default: '0', parse: number(0, 1), help: 'probability that a demo attempt fails in one of its first three steps' },
  'lua-dir': {
    default: fileURLToPath(new URL('../../shared/src/lua/', import.meta.url)),
    help: "folder of jobstream's Lua scripts (settle.lua, promote_due.lua, ...)",
  },
});
if (opts.blockMs >= opts.visibilityTimeoutMs) {
  process.stderr.write('error: --block-ms must be shorter than --visibility-timeout-ms (see --help)\n');
  process.exit(2);
}
if (opts.retryBaseDelayMs > opts.retryMaxDelayMs) {
  process.stderr.write('error: --retry-base-delay-ms is longer than --retry-max-delay-ms (see --help)\n');
  process.exit(2);
}
const keys = queueKeys(opts.prefix, opts.queue);
const records = !opts.noJobRecords;

// ---------------------------------------------------------------------------------------------------------------
// Logging: one line per event on stderr.

function log(level, message, fields = {}) {
  const extra = Object.keys(fields).length ? ` ${JSON.stringify(fields)}` : '';
  process.stderr.write(`${new Date().toISOString()} ${level} ${message}${extra}\n`);
}

// ---------------------------------------------------------------------------------------------------------------
// The Lua scripts of the Rust crate, loaded from shared/src/lua and run with EVALSHA (SCRIPT LOAD again after
// NOSCRIPT, e.g. once Redis restarted).

class Script {
  constructor(file) {
    this.file = file;
    this.text = readFileSync(new URL(file, `file://${opts.luaDir.replace(/\/?$/, '/')}`), 'utf8');
    this.sha = createHash('sha1').update(this.text).digest('hex');
  }

  async load(redis) {
    await redis.script('LOAD', this.text);
  }

  /** Runs the script; `buffers` returns bulk strings as Buffers. */
  async run(redis, keyList, args, { buffers = false } = {}) {
    const call = () =>
      buffers
        ? redis.evalshaBuffer(this.sha, keyList.length, ...keyList, ...args)
        : redis.evalsha(this.sha, keyList.length, ...keyList, ...args);
    try {
      return await call();
    } catch (e) {
      if (!String(e?.message).startsWith('NOSCRIPT')) throw e;
      await this.load(redis);
      return call();
    }
  }
}

let scripts;
try {
  scripts = {
    settle: new Script('settle.lua'),
    promoteDue: new Script('promote_due.lua'),
    ensureGroup: new Script('ensure_group.lua'),
    claimStale: new Script('claim_stale.lua'),
    renewClaims: new Script('renew_claims.lua'),
  };
} catch (e) {
  process.stderr.write(`error: cannot read jobstream's Lua scripts from ${opts.luaDir}: ${e.message} (see --lua-dir)\n`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding an entry (docs/wire-format.md, "One job = one stream entry"), as the Rust worker does.

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const TRACE_FIELDS = ['traceparent', 'tracestate', 'baggage'];
const UUID_FORMS = [
  /^([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})$/i,
  /^([0-9a-f]{8})([0-9a-f]{4})([0-9a-f]{4})([0-9a-f]{4})([0-9a-f]{12})$/i,
  /^\{([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})\}$/i,
  /^urn:uuid:([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})$/i,
];

class DecodeError extends Error {}

/** An unsigned decimal as Rust's `str::parse::<u64|u32>` reads it, with its error messages. */
function parseUnsigned(text, bits) {
  if (text === '') throw new DecodeError('cannot parse integer from empty string');
  if (!/^\+?[0-9]+$/.test(text)) throw new DecodeError('invalid digit found in string');
  const n = BigInt(text);
  if (n >= 1n << BigInt(bits)) throw new DecodeError('number too large to fit in target type');
  return Number(n);
}

/** The entry's fields ([Buffer, Buffer] pairs) as a job, or `{error}` saying why it is not one. */
function decode(raw) {
  if (raw.length > MAX_FIELDS) return { error: `the entry has ${raw.length} fields; a job has at most ${MAX_FIELDS}` };
  const fields = new Map();
  for (const [rawName, rawValue] of raw) {
    let name;
    try {
      name = utf8.decode(rawName);
    } catch {
      return { error: `a field name is not valid UTF-8: ${JSON.stringify(rawName.toString('utf8'))}` };
    }
    try {
      fields.set(name, utf8.decode(rawValue));
    } catch {
      return { error: `field \`${name}\` is not valid UTF-8` };
    }
  }
  const take = (name) => {
    if (!fields.has(name)) throw new DecodeError(`field \`${name}\` is missing`);
    const value = fields.get(name);
    fields.delete(name);
    return value;
  };
  const invalid = (name, parse) => {
    try {
      return parse();
    } catch (e) {
      throw new DecodeError(`field \`${name}\` is invalid: ${e.message}`);
    }
  };
  try {
    const version = take('v');
    if (version !== '1') throw new DecodeError(`wire version ${JSON.stringify(version)} is not supported (this worker reads version 1)`);
    const idText = take('id');
    const id = invalid('id', () => {
      const parts = UUID_FORMS.map((form) => idText.match(form)).find(Boolean);
      if (!parts) throw new Error(`${JSON.stringify(idText)} is not a UUID`);
      return parts.slice(1).join('-').toLowerCase();
    });
    const kind = take('kind');
    invalid('kind', () => {
      if (!KIND_NAME.test(kind)) throw new Error(`job kind ${JSON.stringify(kind)} is invalid: use 1 to 64 characters of letters, digits and . _ - :`);
    });
    const payload = take('payload');
    const size = Buffer.byteLength(payload);
    if (size > MAX_PAYLOAD_BYTES) throw new DecodeError(`payload is ${size} bytes; the limit is ${MAX_PAYLOAD_BYTES}`);
    invalid('payload', () => {
      try {
        JSON.parse(payload);
      } catch (e) {
        throw new Error(`payload is not JSON: ${e.message}`);
      }
    });
    const enqueuedAt = invalid('enqueued_at', () => parseUnsigned(take('enqueued_at'), 64));
    const attemptText = take('attempt');
    const attempt = invalid('attempt', () => parseUnsigned(attemptText, 32));
    if (attempt === 0) throw new DecodeError('field `attempt` is invalid: must be 1 or more');
    const traceHeaders = {};
    for (const name of TRACE_FIELDS) {
      if (fields.has(name)) traceHeaders[name] = take(name);
    }
    const positive = (name) => {
      const text = fields.get(name);
      return text !== undefined && /^\+?[0-9]+$/.test(text) && BigInt(text) < 1n << 64n ? Number(text) : null;
    };
    const timeoutMs = positive('timeout_ms') || null;
    return { job: { id, kind, payload, enqueuedAt, attempt, trace: traceHeaders, extra: fields, timeoutMs, deadlineMs: positive('deadline_ms') } };
  } catch (e) {
    if (e instanceof DecodeError) return { error: e.message };
    throw e;
  }
}

/** The first value of field `name` as text, or undefined. */
function fieldText(raw, name) {
  const found = raw.find(([k]) => k.equals(Buffer.from(name)));
  return found ? found[1].toString('utf8') : undefined;
}

/** The trace fields of an entry that did not decode, so that its `process` span still joins the trace. */
function rawTraceHeaders(raw) {
  const out = {};
  for (const [k, v] of raw) {
    try {
      const name = utf8.decode(k).toLowerCase();
      if (TRACE_FIELDS.includes(name)) out[name] = utf8.decode(v);
    } catch {
      // not text: not a trace field
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Trace context: the W3C propagator over the entry's fields. Like the Rust worker, an oversized tracestate or
// baggage is cut by whole members to the W3C sizes first (and the span says so), so the trace is kept.

const listMembers = (list) => list.split(',').map((m) => m.trim()).filter((m) => m.length > 0);
const chars = (s) => [...s].length;
const joined = (members, measure) => members.reduce((n, m) => n + measure(m), 0) + Math.max(0, members.length - 1);

function cutTracestate(value) {
  let kept = listMembers(value);
  if (kept.length <= 32 && chars(value) <= 512) return null;
  kept = kept.slice(0, 32);
  while (joined(kept, chars) > 512) {
    let long = -1;
    for (let i = kept.length - 1; i >= 0 && long < 0; i--) if (chars(kept[i]) > 128) long = i;
    if (long >= 0) kept.splice(long, 1);
    else kept.pop();
  }
  return kept.join(',');
}

function cutBaggage(value) {
  let kept = listMembers(value);
  if (kept.length <= 64 && Buffer.byteLength(value) <= 8192) return null;
  kept = kept.slice(0, 64);
  while (joined(kept, Buffer.byteLength) > 8192) kept.pop();
  return kept.join(',');
}

/** Where the `process` span goes: its parent context, links, and what became of the entry's context. */
function continueTrace(headers, mode) {
  if (headers.traceparent === undefined) return { status: 'missing', parent: ROOT_CONTEXT, links: [] };
  const carrier = { ...headers };
  const cut = [];
  for (const [name, cutter] of [['tracestate', cutTracestate], ['baggage', cutBaggage]]) {
    const value = headers[name] === undefined ? null : cutter(headers[name]);
    if (value === null) continue;
    cut.push(name);
    if (value === '') delete carrier[name];
    else carrier[name] = value;
  }
  const truncated = cut.length ? cut.join(',') : undefined;
  const extracted = propagation.extract(ROOT_CONTEXT, carrier);
  const remote = trace.getSpanContext(extracted);
  if (!remote || !isSpanContextValid(remote)) {
    const shown = [...headers.traceparent].slice(0, 64).join('');
    return { status: 'invalid', error: `traceparent ${JSON.stringify(shown)} is malformed`, parent: ROOT_CONTEXT, links: [], truncated };
  }
  if (mode === 'link') return { status: 'continued', parent: ROOT_CONTEXT, links: [{ context: remote }], truncated };
  return { status: 'continued', parent: extracted, links: [], truncated };
}

// ---------------------------------------------------------------------------------------------------------------
// Job kinds. A handler gets the job and returns (success) or throws: a JobFailure is a failure of that
// error.type (retried, unless permanent), anything else a crash (error.type `panic`, like a Rust panic).

export class JobFailure extends Error {
  constructor(errorType, message, { permanent = false } = {}) {
    super(message);
    this.errorType = errorType;
    this.permanent = permanent;
  }
}

const DEMO_STEPS = [['http-request', 40], ['load-data', 25], ['process-data', 60], ['save-data', 15]];

/** What a `demo` payload may say: `{"panic": "<message>"}`, `{"fail_until_attempt": n}` (else nothing). */
function demoOptions(payload) {
  let value;
  try {
    value = JSON.parse(payload);
  } catch {
    return {};
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return {};
  const { panic = null, fail_until_attempt: until = null } = value;
  if (panic !== null && typeof panic !== 'string') return {};
  if (until !== null && !(Number.isInteger(until) && until >= 0 && until <= 0xffffffff)) return {};
  return { panic, until };
}

/**
 * The follow-up a demo payload asks for with `"next": [{"queue": Q, "kind": K}, ...]`, as the Rust kind reads it:
 * null when there is none (no `next`, `null`, an empty list, or a payload that is not an object), else the first
 * hop's queue and kind and the payload that goes with it (this one without `next[0]`; `next` dropped when empty).
 * A `next` that is not a list of such objects with valid names fails the job at once, permanently
 * (`invalid_payload`): every hop is checked here.
 */
function demoFollowUp(payload) {
  let value;
  try {
    value = JSON.parse(payload);
  } catch {
    return null;
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return null;
  const hops = value.next;
  if (hops === undefined || hops === null) return null;
  const invalid = (why) => new JobFailure('invalid_payload', `next: ${why}`, { permanent: true });
  if (!Array.isArray(hops)) throw invalid('not a list of {"queue", "kind"} objects');
  hops.forEach((hop, i) => {
    for (const [field, pattern, what] of [['queue', QUEUE_NAME, 'a queue name'], ['kind', KIND_NAME, 'a job kind']]) {
      const text = hop !== null && typeof hop === 'object' ? hop[field] : undefined;
      if (typeof text !== 'string') throw invalid(`element ${i} has no text field "${field}"`);
      if (!pattern.test(text)) throw invalid(`element ${i}: ${JSON.stringify(text)} is not ${what}`);
    }
  });
  if (hops.length === 0) return null;
  const rest = { ...value, next: hops.slice(1) };
  if (rest.next.length === 0) delete rest.next;
  return { queue: hops[0].queue, kind: hops[0].kind, payload: JSON.stringify(rest) };
}

/**
 * Enqueues a demo job's follow-up on its queue (under this worker's prefix) from the handler's context, so its
 * `send <Q>` span is a child of the `process` span; any failure is a retryable one (`enqueue_failed`).
 */
async function enqueueFollowUp(next, { tracer, redis }) {
  const target = queueKeys(opts.prefix, next.queue);
  try {
    await checkPartitions(redis, target);
    const { jobId } = await enqueue(redis, tracer, target, next.kind, next.payload);
    log('INFO', 'follow-up enqueued', { queue: next.queue, kind: next.kind, job_id: jobId });
  } catch (e) {
    throw new JobFailure('enqueue_failed', `follow-up on ${next.queue}: ${e.message}`);
  }
}

/**
 * The seed's worker steps, as child spans of `process`, as the Rust `demo` kind runs them; then the follow-up
 * job of `next`, if any.
 */
async function handleDemo(job, { tracer, redis }) {
  const next = demoFollowUp(job.payload);
  const failAt = Math.random() < opts.demoFailureRate ? Math.floor(Math.random() * 3) : null;
  const latencies = DEMO_STEPS.map(([, ms]) => ms * (0.5 + Math.random()) * opts.demoLatencyScale);
  const options = demoOptions(job.payload);
  for (const [index, [name]] of DEMO_STEPS.entries()) {
    const latency = latencies[index];
    const attributes = { 'demo.step': name, 'demo.latency_ms': Math.floor(latency) };
    await tracer.startActiveSpan(name, { attributes }, async (step) => {
      try {
        if (latency > 0) {
          try {
            await sleep(latency, undefined, { signal: job.signal });
          } catch {
            throw new JobFailure('cancelled', `${name} stopped: the attempt was cancelled`);
          }
        }
        if (failAt === index) throw new JobFailure('simulated_failure', `${name} failed (simulated)`);
        if (name === 'process-data') {
          // `{"panic": "<message>"}`: a crashing handler fails its attempt, never its worker.
          if (options.panic !== null && options.panic !== undefined) throw new Error(options.panic);
          if (options.until !== null && options.until !== undefined && job.attempt <= options.until) {
            throw new JobFailure('simulated_failure', `process-data failed on purpose (fail_until_attempt, attempt ${job.attempt})`);
          }
        }
        if (name === 'save-data') {
          let input = null;
          try {
            input = JSON.parse(job.payload);
          } catch {
            // kept as null
          }
          const result = { attempt: job.attempt, consumer: opts.consumer, finished_at_ms: Date.now(), input, job_id: job.id };
          job.setResult(result);
          const tx = redis.multi().set(keys.result(job.id), JSON.stringify(result), 'PX', opts.resultTtlMs).hincrby(keys.done, job.id, 1);
          if (opts.retentionMs > 0) tx.pexpire(keys.done, opts.retentionMs);
          await exec(tx);
        }
      } catch (e) {
        step.setStatus({ code: SpanStatusCode.ERROR, message: e.message });
        if (e instanceof JobFailure) step.setAttribute('error.type', e.errorType);
        throw e;
      } finally {
        step.end();
      }
    });
    // Progress after each step that took time; a report that cannot be written does not stop the job.
    if (latency > 0) {
      await job.progress({ step: name, done: index + 1, of: DEMO_STEPS.length }).catch((e) => log('WARN', 'progress not recorded', { error: e.message }));
    }
  }
  if (next) await enqueueFollowUp(next, { tracer, redis });
}

/** Does nothing but, unless its payload says `"record": false`, count its run in the queue's `done` hash. */
async function handleNoop(job, { redis }) {
  let payload = null;
  try {
    payload = JSON.parse(job.payload);
  } catch {
    // any payload is accepted
  }
  const off = payload !== null && typeof payload === 'object' && !Array.isArray(payload) && payload.record === false;
  if (!off) {
    const tx = redis.multi().hincrby(keys.done, job.id, 1);
    if (opts.retentionMs > 0) tx.pexpire(keys.done, opts.retentionMs);
    await exec(tx);
  }
}

const HANDLERS = { demo: handleDemo, noop: handleNoop, 'node-demo': handleDemo };

/** Runs a MULTI; a command's error fails the job (error.type `redis`). */
async function exec(tx) {
  let replies;
  try {
    replies = await tx.exec();
  } catch (e) {
    throw new JobFailure('redis', e.message);
  }
  const failed = (replies ?? []).find(([err]) => err);
  if (failed) throw new JobFailure('redis', failed[0].message);
}

// ---------------------------------------------------------------------------------------------------------------
// State shared by the read loop, the attempts and the background duties.

const state = {
  stopping: false,
  paused: null, // null until the flag was read once, then whether the queue is paused
  pausedAt: 0,
  resumedAt: 0,
  cancels: new Map(), // job id -> when its cancel was asked (unix ms)
  running: new Map(), // entry id -> its attempt, while it runs and until it is settled
  runningJobs: new Map(), // job id -> its attempt
  settled: 0,
  stats: { acknowledged: 0, retried: 0, dead: 0, failed: 0, reclaimed: 0 },
};

const provider = initTracing('jobstream-node-worker');
const tracer = trace.getTracer('jobstream-node-worker');
const redisUrl = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
// ioredis reconnects by itself; a command sent meanwhile fails after a few reconnection attempts and the loop
// that sent it backs off and tries again. Redis being away is never fatal, as with the Rust worker.
const redis = new Redis(redisUrl, { maxRetriesPerRequest: 3 });
const reader = new Redis(redisUrl, { maxRetriesPerRequest: 3 }); // the blocking XREADGROUP gets a connection of its own
let redisErrorShown = false;
for (const conn of [redis, reader]) {
  conn.on('error', (e) => {
    if (!redisErrorShown) log('WARN', 'Redis connection error; reconnecting', { error: e.message });
    redisErrorShown = true;
  });
  conn.on('ready', () => {
    redisErrorShown = false;
  });
}

/** Waits `ms`, or less when `signal` is aborted. */
const nap = (ms, signal) => sleep(ms, undefined, { signal }).catch(() => {});

/** `base · 2^exponent` capped at `max`, drawn from [d/2, d] ("equal jitter"), in whole ms. */
function jittered(base, max, exponent) {
  const cap = Math.min(base * 2 ** Math.min(exponent, 20), max);
  const half = cap / 2;
  return Math.floor(half + Math.random() * (cap - half));
}

/** A duration as Rust's `{:?}` prints whole milliseconds: `50ms`, `1.5s`, `2s`. */
const durationText = (ms) => (ms < 1000 ? `${ms}ms` : `${ms / 1000}s`);

// ---------------------------------------------------------------------------------------------------------------
// The pause flag and the cancel set, read in one round trip every 250 ms.

function observePause(paused, now) {
  const wasPaused = state.pausedAt > state.resumedAt;
  if (!wasPaused && paused) state.pausedAt = now;
  if (wasPaused && !paused) state.resumedAt = now;
  if (state.paused !== paused) {
    if (paused) log('INFO', 'queue paused: reading nothing new until it is resumed', { queue: opts.queue });
    else if (state.paused === true) log('INFO', 'queue resumed: reading again', { queue: opts.queue });
    state.paused = paused;
  }
}

/** How long a job ready since `readyMs` waited while the queue was paused (the last pause seen to end). */
function pausedWhileWaiting(readyMs) {
  const { pausedAt, resumedAt } = state;
  return resumedAt > pausedAt && resumedAt > readyMs ? resumedAt - Math.max(pausedAt, readyMs) : null;
}

function cancelRequested(pairs, forgetBefore) {
  const fresh = [];
  for (const [id, at] of pairs) {
    if (!state.cancels.has(id)) fresh.push(id);
    state.cancels.set(id, at);
  }
  for (const [id, at] of state.cancels) if (at < forgetBefore) state.cancels.delete(id);
  for (const id of fresh) {
    const attempt = state.runningJobs.get(id);
    if (attempt) {
      log('INFO', 'job cancelled while running; stopping its attempt', { job_id: id });
      attempt.cancel();
    }
  }
}

async function watchControl(signal) {
  let since = null;
  let failing = false;
  let advertised = 0;
  while (!signal.aborted) {
    const now = Date.now();
    try {
      // Every 5 s, the kinds this worker handles (`<prefix>:{Q}:kinds`, docs/wire-format.md): the producer warns
      // about a kind no live worker handles, and a worker that dead-letters an unknown kind names who handles it.
      if (now - advertised >= 5000) {
        const me = JSON.stringify({ consumer: opts.consumer, language: 'node', seen_at: now });
        await redis.hset(`${keys.stream}:kinds`, ...Object.keys(HANDLERS).flatMap((kind) => [kind, me]));
        advertised = now;
      }
      const replies = await redis
        .pipeline()
        .exists(keys.paused)
        .zrangebyscore(keys.cancels, since === null ? '-inf' : String(Math.max(0, since - 5000)), '+inf', 'WITHSCORES')
        .exec();
      const failed = replies.find(([err]) => err);
      if (failed) throw failed[0];
      const flat = replies[1][1];
      const pairs = [];
      for (let i = 0; i + 1 < flat.length; i += 2) pairs.push([flat[i], Number(flat[i + 1])]);
      since = now;
      failing = false;
      observePause(replies[0][1] > 0, now);
      cancelRequested(pairs, now - CANCEL_MEMORY_MS);
    } catch (e) {
      // Never read yet: run (a flag that cannot be read cannot be enforced); else keep the last known state.
      if (state.paused === null) state.paused = false;
      if (!failing) log('WARN', "reading the queue's pause flag failed", { error: e.message, key: keys.paused });
      failing = true;
    }
    await nap(CONTROL_EVERY_MS, signal);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Reading: entries other consumers left idle past the visibility timeout when a pass is due, else new ones.

const isNoGroup = (e) => String(e?.message).includes('NOGROUP');
/** Stream entries ([id, [name, value, ...]]) as deliveries. */
const pairsOf = (flat) => {
  const out = [];
  for (let i = 0; i + 1 < (flat ?? []).length; i += 2) out.push([flat[i], flat[i + 1]]);
  return out;
};

class Reader {
  constructor() {
    this.hasRead = false;
    this.failures = 0;
    this.cursor = '0-0';
    this.nextReclaim = 0;
    this.reclaimEvery = Math.min(Math.max(opts.visibilityTimeoutMs / 4, 100), 10_000);
  }

  /** Up to `n` deliveries, or a number: how long to wait before trying again. */
  async next(n) {
    try {
      const deliveries = await this.read(n);
      if (this.failures > 0) log('INFO', 'Redis reachable again', { after_failures: this.failures });
      this.failures = 0;
      return deliveries;
    } catch (e) {
      const delay = jittered(100, 10_000, this.failures);
      this.failures += 1;
      if (this.failures === 1) log('WARN', 'reading the queue failed; retrying with back-off', { error: e.message });
      return delay;
    }
  }

  async read(n) {
    let deliveries;
    try {
      deliveries = await this.readFrom(n);
    } catch (e) {
      if (!isNoGroup(e)) throw e;
      // Created only when Redis says it is missing, by the script that is allowed under OOM.
      await scripts.ensureGroup.run(redis, [keys.stream], [opts.group]);
      if (this.hasRead) log('WARN', 'the consumer group was gone (Redis restarted without persistence?); recreated it');
      else log('INFO', 'created the consumer group', { group: opts.group });
      deliveries = await this.readFrom(n);
    }
    this.hasRead = true;
    return deliveries;
  }

  async readFrom(n) {
    if (Date.now() >= this.nextReclaim) {
      const args = [opts.group, opts.consumer, opts.visibilityTimeoutMs, this.cursor, n];
      const [pending, claimed] = await scripts.claimStale.run(redis, [keys.stream], args, { buffers: true });
      const before = new Map();
      for (const [id, owner, idle, deliveries] of pending ?? []) before.set(id.toString(), [owner.toString(), Number(idle), Number(deliveries)]);
      const [next, entries, deleted] = claimed;
      if (deleted?.length) log('WARN', 'pending entries no longer in the stream were dropped from the group', { ids: deleted.map(String) });
      this.cursor = next.toString();
      if (this.cursor === '0-0') this.nextReclaim = Date.now() + this.reclaimEvery;
      const deliveries = (entries ?? []).map(([id, flat]) => {
        const messageId = id.toString();
        const [owner, idle, count] = before.get(messageId) ?? ['', 0, 0];
        return { messageId, fields: pairsOf(flat), deliveryCount: count + 1, reclaimedFrom: [owner, idle] };
      });
      if (deliveries.length) {
        state.stats.reclaimed += deliveries.length;
        log('INFO', 'took over jobs idle past the visibility timeout', { count: deliveries.length });
        return deliveries;
      }
    }
    const reply = await reader.xreadgroupBuffer('GROUP', opts.group, opts.consumer, 'COUNT', n, 'BLOCK', opts.blockMs, 'STREAMS', keys.stream, '>');
    const entries = reply?.[0]?.[1] ?? [];
    return entries.map(([id, flat]) => ({ messageId: id.toString(), fields: pairsOf(flat), deliveryCount: 1, reclaimedFrom: null }));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// One attempt: decode, open the `process` span that continues the entry's trace, run the handler, settle.

async function runAttempt(delivery) {
  const { messageId, fields } = delivery;
  const decoded = decode(fields);
  const job = decoded.job;
  const attributes = {
    'messaging.system': 'redis',
    'messaging.operation.type': 'process',
    'messaging.operation.name': 'process',
    'messaging.destination.name': opts.queue,
    'messaging.message.id': messageId,
    'messaging.consumer.group.name': opts.group,
    'messaging.client.id': opts.consumer,
    'jobstream.delivery.count': delivery.deliveryCount,
  };
  if (delivery.reclaimedFrom) {
    attributes['jobstream.reclaimed_from'] = delivery.reclaimedFrom[0];
    attributes['jobstream.reclaimed_idle_ms'] = delivery.reclaimedFrom[1];
  }
  if (job) {
    Object.assign(attributes, {
      'jobstream.job.id': job.id,
      'jobstream.job.kind': job.kind,
      'jobstream.job.attempt': job.attempt,
      'jobstream.queue.wait_ms': Math.max(0, Date.now() - job.enqueuedAt),
    });
  }
  // A job marked `trace_mode=link` (scheduled far ahead) is linked whatever the worker's mode.
  const mode = fieldText(fields, 'trace_mode') === 'link' ? 'link' : opts.traceMode;
  const continued = continueTrace(job ? job.trace : rawTraceHeaders(fields), mode);
  const span = tracer.startSpan(`process ${opts.queue}`, { kind: SpanKind.CONSUMER, attributes, links: continued.links }, continued.parent);
  span.setAttribute('jobstream.trace.context', continued.status);
  if (continued.truncated) span.setAttribute('jobstream.trace.context_truncated', continued.truncated);
  if (continued.error) {
    span.setAttribute('jobstream.trace.context_error', continued.error);
    log('WARN', 'trace context not continued; new root trace', { message_id: messageId, error: continued.error });
  }

  const controller = new AbortController();
  const attempt = {
    controller,
    // The handler runs in this context: the span, and the baggage that came with the job.
    context: trace.setSpan(continued.parent, span),
    cancelRequested: false,
    onCancel: null,
    result: undefined,
    /** A cancel of the job: its signal is aborted and the handler abandoned. */
    cancel() {
      this.cancelRequested = true;
      controller.abort();
      this.onCancel?.();
    },
  };
  state.running.set(messageId, attempt);
  let tracked = null;
  try {
    if (job) {
      state.runningJobs.set(job.id, attempt);
      if (records) {
        const sc = span.spanContext();
        tracked = { key: keys.job(job.id), job, messageId, startedMs: Date.now(), traceId: sc.traceId, spanId: sc.spanId };
      }
      const promotedText = job.extra.get('promoted_at');
      const promoted = promotedText !== undefined && /^[0-9]+$/.test(promotedText) ? Number(promotedText) : null;
      if (promoted !== null) span.addEvent('promoted', { 'jobstream.job.promoted_at': promoted });
      const paused = pausedWhileWaiting(promoted ?? job.enqueuedAt);
      if (paused !== null) span.addEvent('queue_paused', { 'jobstream.queue.paused_ms': paused });
    }
    let outcome;
    if (!job) outcome = { type: 'dead', reason: 'undecodable', error: decoded.error };
    else if (delivery.deliveryCount > opts.maxDeliveries) outcome = { type: 'poison', deliveries: delivery.deliveryCount };
    else if (job.deadlineMs !== null && Date.now() >= job.deadlineMs) {
      span.addEvent('expired', { 'jobstream.job.deadline_ms': job.deadlineMs });
      outcome = { type: 'dead', reason: 'expired', error: `deadline ${job.deadlineMs} (unix ms) passed before attempt ${job.attempt} started` };
    } else if (state.cancels.has(job.id)) outcome = { type: 'cancelled', started: false };
    else outcome = await runHandler(job, span, attempt, controller.signal);
    await settle(delivery, outcome, span, tracked, attempt);
  } catch (e) {
    log('ERROR', 'the attempt failed unexpectedly; the entry stays pending', { message_id: messageId, error: e.stack ?? String(e) });
  } finally {
    if (job) state.runningJobs.delete(job.id);
    state.running.delete(messageId);
    span.end();
  }
}

async function runHandler(job, span, attempt, signal) {
  const handler = HANDLERS[job.kind];
  if (!handler) return { type: 'dead', reason: 'unknown_kind', error: `no handler for kind ${JSON.stringify(job.kind)}` };
  const timeoutMs = job.timeoutMs ?? (opts.jobTimeoutMs || null);
  if (timeoutMs) span.setAttribute('jobstream.job.timeout_ms', timeoutMs);
  const view = {
    id: job.id,
    kind: job.kind,
    payload: job.payload,
    attempt: job.attempt,
    enqueuedAt: job.enqueuedAt,
    queue: opts.queue,
    signal,
    setResult(value) {
      const text = JSON.stringify(value);
      if (text === undefined) throw new JobFailure('bad_result', 'the result is not JSON', { permanent: true });
      const size = Buffer.byteLength(text);
      if (size > MAX_PAYLOAD_BYTES) {
        throw new JobFailure('result_too_large', `the result is ${size} bytes; the limit is ${MAX_PAYLOAD_BYTES} (the payload limit)`, { permanent: true });
      }
      attempt.result = text;
    },
    async progress(value) {
      const text = JSON.stringify(value);
      if (text === undefined) throw new JobFailure('bad_progress', 'progress is not JSON');
      const size = Buffer.byteLength(text);
      if (size > MAX_PROGRESS_BYTES) throw new JobFailure('bad_progress', `progress is ${size} bytes; at most ${MAX_PROGRESS_BYTES} are kept`);
      span.addEvent('progress', { 'jobstream.job.progress': text });
      if (records) await exec(redis.multi().hset(keys.job(job.id), 'progress', text).pexpire(keys.job(job.id), opts.jobRetentionMs));
    },
  };
  const running = context.with(attempt.context, () =>
    Promise.resolve().then(() => handler(view, { tracer, redis, keys })),
  );
  const races = [running.then(() => ({ ok: true }), (error) => ({ error }))];
  let timer;
  if (timeoutMs) races.push(new Promise((resolve) => (timer = setTimeout(() => resolve({ timedOut: true }), timeoutMs))));
  races.push(new Promise((resolve) => (attempt.onCancel = () => resolve({ cancelled: true }))));
  const result = await Promise.race(races);
  clearTimeout(timer);
  attempt.onCancel = null;
  if (result.ok) return { type: 'succeeded' };
  // Cancelled: the handler was abandoned, or it saw the signal and failed first.
  if (attempt.cancelRequested || result.cancelled) return { type: 'cancelled', started: true };
  const failed = (errorType, message, permanent = false) => ({ type: 'failed', failure: { errorType, message, permanent }, kind: job.kind, attempt: job.attempt });
  if (result.timedOut) {
    // Signal the handler's own work to stop, and abandon it.
    attempt.controller.abort();
    span.addEvent('timed_out', { 'jobstream.job.timeout_ms': timeoutMs });
    return failed('timeout', `the handler ran past its timeout of ${durationText(timeoutMs)}`);
  }
  const { error } = result;
  if (error instanceof JobFailure) return failed(error.errorType, error.message, error.permanent);
  // Anything else thrown is a crash of the handler: it fails its job, never the worker.
  span.recordException(error instanceof Error ? error : String(error));
  const message = error instanceof Error ? error.message : String(error);
  log('ERROR', 'handler crashed', { job_id: job.id, error: error?.stack ?? message });
  return failed('panic', `handler panicked: ${message}`);
}

// ---------------------------------------------------------------------------------------------------------------
// Settling: what becomes of the entry (decided without Redis), then done with one script or XACK.

function delayAfter(attempt) {
  return jittered(opts.retryBaseDelayMs, opts.retryMaxDelayMs, attempt - 1);
}

function decide(outcome) {
  switch (outcome.type) {
    case 'succeeded':
    case 'cancelled':
      return { type: 'ack' };
    case 'failed': {
      const { failure, attempt } = outcome;
      const max = opts.maxAttempts;
      let reason;
      if (failure.permanent) reason = 'permanent_failure';
      else if (attempt >= max) reason = 'max_attempts';
      else return { type: 'retry', delayMs: delayAfter(attempt), nextAttempt: attempt + 1 };
      return { type: 'dead', reason, error: `attempt ${attempt} of ${max}: ${failure.errorType}: ${failure.message}` };
    }
    case 'poison':
      return {
        type: 'dead',
        reason: 'poison',
        error: `delivered ${outcome.deliveries} times without an outcome (limit ${opts.maxDeliveries}); it may crash its workers`,
      };
    default:
      return { type: 'dead', reason: outcome.reason, error: outcome.error };
  }
}

/** The job's records after `outcome`: the final record of a done or cancelled job, else the per-job hash's update. */
function recordUpdate(tracked, outcome, decision, attempt) {
  const now = Date.now();
  const { job } = tracked;
  let ran = null;
  if (outcome.type === 'succeeded') ran = { outcome: 'done' };
  else if (outcome.type === 'failed') {
    const { errorType, message } = outcome.failure;
    ran = { outcome: errorType === 'timeout' ? 'timeout' : 'failed', error: `${errorType}: ${message}` };
  } else if (outcome.type === 'cancelled' && outcome.started) ran = { outcome: 'cancelled' };
  const attemptRecord = ran && {
    n: job.attempt,
    consumer: opts.consumer,
    started_at: tracked.startedMs,
    ended_at: now,
    outcome: ran.outcome,
    ...(ran.error === undefined ? {} : { error: ran.error }),
    trace_id: tracked.traceId,
    span_id: tracked.spanId,
  };
  const traceparent = job.trace.traceparent;
  if (decision.type === 'ack') {
    const finishedState = outcome.type === 'cancelled' ? 'cancelled' : 'done';
    const finished = {
      state: finishedState,
      kind: job.kind,
      enqueued_at: job.enqueuedAt,
      ...(traceparent === undefined ? {} : { traceparent }),
      msg: tracked.messageId,
      finished_at: now,
      ...(attemptRecord ? { attempt: attemptRecord } : {}),
    };
    let json = JSON.stringify(finished);
    if (finishedState === 'done' && attempt.result !== undefined) json = `${json.slice(0, -1)},"result":${attempt.result}}`;
    const hour = Math.floor(now / HOUR_MS);
    return { finished: { key: keys.finished(hour), jobId: job.id, json, expireAt: (hour + 1) * HOUR_MS + opts.jobRetentionMs } };
  }
  const dead = decision.type === 'dead';
  const fields = ['state', dead ? (decision.reason === 'expired' ? 'expired' : 'dead') : 'delayed', 'kind', job.kind, 'enqueued_at', String(job.enqueuedAt)];
  if (traceparent !== undefined) fields.push('traceparent', traceparent);
  if (attemptRecord) fields.push('attempts', String(job.attempt), `a:${job.attempt}`, JSON.stringify(attemptRecord));
  if (dead) fields.push('reason', decision.reason, 'error', decision.error, 'finished_at', String(now));
  else fields.push('run_at', String(now + decision.delayMs));
  return { hash: { key: tracked.key, json: JSON.stringify(fields), ttlMs: dead ? opts.jobRetentionMs : 0 } };
}

function recordError(span, errorType, message) {
  span.setAttribute('error.type', errorType);
  span.setStatus({ code: SpanStatusCode.ERROR, message });
}

function settleEvent(span, decision) {
  if (decision.type === 'ack') span.addEvent('settle', { 'jobstream.settle.outcome': 'ack' });
  else if (decision.type === 'dead') span.addEvent('settle', { 'jobstream.settle.outcome': 'dead' });
  else {
    span.addEvent('settle', {
      'jobstream.settle.outcome': 'retry',
      'jobstream.retry.delay_ms': decision.delayMs,
      'jobstream.retry.next_attempt': decision.nextAttempt,
    });
  }
}

function countSettled() {
  state.settled += 1;
  if (opts.count && state.settled >= opts.count) wake();
}

async function settle(delivery, outcome, span, tracked, attempt) {
  const decision = decide(outcome);
  const record = tracked ? recordUpdate(tracked, outcome, decision, attempt) : {};
  const { messageId } = delivery;
  if (outcome.type === 'failed') {
    state.stats.failed += 1;
    recordError(span, outcome.failure.errorType, outcome.failure.message);
  } else if (outcome.type === 'cancelled') {
    span.addEvent('cancelled', { 'jobstream.cancel.started': outcome.started });
    log('INFO', 'job cancelled', { message_id: messageId, started: outcome.started });
  } else if (decision.type === 'dead') {
    recordError(span, decision.reason, decision.error);
  }
  if (decision.type === 'ack') {
    settleEvent(span, decision);
    if (await acknowledge(messageId, record.finished)) {
      state.stats.acknowledged += 1;
      countSettled();
    }
    return;
  }
  const move = decision.type === 'retry' ? () => scheduleRetry(delivery, decision, record.hash) : () => deadLetter(delivery, decision, record.hash);
  let moved;
  let lastError;
  // Each move is all or nothing: an error means nothing was written and the entry is still pending.
  for (const pauseMs of [0, 50, 200]) {
    if (pauseMs) await sleep(pauseMs);
    try {
      moved = await move();
      break;
    } catch (e) {
      lastError = e;
    }
  }
  if (moved === 1) {
    settleEvent(span, decision);
    if (decision.type === 'retry') {
      state.stats.retried += 1;
      const error = outcome.type === 'failed' ? `${outcome.failure.errorType}: ${outcome.failure.message}` : undefined;
      log('INFO', 'job failed; retry scheduled', { message_id: messageId, error, delay_ms: decision.delayMs });
    } else {
      state.stats.dead += 1;
      log('WARN', 'job dead-lettered', { message_id: messageId, reason: decision.reason, error: decision.error });
    }
    countSettled();
  } else if (moved === 0) {
    log('WARN', 'the entry is no longer pending for this consumer (taken over, or already settled); its new owner settles it, nothing was written', {
      message_id: messageId,
      consumer: opts.consumer,
    });
  } else {
    log('ERROR', 'settling failed and nothing was written: the entry stays pending and is delivered again after the visibility timeout', {
      message_id: messageId,
      error: lastError?.message,
    });
  }
}

/** XACK, with the job's final record in the same round trip (its errors ignored); retried with back-off. */
async function acknowledge(messageId, finished) {
  for (let failures = 0; ; failures++) {
    try {
      const pipe = redis.pipeline().xack(keys.stream, opts.group, messageId);
      if (finished) pipe.hset(finished.key, finished.jobId, finished.json).pexpireat(finished.key, finished.expireAt);
      const replies = await pipe.exec();
      if (replies[0][0]) throw replies[0][0];
      if (replies[0][1] === 0) {
        // Taken over while this worker stalled, and settled by its new owner: their record wins at lookup.
        log('WARN', 'the entry was no longer pending for this consumer: its new owner settles it', { message_id: messageId });
      }
      return true;
    } catch (e) {
      if (failures === 0) log('WARN', 'XACK failed; retrying with back-off', { message_id: messageId, error: e.message });
      if (failures >= 10) {
        log('ERROR', 'gave up acknowledging; the job stays pending and will be redelivered', { message_id: messageId });
        return false;
      }
      await sleep(jittered(50, 5000, failures));
    }
  }
}

/** The settle script's record arguments: KEYS[3] and ARGV[5], ARGV[6] ('' and 0 without a record). */
const recordArgs = (hash) => (hash ? [[hash.key], [hash.json, hash.ttlMs]] : [[], ['', 0]]);

/** Puts the job's next attempt in the delayed set and acknowledges this one (lua/settle.lua, move `retry`). */
async function scheduleRetry(delivery, decision, hash) {
  // The member: the entry's fields with `attempt` incremented and `promoted_at` dropped, sorted by name (then
  // value) byte for byte, as a JSON array of strings — exactly what the Rust worker writes.
  const fields = delivery.fields
    .filter(([name]) => !name.equals(Buffer.from('attempt')) && !name.equals(Buffer.from('promoted_at')))
    .map(([name, value]) => [name, value]);
  fields.push([Buffer.from('attempt'), Buffer.from(String(decision.nextAttempt))]);
  fields.sort(([n1, v1], [n2, v2]) => Buffer.compare(n1, n2) || Buffer.compare(v1, v2));
  const member = JSON.stringify(fields.flatMap(([name, value]) => [name.toString('utf8'), value.toString('utf8')]));
  const due = Date.now() + decision.delayMs;
  const [recordKey, recordArgv] = recordArgs(hash);
  const args = [opts.group, opts.consumer, delivery.messageId, 'retry', ...recordArgv, due, member];
  return scripts.settle.run(redis, [keys.stream, keys.delayed, ...recordKey], args);
}

/** Moves the entry to the dead stream, every field byte for byte plus the `dead.*` ones (lua/settle.lua, `dead`). */
async function deadLetter(delivery, decision, hash) {
  const [recordKey, recordArgv] = recordArgs(hash);
  const args = [opts.group, opts.consumer, delivery.messageId, 'dead', ...recordArgv, opts.deadMaxlen, MAX_SCRIPT_VALUES, 12];
  for (const [name, value] of delivery.fields) {
    if (!name.subarray(0, DEAD_PREFIX.length).equals(DEAD_PREFIX)) args.push(name, value);
  }
  args.push(
    'dead.reason', decision.reason,
    'dead.error', decision.error,
    'dead.source_id', delivery.messageId,
    'dead.deliveries', String(delivery.deliveryCount),
    'dead.consumer', opts.consumer,
    'dead.at', String(Date.now()),
  );
  return scripts.settle.run(redis, [keys.stream, keys.dead, ...recordKey], args);
}

// ---------------------------------------------------------------------------------------------------------------
// Background duties: promotion of due jobs, claim renewal.

async function promoteDue(signal) {
  let failures = 0;
  while (!signal.aborted) {
    if (state.paused !== false) {
      await nap(PROMOTE_EVERY_MS, signal);
      continue;
    }
    let pause = PROMOTE_EVERY_MS;
    try {
      const total = { moved: 0, dead: 0, stuck: 0, cancelled: 0 };
      for (;;) {
        const args = [Date.now(), PROMOTE_BATCH, opts.deadMaxlen, MAX_SCRIPT_VALUES, opts.consumer, records ? keys.jobPrefix : ''];
        const [moved, dead, stuck, cancelled] = await scripts.promoteDue.run(redis, [keys.delayed, keys.stream, keys.dead], args);
        total.moved += moved;
        total.dead += dead;
        total.stuck += stuck;
        total.cancelled += cancelled;
        if (moved + dead + stuck + cancelled < PROMOTE_BATCH || moved + dead + cancelled === 0) break;
      }
      if (total.cancelled) log('INFO', 'due jobs that were cancelled dropped, not run', { cancelled: total.cancelled });
      if (total.stuck) log('ERROR', "delayed members that cannot become an entry stay in the delayed set: the dead stream's key holds another type", { stuck: total.stuck });
      if (total.dead) log('WARN', 'delayed members that cannot become an entry were moved to the dead stream (reason undecodable)', { dead_lettered: total.dead });
      failures = 0;
    } catch (e) {
      if (failures === 0) log('WARN', 'moving due retries failed; retrying with back-off', { error: e.message });
      pause = jittered(PROMOTE_EVERY_MS, 10_000, failures);
      failures += 1;
    }
    await nap(pause, signal);
  }
}

async function renewClaims(signal) {
  while (!signal.aborted) {
    await nap(opts.visibilityTimeoutMs / 3, signal);
    const ids = [...state.running.keys()];
    if (signal.aborted || ids.length === 0) continue;
    try {
      const lost = await scripts.renewClaims.run(redis, [keys.stream], [opts.group, opts.consumer, ...ids]);
      if (lost.length) log('WARN', 'jobs still running here were taken over by another consumer; they may run twice', { lost });
    } catch (e) {
      log('WARN', 'renewing claims failed; will try again', { error: e.message, jobs: ids.length });
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The read loop, and shutdown.

let wakeUp = () => {};
let woken = new Promise((resolve) => (wakeUp = resolve));
/** Wakes the read loop (a job settled, a signal came). */
function wake() {
  wakeUp();
  woken = new Promise((resolve) => (wakeUp = resolve));
}

async function main() {
  for (const sig of ['SIGTERM', 'SIGINT']) {
    process.on(sig, () => {
      if (!state.stopping) log('INFO', `${sig}: stopping; running jobs finish first`, { running: state.running.size });
      state.stopping = true;
      wake();
    });
  }
  // The partition record, then the scripts; tried again with back-off while Redis cannot be reached.
  for (let failures = 0; ; failures++) {
    try {
      await checkPartitions(redis, keys);
      await Promise.all(Object.values(scripts).map((s) => s.load(redis)));
      break;
    } catch (e) {
      if (e.refused) throw e;
      if (failures === 0) log('WARN', 'Redis not ready; trying again with back-off', { error: e.message });
      await Promise.race([woken, sleep(jittered(100, 10_000, failures))]);
      if (state.stopping) {
        await provider.shutdown();
        process.exit(0);
      }
    }
  }
  const maintenance = new AbortController();
  const duties = [watchControl(maintenance.signal), promoteDue(maintenance.signal), renewClaims(maintenance.signal)];
  log('INFO', 'worker started', { queue: opts.queue, group: opts.group, consumer: opts.consumer, concurrency: opts.concurrency, kinds: Object.keys(HANDLERS) });

  const inflight = new Set();
  const reading = new Reader();
  while (!state.stopping && !(opts.count && state.settled >= opts.count)) {
    const budget = opts.count ? opts.count - state.settled - inflight.size : Infinity;
    const n = Math.min(opts.concurrency - inflight.size, MAX_READ, budget);
    // Until the pause flag was read once, and while the queue is paused, nothing new is read.
    if (n <= 0 || state.paused !== false) {
      await Promise.race([woken, sleep(state.paused === false ? 1000 : 50)]);
      continue;
    }
    const got = await reading.next(n);
    if (typeof got === 'number') {
      await Promise.race([woken, sleep(got)]);
      continue;
    }
    for (const delivery of got) {
      const run = runAttempt(delivery).finally(() => {
        inflight.delete(run);
        wake();
      });
      inflight.add(run);
    }
  }

  if (inflight.size) log('INFO', 'draining running jobs', { running: inflight.size, grace_ms: opts.shutdownGraceMs });
  let graceTimer;
  const graceOver = new Promise((resolve) => (graceTimer = setTimeout(() => resolve(false), opts.shutdownGraceMs)));
  const drained = await Promise.race([Promise.allSettled([...inflight]).then(() => true), graceOver]);
  clearTimeout(graceTimer);
  if (!drained) log('WARN', 'grace period over; unfinished jobs stay pending for another worker', { unfinished: inflight.size });
  maintenance.abort();
  await Promise.allSettled(duties);
  await provider.shutdown(); // flushes the batch of spans
  redis.disconnect();
  reader.disconnect();
  const { acknowledged, retried, dead } = state.stats;
  log('INFO', `settled ${state.settled} jobs (acknowledged ${acknowledged}, retried ${retried}, dead-lettered ${dead})`);
  process.exit(0);
}

main().catch(async (e) => {
  process.stderr.write(`error: ${e.message}\n`);
  await provider.shutdown().catch(() => {});
  process.exit(1);
});
