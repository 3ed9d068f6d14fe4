"""Kafka I/O: the input source, and a sink that never loses a message silently.

Bytewax's own KafkaSink has no delivery callback, so a message librdkafka gives up
on vanishes. `KafkaOutputSink` produces with idempotence on, waits for every
delivery report before a batch counts as written, and raises `DeliveryError`
(which stops the run) when any message could not be delivered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka import KafkaError as ConfluentKafkaError

from shopstream.settings import Settings

log = logging.getLogger(__name__)

# How long a batch may wait for its delivery reports before the run fails.
DELIVERY_TIMEOUT_S = 30.0


class DeliveryError(RuntimeError):
    """Kafka did not accept a message we produced; the run must stop, not drop it."""


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One message from an input topic, with where it came from (for dead letters)."""

    topic: str  # the contract name, without the configured prefix
    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int  # Kafka's record timestamp; -1 when the broker gave none
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message for an output topic; `topic` is the contract name."""

    topic: str
    key: bytes | None
    value: bytes


def input_source(settings: Settings, topics: Iterable[str], tail: bool = True) -> KafkaSource:
    """A Bytewax source over contract topics.

    Offsets live in Bytewax's recovery store (not a consumer group); a resumed
    offset that Kafka has aged out is an error instead of a silent skip.
    """
    return KafkaSource(
        brokers=settings.kafka_bootstrap_servers.split(","),
        topics=[settings.topic(name) for name in topics],
        tail=tail,
        starting_offset=OFFSET_BEGINNING,
        add_config={**settings.kafka_security, "auto.offset.reset": "error"},
        raise_on_errors=False,
    )


def list_partitions(settings: Settings, topics: Iterable[str]) -> list[str]:
    """Bytewax partition names (`{partition}-{topic}`) of contract topics."""
    admin = AdminClient(settings.kafka_config())
    parts = []
    for name in topics:
        topic = settings.topic(name)
        metadata = admin.list_topics(topic, timeout=30).topics[topic]
        if metadata.error is not None:
            raise RuntimeError(f"cannot read Kafka topic {topic!r}: {metadata.error.str()}")
        parts.extend(f"{index}-{topic}" for index in sorted(metadata.partitions))
    return parts


def to_input_records(
    settings: Settings, item: KafkaSourceMessage | KafkaError
) -> list[InputRecord]:
    """Map a source item to our record; transient client errors are logged, others raise."""
    if isinstance(item, KafkaError):
        if item.err.retriable() or item.err.code() in _TRANSIENT_CONSUMER_ERRORS:
            log.warning("transient Kafka consumer error: %s", item.err)
            return []
        raise RuntimeError(f"Kafka consumer error, stopping: {item.err}")
    _, timestamp_ms = item.timestamp if item.timestamp else (0, -1)
    return [
        InputRecord(
            topic=item.topic[len(settings.topic_prefix) :],
            partition=item.partition,
            offset=item.offset,
            value=item.value,
            timestamp_ms=timestamp_ms,
            key=item.key,
        )
    ]


_TRANSIENT_CONSUMER_ERRORS = frozenset(
    {ConfluentKafkaError._TRANSPORT, ConfluentKafkaError._ALL_BROKERS_DOWN}
)


def producer_config(settings: Settings) -> dict:
    return {
        **settings.kafka_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000),
    }


class CheckedProducer:
    """A producer whose `flush` raises if any message since the last flush failed."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._producer = Producer(producer_config(settings))
        self._failures: list[str] = []

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self._failures.append(f"topic {msg.topic()!r} key {msg.key()!r}: {err}")

    def produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        real_topic = self._settings.topic(topic)
        while True:
            try:
                self._producer.produce(real_topic, value=value, key=key, on_delivery=self._on_delivery)
                return
            except BufferError:
                # Local queue full: serve delivery reports to make room, then retry.
                self._producer.poll(0.05)

    def flush(self) -> None:
        remaining = self._producer.flush(DELIVERY_TIMEOUT_S)
        if remaining:
            raise DeliveryError(
                f"{remaining} message(s) still undelivered after {DELIVERY_TIMEOUT_S:.0f}s; "
                f"is Kafka at {self._settings.kafka_bootstrap_servers} reachable?"
            )
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(
                f"Kafka rejected {len(failures)} message(s); first: {failures[0]}"
            )


class _KafkaOutputPartition(StatelessSinkPartition[OutboundMessage]):
    def __init__(self, settings: Settings):
        self._producer = CheckedProducer(settings)

    def write_batch(self, items: list[OutboundMessage]) -> None:
        for message in items:
            self._producer.produce(message.topic, message.key, message.value)
        # A batch is written only when Kafka has acknowledged all of it: Bytewax
        # may close the epoch right after this returns.
        self._producer.flush()

    def close(self) -> None:
        self._producer.flush()


class KafkaOutputSink(DynamicSink[OutboundMessage]):
    """Writes `OutboundMessage`s to their topics; one checked producer per worker."""

    def __init__(self, settings: Settings):
        self._settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaOutputPartition:
        return _KafkaOutputPartition(self._settings)
