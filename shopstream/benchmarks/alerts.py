"""Benchmarks of the alert router on real Kafka and Redis.

    python -m shopstream.benchmarks.alerts latency --rate 5000 --seconds 60
    python -m shopstream.benchmarks.alerts storm --per-minute 100000 --minutes 5

latency: the intake and alerts flows run as `shopstream run` runs them; double11
traffic is produced live (stamped with the wall clock) at `--rate`, and twice a
second a threshold-crossing candidate (a new condition, stamped now) is published
on `alert-candidates` as a detector does. Measured: candidate timestamp -> its
`firing` message read back from the `alerts` topic.

storm: `--per-minute` candidates a minute for one condition over `--minutes` of
event time, as a backlog, routed in-process (recovery off) until the topic ends;
reports the router's throughput and what reached `alerts`.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from dataclasses import replace

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from operators.alerts import AlertCandidate
from shopstream import services
from shopstream.settings import Settings
from state.alert_candidates import candidate_message
from state.kafka import CheckedProducer, read_topic
from state.serde import dumps, loads

MINUTE = 60_000


def _fresh(settings: Settings, name: str, tmp: str) -> Settings:
    stamp = f"{time.strftime('%Y%m%d%H%M%S')}{name}"
    return replace(settings, topic_prefix=f"bench{stamp}.", redis_prefix=f"bench{stamp}:", recovery_dir=f"{tmp}/recovery")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class _AlertReader(threading.Thread):
    """Reads the alerts topic from its end; wall-clock arrival time per alert id."""

    def __init__(self, settings: Settings):
        super().__init__(daemon=True)
        self.arrivals: dict[str, tuple[float, dict]] = {}
        self.stop = threading.Event()
        topic = settings.topic("alerts")
        self._consumer = Consumer({**settings.kafka_config(), "group.id": f"bench-{uuid.uuid4()}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        parts = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])

    def run(self) -> None:
        while not self.stop.is_set():
            msg = self._consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            alert = loads(msg.value())
            self.arrivals.setdefault(alert["alert_id"], (time.time() * 1000, alert))
        self._consumer.close()


def latency(settings: Settings, rate: float, seconds: float, seed: int) -> dict:
    import tempfile

    from shopstream import runner
    from simulators import generate
    from simulators.timeline import parse_duration

    runner.FLOWS.setdefault("alerts", "flows.alerts:flow")
    with tempfile.TemporaryDirectory(prefix="shopstream-bench-alerts-") as tmp:
        live = replace(_fresh(settings, "lat", tmp), input_window_s=1, allowed_lateness_s=1)
        services.create_topics(live)
        processes = runner.start_flow(live, "intake", log_dir=live.services_dir / "bench-logs")
        processes += runner.start_flow(live, "alerts", log_dir=live.services_dir / "bench-logs")
        reader = _AlertReader(live)
        reader.start()
        sent: dict[str, int] = {}
        try:
            time.sleep(5)  # let both flows connect before measuring
            producer = CheckedProducer(live)
            events = iter(generate(("double11",), seed=seed, duration_ms=parse_duration("7d"), shoppers=400_000))
            started = time.monotonic()
            produced = 0
            next_probe = started
            while time.monotonic() - started < seconds:
                due = int((time.monotonic() - started) * rate)
                while produced < due:
                    event = next(events)
                    obj = loads(event.value)
                    obj["ts"] = int(time.time() * 1000)
                    producer.produce(event.topic, event.key, dumps(obj))
                    produced += 1
                if time.monotonic() >= next_probe:
                    next_probe += 0.5
                    now = int(time.time() * 1000)
                    key = f"probe-{len(sent)}"
                    candidate = AlertCandidate(ts=now, rule="stock.out", key=key, active=True, severity="critical",
                                               summary=f"{key} is out of stock", value=0, threshold=0)
                    message = candidate_message(candidate)
                    producer.produce(message.topic, message.key, message.value)
                    sent[f"stock.out:{key}@{now}/firing"] = now
                producer.flush()
                time.sleep(0.005)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not set(sent) <= set(reader.arrivals):
                time.sleep(0.1)
        finally:
            reader.stop.set()
            reader.join()
            runner.stop_all(processes)
            services.delete_topics(live)
    delays = [reader.arrivals[i][0] - ts for i, ts in sent.items() if i in reader.arrivals]
    return {
        "what": "candidate ts -> firing message read from the alerts topic",
        "rate": rate,
        "events": produced,
        "probes": len(sent),
        "received": len(delays),
        "p50_ms": round(statistics.median(delays)),
        "p99_ms": round(_percentile(delays, 0.99)),
        "max_ms": round(max(delays)),
    }


def storm(settings: Settings, per_minute: int, minutes: int) -> dict:
    import tempfile

    from bytewax.testing import run_main

    from flows.alerts import INPUT_TOPICS, AlertsConfig, build_flow, redis_ack_lookup
    from operators.alert_router import RouterConfig
    from state.kafka import KafkaInputSource, KafkaOutputSink
    from state.redis_store import KeyReader, RedisSink

    with tempfile.TemporaryDirectory(prefix="shopstream-bench-storm-") as tmp:
        bench = _fresh(settings, "storm", tmp)
        services.create_topics(bench)
        try:
            producer = CheckedProducer(bench)
            start = 1_763_683_200_000
            total = per_minute * minutes
            step = minutes * MINUTE / total
            for i in range(total):
                candidate = AlertCandidate(ts=start + int(i * step), rule="payment.failure_rate", key="all",
                                           active=True, severity="critical",
                                           summary="payment failures at 55%, usually 4%", value=0.55, threshold=0.15)
                message = candidate_message(candidate)
                producer.produce(message.topic, message.key, message.value)
            producer.flush()
            config = AlertsConfig(router=RouterConfig(escalate_after_ms=5 * MINUTE, reminder_ms=MINUTE))
            flow = build_flow(KafkaInputSource(bench, INPUT_TOPICS, tail=False), KafkaOutputSink(bench),
                              RedisSink(bench), config, acks=redis_ack_lookup(KeyReader(bench)))
            began = time.perf_counter()
            run_main(flow)
            seconds = time.perf_counter() - began
            alerts = [loads(v) for _, v in read_topic(bench, "alerts")]
        finally:
            services.delete_topics(bench)
    return {
        "candidates": total,
        "event_minutes": minutes,
        "route_seconds": round(seconds, 2),
        "candidates_per_s": round(total / seconds),
        "alerts": [(a["alert_id"].split("/")[-1], a["count"]) for a in alerts],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shopstream.benchmarks.alerts")
    sub = parser.add_subparsers(dest="which", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--rate", type=float, default=5_000)
    lat.add_argument("--seconds", type=float, default=60)
    lat.add_argument("--seed", type=int, default=1)
    st = sub.add_parser("storm")
    st.add_argument("--per-minute", type=int, default=100_000)
    st.add_argument("--minutes", type=int, default=5)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    services.up(settings)
    result = latency(settings, args.rate, args.seconds, args.seed) if args.which == "latency" else storm(
        settings, args.per_minute, args.minutes)
    print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
