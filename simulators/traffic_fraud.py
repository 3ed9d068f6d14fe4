"""Traffic fraud: brushing rings and click farms, hidden among crowds behind shared addresses.

- Brushing (`brushing`): a ring of 20-200 accounts, most registered days or hours
  before, places fake orders for a few target SKUs to push their sales rank. A phone
  farm: every session picks a device from a small pool (about a dozen accounts per
  device) and an IP from a small pool (some of it a mobile carrier's gateway, shared
  with ordinary shoppers). Sessions follow a script (straight to the SKU, one unit,
  checkout, pay) with near-identical timings; some rings add a search first to look
  human. Payments are real money: a card or wallet from a small pool. A share of
  the orders is refunded days later.
- Click farms (`click_farm`): accounts of the same kind open sessions on a campaign's
  SKUs (the shop's hot items, so ordinary shoppers view them too) and leave without
  ordering, on a scripted dwell.
- Shared addresses (with either scenario): ordinary shoppers behind campus and office
  NATs (one IP for dozens to hundreds of accounts) and a mobile carrier's gateway (a
  few IPs shared by a large share of app sessions), each with their own device, so a
  naive "same IP" rule is visibly wrong. Clicks carry the optional `device_id` then.

Ground truth names every ring member (`ring_member`), fake order (`fake_order`) and fake
session (`fake_session`); the shared addresses are an `incident` (`shared_addresses`).
Assignment to shared addresses hashes the user id (no random draw), so the ordinary
shoppers' behaviour is the same as without these scenarios.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from random import Random
from typing import TYPE_CHECKING

from simulators.catalog import VIRTUAL, Catalog, Sku
from simulators.payments import PayerIdentity, create_order, emit_order, payment_result, request_payment
from simulators.population import random_card, random_device_id, random_ip
from simulators.sessions import open_visit
from simulators.timeline import DAY, HOUR, SECOND
from simulators.truth import FakeOrder, FakeSession, Incident, RingMember

if TYPE_CHECKING:
    from simulators.population import Shopper
    from simulators.world import World

CAMPUS_NATS = 2  # campus gateways: many accounts each
OFFICE_NATS = 4  # office gateways: dozens each
CARRIER_GATEWAY_IPS = 6  # a mobile carrier's gateway pool
NAT_SHARE = 0.04  # shoppers behind a campus or office NAT
CARRIER_SHARE = 0.20  # shoppers whose app sessions leave through the carrier's gateway
REFUND_SHARE = 0.35  # fake orders refunded afterwards
_CARRIER_PREFIX = 117  # China Mobile-style consumer range


@dataclass(frozen=True)
class SharedAddresses:
    """Which ordinary shoppers sit behind which shared address (a pure function of the user id)."""

    nat_ips: tuple[str, ...]  # campus first, then offices
    carrier_ips: tuple[str, ...]
    salt: str

    def home_ip(self, user_id: str) -> str | None:
        """The NAT address a shopper always uses, or None."""
        h = zlib.crc32(f"{self.salt}:nat:{user_id}".encode())
        if h % 10_000 >= NAT_SHARE * 10_000:
            return None
        # Campus gateways carry four times the people of an office one.
        weights = [4] * CAMPUS_NATS + [1] * OFFICE_NATS
        slot = (h // 10_000) % sum(weights)
        for ip, weight in zip(self.nat_ips, weights):
            if slot < weight:
                return ip
            slot -= weight
        return self.nat_ips[-1]

    def carrier_ip(self, user_id: str, session_id: str, channel: str) -> str | None:
        """The gateway address of an app session, or None when the shopper is not on the carrier."""
        if channel not in ("app", "mini_program", "live_stream"):
            return None
        if zlib.crc32(f"{self.salt}:carrier:{user_id}".encode()) % 10_000 >= CARRIER_SHARE * 10_000:
            return None
        return self.carrier_ips[zlib.crc32(session_id.encode()) % len(self.carrier_ips)]

    def click_device_id(self, user_id: str) -> str:
        """An ordinary shopper's own app or browser id."""
        return "dev-" + hashlib.blake2b(f"{self.salt}:{user_id}".encode(), digest_size=6).hexdigest()


def shared_addresses(rng: Random, tag: str) -> SharedAddresses:
    nat_ips = tuple(random_ip(rng) for _ in range(CAMPUS_NATS + OFFICE_NATS))
    carrier = tuple(random_ip(rng, (_CARRIER_PREFIX,)) for _ in range(CARRIER_GATEWAY_IPS))
    return SharedAddresses(nat_ips, carrier, tag)


