"""Benchmarks of the funnel flow (issue 4's numbers).

    python -m shopstream.benchmarks.funnel throughput [--events 1000000] [--processes 2]
    python -m shopstream.benchmarks.funnel freshness [--rate 5000] [--seconds 40]
    python -m shopstream.benchmarks.funnel memory [--sessions 10000000]

- throughput: a `double11` backlog (clickstream-heavy) drained by the flow on real
  Kafka and Redis; events/s of the funnel's topics from the flow's own consumer lag,
  next to the raw ceiling (plain consumers decoding the same backlog), with
  `shopstream.bench`.
- freshness: live `double11` traffic stamped with the wall clock, 1 s windows and 1 s
  lateness; for every window, the time from the moment it may close (window end +
  allowed lateness) to its `funnel:all:all` result in Redis.
- memory: pure logic, no Kafka: one bucket fed synthetic sessions (a few clicks
  each, 500 new sessions per second of event time, 30-minute session timeout); the
  process's RSS after every million sessions. A full Kafka run of 10 million
  sessions would take far longer than a benchmark should.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from operators.funnel import CLICK, FunnelBucket, FunnelEvent, FunnelRules
from shopstream import bench, runner, services
from shopstream.settings import Settings
from simulators import generate
from simulators.timeline import parse_duration
from state.kafka import CheckedProducer
from state.redis_store import connect

FUNNEL_TOPICS = ("clickstream", "orders", "payments")


def throughput(settings: Settings, events: int, processes: int, seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="shopstream-bench-funnel-") as scratch:
        run = bench._bench_settings(settings, processes, Path(scratch) / "throughput")
        services.create_topics(run)
        try:
            backlog = bench.fill_backlog(run, "double11", events, seed)
            funnel_topics = {run.topic(t) for t in FUNNEL_TOPICS}
            ends = {tp: end for tp, end in backlog.end_offsets.items() if tp[0] in funnel_topics}
            backlog = bench.Backlog(sum(ends.values()), backlog.seconds, ends)
            ceiling = bench.raw_ceiling(run, backlog, processes)
            result = bench.flow_throughput(run, "funnel", backlog, ceiling)
        finally:
            services.delete_topics(run)
    print(f"funnel throughput, {processes} process(es): {backlog.events:,} clickstream/orders/payments events "
          f"of double11; {result.events_per_s:,.0f} events/s (raw ceiling {ceiling:,.0f} events/s, "
          f"{result.share_of_ceiling:.0%}); peak RSS {result.peak_rss_mb} MB", flush=True)


def freshness(settings: Settings, rate: float, seconds: float, processes: int, seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="shopstream-bench-funnel-") as scratch:
        live = replace(bench._bench_settings(settings, processes, Path(scratch) / "freshness"),
                       funnel_window_s=bench.LATENCY_WINDOW_S, allowed_lateness_s=bench.LATENCY_LATENESS_S,
                       funnel_rolling_s=15 * bench.LATENCY_WINDOW_S)
        services.create_topics(live)
        try:
            delays = _window_delays(live, rate, seconds, seed)
        finally:
            services.delete_topics(live)
    print(f"funnel freshness at {rate:,.0f} events/s live, {processes} process(es): window end + allowed lateness "
          f"-> funnel:all:all in Redis p50 {statistics.median(delays):.0f} ms, "
          f"p99 {bench._percentile(delays, 0.99):.0f} ms, max {delays[-1]:.0f} ms over {len(delays)} windows",
          flush=True)


def _window_delays(live: Settings, rate: float, seconds: float, seed: int) -> list[float]:
    processes = runner.start_flow(live, "funnel", log_dir=live.services_dir / "bench-logs")
    client = connect(live)
    history_key = live.redis_key("funnel:all:all:history")
    seen: dict[int, float] = {}
    try:
        producer = CheckedProducer(live)
        events = (e for e in generate(("double11",), seed=seed, duration_ms=parse_duration("7d"), shoppers=400_000)
                  if e.topic in FUNNEL_TOPICS)
        started = time.monotonic()
        run_started_ms = time.time() * 1000
        sent = 0
        while time.monotonic() - started < seconds:
            due = int((time.monotonic() - started) * rate)
            while sent < due:
                event = next(events)
                producer.produce(event.topic, event.key, bench._restamp(event.value))
                sent += 1
            producer.flush()
            bench._record_new_windows(client, history_key, seen)
            time.sleep(0.01)
        settle = time.monotonic() + 2 * (bench.LATENCY_WINDOW_S + bench.LATENCY_LATENESS_S)
        while time.monotonic() < settle:
            bench._record_new_windows(client, history_key, seen)
            time.sleep(0.01)
    finally:
        runner.stop_all(processes)
        client.close()
    closable_after_ms = (bench.LATENCY_WINDOW_S + bench.LATENCY_LATENESS_S) * 1000
    steady_from_ms = run_started_ms + bench.WARMUP_S * 1000
    delays = sorted(seen_ms - (start + closable_after_ms) for start, seen_ms in seen.items() if start >= steady_from_ms)
    if len(delays) < 10:
        raise RuntimeError(f"only {len(delays)} windows closed during the freshness run; run longer")
    return delays


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def memory(sessions: int, per_second: int, clicks: int) -> None:
    """Synthetic sessions through one bucket: RSS must level off once sessions time out."""
    rules = FunnelRules(window_ms=60_000, lateness_ms=10_000, session_timeout_ms=1_800_000)
    bucket = FunnelBucket("0", rules)
    t0 = 1_731_232_800_000
    step_ms = 1000 // per_second or 1
    batch: list[FunnelEvent] = []
    stages = (0, 1, 1, 2, 3)
    samples = []
    started = time.perf_counter()
    for n in range(sessions):
        ts = t0 + n * step_ms
        session_id = f"s{n}"
        user_id = f"u{n % 5_000_000}"
        for click in range(clicks):
            batch.append(FunnelEvent(ts + click * 20_000, CLICK, user_id, session_id, None, stages[click % 5], 0.0,
                                     "app", "zj", "ios", click == 0))
        if len(batch) >= 2000:
            bucket.add(batch, {("clickstream", 0): batch[-1].ts}, 0)
            batch = []
        if (n + 1) % 1_000_000 == 0:
            gc.collect()
            samples.append(_rss_mb())
            print(f"{n + 1:>11,} sessions: {len(bucket.sessions):,} live, RSS {samples[-1]:.0f} MB "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"funnel memory over {sessions:,} distinct sessions ({per_second}/s of event time, {clicks} clicks each, "
          f"30 min timeout): RSS {', '.join(f'{s:.0f}' for s in samples)} MB", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("throughput", "freshness", "memory"))
    parser.add_argument("--events", type=int, default=1_000_000, help="throughput: backlog size")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rate", type=float, default=5_000, help="freshness: live events/s")
    parser.add_argument("--seconds", type=float, default=40.0, help="freshness: run length")
    parser.add_argument("--sessions", type=int, default=10_000_000, help="memory: distinct sessions")
    parser.add_argument("--sessions-per-second", type=int, default=500, help="memory: new sessions per event-time s")
    parser.add_argument("--clicks", type=int, default=3, help="memory: clicks per session")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.what == "memory":
        memory(args.sessions, args.sessions_per_second, args.clicks)
        return
    settings = Settings.from_env()
    services.up(settings)
    if args.what == "throughput":
        throughput(settings, args.events, args.processes, args.seed)
    else:
        freshness(settings, args.rate, args.seconds, args.processes, args.seed)


if __name__ == "__main__":
    main()
