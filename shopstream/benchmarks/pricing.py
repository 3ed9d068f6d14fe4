"""In-process benchmark of the price watch and the order-success tracker (issue 23).

    python -m shopstream.benchmarks.pricing [--skus 2000] [--hours 2]

Runs the pricing flow on Bytewax's TestingSource (one process, one worker; no Kafka or
Redis, so these are the flow's own ceilings) over a `price_war` feed for `--skus` SKUs
plus a normal shop's orders and inventory, and the order_success flow over the shop's
orders and payments. Prints events per second (wall and CPU time: the machine is
shared, CPU time moves less with its load) and the event-time delay of every undercut
alert after the rival's price change (p50/p99/max). The collector is tuned as in every
flow process (`tune_gc_for_long_lived_state`).
"""

from __future__ import annotations

import argparse
import statistics
import time

import orjson
from bytewax.testing import TestingSink, TestingSource, run_main

from flows import order_success, pricing
from simulators import generate
from simulators.prices import price_feed
from simulators.testing import input_records
from simulators.timeline import HOUR
from state.snapshots import tune_gc_for_long_lived_state

NOW_MS = 1_900_000_000_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skus", type=int, default=2000)
    parser.add_argument("--hours", type=float, default=2.0)
    args = parser.parse_args()
    duration = int(args.hours * HOUR)
    shop = list(generate(("normal", "payment_outage"), seed=11, duration_ms=duration, shoppers=200_000))
    skus = [(f"sku-{n:05d}", 20.0 + (n * 7919) % 2000) for n in range(args.skus)]
    feed, truth = price_feed(skus, shop[0].ts, duration, seed=11, undercuts=50, promo_skus=20)
    stock = [e for e in shop if e.topic in ("orders", "inventory")]
    records = input_records(sorted(stock + feed, key=lambda e: e.ts))
    out: list = []
    flow = pricing.build_flow(TestingSource(records, batch_size=1000), TestingSink(out), TestingSink([]),
                              pricing.PricingConfig(3_600_000), lambda: NOW_MS)
    tune_gc_for_long_lived_state()  # as `flows.pricing.flow_from_settings` does
    started, cpu_started = time.perf_counter(), time.process_time()
    run_main(flow)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    fired = {}
    for message in out:
        if message.topic == "alert-candidates":
            candidate = orjson.loads(message.value)
            if candidate["rule"] == "price.undercut" and candidate["active"]:
                fired.setdefault(candidate["key"], candidate["ts"])
    delays = sorted((fired[u.sku] - u.ts) / 1000 for u in truth.undercuts if u.sku in fired)
    print(f"pricing: {len(feed):,} price events + {len(stock):,} order/inventory events in {elapsed:.2f} s: "
          f"{len(feed) / elapsed:,.0f} price events/s ({len(records) / elapsed:,.0f} events/s in all), one worker; "
          f"CPU {cpu:.2f} s: {len(feed) / cpu:,.0f} price events per CPU second")
    print(f"undercut alerts: {len(fired)} of {len(truth.undercuts)}; event-time delay after the rival's change: "
          f"p50 {statistics.median(delays):.0f} s, p99 {delays[min(len(delays) - 1, int(0.99 * len(delays)))]:.0f} s, "
          f"max {delays[-1]:.0f} s")
    orders = input_records([e for e in shop if e.topic in ("orders", "payments")])
    started = time.perf_counter()
    run_main(order_success.build_flow(TestingSource(orders, batch_size=1000), TestingSink([]), TestingSink([]),
                                      order_success.OrderSuccessConfig(3_600_000), lambda: NOW_MS))
    elapsed = time.perf_counter() - started
    print(f"order_success: {len(orders):,} order/payment events in {elapsed:.2f} s: {len(orders) / elapsed:,.0f} events/s")


if __name__ == "__main__":
    main()
