"""The fast click decoder gives exactly the checked decoder's record or error: intake and
every flow reading clickstream (funnel, coupons, churn) decode each click through it."""

import random

import orjson
import pytest

from operators.events import ClickEvent
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import HOUR
from tests.unit.test_stock_speed import ODD_VALUES, field_mutations, outcome


@pytest.fixture(scope="module")
def clicks():
    sim = generate(("normal",), seed=4, duration_ms=2 * HOUR, shoppers=20_000)
    return [orjson.loads(r.value) for r in input_records(sim) if r.topic == "clickstream"]


def test_the_fast_click_decoder_gives_the_checked_readers_record_or_error(clicks):
    rnd = random.Random(9)
    fields = ["event_id", "ts", "user_id", "session_id", "type", "channel", "region", "device", "sku", "category",
              "price", "quantity", "query", "ip", "experiment"]
    odd = ODD_VALUES + ["add_to_cart", "shipping_quote", {"exp": "a"}, {"exp": 1}, {1: "a"}]
    cases = 0
    for obj in rnd.sample(clicks, min(400, len(clicks))):
        variants = field_mutations(rnd, obj, fields, odd)
        for variant in variants:
            assert outcome(ClickEvent.from_dict, variant) == outcome(ClickEvent._from_dict_checked, variant), variant
            cases += 1
    assert cases > 5000


def test_the_fast_click_decoder_keeps_types_and_read_only_maps():
    click = ClickEvent.from_dict({"event_id": "e", "ts": 5, "user_id": "u", "session_id": "s", "type": "search",
                                  "channel": "app", "region": "r", "device": "d", "price": 3,
                                  "experiment": {"x": "y"}})
    assert type(click.price) is float and click.sku is None and click.experiment == {"x": "y"}
    with pytest.raises(TypeError):
        click.experiment["x"] = "z"  # type: ignore[index]
    with pytest.raises(AttributeError):
        click.type = "page_view"  # type: ignore[misc]
