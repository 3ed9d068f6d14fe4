"""`shopstream bench`: flows measured against real Kafka and Redis, as ratios.

One run measures, on the same machine and traffic:
- the simulator's generate + encode + produce rate (flat out, one core);
- the raw ceiling: plain consumers that read the same backlog, decode and validate
  every event, and discard it, with as many processes as the flow gets;
- the flow's sustained throughput on that backlog, from its own consumer-lag
  metric (the slope between 10% and 90% consumed, so start-up is left out), and
  the peak memory of each flow process;
- for flows with a latency probe, end-to-end latency under live paced traffic.

Each run uses fresh prefixed topics and Redis keys, and removes its topics after.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from operators.events import InvalidEvent
from shopstream import services
from shopstream.runner import free_ports, resolve_flows, start_flow, stop_all
from shopstream.settings import INPUT_TOPICS, ConfigError, Settings
from simulators import generate
from simulators.timeline import parse_duration
from state.flow_metrics import consumer_lag, peak_rss_bytes
from state.kafka import CheckedProducer
from state.redis_store import connect
from state.serde import decode_event, dumps, loads

# Flows that read every input topic are measured here on one shared backlog; flows
# that read a subset, or read other flows' output, have a benchmark module of their own.
SHARED_BACKLOG_FLOWS = ("intake",)
OWN_BENCHMARKS = {
    "stock": "python -m shopstream.benchmarks.stock",
    "pricing": "python -m shopstream.benchmarks.pricing",
    "funnel": "python -m shopstream.benchmarks.funnel throughput|freshness|memory",
    "alerts": "python -m shopstream.benchmarks.alerts latency|storm",
    "coupons": "python -m shopstream.benchmarks.coupons throughput|latency|memory",
}

SAMPLE_INTERVAL_S = 0.25
DRAIN_TIMEOUT_S = 600.0
# Live-traffic latency runs use short windows so a minute of traffic gives many samples.
LATENCY_WINDOW_S = 1
LATENCY_LATENESS_S = 1
WARMUP_S = 10  # latency samples start this long into a run


@dataclass(frozen=True)
class Backlog:
    events: int
    seconds: float
    end_offsets: dict[tuple[str, int], int]  # (real topic, partition) -> high watermark

    @property
    def produce_rate(self) -> float:
        return self.events / self.seconds


@dataclass(frozen=True)
class ThroughputResult:
    flow: str
    processes: int
    events: int
    events_per_s: float
    raw_ceiling_events_per_s: float
    peak_rss_mb: list[float]

    @property
    def share_of_ceiling(self) -> float:
        return self.events_per_s / self.raw_ceiling_events_per_s


@dataclass(frozen=True)
class LatencyResult:
    flow: str
    what: str
    target_rate: float
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float


# -- traffic ---------------------------------------------------------------------------------


def fill_backlog(settings: Settings, scenario: str, events: int, seed: int,
                 topics: tuple[str, ...] = INPUT_TOPICS, shoppers: int = 400_000) -> Backlog:
    """Produce `events` simulated events flat out to the (prefixed) input `topics`; the
    backlog's end offsets cover those topics only."""
    producer = CheckedProducer(settings)
    started = time.perf_counter()
    sent = 0
    for event in generate((scenario,), seed=seed, duration_ms=parse_duration("7d"), shoppers=shoppers):
        if event.topic not in topics:
            continue
        producer.produce(event.topic, event.key, event.value)
        sent += 1
        if sent == events:
            break
    producer.flush()
    seconds = time.perf_counter() - started
    real_topics = {settings.topic(topic) for topic in topics}
    ends = {tp: end for tp, end in _end_offsets(settings).items() if tp[0] in real_topics}
    return Backlog(sent, seconds, ends)


def _end_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    consumer = Consumer({**settings.kafka_config(), "group.id": "shopstream-bench"})
    try:
        ends = {}
        for name in INPUT_TOPICS:
            topic = settings.topic(name)
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            for partition in partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                ends[(topic, partition)] = high
        return ends
    finally:
        consumer.close()


# -- raw ceiling -----------------------------------------------------------------------------


def _consume_and_decode(settings: Settings, share: dict[tuple[str, int], int], results) -> None:
    """Read `share` partitions to their ends, decode and validate every event, discard.

    Reports its rate between 10% and 90% of its share, as the flow is measured."""
    consumer = Consumer(
        {**settings.kafka_config(), "group.id": "shopstream-bench-raw", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(t, p, 0) for (t, p), end in share.items() if end > 0])
    total = sum(share.values())
    low_mark, high_mark = 0.1 * total, 0.9 * total
    prefix_len = len(settings.topic_prefix)
    count = 0
    low_at = high_at = None
    while count < total:
        for msg in consumer.consume(1000, 1.0):
            if msg.error():
                continue
            try:
                decode_event(msg.topic()[prefix_len:], msg.value())
            except InvalidEvent:
                pass
            count += 1
        if low_at is None and count >= low_mark:
            low_at = (time.perf_counter(), count)
        if high_at is None and count >= high_mark:
            high_at = (time.perf_counter(), count)
    consumer.close()
    results.put((high_at[1] - low_at[1]) / (high_at[0] - low_at[0]))


