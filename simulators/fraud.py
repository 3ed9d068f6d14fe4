"""Fraud the way it happens, with every fraudulent payment written to ground truth.

- Stolen cards: a brand-new account, an IP abroad or behind a proxy, a billing
  country that does not match, big-ticket items; declined cards are swapped for
  the next one. Most successful charges come back as chargebacks days later.
- Account takeover: a known customer's account on a device and IP never seen,
  shipping to another region, buying high-value goods with the saved payment method.
- Card testing: one bot (one device, one IP) pushing many small payments through
  different cards a few seconds apart; most are declined (planned in `scenarios`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulators.catalog import VIRTUAL
from simulators.payments import (
    PayerIdentity,
    cancel_task,
    chargeback,
    chargeback_delay,
    create_order,
    decline_reason,
    emit_order,
    payment_result,
    request_payment,
)
from simulators.population import REGIONS, random_card, random_device_id, random_ip
from simulators.scenarios import DATACENTER_IP_PREFIXES, FOREIGN_CARD_BINS, FOREIGN_COUNTRIES, Burst
from simulators.sessions import Visit, leave, open_visit, think
from simulators.timeline import MINUTE, SECOND
from simulators.truth import FraudPayment

if TYPE_CHECKING:
    from simulators.world import World

_CARD_TEST_DECLINES = ("card_declined", "invalid_card", "incorrect_cvc", "insufficient_funds")
STOLEN_CARD_DECLINE_RATE = 0.35  # issuers catch some stolen cards on their own
TAKEOVER_DECLINE_RATE = 0.10
CARD_TEST_SUCCESS_RATE = 0.10
CARD_TEST_CHARGEBACK_RATE = 0.30  # small charges: few cardholders notice


def stolen_card_visit(w: "World", ts: int) -> None:
    rng = w.fraud_rng
    shopper = w.population.register(rng, ts)
    w.population.account(shopper).device_id = random_device_id(rng)
    abroad = rng.random() < 0.6
    ip = random_ip(rng, DATACENTER_IP_PREFIXES) if abroad else random_ip(rng)
    country = FOREIGN_COUNTRIES[int(rng.random() * len(FOREIGN_COUNTRIES))] if abroad else "CN"
    channel = "web" if rng.random() < 0.6 else "app"
    device = "desktop" if channel == "web" else "android"
    v = open_visit(w, shopper, ts, "stolen_card", channel=channel, device=device, ip=ip,
                   region=REGIONS[int(rng.random() * len(REGIONS))][0])
    if v is None:
        return
    cart = _grab_expensive(w, v, ts)
    if cart is None:
        return
    t, lines = cart
    w.schedule(t, _stolen_card_order_task, v, lines, country)


def takeover_visit(w: "World", ts: int) -> None:
    rng = w.fraud_rng
    victim = w.population.pick_mature(rng, ts)
    if victim is None:
        return
    regions = [r for r, _ in REGIONS if r != victim.region]
    v = open_visit(w, victim, ts, "account_takeover", channel="app",
                   device="android" if victim.phone_os == "ios" else "ios",
                   ip=random_ip(rng), region=regions[int(rng.random() * len(regions))])
    if v is None:
        return
    cart = _grab_expensive(w, v, ts)
    if cart is None:
        return
    t, lines = cart
    victim.busy_until = max(victim.busy_until, t + 10 * MINUTE)
    w.schedule(t, _takeover_order_task, v, lines, random_device_id(rng))


def _grab_expensive(w: "World", v: Visit, ts: int) -> tuple[int, list] | None:
    """A quick, purposeful visit: a few high-value products, the dearest into the cart."""
    rng, catalog, stock = w.fraud_rng, w.catalog, w.stock
    rnd = rng.random
    v.page(ts)
    t, viewed = ts, []
    for _ in range(1 + int(rnd() * 3)):
        t += think(rnd, 6000.0, 1500)
        if t >= v.stop_ms:
            return None
        category = catalog.high_value[int(rnd() * len(catalog.high_value))]
        sku = catalog.pick(category, rnd())
        v.product(t, "product_view", sku)
        viewed.append(sku)
    sku = max(viewed, key=lambda s: s.price)
    quantity = 1 + int(rnd() * 2)
    t += think(rnd, 5000.0, 1000)
    if t >= v.stop_ms or stock.level(sku) < quantity:
        return None
    v.product(t, "add_to_cart", sku, quantity)
    cart = [[sku, quantity, sku.price]]
    t += think(rnd, 5000.0, 1000)
    if t >= v.stop_ms:
        return None
    v.click(t, "checkout_start", quantity=quantity, price=round(sku.price * quantity, 2))
    t += 1000 + int(rnd() * 2000)
    v.click(t, "shipping_quote", price=0.0)
    return t + 3000 + int(rnd() * 15000), cart


def _stolen_card_order_task(w: "World", ts: int, v: Visit, cart: list, country: str) -> None:
    rng = w.fraud_rng
    if w.stock.reserve(ts, cart) is not None:
        return leave(w, v, ts, cart, "checkout", "out_of_stock")
    order = create_order(w, ts, v, cart, 0.0, coupons=False)
    account = w.population.account(v.shopper)
    t = ts
    for _ in range(1 + int(rng.random() * 3)):  # up to three stolen cards
        t += 8000 + int(rng.random() * 30000)
        billing = FOREIGN_COUNTRIES[int(rng.random() * len(FOREIGN_COUNTRIES))]
        if rng.random() < 0.2:
            billing = country  # a careful fraudster matches the country
        payer = PayerIdentity("card", random_card(rng, FOREIGN_CARD_BINS), account.device_id, v.ip,
                              country, billing, account.created_ts)
        if _fraud_attempt(w, t, order, payer, "stolen_card", STOLEN_CARD_DECLINE_RATE,
                          w.profile.stolen_card_chargeback_rate):
            return None
    w.schedule(ts + w.profile.order_timeout_min * MINUTE, cancel_task, order)
    return leave(w, v, t, cart, "payment", "payment_failed", order.order_id)


def _takeover_order_task(w: "World", ts: int, v: Visit, cart: list, device_id: str) -> None:
    rng = w.fraud_rng
    if w.stock.reserve(ts, cart) is not None:
        return leave(w, v, ts, cart, "checkout", "out_of_stock")
    order = create_order(w, ts, v, cart, 0.0, region=v.region, coupons=False)
    victim = w.population.account(v.shopper)
    payer = PayerIdentity(victim.method, victim.card, device_id, v.ip, "CN",
                          victim.billing_country if victim.card else None, victim.created_ts)
    t = ts
    for _ in range(2):
        t += 5000 + int(rng.random() * 20000)
        if _fraud_attempt(w, t, order, payer, "account_takeover", TAKEOVER_DECLINE_RATE,
                          w.profile.takeover_chargeback_rate):
            return None
    w.schedule(ts + w.profile.order_timeout_min * MINUTE, cancel_task, order)
    return leave(w, v, t, cart, "payment", "payment_failed", order.order_id)


def _fraud_attempt(w: "World", ts: int, order, payer: PayerIdentity, pattern: str, decline_rate: float,
                   chargeback_rate: float, burst_id: str | None = None) -> bool:
    """One fraudulent payment, its outcome, the chargeback if any, and its truth. True if paid."""
    rng, plan = w.fraud_rng, w.plan
    payment_id = request_payment(w, ts, order, payer, fraud=True, rng=rng)
    done = ts + 300 + int(rng.random() * 2500)
    outage = plan.in_outage(done)
    declined = rng.random() < (max(decline_rate, plan.failure_rate(done)) if outage else decline_rate)
    if declined:
        reasons = _CARD_TEST_DECLINES if pattern == "card_testing" else None
        reason = reasons[int(rng.random() * len(reasons))] if reasons and not outage else \
            decline_reason(rng, payer.method, outage)
        payment_result(w, done, order, payment_id, payer.method, reason)
    else:
        payment_result(w, done, order, payment_id, payer.method, None)
        emit_order(w, done + 200 + int(rng.random() * 800), order, "paid")
    chargeback_ts = None
    if not declined and rng.random() < chargeback_rate:
        at = done + chargeback_delay(rng, w.profile.chargeback_delay_median_days)
        if at < w.end_ms:
            chargeback_ts = at
            chargeback(w, at, order, payment_id, payer.method)
    w.record(FraudPayment(ts=ts, payment_id=payment_id, order_id=order.order_id, user_id=order.user_id,
                          pattern=pattern, amount=order.amount, outcome="failed" if declined else "succeeded",
                          device_id=payer.device_id, ip=payer.ip, chargeback_ts=chargeback_ts,
                          burst_id=burst_id))
    return not declined


# -- card testing -------------------------------------------------------------------------


def burst_task(w: "World", ts: int, burst: Burst) -> None:
    """A card-testing bot starts: its accounts, then one attempt task per planned attempt."""
    rng = w.fraud_rng
    visits = []
    for _ in range(burst.accounts):
        account = w.population.register(rng, ts)
        w.population.account(account).device_id = burst.device_id
        v = open_visit(w, account, ts, "card_testing", channel="web", device="desktop", ip=burst.ip,
                       region=REGIONS[int(rng.random() * len(REGIONS))][0])
        if v is None:  # the web channel is dark: the bot talks to the API directly
            v = open_visit(w, account, ts, "card_testing", channel="api", device="desktop", ip=burst.ip)
        else:
            v.page(ts)
        visits.append(v)
    for index, at in enumerate(burst.attempt_ts):
        w.schedule(at, _card_test_attempt_task, burst, visits, index)


def _card_test_attempt_task(w: "World", ts: int, burst: Burst, visits: list[Visit], index: int) -> None:
    rng = w.fraud_rng
    v = visits[index % len(visits)]
    cheap = [s for s in w.catalog.by_category[VIRTUAL] if s.price <= 10.0]
    sku = cheap[int(rng.random() * len(cheap))]
    cart = [[sku, 1, sku.price]]
    if w.stock.reserve(ts, cart) is not None:
        return
    order = create_order(w, ts, v, cart, 0.0, coupons=False)
    billing = FOREIGN_COUNTRIES[int(rng.random() * len(FOREIGN_COUNTRIES))]
    payer = PayerIdentity("card", burst.cards[index], burst.device_id, burst.ip, burst.country, billing,
                          w.population.account(v.shopper).created_ts)
    t = ts + 300 + int(rng.random() * 1200)
    if not _fraud_attempt(w, t, order, payer, "card_testing", 1.0 - CARD_TEST_SUCCESS_RATE,
                          CARD_TEST_CHARGEBACK_RATE, burst.burst_id):
        w.schedule(ts + w.profile.order_timeout_min * MINUTE, cancel_task, order)
    v.shopper.busy_until = max(v.shopper.busy_until, t + SECOND)
