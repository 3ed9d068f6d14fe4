"""The price watch (operators/pricing.py) and the pricing flow on TestingSource, against
the price feed's ground truth and the shop simulator's orders and inventory."""

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.pricing import PricingConfig, build_flow
from operators.clock import Progress
from operators.events import PriceEvent
from operators.pricing import PriceRules, PriceWatch
from operators.stock import StockLine
from simulators import generate
from simulators.prices import price_feed
from simulators.testing import input_records
from simulators.timeline import HOUR, MINUTE

NOW_MS = 1_900_000_000_000  # a fixed wall clock after the simulated run: everything runs on event time
CONFIG = PricingConfig(max_event_ahead_ms=3_600_000)


@pytest.fixture(scope="module")
def price_war():
    shop = list(generate(("normal",), seed=3, duration_ms=2 * HOUR, shoppers=50_000))
    prices = {}
    for event in shop:
        if event.topic == "orders":
            for item in orjson.loads(event.value)["items"]:
                prices.setdefault(item["sku"], item["unit_price"])
    feed, truth = price_feed(sorted(prices.items())[:60], shop[0].ts, 2 * HOUR, seed=3)
    events = sorted([e for e in shop if e.topic in ("orders", "inventory")] + feed, key=lambda e: e.ts)
    return input_records(events), truth


def run_pricing(records, batch_size=200):
    kafka_out, redis_out = [], []
    flow = build_flow(TestingSource(records, batch_size=batch_size), TestingSink(kafka_out), TestingSink(redis_out),
                      CONFIG, lambda: NOW_MS)
    run_main(flow)
    return kafka_out, redis_out


def of_topic(kafka_out, topic):
    return [r for m in kafka_out if m.topic == topic if "progress" not in (r := orjson.loads(m.value))]


def test_every_undercut_raises_one_alert_within_five_minutes_and_nothing_else_does(price_war):
    records, truth = price_war
    kafka_out, _ = run_pricing(records)
    undercuts = [c for c in of_topic(kafka_out, "alert-candidates") if c["rule"] == "price.undercut"]
    fired = {}
    for candidate in undercuts:
        if candidate["active"]:
            assert candidate["key"] not in fired, f"second alert for {candidate['key']}"
            fired[candidate["key"]] = candidate["ts"]
    assert truth.undercuts and truth.duplicates and truth.glitches and truth.dips
    assert set(fired) == {u.sku for u in truth.undercuts}  # none for noise, dips or foreign SKUs
    for undercut in truth.undercuts:
        assert 0 <= fired[undercut.sku] - undercut.ts <= 5 * MINUTE, undercut
    resolved = {c["key"]: c["ts"] for c in undercuts if not c["active"]}
    for undercut in truth.undercuts:
        if undercut.end_ts < max(r.timestamp_ms for r in records):
            assert undercut.end_ts <= resolved[undercut.sku] <= undercut.end_ts + 5 * MINUTE, undercut


def test_promotion_wave_alerts_once_for_its_rival(price_war):
    records, truth = price_war
    kafka_out, _ = run_pricing(records)
    promos = [c for c in of_topic(kafka_out, "alert-candidates") if c["rule"] == "price.rival_promo" and c["active"]]
    (wave,) = truth.promo_waves
    assert [c["key"] for c in promos] == [wave.rival]
    assert 0 <= promos[0]["ts"] - wave.ts <= 5 * MINUTE
    assert set(promos[0]["detail"]["skus"]) <= set(wave.skus)


def test_suggestions_never_go_below_the_floor_and_glitches_are_flagged_not_used(price_war):
    records, truth = price_war
    kafka_out, redis_out = run_pricing(records)
    suggestions = of_topic(kafka_out, "price-suggestions")
    assert {s["rule"] for s in suggestions} >= {"rival.match", "rival.floor", "rival.follow_up", "inventory.raise"}
    for suggestion in suggestions:
        assert suggestion["suggested_price"] >= truth.floors[suggestion["sku"]], suggestion
        assert suggestion["sku"] not in truth.foreign_skus
    assert len({s["suggestion_id"] for s in suggestions}) == len(suggestions)
    flagged = of_topic(kafka_out, "metrics")
    assert len(flagged) == truth.glitches
    views = {w.key: dict(w.fields) for w in redis_out}
    assert not any(key.removeprefix("price:") in truth.foreign_skus for key in views)
    undercut = truth.undercuts[0]
    assert views[f"price:{undercut.sku}"]["own_price"] == undercut.our_price


def test_same_input_same_outputs_however_it_is_batched(price_war):
    records, _ = price_war
    first, _ = run_pricing(records, batch_size=1000)
    second, _ = run_pricing(records, batch_size=37)
    # Progress markers follow the batching (one per batch that moved the clock): not results.
    assert sorted(m.value for m in first if b'"progress"' not in m.value) == sorted(
        m.value for m in second if b'"progress"' not in m.value)
    for topic in ("price-suggestions", "alert-candidates"):  # and in the same order per topic
        assert of_topic(first, topic) == of_topic(second, topic)


# -- pure rules ----------------------------------------------------------------------------------

T0 = 1_731_300_000_000


def price(ts, seller, value, event_id, **extra):
    return PriceEvent(event_id=event_id, ts=ts, sku="s1", seller=seller, price=value, **extra)


def feed(watch, items, until):
    progress = Progress()
    progress.saw(("prices", 0), until)
    return watch.add(items, progress, 0)


