"""The `prices` feed: our own prices and a crawler's view of rivals, with ground truth.

`price_feed(skus, ...)` gives the events of a seeded run, in event-time order, and its
truth. Our price for every SKU is published at the start and every `own_every_ms`;
each rival is crawled per SKU every 30-120 s with +-1% jitter around its price (normally
0-8% above ours). The `price_war` scenario adds, at known times:

- undercuts: a rival drops a SKU to 80-90% of our price for 10-20 minutes (truth:
  `PriceUndercut`, from the moment the rival changed the price, not when it was crawled);
- a promotion wave: one rival starts a promotion on `promo_skus` of our SKUs within
  three minutes, 3% under its normal price (not an undercut);
- noise that must raise nothing: a brief dip under our price that is gone by the next
  crawl, single absurd observations (x0.01, x50), duplicated deliveries (same
  `event_id`) and re-crawls (same price, new `event_id`), and rivals undercutting SKUs
  we do not sell.

`shopstream simulate --scenario price_war` runs the feed beside the shop's traffic
(`add_price_war`): the shop's `WATCHED_SKUS` best sellers are watched, events are
keyed by SKU, and the truth (`price_undercut`, `price_promo_wave`, and an `incident`
named `price_war` with the floors, the SKUs we do not sell and the noise counts) goes
into the run's ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from random import Random
from typing import TYPE_CHECKING

import orjson

from simulators.engine import SimEvent
from simulators.ordering import BUCKET_MS
from simulators.timeline import MINUTE, SECOND
from simulators.truth import Incident, PriceUndercut, PromoWave

if TYPE_CHECKING:
    from simulators.world import World

RIVALS = ("jd", "pdd", "suning")
PRICES = "prices"
# ASSUMED: operations watch their best sellers, not the whole catalogue; 100 SKUs x 3 rivals
# crawled every 30-120 s is ~15,000 price events an hour beside the shop's traffic.
WATCHED_SKUS = 100


@dataclass
class PriceTruth:
    undercuts: list[PriceUndercut] = field(default_factory=list)
    promo_waves: list[PromoWave] = field(default_factory=list)
    floors: dict[str, float] = field(default_factory=dict)
    own_prices: dict[str, float] = field(default_factory=dict)
    foreign_skus: tuple[str, ...] = ()  # crawled, but not ours
    duplicates: int = 0
    glitches: int = 0
    dips: int = 0


def price_feed(skus: list[tuple[str, float]], start_ms: int, duration_ms: int, seed: int = 1,
               price_war: bool = True, undercuts: int = 6, promo_skus: int = 12, foreign: int = 5,
               own_every_ms: int = 10 * MINUTE, id_prefix: str | None = None) -> tuple[list[SimEvent], PriceTruth]:
    """`id_prefix`: event ids are `{id_prefix}-{n}` (default `p-{seed}`)."""
    rng = Random(f"prices:{seed}")
    truth = PriceTruth()
    end_ms = start_ms + duration_ms
    events: list[tuple[int, str, dict]] = []
    counter = iter(range(10**12))
    prefix = id_prefix or f"p-{seed}"

    def emit(ts: int, body: dict) -> None:
        body = {"event_id": f"{prefix}-{next(counter)}", "ts": ts, **body}
        events.append((ts, body["sku"], body))

    own = {sku: round(price, 2) for sku, price in skus}
    for sku, price in own.items():
        floor = round(price * 0.85, 2)
        truth.floors[sku], truth.own_prices[sku] = floor, price
        for ts in range(start_ms, end_ms, own_every_ms):
            emit(ts, {"sku": sku, "seller": "self", "price": price, "floor": floor, "list_price": round(price * 1.2, 2)})

    # Each rival's normal price per SKU, and the planned deviations: (start, end, price, promo).
    normal = {(sku, rival): round(price * (1 + rng.uniform(0.0, 0.08)), 2) for sku, price in own.items()
              for rival in RIVALS}
    plans: dict[tuple[str, str], list[tuple[int, int, float, str | None]]] = {}
    ours = sorted(own)
    if price_war and ours:
        middle = start_ms + duration_ms // 3
        for sku in rng.sample(ours, min(undercuts, len(ours))):
            rival = rng.choice(RIVALS)
            start = middle + rng.randrange(0, max(1, duration_ms // 3))
            end = min(end_ms, start + rng.randrange(10 * MINUTE, 20 * MINUTE))
            price = round(own[sku] * rng.uniform(0.80, 0.90), 2)
            plans.setdefault((sku, rival), []).append((start, end, price, None))
            truth.undercuts.append(PriceUndercut(ts=start, sku=sku, rival=rival, end_ts=end, price=price,
                                                 our_price=own[sku]))
        promo_rival = rng.choice(RIVALS)
        wave_start = start_ms + duration_ms // 4
        taken = {u.sku for u in truth.undercuts}
        wave = [sku for sku in ours if sku not in taken][:promo_skus]
        for sku in wave:
            start = wave_start + rng.randrange(0, 3 * MINUTE)
            price = round(normal[(sku, promo_rival)] * 0.97, 2)
            plans.setdefault((sku, promo_rival), []).append((start, end_ms, price, "double11"))
        if wave:
            truth.promo_waves.append(PromoWave(ts=wave_start, rival=promo_rival, skus=tuple(wave)))

    for (sku, rival), base in normal.items():
        deviations = sorted(plans.get((sku, rival), []))
        ts = start_ms + rng.randrange(0, 2 * MINUTE)
        while ts < end_ms:
            price, promo = base, None
            for start, end, planned, planned_promo in deviations:
                if start <= ts < end:
                    price, promo = planned, planned_promo
            jittered = round(price * (1 + rng.uniform(-0.01, 0.01)), 2)
            body = {"sku": sku, "seller": rival, "price": jittered, "currency": "CNY"}
            if promo:
                body["promo"] = promo
            emit(ts, body)
            if price_war and rng.random() < 0.02:  # a redelivery: same event, same id
                events.append(events[-1])
                truth.duplicates += 1
            if price_war and rng.random() < 0.02:  # a re-crawl: same price, new id, a moment later
                emit(ts + 2 * SECOND, dict(body))
                truth.duplicates += 1
            if price_war and rng.random() < 0.005:  # a crawler glitch: one absurd reading
                emit(ts + 3 * SECOND, {**body, "price": round(price * rng.choice((0.01, 50.0)), 2)})
                truth.glitches += 1
            step = rng.randrange(30 * SECOND, 120 * SECOND)
            if price_war and rng.random() < 0.01 and not deviations:  # a dip gone within seconds
                emit(ts + 5 * SECOND, {**body, "price": round(own[sku] * 0.9, 2)})
                emit(ts + 15 * SECOND, dict(body))
                truth.dips += 1
            ts += step

    if price_war:
        foreign_skus = tuple(f"X-{seed}-{n}" for n in range(foreign))
        truth.foreign_skus = foreign_skus
        for sku in foreign_skus:
            for ts in range(start_ms, end_ms, MINUTE):
                emit(ts, {"sku": sku, "seller": "jd", "price": 1.0 + rng.random()})
                emit(ts, {"sku": sku, "seller": "pdd", "price": 5.0 + rng.random()})

    events.sort(key=lambda e: (e[0], e[2]["event_id"]))
    return [SimEvent(PRICES, sku.encode(), orjson.dumps(body), ts) for ts, sku, body in events], truth


def watched_skus(w: "World") -> list[tuple[str, float]]:
    """The shop's best sellers (spot stock, no gift cards), as (sku, our price)."""
    sellers = sorted((s for s in w.catalog.skus if s.pool == "spot" and s.category != "virtual"),
                     key=lambda s: (-s.popularity, s.id))
    return sorted((s.id, s.price) for s in sellers[:WATCHED_SKUS])


def add_price_war(w: "World") -> None:
    """The `price_war` feed of a simulation run: its events into the world's calendar (as
    JSON bytes keyed by SKU), its truth into the run's truth."""
    feed, truth = price_feed(watched_skus(w), w.start_ms, w.end_ms - w.start_ms, seed=w.seed,
                             id_prefix=f"{w.tag}-pr")
    buckets = w.buckets
    for event in feed:
        if event.ts < w.end_ms:  # a re-crawl or dip seconds after the last crawl may fall past the end
            buckets[event.ts // BUCKET_MS].append((event.ts, PRICES, event.key, event.value))
    w.record(Incident(ts=w.start_ms, name="price_war", start_ts=w.start_ms, end_ts=w.end_ms, detail={
        "skus": len(truth.own_prices), "rivals": list(RIVALS), "floors": truth.floors,
        "foreign_skus": list(truth.foreign_skus), "duplicates": truth.duplicates, "glitches": truth.glitches,
        "dips": truth.dips}))
    for record in sorted([*truth.undercuts, *truth.promo_waves], key=lambda r: (r.ts, r.kind)):
        w.record(record)