@dataclass(frozen=True)
class Ring:
    """One brushing ring or click farm, planned up front."""

    ring_id: str
    kind: str  # brushing | click_farm
    start: int
    end: int
    size: int
    devices: tuple[str, ...]
    ips: tuple[str, ...]
    cards: tuple[tuple[str, str, str], ...]  # empty: each member pays with a wallet of its own
    skus: tuple[Sku, ...]
    sessions: int  # fake orders (brushing) or fake sessions (click farm) over the span
    cover_search_share: float  # sessions that search first, to look human
    step_ms: int  # the script's delay between steps
    seed: str


def plan_rings(rng: Random, names: tuple[str, ...], start: int, end: int, tag: str, catalog: Catalog,
               addresses: SharedAddresses) -> list[Ring]:
    rings: list[Ring] = []
    if "brushing" in names:
        ordinary = [s for s in catalog.skus if s.category_index != VIRTUAL and s.pool == "spot"
                    and 30 <= s.price <= 400 and s not in catalog.hot]
        for i in range(2 + int(rng.random() * 2)):
            size = 20 + int(rng.random() * 181)
            first, last = _span(rng, start, end)
            targets = tuple(rng.sample(ordinary, 1 + int(rng.random() * 3)))
            rings.append(_ring(rng, f"{tag}-ring{i}", "brushing", first, last, size, addresses, targets,
                               sessions=int(size * (1.0 + rng.random() * 0.6)), shared_cards=rng.random() < 0.5))
    if "click_farm" in names:
        for i in range(1 + int(rng.random() * 2)):
            size = 20 + int(rng.random() * 131)
            first, last = _span(rng, start, end)
            count = 2 + int(rng.random() * 3)
            campaign = tuple(catalog.hot[int(rng.random() * 5) + j] for j in range(count))
            rings.append(_ring(rng, f"{tag}-farm{i}", "click_farm", first, last, size, addresses, campaign,
                               sessions=int(size * (2.0 + rng.random() * 2.0)), shared_cards=False))
    return rings


def _span(rng: Random, start: int, end: int) -> tuple[int, int]:
    """When a ring works: from early in the run, for about half of it, inside the run."""
    span = end - start
    first = min(end - 1, start + int(span * (0.05 + rng.random() * 0.3)))
    return first, min(end, max(first + 1, first + int(span * (0.4 + rng.random() * 0.2))))


