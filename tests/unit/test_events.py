import orjson
import pytest

from operators.events import (
    ClickEvent,
    InventoryEvent,
    InvalidEvent,
    OrderEvent,
    PaymentEvent,
    parse_event,
)
from state.serde import decode_event, encode_event, raw_text

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
