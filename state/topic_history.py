"""Read whole topics to their current end, for the pre-training replays
(`shopstream fraud train --from-topic`, `shopstream churn train`).

Any topic name works: a contract name (`payments`, `orders`, ...) gets the configured
topic prefix, any other name is the Kafka topic itself (so `t0.payments` and
`archive.payments-2024` both work). Each topic's records are labelled with the contract
topic they are decoded as, whatever the topic is called.
"""

from __future__ import annotations

import time
import uuid
from typing import Mapping

from shopstream.settings import ALL_TOPICS, Settings
from state.kafka import InputRecord


class TopicError(Exception):
    """A topic cannot be read (it does not exist, or the broker does not answer)."""


def resolve_topic(settings: Settings, name: str) -> str:
    """The Kafka topic for a name given on the command line."""
    return settings.topic(name) if name in ALL_TOPICS else name


def _watermarks(consumer, partition, timeout_s: float) -> tuple[int, int]:
    """A partition's (low, high) offsets, asked again while the broker answers with a
    retriable error (a just-created topic has no partition leader for a moment)."""
    from confluent_kafka import KafkaError, KafkaException

    transient = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                 KafkaError.UNKNOWN_TOPIC_OR_PART}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return consumer.get_watermark_offsets(partition, timeout=10)
        except KafkaException as err:
            error = err.args[0]
            if not (error.retriable() or error.code() in transient) or time.monotonic() > deadline:
                raise TopicError(f"cannot read the offsets of {partition.topic} [{partition.partition}]: "
                                 f"{error.str()}") from None
            time.sleep(0.2)


def read_to_end(settings: Settings, topics: Mapping[str, str], timeout_s: float = 120.0) -> list[InputRecord]:
    """Every message of `topics` (Kafka topic -> the contract topic it holds) up to the
    current end, in event-time order (`ts` of the JSON; the Kafka timestamp when absent).

    Sorted in memory: partitions read one after another are hours apart, and the
    replays apply events in event-time order."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from state.serde import loads

    consumer = Consumer({**settings.kafka_config(), "group.id": f"shopstream-replay-{uuid.uuid4()}",
                         "enable.auto.commit": False, "allow.auto.create.topics": False})
    records: list[tuple[int, InputRecord]] = []
    try:
        for real, contract in topics.items():
            try:
                metadata = consumer.list_topics(real, timeout=10).topics.get(real)
            except KafkaException as err:
                raise TopicError(f"cannot read topic {real!r}: {err}") from None
            if metadata is None or metadata.error is not None or not metadata.partitions:
                raise TopicError(f"topic {real!r} does not exist (contract names such as {contract!r} "
                                 f"get the prefix {settings.topic_prefix!r}; any other name is used as is)")
            ends = {p: _watermarks(consumer, TopicPartition(real, p), timeout_s) for p in metadata.partitions}
            pending = {p for p, (low, high) in ends.items() if high > low}
            consumer.assign([TopicPartition(real, p, ends[p][0]) for p in pending])
            deadline = time.monotonic() + timeout_s
            while pending and time.monotonic() < deadline:
                for msg in consumer.consume(10_000, 0.5):
                    if msg.error():
                        continue
                    value = msg.value()
                    try:
                        ts = int(loads(value)["ts"])
                    except Exception:  # noqa: BLE001 - malformed: the replay's decoder skips it
                        ts = msg.timestamp()[1]
                    records.append((ts, InputRecord(contract, msg.partition(), msg.offset(), value,
                                                    msg.timestamp()[1], msg.key())))
                    if msg.offset() + 1 >= ends[msg.partition()][1]:
                        pending.discard(msg.partition())
            if pending:
                raise TopicError(f"could not read {real} to its end within {timeout_s:.0f}s")
            consumer.unassign()
    finally:
        consumer.close()
    records.sort(key=lambda pair: pair[0])
    return [record for _, record in records]
