"""Benchmarks of the fraud flow on real Kafka and Redis (issue 6's numbers).

    python -m shopstream.benchmarks.fraud all [--background-rate 32000] [--seconds 40] [--payments 200000]
    python -m shopstream.benchmarks.fraud latency|throughput|checkpoint ...

- latency: the fraud and intake flows run as `shopstream run` runs them; a separate
  process produces `double11` traffic (all four input topics, stamped with the wall
  clock) at `--background-rate` events/s; meanwhile the payment service's own client
  (`shopstream.fraud_client.FraudClient.check`) publishes `requested` payments one
  after another and waits on Redis: from just before the produce to the decision read
  from Redis. Fallbacks (no decision within 1 s) are counted, not timed.
- throughput: a backlog of payment events (a `double11,card_testing` run's payments,
  repeated with new ids) drained by one fraud flow process; decisions/s from the
  flow's own consumer lag and the share of `requested` events.
- checkpoint: a model pre-trained on a simulated month, saved, and loaded 5 times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from shopstream import bench, runner, services
from shopstream.fraud_client import FraudClient
from shopstream.settings import Settings
from simulators import generate
from simulators.timeline import DAY, HOUR, parse_duration
from state.flow_metrics import peak_rss_bytes
from state.kafka import CheckedProducer
from state.serde import dumps, loads

PROBE_TIMEOUT_MS = 1000
WARMUP_S = 5


# -- background traffic ------------------------------------------------------------------


def produce_background(settings: Settings, rate: float, seconds: float, seed: int) -> None:
    """double11 traffic at `rate` events/s, event time = wall clock (run as its own process)."""
    producer = CheckedProducer(settings)
    events = iter(generate(("double11",), seed=seed, duration_ms=parse_duration("7d"), shoppers=400_000))
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        due = int((time.monotonic() - started) * rate)
        now_ms = int(time.time() * 1000)
        while sent < due:
            event = next(events)
            obj = loads(event.value)
            obj["ts"] = now_ms
            producer.produce(event.topic, event.key, dumps(obj))
            sent += 1
        producer._producer.poll(0)
        time.sleep(0.005)
    producer.flush()
    elapsed = time.monotonic() - started
    print(f"background: {sent:,} events in {elapsed:.1f}s = {sent / elapsed:,.0f} events/s", flush=True)


def _start_background(settings: Settings, rate: float, seconds: float, seed: int) -> subprocess.Popen:
    env = {**os.environ, **settings.to_env()}
    return subprocess.Popen(
        [sys.executable, "-m", "shopstream.benchmarks.fraud", "background", "--rate", str(rate),
         "--seconds", str(seconds), "--seed", str(seed)],
        env=env, stdout=subprocess.PIPE, text=True,
    )


# -- latency -----------------------------------------------------------------------------


def _probe_payment(n: int, now_ms: int) -> dict:
    return {"event_id": f"probe-e{n}", "ts": now_ms, "payment_id": f"probe-p{n}-{now_ms}",
            "order_id": f"probe-o{n}", "user_id": f"probe-u{n % 500}", "status": "requested",
            "amount": 120.0 + n % 300, "method": "alipay", "device_id": f"probe-d{n % 500}",
            "ip": f"10.9.{n % 250}.1", "country": "CN", "account_created_ts": now_ms - 300 * DAY // 1,
            "signals": {"device_risk": 0.1, "ip_risk": 0.1}}


def decision_latency(settings: Settings, background_rate: float, seconds: float, seed: int) -> dict:
    log_dir = settings.services_dir / "bench-logs"
    processes = runner.start_flow(settings, "fraud", log_dir=log_dir)
    if background_rate > 0:
        processes += runner.start_flow(settings, "intake", log_dir=log_dir)
    background = None
    client = FraudClient(settings, timeout_ms=PROBE_TIMEOUT_MS)
    delays: list[float] = []
    fallbacks = probes = 0
    try:
        time.sleep(3)  # both flows up and assigned
        if background_rate > 0:
            background = _start_background(settings, background_rate, seconds + WARMUP_S, seed)
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < seconds + WARMUP_S:
            verdict = client.check(_probe_payment(n, int(time.time() * 1000)))
            n += 1
            if time.monotonic() - started < WARMUP_S:
                continue
            probes += 1
            if verdict.source == "engine":
                delays.append(verdict.waited_ms)
            else:
                fallbacks += 1
            time.sleep(0.01)  # ~100 probes/s at most: the probe is not the load
        background_line = background.communicate(timeout=120)[0].strip() if background else "none"
    finally:
        if background is not None and background.poll() is None:
            background.kill()
        client.close()
        runner.stop_all(processes)
    delays.sort()
    return {
        "background": background_line,
        "probes": probes,
        "fallbacks": fallbacks,
        "p50_ms": round(statistics.median(delays), 2),
        "p99_ms": round(bench._percentile(delays, 0.99), 2),
        "max_ms": round(delays[-1], 2),
    }


# -- throughput --------------------------------------------------------------------------


def fill_payment_backlog(settings: Settings, target: int, seed: int) -> tuple[bench.Backlog, int]:
    sim = generate(("double11", "card_testing"), seed=seed, duration_ms=12 * HOUR, shoppers=400_000)
    payments = [(e.key, loads(e.value)) for e in sim if e.topic == "payments"]
    producer = CheckedProducer(settings)
    started = time.perf_counter()
    sent = requested = copy = 0
    span = 12 * HOUR
    while sent < target:
        for key, obj in payments:
            value = obj if copy == 0 else dict(obj, event_id=f"{obj['event_id']}~{copy}",
                                               payment_id=f"{obj['payment_id']}~{copy}",
                                               ts=obj["ts"] + copy * span)
            producer.produce("payments", key, dumps(value))
            sent += 1
            requested += value["status"] == "requested"
            if sent >= target:
                break
        copy += 1
    producer.flush()
    seconds = time.perf_counter() - started
    ends = {tp: end for tp, end in bench._end_offsets(settings).items() if tp[0] == settings.topic("payments")}
    return bench.Backlog(sent, seconds, ends), requested


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fraud_throughput(settings: Settings, backlog: bench.Backlog) -> dict:
    """Drain the backlog with one flow process: events per wall second and per CPU second
    of the flow process, between 10% and 90% consumed (the machine is shared, so the
    CPU figure says what one core would do)."""
    ports = runner.free_ports(1)
    processes = runner.start_flow(settings, "fraud", log_dir=settings.services_dir / "bench-logs", api_ports=ports)
    pid = processes[0].popen.pid
    samples: list[tuple[float, float, int]] = []
    try:
        deadline = time.monotonic() + bench.DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            consumed = bench._consumed(ports, backlog)
            samples.append((time.monotonic(), _cpu_seconds(pid), consumed))
            if consumed >= backlog.events:
                break
            if processes[0].popen.poll() is not None:
                raise RuntimeError(f"the fraud flow exited with {processes[0].popen.returncode} during the bench")
            time.sleep(bench.SAMPLE_INTERVAL_S)
        else:
            raise RuntimeError(f"the fraud flow did not drain {backlog.events} events")
        rss = peak_rss_bytes(pid) or 0
    finally:
        runner.stop_all(processes)
    low = next(s for s in samples if s[2] >= 0.1 * backlog.events)
    high = next(s for s in samples if s[2] >= 0.9 * backlog.events)
    events = high[2] - low[2]
    return {"events_per_s": events / (high[0] - low[0]), "events_per_cpu_s": events / max(high[1] - low[1], 1e-9),
            "peak_rss_mb": round(rss / 2**20, 1)}


# -- checkpoint --------------------------------------------------------------------------


def checkpoint_load(directory: Path, days: int, seed: int) -> dict:
    from flows.fraud import fraud_config
    from shopstream.fraud_cli import payments_of, train
    from simulators.profile import PROFILE
    from simulators.testing import input_records
    from flows.fraud import MODEL_NAME, latest_bundle
    from state.model_checkpoints import ModelStore

    sim = generate(("card_testing",), seed=seed, duration_ms=days * DAY, shoppers=30_000,
                   profile=replace(PROFILE, fraud_value_share=0.05))
    payments = list(payments_of(input_records(e for e in sim if e.topic == "payments")))
    config = replace(fraud_config(Settings()), label_horizon_ms=10 * DAY)
    engine = train(config, payments)
    store = ModelStore(directory)
    checkpoint = engine.checkpoint(payments[-1].ts)
    path = store.path(MODEL_NAME, store.save_pickled(MODEL_NAME, checkpoint.data))
    loads_s = []
    for _ in range(5):
        started = time.perf_counter()
        bundle = latest_bundle(store)
        loads_s.append(time.perf_counter() - started)
    assert bundle is not None and bundle.model.ready
    return {"bytes": path.stat().st_size, "load_ms": [round(s * 1000, 2) for s in loads_s],
            "model_version": bundle.model.model_version, "legit_sample": len(bundle.thresholds.ordered)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["all", "latency", "throughput", "checkpoint", "background"])
    parser.add_argument("--background-rate", type=float, default=32_000,
                        help="double11 events/s besides the probes (intake's sustainable rate is ~64k)")
    parser.add_argument("--rate", type=float, default=32_000, help="(background) events/s")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--payments", type=int, default=200_000, help="payment events in the throughput backlog")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.what == "background":
        produce_background(settings, args.rate, args.seconds, args.seed)
        return
    services.up(settings)
    with tempfile.TemporaryDirectory(prefix="shopstream-bench-fraud-") as scratch:
        scratch = Path(scratch)
        if args.what in ("all", "checkpoint"):
            result = checkpoint_load(scratch / "models-trained", 25, args.seed)
            print(f"fraud checkpoint: {result['bytes']:,} bytes ({result['model_version']}, legitimate sample "
                  f"{result['legit_sample']:,}); load {result['load_ms']} ms", flush=True)
        if args.what in ("all", "throughput"):
            one = replace(bench._bench_settings(settings, 1, scratch / "throughput"),
                          fraud_model_dir=scratch / "models-throughput")
            services.create_topics(one)
            try:
                backlog, requested = fill_payment_backlog(one, args.payments, args.seed)
                result = fraud_throughput(one, backlog)
            finally:
                services.delete_topics(one)
            share = requested / backlog.events
            print(f"fraud throughput, 1 process: {backlog.events:,} payment events ({requested:,} requested); "
                  f"{result['events_per_s'] * share:,.0f} decisions/s wall, "
                  f"{result['events_per_cpu_s'] * share:,.0f} decisions per CPU second of the flow process; "
                  f"peak RSS {result['peak_rss_mb']} MB", flush=True)
        if args.what in ("all", "latency"):
            # The same probes without background traffic first: the baseline of this run.
            for n, rate in enumerate((0.0, args.background_rate)):
                live = replace(bench._bench_settings(settings, 1, scratch / f"latency{n}"),
                               fraud_model_dir=scratch / f"models-latency{n}")
                services.create_topics(live)
                try:
                    result = decision_latency(live, rate, args.seconds, args.seed)
                finally:
                    services.delete_topics(live)
                print(f"fraud decision latency (produce -> decision read from Redis by the client), "
                      f"background {result['background']}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                      f"max {result['max_ms']} ms over {result['probes']:,} probes ({result['fallbacks']} fallbacks); "
                      f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)

if __name__ == "__main__":
    main()
