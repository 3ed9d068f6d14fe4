"""Benchmarks of the stock flow on real Kafka and Redis (issue 8's numbers).

    python -m shopstream.benchmarks.stock [--lines 500000] [--latency-rate 50,500] [--latency-seconds 30]

- Throughput: a backlog of `flash_sale` orders and inventory (a two-hour simulated
  run, repeated back to back with new ids until it is big enough), drained by one flow
  process; order lines per second from the flow's own consumer lag, next to the raw
  ceiling (plain consumers decoding the same backlog), with `shopstream.bench`.
- Latency: the flash sale's orders replayed live, stamped with the wall clock, at
  the given rates; for every order event, the time until `stock:{sku}` in Redis
  shows a change at or after its event time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from shopstream import bench, runner, services
from shopstream.settings import Settings
from simulators import generate
from simulators.timeline import HOUR
from state.kafka import CheckedProducer
from state.redis_store import connect
from state.serde import dumps, loads

STOCK_TOPICS = ("orders", "inventory")


def flash_sale_events(seed: int = 1) -> tuple[list[tuple[str, bytes, dict]], int, int]:
    """Orders and inventory of a two-hour flash-sale run; and the sale's start and end."""
    sim = generate(("flash_sale",), seed=seed, duration_ms=2 * HOUR, shoppers=400_000)
    events = [(e.topic, e.key, loads(e.value)) for e in sim if e.topic in STOCK_TOPICS]
    sale = next(t for t in sim.truth if t.kind == "incident")
    return events, sale.start_ts, sale.end_ts


def _copy(obj: dict, topic: str, n: int, shift_ms: int) -> dict:
    """The same event in repeat `n` of the run, `n * shift_ms` later: the same SKUs,
    new order and event ids (the opening counts of each repeat re-base the ledger)."""
    out = dict(obj, event_id=f"{obj['event_id']}~{n}", ts=obj["ts"] + n * shift_ms)
    if topic == "orders":
        out["order_id"] = f"{obj['order_id']}~{n}"
    return out


def fill_stock_backlog(settings: Settings, target_lines: int, seed: int) -> tuple[bench.Backlog, int]:
    events, _, _ = flash_sale_events(seed)
    producer = CheckedProducer(settings)
    started = time.perf_counter()
    sent = lines = copy = 0
    while lines < target_lines:
        for topic, key, obj in events:
            value = obj if copy == 0 else _copy(obj, topic, copy, 2 * HOUR)
            producer.produce(topic, key, dumps(value))
            sent += 1
            if topic == "orders":
                lines += len({(i["sku"], i.get("pool", "spot")) for i in value["items"]})
        copy += 1
    producer.flush()
    seconds = time.perf_counter() - started
    ends = {tp: end for tp, end in bench._end_offsets(settings).items()
            if tp[0] in {settings.topic(t) for t in STOCK_TOPICS}}
    return bench.Backlog(sent, seconds, ends), lines


