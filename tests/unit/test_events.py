import base64
import hashlib
import subprocess
import sys

import orjson
import pytest

from operators.dead_letters import DeadLetter
from operators.events import (
    MAX_EXPERIMENTS,
    MAX_JSON_DEPTH,
    MAX_MONEY,
    MAX_ORDER_ITEMS,
    MAX_QUANTITY,
    MAX_SIGNAL,
    MAX_SIGNALS,
    MAX_STRING_CHARS,
    MAX_TS_MS,
    ClickEvent,
    InventoryEvent,
    InvalidEvent,
    OrderEvent,
    PaymentEvent,
    parse_event,
)
from shopstream.settings import MAX_DEAD_LETTER_RAW_BYTES, ConfigError, Settings
from state.inputs import DEFAULT_RAW_LIMIT, decode_record
from state.kafka import InputRecord
from state.serde import JSONDecodeError, decode_event, encode_event, json_depth_exceeds, loads, raw_text

CLICK = {
    "event_id": "e1",
    "ts": 1_700_000_000_000,
    "user_id": "u1",
    "session_id": "s1",
    "type": "add_to_cart",
    "sku": "sku-1",
    "price": 99.5,
    "quantity": 2,
    "channel": "app",
    "region": "east",
    "device": "ios",
    "experiment": {"checkout_button": "green"},
}
ORDER = {
    "event_id": "o-e1",
    "ts": 1_700_000_000_500,
    "order_id": "o1",
    "user_id": "u1",
    "status": "created",
    "items": [{"sku": "sku-1", "quantity": 2, "unit_price": 99.5}],
    "amount": 199.0,
}
PAYMENT = {
    "event_id": "p-e1",
    "ts": 1_700_000_001_000,
    "payment_id": "p1",
    "order_id": "o1",
    "user_id": "u1",
    "status": "requested",
    "amount": 199.0,
    "method": "card",
    "signals": {"device_risk": 0.3, "vendor_note": "text is ignored", "flag": True},
}
INVENTORY = {"event_id": "i1", "ts": 1, "sku": "sku-1", "kind": "adjust", "quantity": -3}


def test_valid_records_parse_with_defaults():
    click = parse_event("clickstream", CLICK)
    assert isinstance(click, ClickEvent) and click.quantity == 2 and click.price == 99.5
    order = parse_event("orders", ORDER)
    assert isinstance(order, OrderEvent)
    assert order.currency == "CNY" and order.items[0].pool == "spot"
    payment = parse_event("payments", PAYMENT)
    assert isinstance(payment, PaymentEvent)
    # Only numeric signals are features; booleans and text are dropped.
    assert payment.signals == {"device_risk": 0.3}
    inventory = parse_event("inventory", INVENTORY)
    assert isinstance(inventory, InventoryEvent) and inventory.quantity == -3


def test_unknown_extra_fields_are_ignored():
    event = parse_event("clickstream", {**CLICK, "new_field_from_the_future": [1, 2]})
    assert event.event_id == "e1"


def test_records_are_immutable():
    event = parse_event("clickstream", CLICK)
    with pytest.raises(AttributeError):
        event.user_id = "someone else"


def test_integral_float_is_accepted_for_int_fields():
    assert parse_event("clickstream", {**CLICK, "ts": 5.0}).ts == 5


