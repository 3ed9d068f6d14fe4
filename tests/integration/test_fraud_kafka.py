"""The fraud flow on the real broker and Redis, run by the runner with recovery:
a decision is written once, even across kill -9 and restart; the client waits
for it and falls back as documented when there is none."""

from __future__ import annotations

import signal
import time
from dataclasses import replace

import orjson
import pytest
import redis

from flows.fraud import MODEL_NAME
from shopstream.fraud_client import TIMEOUT_REASON, UNAVAILABLE_REASON, FraudClient
from shopstream.runner import start_flow, stop_all
from simulators import generate
from simulators.timeline import HOUR
from state.model_checkpoints import ModelStore
from state.redis_store import DecideOnce, RedisSink
from tests.integration.kafka_helpers import produce, read_topic, wait_for_snapshot, wait_until
from tests.integration.ports import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def fraud_settings(settings, tmp_path):
    return replace(settings, fraud_model_dir=tmp_path / "models", pseudonym_key="integration-test-key-1")


@pytest.fixture(scope="module")
def payments():
    sim = generate(("card_testing",), seed=9, duration_ms=2 * HOUR, shoppers=40_000)
    return [e for e in sim if e.topic == "payments"]


def requested_ids(events) -> list[str]:
    return [orjson.loads(e.value)["payment_id"] for e in events if orjson.loads(e.value)["status"] == "requested"]


def stored_decisions(redis_client, settings, ids) -> dict[str, bytes]:
    values = redis_client.mget([settings.redis_key(f"fraud:decision:{p}") for p in ids])
    return {p: v for p, v in zip(ids, values) if v is not None}


def test_the_decision_script_writes_once_and_pushes_once(settings, redis_client):
    first = DecideOnce((("fraud:decision:p1", "fraud:ready:p1", b'{"decision":"approve"}'),), 86400, 60)
    replayed = DecideOnce((("fraud:decision:p1", "fraud:ready:p1", b'{"decision":"block"}'),
                           ("fraud:decision:p2", "fraud:ready:p2", b'{"decision":"review"}')), 86400, 60)
    partition = RedisSink(settings).build("redis", 0, 1)
    try:
        partition.write_batch([first])
        partition.write_batch([replayed, first, replayed])
    finally:
        partition.close()
    assert redis_client.get(settings.redis_key("fraud:decision:p1")) == b'{"decision":"approve"}'
    assert redis_client.lrange(settings.redis_key("fraud:ready:p1"), 0, -1) == [b'{"decision":"approve"}']
    assert redis_client.lrange(settings.redis_key("fraud:ready:p2"), 0, -1) == [b'{"decision":"review"}']
    assert 86000 < redis_client.ttl(settings.redis_key("fraud:decision:p1")) <= 86400
    assert 0 < redis_client.ttl(settings.redis_key("fraud:ready:p1")) <= 60


def decided_on_topic(settings) -> set[str]:
    return {orjson.loads(value)["payment_id"] for _, value in read_topic(settings, "fraud-decisions")}


