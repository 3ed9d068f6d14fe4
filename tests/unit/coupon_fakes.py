"""Test doubles for the coupons flow's outside world (Redis in production) and hand-built input."""

from __future__ import annotations

from bisect import bisect_right

import orjson

from operators.coupons import Coupon
from state.cart_offers import Lookups
from state.kafka import InputRecord

DAY_MS = 86_400_000


class FakePorts:
    """Stock levels from a set; the issuer's rules (duplicate, flag, cap) in memory.

    The real issuer is a Lua script, tested against Redis in tests/integration; this
    keeps flow tests free of Redis. `offered` keeps every coupon the flow asked for."""

    def __init__(self, out_of_stock=(), flagged=(), cap_ms=DAY_MS):
        self.out_of_stock = set(out_of_stock)
        self.flagged = set(flagged)
        self.cap_ms = cap_ms
        self.issued: dict[str, Coupon] = {}
        self.last: dict[str, tuple[str, int]] = {}
        self.offered: list[tuple[Coupon, str]] = []
        self.lookups: list[tuple[list, list, list]] = []

    def lookup(self, carts, codes):
        self.lookups.append((carts, codes))
        return Lookups(frozenset(self.out_of_stock), frozenset(c for c in codes if c in self.issued))

    def issue(self, coupons):
        outcomes = []
        for coupon in coupons:
            outcome = self._issue(coupon)
            self.offered.append((coupon, outcome))
            outcomes.append(outcome)
        return outcomes

    def _issue(self, coupon: Coupon) -> str:
        if coupon.coupon_id in self.issued:
            return "duplicate"
        if coupon.user_id in self.flagged:
            return "flagged"
        last = self.last.get(coupon.user_id)
        if last and last[0] != coupon.coupon_id and abs(coupon.ts - last[1]) < self.cap_ms:
            return "capped"
        self.issued[coupon.coupon_id] = coupon
        if last is None or coupon.ts >= last[1]:
            self.last[coupon.user_id] = (coupon.coupon_id, coupon.ts)
        return "issued"


class StockTimeline:
    """Out-of-stock SKUs as of a time, from the simulator's stockout / stock_restored truth:
    what the stock flow's `stock:{sku}` level says at that event time."""

    def __init__(self, truth):
        self._changes: dict[str, tuple[list[int], list[bool]]] = {}
        for record in truth:
            if record.kind in ("stockout", "stock_restored"):
                times, outs = self._changes.setdefault(record.sku, ([], []))
                times.append(record.ts)
                outs.append(record.kind == "stockout")

    def out_at(self, sku: str, ts: int) -> bool:
        changes = self._changes.get(sku)
        if changes is None:
            return False
        index = bisect_right(changes[0], ts)
        return index > 0 and changes[1][index - 1]


class TimelinePorts(FakePorts):
    """FakePorts whose stock levels follow a StockTimeline at each cart's decision time."""

    def __init__(self, timeline: StockTimeline, **kwargs):
        super().__init__(**kwargs)
        self.timeline = timeline

    def lookup(self, carts, codes):
        looked = super().lookup(carts, codes)
        out = frozenset(sku for cart in carts for sku in cart.skus if self.timeline.out_at(sku, cart.ts))
        return Lookups(out, looked.our_coupons)


class Stream:
    """Hand-built input records: clicks and orders on partition 0 of their topics."""

    def __init__(self):
        self.records: list[InputRecord] = []
        self._offsets: dict[str, int] = {}
        self._ids = 0

    def _add(self, topic: str, obj: dict) -> None:
        offset = self._offsets.get(topic, 0)
        self._offsets[topic] = offset + 1
        self.records.append(InputRecord(topic, 0, offset, orjson.dumps(obj), obj.get("ts", -1)))

    def click(self, ts: int, user: str, kind: str, **fields) -> "Stream":
        self._ids += 1
        self._add("clickstream", {"event_id": f"c{self._ids}", "ts": ts, "user_id": user, "session_id": f"s-{user}",
                                  "type": kind, "channel": "app", "region": "east", "device": "ios", **fields})
        return self

    def add(self, ts: int, user: str, sku: str = "A", price: float = 100.0, quantity: int = 1,
            category: str = "shoes") -> "Stream":
        return self.click(ts, user, "add_to_cart", sku=sku, price=price, quantity=quantity, category=category)

    def order(self, ts: int, user: str, status: str, order_id: str = "o1", amount: float = 100.0,
              coupon_code: str | None = None) -> "Stream":
        self._ids += 1
        obj = {"event_id": f"o{self._ids}", "ts": ts, "order_id": order_id, "user_id": user, "status": status,
               "items": [{"sku": "A", "quantity": 1, "unit_price": amount}], "amount": amount}
        if coupon_code:
            obj["coupon_code"] = coupon_code
        self._add("orders", obj)
        return self

    def paid_history(self, ts: int, user: str, orders: int, amount: float, every_ms: int = 7 * DAY_MS) -> "Stream":
        """`orders` paid orders of `amount`, `every_ms` apart, the last at `ts`: a customer's value."""
        for index in range(orders):
            self.order(ts - (orders - 1 - index) * every_ms, user, "paid", order_id=f"{user}-h{index}", amount=amount)
        return self

    def tick(self, ts: int, user: str = "someone-else") -> "Stream":
        """Other shoppers' traffic on both topics: moves the stream's event time."""
        return self.click(ts, user, "page_view").order(ts, user, "cancelled", order_id=f"tick-{ts}")
