"""Reading the input topics: Kafka messages -> validated events or dead letters."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from operators.dead_letters import DeadLetter
from operators.events import InputEvent, InvalidEvent
from shopstream.settings import Settings
from state.kafka import InputRecord, input_source, list_partitions, to_input_records
from state.serde import decode_event, raw_text


def decode_record(record: InputRecord) -> InputEvent | DeadLetter:
    """Never raises on bad input: an unusable record becomes a DeadLetter with the reason."""
    try:
        return decode_event(record.topic, record.value)
    except InvalidEvent as err:
        raw, encoding = raw_text(record.value)
        ts = record.timestamp_ms if record.timestamp_ms >= 0 else int(time.time() * 1000)
        return DeadLetter(
            ts=ts,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=str(err),
            raw=raw,
            raw_encoding=encoding,
        )


@dataclass(frozen=True)
class DecodedInputs:
    events: Stream[InputEvent]
    dead_letters: Stream[DeadLetter]


@operator
def decode_inputs(step_id: str, records: Stream[InputRecord]) -> DecodedInputs:
    """Split input records into usable events and dead letters."""
    decoded = op.map("decode", records, decode_record)
    split = op.branch("split", decoded, lambda item: not isinstance(item, DeadLetter))
    return DecodedInputs(events=split.trues, dead_letters=split.falses)


class KafkaInputSource(FixedPartitionedSource[InputRecord, int | None]):
    """Bytewax's KafkaSource, yielding `InputRecord`s so flows never see Kafka types."""

    def __init__(self, settings: Settings, topics: Iterable[str], tail: bool = True):
        self._settings = settings
        self._topics = list(topics)
        self._kafka = input_source(settings, self._topics, tail=tail)

    def list_parts(self) -> list[str]:
        return list_partitions(self._settings, self._topics)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None):
        return _RecordPartition(self._kafka.build_part(step_id, for_part, resume_state), self._settings)


class _RecordPartition(StatefulSourcePartition[InputRecord, int | None]):
    def __init__(self, inner: StatefulSourcePartition, settings: Settings):
        self._inner = inner
        self._settings = settings

    def next_batch(self) -> list[InputRecord]:
        return [
            record
            for item in self._inner.next_batch()
            for record in to_input_records(self._settings, item)
        ]

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> int | None:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()
