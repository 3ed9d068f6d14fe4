"""One simulation run: set up the world, then release events in event-time order.

`generate(...)` returns a `Simulation`; iterating it yields `SimEvent`s
(topic, Kafka key, JSON value bytes, event time) ordered by `ts` across all the
input topics (`prices` only with the `price_war` scenario), with shoppers' visits
interleaved. `simulation.truth` fills with ground truth as the output passes each
record's `ts`; it is complete when iteration ends. Iterating again replays the identical run (same bytes, fresh truth).
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random
from typing import Callable, Iterator, NamedTuple

from simulators.bad_events import corrupt
from simulators.draws import poisson
from simulators.fraud import burst_task, stolen_card_visit, takeover_visit
from simulators.inventory import StockLedger, adjustment_task, open_stock
from simulators.ordering import BUCKET_MS
from simulators.profile import PROFILE, ShopProfile
from simulators.scenarios import FlashSale, ScenarioPlan, parse_scenarios
from simulators.sessions import browse, flash_visit, open_visit
from simulators.timeline import HOUR, MINUTE
from simulators.traffic_fraud import ring_start_task
from simulators.truth import BadEvent, LapsingCustomer, TruthRecord
from simulators.world import World
from state.serde import dumps, loads, raw_text

# 2024-11-10 18:00 China time: an evening six hours before Double 11.
DEFAULT_START_MS = 1731232800000


class SimEvent(NamedTuple):
    topic: str  # contract topic name, without any prefix
    key: bytes  # user_id, or sku for inventory
    value: bytes  # the JSON message (or a deliberately malformed one)
    ts: int  # event time, ms


@dataclass(frozen=True)
class SimulationParams:
    scenarios: tuple[str, ...]
    seed: int | str
    start_ms: int
    duration_ms: int
    shoppers: int
    bad_rate: float
    profile: ShopProfile


class Simulation:
    def __init__(self, params: SimulationParams, on_truth: Callable[[TruthRecord], None] | None = None):
        self.params = params
        self.on_truth = on_truth
        self.truth: list[TruthRecord] = []

    @property
    def start_ms(self) -> int:
        return self.params.start_ms

    @property
    def end_ms(self) -> int:
        return self.params.start_ms + self.params.duration_ms

    def __iter__(self) -> Iterator[SimEvent]:
        self.truth = []
        return self._run(_build_world(self.params))

    def _run(self, w: World) -> Iterator[SimEvent]:
        params = self.params
        calendar, tasks = w.calendar, w.tasks
        truth, on_truth = self.truth, self.on_truth
        new = tuple.__new__
        encode = dumps
        bad_rate = params.bad_rate
        bad_rng = Random(f"{params.seed}:bad")
        topic_counts = {"clickstream": 0, "orders": 0, "payments": 0, "inventory": 0, "prices": 0}
        last_bucket = (w.end_ms - 1) // BUCKET_MS
        bucket = w.start_ms // BUCKET_MS - 1
        while True:
            bucket = calendar.next_bucket(bucket, tasks)
            if bucket is None or bucket > last_bucket:
                break
            tasks.run_until((bucket + 1) * BUCKET_MS)
            entries, released = calendar.release(bucket)
            if bucket == last_bucket:
                # Visits write clicks straight into buckets: drop what falls after the end.
                entries = [entry for entry in entries if entry[0] < w.end_ms]
            # Clicks arrive as JSON bytes already; everything else is a dict to encode.
            if not bad_rate:
                for ts, topic, key, obj in entries:
                    yield new(SimEvent, (topic, key, obj if obj.__class__ is bytes else encode(obj), ts))
            else:
                for ts, topic, key, obj in entries:
                    value = obj if obj.__class__ is bytes else encode(obj)
                    yield new(SimEvent, (topic, key, value, ts))
                    topic_counts[topic] += 1
                    if topic == "prices":
                        continue  # the crawler's feed brings its own noise (glitches, duplicates)
                    if bad_rng.random() < bad_rate:
                        event_id = w.bad_event_id()
                        defect, raw = corrupt(bad_rng, topic, loads(value), event_id)
                        text, encoding = raw_text(raw)
                        released.append(BadEvent(ts=ts, topic=topic, topic_index=topic_counts[topic],
                                                 defect=defect, raw=text, raw_encoding=encoding,
                                                 event_id=event_id))
                        topic_counts[topic] += 1
                        yield new(SimEvent, (topic, key, raw, ts))
            if released:
                released.sort(key=_truth_ts)
                truth.extend(released)
                if on_truth is not None:
                    for record in released:
                        on_truth(record)


def _truth_ts(record: TruthRecord) -> int:
    return record.ts


def generate(scenarios=("normal",), seed: int | str = 1, start_ms: int = DEFAULT_START_MS,
             duration_ms: int = HOUR, shoppers: int = 50_000, bad_rate: float = 0.0,
             profile: ShopProfile = PROFILE,
             on_truth: Callable[[TruthRecord], None] | None = None) -> Simulation:
    """A seeded, reproducible run of `duration_ms` of event time from `start_ms`.

    `scenarios`: names or comma lists from `scenarios.SCENARIOS`, mixed freely.
    `shoppers`: population size (sessions per day are ~0.4 x shoppers on a normal day).
    `bad_rate`: share of events followed by a malformed copy (recorded in truth).
    `on_truth`: called with each ground-truth record as it is released (e.g. a file writer).
    """
    if isinstance(scenarios, str):
        scenarios = (scenarios,)
    if duration_ms <= 0:
        raise ValueError(f"duration must be positive, got {duration_ms} ms")
    if shoppers < 1:
        raise ValueError(f"need at least one shopper, got {shoppers}")
    if not 0.0 <= bad_rate < 1.0:
        raise ValueError(f"bad_rate must be in [0, 1), got {bad_rate}")
    params = SimulationParams(parse_scenarios(scenarios), seed, int(start_ms), int(duration_ms),
                              int(shoppers), float(bad_rate), profile)
    return Simulation(params, on_truth)


# -- setting up a run ---------------------------------------------------------------------


def _build_world(params: SimulationParams) -> World:
    w = World(profile=params.profile, seed=params.seed, scenarios=params.scenarios,
              start_ms=params.start_ms, duration_ms=params.duration_ms, shoppers=params.shoppers)
    w.stock = StockLedger(w)

    def visits_per_min_at(ts: int) -> float:
        return w.population.sessions_per_day(ts) / 1440 * w.curve.weight(ts)

    w.plan = ScenarioPlan(params.scenarios, seed=params.seed, start=w.start_ms, end=w.end_ms, tag=w.tag,
                          profile=params.profile, catalog=w.catalog, curve=w.curve,
                          visits_per_min_at=visits_per_min_at)
    for incident in w.plan.incidents:
        w.record(incident)
    if "price_war" in params.scenarios:
        from simulators.prices import add_price_war  # it builds SimEvents: imports this module

        add_price_war(w)
    open_stock(w)
    for sale in w.plan.flash_sales:
        w.schedule(sale.start, _flash_start_task, sale)
    for burst in w.plan.bursts:
        w.schedule(burst.start, burst_task, burst)
    for ring in w.plan.rings:
        w.schedule(ring.start, ring_start_task, ring)
    w.schedule(w.start_ms + int(w.ops_rng.expovariate(params.profile.adjustments_per_hour / HOUR)),
               adjustment_task)
    w.schedule(w.start_ms, _arrivals_task, _fraud_visit_share(w))
    return w


def _fraud_visit_share(w: World) -> float:
    """Fraud visits per visit, so attempted fraud is `fraud_value_share` of payment value
    (a fraud visit attempts ~1.5 units of a high-value item, ~1.5 times)."""
    p = w.profile
    legit_value_per_visit = p.conversion * w.catalog.mean_item_price * p.units_per_order
    fraud_value_per_visit = w.catalog.mean_high_value_price * 1.5 * 1.5
    return p.fraud_value_share * legit_value_per_visit / fraud_value_per_visit


def _flash_start_task(w: World, ts: int, sale: FlashSale) -> None:
    """The flash allocation is counted onto the shelf as the sale opens."""
    for sku, allocation in zip(sale.skus, sale.allocations):
        w.stock.count(ts, sku, allocation)


def _arrivals_task(w: World, ts: int, fraud_share: float) -> None:
    """Draw this minute's visits (a Poisson count at the current rate) and schedule them."""
    rng = w.rng
    end = min(ts + MINUTE, w.end_ms)
    length = end - ts
    middle = ts + length // 2
    rates = w.population.visits_per_day(middle)
    total = sum(rates)
    expected = total / 1440 * w.curve.weight(middle) * w.plan.traffic_multiplier(middle) * length / MINUTE
    for at in sorted(ts + int(rng.random() * length) for _ in range(poisson(rng, expected))):
        w.schedule(at, _visit_task, rates, total, fraud_share)
    for sale in w.plan.flash_sales:
        crowd = sale.visits_per_min(middle) * length / MINUTE
        for at in sorted(ts + int(rng.random() * length) for _ in range(poisson(rng, crowd))):
            w.schedule(at, _flash_visit_task, sale, rates, total)
    w.schedule(ts + MINUTE, _arrivals_task, fraud_share)


