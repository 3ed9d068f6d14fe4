"""The order_success flow end to end on the real broker and Redis, run the Bytewax way with
recovery by the runner: the success rate per window equals a count made independently
from the orders' own events, `orders.success_rate` fires inside the payment outage of the
simulator's truth, a kill -9 mid-stream changes no result (the restarted flow catches up
on the replayed tail and the rest, and gives what an uninterrupted run gives),
and the refund response percentiles equal the nearest-rank percentiles of the shop's own
request-to-refund times."""

from __future__ import annotations

import math
import signal
from dataclasses import replace

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.order_success import ORDER_TOPICS, OrderSuccessConfig, build_flow
from shopstream.runner import start_flow, stop_all
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import DAY, HOUR, parse_start
from tests.integration.kafka_helpers import produce, read_topic, wait_for_snapshot, wait_until
from tests.unit.test_order_success import expected_windows

pytestmark = pytest.mark.integration

NOW_MS = 1_900_000_000_000  # the in-process reference run's wall clock: after the run, so the end flushes all


@pytest.fixture(scope="module")
def outage():
    """Three hours to past the Double 11 midnight with a payment outage: ~20,000 orders and payments."""
    sim = generate(("double11", "payment_outage"), seed=5, start_ms=parse_start("2024-11-10T22:00+08:00"),
                   duration_ms=3 * HOUR, shoppers=300_000)
    events = [e for e in sim if e.topic in ORDER_TOPICS]
    (incident,) = [r for r in sim.truth if r.kind == "incident" and r.name == "payment_outage"]
    return events, incident


@pytest.fixture(scope="module")
def refunds():
    """Four normal days: refunds are requested days after payment, answered in seconds."""
    return [e for e in generate(("normal",), seed=8, duration_ms=4 * DAY, shoppers=100_000) if e.topic == "orders"]


def reference_run(events, config: OrderSuccessConfig) -> list[dict]:
    """The same flow in process on the whole input, uninterrupted, to its end."""
    out: list = []
    run_main(build_flow(TestingSource(input_records(events), batch_size=500), TestingSink(out), TestingSink([]),
                        config, lambda: NOW_MS))
    return [orjson.loads(m.value) for m in out]


def outputs(settings, topic: str) -> list[bytes]:
    return [value for _, value in read_topic(settings, topic)]


def metrics_by_id(settings) -> dict[str, dict]:
    """Every metric once by id; a replayed one must repeat its body exactly."""
    seen: dict[str, bytes] = {}
    for value in outputs(settings, "metrics"):
        record = orjson.loads(value)
        assert seen.setdefault(record["metric_id"], value) == value, record["metric_id"]
    return {metric_id: orjson.loads(value) for metric_id, value in seen.items()}


