"""Orders and payments: what happens after a shopper submits a cart.

An order is `created` (stock reserved), then the shopper pays or not: a payment is
`requested` (the fraud engine decides on it), then `succeeded` or `failed`; a
decline may be retried once. A paid order is `paid`, and later maybe `refund_requested`
and `refunded` seconds later;
an unpaid one is `cancelled` when it times out (stock released). Chargebacks
arrive days later in event time. The simulator is open loop: it does not see the
engine's fraud decisions, so a payment "succeeds" or "fails" on its own draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from random import Random
from typing import TYPE_CHECKING

from simulators.draws import lognormal_ms
from simulators.timeline import DAY, HOUR, MINUTE
from simulators.truth import FriendlyChargeback

if TYPE_CHECKING:
    from simulators.sessions import Visit
    from simulators.world import World

ORDERS, PAYMENTS = "orders", "payments"
CURRENCY = "CNY"

_CARD_DECLINES = ("card_declined", "insufficient_funds", "expired_card", "risk_declined")
_WALLET_DECLINES = ("insufficient_balance", "risk_declined", "payment_password_error")
_OUTAGE_FAILURES = ("gateway_timeout", "issuer_unavailable")
_COUPONS = (("NEWUSER10", 10.0), ("SAVE20", 20.0), ("VIP50", 50.0), ("FREESHIP", 0.0))


class Order:
    __slots__ = ("order_id", "user_id", "key", "session_id", "channel", "region", "cart", "items",
                 "amount", "fee", "coupon", "created_ts")


@dataclass(frozen=True, slots=True)
class PayerIdentity:
    """What a payment says about who pays and from where."""

    method: str
    card: tuple[str, str, str] | None  # (fingerprint, BIN, last 4)
    device_id: str
    ip: str
    country: str
    billing_country: str | None
    account_created_ts: int


@dataclass(frozen=True, slots=True)
class Settlement:
    outcome: str  # paid | left_at_payment | payment_failed
    ts: int  # the shopper's last payment action
    payment_id: str | None = None


def create_order(w: "World", ts: int, v: "Visit", cart: list, fee: float, region: str | None = None,
                 coupons: bool = True) -> Order:
    order = Order()
    order.order_id = w.order_id()
    order.user_id, order.key, order.session_id = v.user_id, v.key, v.session_id
    order.channel, order.region = v.channel, region or v.region
    order.cart = cart
    order.items = [{"sku": sku.id, "quantity": qty, "unit_price": price, "pool": sku.pool}
                   for sku, qty, price in cart]
    subtotal = sum(qty * price for _, qty, price in cart)
    order.fee = fee
    order.coupon = None
    discount = 0.0
    if coupons and w.rng.random() < w.profile.coupon_use_rate:
        code, value = _COUPONS[int(w.rng.random() * len(_COUPONS))]
        if subtotal > 2 * value:
            order.coupon = code
            discount = fee if code == "FREESHIP" else value
    order.amount = round(max(0.0, subtotal + fee - discount), 2)
    order.created_ts = ts
    emit_order(w, ts, order, "created")
    return order


def emit_order(w: "World", ts: int, order: Order, status: str) -> None:
    event = {"event_id": w.event_id(), "ts": ts, "order_id": order.order_id, "user_id": order.user_id,
             "session_id": order.session_id, "status": status, "items": order.items,
             "amount": order.amount, "currency": CURRENCY, "channel": order.channel,
             "region": order.region, "shipping_fee": order.fee}
    if order.coupon:
        event["coupon_code"] = order.coupon
    w.emit(ts, ORDERS, order.key, event)


def cancel_task(w: "World", ts: int, order: Order) -> None:
    """An unpaid order times out: the cancellation and the stock release happen together."""
    w.stock.release(ts, order.cart)
    emit_order(w, ts, order, "cancelled")


def request_payment(w: "World", ts: int, order: Order, payer: PayerIdentity, fraud: bool,
                    rng: Random) -> str:
    payment_id = w.payment_id()
    event = {"event_id": w.event_id(), "ts": ts, "payment_id": payment_id, "order_id": order.order_id,
             "user_id": order.user_id, "status": "requested", "amount": order.amount,
             "currency": CURRENCY, "method": payer.method, "device_id": payer.device_id,
             "ip": payer.ip, "country": payer.country,
             "account_created_ts": payer.account_created_ts, "signals": risk_signals(rng, fraud)}
    if payer.card is not None:
        event["card_fingerprint"], event["card_bin"], event["card_last4"] = payer.card
        event["billing_country"] = payer.billing_country
    w.emit(ts, PAYMENTS, order.key, event)
    return payment_id


def payment_result(w: "World", ts: int, order: Order, payment_id: str, method: str,
                   failure_reason: str | None) -> None:
    event = {"event_id": w.event_id(), "ts": ts, "payment_id": payment_id, "order_id": order.order_id,
             "user_id": order.user_id, "status": "failed" if failure_reason else "succeeded",
             "amount": order.amount, "currency": CURRENCY, "method": method}
    if failure_reason:
        event["failure_reason"] = failure_reason
    w.emit(ts, PAYMENTS, order.key, event)


def chargeback(w: "World", ts: int, order: Order, payment_id: str, method: str) -> None:
    """The card network's fraud label, arriving long after the payment (same payment_id)."""
    event = {"event_id": w.event_id(), "ts": ts, "payment_id": payment_id, "order_id": order.order_id,
             "user_id": order.user_id, "status": "chargeback", "amount": order.amount,
             "currency": CURRENCY, "method": method}
    w.emit(ts, PAYMENTS, order.key, event)