def raw_ceiling(settings: Settings, backlog: Backlog, processes: int) -> float:
    """Events/s that `processes` plain consumers reach decoding the backlog."""
    shares: list[dict[tuple[str, int], int]] = [{} for _ in range(processes)]
    for index, (topic_partition, end) in enumerate(sorted(backlog.end_offsets.items())):
        shares[index % processes][topic_partition] = end
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_consume_and_decode, args=(settings, share, results)) for share in shares]
    for worker in workers:
        worker.start()
    rates = [results.get(timeout=DRAIN_TIMEOUT_S) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates)  # the consumers run side by side


# -- flow throughput -------------------------------------------------------------------------


def flow_throughput(settings: Settings, flow_name: str, backlog: Backlog, ceiling: float) -> ThroughputResult:
    ports = free_ports(settings.processes)
    processes = start_flow(settings, flow_name, log_dir=settings.services_dir / "bench-logs", api_ports=ports)
    samples: list[tuple[float, int]] = []
    try:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            consumed = _consumed(ports, backlog)
            samples.append((time.monotonic(), consumed))
            if consumed >= backlog.events:
                break
            failed = [p for p in processes if p.popen.poll() is not None]
            if failed:
                raise RuntimeError(f"flow {flow_name} exited with {failed[0].popen.returncode} during the bench")
            time.sleep(SAMPLE_INTERVAL_S)
        else:
            raise RuntimeError(f"flow {flow_name} did not drain {backlog.events} events in {DRAIN_TIMEOUT_S}s")
        rss = [peak_rss_bytes(p.popen.pid) or 0 for p in processes]
    finally:
        stop_all(processes)
    return ThroughputResult(
        flow=flow_name,
        processes=settings.processes,
        events=backlog.events,
        events_per_s=_slope(samples, backlog.events),
        raw_ceiling_events_per_s=ceiling,
        peak_rss_mb=[round(r / 2**20, 1) for r in rss],
    )


def _consumed(ports: list[int], backlog: Backlog) -> int:
    lag: dict[tuple[str, int], float] = {}
    for port in ports:
        try:
            lag.update(consumer_lag(port))
        except OSError:
            pass  # the process is still starting its metrics server
    # A partition that has not reported yet has consumed nothing.
    return int(sum(end - lag.get(tp, end) for tp, end in backlog.end_offsets.items()))


def _slope(samples: list[tuple[float, int]], total: int) -> float:
    """Events/s between the first samples at >= 10% and >= 90% consumed."""
    low = next(s for s in samples if s[1] >= 0.1 * total)
    high = next(s for s in samples if s[1] >= 0.9 * total)
    if high[0] <= low[0]:
        raise RuntimeError("the backlog drained between two samples; bench with more --events")
    return (high[1] - low[1]) / (high[0] - low[0])


# -- latency ---------------------------------------------------------------------------------


def intake_window_latency(settings: Settings, scenario: str, rate: float, seconds: float, seed: int) -> LatencyResult:
    """Live traffic stamped with the wall clock; for each window of input counts, the
    time from the moment it may close (window end + allowed lateness) to its result in Redis."""
    live = replace(settings, input_window_s=LATENCY_WINDOW_S, allowed_lateness_s=LATENCY_LATENESS_S)
    processes = start_flow(live, "intake", log_dir=live.services_dir / "bench-logs")
    client = connect(live)
    history_key = live.redis_key("input:clickstream:history")
    seen: dict[int, float] = {}
    try:
        producer = CheckedProducer(live)
        events = iter(generate((scenario,), seed=seed, duration_ms=parse_duration("7d"), shoppers=shoppers))
        started = time.monotonic()
        run_started_ms = time.time() * 1000
        sent = 0
        while time.monotonic() - started < seconds:
            due = int((time.monotonic() - started) * rate)
            while sent < due:
                event = next(events)
                value = _restamp(event.value)
                producer.produce(event.topic, event.key, value)
                sent += 1
            producer.flush()
            _record_new_windows(client, history_key, seen)
            time.sleep(0.01)
        settle = time.monotonic() + 2 * (LATENCY_WINDOW_S + LATENCY_LATENESS_S)
        while time.monotonic() < settle:
            _record_new_windows(client, history_key, seen)
            time.sleep(0.01)
    finally:
        stop_all(processes)
        client.close()
    closable_after_ms = (LATENCY_WINDOW_S + LATENCY_LATENESS_S) * 1000
    # Steady state only: the first windows open before traffic is at full rate, and a
    # flow holds windows for its start-up grace while every partition delivers once.
    steady_from_ms = run_started_ms + WARMUP_S * 1000
    in_order = [(start, seen_ms) for start, seen_ms in sorted(seen.items()) if start >= steady_from_ms]
    delays = sorted(visible_ms - (window_start + closable_after_ms) for window_start, visible_ms in in_order)
    if len(delays) < 10:
        raise RuntimeError(f"only {len(delays)} windows closed during the latency run; run longer")
    return LatencyResult(
        flow="intake",
        what="window end + allowed lateness -> result in Redis",
        target_rate=rate,
        samples=len(delays),
        p50_ms=statistics.median(delays),
        p99_ms=_percentile(delays, 0.99),
        max_ms=delays[-1],
    )


