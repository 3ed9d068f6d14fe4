"""Benchmarks of the abandoned-cart coupons flow (issue 5's numbers).

    python -m shopstream.benchmarks.coupons throughput [--events 1500000] [--processes 2]
    python -m shopstream.benchmarks.coupons latency [--rate 10000] [--seconds 60] [--delay-s 20]
    python -m shopstream.benchmarks.coupons memory [--shoppers 10000000]
    python -m shopstream.benchmarks.coupons stock [--skus 10000] [--hours 2] [--buckets N] [--repeats 3]

- throughput: a backlog of `double11` clickstream and orders drained by the flow
  (`--processes`, recovery on); events/s from the flow's own consumer lag, next to the
  raw ceiling (plain consumers decoding the same backlog, as many processes), measured
  in the same run with `shopstream.bench`.
- latency: double11 traffic produced live at `--rate` events/s, stamped with the wall
  clock, with a short abandonment delay so carts fall due during the run; for each
  coupon, the time from its deadline (the coupon's `ts`) to its `stream:coupons` entry
  (the entry id is Redis's own clock at the write).
- memory: the pure cart logic (no Kafka) over `--shoppers` distinct synthetic shoppers,
  each adding to a cart, browsing, then ordering, emptying it or leaving it; traced
  bytes per open cart, and traced memory after each tenth of the run (flat = state is
  dropped). A full Kafka run with 10 million shoppers would take hours on this machine.
- stock: what the buckets' private stock ledgers cost, in process (no Kafka): double11
  traffic over a catalogue of `--skus` SKUs (clickstream, orders and inventory) through
  the flow's own triage and every bucket's `CartBook`, CPU time per input event with the
  stock lines and without them (inventory not read, no lines handed to the books: the
  flow before the ledgers), alternated `--repeats` times; then one bucket's ledger at the
  end of the input (traced bytes of an unpickled copy, as a bucket resumed from a
  snapshot holds it, so every string is its own) and the snapshot of one bucket's book
  (pickled bytes and time), with and without the ledger.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import tempfile
import time
import tracemalloc
import pickle
from dataclasses import replace
from pathlib import Path

from shopstream import bench, services
from shopstream.runner import start_flow, stop_all
from shopstream.settings import Settings
from simulators import generate
from simulators.timeline import parse_duration
from state.kafka import CheckedProducer
from state.redis_store import connect
from state.serde import dumps, loads

COUPON_TOPICS = ("clickstream", "orders", "inventory")


def throughput(settings: Settings, events: int, processes: int, seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="shopstream-bench-coupons-") as scratch:
        run = bench._bench_settings(settings, processes, Path(scratch) / "throughput")
        services.create_topics(run)
        try:
            backlog = bench.fill_backlog(run, "double11", events, seed, COUPON_TOPICS)
            ceiling = bench.raw_ceiling(run, backlog, processes)
            result = bench.flow_throughput(run, "coupons", backlog, ceiling)
            client = connect(run)
            issued = client.xlen(run.redis_key("stream:coupons"))
            client.close()
        finally:
            services.delete_topics(run)
    print(f"coupons throughput, {processes} process(es): {backlog.events:,} double11 clickstream+orders events; "
          f"{result.events_per_s:,.0f} events/s (raw ceiling {ceiling:,.0f} events/s, "
          f"{result.share_of_ceiling:.0%}); peak RSS {result.peak_rss_mb} MB; {issued:,} coupons issued",
          flush=True)


def latency(settings: Settings, rate: float, seconds: float, delay_s: int, seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="shopstream-bench-coupons-") as scratch:
        live = replace(bench._bench_settings(settings, 1, Path(scratch) / "latency"), coupon_abandon_after_s=delay_s)
        services.create_topics(live)
        processes = start_flow(live, "coupons", log_dir=live.services_dir / "bench-logs")
        client = connect(live)
        try:
            time.sleep(3)  # let the flow connect before traffic starts
            producer = CheckedProducer(live)
            traffic = (e for e in generate(("double11",), seed=seed, duration_ms=parse_duration("7d"),
                                           shoppers=400_000) if e.topic in COUPON_TOPICS)
            started = time.monotonic()
            sent = 0
            while time.monotonic() - started < seconds:
                due = int((time.monotonic() - started) * rate)
                while sent < due:
                    event = next(traffic)
                    obj = loads(event.value)
                    obj["ts"] = int(time.time() * 1000)
                    producer.produce(event.topic, event.key, dumps(obj))
                    sent += 1
                producer.flush()
                time.sleep(0.005)
            achieved = sent / (time.monotonic() - started)
            entries = client.xrange(live.redis_key("stream:coupons"))
        finally:
            stop_all(processes)
            client.close()
            services.delete_topics(live)
    delays = []
    for entry_id, fields in entries:
        written_ms = int(entry_id.split(b"-")[0])
        delays.append(written_ms - loads(fields[b"coupon"])["ts"])
    if len(delays) < 20:
        raise RuntimeError(f"only {len(delays)} coupons during the latency run; run longer")
    delays.sort()
    print(f"coupons latency at {rate:,.0f} events/s live (produced {achieved:,.0f}/s; abandonment delay {delay_s} s, "
          f"lateness {live.coupon_lateness_ms} ms): deadline -> "
          f"stream:coupons p50 {statistics.median(delays):.0f} ms, p99 {bench._percentile(delays, 0.99):.0f} ms, "
          f"max {delays[-1]:.0f} ms over {len(delays):,} coupons", flush=True)


def _synthetic_shoppers(shoppers: int, per_second: int, seed: int, checkpoints: int, on_checkpoint) -> int:
    """Drive one CartBook with synthetic shoppers on event time; returns how many carts were abandoned."""
    from operators.carts import ADD, ORDER_PAID, REMOVE, VIEW, CartBook, CartEvent, CartRules
    from operators.clock import Progress

    rng = random.Random(seed)
    book = CartBook(CartRules())
    gap_ms = max(1, 1000 // per_second)
    source = ("clickstream", 0)
    ts = 1_763_683_200_000
    batch: list[CartEvent] = []
    decided = 0
    every = max(1, shoppers // checkpoints)
    for n in range(shoppers):
        user = f"u{n:08d}"  # a fresh string per shopper, as decoding gives
        sku = f"sku-{rng.randrange(20_000):05d}"
        category = f"cat-{rng.randrange(40):02d}"
        batch.append(CartEvent(ts, 0, f"e{n}a", user, ADD, sku, category, 99.0 + rng.randrange(300), 1))
        batch.append(CartEvent(ts + 20_000, 0, f"e{n}v", user, VIEW, f"sku-{rng.randrange(20_000):05d}", category,
                               120.0, None))
        fate = rng.random()
        if fate < 0.3:  # ordered a minute later
            batch.append(CartEvent(ts + 60_000, 2, f"e{n}p", user, ORDER_PAID, price=120.0, order_id=f"o{n}"))
        elif fate < 0.45:  # emptied
            batch.append(CartEvent(ts + 40_000, 0, f"e{n}r", user, REMOVE, sku, category, None, None))
        ts += gap_ms
        if len(batch) >= 3000:
            decided += len(book.add(batch, Progress({source: ts}), 0).abandoned)
            batch = []
        if (n + 1) % every == 0:
            on_checkpoint(n + 1, book)
    return decided


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(shoppers: int, per_second: int, traced_shoppers: int, seed: int) -> None:
    """Bytes per open cart with tracemalloc on a shorter run (it slows Python ~8x), then
    the process's resident memory over the full run with `shoppers` distinct shoppers."""
    from state.snapshots import tune_gc_for_long_lived_state

    tune_gc_for_long_lived_state()  # as the flow process does
    traced: list[tuple[int, int, int]] = []
    gc.collect()
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    _synthetic_shoppers(traced_shoppers, per_second, seed, 5, lambda n, book: traced.append(
        (n, book.open_carts(), tracemalloc.get_traced_memory()[0] - baseline)))
    tracemalloc.stop()
    print(f"coupons memory, pure cart logic, {per_second} new shoppers per second of event time "
          f"(30 min abandonment delay; 30% order after a minute, 15% empty the cart, the rest leave it):", flush=True)
    for seen, open_carts, size in traced:
        print(f"  traced, after {seen:>9,} shoppers: {open_carts:>8,} open carts, {size / 2**20:6.1f} MB "
              f"= {size / max(1, open_carts):,.0f} bytes per open cart (carts, deadlines, pending events)",
              flush=True)
    gc.collect()
    started = time.perf_counter()
    rows: list[tuple[int, int, float]] = []
    decided = _synthetic_shoppers(shoppers, per_second, seed + 1, 10,
                                  lambda n, book: rows.append((n, book.open_carts(), _rss_mb())))
    elapsed = time.perf_counter() - started
    for seen, open_carts, rss in rows:
        print(f"  after {seen:>11,} shoppers: {open_carts:>8,} open carts, process RSS {rss:7.1f} MB", flush=True)
    print(f"  {shoppers:,} distinct shoppers, {decided:,} carts abandoned, in {elapsed:.0f} s", flush=True)


