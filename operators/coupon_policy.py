"""The abandoned-cart offer policy: configuration, not code.

A policy is a JSON document (the file named by SHOPSTREAM_COUPON_POLICY, or the
built-in `DEFAULT_POLICY`), validated once at start. For each abandoned cart:

1. an item in the cart is out of stock at the cart's deadline (the stock flow's level
   as of that event time, `AbandonedCart.out_of_stock`): no coupon; a back-in-stock
   note (`Note`) with the policy's `out_of_stock_note` text instead;
2. otherwise the first rule whose `when` matches decides: its `offer`, or no
   coupon when the offer is null; no rule matches: no coupon.

`when` may hold `tier` (list of TIERS; a shopper the churn flow has not scored is
`new`), `reason` (list of REASONS: the likely reason for leaving seen in the
session), `stage` (list of cart/checkout/payment), `min_cart_value` (inclusive)
and `max_cart_value` (exclusive). An `offer` has `kind` (amount_off, percent_off,
free_shipping), `value` (amount off, percent off; 0 or absent for free shipping),
optionally `min_spend` (absolute) or `min_spend_of_cart` (a share of the cart's
value, e.g. 1.0: spend at least what the cart holds), and `expires_after_hours`
(else the policy's). Every coupon expires.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from operators.carts import STAGES, AbandonedCart
from operators.coupons import KINDS, TIERS, Coupon

REASONS = ("shipping_fee", "comparison", "none")  # as seen in the session; out of stock comes first
HOUR_MS = 3_600_000

DEFAULT_POLICY: dict[str, Any] = {
    "currency": "CNY",
    "expires_after_hours": 48,
    "out_of_stock_note": "An item in your cart is sold out. We will tell you when it is back in stock.",
    "rules": [
        {"name": "small carts get nothing", "when": {"max_cart_value": 20}, "offer": None},
        {"name": "shipping fee", "when": {"reason": ["shipping_fee"]},
         "offer": {"kind": "free_shipping", "min_spend_of_cart": 1.0, "expires_after_hours": 24}},
        {"name": "comparing, best customers", "when": {"reason": ["comparison"], "tier": ["diamond", "gold"]},
         "offer": {"kind": "percent_off", "value": 12, "min_spend_of_cart": 1.0}},
        {"name": "comparing", "when": {"reason": ["comparison"]},
         "offer": {"kind": "percent_off", "value": 8, "min_spend_of_cart": 1.0}},
        {"name": "diamond", "when": {"tier": ["diamond"], "min_cart_value": 200},
         "offer": {"kind": "amount_off", "value": 30, "min_spend": 199}},
        {"name": "big carts", "when": {"min_cart_value": 200},
         "offer": {"kind": "amount_off", "value": 20, "min_spend": 199}},
        {"name": "first purchase", "when": {"tier": ["new"]},
         "offer": {"kind": "amount_off", "value": 10, "min_spend_of_cart": 1.0}},
        {"name": "everyone else", "when": {}, "offer": {"kind": "amount_off", "value": 5, "min_spend_of_cart": 1.0}},
    ],
}


class PolicyError(ValueError):
    """The policy document is invalid; the message names the field and what it must be."""


@dataclass(frozen=True, slots=True)
class Offer:
    kind: str
    value: float
    min_spend: float | None
    min_spend_of_cart: float | None
    expires_after_ms: int


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    tiers: frozenset[str] | None
    reasons: frozenset[str] | None
    stages: frozenset[str] | None
    min_cart_value: float | None
    max_cart_value: float | None
    offer: Offer | None

    def matches(self, tier: str, reason: str, stage: str, value: float) -> bool:
        return ((self.tiers is None or tier in self.tiers)
                and (self.reasons is None or reason in self.reasons)
                and (self.stages is None or stage in self.stages)
                and (self.min_cart_value is None or value >= self.min_cart_value)
                and (self.max_cart_value is None or value < self.max_cart_value))


@dataclass(frozen=True, slots=True)
class Note:
    """A back-in-stock note instead of a coupon (an item in the cart is out of stock)."""

    ts: int
    user_id: str
    trigger_id: str
    skus: tuple[str, ...]  # the cart's items that are out of stock
    detail: str

    @property
    def note_id(self) -> str:
        return f"note-{self.trigger_id}"

    def to_dict(self) -> dict[str, Any]:
        return {"note_id": self.note_id, "ts": self.ts, "user_id": self.user_id, "reason": "abandoned_cart",
                "trigger_id": self.trigger_id, "kind": "back_in_stock", "skus": list(self.skus),
                "detail": self.detail}


@dataclass(frozen=True, slots=True)
class CouponPolicy:
    currency: str
    expires_after_ms: int
    out_of_stock_note: str
    rules: tuple[Rule, ...]

    def decide(self, cart: AbandonedCart, tier: str | None, out_of_stock: Collection[str]) -> Coupon | Note | None:
        """The coupon, the note, or nothing for an abandoned cart."""
        sold_out = tuple(sku for sku in cart.skus if sku in out_of_stock)
        if sold_out:
            return Note(cart.ts, cart.user_id, cart.trigger_id, sold_out, self.out_of_stock_note)
        tier = tier if tier in TIERS else "new"
        value = cart.value
        for rule in self.rules:
            if rule.matches(tier, cart.signal, cart.stage, value):
                return None if rule.offer is None else self._coupon(cart, tier, value, rule)
        return None

    def _coupon(self, cart: AbandonedCart, tier: str, value: float, rule: Rule) -> Coupon:
        offer = rule.offer
        min_spend = offer.min_spend
        if offer.min_spend_of_cart is not None:
            min_spend = round(value * offer.min_spend_of_cart, 2)
        return Coupon(
            ts=cart.ts,
            user_id=cart.user_id,
            reason="abandoned_cart",
            trigger_id=cart.trigger_id,
            kind=offer.kind,
            value=offer.value,
            expires_ts=cart.ts + offer.expires_after_ms,
            min_spend=min_spend,
            currency=self.currency,
            tier=tier,
            detail=f"{rule.name}; cart {value:g} {self.currency}, {cart.stage} stage",
        )


# -- loading and validation ------------------------------------------------------------------------

_TOP_KEYS = {"currency", "expires_after_hours", "out_of_stock_note", "rules"}
_RULE_KEYS = {"name", "when", "offer"}
_WHEN_KEYS = {"tier", "reason", "stage", "min_cart_value", "max_cart_value"}
_OFFER_KEYS = {"kind", "value", "min_spend", "min_spend_of_cart", "expires_after_hours"}


def load_policy(path: str | Path | None) -> CouponPolicy:
    """The policy in the JSON file at `path`, or the built-in default when no path is given."""
    if path is None or str(path) == "":
        return parse_policy(DEFAULT_POLICY)
    try:
        document = json.loads(Path(path).read_text())
    except OSError as err:
        raise PolicyError(f"cannot read the policy file: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise PolicyError(f"the policy file is not valid JSON: {err}") from None
    return parse_policy(document)


def parse_policy(document: Any) -> CouponPolicy:
    if not isinstance(document, dict):
        raise PolicyError("the policy must be a JSON object")
    _no_unknown(document, _TOP_KEYS, "the policy")
    currency = document.get("currency", "CNY")
    if not isinstance(currency, str) or not currency:
        raise PolicyError("currency must be a non-empty string, e.g. \"CNY\"")
    expires = _positive(document.get("expires_after_hours"), "expires_after_hours")
    note = document.get("out_of_stock_note", DEFAULT_POLICY["out_of_stock_note"])
    if not isinstance(note, str) or not note:
        raise PolicyError("out_of_stock_note must be a non-empty string")
    rules = document.get("rules")
    if not isinstance(rules, list) or not rules:
        raise PolicyError("rules must be a non-empty list of {when, offer}")
    parsed = tuple(_rule(rule, f"rules[{index}]", expires) for index, rule in enumerate(rules))
    return CouponPolicy(currency, int(expires * HOUR_MS), note, parsed)


def _rule(rule: Any, where: str, default_expiry_h: float) -> Rule:
    if not isinstance(rule, dict):
        raise PolicyError(f"{where} must be an object with 'when' and 'offer'")
    _no_unknown(rule, _RULE_KEYS, where)
    if "offer" not in rule:
        raise PolicyError(f"{where}.offer is missing (null means no coupon)")
    when = rule.get("when", {})
    if not isinstance(when, dict):
        raise PolicyError(f"{where}.when must be an object")
    _no_unknown(when, _WHEN_KEYS, f"{where}.when")
    name = rule.get("name", where)
    if not isinstance(name, str):
        raise PolicyError(f"{where}.name must be a string")
    low = _number(when.get("min_cart_value"), f"{where}.when.min_cart_value")
    high = _number(when.get("max_cart_value"), f"{where}.when.max_cart_value")
    if low is not None and high is not None and low >= high:
        raise PolicyError(f"{where}.when: min_cart_value must be below max_cart_value")
    return Rule(
        name=name,
        tiers=_choices(when.get("tier"), TIERS, f"{where}.when.tier"),
        reasons=_choices(when.get("reason"), REASONS, f"{where}.when.reason"),
        stages=_choices(when.get("stage"), STAGES, f"{where}.when.stage"),
        min_cart_value=low,
        max_cart_value=high,
        offer=_offer(rule["offer"], f"{where}.offer", default_expiry_h),
    )


def _offer(offer: Any, where: str, default_expiry_h: float) -> Offer | None:
    if offer is None:
        return None
    if not isinstance(offer, dict):
        raise PolicyError(f"{where} must be an object or null")
    _no_unknown(offer, _OFFER_KEYS, where)
    kind = offer.get("kind")
    if kind not in KINDS:
        raise PolicyError(f"{where}.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    value = _number(offer.get("value"), f"{where}.value") or 0.0
    if kind == "amount_off" and value <= 0:
        raise PolicyError(f"{where}.value must be an amount above 0 for amount_off")
    if kind == "percent_off" and not 0 < value < 100:
        raise PolicyError(f"{where}.value must be between 0 and 100 (exclusive) for percent_off, got {value:g}")
    if kind == "free_shipping" and value != 0:
        raise PolicyError(f"{where}.value must be 0 or absent for free_shipping")
    min_spend = _number(offer.get("min_spend"), f"{where}.min_spend")
    share = _number(offer.get("min_spend_of_cart"), f"{where}.min_spend_of_cart")
    if min_spend is not None and share is not None:
        raise PolicyError(f"{where}: give min_spend or min_spend_of_cart, not both")
    if kind == "amount_off" and min_spend is not None and min_spend < value:
        raise PolicyError(f"{where}.min_spend must be at least the amount off ({value:g})")
    expiry_h = default_expiry_h
    if "expires_after_hours" in offer:
        expiry_h = _positive(offer["expires_after_hours"], f"{where}.expires_after_hours")
    return Offer(kind, float(value), min_spend, share, int(expiry_h * HOUR_MS))


def _no_unknown(obj: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise PolicyError(f"{where} has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise PolicyError(f"{where} must be a number >= 0, got {value!r}")
    return float(value)


def _positive(value: Any, where: str) -> float:
    number = _number(value, where)
    if number is None or number <= 0:
        raise PolicyError(f"{where} must be a number of hours above 0, got {value!r}")
    return number


def _choices(value: Any, allowed: tuple[str, ...], where: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(v in allowed for v in value):
        raise PolicyError(f"{where} must be a non-empty list of {', '.join(allowed)}, got {value!r}")
    return frozenset(value)