def chargeback_delay(rng: Random, median_days: float) -> int:
    """Hours to weeks (CONTRACT): log-normal around the median, at least six hours."""
    return max(6 * HOUR, lognormal_ms(rng, median_days * DAY, 0.7))


def decline_reason(rng: Random, method: str, outage: bool) -> str:
    reasons = _OUTAGE_FAILURES if outage else (_CARD_DECLINES if method == "card" else _WALLET_DECLINES)
    return reasons[int(rng.random() * len(reasons))]


def risk_signals(rng: Random, fraud: bool) -> dict[str, float]:
    """Upstream risk scores: informative but noisy. Some fraud looks clean and a
    little legitimate traffic looks risky; `f3` is pure noise."""
    looks_risky = (rng.random() >= 0.15) if fraud else (rng.random() < 0.01)
    level = 0.55 if looks_risky else 0.2
    gauss = rng.gauss
    return {
        "device_risk": round(min(1.0, max(0.0, gauss(level, 0.15))), 4),
        "ip_risk": round(min(1.0, max(0.0, gauss(level - 0.05, 0.18))), 4),
        "email_age_days": float(int(math.exp(gauss(2.0 if looks_risky else 5.5, 1.2)))),
        "f1": round(gauss(1.1 if looks_risky else 0.0, 1.0), 4),
        "f2": round(gauss(-0.8 if looks_risky else 0.0, 1.0), 4),
        "f3": round(gauss(0.0, 1.0), 4),
    }


def payer_of(w: "World", v: "Visit") -> PayerIdentity:
    a = w.population.account(v.shopper)
    return PayerIdentity(method=a.method, card=a.card, device_id=a.device_id, ip=v.ip, country=a.country,
                         billing_country=a.billing_country if a.card else None,
                         account_created_ts=a.created_ts)


def settle(w: "World", ts: int, v: "Visit", order: Order, always_attempt: bool = False) -> Settlement:
    """A legitimate shopper at the cashier, from the order's creation at `ts`."""
    p, rng, plan = w.profile, w.rng, w.plan
    timeout = p.order_timeout_min * MINUTE
    if not always_attempt and rng.random() >= p.payment_attempt_rate(v.channel):
        w.schedule(ts + timeout, cancel_task, order)
        return Settlement("left_at_payment", ts)
    payer = payer_of(w, v)
    t = ts
    for attempt in range(2):
        t += 5000 + int(rng.random() * 35000)
        payment_id = request_payment(w, t, order, payer, fraud=False, rng=rng)
        t += 300 + int(rng.random() * 2700)
        if rng.random() < plan.failure_rate(t):
            payment_result(w, t, order, payment_id, payer.method,
                           decline_reason(rng, payer.method, plan.in_outage(t)))
            if attempt == 0 and rng.random() < p.payment_retry_rate:
                continue
            w.schedule(max(ts + timeout, t + MINUTE), cancel_task, order)
            return Settlement("payment_failed", t)
        payment_result(w, t, order, payment_id, payer.method, None)
        t += 200 + int(rng.random() * 800)
        emit_order(w, t, order, "paid")
        _after_paid(w, t, order, payment_id, payer.method)
        return Settlement("paid", t, payment_id)
    raise AssertionError("unreachable: the second attempt always returns")


def _after_paid(w: "World", paid_ts: int, order: Order, payment_id: str, method: str) -> None:
    p, rng = w.profile, w.rng
    if rng.random() < p.refund_rate:
        requested_ts = paid_ts + lognormal_ms(rng, 3 * DAY, 0.6)
        emit_order(w, requested_ts, order, "refund_requested")
        # The refund service's response time, from the order's own stream so the shop's
        # other draws stay where they were.
        response = lognormal_ms(Random(f"refund:{order.order_id}"), p.refund_response_median_ms, 0.5)
        emit_order(w, requested_ts + response, order, "refunded")
    if rng.random() < p.friendly_chargeback_rate:
        ts = paid_ts + chargeback_delay(rng, p.chargeback_delay_median_days)
        chargeback(w, ts, order, payment_id, method)
        w.record(FriendlyChargeback(ts=ts, payment_id=payment_id, order_id=order.order_id,
                                    user_id=order.user_id, paid_ts=paid_ts))
