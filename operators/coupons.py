"""Coupons: the record the push service receives, shared by every flow that issues one.

The abandoned-cart flow and the churn win-back flow both build `Coupon`s; the
issuer in `state/coupons.py` applies the guardrails they share (one coupon per
shopper per cap period across all reasons, none to a shopper the fraud flow has
flagged) and writes each coupon exactly once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

REASONS = ("abandoned_cart", "churn_winback")
KINDS = ("amount_off", "percent_off", "free_shipping")

# Customer value tiers, best first. `new` is a shopper with no paid order yet. The
# churn flow assigns them (`churn:{user_id}` field `tier`); coupon policies key on them.
TIERS = ("diamond", "gold", "silver", "bronze", "new")


def coupon_id_for(reason: str, trigger_id: str) -> str:
    """A deterministic id from the episode that caused the coupon: a replay or a
    restart derives the same id, so the same coupon is never pushed twice."""
    digest = hashlib.blake2b(f"{reason}|{trigger_id}".encode(), digest_size=10).hexdigest()
    return f"cpn-{digest}"


@dataclass(frozen=True, slots=True)
class Coupon:
    ts: int  # event time of the decision
    user_id: str
    reason: str
    trigger_id: str  # the cart or risk episode
    kind: str
    value: float  # amount off (currency units), percent off (0-100), or 0 for free shipping
    expires_ts: int
    min_spend: float | None = None
    currency: str | None = None
    tier: str | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"coupon reason must be one of {REASONS}, got {self.reason!r}")
        if self.kind not in KINDS:
            raise ValueError(f"coupon kind must be one of {KINDS}, got {self.kind!r}")
        if self.tier is not None and self.tier not in TIERS:
            raise ValueError(f"coupon tier must be one of {TIERS}, got {self.tier!r}")
        if self.expires_ts <= self.ts:
            raise ValueError(f"a coupon must expire after it is issued (ts {self.ts}, expires_ts {self.expires_ts})")
        if self.kind == "percent_off" and not 0 < self.value < 100:
            raise ValueError(f"percent_off value must be between 0 and 100, got {self.value}")

    @property
    def coupon_id(self) -> str:
        return coupon_id_for(self.reason, self.trigger_id)

    def to_dict(self) -> dict[str, Any]:
        """The contract's `coupons` JSON; optional fields appear only when set."""
        out: dict[str, Any] = {
            "coupon_id": self.coupon_id,
            "ts": self.ts,
            "user_id": self.user_id,
            "reason": self.reason,
            "trigger_id": self.trigger_id,
            "kind": self.kind,
            "value": self.value,
            "expires_ts": self.expires_ts,
        }
        for name in ("min_spend", "currency", "tier", "detail"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out