def _visit_task(w: World, ts: int, rates: list[float], total: float, fraud_share: float) -> None:
    rng, p, population = w.rng, w.profile, w.population
    r = rng.random()
    if r < fraud_share:
        if w.fraud_rng.random() < p.stolen_card_share_of_fraud:
            return stolen_card_visit(w, ts)
        return takeover_visit(w, ts)
    if r < fraud_share + p.new_registration_share:
        shopper, kind = population.register(rng, ts), "new"
    else:
        shopper, kind = population.pick(rng, ts, rates, total), "normal"
        if shopper is None:
            return
        if population.newly_seen_lapsing:
            _record_lapsing(w, ts)
    v = open_visit(w, shopper, ts, kind)
    if v is not None:
        browse(w, v, ts)


def _flash_visit_task(w: World, ts: int, sale: FlashSale, rates: list[float], total: float) -> None:
    shopper = w.population.pick(w.rng, ts, rates, total)
    if shopper is None:
        return
    if w.population.newly_seen_lapsing:
        _record_lapsing(w, ts)
    flash_visit(w, shopper, ts, sale)


def _record_lapsing(w: World, ts: int) -> None:
    for shopper in w.population.newly_seen_lapsing:
        account = w.population.account(shopper)
        w.record(LapsingCustomer(ts=ts, user_id=shopper.user_id, prior_orders=account.prior_orders,
                                 last_order_ts=account.last_order_ts,
                                 half_life_days=w.profile.lapse_half_life_days))
    w.population.newly_seen_lapsing.clear()

