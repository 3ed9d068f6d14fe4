"""Stock levels and the inventory topic: counts, reservations, restocks, adjustments.

The ledger changes only inside a task running at the event time of the event that
carries the change (an order `created` or `cancelled`, an inventory event), so the
level here is exactly what a consumer replaying orders and inventory in order
computes: `set` = level, `restock`/`adjust` += quantity, order created -= item
quantities, order cancelled += them (paid and refunded orders do not move stock:
returns go back through inspection, not onto the shelf). Orders are only created
when every item is available, so the generated stream never oversells.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

from simulators.catalog import VIRTUAL, Sku
from simulators.timeline import HOUR
from simulators.truth import Stockout, StockRestored

if TYPE_CHECKING:
    from simulators.world import World

INVENTORY = "inventory"

# A cart line: [sku, quantity, unit price].
CartLine = list


class StockLedger:
    def __init__(self, world: "World"):
        self._w = world
        self._levels: dict[str, int] = {}
        self._restock_pending: set[str] = set()

    def level(self, sku: Sku) -> int:
        return self._levels.get(sku.id, 0)

    # -- inventory events (emitted here, so the event and the change cannot differ) --------
    def count(self, ts: int, sku: Sku, quantity: int) -> None:
        """A stock count or allocation: the level becomes `quantity`."""
        self._emit(ts, sku, "set", quantity, with_safety=True)
        self._change(ts, sku, quantity)

    def restock(self, ts: int, sku: Sku, quantity: int) -> None:
        self._restock_pending.discard(sku.id)
        self._emit(ts, sku, "restock", quantity)
        self._change(ts, sku, self.level(sku) + quantity)

    def adjust(self, ts: int, sku: Sku, delta: int) -> None:
        self._emit(ts, sku, "adjust", delta)
        self._change(ts, sku, self.level(sku) + delta)

    # -- orders (the order event is emitted by the caller at the same ts) ---------------
    def reserve(self, ts: int, cart: Iterable[CartLine]) -> Sku | None:
        """Take stock for an order being created now; the first sold-out SKU if it cannot."""
        lines = list(cart)
        for sku, quantity, _ in lines:
            if self.level(sku) < quantity:
                return sku
        for sku, quantity, _ in lines:
            after = self.level(sku) - quantity
            self._change(ts, sku, after)
            if (after <= sku.safety_stock and sku.pool == "spot" and sku.category_index != VIRTUAL
                    and sku.id not in self._restock_pending):
                self._restock_pending.add(sku.id)
                rng = self._w.ops_rng
                lead = int(self._w.profile.restock_lead_median_h * HOUR * math.exp(rng.gauss(0.0, 0.4)))
                self._w.schedule(ts + lead, _restock_task, sku)
        return None

    def release(self, ts: int, cart: Iterable[CartLine]) -> None:
        """An unpaid order was cancelled: its stock is available again."""
        for sku, quantity, _ in cart:
            self._change(ts, sku, self.level(sku) + quantity)

    def _change(self, ts: int, sku: Sku, after: int) -> None:
        before = self._levels.get(sku.id)
        self._levels[sku.id] = after
        if before is None:
            return
        if before > 0 >= after:
            self._w.record(Stockout(ts=ts, sku=sku.id, pool=sku.pool))
        elif before <= 0 < after:
            self._w.record(StockRestored(ts=ts, sku=sku.id, pool=sku.pool))

    def _emit(self, ts: int, sku: Sku, kind: str, quantity: int, with_safety: bool = False) -> None:
        event = {"event_id": self._w.event_id(), "ts": ts, "sku": sku.id, "kind": kind,
                 "quantity": quantity, "pool": sku.pool, "warehouse": sku.warehouse}
        if with_safety:
            event["safety_stock"] = sku.safety_stock
        self._w.emit(ts, INVENTORY, sku.key, event)


def _restock_task(w: "World", ts: int, sku: Sku) -> None:
    # Replenish back up to the opening level (at least three times the safety stock).
    target = max(sku.initial_stock, 3 * sku.safety_stock)
    w.stock.restock(ts, sku, max(1, target - max(0, w.stock.level(sku))))


def open_stock(w: "World") -> None:
    """The opening stock count of every SKU, at the first instant of the run."""
    for sku in w.catalog.skus:
        w.stock.count(w.start_ms, sku, sku.initial_stock)


def adjustment_task(w: "World", ts: int) -> None:
    """Cycle-count corrections: shrinkage and found units on a random SKU."""
    rng = w.ops_rng
    skus = w.catalog.skus
    sku = skus[int(rng.random() * len(skus))]
    level = w.stock.level(sku)
    if sku.category_index != VIRTUAL and level >= 3:
        delta = (-2, -1, -1, 1)[int(rng.random() * 4)]
        w.stock.adjust(ts, sku, delta)
    gap = rng.expovariate(w.profile.adjustments_per_hour / HOUR)
    w.schedule(ts + max(1, int(gap)), adjustment_task)