def test_kill_9_and_restart_never_changes_or_repeats_a_decision(fraud_settings, redis_client, payments):
    settings = fraud_settings
    thirds = len(payments) // 3
    first, second, last = payments[:thirds], payments[thirds:2 * thirds], payments[2 * thirds:]
    produce(settings, "payments", [(e.key, e.value) for e in first])

    processes = start_flow(settings, "fraud")
    first_ids = requested_ids(first)
    wait_until(lambda: len(stored_decisions(redis_client, settings, first_ids)) == len(first_ids), 60,
               "decisions for the first third")
    wait_for_snapshot(settings, "fraud")  # the restart resumes, not replays
    before_kill = stored_decisions(redis_client, settings, first_ids)
    # Kill while the second third is being decided: its epoch is replayed after the restart.
    produce(settings, "payments", [(e.key, e.value) for e in second])
    time.sleep(0.3)
    for proc in processes:
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()
    decided_at_kill = stored_decisions(redis_client, settings, requested_ids(second))

    produce(settings, "payments", [(e.key, e.value) for e in last])
    all_ids = requested_ids(payments)
    processes = start_flow(settings, "fraud")
    try:
        wait_until(lambda: len(stored_decisions(redis_client, settings, all_ids)) == len(all_ids), 90,
                   "a decision for every requested payment")
        # Redis and the topic are separate outputs of a batch: wait for the topic too before
        # stopping, or a batch written to Redis but not yet to Kafka would only reach it on
        # the next restart's replay.
        wait_until(lambda: decided_on_topic(settings) >= set(all_ids), 60, "every decision on fraud-decisions",
                   interval_s=1.0)
        assert all(p.popen.poll() is None for p in processes)
    finally:
        stop_all(processes)

    after = stored_decisions(redis_client, settings, all_ids)
    assert {p: after[p] for p in before_kill} == before_kill  # nothing decided twice
    assert {p: after[p] for p in decided_at_kill} == decided_at_kill
    ready_lengths = [redis_client.llen(settings.redis_key(f"fraud:ready:{p}")) for p in all_ids]
    assert max(ready_lengths) == 1  # never a second push (list TTL is 60 s; the test is quicker)
    topic = [orjson.loads(v) for _, v in read_topic(settings, "fraud-decisions")]
    assert {d["payment_id"] for d in topic} == set(all_ids)  # at-least-once, same ids on replay
    assert all(d["decision_id"] == f"fd-{d['payment_id']}" for d in topic)
    assert any(d["decision"] == "block" for d in topic)
    flagged = list(redis_client.scan_iter(settings.redis_key("fraud:flagged:*")))
    assert flagged and orjson.loads(redis_client.get(flagged[0]))["reason"] in ("blocked", "chargeback")
    assert ModelStore(settings.fraud_model_dir).versions(MODEL_NAME)  # checkpoints written


def _payment(payment_id: str, amount: float) -> dict:
    return {"event_id": f"e-{payment_id}", "ts": int(time.time() * 1000), "payment_id": payment_id,
            "order_id": f"o-{payment_id}", "user_id": "u-client", "status": "requested", "amount": amount,
            "method": "alipay", "device_id": "d-client", "ip": "10.1.1.1", "country": "CN"}


def test_the_client_gets_the_engines_decision(fraud_settings):
    settings = fraud_settings
    processes = start_flow(settings, "fraud")
    client = FraudClient(settings, timeout_ms=20_000)  # generous: the flow is starting up
    try:
        verdict = client.check(_payment("pay-client-1", 80.0))
        assert verdict.source == "engine" and verdict.decision == "approve"
        assert verdict.model_version is not None
        fast_client = FraudClient(settings, timeout_ms=2_000)
        try:
            assert fast_client.check(_payment("pay-client-2", 90.0)).source == "engine"
        finally:
            fast_client.close()
    finally:
        client.close()
        stop_all(processes)


def test_the_client_times_out_and_falls_back_by_amount(fraud_settings):
    settings = replace(fraud_settings, fraud_fail_open_amount=500)
    client = FraudClient(settings, timeout_ms=150)  # no flow runs: nobody decides
    try:
        started = time.monotonic()
        small = client.check(_payment("pay-small", 499.0))
        waited = time.monotonic() - started
        large = client.check(_payment("pay-large", 500.0))
    finally:
        client.close()
    assert (small.decision, small.source, small.reasons) == ("approve", "fallback", (TIMEOUT_REASON,))
    assert (large.decision, large.source, large.reasons) == ("review", "fallback", (TIMEOUT_REASON,))
    assert 0.1 < waited  # it did wait for the engine before falling back


def test_the_client_reads_a_decision_whose_list_entry_was_taken(fraud_settings, redis_client):
    settings = fraud_settings
    redis_client.set(settings.redis_key("fraud:decision:pay-late"),
                     orjson.dumps({"payment_id": "pay-late", "decision": "block", "reasons": ["velocity.card"],
                                   "score": 0.9, "model_version": "lr-v1+10"}))
    client = FraudClient(settings, timeout_ms=50)
    try:
        verdict = client.wait("pay-late", 20.0)
    finally:
        client.close()
    assert (verdict.decision, verdict.source, verdict.reasons) == ("block", "engine", ("velocity.card",))


def test_the_client_falls_back_when_redis_is_down(fraud_settings):
    settings = replace(fraud_settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = FraudClient(settings, timeout_ms=100)
    try:
        small = client.wait("pay-down-1", 10.0)
        large = client.wait("pay-down-2", 10_000.0)
    finally:
        client.close()
    assert (small.decision, small.reasons) == ("approve", (UNAVAILABLE_REASON,))
    assert (large.decision, large.reasons) == ("review", (UNAVAILABLE_REASON,))
    with pytest.raises(redis.RedisError):
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.1).ping()
