"""Redis reads and coupon issuing for the abandoned-cart flow, one round trip each per batch.

At decision time the flow needs, for a batch of abandoned carts and redemptions
(the shopper's value tier rides on the cart: the flow keeps it on event time):
- which cart items are out of stock now: `stock:{sku}` field `level` == `out`,
  written by the stock flow;
- which redeemed coupon codes are our abandoned-cart coupons: `coupon:{code}`
  field `reason`.
All of it is read with one pipeline. Coupons are then issued through the shared
`CouponIssuer` (`state/coupons.py`), which applies the cap and the fraud flag and
writes each coupon exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import redis

from operators.carts import AbandonedCart
from operators.coupons import Coupon
from shopstream.settings import Settings
from state.coupons import CouponIssuer, CouponRules
from state.outages import OutageGuard, is_redis_transient
from state.redis_store import connect, redis_guard


@dataclass(frozen=True)
class Lookups:
    out_of_stock: frozenset[str]  # SKUs whose level is `out` now
    our_coupons: frozenset[str]  # redeemed codes that are abandoned-cart coupons we issued


class OfferPorts(Protocol):
    """What the offers step needs from the outside world (Redis in production)."""

    def lookup(self, carts: list[AbandonedCart], codes: list[str]) -> Lookups: ...

    def issue(self, coupons: list[Coupon]) -> list[str]: ...


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RedisOfferPorts:
    """`OfferPorts` on Redis; connects on first use (the flow is built before it runs)."""

    def __init__(self, settings: Settings, rules: CouponRules | None = None):
        self._settings = settings
        self._rules = rules or CouponRules.from_settings(settings)
        self._client: redis.Redis | None = None
        self._issuer: CouponIssuer | None = None
        self._guard: OutageGuard | None = None

    def _connected(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(self._settings)
            self._guard = redis_guard(self._settings)  # one outage clock for reads and coupons
            self._issuer = CouponIssuer(self._client, self._settings.redis_prefix, self._rules, self._guard)
        return self._client

    def lookup(self, carts: list[AbandonedCart], codes: list[str]) -> Lookups:
        """Which of the carts' items are out of stock now, which redeemed codes are ours."""
        skus = sorted({sku for cart in carts for sku in cart.skus})
        if not (skus or codes):
            return Lookups(frozenset(), frozenset())
        prefix = self._settings.redis_prefix
        client = self._connected()

        def read() -> list:
            pipe = client.pipeline(transaction=False)
            for sku in skus:
                pipe.hget(f"{prefix}stock:{sku}", "level")
            for code in codes:
                pipe.hget(f"{prefix}coupon:{code}", "reason")
            return pipe.execute()

        answers = [_text(value) for value in self._guard.call(read, is_redis_transient)]
        levels = answers[: len(skus)]
        reasons = answers[len(skus):]
        return Lookups(
            out_of_stock=frozenset(sku for sku, level in zip(skus, levels) if level == "out"),
            our_coupons=frozenset(code for code, reason in zip(codes, reasons) if reason == "abandoned_cart"),
        )

    def issue(self, coupons: list[Coupon]) -> list[str]:
        if not coupons:
            return []
        self._connected()
        return self._issuer.issue(coupons)

    def __getstate__(self) -> dict:
        return {"_settings": self._settings, "_rules": self._rules, "_client": None, "_issuer": None, "_guard": None}
