"""The fast price decoder gives exactly the checked reader's record or error: the pricing
flow and intake decode every crawled price through it."""

import random

import orjson

from operators.events import MAX_MONEY, MAX_STRING_CHARS, MAX_TS_MS, PriceEvent
from simulators.prices import price_feed
from simulators.timeline import HOUR
from tests.unit.test_stock_speed import ODD_VALUES, field_mutations, outcome

# At and just past every bound the checked reader enforces: the fast path must leave them to it.
HOSTILE_VALUES = [MAX_TS_MS, MAX_TS_MS + 1, 2**63, 2**64, float(2**70), MAX_MONEY, int(MAX_MONEY) + 1,
                  MAX_MONEY * 1.5, 1e308, float("-inf"), 0.0, -0.01, 0.01, "CNY", "self", "double11",
                  "x" * MAX_STRING_CHARS, "x" * (MAX_STRING_CHARS + 1)]


def test_the_fast_price_decoder_gives_the_checked_readers_record_or_error():
    feed, _ = price_feed([(f"sku-{n}", 10.0 + n) for n in range(40)], 1_731_232_800_000, HOUR, seed=2)
    observations = [orjson.loads(event.value) for event in feed]
    observations += [{**obs, "promo": True} for obs in observations[:50]]  # a flag, not a name
    rnd = random.Random(4)
    fields = ["event_id", "ts", "sku", "seller", "price", "currency", "list_price", "floor", "promo"]
    odd = ODD_VALUES + HOSTILE_VALUES
    cases = 0
    for obj in rnd.sample(observations, 400):
        for variant in field_mutations(rnd, obj, fields, odd):
            assert outcome(PriceEvent.from_dict, variant) == outcome(PriceEvent._from_dict_checked, variant), variant
            cases += 1
    assert cases > 5000


def test_the_fast_price_decoder_keeps_the_types():
    event = PriceEvent.from_dict({"event_id": "e", "ts": 5, "sku": "s", "seller": "self", "price": 3, "floor": 2,
                                  "list_price": 4})
    assert (type(event.price), type(event.floor), type(event.list_price)) == (float, float, float)
    assert event.currency == "CNY" and event.promo is None and event.own
