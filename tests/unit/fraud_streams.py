"""Hand-built payment streams for the fraud tests."""

from __future__ import annotations

import itertools
from types import MappingProxyType

from operators.events import PaymentEvent

T0 = 1_731_000_000_000
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

_ids = itertools.count()


def payment(ts: int, status: str = "requested", *, payment_id: str | None = None, user: str = "u1",
            amount: float = 100.0, card: str | None = "card-1", device: str | None = "dev-1",
            ip: str | None = "10.0.0.1", country: str | None = "CN", billing: str | None = "CN",
            account_created_ts: int | None = T0 - 400 * DAY, signals: dict | None = None,
            method: str = "card") -> PaymentEvent:
    n = next(_ids)
    return PaymentEvent(
        event_id=f"e{n}", ts=ts, payment_id=payment_id or f"p{n}", order_id=f"o{n}", user_id=user,
        status=status, amount=amount, method=method, card_fingerprint=card, device_id=device, ip=ip,
        country=country, billing_country=billing, account_created_ts=account_created_ts,
        signals=None if signals is None else MappingProxyType(dict(signals)),
    )


def outcome(request: PaymentEvent, ts: int, status: str) -> PaymentEvent:
    """`succeeded`, `failed` or `chargeback` for an earlier request (same payment and user)."""
    return PaymentEvent(
        event_id=f"e{next(_ids)}", ts=ts, payment_id=request.payment_id, order_id=request.order_id,
        user_id=request.user_id, status=status, amount=request.amount, method=request.method,
    )
