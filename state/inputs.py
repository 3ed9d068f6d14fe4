"""Reading the input topics: Kafka messages -> validated events or dead letters."""

from __future__ import annotations

import time
from dataclasses import dataclass

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from operators.dead_letters import DeadLetter
from operators.events import InputEvent, InvalidEvent
from state.kafka import InputRecord
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