def test_success_rate_and_outage_alert_across_a_kill_9(settings, redis_client, outage):
    events, incident = outage
    # The simulated shop is far smaller than Double 11's: alert on windows of 20+ orders. A
    # minute of lateness: the seconds the first half sits caught up (its clock then runs on
    # the wall clock) must not make the first events of the second half late.
    settings = replace(settings, order_success_min_orders=20, allowed_lateness_s=60)
    config = OrderSuccessConfig.from_settings(settings)
    reference = reference_run(events, config)
    half = len(events) // 2
    for topic in ORDER_TOPICS:
        produce(settings, topic, [(e.key, e.value) for e in events[:half] if e.topic == topic])

    processes = start_flow(settings, "order_success")
    wait_until(lambda: metrics_by_id(settings), 60, "the first final window")
    wait_for_snapshot(settings, "order_success")
    for proc in processes:
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()
    for topic in ORDER_TOPICS:
        produce(settings, topic, [(e.key, e.value) for e in events[half:] if e.topic == topic])
    # Only windows whose every order is decided by the last event time can be final in a
    # live run (the rest wait for their outcome timeout on the wall clock).
    last_ts = max(e.ts for e in events) - settings.allowed_lateness_s * 1000
    due = {m["metric_id"]: m for m in reference if m.get("metric") == "order_success" and m["final_ts"] <= last_ts}

    processes = start_flow(settings, "order_success")
    try:
        wait_until(lambda: set(due) <= set(metrics_by_id(settings)), 180, "every final window")
        assert all(p.popen.poll() is None for p in processes)
    finally:
        stop_all(processes)

    reported = metrics_by_id(settings)
    by_id = {m["metric_id"]: m for m in reference if "metric_id" in m}
    assert all(reported[i] == by_id[i] for i in reported)  # the same results as an uninterrupted run
    # ... and those equal a count made straight from each order's events.
    expected = expected_windows(input_records(events))
    overall = {m["window_start"]: m for m in reported.values()
               if m["metric"] == "order_success" and m["dimension"] == "all"}
    assert len(overall) >= 20
    for start, window in overall.items():
        assert (window["orders"], window["failed"]) == tuple(expected[start]), start
        channels = [m for m in reported.values() if m["metric"] == "order_success"
                    and m["dimension"] == "channel" and m["window_start"] == start]
        assert sum(m["orders"] for m in channels) == window["orders"]
        assert sum(m["failed"] for m in channels) == window["failed"]

    # Progress markers (the alert router's hold) follow each run's batching; candidates do not.
    candidates = {v for v in outputs(settings, "alert-candidates") if "progress" not in orjson.loads(v)}
    assert candidates and all(orjson.loads(v) in reference for v in candidates)  # replays repeat a candidate exactly
    fired = sorted((orjson.loads(v) for v in candidates), key=lambda c: c["ts"])
    fired = [c for c in fired if c["rule"] == "orders.success_rate" and c["key"] == "all" and c["active"]]
    grace = settings.order_window_s * 1000 + settings.order_retry_grace_s * 1000
    assert fired and incident.start_ts <= fired[0]["ts"] <= incident.end_ts + grace
    # Redis holds the newest window reported (the two sinks of one epoch may part at a kill).
    latest = orjson.loads(redis_client.get(settings.redis_key("orders:success:all:all")))
    assert by_id[latest["metric_id"]] == latest
    assert latest["window_start"] >= max(m["window_start"] for m in due.values() if m["dimension"] == "all")


def test_refund_response_percentiles_equal_the_shops_own_response_times(settings, redis_client, refunds):
    settings = replace(settings, order_window_s=3600, refund_min_requests=3)  # hourly: several requests a window
    produce(settings, "orders", [(e.key, e.value) for e in refunds])
    processes = start_flow(settings, "order_success")
    window_ms, wait_ms = settings.order_window_s * 1000, settings.refund_wait_s * 1000
    requested: dict[str, int] = {}
    answered: dict[str, int] = {}
    for e in refunds:
        order = orjson.loads(e.value)
        if order["status"] == "refund_requested":
            requested.setdefault(order["order_id"], order["ts"])
        elif order["status"] == "refunded":
            answered.setdefault(order["order_id"], order["ts"])
    last_ts = max(e.ts for e in refunds) - settings.allowed_lateness_s * 1000
    windows: dict[int, list[float]] = {}
    for order_id, ts in requested.items():
        start = ts - ts % window_ms
        if start + window_ms + wait_ms <= last_ts:
            done = answered.get(order_id)
            windows.setdefault(start, []).append(math.inf if done is None else done - ts)
    assert sum(map(len, windows.values())) >= 100

    def reports():
        return {m["window_start"]: m for m in metrics_by_id(settings).values() if m["metric"] == "refund_response"}

    try:
        wait_until(lambda: set(windows) <= set(reports()), 180, "every refund window")
    finally:
        stop_all(processes)
    reported = reports()
    for start, times in windows.items():
        times.sort()
        rank = {pct: times[max(0, math.ceil(pct / 100 * len(times)) - 1)] for pct in (50, 95, 99)}
        report = reported[start]
        assert report["requests"] == len(times) and report["answered"] == sum(t != math.inf for t in times)
        assert [report[f"p{pct}_ms"] for pct in (50, 95, 99)] == \
               [None if rank[pct] == math.inf else int(rank[pct]) for pct in (50, 95, 99)], start
    # The shop answers within the plan's 60 s: no refund alert.
    candidates = [orjson.loads(v) for v in outputs(settings, "alert-candidates")]
    assert not [c for c in candidates if c.get("rule") == "orders.refund_response"]  # markers have no rule
    latest = orjson.loads(redis_client.get(settings.redis_key("orders:refunds")))
    assert latest["window_start"] >= max(windows) and latest == reported.get(latest["window_start"], latest)
