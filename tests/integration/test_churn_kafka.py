"""The churn flow end to end on the real broker and Redis, run by the runner with recovery:
kill -9 mid-history and restart gives the same churn hashes as an uninterrupted replay,
and every win-back coupon reaches `stream:coupons` and the `coupons` topic exactly once."""

from __future__ import annotations

import signal
from dataclasses import replace

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.churn import MODEL_NAME, ChurnConfig, build_flow, replay_history
from operators.rfm import DAY_MS
from shopstream.runner import start_flow, stop_all
from simulators.histories import generate_history
from simulators.testing import input_records
from state.model_checkpoints import ModelStore
from tests.integration.kafka_helpers import produce, read_topic, wait_for_snapshot, wait_until

pytestmark = pytest.mark.integration

NOW_MS = 1_900_000_000_000


@pytest.fixture(scope="module")
def history():
    return generate_history(customers=300, seed=31, duration_ms=420 * DAY_MS, prefix="k")


@pytest.fixture
def churn_settings(settings, tmp_path):
    models = tmp_path / "models"
    churn = replace(settings, churn_model_dir=models, churn_tier_monetary="6000,2500,600",
                    churn_tier_orders="10,5,2")
    pretrain = generate_history(customers=1000, seed=32, duration_ms=540 * DAY_MS)
    book = replay_history(input_records(pretrain), ChurnConfig.from_settings(churn), now_ms=NOW_MS)
    ModelStore(models).save(MODEL_NAME, book.model)
    return churn


def reference_run(records, config):
    """The same history through the same flow on TestingSource: no Kafka, no crash."""
    kafka_out, redis_out, coupons = [], [], []
    run_main(build_flow(TestingSource(records, batch_size=1000), TestingSink(kafka_out), TestingSink(redis_out),
                        TestingSink(coupons), config, lambda: NOW_MS))
    views = {}
    for write in redis_out:
        views[write.key] = {k: str(v) for k, v in write.fields.items()}
    return views, {c.coupon_id for c in coupons}


def churn_hashes(redis_client, settings) -> dict[str, dict]:
    prefix = settings.redis_key("")
    out = {}
    for key in redis_client.scan_iter(settings.redis_key("churn:*"), count=1000):
        out[key.decode()[len(prefix):]] = {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}
    return out


def test_kill_9_and_restart_gives_the_same_scores_and_each_winback_once(churn_settings, redis_client, history):
    settings = churn_settings
    events = [e for e in history if e.topic in ("orders", "clickstream")]
    expected_views, expected_coupons = reference_run(input_records(events), ChurnConfig.from_settings(settings))
    assert expected_coupons, "the history has valuable customers who lapse"

    half = len(events) // 2
    for topic in ("orders", "clickstream"):
        produce(settings, topic, [(e.key, e.value) for e in events[:half] if e.topic == topic])
    processes = start_flow(settings, "churn")
    try:
        wait_until(lambda: len(churn_hashes(redis_client, settings)) >= 100, 90, "the flow to make progress")
        wait_for_snapshot(settings, "churn")  # the restart resumes, not replays
    finally:
        for proc in processes:
            proc.popen.send_signal(signal.SIGKILL)
            proc.popen.wait()

    for topic in ("orders", "clickstream"):
        produce(settings, topic, [(e.key, e.value) for e in events[half:] if e.topic == topic])
    processes = start_flow(settings, "churn")
    try:
        wait_until(lambda: churn_hashes(redis_client, settings) == expected_views, 180,
                   "the churn hashes to equal the uninterrupted replay")
        assert all(p.popen.poll() is None for p in processes)
    finally:
        stop_all(processes)

    stream = redis_client.xrange(settings.redis_key("stream:coupons"))
    pushed = [fields[b"coupon_id"].decode() for _, fields in stream]
    assert sorted(pushed) == sorted(expected_coupons)  # each once, none added by the restart
    published = [orjson.loads(v) for _, v in read_topic(settings, "coupons")]
    assert {c["coupon_id"] for c in published} == expected_coupons
    assert all(c["reason"] == "churn_winback" and c["trigger_id"].startswith("churn:") for c in published)
    scores = [orjson.loads(v) for _, v in read_topic(settings, "churn-scores")]
    assert scores and set(scores[0]) == {"score_id", "ts", "user_id", "score", "risk", "tier"}
    by_id = {}
    for score in scores:  # the restart may repeat a record, never with a different body
        assert by_id.setdefault(score["score_id"], score) == score
