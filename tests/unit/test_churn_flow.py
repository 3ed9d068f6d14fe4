"""The churn flow on TestingSource/TestingSink: replay at full speed equals a live-paced
run, with one worker and with two, and bad input is skipped, not fatal."""


import pickle
from dataclasses import replace

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from flows.churn import (
    MODEL_NAME,
    ChurnConfig,
    book_for,
    build_flow,
    new_model,
    parse_winback,
    pretrain,
    replay_history,
    triage_batch,
)
from operators.clock import Progress
from operators.coupons import Coupon
from operators.rfm import DAY_MS
from shopstream.settings import ConfigError, Settings
from simulators.histories import generate_history
from simulators.testing import input_records
from state.kafka import InputRecord
from state.model_checkpoints import ModelStore
from state.redis_store import ReplaceHash

NOW_MS = 1_900_000_000_000


def config_for(tmp_path, **overrides) -> ChurnConfig:
    env = {"SHOPSTREAM_CHURN_MODEL_DIR": str(tmp_path), "SHOPSTREAM_CHURN_BUCKETS": "4",
           "SHOPSTREAM_CHURN_TIER_MONETARY": "6000,2500,600", "SHOPSTREAM_CHURN_TIER_ORDERS": "10,5,2",
           "SHOPSTREAM_STARTUP_GRACE_MS": "0", **overrides}
    return ChurnConfig.from_settings(Settings.from_env(env))


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    history = generate_history(customers=1200, seed=21, duration_ms=540 * DAY_MS)
    config = config_for(folder)
    model = pretrain(input_records(history), config, now_ms=NOW_MS).model
    ModelStore(folder).save(MODEL_NAME, model, {"labels": model.labels_learned})
    return folder


@pytest.fixture(scope="module")
def records():
    history = generate_history(customers=250, seed=22, duration_ms=400 * DAY_MS, prefix="f")
    recs = input_records(history)
    bad = InputRecord("orders", 0, 10_000_000, b"{not json", recs[100].timestamp_ms)
    missing = InputRecord("clickstream", 0, 10_000_001, orjson.dumps({"ts": 5}), recs[200].timestamp_ms)
    return recs[:150] + [bad] + recs[150:300] + [missing] + recs[300:]


def fixed_clock() -> int:
    return NOW_MS


class LiveClock:
    """Wall time moving a second per call: sources look idle between batches, as live."""

    def __init__(self) -> None:
        self.now = NOW_MS

    def __call__(self) -> int:
        self.now += 1000
        return self.now


def run_churn(records, config, workers=1, batch_size=64, clock=fixed_clock):
    kafka_out, redis_out, coupons = [], [], []
    flow = build_flow(TestingSource(records, batch_size=batch_size), TestingSink(kafka_out), TestingSink(redis_out),
                      TestingSink(coupons), config, clock)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=workers)
    views = {}
    for write in redis_out:
        assert isinstance(write, ReplaceHash)
        views[write.key] = dict(write.fields)
    scores = sorted((orjson.loads(m.value)["user_id"], orjson.loads(m.value)["ts"], m.value) for m in kafka_out)
    assert all(m.topic == "churn-scores" for m in kafka_out)
    return views, scores, sorted(coupons, key=lambda c: c.coupon_id)


