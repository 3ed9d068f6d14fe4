"""Test doubles for the coupons flow's outside world (Redis in production) and hand-built input."""

from __future__ import annotations

from bisect import bisect_right

import orjson

from operators.coupons import Coupon
from operators.events import OrderEvent
from operators.stock import StockLedger, StockRules, inventory_line, order_lines
from state.kafka import InputRecord
from state.serde import decode_event

DAY_MS = 86_400_000


class FakePorts:
    """The issuer's rules (duplicate, flag, cap) in memory; our coupons are the ones issued.

    The real issuer is a Lua script, tested against Redis in tests/integration; this
    keeps flow tests free of Redis. `offered` keeps every coupon the flow asked for."""

    def __init__(self, flagged=(), cap_ms=DAY_MS):
        self.flagged = set(flagged)
        self.cap_ms = cap_ms
        self.issued: dict[str, Coupon] = {}
        self.last: dict[str, tuple[str, int]] = {}
        self.offered: list[tuple[Coupon, str]] = []
        self.lookups: list[list[str]] = []

    def our_coupons(self, codes):
        self.lookups.append(codes)
        return frozenset(c for c in codes if c in self.issued)

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
    """Out-of-stock SKUs as of an event time, by the stock flow's rules: the `stock_level`
    changes of one ledger fed every order and inventory event in event-time order, as the
    stock flow's `stock:{sku}` level says once its watermark has reached that time."""

    def __init__(self, records: list[InputRecord], rules: StockRules | None = None):
        lines = []
        for record in records:
            if record.topic not in ("orders", "inventory"):
                continue
            event = decode_event(record.topic, record.value)
            lines.extend(order_lines(event) if type(event) is OrderEvent else [inventory_line(event)])
        ledger = StockLedger(rules or StockRules(lateness_ms=0))
        self._changes: dict[str, tuple[list[int], list[bool]]] = {}
        for change in ledger.apply_through(lines, max((line.ts for line in lines), default=0)).level_changes:
            times, outs = self._changes.setdefault(change.sku, ([], []))
            times.append(change.ts)
            outs.append(change.level == "out")

    def out_at(self, sku: str, ts: int) -> bool:
        """Out of stock as of `ts`: by the changes stamped before it."""
        changes = self._changes.get(sku)
        if changes is None:
            return False
        index = bisect_right(changes[0], ts - 1)
        return index > 0 and changes[1][index - 1]


class Stream:
    """Hand-built input records: clicks, orders and inventory on partition 0 of their topics."""

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
              coupon_code: str | None = None, sku: str = "A", quantity: int = 1) -> "Stream":
        self._ids += 1
        obj = {"event_id": f"o{self._ids}", "ts": ts, "order_id": order_id, "user_id": user, "status": status,
               "items": [{"sku": sku, "quantity": quantity, "unit_price": amount / quantity}], "amount": amount}
        if coupon_code:
            obj["coupon_code"] = coupon_code
        self._add("orders", obj)
        return self

    def inventory(self, ts: int, sku: str, kind: str, quantity: int, pool: str = "spot") -> "Stream":
        """An inventory event: `set` a level, `restock` (+quantity) or `adjust` (+/-quantity)."""
        self._ids += 1
        self._add("inventory", {"event_id": f"i{self._ids}", "ts": ts, "sku": sku, "kind": kind,
                                "quantity": quantity, "pool": pool})
        return self

    def paid_history(self, ts: int, user: str, orders: int, amount: float, every_ms: int = 7 * DAY_MS) -> "Stream":
        """`orders` paid orders of `amount`, `every_ms` apart, the last at `ts`: a customer's value."""
        for index in range(orders):
            self.order(ts - (orders - 1 - index) * every_ms, user, "paid", order_id=f"{user}-h{index}", amount=amount)
        return self

    def tick(self, ts: int, user: str = "someone-else") -> "Stream":
        """Other shoppers' traffic on both topics: moves the stream's event time."""
        return self.click(ts, user, "page_view").order(ts, user, "cancelled", order_id=f"tick-{ts}")