def stock_latency(settings: Settings, rate: float, seconds: float, seed: int) -> dict:
    """Live flash-sale orders at `rate` events/s; event -> `stock:{sku}` changed in Redis."""
    events, start, end = flash_sale_events(seed)
    opening = [(t, k, o) for t, k, o in events if t == "inventory" and o["ts"] <= start]
    sale = [(t, k, o) for t, k, o in events if start <= o["ts"] < end]
    processes = runner.start_flow(settings, "stock", log_dir=settings.services_dir / "bench-logs")
    client = connect(settings)
    producer = CheckedProducer(settings)
    pending: dict[str, list[int]] = {}  # sku -> event times not yet visible
    delays: list[float] = []
    try:
        now = int(time.time() * 1000)
        for topic, key, obj in opening:  # the opening counts, so the ledger starts from the truth
            producer.produce(topic, key, dumps(dict(obj, ts=now)))
        producer.flush()
        time.sleep(3)
        started = time.monotonic()
        sent = 0
        copy = 0
        while time.monotonic() - started < seconds:
            due = int((time.monotonic() - started) * rate)
            while sent < due:
                topic, key, obj = sale[sent % len(sale)]
                if sent and sent % len(sale) == 0:
                    copy += 1
                ts = int(time.time() * 1000)
                value = dict(obj, ts=ts)
                if copy:  # a second pass over the sale: new order ids, the same (now empty) SKUs
                    value["event_id"] = f"{obj['event_id']}~{copy}"
                    if topic == "orders":
                        value["order_id"] = f"{obj['order_id']}~{copy}"
                producer.produce(topic, key, dumps(value))
                sent += 1
                if topic == "orders":
                    for item in value["items"]:
                        pending.setdefault(item["sku"], []).append(ts)
            producer.flush()
            _observe(client, settings, pending, delays)
        settle = time.monotonic() + 5
        while pending and time.monotonic() < settle:
            _observe(client, settings, pending, delays)
    finally:
        runner.stop_all(processes)
        client.close()
    delays.sort()
    return {
        "rate": rate,
        "samples": len(delays),
        "unseen": sum(len(v) for v in pending.values()),
        "p50_ms": round(statistics.median(delays), 1),
        "p99_ms": round(bench._percentile(delays, 0.99), 1),
        "max_ms": round(delays[-1], 1),
    }


def _observe(client, settings: Settings, pending: dict[str, list[int]], delays: list[float]) -> None:
    skus = [sku for sku, waiting in pending.items() if waiting]
    if not skus:
        time.sleep(0.001)
        return
    pipe = client.pipeline(transaction=False)
    for sku in skus:
        pipe.hget(settings.redis_key(f"stock:{sku}"), "updated_ts")
    seen_at = time.time() * 1000
    for sku, updated in zip(skus, pipe.execute()):
        if updated is None:
            continue
        updated_ts = int(updated)
        waiting = pending[sku]
        visible = [ts for ts in waiting if ts <= updated_ts]
        if visible:
            delays.extend(seen_at - ts for ts in visible)
            pending[sku] = [ts for ts in waiting if ts > updated_ts]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=500_000, help="order lines in the throughput backlog")
    parser.add_argument("--latency-rate", default="50,500",
                        help="order events/s, comma list (flash sale peak ~50); empty: throughput only")
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    services.up(settings)
    with tempfile.TemporaryDirectory(prefix="shopstream-bench-stock-") as scratch:
        one = bench._bench_settings(settings, 1, Path(scratch) / "throughput")
        services.create_topics(one)
        try:
            backlog, lines = fill_stock_backlog(one, args.lines, args.seed)
            ceiling = bench.raw_ceiling(one, backlog, 1)
            result = bench.flow_throughput(one, "stock", backlog, ceiling)
        finally:
            services.delete_topics(one)
        per_event = lines / backlog.events
        print(f"stock throughput, 1 process: {backlog.events:,} events ({lines:,} order lines) from flash_sale; "
              f"{result.events_per_s:,.0f} events/s = {result.events_per_s * per_event:,.0f} lines/s "
              f"(raw ceiling {ceiling:,.0f} events/s, {result.share_of_ceiling:.0%}); "
              f"peak RSS {result.peak_rss_mb} MB", flush=True)
        for n, rate in enumerate(float(r) for r in args.latency_rate.split(",") if r.strip()):
            live = replace(bench._bench_settings(settings, 1, Path(scratch) / f"latency{n}"), snapshot_interval_s=5)
            services.create_topics(live)
            try:
                latency = stock_latency(live, rate, args.latency_seconds, args.seed)
            finally:
                services.delete_topics(live)
            print(f"stock latency at {rate:,.0f} order+inventory events/s: order event -> stock:{{sku}} in Redis "
                  f"p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms, max {latency['max_ms']} ms "
                  f"over {latency['samples']:,} order lines ({latency['unseen']} unseen)", flush=True)


if __name__ == "__main__":
    main()