def test_replay_equals_live_with_one_worker_and_two(records, pretrained_dir):
    config = config_for(pretrained_dir)
    replay = run_churn(records, config, workers=1, batch_size=5000)
    live = run_churn(records, config, workers=2, batch_size=7, clock=LiveClock())
    assert replay == live
    views, scores, coupons = replay
    assert len(views) >= 240
    sample = next(iter(views.values()))
    assert set(sample) == {"score", "risk", "tier", "recency_days", "frequency", "monetary", "updated_ts", "p_alive"}
    assert {v["risk"] for v in views.values()} <= {"low", "medium", "high"}
    assert {v["tier"] for v in views.values()} <= {"diamond", "gold", "silver", "bronze", "new"}
    record = orjson.loads(scores[0][2])
    assert set(record) == {"score_id", "ts", "user_id", "score", "risk", "tier"}
    assert record["score_id"] == f"{record['user_id']}@{record['ts']}/{record['risk']}/{record['tier']}"
    # Win-backs: only to win-back tiers, one per episode, ids derived from the episode.
    assert coupons, "a 400 day history has valuable customers who lapse"
    assert all(isinstance(c, Coupon) and c.reason == "churn_winback" and c.tier in ("diamond", "gold")
               for c in coupons)
    assert len({c.trigger_id for c in coupons}) == len(coupons)
    assert all(c.trigger_id.startswith(f"churn:{c.user_id}:") for c in coupons)


def test_a_record_per_band_or_tier_change_only(records, pretrained_dir):
    _, scores, _ = run_churn(records, config_for(pretrained_dir), batch_size=500)
    last = {}
    for user_id, _, value in scores:
        record = orjson.loads(value)
        assert last.get(user_id) != (record["risk"], record["tier"])
        last[user_id] = (record["risk"], record["tier"])


def test_warm_start_from_the_latest_checkpoint(pretrained_dir, tmp_path):
    warm = new_model(config_for(pretrained_dir))
    assert warm.labels_learned > 1000
    cold = new_model(config_for(tmp_path))
    assert cold.labels_learned == 0
    # A checkpoint built for other horizons has other features: not used.
    other = new_model(config_for(pretrained_dir, SHOPSTREAM_CHURN_RFM_HORIZONS_DAYS="28,364"))
    assert other.labels_learned == 0


def test_a_checkpoint_of_the_older_model_layout_is_not_warm_started_from(pretrained_dir, tmp_path):
    old = ModelStore(pretrained_dir).load(MODEL_NAME).model
    del old.layout  # a model pickled before mini-batch learning has no layout (and a river Pipeline)
    ModelStore(tmp_path).save(MODEL_NAME, old)
    assert new_model(config_for(tmp_path)).labels_learned == 0


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"SHOPSTREAM_CHURN_RFM_HORIZONS_DAYS": "91,28"}, "SHOPSTREAM_CHURN_RFM_HORIZONS_DAYS"),
        ({"SHOPSTREAM_CHURN_RFM_HORIZONS_DAYS": "thirty"}, "SHOPSTREAM_CHURN_RFM_HORIZONS_DAYS"),
        ({"SHOPSTREAM_CHURN_TIER_MONETARY": "100,200"}, "SHOPSTREAM_CHURN_TIER_MONETARY"),
        ({"SHOPSTREAM_CHURN_TIER_ORDERS": "1,2,3"}, "SHOPSTREAM_CHURN_TIER_ORDERS"),
        ({"SHOPSTREAM_CHURN_SLOT_DAYS": "30"}, "SHOPSTREAM_CHURN_RFM_HORIZONS_DAYS"),
        ({"SHOPSTREAM_CHURN_RISK_BANDS": "0.8,0.3"}, "SHOPSTREAM_CHURN_RISK_BANDS"),
        ({"SHOPSTREAM_CHURN_LEARNING_RATE": "fast"}, "SHOPSTREAM_CHURN_LEARNING_RATE"),
        ({"SHOPSTREAM_CHURN_WINBACK": "gold:half_off:50:0:14"}, "SHOPSTREAM_CHURN_WINBACK"),
        ({"SHOPSTREAM_CHURN_WINBACK": "platinum:amount_off:50:0:14"}, "SHOPSTREAM_CHURN_WINBACK"),
        ({"SHOPSTREAM_CHURN_WINBACK": "gold:percent_off:150:0:14"}, "SHOPSTREAM_CHURN_WINBACK"),
        ({"SHOPSTREAM_CHURN_WINBACK": "gold:amount_off:50"}, "SHOPSTREAM_CHURN_WINBACK"),
        ({"SHOPSTREAM_CHURN_HORIZON_DAYS": "0"}, "SHOPSTREAM_CHURN_HORIZON_DAYS"),
        ({"SHOPSTREAM_CHURN_BUCKETS": "x"}, "SHOPSTREAM_CHURN_BUCKETS"),
    ],
)
def test_bad_configuration_fails_with_the_variable_named(tmp_path, env, variable):
    with pytest.raises(ConfigError, match=variable):
        config_for(tmp_path, **env)


