// What the Node worker and producer share: their command lines, the queue's key names (docs/wire-format.md,
// "Keys"), job ids, the partition record check, and enqueueing a job. Plain Node and the OpenTelemetry API: no
// jobstream code.

import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

import { context, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';

/** Queue names and job kinds, as the wire format allows them. */
export const QUEUE_NAME = /^[A-Za-z0-9._:-]{1,128}$/;
export const KIND_NAME = /^[A-Za-z0-9._:-]{1,64}$/;
/** The largest payload, in bytes (the Rust side's default --max-payload-bytes). */
export const MAX_PAYLOAD_BYTES = 1024 * 1024;

/**
 * Parses the command line against `spec` ({name: {type, default, parse, required, help}}): each flag `--name`
 * falls back to the environment variable `JOBSTREAM_<NAME>` (upper case, `-` as `_`), then to its default.
 * Bad usage prints one `error:` line and exits 2; --help prints `usage` and the flags.
 */
export function parseOptions(usage, spec) {
  const options = { help: { type: 'boolean', short: 'h' } };
  for (const [name, o] of Object.entries(spec)) options[name] = { type: o.type === 'boolean' ? 'boolean' : 'string' };
  let values;
  try {
    ({ values } = parseArgs({ options, strict: true, allowPositionals: false }));
  } catch (e) {
    usageError(e.message);
  }
  if (values.help) {
    const lines = Object.entries(spec).map(([name, o]) => {
      const shown = o.type === 'boolean' ? `--${name}` : `--${name} ${o.meta ?? 'VALUE'}`;
      const dflt = o.default === undefined || o.type === 'boolean' ? '' : ` [default: ${o.default}]`;
      return `  ${shown.padEnd(30)} ${o.help ?? ''}${dflt}`;
    });
    process.stdout.write(`${usage}\n\nOptions (each also read from JOBSTREAM_<NAME>):\n${lines.join('\n')}\n`);
    process.exit(0);
  }
  const out = {};
  for (const [name, o] of Object.entries(spec)) {
    const key = name.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    const fromEnv = process.env[`JOBSTREAM_${name.toUpperCase().replaceAll('-', '_')}`];
    let raw = values[name];
    if (raw === undefined && fromEnv !== undefined && fromEnv !== '') {
      raw = o.type === 'boolean' ? ['1', 'true', 'yes', 'on'].includes(fromEnv.toLowerCase()) : fromEnv;
    }
    if (raw === undefined) raw = o.default;
    if (raw === undefined) {
      if (o.required) usageError(`--${name} is required`);
      continue;
    }
    try {
      out[key] = o.parse ? o.parse(raw) : raw;
    } catch (e) {
      usageError(`--${name}: ${e.message}`);
    }
  }
  return out;
}

function usageError(message) {
  process.stderr.write(`error: ${message} (see --help)\n`);
  process.exit(2);
}

/** A parser of whole numbers from `min` to `max`. */
export function integer(min, max = Number.MAX_SAFE_INTEGER) {
  return (text) => {
    const s = String(text);
    if (!/^\d+$/.test(s)) throw new Error(`${JSON.stringify(s)} is not a whole number`);
    const n = Number(s);
    if (n < min || n > max) throw new Error(`${n} is not within ${min}..${max}`);
    return n;
  };
}

/** A parser of numbers from `min` to `max` (fractions allowed). */
export function number(min, max) {
  return (text) => {
    const n = Number(text);
    if (String(text).trim() === '' || !Number.isFinite(n) || n < min || n > max) {
      throw new Error(`${JSON.stringify(String(text))} is not a number within ${min}..${max}`);
    }
    return n;
  };
}

/** A parser that checks text against a pattern. */
export function matching(pattern, what) {
  return (text) => {
    if (!pattern.test(text)) throw new Error(`${JSON.stringify(text)} is not ${what}`);
    return text;
  };
}

/** The Redis keys of queue `queue` under `prefix` (docs/wire-format.md, "Keys"). */
export function queueKeys(prefix, queue) {
  const base = `${prefix}:{${queue}}`;
  return {
    queue,
    stream: base,
    dead: `${base}:dead`,
    delayed: `${base}:delayed`,
    partitions: `${base}:partitions`,
    paused: `${base}:paused`,
    cancels: `${base}:cancels`,
    done: `${base}:done`,
    result: (jobId) => `${base}:result:${jobId}`,
    jobPrefix: `${base}:job:`,
    job: (jobId) => `${base}:job:${jobId}`,
    finished: (hour) => `${base}:finished:${hour}`,
  };
}

/** A UUIDv7 (RFC 9562): 48 bits of unix ms, then version 7, variant 10 and random bits. */
export function uuidv7(nowMs = Date.now()) {
  const b = randomBytes(16);
  b.writeUIntBE(nowMs, 0, 6);
  b[6] = 0x70 | (b[6] & 0x0f);
  b[8] = 0x80 | (b[8] & 0x3f);
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * Records the queue as unpartitioned (`SET <prefix>:{Q}:partitions 1 NX`) unless a count is recorded, and
 * refuses a queue recorded with another count: its jobs are on the partitions `Q:0` … `Q:<n-1>`, which are
 * queues of their own (run one process per partition with `--queue Q:<i>`).
 */
export async function checkPartitions(redis, keys) {
  const recorded = await redis.set(keys.partitions, '1', 'NX', 'GET');
  if (recorded !== null && recorded !== '1') {
    throw Object.assign(new Error(
      `queue ${keys.queue} has ${recorded} partition(s) recorded in Redis (${keys.partitions}); this example ` +
        `serves one unpartitioned queue: give it a partition's own name (--queue ${keys.queue}:<i>)`,
    ), { refused: true });
  }
}

/**
 * Enqueues one job of `kind` with `payload` (JSON text) on the queue of `keys`: one XADD with the wire format's
 * fields and the W3C context of a PRODUCER span `send <Q>`, injected by the standard propagator. The span is a
 * child of the active context: a root in a producer run, the `process` span in a worker's handler (a follow-up
 * job then continues the trace). Returns `{ jobId, traceId, messageId }`; a Redis error is thrown, recorded on the
 * span (`error.type` redis).
 */
export async function enqueue(redis, tracer, keys, kind, payload) {
  const jobId = uuidv7();
  const span = tracer.startSpan(`send ${keys.queue}`, {
    kind: SpanKind.PRODUCER,
    attributes: {
      'messaging.system': 'redis',
      'messaging.operation.type': 'send',
      'messaging.operation.name': 'send',
      'messaging.destination.name': keys.queue,
      'jobstream.job.id': jobId,
      'jobstream.job.kind': kind,
      'jobstream.job.attempt': 1,
    },
  });
  try {
    const fields = { v: '1', id: jobId, kind, payload, enqueued_at: String(Date.now()), attempt: '1' };
    // Adds traceparent (and tracestate, baggage when there are any): the field names are the header names.
    propagation.inject(trace.setSpan(context.active(), span), fields);
    const messageId = await redis.xadd(keys.stream, '*', ...Object.entries(fields).flat());
    span.setAttribute('messaging.message.id', messageId);
    return { jobId, traceId: span.spanContext().traceId, messageId };
  } catch (e) {
    span.setAttribute('error.type', 'redis');
    span.setStatus({ code: SpanStatusCode.ERROR, message: e.message });
    throw e;
  } finally {
    span.end();
  }
}
