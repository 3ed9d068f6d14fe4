"""The shared coupon guardrails on a real Redis and Kafka: one coupon per shopper per
cap period across reasons, none to flagged shoppers, each coupon pushed once."""

from __future__ import annotations

import orjson
import pytest

from operators.coupons import Coupon
from state.coupons import CouponIssuer, CouponRules, CouponSink
from state.redis_store import connect
from tests.integration.kafka_helpers import read_topic

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def coupon(user_id="u1", trigger_id="cart:u1:1", ts=10 * HOUR_MS, reason="abandoned_cart") -> Coupon:
    return Coupon(
        ts=ts, user_id=user_id, reason=reason, trigger_id=trigger_id,
        kind="amount_off", value=20.0, min_spend=199.0, expires_ts=ts + 48 * HOUR_MS, tier="gold",
    )


@pytest.fixture
def issuer(settings):
    client = connect(settings)
    yield CouponIssuer(client, settings.redis_prefix, CouponRules(cap_ms=24 * HOUR_MS, ttl_s=3600))
    client.close()


def stream_ids(settings, redis_client) -> list[str]:
    entries = redis_client.xrange(settings.redis_key("stream:coupons"))
    return [fields[b"coupon_id"].decode() for _, fields in entries]


def test_a_replayed_coupon_is_a_duplicate_and_pushed_once(settings, redis_client, issuer):
    first = coupon()
    assert issuer.issue([first]) == ["issued"]
    assert issuer.issue([first]) == ["duplicate"]
    assert stream_ids(settings, redis_client) == [first.coupon_id]
    stored = redis_client.hgetall(settings.redis_key(f"coupon:{first.coupon_id}"))
    assert stored[b"user_id"] == b"u1" and stored[b"min_spend"] == b"199.0" and stored[b"tier"] == b"gold"
    assert 0 < redis_client.ttl(settings.redis_key(f"coupon:{first.coupon_id}")) <= 3600


def test_one_coupon_per_shopper_per_cap_period_across_reasons(settings, redis_client, issuer):
    cart = coupon(trigger_id="cart:u1:1", ts=10 * HOUR_MS)
    winback = coupon(trigger_id="risk:u1:1", ts=20 * HOUR_MS, reason="churn_winback")
    next_day = coupon(trigger_id="cart:u1:2", ts=34 * HOUR_MS + 1)
    other_shopper = coupon(user_id="u2", trigger_id="cart:u2:1", ts=10 * HOUR_MS)
    assert issuer.issue([cart, winback, other_shopper]) == ["issued", "capped", "issued"]
    assert issuer.issue([next_day]) == ["issued"]
    # Event time, not arrival order: a coupon stamped within a day of the last one is capped.
    assert issuer.issue([coupon(trigger_id="cart:u1:3", ts=33 * HOUR_MS)]) == ["capped"]
    assert stream_ids(settings, redis_client) == [cart.coupon_id, other_shopper.coupon_id, next_day.coupon_id]


def test_a_shopper_flagged_by_fraud_gets_nothing(settings, redis_client, issuer):
    redis_client.set(settings.redis_key("fraud:flagged:u1"), b'{"reason": "chargeback"}')
    assert issuer.issue([coupon()]) == ["flagged"]
    assert stream_ids(settings, redis_client) == []


def test_the_sink_sends_issued_coupons_to_kafka_again_on_replay_but_never_capped_ones(settings, redis_client):
    allowed, capped = coupon(trigger_id="cart:u1:1"), coupon(trigger_id="cart:u1:2", ts=11 * HOUR_MS)
    partition = CouponSink(settings, CouponRules(cap_ms=24 * HOUR_MS, ttl_s=3600)).build("coupons", 0, 1)
    try:
        partition.write_batch([allowed, capped])
        partition.write_batch([allowed, capped])  # the resumed epoch, written again after a crash
    finally:
        partition.close()
    messages = [orjson.loads(value) for _, value in read_topic(settings, "coupons")]
    assert [m["coupon_id"] for m in messages] == [allowed.coupon_id, allowed.coupon_id]
    assert messages[0] == allowed.to_dict()
    assert stream_ids(settings, redis_client) == [allowed.coupon_id]