def _ring(rng: Random, ring_id: str, kind: str, first: int, last: int, size: int, addresses: SharedAddresses,
          skus: tuple[Sku, ...], sessions: int, shared_cards: bool) -> Ring:
    devices = tuple(random_device_id(rng) for _ in range(max(2, size // 12)))
    own_ips = [random_ip(rng) for _ in range(2 + int(rng.random() * 4))]
    if rng.random() < 0.5:  # a phone farm on mobile data leaves through the carrier's gateway too
        own_ips.append(addresses.carrier_ips[int(rng.random() * len(addresses.carrier_ips))])
    cards = tuple(random_card(rng) for _ in range(max(1, size // 15))) if shared_cards else ()
    return Ring(ring_id=ring_id, kind=kind, start=first, end=max(first + 1, last), size=size,
                devices=devices, ips=tuple(own_ips), cards=cards, skus=skus, sessions=max(1, sessions),
                cover_search_share=0.3 if rng.random() < 0.5 else 0.0,
                step_ms=int((4 + rng.random() * 8) * SECOND), seed=f"{ring_id}:{rng.random()}")


def shared_addresses_incident(start: int, end: int, addresses: SharedAddresses) -> Incident:
    return Incident(ts=start, name="shared_addresses", start_ts=start, end_ts=end,
                    detail={"nat_ips": list(addresses.nat_ips), "carrier_ips": list(addresses.carrier_ips)})


# -- running a ring -----------------------------------------------------------------------


class _RingState:
    __slots__ = ("ring", "rng", "members", "seen")

    def __init__(self, ring: Ring):
        self.ring = ring
        self.rng = Random(ring.seed)
        self.members: list["Shopper"] = []
        self.seen: set[str] = set()


def ring_start_task(w: "World", ts: int, ring: Ring) -> None:
    """The ring's accounts exist; its sessions are spread over its span, a little bunched."""
    state = _RingState(ring)
    rng = state.rng
    for _ in range(ring.size):
        shopper = w.population.register(rng, ts)
        account = w.population.account(shopper)
        # Most were registered in the last days (a farm opens accounts in batches); some are older.
        age = (2 * HOUR + rng.random() * 3 * DAY) if rng.random() < 0.7 else (30 + rng.random() * 300) * DAY
        account.created_ts = max(0, ts - int(age))
        shopper.busy_until = ring.end + HOUR  # never an ordinary visitor while the ring runs
        state.members.append(shopper)
    if ring.kind == "brushing":
        # The merchant behind the ring stocks up for it: fake orders must not fail for stock.
        for sku in ring.skus:
            w.stock.restock(ts, sku, ring.sessions + 20)
    span = ring.end - ring.start
    times = sorted(ring.start + int(span * rng.random() ** 1.2) for _ in range(ring.sessions))
    for index, at in enumerate(times):
        task = _fake_order_task if ring.kind == "brushing" else _fake_session_task
        w.schedule(at, task, state, index)


def _script_gap(rng: Random, step_ms: int) -> int:
    """A scripted delay: the same every time, within a few percent."""
    return int(step_ms * (0.95 + rng.random() * 0.1))


def _member_visit(w: "World", state: _RingState, ts: int, index: int):
    ring, rng = state.ring, state.rng
    # Members take turns, so every account is used; a few come round twice.
    shopper = state.members[index % len(state.members)]
    device_id = ring.devices[int(rng.random() * len(ring.devices))]
    ip = ring.ips[int(rng.random() * len(ring.ips))]
    v = open_visit(w, shopper, ts, ring.kind, channel="app", device="android", ip=ip, device_id=device_id)
    if v is not None and shopper.user_id not in state.seen:
        state.seen.add(shopper.user_id)
        w.record(RingMember(ts=ts, ring_id=ring.ring_id, user_id=shopper.user_id, ring_kind=ring.kind))
    return shopper, v, device_id


def _fake_order_task(w: "World", ts: int, state: _RingState, index: int) -> None:
    ring, rng = state.ring, state.rng
    shopper, v, device_id = _member_visit(w, state, ts, index)
    if v is None:
        return
    sku = ring.skus[int(rng.random() * len(ring.skus))]
    t = ts
    if rng.random() < ring.cover_search_share:
        queries = w.catalog.query_json[sku.category_index]
        v.search(t, queries[int(rng.random() * len(queries))])
        t += _script_gap(rng, ring.step_ms)
    v.product(t, "product_view", sku)
    t += _script_gap(rng, ring.step_ms)
    v.product(t, "add_to_cart", sku, 1)
    t += _script_gap(rng, ring.step_ms)
    v.click(t, "checkout_start", quantity=1, price=sku.price)
    t += _script_gap(rng, ring.step_ms) // 3
    v.click(t, "shipping_quote", price=0.0)
    t += _script_gap(rng, ring.step_ms)
    if t >= v.stop_ms:
        return
    w.schedule(t, _fake_checkout_task, state, v, sku, device_id)


def _fake_checkout_task(w: "World", ts: int, state: _RingState, v, sku: Sku, device_id: str) -> None:
    ring, rng = state.ring, state.rng
    cart = [[sku, 1, sku.price]]
    if w.stock.reserve(ts, cart) is not None:
        return
    order = create_order(w, ts, v, cart, 0.0, coupons=False)
    account = w.population.account(v.shopper)
    if ring.cards:
        card = ring.cards[int(rng.random() * len(ring.cards))]
        payer = PayerIdentity("card", card, device_id, v.ip, "CN", "CN", account.created_ts)
    else:
        payer = PayerIdentity("alipay", None, device_id, v.ip, "CN", None, account.created_ts)
    t = ts + _script_gap(rng, ring.step_ms)
    payment_id = request_payment(w, t, order, payer, fraud=False, rng=rng)
    t += 400 + int(rng.random() * 600)
    payment_result(w, t, order, payment_id, payer.method, None)
    t += 200 + int(rng.random() * 300)
    emit_order(w, t, order, "paid")
    refunded_ts = None
    if rng.random() < REFUND_SHARE:
        refunded_ts = t + int((1 + rng.random() * 3) * DAY)
        if refunded_ts < w.end_ms:
            emit_order(w, refunded_ts, order, "refunded")
        else:
            refunded_ts = None
    w.record(FakeOrder(ts=ts, ring_id=ring.ring_id, order_id=order.order_id, user_id=order.user_id,
                       session_id=v.session_id, sku=sku.id, amount=order.amount, paid_ts=t,
                       refunded_ts=refunded_ts))


def _fake_session_task(w: "World", ts: int, state: _RingState, index: int) -> None:
    ring, rng = state.ring, state.rng
    shopper, v, _ = _member_visit(w, state, ts, index)
    if v is None:
        return
    t = ts
    viewed = []
    for _ in range(1 + int(rng.random() * 2)):
        sku = ring.skus[int(rng.random() * len(ring.skus))]
        v.product(t, "product_view", sku)
        viewed.append(sku.id)
        t += _script_gap(rng, ring.step_ms)
    w.record(FakeSession(ts=ts, ring_id=ring.ring_id, session_id=v.session_id, user_id=shopper.user_id,
                         skus=tuple(viewed)))
