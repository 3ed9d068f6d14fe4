"""Shopping carts on event time: which carts were abandoned, and when.

Pure logic, no Bytewax. The coupons flow shards shoppers into a fixed number of
buckets; each bucket has one `CartBook` holding the open carts of its shoppers
and a heap of their abandonment deadlines. Every input batch reaches every
bucket with the batch's latest event time per input partition, so a bucket's
clock follows the whole stream (Bytewax watermarks are per key, and a shopper
who abandoned a cart sends nothing more), and falls back to the wall clock when
all input is quiet (`operators.clock.StreamClock`).

Cart rules:
- an episode opens with an `add_to_cart` when the shopper has no open cart; its
  id (`trigger_id`) is `{user_id}@{ts of that add}`.
- `add_to_cart` / `remove_from_cart` change the lines (a remove without a
  quantity removes the line); a cart that becomes empty is dropped (emptied).
- every click of the shopper and an order `created` are activity: the deadline
  is the last activity + the abandonment delay. An order `paid` closes the cart
  (ordered) and drops it. `cancelled` and `refunded` are not the shopper acting.
- a cart is abandoned when no activity comes before its deadline (an event
  stamped exactly at the deadline is too late).
- the shopper's value tier at the deadline comes from their paid (and refunded)
  orders up to it, by the RFM rules the churn flow uses (`operators.rfm`). It is
  kept here, not read from the churn flow's Redis hash, because that hash holds
  whatever the churn flow had read by the wall time of the decision.
- an item is out of stock at the deadline T when the stock flow's level for it as of
  T is `out`: each book keeps a private `StockLedger` (the stock flow's rules) fed the
  stock lines of `orders` and `inventory` in the same event-time loop as the cart
  events, and brought up to just before T when a cart is decided. Not read from
  `stock:{sku}` in Redis, which holds whatever the stock flow had read by the wall
  time of the decision.

Replay equals live: events and stock lines are applied in event-time order (ties
broken by a fixed rank and the event id), only once the stream's watermark has passed
them, and each deadline is decided between the events before and after it. So the
decisions depend only on which events exist, not on how partitions interleave
or batches are cut, as long as events arrive within the lateness.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import NamedTuple
from zlib import crc32

from operators.clock import Progress, StreamClock
from operators.rfm import CustomerState, RfmRules, record_paid, record_refund, rfm_view, tier_of
from operators.stock import StockLedger, StockLine, StockRules

# Event kinds, small ints: they ride in every buffered event.
ADD, REMOVE, CHECKOUT, SHIPPING, VIEW, SEARCH, OTHER_CLICK, ORDER_CREATED, ORDER_PAID, ORDER_REFUNDED = range(10)
CLICK_KINDS = {
    "add_to_cart": ADD,
    "remove_from_cart": REMOVE,
    "checkout_start": CHECKOUT,
    "shipping_quote": SHIPPING,
    "product_view": VIEW,
    "search": SEARCH,
    "page_view": OTHER_CLICK,
}
STAGES = ("cart", "checkout", "payment")
# The likely reason for leaving, as seen in the session (out of stock is judged later, from stock levels).
SIGNALS = ("shipping_fee", "comparison", "none")


class CartEvent(NamedTuple):
    """One input event that may matter to a cart. A NamedTuple: one per input event, kept cheap.

    Sorted by (ts, rank, event_id): the rank orders events of the same instant the
    same way in every run (clicks, then orders created, paid, refunded)."""

    ts: int
    rank: int
    event_id: str
    user_id: str
    kind: int
    sku: str | None = None
    category: str | None = None
    price: float | None = None  # clicks: the item price, or the quoted fee; orders: the amount
    quantity: int | None = None
    coupon_code: str | None = None  # paid orders only
    order_id: str | None = None


_ORDER_KEY = itemgetter(0, 1, 2)
_TS = itemgetter(0)
_STOCK_TS = itemgetter(1)  # StockLine.ts


class CartLine(NamedTuple):
    sku: str
    quantity: int
    price: float | None
    category: str | None


@dataclass(frozen=True, slots=True)
class AbandonedCart:
    """A cart with items and no activity for the abandonment delay: the decision."""

    user_id: str
    trigger_id: str  # the cart episode: `{user_id}@{opened_ts}`
    ts: int  # the deadline: the decision's event time
    opened_ts: int
    last_ts: int  # the shopper's last activity
    lines: tuple[CartLine, ...]
    stage: str  # cart | checkout | payment
    signal: str  # shipping_fee | comparison | none
    tier: str = "new"  # the shopper's value tier at the deadline
    out_of_stock: tuple[str, ...] = ()  # the cart's SKUs whose stock level is `out` at the deadline

    @property
    def value(self) -> float:
        return round(sum(line.quantity * (line.price or 0.0) for line in self.lines), 2)

    @property
    def skus(self) -> tuple[str, ...]:
        return tuple(line.sku for line in self.lines)


class Redemption(NamedTuple):
    """A paid order that carried a coupon code (ours or not: the offers step checks)."""

    ts: int
    user_id: str
    order_id: str
    coupon_code: str
    amount: float


@dataclass(frozen=True)
class CartRules:
    abandon_after_ms: int = 30 * 60_000
    lateness_ms: int = 250
    comparison_min_views: int = 1  # views of other items in a cart category, or searches, after the last cart change
    max_lines: int = 50  # a bot adding thousands of SKUs must not grow one cart without bound
    report_every_ms: int = 3_600_000  # the recovery metric window: buckets report when their clock crosses one
    rfm: RfmRules = RfmRules()  # value tiers: the churn flow's rules
    stock: StockRules = StockRules()  # stock levels: the stock flow's rules (its lateness is not used)


class _Cart:
    """One shopper's open cart. Slots only: memory per open cart is a budget (issue 5: < 2 KB)."""

    __slots__ = ("user_id", "opened_ts", "last_ts", "lines", "stage", "shipping_last", "browsed")

    def __init__(self, user_id: str, opened_ts: int) -> None:
        self.user_id = user_id
        self.opened_ts = opened_ts
        self.last_ts = opened_ts
        self.lines: tuple[CartLine, ...] = ()
        self.stage = 0  # index into STAGES
        self.shipping_last = False  # the last activity was a shipping quote with a fee
        self.browsed = 0  # comparison views and searches since the last cart change

    def __reduce__(self):
        # Snapshots pickle every open cart: a tuple is smaller and faster than the slots dict.
        return _restore_cart, (self.user_id, self.opened_ts, self.last_ts, self.lines, self.stage,
                               self.shipping_last, self.browsed)