@pytest.mark.parametrize(
    "topic, obj, reason",
    [
        ("clickstream", {k: v for k, v in CLICK.items() if k != "user_id"}, "missing field 'user_id'"),
        ("clickstream", {**CLICK, "ts": "yesterday"}, "field 'ts' must be an integer"),
        ("clickstream", {**CLICK, "ts": True}, "field 'ts' must be an integer"),
        ("clickstream", {**CLICK, "type": "teleport"}, "field 'type' has unknown value 'teleport'"),
        ("clickstream", {**CLICK, "quantity": -1}, "field 'quantity' must be >= 0"),
        ("clickstream", {**CLICK, "experiment": {"a": 1}}, "field 'experiment'"),
        ("orders", {**ORDER, "status": "shipped"}, "field 'status' has unknown value"),
        ("orders", {**ORDER, "items": "sku-1"}, "field 'items' must be a list"),
        ("orders", {**ORDER, "items": [{"sku": "a", "quantity": -2, "unit_price": 1}]}, "'quantity' must be >= 1"),
        ("orders", {**ORDER, "items": [{"sku": "a", "quantity": 1, "unit_price": 1, "pool": "x"}]}, "'pool'"),
        ("orders", {**ORDER, "amount": -5}, "field 'amount' must be a finite number >= 0"),
        ("payments", {**PAYMENT, "status": "maybe"}, "field 'status' has unknown value"),
        ("payments", {**PAYMENT, "signals": [1, 2]}, "field 'signals' must be an object"),
        ("inventory", {**INVENTORY, "kind": "restock", "quantity": -3}, "field 'quantity' must be >= 0"),
        ("inventory", {**INVENTORY, "kind": "teleport"}, "field 'kind' has unknown value"),
        ("inventory", [1, 2, 3], "expected a JSON object"),
    ],
)
def test_unusable_input_is_rejected_with_a_reason(topic, obj, reason):
    with pytest.raises(InvalidEvent, match=reason.replace("(", r"\(").replace("[", r"\[")):
        parse_event(topic, obj)


def test_decode_rejects_bad_json_and_empty_values():
    with pytest.raises(InvalidEvent, match="bad JSON"):
        decode_event("clickstream", b"{not json")
    with pytest.raises(InvalidEvent, match="empty message"):
        decode_event("clickstream", None)


def test_encode_then_decode_round_trips_every_record():
    for topic, obj in [("clickstream", CLICK), ("orders", ORDER), ("payments", PAYMENT), ("inventory", INVENTORY)]:
        event = parse_event(topic, obj)
        assert decode_event(topic, encode_event(event)) == event


def test_encoding_leaves_out_absent_optional_fields():
    encoded = orjson.loads(encode_event(parse_event("inventory", INVENTORY)))
    assert "warehouse" not in encoded and "safety_stock" not in encoded


def test_raw_text_keeps_utf8_and_base64_encodes_binary():
    assert raw_text("价格".encode()) == ("价格", "utf-8")
    assert raw_text(b"\xff\xfe") == ("//4=", "base64")


def test_nested_maps_are_read_only_too():
    click = parse_event("clickstream", CLICK)
    payment = parse_event("payments", PAYMENT)
    with pytest.raises(TypeError):
        click.experiment["checkout_button"] = "red"
    with pytest.raises(TypeError):
        payment.signals["device_risk"] = 0.0
    assert orjson.loads(encode_event(click))["experiment"] == {"checkout_button": "green"}


# -- numbers outside what the contract can mean --------------------------------------------

ITEM = {"sku": "a", "quantity": 1, "unit_price": 1}


