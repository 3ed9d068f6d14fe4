"""Order processing success and refund response (operators/order_success.py, flows/order_success.py)
against values computed independently from the simulator's events."""

import math

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.order_success import OrderSuccessConfig, build_flow
from operators.order_success import DEFAULT_DECLINES, OrderRules
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import HOUR, MINUTE

NOW_MS = 1_900_000_000_000
RULES = OrderRules(window_ms=5 * MINUTE, outcome_timeout_ms=40 * MINUTE, retry_grace_ms=2 * MINUTE,
                   success_min=0.999, min_orders=20, refund_min_requests=3)
CONFIG = OrderSuccessConfig(max_event_ahead_ms=3_600_000, rules=RULES)


@pytest.fixture(scope="module")
def outage():
    sim = generate(("normal", "payment_outage"), seed=5, duration_ms=3 * HOUR, shoppers=150_000)
    events = [e for e in sim if e.topic in ("orders", "payments")]
    return input_records(events), sim.truth


def run_orders(records, batch_size=300):
    kafka_out, redis_out = [], []
    run_main(build_flow(TestingSource(records, batch_size=batch_size), TestingSink(kafka_out),
                        TestingSink(redis_out), CONFIG, lambda: NOW_MS))
    return [orjson.loads(m.value) for m in kafka_out if m.topic == "metrics"], \
        [c for m in kafka_out if m.topic == "alert-candidates" if "progress" not in (c := orjson.loads(m.value))]


def expected_windows(records):
    """Each created order's outcome straight from its own events, by the README's rule."""
    orders = {}
    for record in records:
        event = orjson.loads(record.value)
        order = orders.setdefault(event["order_id"], {"events": []})
        order["events"].append((event["ts"], record.topic, event))
    windows = {}
    for order in orders.values():
        created = [e for ts, topic, e in order["events"] if topic == "orders" and e["status"] == "created"]
        if not created:
            continue
        created_ts = created[0]["ts"]
        deadline = created_ts + RULES.outcome_timeout_ms
        success_ts, failed_ts = None, None
        for ts, topic, e in sorted(order["events"], key=lambda x: x[0]):
            ok = (topic == "orders" and e["status"] in ("paid", "cancelled")) or \
                 (topic == "payments" and (e["status"] == "succeeded" or
                                           (e["status"] == "failed" and e.get("failure_reason") in DEFAULT_DECLINES)))
            if ok and success_ts is None:
                success_ts = ts
            if topic == "payments" and e["status"] == "failed" and e.get("failure_reason") not in DEFAULT_DECLINES \
                    and failed_ts is None:
                failed_ts = ts
        limit = min(deadline, failed_ts + RULES.retry_grace_ms) if failed_ts is not None else deadline
        failed = success_ts is None or success_ts > limit
        if failed_ts is not None and success_ts is not None and success_ts > failed_ts + RULES.retry_grace_ms:
            failed = True
        start = created_ts - created_ts % RULES.window_ms
        counts = windows.setdefault(start, [0, 0])
        counts[0] += 1
        counts[1] += failed
    return windows


def test_success_rate_per_window_equals_the_independent_count_and_the_outage_alerts(outage):
    records, truth = outage
    metrics, candidates = run_orders(records)
    overall = {m["window_start"]: m for m in metrics if m["metric"] == "order_success" and m["dimension"] == "all"}
    expected = expected_windows(records)
    assert overall and set(overall) == set(expected)
    for start, (orders, failed) in expected.items():
        assert (overall[start]["orders"], overall[start]["failed"]) == (orders, failed), start
    (incident,) = [i for i in truth if type(i).__name__ == "Incident" and i.name == "payment_outage"]
    fired = [c for c in candidates if c["rule"] == "orders.success_rate" and c["active"] and c["key"] == "all"]
    assert fired and incident.start_ts <= fired[0]["ts"] <= incident.end_ts + RULES.window_ms + RULES.retry_grace_ms
    # Orders of the last outcome timeout have no outcome because the run ends, not the shop.
    settled = max(r.timestamp_ms for r in records) - RULES.outcome_timeout_ms
    bad = [s for s, (orders, failed) in expected.items()
           if orders >= RULES.min_orders and failed / orders > 0.001 and s < settled]
    assert bad and all(incident.start_ts - RULES.window_ms <= s <= incident.end_ts for s in bad)


def test_same_outputs_however_batched(outage):
    records, _ = outage
    assert run_orders(records, batch_size=1000) == run_orders(records, batch_size=41)


def order(ts, status, order_id, event_id):
    return orjson.dumps({"event_id": event_id, "ts": ts, "order_id": order_id, "user_id": "u", "status": status,
                         "items": [{"sku": "s", "quantity": 1, "unit_price": 1.0}], "amount": 1.0})


