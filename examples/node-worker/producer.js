#!/usr/bin/env node
// Enqueues jobstream jobs from Node.js: XADD with the wire format's fields and the W3C context of a PRODUCER span
// `send <Q>`, injected by the standard OpenTelemetry propagator. A Rust `consumer` (or worker.js) continues the
// trace.
//
//     REDIS_URL=redis://127.0.0.1:6379 OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 \
//         node producer.js --queue jobs --kind demo --payload '{"n":1}' --count 3
//
// Prints one line per job: `<job id> <trace id>`, like `producer enqueue`. Job ids are UUIDv7.

import { trace } from '@opentelemetry/api';
import Redis from 'ioredis';

import { checkPartitions, enqueue, integer, KIND_NAME, matching, MAX_PAYLOAD_BYTES, parseOptions, QUEUE_NAME, queueKeys } from './common.js';
import { initTracing } from './telemetry.js';

const opts = parseOptions('usage: node producer.js --queue Q --kind K [--payload JSON] [--count N]', {
  queue: { default: 'jobs', parse: matching(QUEUE_NAME, 'a queue name (1-128 of A-Z a-z 0-9 . _ : -)'), help: 'queue to enqueue on' },
  prefix: { default: 'jobstream', help: 'prefix of every Redis key' },
  kind: { required: true, parse: matching(KIND_NAME, 'a job kind (1-64 of A-Z a-z 0-9 . _ : -)'), help: "the jobs' kind" },
  payload: {
    default: '{}',
    parse: (text) => {
      JSON.parse(text); // the wire format wants JSON text
      if (Buffer.byteLength(text) > MAX_PAYLOAD_BYTES) throw new Error(`the payload is over ${MAX_PAYLOAD_BYTES} bytes`);
      return text;
    },
    help: "the jobs' data, as JSON",
  },
  count: { default: '1', parse: integer(1, 1_000_000), help: 'how many jobs to enqueue' },
});

const provider = initTracing('jobstream-node-producer');
const tracer = trace.getTracer('jobstream-node-producer');
const redisUrl = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
// Fails fast: a producer run is one command, not a service.
const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: (times) => (times > 3 ? null : 100 * times) });
let lastRedisError = '';
redis.on('error', (e) => (lastRedisError = e.message));
const keys = queueKeys(opts.prefix, opts.queue);

async function main() {
  await redis.connect();
  await checkPartitions(redis, keys);
  for (let i = 0; i < opts.count; i++) {
    const { jobId, traceId } = await enqueue(redis, tracer, keys, opts.kind, opts.payload);
    process.stdout.write(`${jobId} ${traceId}\n`);
  }
}

try {
  await main();
} catch (e) {
  const cause = lastRedisError && !e.message.includes(lastRedisError) ? ` (${lastRedisError})` : '';
  process.stderr.write(`error: ${e.message}${cause}\n`);
  process.exitCode = 1;
} finally {
  await provider.shutdown(); // flushes the batch of spans
  redis.disconnect();
}
