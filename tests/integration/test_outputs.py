"""The output writers on the real services: Redis writes are safe to repeat, and a
message Kafka refuses is an error, never a silent loss."""

from __future__ import annotations

import os

import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from state.kafka import CheckedProducer, DeliveryError, KafkaOutputSink, OutboundMessage
from state.redis_store import AddToHistory, RedisSink, SetHash, SetIfLater, SetLatest, StreamAddOnce
from tests.integration.kafka_helpers import read_topic

pytestmark = pytest.mark.integration


def write_twice(settings, writes):
    """Apply a batch, then the same batch again, as a replay after a crash would."""
    partition = RedisSink(settings).build("redis", 0, 1)
    try:
        partition.write_batch(writes)
        partition.write_batch(writes)
    finally:
        partition.close()


def test_stream_entries_are_added_once_across_replays(settings, redis_client):
    writes = [
        StreamAddOnce(f"dedupe:coupon:{n}", "stream:coupons", {"coupon_id": str(n)}, dedupe_ttl_s=600)
        for n in range(3)
    ]
    write_twice(settings, writes)
    entries = redis_client.xrange(settings.redis_key("stream:coupons"))
    assert [fields[b"coupon_id"] for _, fields in entries] == [b"0", b"1", b"2"]
    assert 0 < redis_client.ttl(settings.redis_key("dedupe:coupon:0")) <= 600


def test_latest_view_never_moves_backwards(settings, redis_client):
    write_twice(settings, [SetLatest("kpi:latest", 2000, b'{"window_end": 2000}'), SetLatest("kpi:latest", 1000, b'{"window_end": 1000}')])
    assert orjson.loads(redis_client.get(settings.redis_key("kpi:latest"))) == {"window_end": 2000}


def test_history_keeps_one_result_per_window_and_the_newest_windows(settings, redis_client):
    key = "input:orders:history"
    write_twice(settings, [AddToHistory(key, start, orjson.dumps({"start": start, "n": 1}), keep=3) for start in range(5)])
    # A window re-emitted with a different result replaces the earlier one.
    write_twice(settings, [AddToHistory(key, 4, orjson.dumps({"start": 4, "n": 2}), keep=3)])
    members = [orjson.loads(m) for m in redis_client.zrange(settings.redis_key(key), 0, -1)]
    assert members == [{"start": 2, "n": 1}, {"start": 3, "n": 1}, {"start": 4, "n": 2}]


def test_a_key_two_flows_write_keeps_the_later_flag_whichever_came_last(settings, redis_client):
    blocked = orjson.dumps({"reason": "blocked", "ts": 1_000})
    brushing = orjson.dumps({"reason": "traffic.brushing", "ts": 2_000, "ring_id": "r1"})
    same_time = orjson.dumps({"reason": "a", "ts": 2_000})
    results = []
    for order in ([blocked, brushing, same_time], [same_time, brushing, blocked]):
        key = f"fraud:flagged:u{len(results)}"
        write_twice(settings, [SetIfLater(key, value, orjson.loads(value)["ts"], 600) for value in order])
        results.append(redis_client.get(settings.redis_key(key)))
        assert 0 < redis_client.ttl(settings.redis_key(key)) <= 600
    assert results[0] == results[1] == min(brushing, same_time)  # a tie at the same ts: the smaller value


def test_hash_writes_are_absolute(settings, redis_client):
    write_twice(settings, [SetHash("stock:sku-1", {"available": 7, "level": "safe"}, ttl_s=60)])
    assert redis_client.hgetall(settings.redis_key("stock:sku-1")) == {b"available": b"7", b"level": b"safe"}


def test_kafka_sink_writes_every_message(settings):
    partition = KafkaOutputSink(settings).build("kafka", 0, 1)
    partition.write_batch([OutboundMessage("metrics", b"k", orjson.dumps({"n": n})) for n in range(50)])
    partition.close()
    assert sorted(orjson.loads(v)["n"] for _, v in read_topic(settings, "metrics")) == list(range(50))


def test_a_message_the_broker_refuses_stops_the_writer_with_the_reason(settings):
    # The broker accepts at most 1 KB per message on this topic; the client would send 1 MB.
    admin = AdminClient(settings.kafka_config())
    tiny = settings.topic("tiny-messages")
    admin.create_topics([NewTopic(tiny, 1, config={"max.message.bytes": "1024"})])[tiny].result(30)
    producer = CheckedProducer(settings)
    producer.produce("tiny-messages", b"k", os.urandom(10_000))  # incompressible
    with pytest.raises(DeliveryError, match=r"rejected 1 message\(s\).*(too large|MSG_SIZE_TOO_LARGE)"):
        producer.flush()