def test_winback_policy_parses_per_tier():
    offers = parse_winback("diamond:percent_off:20:300:14, gold:free_shipping:0:0:7")
    assert offers["diamond"].value == 20.0 and offers["diamond"].min_spend == 300.0
    assert offers["gold"].kind == "free_shipping" and offers["gold"].min_spend is None
    assert offers["gold"].valid_ms == 7 * DAY_MS
    assert parse_winback("") == {}


def test_a_book_snapshotted_by_the_previous_version_resumes_with_a_new_model(records, pretrained_dir):
    config = config_for(pretrained_dir)
    book = replay_history(records[:2_000], config, now_ms=NOW_MS)
    del book.scoring  # what a snapshot of the previous version lacks...
    del book.model.layout  # ... and its model, which learned one label at a time
    customers = dict(book.customers)
    resumed = book_for(pickle.loads(pickle.dumps(book)), config, NOW_MS)
    assert resumed.scoring and resumed.customers == customers
    assert resumed.model.compatible_with(config.rules.rfm.feature_names)
    assert resumed.model.labels_learned == new_model(config).labels_learned > 1000  # the latest checkpoint
    later = [item for _, batch in triage_batch(records[2_000:2_500], replace(config, buckets=1), NOW_MS)
             for item in batch.inputs]
    resumed.add(later, Progress({("orders", 0): NOW_MS}), NOW_MS)  # and it goes on scoring and learning


def _paid(user: str, order: str, ts: int, amount: float) -> InputRecord:
    value = orjson.dumps({"event_id": f"e-{order}", "ts": ts, "order_id": order, "user_id": user, "status": "paid",
                          "items": [{"sku": "sku-1", "quantity": 1, "unit_price": amount}], "amount": amount})
    return InputRecord("orders", 0, ts, value, ts)


def _flag(user: str, order: str, ts: int, amount: float) -> InputRecord:
    value = orjson.dumps({"flag_id": f"tf-o-{order}", "ts": ts, "kind": "brushing", "order_id": order,
                          "user_id": user, "sku": "sku-1", "ring_id": "ring-1", "ring_size": 20, "score": 1.0,
                          "reasons": ["ring.member"], "amount": amount})
    return InputRecord("traffic-flags", 0, ts, value, ts)


def test_flagged_orders_do_not_lift_a_customer_tier(tmp_path):
    """Issue 22: a brushing ring member's fake orders are taken back out of its RFM values."""
    config = config_for(tmp_path)
    t0 = 1_731_000_000_000
    paid = [_paid("ring-member", f"o{i}", t0 + i * DAY_MS, 1500.0) for i in range(3)]
    honest = [_paid("honest", f"h{i}", t0 + i * DAY_MS + 1, 1500.0) for i in range(3)]
    # Flags arrive later on their own topic, stamped with the order's paid time.
    flags = [_flag("ring-member", f"o{i}", t0 + i * DAY_MS, 1500.0) for i in range(3)]
    views, _, _ = run_churn(paid + honest + flags, config, batch_size=4)
    unflagged, _, _ = run_churn(paid + honest, config, batch_size=4)
    member, honest_view = views["churn:ring-member"], views["churn:honest"]
    assert unflagged["churn:ring-member"]["tier"] == honest_view["tier"] == "silver"
    assert float(member["monetary"]) == 0.0 and member["tier"] != "silver"
    assert honest_view == unflagged["churn:honest"]  # other customers are untouched
