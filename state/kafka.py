"""Kafka I/O: the input source, and a sink that never loses a message silently.

Bytewax's own KafkaSink has no delivery callback, so a message librdkafka gives up
on vanishes. `KafkaOutputSink` produces with idempotence on, waits for every
delivery report before a batch counts as written, and raises `DeliveryError`
(which stops the run) when any message could not be delivered.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple

from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from shopstream.settings import Settings

log = logging.getLogger(__name__)

PREFETCH_KB_PER_PARTITION = 4096
LAG_REPORT_INTERVAL_MS = 500

# How long a batch may wait for its delivery reports before the run fails.
DELIVERY_TIMEOUT_S = 30.0


class DeliveryError(RuntimeError):
    """Kafka did not accept a message we produced; the run must stop, not drop it."""


class InputRecord(NamedTuple):
    """One message from an input topic, with where it came from (for dead letters).

    A NamedTuple: built once per input message, so it must be cheap to create.
    """

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


class KafkaInputSource(FixedPartitionedSource[InputRecord, int]):
    """Contract input topics as `InputRecord`s; one Bytewax partition per Kafka partition.

    Offsets live in Bytewax's recovery store, not a consumer group. A resumed offset
    that Kafka has already deleted stops the flow (`auto.offset.reset=error`)
    instead of silently skipping data. With `tail=False` the source ends at the
    end of each partition (bounded replays).
    """

    def __init__(self, settings: Settings, topics: Iterable[str], tail: bool = True, batch_size: int = 1000,
                 consumer_overrides: Mapping[str, object] | None = None, poll_timeout_s: float = 0.001):
        self._settings = settings
        self._topics = list(topics)
        self._tail = tail
        self._batch_size = batch_size
        self._consumer_overrides = dict(consumer_overrides or {})  # e.g. low-latency fetching
        # How long one partition's poll may block the worker when it has nothing: with
        # several partitions per worker, an empty poll of each adds up before a busy one is read.
        self._poll_timeout_s = poll_timeout_s

    def list_parts(self) -> list[str]:
        return list_partitions(self._settings, self._topics)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> "_InputPartition":
        index, topic = for_part.split("-", 1)
        return _InputPartition(self._settings, step_id, topic, int(index), resume_state, self._tail, self._batch_size,
                               self._consumer_overrides, self._poll_timeout_s)


class _InputPartition(StatefulSourcePartition[InputRecord, int]):
    """Reads one Kafka partition straight into `InputRecord`s (no intermediate objects)."""

    def __init__(self, settings, step_id, topic, partition, resume_offset, tail, batch_size, overrides=None,
                 poll_timeout_s=0.001):
        self._poll_timeout_s = poll_timeout_s
        self._contract_topic = topic[len(settings.topic_prefix) :]
        self._partition = partition
        self._offset = OFFSET_BEGINNING if resume_offset is None else resume_offset
        self._batch_size = batch_size
        self._eof = False
        # Labelled on the first statistics, so no partition reports a lag it has not measured.
        self._lag_labels = {"step_id": step_id, "topic": topic, "partition": partition}
        self._consumer = Consumer(
            {
                **settings.kafka_config(),
                "group.id": "shopstream-unused",  # required, never joined: we assign
                "enable.auto.commit": False,
                "enable.partition.eof": not tail,
                "auto.offset.reset": "error",
                # One consumer per partition; librdkafka's default prefetch (64 MB
                # each) would let a backlog of 16 partitions fill a gigabyte.
                "queued.max.messages.kbytes": PREFETCH_KB_PER_PARTITION,
                **self._lag_reporting(),
                **(overrides or {}),
            }
        )
        self._consumer.assign([TopicPartition(topic, partition, self._offset)])

    def _lag_reporting(self) -> dict:
        """librdkafka statistics feed the lag gauge, only when the metrics API is on:
        parsing them costs a JSON decode per partition and interval."""
        if os.environ.get("BYTEWAX_DATAFLOW_API_ENABLED", "").lower() not in ("1", "true"):
            return {}
        return {"statistics.interval.ms": LAG_REPORT_INTERVAL_MS, "stats_cb": self._record_lag}

    def _record_lag(self, stats_json: str) -> None:
        """Publish how far behind the partition's end we are (Bytewax's lag metric)."""
        stats = json.loads(stats_json)
        for topic_stats in stats.get("topics", {}).values():
            partition = topic_stats["partitions"].get(str(self._partition))
            if partition is not None and partition["ls_offset"] >= 0:
                position = self._offset if self._offset >= 0 else partition["lo_offset"]
                lag = max(0, partition["ls_offset"] - position)
                BYTEWAX_CONSUMER_LAG_GAUGE.labels(**self._lag_labels).set(lag)

    def next_batch(self) -> list[InputRecord]:
        if self._eof:
            raise StopIteration()
        records = []
        for msg in self._consumer.consume(self._batch_size, self._poll_timeout_s):
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._eof = True  # emit this batch; stop on the next call
                    break
                if error.retriable() or error.code() in _TRANSIENT_CONSUMER_ERRORS:
                    log.warning("transient Kafka consumer error on %s: %s", self._contract_topic, error)
                    continue
                raise RuntimeError(f"Kafka consumer error on {self._contract_topic}, stopping: {error}")
            _, timestamp_ms = msg.timestamp()
            records.append(
                InputRecord(self._contract_topic, self._partition, msg.offset(), msg.value(), timestamp_ms, msg.key())
            )
        if records:
            self._offset = records[-1].offset + 1
        return records

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


_TRANSIENT_CONSUMER_ERRORS = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})


def producer_config(settings: Settings) -> dict:
    return {
        **settings.kafka_config(),
        "enable.idempotence": True,
        # Failures are all we track; skipping success reports saves a callback per message.
        "delivery.report.only.error": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000),
    }


class CheckedProducer:
    """A producer whose `flush` raises if any message since the last flush failed."""

    def __init__(self, settings: Settings, overrides: Mapping[str, object] | None = None):
        self._settings = settings
        self._producer = Producer({**producer_config(settings), **(overrides or {})})
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

    def poll(self) -> None:
        """Send what is queued and serve delivery reports, without waiting."""
        self._producer.poll(0)

    def raise_failures(self) -> None:
        """Raise DeliveryError for failures reported since the last check."""
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(f"Kafka rejected {len(failures)} message(s); first: {failures[0]}")

    def flush(self) -> None:
        remaining = self._producer.flush(DELIVERY_TIMEOUT_S)
        if remaining:
            raise DeliveryError(
                f"{remaining} message(s) still undelivered after {DELIVERY_TIMEOUT_S:.0f}s; "
                f"is Kafka at {self._settings.kafka_bootstrap_servers} reachable?"
            )
        self.raise_failures()


class _KafkaOutputPartition(StatelessSinkPartition[OutboundMessage]):
    def __init__(self, settings: Settings, overrides: Mapping[str, object] | None = None):
        self._producer = CheckedProducer(settings, overrides)

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

    def __init__(self, settings: Settings, producer_overrides: Mapping[str, object] | None = None):
        self._settings = settings
        self._overrides = dict(producer_overrides or {})  # e.g. linger.ms for low latency

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaOutputPartition:
        return _KafkaOutputPartition(self._settings, self._overrides)


def read_topic(settings: Settings, topic: str, timeout_s: float = 20.0) -> list[tuple[bytes | None, bytes]]:
    """Every message currently in a topic, all partitions, as (key, value): for
    checks and benchmarks that read an output topic to its end."""
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