def _restore_cart(user_id, opened_ts, last_ts, lines, stage, shipping_last, browsed) -> _Cart:
    cart = _Cart.__new__(_Cart)
    cart.user_id, cart.opened_ts, cart.last_ts, cart.lines = user_id, opened_ts, last_ts, lines
    cart.stage, cart.shipping_last, cart.browsed = stage, shipping_last, browsed
    return cart


@dataclass
class CartOutput:
    """What one call decided, and the bucket's watermark for the recovery windows."""

    abandoned: list[AbandonedCart]
    redemptions: list[Redemption]
    watermark: int | None  # None: nothing to report about time


def _private_ledger(rules: StockRules) -> StockLedger:
    # Driven on the book's event time (no lateness of its own): the book hands it lines
    # only once the stream's watermark has passed them.
    return StockLedger(replace(rules, lateness_ms=0))


class _StockFeed:
    """One run's stock lines passed by the watermark, in event-time order, handed to the
    book's ledger only as far as each decision needs them."""

    __slots__ = ("ledger", "lines", "applied")

    def __init__(self, ledger: StockLedger, lines: list[StockLine]) -> None:
        self.ledger = ledger
        self.lines = lines
        self.applied = 0

    def through(self, until: int) -> None:
        """Apply the lines stamped at or before `until`."""
        lines, start = self.lines, self.applied
        end = bisect_right(lines, until, lo=start, key=_STOCK_TS)
        self.ledger.apply_through(lines[start:end], until)
        self.applied = end