@pytest.mark.parametrize(
    "topic, obj, reason",
    [
        ("clickstream", {**CLICK, "ts": MAX_TS_MS + 1}, f"field 'ts' must be <= {MAX_TS_MS}"),
        ("clickstream", {**CLICK, "ts": 2**70}, "field 'ts' must be <="),
        ("clickstream", {**CLICK, "ts": 1.2e21}, "field 'ts' must be <="),  # 2**70 as orjson reads it
        ("clickstream", {**CLICK, "ts": float("nan")}, "field 'ts' must be an integer"),
        ("clickstream", {**CLICK, "quantity": MAX_QUANTITY + 1}, "field 'quantity' must be <="),
        ("clickstream", {**CLICK, "price": float("inf")}, "field 'price' must be a finite number"),
        ("clickstream", {**CLICK, "price": MAX_MONEY * 2}, "field 'price' must be a finite number"),
        ("orders", {**ORDER, "amount": float("nan")}, "field 'amount' must be a finite number"),
        ("orders", {**ORDER, "amount": 2**64}, "field 'amount' must be a finite number"),
        ("orders", {**ORDER, "shipping_fee": 1e13}, "field 'shipping_fee' must be a finite number"),
        ("orders", {**ORDER, "items": [{**ITEM, "quantity": 2**62}]}, "field 'quantity' must be <="),
        ("orders", {**ORDER, "items": [{**ITEM, "unit_price": 1e300}]}, "field 'unit_price' must be a finite"),
        ("orders", {**ORDER, "items": [ITEM] * (MAX_ORDER_ITEMS + 1)}, f"more than {MAX_ORDER_ITEMS}"),
        ("orders", {**ORDER, "items": [ITEM] * 10_000}, "field 'items' has 10000 items"),
        ("payments", {**PAYMENT, "amount": float("-inf")}, "field 'amount' must be a finite number"),
        ("payments", {**PAYMENT, "account_created_ts": 2**63}, "field 'account_created_ts' must be <="),
        ("payments", {**PAYMENT, "signals": {"score": 1e200}}, "signal 'score' must be a finite number"),
        ("payments", {**PAYMENT, "signals": {"score": float("nan")}}, "signal 'score' must be a finite number"),
        ("payments", {**PAYMENT, "signals": {f"s{i}": i for i in range(MAX_SIGNALS + 1)}}, "numeric signals"),
        ("inventory", {**INVENTORY, "kind": "restock", "quantity": 2**62}, "field 'quantity' must be <="),
        ("inventory", {**INVENTORY, "quantity": -(2**62)}, f"field 'quantity' must be >= {-MAX_QUANTITY}"),
        ("inventory", {**INVENTORY, "safety_stock": 2**64 - 1}, "field 'safety_stock' must be <="),
    ],
)
def test_numbers_the_contract_cannot_mean_are_rejected_with_a_reason(topic, obj, reason):
    with pytest.raises(InvalidEvent, match=reason.replace("(", r"\(").replace("[", r"\[")):
        parse_event(topic, obj)


@pytest.mark.parametrize(
    "topic, obj, reason",
    [
        ("clickstream", {**CLICK, "channel": "c" * 900_000}, "field 'channel' has 900000 characters, more than 1000"),
        ("clickstream", {**CLICK, "sku": "s" * 1_001}, "field 'sku' has 1001 characters"),
        ("clickstream", {**CLICK, "experiment": {"e": "v" * 1_001}}, "field 'experiment' has 1001 characters"),
        ("clickstream", {**CLICK, "experiment": {f"e{i}": "v" for i in range(65)}}, "has 65 entries, more than 64"),
        ("orders", {**ORDER, "items": [{**ITEM, "sku": "s" * 5_000}]}, "field 'sku' has 5000 characters"),
        ("orders", {**ORDER, "coupon_code": "c" * 2_000}, "field 'coupon_code' has 2000 characters"),
        ("payments", {**PAYMENT, "failure_reason": "r" * 2_000}, "field 'failure_reason' has 2000 characters"),
        ("payments", {**PAYMENT, "signals": {"n" * 2_000: 1}}, "field 'signals' has 2000 characters"),
        ("inventory", {**INVENTORY, "warehouse": "w" * 2_000}, "field 'warehouse' has 2000 characters"),
    ],
)
def test_strings_that_would_not_fit_an_output_are_rejected(topic, obj, reason):
    # Ids and dimensions are copied into Redis keys, metrics and alerts: a 900 kB channel
    # made an input-count record too large for Kafka.
    with pytest.raises(InvalidEvent, match=reason):
        parse_event(topic, obj)


