"""intake: validate every input topic, route dead letters, count input per window.

The one flow that publishes dead letters, so each bad event appears in
`dead-letters` once however many flows read its topic (the others drop what they
cannot decode). Its per-window input counts per topic and per clickstream
channel are the basis of the traffic alerts; they also go to `alert-candidates`
(keyed `intake`, each followed by the counter's progress marker), so the alert
router orders them with every other producer's candidates (README: alerts).

Run it the Bytewax way: `python -m bytewax.run flows.intake:flow -r DIR -s 5 -b 0`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from datetime import datetime

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from operators.clock import Clock, PartitionStatus, Progress, from_ms, wall_clock_ms
from operators.dead_letters import DeadLetter
from operators.input_counts import InputCount, InputCounter, InputTallies, tally_batch
from shopstream.settings import INPUT_TOPICS, Settings
from operators.alert_hold import ProgressMarker
from state.alert_candidates import INTAKE, Produced, candidate_message, marked
from state.inputs import DEFAULT_RAW_LIMIT, decode_record
from state.kafka import InputRecord, KafkaInputSource, KafkaOutputSink, OutboundMessage
from state.redis_store import AddToHistory, RedisSink, RedisWrite, SetLatest
from state.serde import dumps

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class IntakeConfig:
    window_ms: int
    lateness_ms: int
    history_length: int
    key_idle_windows: int  # a key that goes quiet keeps reporting zeros this many windows
    max_event_ahead_ms: int  # events stamped further ahead of the wall clock are dead letters
    dead_letter_raw_bytes: int = DEFAULT_RAW_LIMIT  # bytes of a bad input kept in its dead letter

    @classmethod
    def from_settings(cls, settings: Settings) -> "IntakeConfig":
        return cls(
            window_ms=settings.input_window_s * 1000,
            lateness_ms=settings.allowed_lateness_s * 1000,
            history_length=settings.history_length,
            key_idle_windows=max(1, settings.idle_key_report_s // settings.input_window_s),
            max_event_ahead_ms=settings.max_event_ahead_s * 1000,
            dead_letter_raw_bytes=settings.dead_letter_raw_bytes,
        )


def dead_letter_message(dead: DeadLetter) -> OutboundMessage:
    return OutboundMessage("dead-letters", dead.dead_letter_id.encode(), dumps(dead.to_dict()))


def input_count_record(count: InputCount) -> dict:
    return {
        "metric": "input",
        "metric_id": f"{count.series}:{count.window_start}",
        "window_start": count.window_start,
        "window_end": count.window_end,
        "topic": count.topic,
        "dimension": count.dimension,
        "value": count.value,
        "events": count.events,
        "dead_letters": count.dead_letters,
        "late_events": count.late_events,
    }


def input_count_outputs(count: InputCount, history_length: int) -> tuple[OutboundMessage, list[RedisWrite]]:
    """The `metrics` record, and Redis: the latest window per series and a capped
    history for charts. All safe to repeat after a replay."""
    payload = dumps(input_count_record(count))
    return OutboundMessage("metrics", count.series.encode(), payload), [
        SetLatest(count.series, count.window_end, payload),
        AddToHistory(f"{count.series}:history", count.window_start, payload, history_length),
    ]


def count_outputs(item: InputCount | ProgressMarker, history_length: int) -> tuple[list[OutboundMessage], list[RedisWrite]]:
    """An input window on `metrics` and Redis, and its copy for the alert router; or the
    counter's progress marker after them."""
    if isinstance(item, ProgressMarker):
        return [candidate_message(item)], []
    message, writes = input_count_outputs(item, history_length)
    return [message, candidate_message(Produced(INTAKE, "0", input_count_record(item)))], writes


@dataclass(frozen=True)
class TriagedBatch:
    """One input batch, validated: its dead letters, its input tallies, and how far
    each input partition got in event time."""

    dead_letters: list[DeadLetter]
    tallies: InputTallies


