"""Each fraud feature on a hand-built stream, and state that ends by event time."""

import math

import pytest

from operators.fraud_features import FeatureState
from tests.unit.fraud_streams import DAY, HOUR, MINUTE, SECOND, T0, payment


def test_velocity_per_card_counts_earlier_attempts_per_window():
    state = FeatureState()
    for offset in (0, 30 * SECOND, 5 * MINUTE, 50 * MINUTE):
        state.features(payment(T0 + offset, card="c1", device=None, ip=None, user=f"u{offset}"))
    x = state.features(payment(T0 + 50 * MINUTE + 10 * SECOND, card="c1", device=None, ip=None, user="other"))
    assert (x["card_attempts_1m"], x["card_attempts_10m"], x["card_attempts_1h"]) == (1, 1, 4)
    fresh = state.features(payment(T0 + 50 * MINUTE, card="c2", device=None, ip=None, user="other2"))
    assert fresh["card_attempts_1h"] == 0


def test_velocity_per_device_ip_and_user_and_distinct_cards_and_accounts():
    state = FeatureState()
    for n in range(6):
        state.features(payment(T0 + n * 10 * SECOND, card=f"c{n % 3}", device="bot", ip="6.6.6.6", user=f"u{n % 2}"))
    x = state.features(payment(T0 + 70 * SECOND, card="c9", device="bot", ip="6.6.6.6", user="u0"))
    assert x["device_attempts_1m"] == 5  # the first one was 70 s ago
    assert x["device_attempts_10m"] == 6 and x["ip_attempts_1h"] == 6
    assert x["device_cards_10m"] == 3 and x["ip_cards_1h"] == 3
    assert x["device_users_1h"] == 2 and x["ip_users_1h"] == 2
    assert x["user_attempts_1h"] == 3  # u0 made attempts 0, 2 and 4
    assert x["user_cards_1h"] == 3  # u0 used c0, c2 and c1


def test_failed_attempts_count_on_every_entity_of_the_declined_payment():
    state = FeatureState()
    state.features(payment(T0, card="c1", device="d1", ip="1.1.1.1", user="u1"))
    state.record_failure(T0 + SECOND, card="c1", device="d1", ip="1.1.1.1", user="u1")
    state.record_failure(T0 + 2 * SECOND, card="c1", device="d1", ip="1.1.1.1", user="u1")
    x = state.features(payment(T0 + 3 * SECOND, card="c1", device="d1", ip="1.1.1.1", user="u1"))
    assert x["card_failures_1h"] == x["device_failures_1h"] == x["ip_failures_1h"] == x["user_failures_1h"] == 2
    later = state.features(payment(T0 + 2 * HOUR, card="c1", device="d1", ip="1.1.1.1", user="u1"))
    assert later["card_failures_1h"] == 0


def test_amount_against_the_users_history():
    state = FeatureState()
    first = state.features(payment(T0, amount=100.0))
    assert first["known_user"] == 0 and first["amount_zscore"] == 0
    for n, amount in enumerate((90.0, 110.0, 100.0, 95.0)):
        state.features(payment(T0 + (n + 1) * HOUR, amount=amount))
    usual = state.features(payment(T0 + 10 * HOUR, amount=105.0))
    outlier = state.features(payment(T0 + 11 * HOUR, amount=5000.0))
    assert abs(usual["amount_zscore"]) < 1
    assert outlier["amount_zscore"] > 3
    assert outlier["amount_over_max"] == pytest.approx(math.log(5000 / 110))
    assert outlier["user_payments_log"] == pytest.approx(math.log1p(6))


def test_account_age_and_new_account():
    state = FeatureState()
    brand_new = state.features(payment(T0, user="n", account_created_ts=T0 - 5 * MINUTE))
    old = state.features(payment(T0, user="o", account_created_ts=T0 - 400 * DAY))
    unknown = state.features(payment(T0, user="x", account_created_ts=None))
    assert brand_new["new_account"] == 1 and old["new_account"] == 0
    assert brand_new["account_age_log_h"] == pytest.approx(math.log1p(5 / 60))
    assert unknown["account_age_known"] == 0 and unknown["new_account"] == 0


def test_country_mismatch_and_country_change():
    state = FeatureState()
    matched = state.features(payment(T0, country="CN", billing="CN"))
    mismatched = state.features(payment(T0 + MINUTE, country="RU", billing="US"))
    assert matched["geo_mismatch"] == 0 and mismatched["geo_mismatch"] == 1
    assert mismatched["country_changed"] == 1 and mismatched["foreign_country"] == 1
    no_billing = state.features(payment(T0 + 2 * MINUTE, user="w", country="CN", billing=None, method="alipay"))
    assert no_billing["geo_mismatch"] == 0 and no_billing["method_card"] == 0


def test_first_use_of_a_device_for_a_known_account():
    state = FeatureState()
    first_ever = state.features(payment(T0, device="d1"))
    assert first_ever["new_device"] == 0  # nothing known about the account yet
    same = state.features(payment(T0 + DAY, device="d1"))
    other = state.features(payment(T0 + 2 * DAY, device="d2"))
    again = state.features(payment(T0 + 3 * DAY, device="d2"))
    assert (same["new_device"], other["new_device"], again["new_device"]) == (0, 1, 0)


def test_every_numeric_signal_is_a_feature():
    state = FeatureState()
    x = state.features(payment(T0, signals={"device_risk": 0.9, "brand_new_provider_score": 42.0}))
    assert x["signal.device_risk"] == 0.9 and x["signal.brand_new_provider_score"] == 42.0


def test_state_is_bounded_by_event_time():
    state = FeatureState(history_ms=30 * DAY)
    for n in range(200):
        state.features(payment(T0 + n * SECOND, card=f"c{n}", device=f"d{n}", ip=f"ip{n}", user=f"u{n}"))
    assert state.size() == 5 * 200
    state.expire(T0 + 200 * SECOND + 2 * HOUR)
    assert len(state.cards) == len(state.devices) == len(state.ips) == len(state.users) == 0
    assert len(state.histories) == 200  # user histories last longer than velocity
    state.expire(T0 + 31 * DAY)
    assert state.size() == 0


def test_an_active_entity_keeps_only_the_window():
    state = FeatureState()
    for n in range(300):
        state.features(payment(T0 + n * MINUTE, card="busy", device="busy", ip="busy", user="busy"))
        if n % 30 == 0:
            state.expire(T0 + n * MINUTE)
    assert len(state.cards.get("busy").attempts) <= 91