def test_the_bounds_themselves_are_accepted():
    assert parse_event("clickstream", {**CLICK, "ts": MAX_TS_MS, "quantity": MAX_QUANTITY, "price": MAX_MONEY}).ts
    order = parse_event("orders", {**ORDER, "items": [{**ITEM, "quantity": MAX_QUANTITY}] * MAX_ORDER_ITEMS,
                                   "amount": int(MAX_MONEY)})
    assert len(order.items) == MAX_ORDER_ITEMS and order.amount == MAX_MONEY
    assert parse_event("inventory", {**INVENTORY, "quantity": -MAX_QUANTITY}).quantity == -MAX_QUANTITY
    click = parse_event("clickstream", {**CLICK, "channel": "c" * MAX_STRING_CHARS, "note": "n" * 900_000,
                                        "experiment": {f"e{i}": "v" for i in range(MAX_EXPERIMENTS)}})
    assert len(click.channel) == MAX_STRING_CHARS and len(click.experiment) == MAX_EXPERIMENTS
    payment = parse_event("payments", {**PAYMENT, "signals": {"a": -MAX_SIGNAL, "b": 2**39}})
    assert payment.signals == {"a": -MAX_SIGNAL, "b": float(2**39)}


def test_reasons_stay_short_whatever_the_value():
    huge = "x" * 900_000
    for topic, obj in [("clickstream", {**CLICK, "type": huge}), ("orders", {**ORDER, "items": [huge]}),
                       ("clickstream", {**CLICK, "user_id": [[[[[[[[huge]]]]]]]]})]:
        with pytest.raises(InvalidEvent) as err:
            parse_event(topic, obj)
        assert len(str(err.value)) < 200


def test_a_wrong_type_nested_a_thousand_deep_is_a_reason_not_a_recursion_error():
    deep = "x"
    for _ in range(MAX_JSON_DEPTH - 2):
        deep = [deep]
    with pytest.raises(InvalidEvent, match="must be a non-empty string"):
        parse_event("clickstream", {**CLICK, "user_id": deep})


# -- nesting -------------------------------------------------------------------------------------