def test_stock_pressure_holds_the_price_against_a_cheaper_rival_and_raises_without_one():
    rules = PriceRules(lateness_ms=0)
    watch = PriceWatch(rules)
    stock = [StockLine("s1", T0, "set", "spot", 3, "inv-1", safety_stock=10)]  # urgent: 3 <= 50% of 10
    out = feed(watch, stock + [price(T0 + 1, "self", 100.0, "e1", floor=90.0)], T0 + 1)
    assert [(s.rule, s.suggested_price) for s in out.suggestions] == [("inventory.raise", 108.0)]
    out = feed(watch, [price(T0 + 2, "jd", 80.0, "e2")], T0 + 2)
    assert [(s.rule, s.suggested_price) for s in out.suggestions] == [("inventory.hold", 100.0)]


def test_a_rival_below_the_floor_is_approached_to_the_floor_only():
    watch = PriceWatch(PriceRules(lateness_ms=0))
    feed(watch, [StockLine("s1", T0, "set", "spot", 1000, "inv-1", safety_stock=10)], T0)
    out = feed(watch, [price(T0 + 1, "self", 100.0, "e1", floor=90.0), price(T0 + 2, "jd", 85.0, "e2")], T0 + 2)
    assert [(s.rule, s.suggested_price) for s in out.suggestions] == [("rival.floor", 90.0)]
    out = feed(watch, [price(T0 + 3, "jd", 95.0, "e3")], T0 + 3)
    assert [(s.rule, s.suggested_price) for s in out.suggestions] == [("rival.match", 95.0)]


def test_an_absurd_jump_is_flagged_until_seen_again_later():
    watch = PriceWatch(PriceRules(lateness_ms=0, jump_confirm_ms=60_000))
    feed(watch, [price(T0, "self", 100.0, "e1", floor=50.0), price(T0 + 1, "jd", 101.0, "e2")], T0 + 1)
    out = feed(watch, [price(T0 + 2, "jd", 1.0, "e3")], T0 + 2)
    assert [f.event_id for f in out.flagged] == ["e3"] and not out.suggestions
    out = feed(watch, [price(T0 + 10_000, "jd", 1.0, "e4")], T0 + 10_000)
    assert [f.event_id for f in out.flagged] == ["e4"]  # too soon to be a real change
    out = feed(watch, [price(T0 + 70_000, "jd", 1.0, "e5")], T0 + 70_000)
    assert not out.flagged and [s.rule for s in out.suggestions] == ["rival.floor"]


def test_an_undercut_shorter_than_the_hold_raises_nothing():
    watch = PriceWatch(PriceRules(lateness_ms=0, undercut_hold_ms=60_000))
    feed(watch, [price(T0, "self", 100.0, "e1"), price(T0 + 1, "jd", 80.0, "e2")], T0 + 1)
    out = feed(watch, [price(T0 + 59_000, "jd", 100.0, "e3")], T0 + 120_000)
    assert not out.candidates


def test_rival_prices_of_skus_we_never_sell_are_forgotten_after_the_horizon():
    watch = PriceWatch(PriceRules(lateness_ms=0, foreign_horizon_ms=HOUR))
    feed(watch, [price(T0, "self", 100.0, "own")], T0)
    # A crawler covering a rival's whole range: a new SKU of theirs every minute for ten
    # hours, and one of them (X-regular) crawled every 30 minutes throughout.
    for minute in range(600):
        ts = T0 + minute * MINUTE
        items = [PriceEvent(event_id=f"x{minute}", ts=ts, sku=f"X-{minute}", seller="jd", price=10.0)]
        if minute % 30 == 0:
            items.append(PriceEvent(event_id=f"r{minute}", ts=ts, sku="X-regular", seller="jd", price=10.0))
        feed(watch, items, ts)
    foreign = {name for name in watch.skus if name.startswith("X-")}
    assert "X-regular" in foreign and "s1" in watch.skus
    assert len(foreign) <= 62  # the last hour's (60 or 61) and the regular one, not 600
    assert len(watch.foreign) == len(foreign)  # one heap entry per SKU kept


def test_a_sku_priced_by_us_within_the_horizon_keeps_its_rival_prices():
    watch = PriceWatch(PriceRules(lateness_ms=0, foreign_horizon_ms=HOUR))
    feed(watch, [price(T0, "jd", 80.0, "e1")], T0)
    out = feed(watch, [price(T0 + 30 * MINUTE, "self", 100.0, "e2", floor=50.0)], T0 + 30 * MINUTE)
    assert [(s.rule, s.suggested_price) for s in out.suggestions] == [("rival.match", 80.0)]
    feed(watch, [], T0 + 3 * HOUR)
    assert "s1" in watch.skus  # ours now: kept


def test_a_snapshot_from_before_the_horizon_resumes_and_forgets():
    import pickle

    watch = PriceWatch(PriceRules(lateness_ms=0, foreign_horizon_ms=HOUR))
    feed(watch, [PriceEvent(event_id="x", ts=T0, sku="X-1", seller="jd", price=10.0)], T0)
    state = dict(watch.__dict__)
    del state["foreign"]  # what an older snapshot holds
    resumed = pickle.loads(pickle.dumps(watch))
    resumed.__setstate__(state)
    assert resumed.foreign == [(T0, "X-1")]
    feed(resumed, [], T0 + HOUR)
    assert "X-1" not in resumed.skus
