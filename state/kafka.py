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
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from operators.clock import PartitionStatus
from shopstream.settings import Settings
from state import engine_metrics
from state.outages import OutageGuard

log = logging.getLogger(__name__)

PREFETCH_KB_PER_PARTITION = 4096
LAG_REPORT_INTERVAL_MS = 500

# How long librdkafka tries to deliver one message (message.timeout.ms) before it reports
# the message failed; a transient failure is then produced again (see CheckedProducer.flush).
DELIVERY_TIMEOUT_S = 30.0


class DeliveryError(RuntimeError):
    """Kafka did not accept a message we produced; the run must stop, not drop it."""


class TransientDeliveryError(DeliveryError):
    """Messages could not be delivered because Kafka was unreachable; they are produced again."""


# Delivery failures that mean "Kafka was not reachable in time", not "this message is wrong".
_TRANSIENT_DELIVERY_ERRORS = frozenset({
    KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
    KafkaError._QUEUE_FULL, KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT, KafkaError._FATAL,
})


def is_transient_delivery(err: KafkaError) -> bool:
    return err.retriable() or err.fatal() or err.code() in _TRANSIENT_DELIVERY_ERRORS


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


class KafkaInputSource(FixedPartitionedSource[InputRecord | PartitionStatus, int]):
    """Contract input topics as `InputRecord`s; one Bytewax partition per Kafka partition.

    Among the records, each partition emits a `PartitionStatus` when it starts and
    whenever it reaches or leaves the end of the partition, so the flows' event-time
    clocks know which partitions still hold a backlog (`operators.clock`).

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
        parts = list_partitions(self._settings, self._topics)
        self._part_count = len(parts)
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> "_InputPartition":
        index, topic = for_part.split("-", 1)
        part_count = getattr(self, "_part_count", None) or len(self.list_parts())
        return _InputPartition(self._settings, step_id, topic, int(index), resume_state, self._tail, self._batch_size,
                               self._consumer_overrides, self._poll_timeout_s, part_count)


class _InputPartition(StatefulSourcePartition[InputRecord, int]):
    """Reads one Kafka partition straight into `InputRecord`s (no intermediate objects)."""

    def __init__(self, settings, step_id, topic, partition, resume_offset, tail, batch_size, overrides=None,
                 poll_timeout_s=0.001, part_count=1):
        self._poll_timeout_s = poll_timeout_s
        self._contract_topic = topic[len(settings.topic_prefix) :]
        self._partition = partition
        self._offset = OFFSET_BEGINNING if resume_offset is None else resume_offset
        self._batch_size = batch_size
        self._eof = False
        self._part_count = part_count
        self._topic_partition = TopicPartition(topic, partition)
        self._low: int | None = None  # the partition's first and end offsets, as far as known
        self._high: int | None = None
        self._caught_up: bool | None = None  # as last reported downstream; None: not yet reported
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
        self._query_end_offsets()

    def _query_end_offsets(self) -> None:
        """Ask the broker once where the partition ends, so a start need not wait for the
        first fetch to know whether there is a backlog. Unknown stays unknown (the flow's
        clock holds until the partition reports), never guessed."""
        try:
            low, high = self._consumer.get_watermark_offsets(self._topic_partition, timeout=5.0)
        except Exception as err:  # noqa: BLE001 - a slow broker only delays the first report
            log.warning("could not read the end offset of %s[%d] yet: %s", self._contract_topic, self._partition, err)
            return
        self._low, self._high = low, high

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
            engine_metrics.count_in(self._contract_topic, len(records))
        caught_up = self._at_end()
        if caught_up is not None and caught_up != self._caught_up:
            self._caught_up = caught_up
            records.append(PartitionStatus(self._contract_topic, self._partition, caught_up, self._part_count))
        return records

    def _at_end(self) -> bool | None:
        """Whether the read position reached the partition's end offset; None if unknown.

        The end offset comes from the fetch responses librdkafka caches (the high
        watermark), so this costs no broker round trip per poll."""
        low, high = self._consumer.get_watermark_offsets(self._topic_partition, cached=True)
        if high >= 0:
            self._high = high
            if low >= 0:
                self._low = low
        if self._high is None or self._high < 0:
            return None
        position = self._offset if self._offset >= 0 else self._low
        if position is None or position < 0:
            return None
        return position >= self._high

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
    """A producer whose `flush` returns only when every message since the last flush is delivered.

    A message Kafka refuses (too large, unknown topic, ...) makes `flush` raise
    `DeliveryError`. A message that could not be delivered because Kafka was unreachable
    (timed out, transport, all brokers down, the producer fenced) is produced again, with
    bounded backoff, until it is delivered or the outage outlasts SHOPSTREAM_OUTAGE_LIMIT_S
    (`OutageError`). Re-producing after a timeout may duplicate a message the broker did
    get; outputs carry deterministic ids and consumers dedupe on them.
    """

    def __init__(self, settings: Settings, overrides: Mapping[str, object] | None = None):
        self._settings = settings
        self._config = {**producer_config(settings), **(overrides or {})}
        self._producer = Producer(self._config)
        self._failures: list[str] = []
        self._undelivered: list[tuple[str, bytes | None, bytes, KafkaError]] = []  # (real topic, key, value, why)
        self._guard = OutageGuard(f"Kafka at {settings.kafka_bootstrap_servers}", settings.outage_limit_s)

    def _on_delivery(self, err, msg) -> None:
        if err is None:
            return
        if is_transient_delivery(err):
            self._undelivered.append((msg.topic(), msg.key(), msg.value(), err))
        else:
            self._failures.append(f"topic {msg.topic()!r} key {msg.key()!r}: {err}")

    def produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        self._produce_real(self._settings.topic(topic), key, value)

    def _produce_real(self, real_topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(real_topic, value=value, key=key, on_delivery=self._on_delivery)
                return
            except BufferError:
                # Local queue full: serve delivery reports to make room, then retry. Bounded:
                # every queued message gets its report within message.timeout.ms.
                self._producer.poll(0.05)
            except KafkaException as err:
                if not err.args[0].fatal():
                    raise
                self._renew_producer(err.args[0])

    def _renew_producer(self, err: KafkaError) -> None:
        """A fatal error (e.g. the idempotent producer was fenced) leaves the producer unusable:
        what it still held is failed back to us and produced again on a new one."""
        log.warning("Kafka producer failed fatally (%s); starting a new one", err)
        old, self._producer = self._producer, Producer(self._config)
        old.purge()
        old.flush(0)

    def poll(self) -> None:
        """Send what is queued and serve delivery reports, without waiting."""
        self._producer.poll(0)

    def raise_failures(self) -> None:
        """Raise DeliveryError for failures reported since the last check (transient ones too:
        a caller that does not flush, like the payment client, decides itself what to do)."""
        failures, self._failures = self._failures, []
        failures += [f"topic {t!r} key {k!r}: {err}" for t, k, _, err in self._undelivered]
        self._undelivered = []
        if failures:
            raise DeliveryError(f"Kafka rejected {len(failures)} message(s); first: {failures[0]}")

    def flush(self) -> None:
        self._guard.call(self._deliver_all, lambda err: isinstance(err, TransientDeliveryError))

    def _deliver_all(self) -> None:
        """One attempt: produce again what failed transiently, wait for every report."""
        retry, self._undelivered = self._undelivered, []
        if any(err.fatal() for *_, err in retry):
            self._renew_producer(next(err for *_, err in retry if err.fatal()))
            retry += self._take_undelivered()
        for real_topic, key, value, _ in retry:
            self._produce_real(real_topic, key, value)
        # Every message gets a report within message.timeout.ms; allow a little more.
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S + 10
        while self._producer.flush(1.0) and time.monotonic() < deadline:
            pass
        remaining = len(self._producer)
        if self._failures:
            self.raise_failures()
        if self._undelivered or remaining:
            first = self._undelivered[0][3] if self._undelivered else "no delivery report"
            raise TransientDeliveryError(
                f"{len(self._undelivered) + remaining} message(s) not delivered yet ({first})"
            )

    def _take_undelivered(self) -> list[tuple[str, bytes | None, bytes, KafkaError]]:
        taken, self._undelivered = self._undelivered, []
        return taken


class _KafkaOutputPartition(StatelessSinkPartition[OutboundMessage]):
    def __init__(self, settings: Settings, overrides: Mapping[str, object] | None = None):
        self._producer = CheckedProducer(settings, overrides)

    def write_batch(self, items: list[OutboundMessage]) -> None:
        for message in items:
            self._producer.produce(message.topic, message.key, message.value)
        # A batch is written only when Kafka has acknowledged all of it: Bytewax
        # may close the epoch right after this returns.
        self._producer.flush()
        engine_metrics.count_out(items)

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