def test_refund_response_percentiles_and_alert():
    from state.kafka import InputRecord
    t0 = 1_731_300_000_000
    responses = [5_000, 12_000, 30_000, 45_000, 90_000, None]  # None: never answered
    values = []
    for n, response in enumerate(responses):
        values.append((t0 + n * 1000, order(t0 + n * 1000, "refund_requested", f"o{n}", f"r{n}")))
        if response is not None:
            values.append((t0 + n * 1000 + response, order(t0 + n * 1000 + response, "refunded", f"o{n}", f"d{n}")))
    values.sort(key=lambda v: v[0])
    records = [InputRecord("orders", 0, i, value, ts) for i, (ts, value) in enumerate(values)]
    metrics, candidates = run_orders(records)
    (report,) = [m for m in metrics if m["metric"] == "refund_response"]
    ranked = sorted(math.inf if r is None else r for r in responses)
    assert report["requests"] == 6 and report["unanswered"] == 1
    assert report["p50_ms"] == ranked[math.ceil(0.5 * 6) - 1] == 30_000
    assert report["p95_ms"] is None  # the unanswered request is the 95th percentile
    (alert,) = [c for c in candidates if c["rule"] == "orders.refund_response"]
    assert alert["active"] and alert["ts"] == report["window_end"] + RULES.refund_wait_ms


def test_an_event_at_the_watermark_comes_before_the_timers_due_then():
    """With no lateness, a partition that has reached the watermark may still deliver another
    event stamped with it. A success landing exactly when a failed payment's retry grace ends
    keeps the order processed ("at its instant, the event first"), whichever partition is read
    first; firing the grace timer at the watermark decided the order failed before the success
    from the slower partition was read."""
    from dataclasses import replace

    from operators.clock import PartitionStatus, Progress
    from operators.events import OrderEvent, PaymentEvent
    from operators.order_success import OrderSuccess

    rules = replace(RULES, lateness_ms=0, min_orders=1)
    t0 = 1_800_000_000_000
    grace_end = t0 + 1_000 + rules.retry_grace_ms

    def order(ts, order_id, event_id):
        return OrderEvent.from_dict({"event_id": event_id, "ts": ts, "order_id": order_id, "user_id": "u",
                                     "status": "created", "items": [{"sku": "s", "quantity": 1, "unit_price": 5.0}],
                                     "amount": 5.0, "channel": "app"})

    def pay(ts, status, payment_id, event_id, reason=None):
        return PaymentEvent.from_dict({"event_id": event_id, "ts": ts, "payment_id": payment_id, "order_id": "o1",
                                       "user_id": "u", "status": status, "amount": 5.0, "method": "card",
                                       **({"failure_reason": reason} if reason else {})})

    created, failed = order(t0, "o1", "e1"), pay(t0 + 1_000, "failed", "p1", "e2", "gateway_timeout")
    later_order = order(grace_end + 5_000, "o2", "e3")  # partition 0 runs ahead
    other_at_grace_end = pay(grace_end, "requested", "p9", "e4")  # partition 1 has reached the grace's end
    succeeded = pay(grace_end, "succeeded", "p2", "e5")  # ... and has another event stamped then

    def progress(latest, caught_up=None):
        p = Progress(dict(latest))
        for source, done in (caught_up or {}).items():
            p.report(PartitionStatus(source[0], source[1], done, 2))
        return p

    def metrics(batches):
        tracker = OrderSuccess(rules)
        tracker.add([], progress({}, {("orders", 0): False, ("payments", 1): False}), NOW_MS)
        out = []
        for events, latest in batches:
            out += tracker.add(events, progress(latest), NOW_MS).metrics
        out += tracker.add([], progress({}, {("orders", 0): True, ("payments", 1): True}), NOW_MS).metrics
        out += tracker.flush().metrics
        return [(m["metric_id"], m.get("failed"), m.get("processed")) for m in out if m["metric"] == "order_success"]

    together = metrics([([created, failed, later_order, other_at_grace_end, succeeded],
                         {("orders", 0): grace_end + 5_000, ("payments", 1): grace_end})])
    success_read_later = metrics([([created, failed, later_order, other_at_grace_end],
                                   {("orders", 0): grace_end + 5_000, ("payments", 1): grace_end}),
                                  ([succeeded], {("payments", 1): grace_end})])
    # o1 processed (its success at the grace's end); o2, never paid, fails on its outcome timeout.
    assert together and all((failed, processed) == (1, 1) for _, failed, processed in together)
    assert success_read_later == together
