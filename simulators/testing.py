"""Simulated traffic as Bytewax test input, no Kafka involved.

    records = input_records(generate(("normal",), seed=3, duration_ms=30 * MINUTE))
    flow = build_flow(TestingSource(records), ...)

Every record is on partition 0 of its topic with offsets counting up per topic,
as if each topic had one partition and was fresh, and Kafka's timestamp is the
event time. A `bad_event` truth record's `topic_index` is its offset here.
"""

from __future__ import annotations

from typing import Iterable

from simulators.engine import SimEvent
from state.kafka import InputRecord


def input_records(sim_events: Iterable[SimEvent]) -> list[InputRecord]:
    offsets: dict[str, int] = {}
    records = []
    for event in sim_events:
        offset = offsets.get(event.topic, 0)
        offsets[event.topic] = offset + 1
        records.append(InputRecord(topic=event.topic, partition=0, offset=offset, value=event.value,
                                   timestamp_ms=event.ts, key=event.key))
    return records