class CartBook:
    """The open carts of one bucket of shoppers, their deadlines, the stream clock, and a
    private copy of the stock ledger (every SKU's: any shopper may put any SKU in a cart)."""

    def __init__(self, rules: CartRules):
        self.rules = rules
        self.clock = StreamClock(lateness_ms=rules.lateness_ms)
        self.carts: dict[str, _Cart] = {}
        self.deadlines: list[tuple[int, str]] = []  # (deadline, user_id): at most one entry per open cart
        self.pending: list[CartEvent] = []  # arrived, not yet passed by the watermark
        self.applied_until: int | None = None  # events before this have been applied (the last watermark)
        self.reported_window: int | None = None  # the last recovery window boundary reported
        self.customers: dict[str, CustomerState] = {}  # shoppers of this bucket who ever paid: their RFM
        self.stock = _private_ledger(rules.stock)  # levels as of the book's event time
        self.stock_pending: list[StockLine] = []  # stock lines arrived, not yet passed by the watermark

    def __setstate__(self, state: dict) -> None:
        state.setdefault("customers", {})  # snapshots from before tiers were kept here
        if "stock" not in state:  # snapshots from before stock was judged here: every SKU unknown
            state["stock"] = _private_ledger(state["rules"].stock)  # (an old CartRules has the default)
            state["stock_pending"] = []
        self.__dict__.update(state)

    # -- configuration across restarts -------------------------------------------------------
    def configure(self, rules: CartRules, now_ms: int) -> None:
        """Resumed from a snapshot: the current rules, and the downtime is not quiet input."""
        if rules.abandon_after_ms != self.rules.abandon_after_ms:  # the open carts' deadlines move
            self.deadlines = [(cart.last_ts + rules.abandon_after_ms, user) for user, cart in self.carts.items()]
            heapq.heapify(self.deadlines)
        self.rules = rules
        self.clock.lateness_ms = rules.lateness_ms
        self.stock.rules = replace(rules.stock, lateness_ms=0)
        self.clock.resume(now_ms)

    # -- input ---------------------------------------------------------------------------------
    def add(self, events: list[CartEvent], progress: Progress, now_ms: int,
            stock_lines: list[StockLine] | tuple = ()) -> CartOutput:
        """One input batch's events for this bucket, its stock lines (the whole batch's:
        every bucket keeps every SKU's ledger), and the batch's progress (the whole
        batch's, so the clock follows the stream, not the bucket)."""
        self.clock.advance(progress, now_ms)
        if events:
            self.pending.extend(events)
        if stock_lines:
            self.stock_pending.extend(stock_lines)
        return self._run(now_ms)

    def advance(self, now_ms: int) -> CartOutput:
        """No input: deadlines still pass, by wall clock when all input is quiet."""
        return self._run(now_ms)

    def next_wake_ms(self, now_ms: int) -> int | None:
        """Wall time at which the next deadline passes if no input arrives."""
        due = self.deadlines[0][0] if self.deadlines else None
        if self.pending:
            first = self.pending[0].ts + 1  # sorted by the last `_run`
            due = first if due is None else min(due, first)
        if due is None:
            return None
        return self.clock.wall_time_when(due, now_ms)

    # -- the decisions -------------------------------------------------------------------------
    def _run(self, now_ms: int) -> CartOutput:
        watermark = self.clock.watermark(now_ms)
        abandoned: list[AbandonedCart] = []
        redemptions: list[Redemption] = []
        if watermark is None:
            return CartOutput(abandoned, redemptions, None)
        if self.applied_until is not None and watermark < self.applied_until:
            watermark = self.applied_until  # the clock never goes back (a resume, a new source)
        stock = self._stock_feed(watermark)
        pending = self.pending
        if pending:
            pending.sort(key=_ORDER_KEY)
            cut = bisect_left(pending, watermark, key=_TS)
            ready, self.pending = pending[:cut], pending[cut:]
            previous_id = None
            for event in ready:
                if event.event_id == previous_id:
                    continue  # the same event delivered twice (at-least-once producers)
                previous_id = event.event_id
                self._decide_until(event.ts, abandoned, stock)
                self._apply(event, redemptions)
        self._decide_until(watermark, abandoned, stock)
        # Like the cart events, stock lines apply once strictly older than the watermark.
        stock.through(watermark - 1)
        self.applied_until = watermark
        return CartOutput(abandoned, redemptions, self._report(watermark, abandoned or redemptions))

    def _report(self, watermark: int, has_news) -> int | None:
        """The watermark, when there is news or it crossed a recovery window boundary."""
        window = watermark - watermark % self.rules.report_every_ms
        if has_news or window != self.reported_window:
            self.reported_window = window
            return watermark
        return None

    def _stock_feed(self, watermark: int) -> _StockFeed:
        """The stock lines strictly older than the watermark, in event-time order (the
        ledger orders lines of one instant itself)."""
        pending = self.stock_pending
        if not pending:
            return _StockFeed(self.stock, [])
        pending.sort(key=_STOCK_TS)
        cut = bisect_left(pending, watermark, key=_STOCK_TS)
        ready, self.stock_pending = pending[:cut], pending[cut:]
        return _StockFeed(self.stock, ready)

    def _decide_until(self, ts: int, abandoned: list[AbandonedCart], stock: _StockFeed) -> None:
        """Decide every cart whose deadline is at or before `ts`."""
        deadlines = self.deadlines
        delay = self.rules.abandon_after_ms
        while deadlines and deadlines[0][0] <= ts:
            due, user_id = heapq.heappop(deadlines)
            cart = self.carts.get(user_id)
            if cart is None:
                continue  # ordered or emptied since
            deadline = cart.last_ts + delay
            if deadline > due:
                # Active since: queue it at its real deadline, so carts are decided in deadline
                # order (the stock ledger only moves forward) even when both fall due in one call.
                heapq.heappush(deadlines, (deadline, user_id))
                continue
            del self.carts[user_id]
            # The stock as of the deadline: lines stamped before it, as the stock flow's
            # level once its watermark reaches the deadline (one stamped at it is too late).
            stock.through(deadline - 1)
            abandoned.append(self._decision(cart, deadline))

    def _decision(self, cart: _Cart, deadline: int) -> AbandonedCart:
        if cart.shipping_last:
            signal = "shipping_fee"
        elif cart.browsed >= self.rules.comparison_min_views:
            signal = "comparison"
        else:
            signal = "none"
        return AbandonedCart(
            user_id=cart.user_id,
            trigger_id=f"{cart.user_id}@{cart.opened_ts}",
            ts=deadline,
            opened_ts=cart.opened_ts,
            last_ts=cart.last_ts,
            lines=cart.lines,
            stage=STAGES[cart.stage],
            signal=signal,
            tier=self.tier(cart.user_id, deadline),
            out_of_stock=tuple(line.sku for line in cart.lines if self.stock.level(line.sku) == "out"),
        )

    def tier(self, user_id: str, ts: int) -> str:
        """The shopper's value tier at `ts`, from the orders applied so far (all before `ts`)."""
        customer = self.customers.get(user_id)
        if customer is None:
            return "new"
        rfm = self.rules.rfm
        return tier_of(customer, rfm_view(customer, ts, rfm), rfm)

    def _apply(self, event: CartEvent, redemptions: list[Redemption]) -> None:
        kind = event.kind
        user_id = event.user_id
        if kind == ORDER_PAID or kind == ORDER_REFUNDED:
            self._record_value(event)
        if kind == ORDER_REFUNDED:
            return  # not the shopper acting on a cart
        if kind == ORDER_PAID:
            self.carts.pop(user_id, None)  # ordered: the cart is done (its heap entry is skipped)
            if event.coupon_code:
                redemptions.append(Redemption(event.ts, user_id, event.order_id or "", event.coupon_code,
                                              event.price or 0.0))
            return
        cart = self.carts.get(user_id)
        if cart is None:
            if kind != ADD or not event.sku or event.quantity == 0:
                return  # no open cart: nothing about this shopper is kept
            cart = self.carts[user_id] = _Cart(user_id, event.ts)
            heapq.heappush(self.deadlines, (event.ts + self.rules.abandon_after_ms, user_id))
        if event.ts > cart.last_ts:
            cart.last_ts = event.ts
        cart.shipping_last = False
        if kind == ADD:
            self._add_line(cart, event)
        elif kind == REMOVE:
            self._remove_line(cart, event)
            if not cart.lines:
                del self.carts[user_id]  # emptied
        elif kind == VIEW:
            if event.sku and all(line.sku != event.sku for line in cart.lines) and (
                    event.category is None or any(line.category == event.category for line in cart.lines)):
                cart.browsed += 1
        elif kind == SEARCH:
            cart.browsed += 1
        elif kind == CHECKOUT:
            cart.stage = max(cart.stage, 1)
        elif kind == SHIPPING:
            cart.stage = max(cart.stage, 1)
            # The quoted fee rides in `price`; a free quote is no reason to leave.
            cart.shipping_last = event.price is None or event.price > 0
        elif kind == ORDER_CREATED:
            cart.stage = 2

    def _record_value(self, event: CartEvent) -> None:
        customer = self.customers.get(event.user_id)
        amount = event.price or 0.0
        if event.kind == ORDER_PAID:
            if customer is None:
                customer = self.customers[event.user_id] = CustomerState(event.ts)
            record_paid(customer, event.ts, amount, crc32((event.order_id or event.event_id).encode()), self.rules.rfm)
        elif customer is not None:  # a refund of an order paid before this bucket's memory is no value to take
            record_refund(customer, event.ts, amount, self.rules.rfm)

    def _add_line(self, cart: _Cart, event: CartEvent) -> None:
        quantity = 1 if event.quantity is None else event.quantity
        lines = cart.lines
        for index, line in enumerate(lines):
            if line.sku == event.sku:
                price = line.price if event.price is None else event.price
                cart.lines = lines[:index] + (line._replace(quantity=line.quantity + quantity, price=price),) + \
                    lines[index + 1:]
                break
        else:
            if len(lines) >= self.rules.max_lines or quantity <= 0:
                return
            cart.lines = lines + (CartLine(event.sku, quantity, event.price, event.category),)
        cart.browsed = 0

    @staticmethod
    def _remove_line(cart: _Cart, event: CartEvent) -> None:
        lines = cart.lines
        for index, line in enumerate(lines):
            if line.sku == event.sku:
                left = 0 if event.quantity is None else line.quantity - event.quantity
                kept = (line._replace(quantity=left),) if left > 0 else ()
                cart.lines = lines[:index] + kept + lines[index + 1:]
                break
        cart.browsed = 0

    # -- introspection -------------------------------------------------------------------------
    def open_carts(self) -> int:
        return len(self.carts)
