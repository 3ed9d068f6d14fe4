"""The offer policy: validated at start with messages that say what to fix; first matching rule wins."""

from __future__ import annotations

import json

import pytest

from flows.coupons import CouponsConfig
from operators.carts import AbandonedCart, CartLine
from operators.coupon_policy import DEFAULT_POLICY, Note, PolicyError, load_policy, parse_policy
from operators.coupons import Coupon
from shopstream.settings import ConfigError, Settings

HOUR_MS = 3_600_000


def cart(value=100.0, signal="none", stage="cart", skus=("A",)) -> AbandonedCart:
    lines = tuple(CartLine(sku, 1, value / len(skus), "shoes") for sku in skus)
    return AbandonedCart(user_id="u1", trigger_id="u1@5", ts=10 * HOUR_MS, opened_ts=5, last_ts=9 * HOUR_MS,
                         lines=lines, stage=stage, signal=signal)


def policy(rules, **top):
    return parse_policy({"expires_after_hours": 24, "rules": rules, **top})


def test_first_matching_rule_decides_and_every_coupon_expires():
    p = policy([
        {"when": {"tier": ["gold"], "reason": ["comparison"]}, "offer": {"kind": "percent_off", "value": 15}},
        {"when": {"stage": ["payment"]}, "offer": None},
        {"when": {"min_cart_value": 50, "max_cart_value": 500},
         "offer": {"kind": "amount_off", "value": 10, "min_spend": 99, "expires_after_hours": 2}},
    ])
    gold = p.decide(cart(signal="comparison"), "gold", frozenset())
    assert isinstance(gold, Coupon) and gold.kind == "percent_off" and gold.value == 15
    assert gold.expires_ts == gold.ts + 24 * HOUR_MS and gold.min_spend is None and gold.currency == "CNY"
    assert p.decide(cart(stage="payment"), "gold", frozenset()) is None
    mid = p.decide(cart(value=120), None, frozenset())
    assert mid.kind == "amount_off" and mid.min_spend == 99 and mid.expires_ts == mid.ts + 2 * HOUR_MS
    assert mid.tier == "new"  # not scored by the churn flow
    assert p.decide(cart(value=600), "silver", frozenset()) is None  # no rule matches: no coupon


def test_out_of_stock_gives_a_note_not_a_coupon():
    p = load_policy(None)
    note = p.decide(cart(skus=("A", "B")), "diamond", frozenset({"B"}))
    assert isinstance(note, Note) and note.skus == ("B",) and note.note_id == "note-u1@5"
    assert note.to_dict()["detail"] == DEFAULT_POLICY["out_of_stock_note"]


def test_min_spend_of_cart_follows_the_cart_value():
    p = policy([{"when": {}, "offer": {"kind": "free_shipping", "min_spend_of_cart": 0.5}}])
    assert p.decide(cart(value=99.9), "gold", frozenset()).min_spend == 49.95


def test_an_unknown_tier_value_counts_as_new():
    p = policy([{"when": {"tier": ["new"]}, "offer": {"kind": "amount_off", "value": 5}}])
    assert p.decide(cart(), "platinum", frozenset()).tier == "new"


@pytest.mark.parametrize("document, message", [
    ({"rules": [{"when": {}, "offer": None}]}, "expires_after_hours"),
    ({"expires_after_hours": 24, "rules": []}, "rules must be a non-empty list"),
    ({"expires_after_hours": 24, "rules": [{"when": {}, "offer": {"kind": "cashback", "value": 5}}]},
     r"rules\[0\].offer.kind must be one of amount_off, percent_off, free_shipping"),
    ({"expires_after_hours": 24, "rules": [{"when": {}, "offer": {"kind": "percent_off", "value": 100}}]},
     r"rules\[0\].offer.value must be between 0 and 100"),
    ({"expires_after_hours": 24, "rules": [{"when": {"tier": ["platinum"]}, "offer": None}]},
     r"rules\[0\].when.tier must be a non-empty list of diamond"),
    ({"expires_after_hours": 24, "rules": [{"when": {"colour": "red"}, "offer": None}]},
     r"rules\[0\].when has unknown field\(s\) colour"),
    ({"expires_after_hours": 24, "rules": [{"when": {}}]}, r"rules\[0\].offer is missing"),
    ({"expires_after_hours": 24, "rules": [{"when": {}, "offer": {"kind": "amount_off", "value": 50,
                                                                  "min_spend": 20}}]}, "at least the amount off"),
])
def test_invalid_policies_say_what_to_fix(document, message):
    with pytest.raises(PolicyError, match=message):
        parse_policy(document)


def test_a_bad_policy_file_fails_at_start_naming_the_variable(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"expires_after_hours": 0, "rules": [{"when": {}, "offer": None}]}))
    with pytest.raises(ConfigError, match=r"SHOPSTREAM_COUPON_POLICY \(.*policy.json\): expires_after_hours"):
        Settings.from_env({"SHOPSTREAM_COUPON_POLICY": str(path)})
    with pytest.raises(ConfigError, match="SHOPSTREAM_COUPON_POLICY .*cannot read"):
        Settings.from_env({"SHOPSTREAM_COUPON_POLICY": str(tmp_path / "missing.json")})
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Settings.from_env({"SHOPSTREAM_COUPON_POLICY": str(path)})


def test_a_policy_file_and_the_cart_settings_reach_the_flow(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"currency": "EUR", "expires_after_hours": 6,
                                "rules": [{"when": {}, "offer": {"kind": "amount_off", "value": 3}}]}))
    settings = Settings.from_env({"SHOPSTREAM_COUPON_POLICY": str(path), "SHOPSTREAM_COUPON_ABANDON_AFTER_S": "600",
                                  "SHOPSTREAM_COUPON_LATENESS_MS": "250", "SHOPSTREAM_PROCESSES": "2",
                                  "SHOPSTREAM_WORKERS_PER_PROCESS": "16"})
    config = CouponsConfig.from_settings(settings)
    assert config.policy.currency == "EUR" and config.policy.expires_after_ms == 6 * HOUR_MS
    assert config.rules.abandon_after_ms == 600_000 and config.rules.lateness_ms == 250
    assert config.buckets == 32  # never fewer buckets than workers
    assert CouponsConfig.from_settings(Settings.from_env({})).policy == load_policy(None)
    with pytest.raises(ConfigError, match="SHOPSTREAM_COUPON_ABANDON_AFTER_S must be at least 1"):
        Settings.from_env({"SHOPSTREAM_COUPON_ABANDON_AFTER_S": "0"})
