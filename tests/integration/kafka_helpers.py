"""Small helpers for integration tests: produce, read a topic to its end, wait."""

from __future__ import annotations

import time
import uuid
from typing import Callable, Iterable, TypeVar

from confluent_kafka import Consumer, TopicPartition

from shopstream.settings import Settings
from state.kafka import CheckedProducer

T = TypeVar("T")


def produce(settings: Settings, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Produce (key, value) pairs to a contract topic and wait for every delivery."""
    producer = CheckedProducer(settings)
    count = 0
    for key, value in messages:
        producer.produce(topic, key, value)
        count += 1
    producer.flush()
    return count


def read_topic(settings: Settings, topic: str, timeout_s: float = 20.0) -> list[tuple[bytes | None, bytes]]:
    """Every message currently in a contract topic, all partitions, as (key, value)."""
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"test-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    real_topic = settings.topic(topic)
    try:
        partitions = consumer.list_topics(real_topic, timeout=10).topics[real_topic].partitions
        assignments = [TopicPartition(real_topic, p, 0) for p in partitions]
        ends = {}
        for tp in assignments:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            ends[tp.partition] = high
        pending = {p for p, high in ends.items() if high > 0}
        consumer.assign([tp for tp in assignments if tp.partition in pending])
        out = []
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append((msg.key(), msg.value()))
            if msg.offset() + 1 >= ends[msg.partition()]:
                pending.discard(msg.partition())
        if pending:
            raise TimeoutError(f"could not read {real_topic} to its end within {timeout_s}s")
        return out
    finally:
        consumer.close()


def wait_until(condition: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.2) -> T:
    """Poll `condition` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)
