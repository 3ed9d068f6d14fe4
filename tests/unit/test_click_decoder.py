"""The fast click decoder gives exactly the checked decoder's record or error: intake and
every flow reading clickstream (funnel, coupons, churn) decode each click through it."""

import random

import orjson
import pytest

from operators.events import (
    MAX_EXPERIMENTS,
    MAX_MONEY,
    MAX_QUANTITY,
    MAX_STRING_CHARS,
    MAX_TS_MS,
    ClickEvent,
    InvalidEvent,
)
from operators.funnel import click_funnel_event_fast, funnel_event
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import HOUR
from tests.unit.test_stock_speed import ODD_VALUES, field_mutations, outcome


# At and just past every bound of operators.events: the fast decoder must send what the
# checked reader refuses to it, never take it.
HOSTILE_VALUES = [
    MAX_QUANTITY, MAX_QUANTITY + 1, MAX_TS_MS, MAX_TS_MS + 1, 2**63, 2**64 - 1, 2**64, float(2**70), -(2**70),
    MAX_MONEY, int(MAX_MONEY) + 1, MAX_MONEY * 1.5, 1e308, float("-inf"),
    "x" * MAX_STRING_CHARS, "x" * (MAX_STRING_CHARS + 1), "价" * 300_000,
    {f"e{i}": "v" for i in range(MAX_EXPERIMENTS)}, {f"e{i}": "v" for i in range(MAX_EXPERIMENTS + 1)},
    {"e": "v" * (MAX_STRING_CHARS + 1)}, {"e" * (MAX_STRING_CHARS + 1): "v"},
]


@pytest.fixture(scope="module")
def clicks():
    sim = generate(("normal",), seed=4, duration_ms=2 * HOUR, shoppers=20_000)
    return [orjson.loads(r.value) for r in input_records(sim) if r.topic == "clickstream"]


def test_the_fast_click_decoder_gives_the_checked_readers_record_or_error(clicks):
    rnd = random.Random(9)
    fields = ["event_id", "ts", "user_id", "session_id", "type", "channel", "region", "device", "sku", "category",
              "price", "quantity", "query", "ip", "experiment"]
    odd = ODD_VALUES + ["add_to_cart", "shipping_quote", {"exp": "a"}, {"exp": 1}, {1: "a"}] + HOSTILE_VALUES
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


def test_every_hostile_value_in_every_click_field_is_refused_by_both_readers_alike():
    base = {"event_id": "e", "ts": 5, "user_id": "u", "session_id": "s", "type": "search", "channel": "app",
            "region": "r", "device": "d"}
    refused = 0
    for name in ["event_id", "ts", "user_id", "session_id", "channel", "region", "device", "sku", "category",
                 "price", "quantity", "query", "ip", "experiment"]:
        for value in HOSTILE_VALUES:
            click = {**base, name: value}
            assert outcome(ClickEvent.from_dict, click) == outcome(ClickEvent._from_dict_checked, click), (name, value)
            try:
                expected = funnel_event(ClickEvent._from_dict_checked(click))
            except InvalidEvent:
                expected = None
                refused += 1
            fast = click_funnel_event_fast(click)
            assert fast is None or fast == expected, (name, value)
    assert refused > 100  # most of them are out of bounds for most fields
    for name, value in [("ts", MAX_TS_MS + 1), ("ts", float(2**70)), ("quantity", MAX_QUANTITY + 1),
                        ("price", MAX_MONEY * 1.5), ("price", int(MAX_MONEY) + 1), ("channel", "x" * 1_001),
                        ("sku", "价" * 300_000), ("experiment", {f"e{i}": "v" for i in range(MAX_EXPERIMENTS + 1)})]:
        click = {**base, name: value}
        assert click_funnel_event_fast(click) is None and outcome(ClickEvent.from_dict, click)[0] == "invalid"
