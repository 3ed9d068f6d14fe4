"""The fraud flow on TestingSource/TestingSink: one decision per requested payment,
Redis writes and topics as docs/contract.md, bad input skipped, checkpoints emitted."""

import orjson
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.fraud import FraudFlowConfig, build_flow, decode_batch
from operators.fraud_engine import FraudConfig, ModelCheckpoint
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import HOUR, MINUTE
from state.kafka import InputRecord
from state.redis_store import DecideOnce, SetIfLater

CONFIG = FraudFlowConfig(
    engine=FraudConfig(lateness_ms=10_000, checkpoint_interval_ms=10 * MINUTE),
    pseudonym_key="test-key-0123456789",
    max_event_ahead_ms=3_600_000,
    flag_ttl_s=30 * 86400,
)
NOW_MS = 1_900_000_000_000


def run_fraud(records, batch_size=50):
    kafka_out, redis_out, models_out = [], [], []
    flow = build_flow(TestingSource(records, batch_size=batch_size), TestingSink(kafka_out),
                      TestingSink(redis_out), TestingSink(models_out), CONFIG, now_ms=lambda: NOW_MS)
    run_main(flow)
    return kafka_out, redis_out, models_out


def test_every_requested_payment_gets_one_decision_in_redis_and_on_the_topic():
    sim = generate(("card_testing",), seed=4, duration_ms=2 * HOUR, shoppers=30_000)
    records = [r for r in input_records(sim) if r.topic in ("payments", "clickstream")]
    requested = {orjson.loads(r.value)["payment_id"] for r in records
                 if r.topic == "payments" and orjson.loads(r.value)["status"] == "requested"}
    kafka_out, redis_out, models_out = run_fraud(records)

    decide = [w for w in redis_out if isinstance(w, DecideOnce)]
    entries = [entry for w in decide for entry in w.entries]
    assert sorted(key for key, _, _ in entries) == sorted(f"fraud:decision:{p}" for p in requested)
    assert all(ready == key.replace("decision", "ready") for key, ready, _ in entries)
    assert all((w.decision_ttl_s, w.ready_ttl_s) == (86400, 60) for w in decide)
    topic = [m for m in kafka_out if m.topic == "fraud-decisions"]
    assert len(topic) == len(requested)
    decisions = [orjson.loads(m.value) for m in topic]
    assert all(d["decision"] in ("approve", "review", "block") for d in decisions)
    fraud_ids = {r.payment_id for r in sim.truth if r.kind == "fraud_payment" and r.pattern == "card_testing"}
    blocked = {d["payment_id"] for d in decisions if d["decision"] == "block"}
    assert fraud_ids and len(blocked & fraud_ids) >= 0.8 * len(fraud_ids)  # the rules alone, cold model
    flags = [w for w in redis_out if isinstance(w, SetIfLater)]
    assert {w.key for w in flags} >= {f"fraud:flagged:{d['user_id']}" for d in decisions if d["decision"] == "block"}
    assert all(w.ttl_s == 30 * 86400 for w in flags)
    metrics = [orjson.loads(m.value) for m in kafka_out if m.topic == "metrics"]
    assert metrics and sum(m["requested"] for m in metrics) <= len(requested)
    assert sum(m["blocked"] for m in metrics) > 0
    spikes = [c for m in kafka_out if m.topic == "alert-candidates" if "progress" not in (c := orjson.loads(m.value))]
    assert spikes and spikes[0]["rule"] == "fraud.spike" and spikes[0]["active"]
    assert models_out and all(isinstance(c, ModelCheckpoint) for c in models_out)


def test_bad_input_is_skipped_not_fatal():
    good = orjson.dumps({"event_id": "e1", "ts": 1_731_000_000_000, "payment_id": "p1", "order_id": "o1",
                         "user_id": "u1", "status": "requested", "amount": 10.0, "method": "alipay"})
    records = [
        InputRecord("payments", 0, 0, b"{not json", 1),
        InputRecord("payments", 0, 1, orjson.dumps({"event_id": "e0", "status": "requested"}), 1),
        InputRecord("payments", 0, 2, good, 1),
    ]
    assert [len(batch.payments) for _, batch in decode_batch(records, 3_600_000, NOW_MS)] == [1]
    kafka_out, redis_out, _ = run_fraud(records)
    assert [e[0] for w in redis_out if isinstance(w, DecideOnce) for e in w.entries] == ["fraud:decision:p1"]