def triage_batch(records: list[InputRecord], config: IntakeConfig, now_ms: int) -> TriagedBatch:
    latest_ts_ms = now_ms + config.max_event_ahead_ms
    progress = Progress()
    messages = []
    for record in records:
        if type(record) is PartitionStatus:
            progress.report(record)
        else:
            messages.append(record)
    decoded = [decode_record(record, latest_ts_ms, config.dead_letter_raw_bytes) for record in messages]
    for record, item in zip(messages, decoded):
        if not isinstance(item, DeadLetter):
            progress.saw((record.topic, record.partition), item.ts)
    return TriagedBatch(
        dead_letters=[item for item in decoded if isinstance(item, DeadLetter)],
        tallies=InputTallies(tally_batch(decoded, config.window_ms), progress),
    )


class _InputCountLogic(StatefulBatchLogic[InputTallies, InputCount, InputCounter]):
    """Bytewax adapter around the pure `InputCounter`; wall time enters only here."""

    def __init__(self, counter: InputCounter, now_ms: Clock):
        self._counter = counter
        self._now_ms = now_ms

    def on_batch(self, batches: list[InputTallies]):
        # One `add` per input batch: results must not depend on how Bytewax groups
        # upstream batches on their way to this step (one worker or several).
        now = self._now_ms()
        counts = [c for batch in batches for c in self._counter.add(batch.tallies, now, batch.progress)]
        return counts, self.RETAIN

    def on_notify(self):
        return self._counter.advance(self._now_ms()), self.RETAIN

    def on_eof(self):
        return self._counter.flush(), self.RETAIN

    def notify_at(self) -> datetime | None:
        wake = self._counter.next_wake_ms(self._now_ms())
        return None if wake is None else from_ms(wake)

    def snapshot(self) -> InputCounter:
        return copy.deepcopy(self._counter)


def counter_for(resumed: InputCounter | None, config: IntakeConfig, now_ms: int) -> InputCounter:
    """The resumed counter under the current configuration; a new one if windows changed size."""
    if resumed is not None and resumed.window_ms == config.window_ms:
        resumed.lateness_ms = resumed.clock.lateness_ms = config.lateness_ms
        resumed.key_idle_windows = config.key_idle_windows
        resumed.resume(now_ms)
        return resumed
    if resumed is not None:
        log.warning(
            "input window changed from %d ms to %d ms since the last snapshot: "
            "counts of the windows still open at the restart are dropped",
            resumed.window_ms,
            config.window_ms,
        )
    return InputCounter(config.window_ms, config.lateness_ms, config.key_idle_windows)


def build_flow(
    records: Source[InputRecord],
    kafka_sink: Sink[OutboundMessage],
    redis_sink: Sink[RedisWrite],
    config: IntakeConfig,
    now_ms: Clock = wall_clock_ms,
) -> Dataflow:
    flow = Dataflow("intake")
    raw = op.input("records", flow, records)
    # Validation is the per-event work; doing it a whole batch per Python call keeps
    # Bytewax's per-item overhead out of the hot path.
    triaged = op.flat_map_batch("triage", raw, lambda batch: [triage_batch(batch, config, now_ms())])
    dead_letters = op.flat_map("dead_letters", triaged, lambda t: t.dead_letters)
    batch_tallies = op.map("tallies", triaged, lambda t: t.tallies)
    # One counter for the whole stream: it sees a handful of tallies per batch.
    counts = op.stateful_batch(
        "input_counts",
        op.key_on("all", batch_tallies, lambda _: "all"),
        lambda resumed: marked(INTAKE, _InputCountLogic(counter_for(resumed, config, now_ms()), now_ms), flat=True,
                                now_ms=now_ms),
    )
    outputs = op.map("count_outputs", op.key_rm("unkey", counts), lambda c: count_outputs(c, config.history_length))
    kafka_out = op.merge(
        "kafka_out",
        op.map("dead_letter_msg", dead_letters, dead_letter_message),
        op.flat_map("count_msg", outputs, lambda out: out[0]),
    )
    op.output("kafka", kafka_out, kafka_sink)
    op.output("redis", op.flat_map("count_writes", outputs, lambda out: out[1]), redis_sink)
    return flow


def flow_from_settings(settings: Settings) -> Dataflow:
    return build_flow(
        KafkaInputSource(settings, INPUT_TOPICS),
        KafkaOutputSink(settings),
        RedisSink(settings),
        IntakeConfig.from_settings(settings),
    )


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run flows.intake:flow` builds the flow from the environment
    # on first access, so importing this module for tests needs no configuration.
    if name == "flow":
        return flow_from_settings(Settings.from_env())
    raise AttributeError(name)
