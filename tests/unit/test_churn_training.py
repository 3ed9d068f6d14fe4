"""Pre-training (`pretrain`, `shopstream churn train`) teaches exactly the model a scoring
replay teaches, and the churn decoder reads records as the checked reader does."""

import random
from dataclasses import replace

import orjson
import pytest

from flows.churn import ChurnConfig, churn_input, churn_record, pretrain, replay_history
from operators.churn import learn_from_history
from operators.churn_model import ChurnModel, ModelRules
from operators.events import ClickEvent, InvalidEvent, OrderEvent, event_time, parse_event
from operators.rfm import DAY_MS
from shopstream.settings import Settings
from simulators.histories import generate_history
from simulators.testing import input_records
from state.kafka import InputRecord
from tests.unit.test_stock_speed import ODD_VALUES, field_mutations

NOW_MS = 1_900_000_000_000
LATEST_MS = NOW_MS + 10_000


def config(**env) -> ChurnConfig:
    return ChurnConfig.from_settings(Settings.from_env({"SHOPSTREAM_STARTUP_GRACE_MS": "0", **env}))


def same_model(first, second) -> bool:
    return (first.labels_learned, first.churned_learned, first.batches_learned) == (
        second.labels_learned, second.churned_learned, second.batches_learned
    ) and dict(first.regression._weights) == dict(second.regression._weights) and (
        first.regression.intercept == second.regression.intercept
        and first.scaler.means == second.scaler.means and first.calibration.rates == second.calibration.rates
    )


@pytest.mark.parametrize("clicks", [False, True])
def test_pretraining_teaches_exactly_the_model_a_scoring_replay_teaches(clicks):
    # Small batches, so the order of the labels shows in the weights.
    cfg = config(SHOPSTREAM_CHURN_LEARN_BATCH="16", SHOPSTREAM_CHURN_LEARN_WAIT_DAYS="2")
    records = input_records(generate_history(600, seed=31, duration_ms=500 * DAY_MS, clicks=clicks))
    trained = pretrain(records, cfg, now_ms=NOW_MS)
    replayed = replay_history(records, cfg, now_ms=NOW_MS).model
    replayed.learn_waiting()
    assert trained.model.labels_learned > 1_000 and trained.model.batches_learned > 60
    assert same_model(trained.model, replayed)
    events = [orjson.loads(r.value) for r in records]
    moving = {e["user_id"] for e in events if e.get("status") not in ("created", "cancelled")}  # paid, refunds, clicks
    assert trained.customers == len(moving) and trained.last_event_ts == max(e["ts"] for e in events)


def test_the_order_of_labels_matters_so_the_equality_above_can_fail():
    cfg = config(SHOPSTREAM_CHURN_LEARN_BATCH="16")
    records = input_records(generate_history(300, seed=32, duration_ms=400 * DAY_MS, clicks=False))
    trained = pretrain(records, cfg, now_ms=NOW_MS).model
    other_batches = pretrain(records, replace(cfg, model_rules=replace(cfg.model_rules, batch_size=17)), now_ms=NOW_MS)
    assert trained.labels_learned == other_batches.model.labels_learned
    assert not same_model(trained, other_batches.model)


def order(status: str, **fields) -> dict:
    return {"event_id": f"e-{status}", "ts": 1_000, "order_id": "o1", "user_id": "u1", "status": status,
            "items": [{"sku": "s", "quantity": 1, "unit_price": 10.0}], "amount": 10.0, **fields}


def record(topic: str, obj) -> InputRecord:
    return InputRecord(topic, 0, 0, orjson.dumps(obj), 0)


def test_orders_that_change_no_customer_only_move_the_clock():
    assert churn_record(record("orders", order("created")), LATEST_MS) == (1_000, None)
    assert churn_record(record("orders", order("cancelled", items="not a list")), LATEST_MS) == (1_000, None)
    assert churn_record(record("orders", order("created", ts="soon")), LATEST_MS) is None
    assert churn_record(record("orders", order("created", ts=1_000.0)), LATEST_MS) == (1_000, None)  # as checked
    assert churn_record(record("orders", order("created", ts=LATEST_MS + 1)), LATEST_MS) is None  # beyond the future
    paid = churn_record(record("orders", order("paid")), LATEST_MS)
    assert paid is not None and paid[1].amount == 10.0 and paid[1].ref == "o1"
    assert churn_record(record("orders", order("paid", items="not a list")), LATEST_MS) is None  # a dead letter
    assert churn_record(InputRecord("orders", 0, 0, b"{not json", 0), LATEST_MS) is None
    assert churn_record(InputRecord("orders", 0, 0, None, 0), LATEST_MS) is None


@pytest.fixture(scope="module")
def history_objects():
    records = input_records(generate_history(150, seed=33, duration_ms=200 * DAY_MS))
    return [(r.topic, orjson.loads(r.value)) for r in records]


def test_the_churn_decoder_reads_every_record_as_the_checked_reader_does(history_objects):
    rnd = random.Random(11)
    odd = ODD_VALUES + ["paid", "refunded", "add_to_cart", "page_view"]
    cases = 0
    for topic, obj in rnd.sample(history_objects, 400):
        variants = field_mutations(rnd, obj, [*obj, "status", "type", "shipping_fee"], odd, count=20)
        for variant in variants:
            try:
                raw = orjson.dumps(variant)
            except TypeError:
                continue  # not JSON (an integer beyond 64 bits): no producer can send it
            variant = orjson.loads(raw)  # what arrives (a NaN arrives as null)
            got = churn_record(InputRecord(topic, 0, 0, raw, 0), LATEST_MS)
            if topic == "orders" and variant.get("status") in ("created", "cancelled"):
                try:  # only the event time is read, by the checked reader's rule
                    ts = event_time(variant)
                    assert got == ((ts, None) if ts <= LATEST_MS else None)
                except InvalidEvent:
                    assert got is None
                continue
            try:
                event = parse_event(topic, variant)
                assert isinstance(event, (OrderEvent, ClickEvent))
                expected = (event.ts, churn_input(event)) if event.ts <= LATEST_MS else None
            except InvalidEvent:
                expected = None
            assert got == expected, variant
            cases += 1
    assert cases > 3_000


def test_a_model_rule_change_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="at least one label"):
        ModelRules(batch_size=0)


def test_events_after_the_end_are_not_applied():
    cfg = config(SHOPSTREAM_CHURN_LEARN_BATCH="8")
    records = input_records(generate_history(200, seed=34, duration_ms=480 * DAY_MS, clicks=False))
    inputs = [decoded[1] for decoded in (churn_record(r, LATEST_MS) for r in records) if decoded and decoded[1]]
    end = inputs[len(inputs) // 2].ts
    whole, cut = (ChurnModel(cfg.rules.rfm.feature_names, cfg.model_rules) for _ in range(2))
    learn_from_history(cfg.rules, whole, inputs, end)
    learn_from_history(cfg.rules, cut, [event for event in inputs if event.ts <= end], end)
    assert whole.labels_learned > 50 and same_model(whole, cut)
