"""What the alert router's hold costs on-call, live, on the real broker.

    python -m shopstream.benchmarks.alert_hold --rate 2000 --seconds 120

The stock, funnel, fraud and pricing flows run as `shopstream run` runs them, with two
alert routers reading the same `alert-candidates`: one holding candidates for those
four producers' progress markers (`SHOPSTREAM_ALERT_PRODUCERS`), one without the hold,
writing to its own topics and Redis keys. Twenty minutes of simulated traffic with
incidents (double11, a flash sale, card testing, a payment outage) are produced live
(stamped with the wall clock) at `--rate`. Storm grouping is off in both (group wait
and interval 0, no per-rule budget) so only the hold differs.

Measured per router, for every candidate a producer flow wrote that opened an alert:
the broker timestamp of its `firing` message on `alerts` minus the broker timestamp
of the candidate on `alert-candidates` (both set by their producers when they wrote;
one clock; the topics are read after the run). Also for probes: twice a second a
candidate tagged as a stock shard of its own, stamped at the wall clock, as a detector
that stamps with wall time would (the worst case: the hold waits until every
producer's watermark, its allowed lateness behind its input, reaches the wall time).
Candidates of the first `--warmup` seconds are left out (flows connecting, every
shard reporting for the first time).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from dataclasses import replace

from confluent_kafka import Consumer, TopicPartition

from operators.alerts import AlertCandidate
from shopstream import services
from shopstream.settings import Settings
from state.alert_candidates import Produced, candidate_message
from state.kafka import CheckedProducer
from state.serde import dumps, loads

PRODUCERS = ("fraud", "funnel", "pricing", "stock")
UNHELD = "unheld"  # the router without the hold writes under this extra topic and Redis prefix
PROBE_RULE = "bench.probe"
SCENARIOS = ("double11", "flash_sale", "card_testing", "payment_outage")


def _router_flow(held: bool):
    """An alerts flow as `shopstream run` builds it, storm grouping off; the unheld one
    expects no producer and writes its alerts under its own prefix."""
    from flows.alerts import INPUT_TOPICS, AlertsConfig, build_flow, redis_ack_lookup
    from state.kafka import KafkaInputSource, KafkaOutputSink
    from state.redis_store import KeyReader, RedisSink

    settings = Settings.from_env()
    config = AlertsConfig.from_settings(settings)
    config = replace(config, router=replace(config.router, group_wait_ms=0, group_interval_ms=0,
                                            rule_max_per_min=1_000_000), lag_endpoints=())
    out = settings
    if not held:
        config = replace(config, producers=())
        out = _unheld(settings)
    return build_flow(KafkaInputSource(settings, INPUT_TOPICS), KafkaOutputSink(out), RedisSink(out), config,
                      acks=redis_ack_lookup(KeyReader(out)))


def _unheld(settings: Settings) -> Settings:
    return replace(settings, topic_prefix=f"{settings.topic_prefix}{UNHELD}.",
                   redis_prefix=f"{settings.redis_prefix}{UNHELD}:")


def __getattr__(name: str):
    # `python -m bytewax.run shopstream.benchmarks.alert_hold:held` (or `:unheld`).
    if name in ("held", "unheld"):
        return _router_flow(name == "held")
    raise AttributeError(name)


def _written(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[tuple[int, dict]]:
    """Every message of a topic (contract name) with its broker timestamp, read after the
    run so that reading takes no CPU from the flows while they are measured."""
    consumer = Consumer({**settings.kafka_config(), "group.id": f"bench-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    real = settings.topic(topic)
    out = []
    try:
        parts = consumer.list_topics(real, timeout=10).topics[real].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(real, p), timeout=10)[1] for p in parts}
        pending = {p for p, high in ends.items() if high > 0}
        consumer.assign([TopicPartition(real, p, 0) for p in pending])
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append((msg.timestamp()[1], loads(msg.value())))
            if msg.offset() + 1 >= ends[msg.partition()]:
                pending.discard(msg.partition())
    finally:
        consumer.close()
    return out


def _firing(settings: Settings) -> dict[tuple[str, int], int]:
    """(dedup key, first_seen_ts) -> when the router wrote the episode's `firing` message."""
    out: dict[tuple[str, int], int] = {}
    for written, alert in _written(settings, "alerts"):
        if alert.get("status") == "firing":
            out.setdefault((alert["dedup_key"], alert["first_seen_ts"]), written)
    return out


def _stats(delays: list[int]) -> dict:
    if not delays:
        return {"n": 0}
    ordered = sorted(delays)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered)),
            "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], "max_ms": ordered[-1]}


