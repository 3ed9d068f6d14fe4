"""Traffic flow quality and cost, in process, on the simulator's ring truth.

    python -m shopstream.benchmarks.traffic [--seeds 23,31,41] [--hours 4] [--shoppers 80000]
    python -m shopstream.benchmarks.traffic memory [--accounts 1000000] [--ordering-share 0.1]
    python -m shopstream.benchmarks.traffic rate [--seeds 23] [--passes 3]

Quality: flagged orders and sessions against the truth (precision, recall), legitimate
accounts behind shared NAT/carrier addresses flagged, a naive "3+ accounts on one IP"
rule for contrast, per brushing ring the event time from its 10th fake order to its first
flag (the tick that emitted it; 0 = flagged before its 10th order), and per fake order the
event time from its payment to its flag. Cost: events per second through the pure engine.
Rate: the pure engine's events per second of CPU time (`time.process_time`, less moved by
other work on a shared machine than wall time), per pass over the same decoded events.
Memory: the process's resident growth (live state) and the snapshot's pickled size after
N ordinary accounts with their own IP and device, one session each, over a day; with
`--ordering-share`, that share of them also places and pays one order in its session
(a payment with its own card, device and IP): an account that orders keeps a profile
for the link horizon, one that only clicks and shares nothing keeps only graph links.
"""

from __future__ import annotations

import argparse
import collections
import gc
import pickle
import time

import orjson

from operators.events import ClickEvent, OrderEvent, OrderItem, PaymentEvent
from operators.traffic_engine import TrafficConfig, TrafficEngine
from simulators import generate
from simulators.timeline import HOUR
from state.serde import decode_event

TOPICS = ("clickstream", "orders", "payments")


def quality(seed: int, hours: float, shoppers: int, batch: int = 200) -> dict:
    sim = generate(("brushing", "click_farm"), seed=seed, duration_ms=int(hours * HOUR), shoppers=shoppers)
    raw = [(e.topic, e.value) for e in sim if e.topic in TOPICS]
    events = [decode_event(topic, value) for topic, value in raw]
    engine = TrafficEngine(TrafficConfig())
    flags, emitted_at = [], {}
    started = time.perf_counter()
    for i in range(0, len(events), batch):
        out = engine.process(events[i:i + batch], 0)
        for flag in out.flags:
            emitted_at[flag.flag_id] = engine.ticked_ts
        flags += out.flags
    out = engine.flush()
    for flag in out.flags:
        emitted_at[flag.flag_id] = engine.ticked_ts
    flags += out.flags
    seconds = time.perf_counter() - started

    truth = sim.truth
    fake_orders = {r.order_id: r for r in truth if r.kind == "fake_order"}
    fake_sessions = {r.session_id for r in truth if r.kind == "fake_session"}
    members = {r.user_id for r in truth if r.kind == "ring_member"}
    flagged_orders = {f.order_id for f in flags if f.kind == "brushing"}
    flagged_sessions = {f.session_id for f in flags if f.kind == "click_farm"}
    shared = next(r for r in truth if r.kind == "incident" and r.name == "shared_addresses").detail
    shared_ips = set(shared["nat_ips"]) | set(shared["carrier_ips"])
    accounts_per_ip = collections.defaultdict(set)
    for topic, value in raw:
        if topic == "clickstream":
            click = orjson.loads(value)
            if click.get("ip"):
                accounts_per_ip[click["ip"]].add(click["user_id"])
    behind_shared = set().union(*(accounts_per_ip[ip] for ip in shared_ips if ip in accounts_per_ip)) - members
    flagged_users = {f.user_id for f in flags}
    naive = set().union(*(users for users in accounts_per_ip.values() if len(users) >= 3))

    latencies = []
    by_ring = collections.defaultdict(list)
    for order in fake_orders.values():
        by_ring[order.ring_id].append(order)
    for ring_orders in by_ring.values():
        ring_orders.sort(key=lambda o: o.ts)
        if len(ring_orders) < 10:
            continue
        tenth = ring_orders[9].ts
        first = min((emitted_at[f"tf-o-{o.order_id}"] for o in ring_orders if o.order_id in flagged_orders),
                    default=None)
        latencies.append(None if first is None else max(0, first - tenth) / 1000)

    delays = sorted(max(0, emitted_at[f"tf-o-{o.order_id}"] - o.paid_ts) / 1000
                    for o in fake_orders.values() if o.order_id in flagged_orders)

    def quantile(q: float) -> float | None:
        return None if not delays else delays[min(len(delays) - 1, int(q * len(delays)))]

    def ratio(a: int, b: int) -> float:
        return round(a / b, 4) if b else 0.0

    return {
        "seed": seed, "events": len(events), "events_per_s": round(len(events) / seconds),
        "fake_orders": len(fake_orders),
        "order_precision": ratio(len(flagged_orders & set(fake_orders)), len(flagged_orders)),
        "order_recall": ratio(len(flagged_orders & set(fake_orders)), len(fake_orders)),
        "fake_sessions": len(fake_sessions),
        "session_precision": ratio(len(flagged_sessions & fake_sessions), len(flagged_sessions)),
        "session_recall": ratio(len(flagged_sessions & fake_sessions), len(fake_sessions)),
        "behind_shared_addresses": len(behind_shared),
        "shared_flagged_share": ratio(len(behind_shared & flagged_users), len(behind_shared)),
        "naive_same_ip_flags_shared_share": ratio(len(behind_shared & naive), len(behind_shared)),
        "ring_first_flag_after_10th_order_s": latencies,
        "order_paid_to_flag_s": {"p50": quantile(0.5), "p99": quantile(0.99), "max": quantile(1.0)},
    }


