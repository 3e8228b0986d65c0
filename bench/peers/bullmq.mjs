#!/usr/bin/env node
// BullMQ peer benchmark for `bench/run --peers`: the protocol of jobstream's `producer load --wait` end-to-end
// run, with BullMQ as the queue. Two roles, two processes (so each one's CPU can be measured, like jobstream's
// consumer and producer):
//
//   node bullmq.mjs worker --redis-url URL [--queue NAME] [--concurrency C] [--tracing on|off] [--ready-file PATH]
//       One `Worker` with a no-op processor until SIGTERM (or SIGINT); then closes the worker, flushes its spans and
//       exits 0. Prints nothing on stdout; "ready" and a summary go to stderr.
//   node bullmq.mjs load --redis-url URL [--queue NAME] [--jobs N] [--batch B] [--in-flight F] [--tracing on|off]
//                         [--timeout SECONDS]
//       Enqueues N no-op jobs with `queue.addBulk` (B per call, F calls in flight), waits until every one has
//       finished, and prints ONE JSON line on stdout:
//       {"system":"bullmq","tracing":BOOL,"jobs":N,"done":D,"seconds":S,"rate":D/S}
//       The clock starts at the first enqueue and stops at the last completion. Exit 1 on timeout or error (the
//       JSON line is still printed on timeout, with the jobs done so far).
//
// --redis-url defaults to $REDIS_URL (there is no built-in default: a benchmark never guesses a Redis).
// With --tracing on: 100 % sampling, a BatchSpanProcessor (OTEL_BSP_* variables apply) and an OTLP http/protobuf
// exporter to $OTEL_EXPORTER_OTLP_ENDPOINT (base URL; /v1/traces is appended), with bullmq-otel as the
// `telemetry` of the Queue and the Worker. Service name: $OTEL_SERVICE_NAME, else bench-bullmq-<role>.
// With --tracing off no telemetry is given to BullMQ at all (no tracer, no context propagation).

import { writeFileSync } from 'node:fs';
import { Queue, Worker } from 'bullmq';

const USAGE = `usage: node bullmq.mjs worker|load [--redis-url URL] [--queue NAME] [--tracing on|off]
  worker: [--concurrency C (100)] [--ready-file PATH]
  load:   [--jobs N (10000)] [--batch B (100)] [--in-flight F (4)] [--timeout SECONDS (600)]`;

// How often `load` looks at the queue's counts while waiting for the jobs to finish.
const POLL_MS = 50;