def _restamp(value: bytes) -> bytes:
    """Give a simulated event the current wall-clock time as its event time."""
    obj = loads(value)
    obj["ts"] = int(time.time() * 1000)
    return dumps(obj)


def _record_new_windows(client, history_key: str, seen: dict[int, float]) -> None:
    now_ms = time.time() * 1000
    for _, score in client.zrange(history_key, -5, -1, withscores=True):
        seen.setdefault(int(score), now_ms)


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


# -- the command -----------------------------------------------------------------------------


def _bench_settings(settings: Settings, processes: int, scratch: Path) -> Settings:
    """Fresh topics, keys and recovery store for one measurement."""
    stamp = f"{time.strftime('%Y%m%d%H%M%S')}{scratch.name}"
    scratch.mkdir(parents=True, exist_ok=True)
    return replace(
        settings,
        topic_prefix=f"bench{stamp}.",
        redis_prefix=f"bench{stamp}:",
        recovery_dir=scratch / "recovery",
        processes=processes,
        partitions=max(settings.partitions, processes),
    )


def run_bench(
    settings: Settings,
    flows: list[str] | None,
    events: int,
    processes: int,
    scenario: str,
    latency_rate: float,
    latency_seconds: float,
    seed: int = 1,
) -> dict:
    flow_names = resolve_flows(flows or list(SHARED_BACKLOG_FLOWS))
    for name in flow_names:
        if name in OWN_BENCHMARKS:
            raise ConfigError(f"flow {name} has a benchmark of its own: {OWN_BENCHMARKS[name]}")
    services.up(settings)
    report: dict = {"scenario": scenario, "events": events, "processes": processes, "throughput": [], "latency": []}
    with tempfile.TemporaryDirectory(prefix="shopstream-bench-") as scratch:
        for flow_name in flow_names:
            bench = _bench_settings(settings, processes, Path(scratch) / f"{flow_name}-throughput")
            services.create_topics(bench)
            try:
                backlog = fill_backlog(bench, scenario, events, seed)
                report["simulator_produce_events_per_s"] = round(backlog.produce_rate)
                ceiling = raw_ceiling(bench, backlog, processes)
                result = flow_throughput(bench, flow_name, backlog, ceiling)
                report["throughput"].append({**asdict(result), "share_of_ceiling": round(result.share_of_ceiling, 3)})
            finally:
                services.delete_topics(bench)
            if flow_name == "intake" and latency_seconds > 0:
                live = _bench_settings(settings, processes, Path(scratch) / f"{flow_name}-latency")
                services.create_topics(live)
                try:
                    latency = intake_window_latency(live, scenario, latency_rate, latency_seconds, seed + 1)
                    report["latency"].append(asdict(latency))
                finally:
                    services.delete_topics(live)
    return report


def format_report(report: dict) -> str:
    lines = [
        f"scenario {report['scenario']}, {report['events']:,} events, {report['processes']} process(es) per flow",
        f"simulator generate+encode+produce: {report.get('simulator_produce_events_per_s', 0):,} events/s",
        f"{'flow':<10} {'events/s':>10} {'raw ceiling':>12} {'share':>7} {'peak RSS MB per process':>26}",
    ]
    for t in report["throughput"]:
        lines.append(
            f"{t['flow']:<10} {t['events_per_s']:>10,.0f} {t['raw_ceiling_events_per_s']:>12,.0f} "
            f"{t['share_of_ceiling']:>7.0%} {', '.join(map(str, t['peak_rss_mb'])):>26}"
        )
    for lat in report["latency"]:
        lines.append(
            f"{lat['flow']} latency ({lat['what']}) at {lat['target_rate']:,.0f} events/s: "
            f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms "
            f"over {lat['samples']} windows"
        )
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")