def _stock_input(skus: int, hours: float, shoppers: int, seed: int) -> list:
    from simulators.profile import PROFILE
    from simulators.testing import input_records

    sim = generate(("double11",), seed=seed, duration_ms=int(hours * 3_600_000), shoppers=shoppers,
                   profile=replace(PROFILE, catalog_size=skus))
    return input_records(e for e in sim if e.topic in ("clickstream", "orders", "inventory"))


def _drive_books(records: list, config, with_stock: bool, batch_size: int = 1000) -> tuple[float, list]:
    """The flow's triage and every bucket's book over `records`, in input batches, as one
    worker would run them with a fixed wall clock; returns (CPU seconds, the books)."""
    from flows.coupons import triage_batch
    from operators.carts import CartBook

    books = [CartBook(config.rules) for _ in range(config.buckets)]
    now_ms = records[-1].timestamp_ms
    gc.collect()
    started = time.process_time()
    for start in range(0, len(records), batch_size):
        for key, batch in triage_batch(records[start:start + batch_size], config, now_ms):
            books[int(key)].add(batch.events, batch.progress, now_ms, batch.stock_lines if with_stock else ())
    return time.process_time() - started, books


def stock(skus: int, hours: float, shoppers: int, buckets: int | None, repeats: int, seed: int) -> None:
    from flows.coupons import CouponsConfig
    from state.snapshots import tune_gc_for_long_lived_state

    tune_gc_for_long_lived_state()  # as the flow process does
    config = CouponsConfig.from_settings(Settings.from_env())
    if buckets:
        config = replace(config, buckets=buckets)
    records = _stock_input(skus, hours, shoppers, seed)
    without_inventory = [r for r in records if r.topic != "inventory"]
    counts = {topic: sum(r.topic == topic for r in records) for topic in ("clickstream", "orders", "inventory")}
    print(f"coupons stock ledgers: double11, {hours:g} h of event time, {skus:,} SKUs in the catalogue, "
          f"{config.buckets} buckets; {counts['clickstream']:,} clicks, {counts['orders']:,} order events, "
          f"{counts['inventory']:,} inventory events", flush=True)
    with_cpu, without_cpu = [], []
    books = None
    for _ in range(repeats):  # alternated, so a change in the machine's load hits both
        seconds, books = _drive_books(records, config, with_stock=True)
        with_cpu.append(seconds)
        without_cpu.append(_drive_books(without_inventory, config, with_stock=False)[0])
    events = len(without_inventory)  # per click or order event: what the flow read before
    per_with = statistics.median(with_cpu) / events * 1e6
    per_without = statistics.median(without_cpu) / events * 1e6
    print(f"  CPU per click/order event (triage + {config.buckets} books), median of {repeats}: "
          f"{per_without:.2f} us without the ledgers ({', '.join(f'{s:.2f}' for s in without_cpu)} s), "
          f"{per_with:.2f} us with them ({', '.join(f'{s:.2f}' for s in with_cpu)} s, inventory included): "
          f"x{per_with / per_without:.2f}, +{per_with - per_without:.2f} us", flush=True)
    book = books[0]
    ledger = book.stock
    known = sum(1 for name in ledger.skus if ledger.level(name) is not None)
    blob = pickle.dumps(ledger, protocol=pickle.HIGHEST_PROTOCOL)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    copy = pickle.loads(blob)
    ledger_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del copy
    print(f"  one bucket's ledger at the end: {len(ledger.skus):,} SKUs ({known:,} stocked), "
          f"{ledger.open_orders():,} orders remembered; {ledger_bytes / 2**20:.1f} MB traced "
          f"= {ledger_bytes / max(1, len(ledger.skus)):,.0f} bytes per SKU; x{config.buckets} buckets: "
          f"{ledger_bytes * config.buckets / 2**20:.0f} MB per flow", flush=True)
    stocked, bare = book, pickle.loads(pickle.dumps(book))
    bare.stock = type(ledger)(ledger.rules)
    for name, subject in (("with the ledger", stocked), ("without", bare)):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            size = len(pickle.dumps(subject, protocol=pickle.HIGHEST_PROTOCOL))
            times.append(time.perf_counter() - started)
        print(f"  snapshot of one bucket's book {name}: {size / 2**20:.2f} MB pickled in "
              f"{statistics.median(times) * 1000:.0f} ms (median of {repeats}; {book.open_carts():,} open carts)",
              flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--events", type=int, default=1_500_000)
    t.add_argument("--processes", type=int, default=2)
    lat = sub.add_parser("latency")
    lat.add_argument("--rate", type=float, default=10_000)
    lat.add_argument("--seconds", type=float, default=60)
    lat.add_argument("--delay-s", type=int, default=20, help="abandonment delay for the run")
    mem = sub.add_parser("memory")
    mem.add_argument("--shoppers", type=int, default=10_000_000)
    mem.add_argument("--per-second", type=int, default=100, help="new shoppers per second of event time")
    mem.add_argument("--traced-shoppers", type=int, default=300_000, help="shoppers of the traced run")
    st = sub.add_parser("stock")
    st.add_argument("--skus", type=int, default=10_000, help="SKUs in the simulated catalogue")
    st.add_argument("--hours", type=float, default=2.0, help="hours of double11 event time")
    st.add_argument("--shoppers", type=int, default=100_000)
    st.add_argument("--buckets", type=int, default=None, help="cart buckets (default: SHOPSTREAM_COUPON_BUCKETS)")
    st.add_argument("--repeats", type=int, default=3)
    for p in (t, lat, mem, st):
        p.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.what == "memory":
        memory(args.shoppers, args.per_second, args.traced_shoppers, args.seed)
        return
    if args.what == "stock":
        stock(args.skus, args.hours, args.shoppers, args.buckets, args.repeats, args.seed)
        return
    settings = Settings.from_env()
    services.up(settings)
    if args.what == "throughput":
        throughput(settings, args.events, args.processes, args.seed)
    else:
        latency(settings, args.rate, args.seconds, args.delay_s, args.seed)


if __name__ == "__main__":
    main()