def test_nesting_deeper_than_the_limit_is_bad_json_before_orjson_sees_it():
    with pytest.raises(InvalidEvent, match=f"nested deeper than {MAX_JSON_DEPTH}"):
        decode_event("clickstream", b"[" * 10_000 + b"]" * 10_000)
    with pytest.raises(InvalidEvent, match="nested deeper"):
        decode_event("orders", b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1))
    with pytest.raises(InvalidEvent, match="expected a JSON object"):  # at the limit: orjson judges it
        decode_event("orders", b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    with pytest.raises(JSONDecodeError):
        loads(b"[" * 5_000)


def test_brackets_inside_strings_and_wide_values_are_not_depth():
    in_string = orjson.dumps({**CLICK, "note": "[" * 5_000, "extra": '\\"{' * 2_000})
    assert parse_event("clickstream", orjson.loads(in_string)) == decode_event("clickstream", in_string)
    wide = orjson.dumps({**CLICK, "extra": [[[]]] * 5_000})
    assert decode_event("clickstream", wide).event_id == "e1"
    assert json_depth_exceeds(b'["\\\\"' + b"[" * 1_100 + b"]" * 1_100 + b"]")  # an escaped backslash ends no string
    assert not json_depth_exceeds(b'["\\"' + b"[" * 1_100 + b'"]')  # an escaped quote does not end the string


def test_nesting_that_crashes_orjson_is_refused_in_every_reader():
    # orjson 3.8 parses on the C stack: a value nested 100,000 deep (200 kB) kills the process
    # with a segmentation fault. In a child process, so that without the guard this test fails
    # instead of taking pytest down.
    script = """
from flows.churn import churn_record
from flows.funnel import _common_click
from state.inputs import decode_record
from state.kafka import InputRecord
from state.serde import JSONDecodeError, loads
deep = b"[" * 100_000 + b"]" * 100_000
for topic in ("clickstream", "orders", "payments", "inventory"):
    record = InputRecord(topic, 0, 0, deep, 0)
    assert "nested deeper" in decode_record(record).error
    assert churn_record(record, 2**62) is None and _common_click(record) is None
try:
    loads(b'{"a":' * 100_000)
except JSONDecodeError:
    print("refused")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "refused", (done.returncode, done.stderr[-2000:])


# -- dead letters always fit -------------------------------------------------------------------


def dead_letter_for(value: bytes, limit: int = DEFAULT_RAW_LIMIT):
    dead = decode_record(InputRecord("clickstream", 2, 40, value, 17), raw_limit=limit)
    assert isinstance(dead, DeadLetter)
    return dead, orjson.dumps(dead.to_dict())


def test_a_dead_letter_keeps_at_most_the_configured_bytes_with_length_and_hash():
    value = b"\xff" * 900_000
    dead, message = dead_letter_for(value)
    out = orjson.loads(message)
    assert out["raw_truncated"] is True and out["raw_encoding"] == "base64"
    assert base64.b64decode(out["raw"]) == value[:DEFAULT_RAW_LIMIT]
    assert out["raw_length"] == 900_000 and out["raw_sha256"] == hashlib.sha256(value).hexdigest()
    assert len(message) < 100_000


def test_a_small_bad_value_is_kept_whole():
    dead, message = dead_letter_for(b'{"event_id": "x"')
    out = orjson.loads(message)
    assert out["raw"] == '{"event_id": "x"' and out["raw_truncated"] is False and out["raw_length"] == 16
    assert "raw_encoding" not in out
    assert out["raw_sha256"] == hashlib.sha256(b'{"event_id": "x"').hexdigest()


def test_utf8_is_cut_on_a_character_boundary():
    value = "价".encode() * 100  # three bytes each
    dead, _ = dead_letter_for(value, limit=10)
    assert dead.raw == "价" * 3 and dead.raw_truncated and dead.raw_encoding == "utf-8"
    dead, _ = dead_letter_for(value, limit=0)
    assert dead.raw == "" and dead.raw_length == 300


@pytest.mark.parametrize("limit", [DEFAULT_RAW_LIMIT, MAX_DEAD_LETTER_RAW_BYTES])
def test_the_worst_case_dead_letter_is_well_under_a_megabyte(limit):
    # Control characters are escaped to six bytes each; a JSON string of a million of them
    # with a missing field is valid UTF-8, so it stays text.
    value = orjson.dumps({"event_id": "e", "note": "\x01" * 1_000_000})
    dead, message = dead_letter_for(value, limit)
    assert dead.raw_truncated and dead.raw_encoding == "utf-8"
    assert len(message) < 800_000


def test_a_huge_reason_is_cut_too():
    value = orjson.dumps({**CLICK, "type": "t" * 900_000})
    dead, message = dead_letter_for(value)
    assert len(dead.error) < 200 and len(message) < 100_000


def test_the_raw_size_setting_is_checked_at_start():
    assert Settings.from_env({}).dead_letter_raw_bytes == DEFAULT_RAW_LIMIT == 65_536
    assert Settings.from_env({"SHOPSTREAM_DEAD_LETTER_RAW_BYTES": "0"}).dead_letter_raw_bytes == 0
    for bad, message in [("131073", "must be from 0 to 131072"), ("-1", "at least 0"), ("64k", "integer")]:
        with pytest.raises(ConfigError, match=message):
            Settings.from_env({"SHOPSTREAM_DEAD_LETTER_RAW_BYTES": bad})


def test_clickstream_device_id_is_optional_and_checked():
    assert parse_event("clickstream", CLICK).device_id is None
    with_device = {**CLICK, "device_id": "dev-00ab"}
    assert parse_event("clickstream", with_device).device_id == "dev-00ab"
    assert ClickEvent._from_dict_checked(with_device).device_id == "dev-00ab"
    assert parse_event("clickstream", with_device).to_dict()["device_id"] == "dev-00ab"
    with pytest.raises(InvalidEvent, match="field 'device_id' must be a string"):
        parse_event("clickstream", {**CLICK, "device_id": 7})
    with pytest.raises(InvalidEvent, match="field 'device_id' has 1001 characters"):
        parse_event("clickstream", {**CLICK, "device_id": "d" * 1001})
