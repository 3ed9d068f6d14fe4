"""The traffic flow on the real broker and Redis, run by the runner with recovery: the
flags and ring keys it writes are the ones the same input gives on TestingSource, also
after kill -9 while catching up; the flagged figures per window too; and a flagged ring
member gets no coupon."""

from __future__ import annotations

import signal
import time
from dataclasses import replace

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.traffic import build_flow, flow_config
from operators.coupons import Coupon
from shopstream.runner import start_flow, stop_all
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import HOUR
from state.coupons import FLAGGED, CouponIssuer, CouponRules
from state.kafka import CheckedProducer
from tests.integration.kafka_helpers import read_topic, wait_until

pytestmark = pytest.mark.integration

TOPICS = ("clickstream", "orders", "payments")


@pytest.fixture
def traffic_settings(settings):
    # Short session idle time: after the input ends, only wall time moves the clock.
    return replace(settings, traffic_session_idle_s=20)


@pytest.fixture(scope="module")
def scenario():
    sim = generate(("brushing", "click_farm"), seed=31, duration_ms=HOUR, shoppers=40_000)
    return sim, [e for e in sim if e.topic in TOPICS]


def expected_outputs(settings, events) -> tuple[dict[str, dict], dict[str, dict]]:
    """What the same input gives in-process, the flow's own logic on TestingSource: the flags,
    and the last statement of each window's flagged figures."""
    out, _ = [], []
    run_main(build_flow(TestingSource(input_records(events), batch_size=500), TestingSink(out), TestingSink([]),
                        flow_config(settings)))
    flags = {m.key.decode(): orjson.loads(m.value) for m in out if m.topic == "traffic-flags"}
    return flags, {m.key.decode(): orjson.loads(m.value) for m in out if m.topic == "metrics"}


def flags_on_topic(settings) -> dict[str, dict]:
    return {key.decode(): orjson.loads(value) for key, value in read_topic(settings, "traffic-flags")}


def windows_on_topic(settings) -> dict[str, dict]:
    """The last statement of each window (one key, one partition: the topic keeps their order)."""
    return {key.decode(): orjson.loads(value) for key, value in read_topic(settings, "metrics")}


def test_kill_9_while_catching_up_gives_the_same_flags_rings_and_no_coupons(traffic_settings, redis_client,
                                                                              scenario):
    settings = traffic_settings
    sim, events = scenario
    expected, expected_windows = expected_outputs(settings, events)
    assert expected_windows
    fake_orders = {r.order_id for r in sim.truth if r.kind == "fake_order"}
    assert len({f["order_id"] for f in expected.values() if f["kind"] == "brushing"} & fake_orders) \
        >= 0.9 * len(fake_orders) > 20

    # The input waits on the broker (in event-time order across the topics, as the
    # storefront and payment service send it), in two parts split where half the expected
    # flags are behind: the flow catches up on the first part and is killed once it has
    # flagged something (with all input there at once, a quiet machine judged all of it
    # before the first poll saw a flag); the second part arrives while it is down.
    middle = sorted(f["ts"] for f in expected.values())[len(expected) // 2]
    split = next(i for i, e in enumerate(events) if e.ts > middle)
    producer = CheckedProducer(settings)
    for e in events[:split]:
        producer.produce(e.topic, e.key, e.value)
    producer.flush()
    processes = start_flow(settings, "traffic")
    try:
        # Killed once it has flagged something: part of the input judged, a snapshot or not.
        killed_with = len(wait_until(lambda: flags_on_topic(settings), 120, "the first flags", interval_s=0.5))
    finally:
        for proc in processes:
            proc.popen.send_signal(signal.SIGKILL)
            proc.popen.wait()

    for e in events[split:]:
        producer.produce(e.topic, e.key, e.value)
    producer.flush()
    processes = start_flow(settings, "traffic")
    try:
        wait_until(lambda: set(flags_on_topic(settings)) >= set(expected), 240,
                   "every expected flag on traffic-flags", interval_s=2.0)
        # Restated windows: the latest statement of each is the in-process one (clean figures need it).
        wait_until(lambda: windows_on_topic(settings) == expected_windows, 60,
                   "the flagged figures per window", interval_s=2.0)
        assert all(p.popen.poll() is None for p in processes)
    finally:
        stop_all(processes)

    on_topic = flags_on_topic(settings)
    assert killed_with < len(expected)  # the kill came before the end
    diff = {k: (on_topic[k], expected[k]) for k in expected if on_topic.get(k) != expected[k]}
    assert not diff, orjson.dumps(list(diff.values())[:3]).decode()
    assert on_topic == expected  # same ids, same bodies, nothing else
    for flag in expected.values():
        if flag["kind"] == "brushing":
            stored = redis_client.get(settings.redis_key(f"traffic:order:{flag['order_id']}"))
            assert orjson.loads(stored) == flag
            assert 6 * 86400 < redis_client.ttl(settings.redis_key(f"traffic:order:{flag['order_id']}")) <= 7 * 86400
    for ring_id in {f["ring_id"] for f in expected.values()}:
        ring = {k.decode(): v.decode() for k, v in redis_client.hgetall(settings.redis_key(f"ring:{ring_id}")).items()}
        flagged = [f for f in expected.values() if f["ring_id"] == ring_id]
        assert int(ring["flagged_orders"]) == sum(f["kind"] == "brushing" for f in flagged)
        assert int(ring["flagged_sessions"]) == sum(f["kind"] == "click_farm" for f in flagged)
        assert int(ring["members"]) >= max(f["ring_size"] for f in flagged)
        assert set(orjson.loads(ring["skus"])) >= {f["sku"] for f in flagged if f["kind"] == "brushing"}
    candidates = [c for _, v in read_topic(settings, "alert-candidates") if "progress" not in (c := orjson.loads(v))]
    assert {c["key"] for c in candidates if c["rule"] == "traffic.brushing"} == {
        f"{f['ring_id']}:{f['sku']}" for f in expected.values() if f["kind"] == "brushing"}

    # The coupon flows' shared guardrail turns a ring member's coupon down.
    member = next(f["user_id"] for f in expected.values() if f["kind"] == "brushing")
    coupon = Coupon(ts=events[-1].ts, user_id=member, reason="abandoned_cart",
                    trigger_id="cart-1", kind="amount_off", value=10.0, expires_ts=events[-1].ts + 86_400_000)
    issuer = CouponIssuer(redis_client, settings.redis_prefix, CouponRules(cap_ms=1, ttl_s=60))
    assert issuer.issue([coupon]) == [FLAGGED]