def memory(accounts: int, ordering_share: float = 0.0) -> dict:
    gc.collect()
    baseline = _rss_bytes()
    engine = TrafficEngine(TrafficConfig())
    t0 = 1_731_000_000_000
    step = max(1, 86_400_000 // accounts)  # a day of ordinary traffic, one session each
    every = round(1 / ordering_share) if ordering_share > 0 else 0
    batch = []
    for i in range(accounts):
        ts, user, session = t0 + i * step, f"u{i}", f"s{i}"
        ip, device_id, sku = f"{10 + i % 200}.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", f"dev-{i}", f"sku-{i % 5000}"
        batch.append(ClickEvent(event_id=f"e{i}", ts=ts, user_id=user, session_id=session,
                                type="product_view", channel="app", region="east", device="android",
                                sku=sku, ip=ip, device_id=device_id))
        if every and i % every == 0:
            items = (OrderItem(sku, 1, 99.0),)
            order = dict(order_id=f"o{i}", user_id=user, items=items, amount=99.0, session_id=session)
            payment = dict(payment_id=f"p{i}", order_id=f"o{i}", user_id=user, amount=99.0, method="card",
                           card_fingerprint=f"card-{i}", device_id=device_id, ip=ip,
                           account_created_ts=t0 - 400 * 86_400_000)
            batch.append(OrderEvent(event_id=f"oc{i}", ts=ts + 20_000, status="created", **order))
            batch.append(PaymentEvent(event_id=f"pr{i}", ts=ts + 21_000, status="requested", **payment))
            batch.append(PaymentEvent(event_id=f"ps{i}", ts=ts + 22_000, status="succeeded", **payment))
            batch.append(OrderEvent(event_id=f"op{i}", ts=ts + 22_500, status="paid", **order))
        if len(batch) >= 5000:
            engine.process(batch, 0)
            batch = []
    engine.process(batch, 0)
    engine.flush()
    batch = None
    gc.collect()
    live = _rss_bytes() - baseline
    size = len(pickle.dumps(engine, protocol=pickle.HIGHEST_PROTOCOL))
    return {"accounts": accounts, "ordering_share": ordering_share, "live_state_bytes": live, "live_bytes_per_account": round(live / accounts),
            "snapshot_bytes": size, "snapshot_bytes_per_account": round(size / accounts), **engine.sizes()}


def rate(seed: int, hours: float, shoppers: int, passes: int, batch: int = 200) -> dict:
    sim = generate(("brushing", "click_farm"), seed=seed, duration_ms=int(hours * HOUR), shoppers=shoppers)
    events = [decode_event(e.topic, e.value) for e in sim if e.topic in TOPICS]
    rates = []
    for _ in range(passes):
        engine = TrafficEngine(TrafficConfig())
        started = time.process_time()
        for i in range(0, len(events), batch):
            engine.process(events[i:i + batch], 0)
        engine.flush()
        rates.append(round(len(events) / (time.process_time() - started)))
    return {"seed": seed, "events": len(events), "cpu_events_per_s": rates,
            "median": sorted(rates)[len(rates) // 2]}


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m shopstream.benchmarks.traffic")
    parser.add_argument("what", nargs="?", default="quality", choices=("quality", "memory", "rate"))
    parser.add_argument("--seeds", default="23,31,41")
    parser.add_argument("--hours", type=float, default=4)
    parser.add_argument("--shoppers", type=int, default=80_000)
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--ordering-share", type=float, default=0.0)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    if args.what == "memory":
        print(orjson.dumps(memory(args.accounts, args.ordering_share)).decode())
        return
    for seed in (int(s) for s in args.seeds.split(",")):
        if args.what == "rate":
            print(orjson.dumps(rate(seed, args.hours, args.shoppers, args.passes)).decode())
        else:
            print(orjson.dumps(quality(seed, args.hours, args.shoppers)).decode())


if __name__ == "__main__":
    main()
