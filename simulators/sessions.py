"""Shopper visits and the funnel: browse -> cart -> checkout -> order -> pay.

A visit is generated when it starts, up to the moment the shopper submits an
order; placing the order is a task at its own event time, because it takes stock
and must see the level every earlier order left (see `inventory`). Abandoned
carts leave a visible reason in the stream: a shipping quote just before leaving,
a sold-out item at submit, or comparison browsing in the same category.

This is the hot path (most events are clicks): clicks are rendered straight to
JSON bytes, and random draws avoid the slower `Random` helpers.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

from simulators.catalog import Sku
from simulators.draws import lognormal_ms
from simulators.ordering import BUCKET_MS
from simulators.payments import create_order, settle
from simulators.population import Shopper
from simulators.timeline import HOUR, SECOND
from simulators.truth import CartAbandoned, CartRecovered
from state.serde import dumps

if TYPE_CHECKING:
    from simulators.scenarios import FlashSale
    from simulators.world import World

CLICKS = "clickstream"
_log = math.log

# Segment effects on the funnel, each averaging ~1 over the PLAYBOOK segment mix.
_CART_FACTOR = {"price_sensitive": 0.95, "quality": 0.9, "impulse": 1.25}
_CHECKOUT_FACTOR = {"price_sensitive": 1.0, "quality": 1.1, "impulse": 0.85}
_SHIPPING_FACTOR = {"price_sensitive": 1.4, "quality": 0.5, "impulse": 0.9}
# Reasons after which a shopper may come back for the cart on their own.
_RECOVERABLE = frozenset({"left", "comparison", "shipping_fee", "left_at_payment", "payment_failed"})


class Visit:
    """One session: who, where from, and how its click events are written.

    Clicks are the bulk of the traffic, so they are rendered straight to JSON
    bytes from fragments prepared once (the visit's own fields, each SKU's
    fields); free text (SKU fields, queries) is rendered by `serde.dumps`.
    A click at or after `stop_ms` (the run's end, or the channel going dark) is
    never written, whatever path the visit took to it.
    """

    __slots__ = ("shopper", "user_id", "key", "session_id", "channel", "region", "device", "ip",
                 "stop_ms", "kind", "recovers", "_head", "_buckets", "_event_id")

    def page(self, t: int) -> None:
        if t >= self.stop_ms:
            return
        self._buckets[t // BUCKET_MS].append((t, CLICKS, self.key, (
            f'{{"event_id":"{self._event_id()}","ts":{t},"type":"page_view",{self._head}}}').encode()))

    def product(self, t: int, kind: str, sku: Sku, quantity: int | None = None,
                price: float | None = None) -> None:
        """product_view, add_to_cart or remove_from_cart of one SKU (`price` overrides the list price)."""
        if t >= self.stop_ms:
            return
        fields = sku.json if price is None else f'"sku":"{sku.id}","category":"{sku.category}","price":{_number(price)}'
        if quantity is not None:
            fields = f'{fields},"quantity":{quantity}'
        self._buckets[t // BUCKET_MS].append((t, CLICKS, self.key, (
            f'{{"event_id":"{self._event_id()}","ts":{t},"type":"{kind}",{self._head},{fields}}}').encode()))

    def search(self, t: int, query_json: str) -> None:
        if t >= self.stop_ms:
            return
        self._buckets[t // BUCKET_MS].append((t, CLICKS, self.key, (
            f'{{"event_id":"{self._event_id()}","ts":{t},"type":"search",{self._head},"query":{query_json}}}'
        ).encode()))

    def click(self, t: int, kind: str, quantity: int | None = None, price: float | None = None) -> None:
        """checkout_start, shipping_quote: no SKU."""
        if t >= self.stop_ms:
            return
        fields = ""
        if quantity is not None:
            fields += f',"quantity":{quantity}'
        if price is not None:
            fields += f',"price":{_number(price)}'
        self._buckets[t // BUCKET_MS].append((t, CLICKS, self.key, (
            f'{{"event_id":"{self._event_id()}","ts":{t},"type":"{kind}",{self._head}{fields}}}').encode()))


def _number(value: float) -> str:
    return dumps(value).decode()


def open_visit(w: "World", shopper: Shopper, ts: int, kind: str, channel: str | None = None,
               device: str | None = None, ip: str | None = None, region: str | None = None,
               device_id: str | None = None) -> Visit | None:
    """A new session, or None when the shopper's channel is dark right now."""
    rng = w.rng
    if channel is None:
        channel = shopper.channel
        if rng.random() >= w.profile.preferred_channel_share:
            channel = _pick_channel(w, rng.random())
    plan = w.plan
    if plan.has_dark_channels and plan.is_dark(channel, ts):
        return None
    v = Visit()
    v.shopper, v.user_id, v.key = shopper, shopper.user_id, shopper.key
    v.session_id = w.session_id()
    v.channel = channel
    v.region = region or shopper.region
    v.device = device or shopper.device_for(channel)
    addresses = plan.addresses
    if addresses is not None and ip is None:
        # Behind a NAT or a carrier's gateway: the address many other shoppers share.
        ip = addresses.home_ip(shopper.user_id) or addresses.carrier_ip(shopper.user_id, v.session_id, channel)
    v.ip = ip or shopper.ip
    v.stop_ms = plan.stop_for(channel, ts) if plan.has_dark_channels else w.end_ms
    v.kind = kind
    v.recovers = None
    v._buckets = w.buckets
    v._event_id = w.event_id
    # Ids, channels, regions, devices and IPs are our own [A-Za-z0-9_.-] vocabulary:
    # nothing to escape (the contract tests parse every event).
    v._head = (f'"user_id":"{v.user_id}","session_id":"{v.session_id}","channel":"{channel}",'
               f'"region":"{v.region}","device":"{v.device}","ip":"{v.ip}"')
    if addresses is not None:
        v._head += f',"device_id":"{device_id or addresses.click_device_id(v.user_id)}"'
    if shopper.variant is not None:
        v._head += "," + _experiment_json(w.profile.experiment_name, shopper.variant)
    return v


@functools.cache
def _experiment_json(name: str, variant: str) -> str:
    return dumps({"experiment": {name: variant}}).decode()[1:-1]


def _pick_channel(w: "World", r: float) -> str:
    acc = 0.0
    for channel, share in w.profile.channel_mix:
        acc += share
        if r < acc:
            return channel
    return w.profile.channel_mix[-1][0]


def think(rng_random, mean_ms: float = 27_000.0, floor_ms: int = 3000) -> int:
    """Time to the next action: a floor plus an exponential tail."""
    return floor_ms + int(-mean_ms * _log(1.0 - rng_random()))


# -- the ordinary visit -----------------------------------------------------------------


def browse(w: "World", v: Visit, t: int) -> None:
    p, rnd, catalog, stock = w.profile, w.rng.random, w.catalog, w.stock
    shopper = v.shopper
    stop = v.stop_ms
    v.page(t)
    last = t
    if rnd() >= p.view_rate:  # bounced: a page or two, never a product
        if rnd() < 0.4:
            t += think(rnd)
            if t < stop:
                v.page(t)
                last = t
        return leave(w, v, last, None)

    search_odds = p.search_share / (p.search_share + p.recommendation_share)
    stay = p.mean_extra_views / (1.0 + p.mean_extra_views)
    viewed: list[Sku] = []
    while True:
        t += think(rnd)
        if t >= stop:
            return leave(w, v, last, None)
        r = rnd()
        category = shopper.affinity[0] if r < 0.35 else shopper.affinity[1] if r < 0.55 else \
            catalog.pick_category(shopper.segment, rnd())
        if rnd() < search_odds:
            queries = catalog.query_json[category]
            v.search(t, queries[int(rnd() * len(queries))])
            t += think(rnd, 8000.0, 1500)
        elif rnd() < 0.2:
            v.page(t)  # a listing or the home feed
            t += think(rnd, 8000.0, 1500)
        sku = catalog.pick(category, rnd())
        v.product(t, "product_view", sku)
        viewed.append(sku)
        last = t
        if rnd() >= stay:
            break

    if rnd() >= p.cart_given_view * shopper.intent * _CART_FACTOR[shopper.segment]:
        return leave(w, v, last, None)
    sku = viewed[-1]
    if stock.level(sku) <= 0:
        # Sold out: look at one alternative in the same category, or give up.
        t += think(rnd, 10000.0, 2000)
        sku = catalog.pick(sku.category_index, rnd())
        if t >= stop or stock.level(sku) <= 0:
            return leave(w, v, last, None)
        v.product(t, "product_view", sku)
    t += think(rnd, 10000.0, 2000)
    if t >= stop:
        return leave(w, v, last, None)
    quantity = 1 if rnd() < 0.85 else 2 if rnd() < 0.8 else 3
    v.product(t, "add_to_cart", sku, quantity)
    last = t
    cart = [[sku, quantity, sku.price]]

    if rnd() < p.second_item_rate:
        t += think(rnd)
        other = catalog.pick(catalog.pick_category(shopper.segment, rnd()), rnd())
        if t < stop and other is not sku and stock.level(other) > 0:
            v.product(t, "product_view", other)
            t += think(rnd, 10000.0, 2000)
            if t < stop:
                v.product(t, "add_to_cart", other, 1)
                cart.append([other, 1, other.price])
                last = t
                if rnd() < p.remove_item_rate:
                    t += think(rnd, 10000.0, 2000)
                    if t < stop:
                        removed = cart.pop(int(rnd() * 2))
                        v.product(t, "remove_from_cart", removed[0], removed[1])
                        last = t

    checkout_rate = p.checkout_given_cart * _CHECKOUT_FACTOR[shopper.segment]
    if shopper.variant == "treatment":
        checkout_rate *= p.experiment_checkout_lift
    if rnd() < checkout_rate:
        return checkout(w, v, t + think(rnd), cart)
    if rnd() < p.comparison_share_of_cart_abandons:
        # Comparison shopping: other products in the same category, then gone.
        for _ in range(2 + int(rnd() * 3)):
            t += think(rnd, 15000.0, 2000)
            if t >= stop:
                break
            v.product(t, "product_view", catalog.pick(cart[0][0].category_index, rnd()))
            last = t
        return leave(w, v, last, cart, "cart", "comparison")
    return leave(w, v, last, cart, "cart", "left")


def checkout(w: "World", v: Visit, t: int, cart: list) -> None:
    """Checkout page and shipping quote; the order itself is placed by a task."""
    p, rnd = w.profile, w.rng.random
    if t >= v.stop_ms:
        return _cut(w, v, t, cart, "checkout")
    subtotal = sum(qty * price for _, qty, price in cart)
    v.click(t, "checkout_start", quantity=sum(qty for _, qty, _ in cart), price=round(subtotal, 2))
    fee = 0.0
    if v.kind != "flash" and subtotal < p.free_shipping_threshold:
        fee = p.shipping_fees[int(rnd() * len(p.shipping_fees))]
    t += 1000 + int(rnd() * 3000)
    v.click(t, "shipping_quote", price=fee)
    if v.kind in ("normal", "new"):
        gone = p.shipping_abandon_with_fee if fee else p.shipping_abandon_free
        if rnd() < gone * _SHIPPING_FACTOR[v.shopper.segment]:
            return leave(w, v, t, cart, "checkout", "shipping_fee" if fee else "left")
    submit = t + 5000 + int(rnd() * 40000)
    v.shopper.busy_until = max(v.shopper.busy_until, submit + 5 * 60 * SECOND)
    if submit >= v.stop_ms:
        return _cut(w, v, t, cart, "checkout")
    w.schedule(submit, place_order_task, v, cart, fee, t)


def place_order_task(w: "World", ts: int, v: Visit, cart: list, fee: float, last: int) -> None:
    if ts >= v.stop_ms:
        return _cut(w, v, last, cart, "checkout")
    sold_out = w.stock.reserve(ts, cart)
    if sold_out is not None:
        # "Sold out" at submit; the shopper looks at the item once more and leaves.
        v.product(ts, "product_view", sold_out)
        return leave(w, v, ts, cart, "checkout", "out_of_stock")
    order = create_order(w, ts, v, cart, fee, coupons=v.kind != "flash")
    result = settle(w, ts, v, order, always_attempt=v.kind == "recovery")
    v.shopper.busy_until = max(v.shopper.busy_until, result.ts)
    if result.outcome == "paid":
        if v.recovers is not None:
            session_id, abandoned_ts = v.recovers
            w.record(CartRecovered(ts=result.ts, user_id=v.user_id, session_id=session_id,
                                   abandoned_ts=abandoned_ts, recovery_session_id=v.session_id,
                                   order_id=order.order_id))
        return None
    return leave(w, v, result.ts, cart, "payment", result.outcome, order.order_id)


def _cut(w: "World", v: Visit, last: int, cart: list, stage: str) -> None:
    """The visit cannot go on: its channel went dark (a visible reason), or the run ends
    (nothing to record: what the shopper would have done lies beyond the run)."""
    if v.stop_ms < w.end_ms:
        return leave(w, v, last, cart, stage, "channel_outage")
    return leave(w, v, last, None)


def leave(w: "World", v: Visit, last: int, cart: list | None, stage: str = "", reason: str = "",
          order_id: str | None = None) -> None:
    """The visit ends at `last`; a cart left behind is ground truth and may come back later.
    (A recovery visit that fails again adds nothing: that cart is already in truth.)"""
    shopper = v.shopper
    if last > shopper.busy_until:
        shopper.busy_until = last
    if not cart or v.kind == "recovery":
        return
    w.record(CartAbandoned(ts=last, user_id=v.user_id, session_id=v.session_id, stage=stage,
                           reason=reason, skus=tuple(line[0].id for line in cart),
                           value=round(sum(qty * price for _, qty, price in cart), 2),
                           channel=v.channel, visit=v.kind, order_id=order_id))
    p = w.profile
    if v.kind in ("normal", "new") and reason in _RECOVERABLE and w.rng.random() < p.cart_recovery_rate:
        delay = max(HOUR // 2, lognormal_ms(w.rng, p.recovery_delay_median_h * HOUR, 0.8))
        w.schedule(last + delay, recovery_task, shopper, cart, v.session_id, last)


# -- other kinds of visit ---------------------------------------------------------------


def recovery_task(w: "World", ts: int, shopper: Shopper, cart: list, session_id: str, abandoned_ts: int) -> None:
    """The shopper comes back for an abandoned cart and buys it."""
    if shopper.busy_until > ts:
        w.schedule(shopper.busy_until + 60 * SECOND, recovery_task, shopper, cart, session_id, abandoned_ts)
        return
    v = open_visit(w, shopper, ts, "recovery")
    if v is None:
        return
    v.recovers = (session_id, abandoned_ts)
    rnd = w.rng.random
    v.page(ts)  # the cart page
    checkout(w, v, ts + think(rnd, 15000.0, 2000), cart)


def flash_visit(w: "World", shopper: Shopper, ts: int, sale: "FlashSale") -> None:
    """A shopper from the flash-sale crowd: straight to the deal, quick to buy."""
    v = open_visit(w, shopper, ts, "flash")
    if v is None:
        return
    rnd, stock = w.rng.random, w.stock
    v.page(ts)  # the campaign page
    t = ts + think(rnd, 5000.0, 1000)
    r = rnd()
    index = next((i for i, c in enumerate(sale.cum_weights) if r < c), len(sale.skus) - 1)
    sku, price = sale.skus[index], sale.prices[index]
    if t >= v.stop_ms:
        return leave(w, v, ts, None)
    v.product(t, "product_view", sku, price=price)
    if stock.level(sku) <= 0 or rnd() >= 0.7:
        return leave(w, v, t, None)  # sold out already, or just looking
    t += think(rnd, 5000.0, 1000)
    if t >= v.stop_ms:
        return leave(w, v, t, None)
    quantity = 1 if rnd() < 0.8 else 2
    v.product(t, "add_to_cart", sku, quantity, price=price)
    cart = [[sku, quantity, price]]
    if rnd() < 0.9:
        return checkout(w, v, t + think(rnd, 8000.0, 2000), cart)
    return leave(w, v, t, cart, "cart", "left")
