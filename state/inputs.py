"""Reading the input topics: Kafka messages -> validated events or dead letters."""

from __future__ import annotations

from operators.dead_letters import DeadLetter
from operators.events import InputEvent, InvalidEvent
from state.kafka import InputRecord
from state.serde import decode_event, raw_text


def decode_record(record: InputRecord, latest_ts_ms: int | None = None) -> InputEvent | DeadLetter:
    """Never raises on bad input: an unusable record becomes a DeadLetter with the reason.

    `latest_ts_ms` bounds event time: an event stamped later than that (a producer
    with a broken clock, or microseconds instead of milliseconds) would drag every
    event-time clock into the future, so it is a dead letter instead.
    """
    try:
        event = decode_event(record.topic, record.value)
        if latest_ts_ms is not None and event.ts > latest_ts_ms:
            raise InvalidEvent(
                f"field 'ts' is {event.ts - latest_ts_ms} ms beyond the allowed future "
                "(event time is milliseconds since the epoch, UTC)"
            )
        return event
    except InvalidEvent as err:
        raw, encoding = raw_text(record.value)
        return DeadLetter(
            ts=record.timestamp_ms,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=str(err),
            raw=raw,
            raw_encoding=encoding,
        )