function fail(message) {
  process.stderr.write(`bullmq.mjs: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const role = argv[0];
  if (role !== 'worker' && role !== 'load') fail(`the first argument is the role, worker or load\n${USAGE}`);
  const opts = {
    role,
    redisUrl: process.env.REDIS_URL,
    queue: 'bench',
    tracing: false,
    concurrency: 100,
    readyFile: undefined,
    jobs: 10_000,
    batch: 100,
    inFlight: 4,
    timeout: 600,
  };
  const positive = (name, text) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1) fail(`${name} must be a positive integer, not ${JSON.stringify(text)}`);
    return n;
  };
  for (let i = 1; i < argv.length; i++) {
    let [flag, value] = argv[i].split(/=(.*)/s, 2);
    const take = () => {
      if (value === undefined) {
        if (i + 1 >= argv.length) fail(`${flag} needs a value`);
        value = argv[++i];
      }
      return value;
    };
    switch (flag) {
      case '--redis-url': opts.redisUrl = take(); break;
      case '--queue': opts.queue = take(); break;
      case '--tracing': {
        const v = take();
        if (v !== 'on' && v !== 'off') fail(`--tracing is on or off, not ${JSON.stringify(v)}`);
        opts.tracing = v === 'on';
        break;
      }
      case '--concurrency': opts.concurrency = positive(flag, take()); break;
      case '--ready-file': opts.readyFile = take(); break;
      case '--jobs': opts.jobs = positive(flag, take()); break;
      case '--batch': opts.batch = positive(flag, take()); break;
      case '--in-flight': opts.inFlight = positive(flag, take()); break;
      case '--timeout': opts.timeout = positive(flag, take()); break;
      case '-h': case '--help': process.stderr.write(`${USAGE}\n`); process.exit(0); break;
      default: fail(`unknown argument ${JSON.stringify(argv[i])}\n${USAGE}`);
    }
  }
  if (!opts.redisUrl) fail('give --redis-url or set REDIS_URL');
  return opts;
}

// An exporter that runs at most `limit` exports at once and queues the others. While running, the
// BatchSpanProcessor exports one batch at a time; but on shutdown it hands the exporter every buffered batch at
// once, and the OTLP exporter refuses more than 30 concurrent exports ("Concurrent export limit reached"), so a
// backlog of over 30 x 512 spans at exit would be lost and the shutdown would fail.
function queuedExporter(inner, limit) {
  const waiting = [];
  let active = 0;
  const pump = () => {
    while (active < limit && waiting.length > 0) {
      const [spans, done] = waiting.shift();
      active++;
      inner.export(spans, (result) => {
        active--;
        done(result);
        pump();
      });
    }
  };
  return {
    export(spans, done) {
      waiting.push([spans, done]);
      pump();
    },
    forceFlush: () => (inner.forceFlush ? inner.forceFlush() : Promise.resolve()),
    shutdown: () => inner.shutdown(),
  };
}

// The OpenTelemetry SDK, loaded only with --tracing on so that a run with tracing off pays nothing for it.
// Returns the BullMQ telemetry object and a function that flushes and shuts the provider down.
async function startTracing(role) {
  const { diag, DiagLogLevel } = await import('@opentelemetry/api');
  const { NodeTracerProvider, BatchSpanProcessor, AlwaysOnSampler } = await import('@opentelemetry/sdk-trace-node');
  const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-proto');
  const { resourceFromAttributes, detectResources, envDetector } = await import('@opentelemetry/resources');
  const { BullMQOtel } = await import('bullmq-otel');

  // Warnings (e.g. "Dropped N spans because maxQueueSize reached", export failures) to stderr, never stdout.
  diag.setLogger({
    error: (...a) => process.stderr.write(`otel error: ${a.join(' ')}\n`),
    warn: (...a) => process.stderr.write(`otel warn: ${a.join(' ')}\n`),
    info: () => {}, debug: () => {}, verbose: () => {},
  }, DiagLogLevel.WARN);

  if (!process.env.OTEL_EXPORTER_OTLP_ENDPOINT && !process.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) {
    process.stderr.write('bullmq.mjs: OTEL_EXPORTER_OTLP_ENDPOINT is not set; exporting to the default http://localhost:4318\n');
  }
  // Counts the spans that ended in this process (what the exporter was given), for the summary on stderr.
  let ended = 0;
  // The SDK's default queue (2048 spans) overflows in a worker at concurrency 256 (a smoke run of 5,000 jobs lost
  // two thirds of the worker's spans): unless OTEL_BSP_MAX_QUEUE_SIZE says otherwise, buffer as many spans as
  // bench/run lets jobstream's load generator buffer, so that 100 % sampling means every span is exported.
  const bspConfig = process.env.OTEL_BSP_MAX_QUEUE_SIZE ? {} : { maxQueueSize: 262_144 };
  const batch = new BatchSpanProcessor(queuedExporter(new OTLPTraceExporter(), 4), bspConfig);
  const counting = {
    onStart: (span, ctx) => batch.onStart(span, ctx),
    onEnd: (span) => { ended++; batch.onEnd(span); },
    forceFlush: () => batch.forceFlush(),
    shutdown: () => batch.shutdown(),
  };
  const resource = resourceFromAttributes({ 'service.name': `bench-bullmq-${role}` })
    .merge(detectResources({ detectors: [envDetector] }));
  const provider = new NodeTracerProvider({ resource, sampler: new AlwaysOnSampler(), spanProcessors: [counting] });
  provider.register();
  const telemetry = new BullMQOtel({ tracerName: 'bullmq-bench' });
  const shutdown = async () => {
    await provider.shutdown();
    return ended;
  };
  return { telemetry, shutdown };
}

async function runWorker(opts) {
  const tracing = opts.tracing ? await startTracing('worker') : undefined;
  let completed = 0;
  let failed = 0;
  const worker = new Worker(opts.queue, async () => {}, {
    connection: { url: opts.redisUrl },
    concurrency: opts.concurrency,
    telemetry: tracing?.telemetry,
  });
  worker.on('completed', () => { completed++; });
  worker.on('failed', (_job, err) => {
    if (failed++ === 0) process.stderr.write(`bullmq.mjs worker: a job failed: ${err?.message}\n`);
  });
  worker.on('error', (err) => process.stderr.write(`bullmq.mjs worker: ${err?.message ?? err}\n`));

  let stopping = false;
  const stop = async (signal) => {
    if (stopping) return;
    stopping = true;
    try {
      await worker.close();
      const spans = tracing ? await tracing.shutdown() : 0;
      process.stderr.write(`bullmq.mjs worker: ${signal}: ${completed} completed, ${failed} failed` +
        (tracing ? `, ${spans} spans ended` : '') + '\n');
      process.exit(0);
    } catch (err) {
      process.stderr.write(`bullmq.mjs worker: stopping: ${err?.stack ?? err}\n`);
      process.exit(1);
    }
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  await worker.waitUntilReady();
  if (opts.readyFile) writeFileSync(opts.readyFile, `${process.pid}\n`);
  process.stderr.write(`bullmq.mjs worker: ready (queue ${opts.queue}, concurrency ${opts.concurrency}, tracing ${opts.tracing ? 'on' : 'off'})\n`);
}

// Wall-clock milliseconds of the newest `completed` event in the queue's event stream: the stream entry's id is
// `<ms>-<seq>`, stamped by Redis when the worker's moveToFinished script ran, i.e. when the last job completed.
async function lastCompletionMs(queue) {
  // The Redis backend's raw ioredis client (BullMQ 6 has no Queue.client; the backend's is its escape hatch).
  const client = await queue.getBackend().client;
  const entries = await client.xrevrange(queue.keys.events, '+', '-', 'COUNT', 1000);
  for (const [id, fields] of entries) {
    for (let i = 0; i + 1 < fields.length; i += 2) {
      if (fields[i] === 'event' && fields[i + 1] === 'completed') return Number(id.split('-')[0]);
    }
  }
  return undefined;
}

async function runLoad(opts) {
  const tracing = opts.tracing ? await startTracing('load') : undefined;
  const queue = new Queue(opts.queue, {
    connection: { url: opts.redisUrl },
    telemetry: tracing?.telemetry,
    // No-op jobs whose results nobody reads: delete a job when it completes (jobstream keeps no per-job state after
    // the ack once the status record expires; BullMQ's default keeps every completed job). Failed jobs are kept
    // (removeOnFail false, BullMQ's default, set explicitly): a no-op never fails, so this costs nothing, and it lets
    // `done` be exact (jobs - failed), as jobstream's dead-letter count does.
    defaultJobOptions: { removeOnComplete: true, removeOnFail: false },
  });
  queue.on('error', (err) => process.stderr.write(`bullmq.mjs load: ${err?.message ?? err}\n`));
  await queue.waitUntilReady();
  const failedBefore = (await queue.getJobCounts('failed')).failed;

  // The clock starts at the first enqueue.
  const startMs = Date.now();
  let next = 0;
  const lane = async () => {
    while (next < opts.jobs) {
      const n = Math.min(opts.batch, opts.jobs - next);
      next += n;
      const jobs = new Array(n);
      for (let i = 0; i < n; i++) jobs[i] = { name: 'noop', data: { record: false } };
      await queue.addBulk(jobs);
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.inFlight, Math.ceil(opts.jobs / opts.batch)) }, lane));

  // Wait until no job of the run is left in any unfinished state. Polling the counts (one small Lua script every
  // 50 ms) rather than a QueueEvents listener: QueueEvents would have Redis send this process every event of every
  // job (added, waiting, active, completed, ...) and this process parse them all, CPU taken from the same two cores
  // as the worker and Redis; and the event stream is trimmed, so a reader that falls behind could miss completions.
  const unfinished = ['waiting', 'active', 'delayed', 'prioritized', 'paused', 'waiting-children'];
  const deadline = Date.now() + opts.timeout * 1000;
  let remaining, failed, timedOut = false;
  for (;;) {
    const counts = await queue.getJobCounts(...unfinished, 'failed');
    remaining = unfinished.reduce((sum, type) => sum + (counts[type] || 0), 0);
    failed = (counts.failed || 0) - failedBefore;
    if (remaining === 0) break;
    if (Date.now() >= deadline) { timedOut = true; break; }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  // The clock stops at the last completion, to the millisecond, not at the poll that saw it.
  const stopMs = (timedOut ? undefined : await lastCompletionMs(queue)) ?? Date.now();
  const done = Math.max(0, opts.jobs - remaining - failed);
  const seconds = Math.max(stopMs - startMs, 1) / 1000;

  await queue.close();
  if (tracing) {
    const spans = await tracing.shutdown();
    process.stderr.write(`bullmq.mjs load: ${spans} spans ended\n`);
  }
  if (failed > 0) process.stderr.write(`bullmq.mjs load: ${failed} jobs failed\n`);
  if (timedOut) process.stderr.write(`bullmq.mjs load: timed out after ${opts.timeout}s with ${remaining} jobs unfinished\n`);
  process.stdout.write(JSON.stringify({
    system: 'bullmq', tracing: opts.tracing, jobs: opts.jobs, done, seconds, rate: done / seconds,
  }) + '\n');
  process.exit(timedOut ? 1 : 0);
}

const opts = parseArgs(process.argv.slice(2));
(opts.role === 'worker' ? runWorker(opts) : runLoad(opts)).catch((err) => {
  process.stderr.write(`bullmq.mjs ${opts.role}: ${err?.stack ?? err}\n`);
  process.exit(1);
});