def measure(settings: Settings, rate: float, seconds: float, warmup: float, seed: int) -> dict:
    from shopstream import runner
    from simulators import generate
    from simulators.timeline import parse_duration

    runner.FLOWS.setdefault("router_held", "shopstream.benchmarks.alert_hold:held")
    runner.FLOWS.setdefault("router_unheld", "shopstream.benchmarks.alert_hold:unheld")
    stamp = time.strftime("%Y%m%d%H%M%S")
    with tempfile.TemporaryDirectory(prefix="shopstream-bench-hold-") as tmp:
        live = replace(settings, topic_prefix=f"bench{stamp}hold.", redis_prefix=f"bench{stamp}hold:",
                       recovery_dir=f"{tmp}/recovery", alert_producers=",".join(PRODUCERS), flow_api_port_base=0)
        services.create_topics(live)
        services.create_topics(_unheld(live))
        logs = live.services_dir / "bench-logs"
        held_log = logs / "router_held-0.log"
        log_from = held_log.stat().st_size if held_log.exists() else 0
        processes = []
        produced = probes = 0
        try:
            for name in (*PRODUCERS, "router_held", "router_unheld"):
                processes += runner.start_flow(live, name, log_dir=logs)
            time.sleep(5)  # let the flows connect
            producer = CheckedProducer(live)
            # Twenty minutes of a shop's events, incidents included, sent at `rate` (the
            # default rate and length send most of them): candidates from every producer.
            events = iter(generate(SCENARIOS, seed=seed, duration_ms=parse_duration("20m"), shoppers=400_000))
            started = time.monotonic()
            measured_from = int(time.time() * 1000 + warmup * 1000)
            next_probe = started
            while time.monotonic() - started < seconds:
                due = int((time.monotonic() - started) * rate)
                while produced < due:
                    event = next(events, None)
                    if event is None:
                        break
                    obj = loads(event.value)
                    obj["ts"] = int(time.time() * 1000)
                    producer.produce(event.topic, event.key, dumps(obj))
                    produced += 1
                if time.monotonic() >= next_probe:
                    next_probe = max(next_probe + 0.5, time.monotonic())
                    now = int(time.time() * 1000)
                    key = f"probe-{probes}"
                    probe = AlertCandidate(ts=now, rule=PROBE_RULE, key=key, active=True, severity="warning",
                                           summary=key)
                    message = candidate_message(Produced("stock", "probe", probe))
                    producer.produce(message.topic, message.key, message.value)
                    probes += 1
                producer.flush()
                time.sleep(0.005)
            time.sleep(30)  # the last candidates' alerts (the hold waits for every producer)
            candidates: dict[tuple[str, int], tuple[int, str]] = {}  # (dedup key, ts) -> (written, producer)
            for written, obj in _written(live, "alert-candidates"):
                if "producer" in obj and "dedup_key" in obj and obj.get("active"):
                    candidates.setdefault((obj["dedup_key"], obj["ts"]), (written, obj["producer"]))
            firing = {"held": _firing(live), UNHELD: _firing(_unheld(live))}
            with open(held_log, "rb") as log:  # the held router logs a producer it stops waiting for
                log.seek(log_from)
                timeouts = log.read().count(b"sent no progress")
        finally:
            runner.stop_all(processes)
            services.delete_topics(_unheld(live))
            services.delete_topics(live)
    out = {"rate": rate, "seconds": seconds, "events": produced, "probes": probes, "producer_timeouts": timeouts}
    for router in ("held", UNHELD):
        by_producer: dict[str, list[int]] = {}
        missing = 0
        for key, (written, producer_name) in candidates.items():
            if key[1] < measured_from:
                continue
            if key[0].startswith(PROBE_RULE + ":"):
                producer_name = "probe"
            if key not in firing[router]:
                missing += 1  # not a new episode (the condition was already firing), or not routed in time
                continue
            by_producer.setdefault(producer_name, []).append(firing[router][key] - written)
        real = [d for name, delays in by_producer.items() if name != "probe" for d in delays]
        out[router] = {"candidates": _stats(real), "probes": _stats(by_producer.get("probe", [])),
                       "by_producer": {name: _stats(d) for name, d in sorted(by_producer.items()) if name != "probe"},
                       "no_firing_alert": missing}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shopstream.benchmarks.alert_hold")
    parser.add_argument("--rate", type=float, default=2_000)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--warmup", type=float, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    services.up(settings)
    print(measure(settings, args.rate, args.seconds, args.warmup, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
