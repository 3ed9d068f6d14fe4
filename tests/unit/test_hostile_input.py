"""Hostile input, generated: whatever a producer sends, every input decoder and every flow
turns each value into a record or a dead letter (or skips it), and nothing raises.

The values: random bytes, invalid UTF-8, JSON of every type, integers beyond 64 bits,
NaN and Infinity (as Python values and as the JSON extensions `NaN`/`Infinity`), nesting
far beyond orjson's stack, huge strings, oversized item lists, and valid events with one
field (or an item field, or a signal) replaced by one of those. A record that comes out
holds only numbers inside the bounds of `operators.events`, and every fast decoder agrees
with the checked one, so no flow does arithmetic on a number the contract cannot mean.
"""

from __future__ import annotations

import json
import math

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flows import alerts, churn, coupons, fraud, funnel, intake, stock
from operators.carts import CartRules
from operators.coupon_policy import load_policy
from operators.dead_letters import DeadLetter
from operators.events import (
    MAX_MONEY,
    MAX_ORDER_ITEMS,
    MAX_QUANTITY,
    MAX_SIGNAL,
    MAX_STRING_CHARS,
    MAX_TS_MS,
    MIN_TS_MS,
    ClickEvent,
    InvalidEvent,
    InventoryEvent,
    OrderEvent,
    PaymentEvent,
    click_values_fast,
    order_values_fast,
    parse_event,
)
from operators.fraud_engine import FraudConfig
from operators.funnel import click_funnel_event_fast, funnel_event
from operators.stock import StockRules
from shopstream.settings import Settings
from state.inputs import decode_record
from state.kafka import InputRecord
from state.serde import decode_event
from tests.unit.coupon_fakes import FakePorts
from tests.unit.test_stock_speed import outcome

T0 = 1_763_683_200_000  # 2025-11-21
NOW_MS = 1_900_000_000_000  # the flows' fixed wall clock, after every valid event
AHEAD_MS = 10**13  # so far ahead that only the contract's bounds judge `ts`, not the wall clock
MESSAGE_MAX_BYTES = 1_048_588  # Kafka's default message.max.bytes

CLICK = {"event_id": "c1", "ts": T0, "user_id": "u1", "session_id": "s1", "type": "add_to_cart", "sku": "A",
         "price": 10.5, "quantity": 2, "channel": "app", "region": "east", "device": "ios",
         "experiment": {"button": "green"}, "device_id": "d1"}
ITEM = {"sku": "A", "quantity": 2, "unit_price": 10.5, "pool": "spot"}
ORDER = {"event_id": "o1", "ts": T0 + 1000, "order_id": "o1", "user_id": "u1", "session_id": "s1",
         "status": "paid", "items": [ITEM], "amount": 21.0, "shipping_fee": 5, "channel": "app"}
PAYMENT = {"event_id": "p1", "ts": T0 + 2000, "payment_id": "p1", "order_id": "o1", "user_id": "u1",
           "status": "requested", "amount": 21.0, "method": "card", "card_fingerprint": "f1",
           "account_created_ts": T0 - 86_400_000, "signals": {"device_risk": 0.3}}
INVENTORY = {"event_id": "i1", "ts": T0 - 1000, "sku": "A", "kind": "set", "quantity": 50, "safety_stock": 5}
TEMPLATES = {"clickstream": CLICK, "orders": ORDER, "payments": PAYMENT, "inventory": INVENTORY}
TOPICS = tuple(TEMPLATES)

# Right at and just past every bound, and what a 64-bit-minded producer sends.
EDGE_NUMBERS = [
    0, -1, 1, MAX_QUANTITY, MAX_QUANTITY + 1, -MAX_QUANTITY, -MAX_QUANTITY - 1, 2**53 + 1, 2**62, 2**63 - 1, 2**63,
    2**64 - 1, 2**64, 2**70, -(2**70), MAX_TS_MS, MAX_TS_MS + 1, int(MAX_MONEY), int(MAX_MONEY) + 1, MAX_MONEY,
    math.nextafter(MAX_MONEY, math.inf), MAX_SIGNAL, -MAX_SIGNAL - 1, 1e21, 1e300, -1e300, 5e-324, -0.0, 0.5,
    2.0**70, float("nan"), float("inf"), float("-inf"), True, False,
]

huge_strings = st.builds(lambda ch, n: ch * n, st.sampled_from(["x", "价", "\x01", '"', "\\", "["]),
                         st.sampled_from([10_000, 300_000]))
scalars = st.one_of(
    st.sampled_from(EDGE_NUMBERS),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "paid", "created", "cancelled", "add_to_cart", "adjust", "restock", "presale", "spot"]),
    st.none(),
    st.booleans(),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
