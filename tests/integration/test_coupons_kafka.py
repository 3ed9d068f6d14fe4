"""The abandoned-cart coupons flow against the real Redis (the shared issuer's guardrails,
tiers and stock levels from the input, notes) and end to end on the real broker: kill -9
mid-stream and a restart push no coupon twice to `stream:coupons`."""

from __future__ import annotations

import signal
import time
from dataclasses import replace

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.coupons import CouponsConfig, build_flow
from operators.coupons import Coupon
from shopstream.runner import start_flow, stop_all
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import HOUR
from state.cart_offers import RedisOfferPorts
from state.coupons import CouponIssuer, CouponRules
from state.redis_store import RedisSink, connect
from tests.integration.kafka_helpers import produce, read_topic, wait_for_snapshot, wait_until
from tests.unit.coupon_fakes import FakePorts, Stream
from tests.unit.test_coupons_flow import CONFIG, NOW_MS, T0

pytestmark = pytest.mark.integration


def stream_entries(redis_client, settings, key="stream:coupons") -> list[dict]:
    return [orjson.loads(fields[b"coupon" if key == "stream:coupons" else b"note"])
            for _, fields in redis_client.xrange(settings.redis_key(key))]


def test_guardrails_come_from_redis_and_tiers_and_stock_from_the_input(settings, redis_client):
    config = CouponsConfig.from_settings(settings)
    config = CouponsConfig(config.max_event_ahead_ms, config.policy, CONFIG.rules, buckets=4,
                           note_ttl_s=config.note_ttl_s)
    # The churn flow already sent u1 a win-back coupon an hour before; the fraud flow flagged u2;
    # u3 is a diamond customer by its paid orders (a stale churn hash says otherwise: the tier
    # is the shopper's at the cart's deadline, not what Redis holds); u4's item is sold out by
    # the inventory (the stock flow's `stock:{sku}` says otherwise: the level is the one as of
    # the deadline, from the input, not what Redis holds at the wall time of the decision).
    client = connect(settings)
    CouponIssuer(client, settings.redis_prefix, CouponRules.from_settings(settings)).issue([Coupon(
        ts=T0 - HOUR, user_id="u1", reason="churn_winback", trigger_id="risk:u1", kind="percent_off", value=20,
        expires_ts=T0 + 48 * HOUR)])
    redis_client.set(settings.redis_key("fraud:flagged:u2"), "1")
    redis_client.hset(settings.redis_key("churn:u3"), mapping={"tier": "bronze", "score": 0.1})
    redis_client.hset(settings.redis_key("stock:GONE"), mapping={"level": "safe", "available": 40})
    redis_client.hset(settings.redis_key("stock:A"), mapping={"level": "out", "available": 0})
    records = (Stream().paid_history(T0 - 2 * HOUR, "u3", orders=12, amount=1_000.0).inventory(T0 - HOUR, "GONE", "set", 0)
               .add(T0, "u1").add(T0, "u2").add(T0, "u3", price=250.0).add(T0, "u4", sku="GONE")
               .add(T0, "u5").tick(T0 + 2 * HOUR)).records
    kafka_out: list = []

    def run():
        run_main(build_flow(TestingSource(records, batch_size=3), TestingSink(kafka_out), RedisSink(settings),
                            RedisOfferPorts(settings), config, lambda: NOW_MS))

    run()
    run()  # a replay: nothing new in Redis, the same ids on Kafka
    pushed = stream_entries(redis_client, settings)
    assert sorted(c["user_id"] for c in pushed) == ["u1", "u3", "u5"]  # u1: only the churn coupon
    assert sorted(c["user_id"] for c in pushed if c["reason"] == "abandoned_cart") == ["u3", "u5"]
    diamond = next(c for c in pushed if c["user_id"] == "u3")
    assert diamond["tier"] == "diamond" and diamond["kind"] == "amount_off" and diamond["value"] == 30
    stored = redis_client.hgetall(settings.redis_key(f"coupon:{diamond['coupon_id']}"))
    assert stored[b"trigger_id"] == f"u3@{T0}".encode() and stored[b"expires_ts"] == str(diamond["expires_ts"]).encode()
    notes = stream_entries(redis_client, settings, "stream:cart_notes")
    assert [(n["user_id"], n["skus"]) for n in notes] == [("u4", ["GONE"])]
    on_kafka = [orjson.loads(m.value) for m in kafka_out if m.topic == "coupons"]
    assert sorted(c["user_id"] for c in on_kafka) == ["u3", "u3", "u5", "u5"]
    metrics = [orjson.loads(m.value) for m in kafka_out if m.topic == "metrics"]
    first_run = metrics[: len(metrics) // 2]
    assert sum(m["capped"] for m in first_run) == 1 and sum(m["flagged"] for m in first_run) == 1
    assert sum(m["notes"] for m in first_run) == 1 and sum(m["issued"] for m in first_run) == 2
    client.close()


@pytest.fixture(scope="module")
def shop_evening():
    sim = generate(("normal",), seed=21, duration_ms=6 * HOUR, shoppers=60_000)
    events = [e for e in sim if e.topic in ("clickstream", "orders", "inventory")]
    last = events[-1].ts
    # Other traffic hours later on both topics: every open cart's deadline passes on event time.
    tail = Stream().tick(last + 2 * HOUR)
    return events, [(r.topic, None, r.value) for r in tail.records]


def test_kill_9_and_restart_push_no_coupon_twice(settings, redis_client, shop_evening):
    events, tail = shop_evening
    reference = FakePorts()
    records = input_records(events) + [r._replace(offset=10**6 + i) for i, r in enumerate(Stream().tick(
        events[-1].ts + 2 * HOUR).records)]
    config = CouponsConfig.from_settings(settings)
    run_main(build_flow(TestingSource(records, batch_size=500), TestingSink([]), TestingSink([]), reference,
                        config, lambda: NOW_MS))
    expected = set(reference.issued)
    assert len(expected) > 300

    half = len(events) // 2
    for topic in ("clickstream", "orders", "inventory"):
        produce(settings, topic, [(e.key, e.value) for e in events[:half] if e.topic == topic])
    processes = start_flow(settings, "coupons")
    wait_until(lambda: len(stream_entries(redis_client, settings)) >= 50, 90, "coupons before the crash")
    wait_for_snapshot(settings, "coupons")  # the restart resumes, not replays
    for proc in processes:
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()

    for topic in ("clickstream", "orders", "inventory"):
        produce(settings, topic, [(e.key, e.value) for e in events[half:] if e.topic == topic])
        produce(settings, topic, [(None, value) for t, _, value in tail if t == topic])
    processes = start_flow(settings, "coupons")
    try:
        wait_until(lambda: len(stream_entries(redis_client, settings)) >= len(expected), 120,
                   "every coupon after the restart")
        time.sleep(2)  # anything doubled would show up now
        assert all(p.popen.poll() is None for p in processes)
    finally:
        stop_all(processes)

    pushed = [c["coupon_id"] for c in stream_entries(redis_client, settings)]
    assert len(pushed) == len(set(pushed)), "a coupon was pushed twice"
    assert set(pushed) == expected
    on_kafka = {orjson.loads(value)["coupon_id"] for _, value in read_topic(settings, "coupons")}
    assert on_kafka == expected  # at-least-once on Kafka, same ids
    assert read_topic(settings, "metrics")
