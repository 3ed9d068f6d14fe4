"""Redis reads and coupon issuing for the abandoned-cart flow, one round trip each per batch.

The shopper's value tier and the cart's out-of-stock items ride on the cart: the flow
keeps both on event time (its own RFM and stock ledger), so nothing the churn or stock
flow has written by the wall time of the decision changes it. At decision time the
flow still needs, for a batch of redemptions, which redeemed coupon codes are our
abandoned-cart coupons (`coupon:{code}` field `reason`), read with one pipeline.
Coupons are then issued through the shared `CouponIssuer` (`state/coupons.py`), which
applies the cap and the fraud flag and writes each coupon exactly once.
"""

from __future__ import annotations

from typing import Protocol

import redis

from operators.coupons import Coupon
from shopstream.settings import Settings
from state.coupons import CouponIssuer, CouponRules
from state.outages import OutageGuard, is_redis_transient
from state.redis_store import connect, redis_guard


class OfferPorts(Protocol):
    """What the offers step needs from the outside world (Redis in production)."""

    def our_coupons(self, codes: list[str]) -> frozenset[str]: ...

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

    def our_coupons(self, codes: list[str]) -> frozenset[str]:
        """Which redeemed codes are abandoned-cart coupons we issued."""
        if not codes:
            return frozenset()
        prefix = self._settings.redis_prefix
        client = self._connected()

        def read() -> list:
            pipe = client.pipeline(transaction=False)
            for code in codes:
                pipe.hget(f"{prefix}coupon:{code}", "reason")
            return pipe.execute()

        reasons = [_text(value) for value in self._guard.call(read, is_redis_transient)]
        return frozenset(code for code, reason in zip(codes, reasons) if reason == "abandoned_cart")

    def issue(self, coupons: list[Coupon]) -> list[str]:
        if not coupons:
            return []
        self._connected()
        return self._issuer.issue(coupons)

    def __getstate__(self) -> dict:
        return {"_settings": self._settings, "_rules": self._rules, "_client": None, "_issuer": None, "_guard": None}