hostile_values = st.one_of(json_values, huge_strings)


def deep(depth: int, kind: str) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


@st.composite
def contract_like(draw, topic: str) -> dict:
    """A valid event of `topic` with a few fields (or item fields, or signals) made hostile."""
    obj = json.loads(json.dumps(TEMPLATES[topic]))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        target = obj
        items = obj.get("items")
        # An earlier round may have left items[0] an empty dict: nothing in it to change.
        if topic == "orders" and type(items) is list and items and type(items[0]) is dict and items[0] \
                and draw(st.booleans()):
            target = items[0] = dict(items[0])
        if topic == "payments" and draw(st.integers(0, 3)) == 0:
            signals = obj.get("signals") if isinstance(obj.get("signals"), dict) else {}
            obj["signals"] = {**signals, draw(st.text(max_size=4)): draw(hostile_values)}
            continue
        name = draw(st.sampled_from(sorted(target)))
        if draw(st.integers(0, 9)) == 0:
            target.pop(name)
        else:
            target[name] = draw(hostile_values)
    if topic == "orders" and draw(st.integers(0, 5)) == 0:
        obj["items"] = [ITEM] * draw(st.sampled_from([MAX_ORDER_ITEMS, MAX_ORDER_ITEMS + 1, 10_000]))
    return obj


def objects(topic: str):
    return st.one_of(contract_like(topic), contract_like(topic), json_values,
                     st.builds(deep, st.sampled_from([500, 1023]), st.sampled_from(["list", "dict"])))


def to_bytes(obj: object) -> bytes:
    """JSON text as a hostile producer may write it: the stdlib writes integers of any size,
    and NaN/Infinity as the extensions `NaN`/`Infinity` (orjson refuses both)."""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def raw_values(draw, topic: str) -> bytes | None:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:
        return draw(st.sampled_from([None, b"", b"\xff" * 900_000, b"\xc3\x28" + to_bytes(CLICK), b"NaN", b"-Infinity",
                                     b"[" * 10_000 + b"]" * 10_000, b'{"a":' * 100_000, b'{"ts": 1e400}']))
    if kind == 2:
        return b"[" * draw(st.integers(1000, 5000)) + b"]" * draw(st.integers(0, 5000))
    return to_bytes(draw(objects(topic)))


def records_batch():
    return st.lists(st.sampled_from(TOPICS).flatmap(lambda t: st.tuples(st.just(t), raw_values(t))),
                    min_size=1, max_size=12)


# -- every decoder, value by value --------------------------------------------------------------


def check_record(event) -> None:
    """A record that came out holds only numbers and strings inside the bounds, and encodes."""
    assert MIN_TS_MS <= event.ts <= MAX_TS_MS
    strings = [getattr(event, name) for name in event.__slots__ if type(getattr(event, name)) is str]
    strings += [s for item in getattr(event, "items", ()) for s in (item.sku, item.pool)]
    assert all(len(s) <= MAX_STRING_CHARS for s in strings)
    if type(event) is ClickEvent:
        assert event.quantity is None or 0 <= event.quantity <= MAX_QUANTITY
        assert event.price is None or 0 <= event.price <= MAX_MONEY
    elif type(event) is OrderEvent:
        assert 0 <= event.amount <= MAX_MONEY and len(event.items) <= MAX_ORDER_ITEMS
        assert event.shipping_fee is None or 0 <= event.shipping_fee <= MAX_MONEY
        for item in event.items:
            assert 1 <= item.quantity <= MAX_QUANTITY and 0 <= item.unit_price <= MAX_MONEY
    elif type(event) is PaymentEvent:
        assert 0 <= event.amount <= MAX_MONEY
        assert event.account_created_ts is None or MIN_TS_MS <= event.account_created_ts <= MAX_TS_MS
        assert all(-MAX_SIGNAL <= v <= MAX_SIGNAL for v in (event.signals or {}).values())
    else:
        assert type(event) is InventoryEvent
        assert -MAX_QUANTITY <= event.quantity <= MAX_QUANTITY
        assert event.safety_stock is None or 0 <= event.safety_stock <= MAX_QUANTITY
    orjson.dumps(event.to_dict())


def checked(topic: str, obj):
    """The checked reader's verdict: the record, or None for a dead letter."""
    if not isinstance(obj, dict):
        return None
    reader = {"clickstream": ClickEvent._from_dict_checked, "orders": OrderEvent._from_dict_checked,
              "payments": PaymentEvent.from_dict, "inventory": InventoryEvent._from_dict_checked}[topic]
    try:
        return reader(obj)
    except InvalidEvent:
        return None


