#!/usr/bin/env python3
"""What the spans of issue 16 cost per job: two builds' producer and consumer, end to end with tracing on
(100 % sampled, OTLP http/protobuf to bench/run's counting receiver), alternating runs on one private Redis.

Usage: bench/spans_cost.py BASE_BIN_DIR [--jobs N] [--repeat K] [--off] [--rust-log LEVEL]
  BASE_BIN_DIR  the production (or release) binaries of the commit to compare with (e.g. built from a worktree of it);
                this checkout's are target/production (cargo build --profile production --bins --examples).
Prints, per build, the median jobs/s with the range, spans per job, and CPU µs per job per process.
"""

import argparse
import importlib.machinery
import importlib.util
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
loader = importlib.machinery.SourceFileLoader("bench_run", os.path.join(HERE, "run"))
spec = importlib.util.spec_from_loader("bench_run", loader)
bench = importlib.util.module_from_spec(spec)
loader.exec_module(bench)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("--jobs", type=int, default=30_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--off", action="store_true", help="tracing off (always_off sampler, no exporter) instead")
    ap.add_argument("--rust-log", default=bench.RUST_LOG,
                    help="RUST_LOG of the producer and consumer (default: bench/run's, the binaries' own: info)")
    args = ap.parse_args()
    bench.RUST_LOG = args.rust_log
    builds = {"base": os.path.abspath(args.base), "head": bench.RELEASE}
    runs = {name: [] for name in builds}
    with tempfile.TemporaryDirectory() as tmp:
        redis = bench.Redis(tmp)
        try:
            for _ in range(args.repeat):
                for name, path in builds.items():
                    bench.BIN = path
                    load_args = ["--jobs", str(args.jobs), "--batch", "100", "--concurrency", "4"]
                    runs[name].append(bench.end_to_end(redis, tmp, 1, not args.off, load_args))
        finally:
            redis.stop()
    print(f"{args.jobs} noop jobs, 1 consumer at concurrency {bench.CONCURRENCY}, tracing {'off' if args.off else 'on'}, "
          f"RUST_LOG={bench.RUST_LOG}, "
          f"{args.repeat} alternating runs each")
    print("| build | jobs/s (median, range) | spans/job | consumer µs/job | producer µs/job | Redis µs/job | receiver µs/job |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, results in runs.items():
        rates = [r["report"]["drain_rate"] for r in results]
        med = lambda key: statistics.median(r["cpu_us_per_job"][key] for r in results)
        spans = statistics.median((r["spans"] or 0) / max(r["report"]["done"], 1) for r in results)
        print(f"| {name} | {statistics.median(rates):,.0f} ({min(rates):,.0f}–{max(rates):,.0f}) | {spans:.3f} | "
              f"{med('consumers'):.1f} | {med('producer'):.1f} | {med('redis'):.1f} | {med('receiver'):.1f} |")


if __name__ == "__main__":
    sys.exit(main())
