"""The coupon record: deterministic ids and the contract's JSON."""

from __future__ import annotations

import pytest

from operators.coupons import Coupon, coupon_id_for


def cart_coupon(**changes) -> Coupon:
    fields = dict(
        ts=1_000, user_id="u1", reason="abandoned_cart", trigger_id="cart:u1:1000",
        kind="percent_off", value=10.0, expires_ts=90_000,
    )
    return Coupon(**{**fields, **changes})


def test_the_id_depends_only_on_the_episode():
    assert cart_coupon().coupon_id == cart_coupon(value=20.0, ts=5_000).coupon_id
    assert cart_coupon().coupon_id != cart_coupon(trigger_id="cart:u1:2000").coupon_id
    assert coupon_id_for("abandoned_cart", "x") != coupon_id_for("churn_winback", "x")


def test_json_has_the_contract_fields_and_optional_ones_only_when_set():
    plain = cart_coupon().to_dict()
    assert set(plain) == {"coupon_id", "ts", "user_id", "reason", "trigger_id", "kind", "value", "expires_ts"}
    full = cart_coupon(min_spend=99.0, currency="CNY", tier="gold", detail="free shipping over 99").to_dict()
    assert full["min_spend"] == 99.0 and full["tier"] == "gold" and full["currency"] == "CNY"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"reason": "birthday"}, "reason"),
        ({"kind": "cashback"}, "kind"),
        ({"tier": "platinum"}, "tier"),
        ({"expires_ts": 1_000}, "expire"),
        ({"value": 150.0}, "percent_off"),
    ],
)
def test_invalid_coupons_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        cart_coupon(**changes)