@pytest.mark.parametrize("topic", TOPICS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_decoder_gives_a_bounded_record_or_a_reason_and_the_fast_ones_agree(topic, data):
    obj = data.draw(objects(topic))
    try:
        event = parse_event(topic, obj)
    except InvalidEvent as err:
        assert 0 < len(str(err)) < 300
        event = None
    if event is not None:
        check_record(event)
    expected = checked(topic, obj)
    assert event == expected
    if topic in ("clickstream", "orders", "inventory"):
        record = {"clickstream": ClickEvent, "orders": OrderEvent, "inventory": InventoryEvent}[topic]
        if isinstance(obj, dict):
            assert outcome(record.from_dict, obj) == outcome(record._from_dict_checked, obj)
    if topic == "clickstream":
        fast = click_funnel_event_fast(obj)
        assert fast is None or (expected is not None and fast == funnel_event(expected))
        values = click_values_fast(obj)
        assert values is None or (expected is not None and values[:14] == tuple(
            getattr(expected, name) for name in ClickEvent.__slots__[:14]) and values[15] == expected.device_id)
    if topic == "orders":
        values = order_values_fast(obj)
        assert values is None or (expected is not None and values[:5] == (
            expected.event_id, expected.ts, expected.order_id, expected.user_id, expected.status)
            and values[6] == expected.amount and len(values[5]) == len(expected.items))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(topic_raw=st.sampled_from(TOPICS).flatmap(lambda t: st.tuples(st.just(t), raw_values(t))))
def test_every_byte_reader_gives_a_record_or_a_dead_letter_that_fits(topic_raw):
    topic, raw = topic_raw
    record = InputRecord(topic, 3, 77, raw, T0)
    decoded = decode_record(record)
    try:
        expected = decode_event(topic, raw)
    except InvalidEvent:
        expected = None
    if expected is None:
        assert isinstance(decoded, DeadLetter)
        message = orjson.dumps(decoded.to_dict())
        assert len(message) < MESSAGE_MAX_BYTES // 2
        assert decoded.raw_length == (0 if raw is None else len(raw))
    else:
        assert decoded == expected
        check_record(decoded)
    # The flows' own fast readers skip exactly what intake dead-letters.
    latest = NOW_MS + AHEAD_MS
    churned = churn.churn_record(record, latest)
    if churned is not None:
        ts, item = churned
        assert MIN_TS_MS <= ts <= MAX_TS_MS
        if item is not None or topic == "clickstream":
            assert expected is not None and churn.churn_input(expected) == item
    click = funnel._common_click(record)
    assert click is None or (expected is not None and click == funnel_event(expected))


def test_churn_reads_a_created_order_for_its_clock_only_inside_the_bounds():
    # Churn reads created and cancelled orders for their event time alone (half of a history):
    # that shortcut too refuses the event times the checked reader dead-letters.
    for ts, expected in [(MAX_TS_MS, (MAX_TS_MS, None)), (MAX_TS_MS + 1, None), (2**62, None), (-1, None)]:
        raw = orjson.dumps({**ORDER, "status": "created", "ts": ts})
        assert churn.churn_record(InputRecord("orders", 0, 0, raw, T0), 2**63) == expected


# -- every flow, batch by batch ---------------------------------------------------------------


@pytest.fixture(scope="module")
def churn_config(tmp_path_factory):
    env = {"SHOPSTREAM_CHURN_MODEL_DIR": str(tmp_path_factory.mktemp("models")), "SHOPSTREAM_CHURN_BUCKETS": "2",
           "SHOPSTREAM_MAX_EVENT_AHEAD_S": str(AHEAD_MS // 1000)}
    return churn.ChurnConfig.from_settings(Settings.from_env(env))


def fixed_clock() -> int:
    return NOW_MS


def input_records(batch) -> list[InputRecord]:
    """The hostile values between valid events of every topic, so that every flow has state to hurt."""
    records = [InputRecord(topic, 0, offset, orjson.dumps(obj), T0)
               for offset, (topic, obj) in enumerate(TEMPLATES.items())]
    records += [InputRecord(topic, 1, offset, raw, T0) for offset, (topic, raw) in enumerate(batch)]
    return records


def run_flows(records: list[InputRecord], churn_config) -> list:
    """Every flow over the same records; returns intake's Kafka output."""
    intake_out: list = []
    run_main(intake.build_flow(
        TestingSource(records, batch_size=5), TestingSink(intake_out), TestingSink([]),
        intake.IntakeConfig(window_ms=60_000, lateness_ms=0, history_length=2, key_idle_windows=2,
                            max_event_ahead_ms=AHEAD_MS), fixed_clock))
    run_main(stock.build_flow(TestingSource(records, batch_size=5), TestingSink([]), TestingSink([]),
                              stock.StockConfig(AHEAD_MS, StockRules(lateness_ms=0), buckets=2), fixed_clock))
    run_main(funnel.build_flow(TestingSource(records, batch_size=5), TestingSink([]), TestingSink([]),
                               funnel.FunnelConfig(max_event_ahead_ms=AHEAD_MS, buckets=2), fixed_clock))
    run_main(coupons.build_flow(TestingSource(records, batch_size=5), TestingSink([]), TestingSink([]), FakePorts(),
                                coupons.CouponsConfig(AHEAD_MS, load_policy(None), CartRules(), buckets=2),
                                fixed_clock))
    run_main(churn.build_flow(TestingSource(records, batch_size=5), TestingSink([]), TestingSink([]),
                              TestingSink([]), churn_config, fixed_clock))
    fraud_config = fraud.FraudFlowConfig(engine=FraudConfig(), pseudonym_key="test-key-0123456789",
                                         max_event_ahead_ms=AHEAD_MS, flag_ttl_s=86_400)
    run_main(fraud.build_flow(TestingSource(records, batch_size=5), TestingSink([]), TestingSink([]),
                              TestingSink([]), fraud_config, now_ms=fixed_clock))
    return intake_out


# The issue's reports: a restock and an order of 2**62 units of one SKU crashed the stock
# flow's alert encoder ("Integer exceeds 64-bit range"), and the rest of the poison pills.
ISSUE_BATCH = [
    ("inventory", to_bytes({**INVENTORY, "event_id": "i62", "kind": "restock", "quantity": 2**62})),
    ("orders", to_bytes({**ORDER, "event_id": "o62", "order_id": "o62", "status": "created",
                         "items": [{**ITEM, "quantity": 2**62}]})),
    ("orders", to_bytes({**ORDER, "event_id": "o70", "order_id": "o70", "amount": 2**70})),
    ("clickstream", b"\xff" * 900_000),
    ("clickstream", b"[" * 10_000 + b"]" * 10_000),
    ("payments", to_bytes({**PAYMENT, "amount": float("nan")})),
    ("orders", to_bytes({**ORDER, "event_id": "o10k", "order_id": "o10k", "status": "created",
                         "items": [{**ITEM, "sku": f"never-seen-{i}"} for i in range(10_000)]})),
]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.function_scoped_fixture])
@given(batch=records_batch())
@example(batch=ISSUE_BATCH)
def test_every_flow_keeps_running_and_intake_dead_letters_each_bad_value_once(batch, churn_config):
    records = input_records(batch)
    intake_out = run_flows(records, churn_config)
    dead = [orjson.loads(m.value) for m in intake_out if m.topic == "dead-letters"]
    bad = set()
    for record in records:
        try:
            decode_event(record.topic, record.value)
        except InvalidEvent:
            bad.add(f"{record.topic}:{record.partition}:{record.offset}")
    assert sorted(d["dead_letter_id"] for d in dead) == sorted(bad)
    oversized = [(m.topic, len(m.value), m.value[:300]) for m in intake_out if len(m.value) >= MESSAGE_MAX_BYTES // 2]
    assert oversized == []


# The alerts flow reads only our own topics (alert candidates and input windows), but a
# stray producer can write there too.
alert_values = st.one_of(
    st.builds(lambda obj: to_bytes(obj), json_values),
    st.builds(lambda base, name, value: to_bytes({**base, name: value}),
              st.sampled_from([
                  {"ts": T0, "rule": "stock.out", "key": "A", "active": True, "severity": "critical", "summary": "s"},
                  {"metric": "input", "topic": "orders", "dimension": "all", "value": "all", "window_start": T0,
                   "window_end": T0 + 60_000, "events": 3, "dead_letters": 0}]),
              st.sampled_from(["ts", "value", "threshold", "window_start", "window_end", "events", "dead_letters",
                               "severity", "detail", "active"]),
              hostile_values),
    st.sampled_from([b"\xff" * 1000, b"[" * 100_000, b"NaN"]),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(values=st.lists(st.tuples(st.sampled_from(["alert-candidates", "metrics"]), alert_values), max_size=10))
def test_the_alerts_flow_keeps_running_on_anything_on_its_topics(values):
    records = [InputRecord(topic, 0, offset, value, T0) for offset, (topic, value) in enumerate(values)]
    run_main(alerts.build_flow(TestingSource(records, batch_size=4), TestingSink([]),
                               TestingSink([]), alerts.AlertsConfig(), fixed_clock, acks=lambda keys: {}))

