"""Reading the input topics: Kafka messages -> validated events or dead letters."""

from __future__ import annotations

from operators.dead_letters import DeadLetter
from operators.events import InputEvent, InvalidEvent
from shopstream.settings import Settings
from state.kafka import InputRecord
from state.serde import decode_event, raw_excerpt

DEFAULT_RAW_LIMIT = Settings.dead_letter_raw_bytes  # the setting's default
MAX_ERROR_CHARS = 1_000  # reasons are short; this only keeps a dead letter's size bounded


def decode_record(
    record: InputRecord, latest_ts_ms: int | None = None, raw_limit: int = DEFAULT_RAW_LIMIT
) -> InputEvent | DeadLetter:
    """Never raises on bad input: an unusable record becomes a DeadLetter with the reason.

    `latest_ts_ms` bounds event time: an event stamped later than that (a producer
    with a broken clock, or microseconds instead of milliseconds) would drag every
    event-time clock into the future, so it is a dead letter instead. The dead letter
    keeps at most `raw_limit` bytes of the value (SHOPSTREAM_DEAD_LETTER_RAW_BYTES),
    with the whole value's length and SHA-256, so it always fits a Kafka message.
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
        excerpt = raw_excerpt(record.value, raw_limit)
        return DeadLetter(
            ts=record.timestamp_ms,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=str(err)[:MAX_ERROR_CHARS],
            raw=excerpt.text,
            raw_encoding=excerpt.encoding,
            raw_truncated=excerpt.truncated,
            raw_length=excerpt.length,
            raw_sha256=excerpt.sha256,
        )
