"""funnel: live funnel drop-off and KPIs by channel, region and device.

Reads `clickstream`, `orders` and `payments` (all keyed by user). Users are hashed
into a fixed number of buckets, so a user's sessions, orders and payments meet in
one bucket's state and the engine sees a handful of items per input batch. Every
input batch reaches every bucket with the batch's latest event time per input
partition, so each bucket's clock follows the whole stream (watermarks in Bytewax
are per key). Buckets report their closed windows to one aggregator, which
publishes a window once every bucket has closed it.

    records ─ triage (decode, per bucket) ─ buckets (sessions, windows) ─ aggregator ─ metrics, Redis,
                                                                                      alert-candidates

Outputs: `funnel` and `kpi` records (tumbling and rolling) and `experiment`
records on `metrics`; Redis `funnel:{dimension}:{value}`, `kpi:latest`,
`kpi:channel:{value}` (and `...:rolling`, `experiment:{name}`) with a capped
`:history` per key; `funnel.dropoff` and `payment.failure_rate` candidates on
`alert-candidates`. Dead letters are skipped: the intake flow publishes them.

Run it the Bytewax way: `python -m bytewax.run flows.funnel:flow -r DIR -s 5 -b 0`.
"""

from __future__ import annotations

import functools
import logging
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from operators.alerts import AlertCandidate
from operators.clock import Clock, PartitionStatus, Progress, from_ms, wall_clock_ms
from operators.events import ClickEvent, OrderEvent, PaymentEvent
from operators.funnel import (BucketReport, FunnelBucket, FunnelEvent, FunnelRules, click_funnel_event_fast,
                              funnel_event)
from operators.funnel_detectors import DropoffConfig, DropoffDetector, PaymentFailureConfig, PaymentFailureDetector
from operators.funnel_results import AggregatorRules, FunnelAggregator, FunnelOutput
from shopstream.settings import Settings
from operators.alert_hold import ProgressMarker
from state.alert_candidates import ProgressMarking, ProgressReporter, Produced, candidate_message
from state.inputs import decode_record
from state.kafka import InputRecord, KafkaInputSource, KafkaOutputSink, OutboundMessage
from state.redis_store import AddToHistory, RedisSink, RedisWrite, SetLatest
from state.serde import JSONDecodeError, dumps, loads
from state.snapshots import PickledState, restored, tune_gc_for_long_lived_state

log = logging.getLogger(__name__)

FUNNEL_TOPICS = ("clickstream", "orders", "payments")
_FUNNEL_RECORDS = (ClickEvent, OrderEvent, PaymentEvent)


@dataclass(frozen=True)
class FunnelConfig:
    max_event_ahead_ms: int  # events stamped further ahead of the wall clock are skipped (dead letters)
    rules: FunnelRules = field(default_factory=FunnelRules)
    rolling_ms: int = 900_000
    buckets: int = 8  # session shards: at least the number of workers, few enough to batch well
    history_length: int = 120
    payment_failures: PaymentFailureConfig = field(default_factory=PaymentFailureConfig)
    dropoff: DropoffConfig = field(default_factory=DropoffConfig)
    experiment_min_sessions: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> "FunnelConfig":
        window_ms = settings.funnel_window_s * 1000
        return cls(
            max_event_ahead_ms=settings.max_event_ahead_s * 1000,
            rules=FunnelRules(
                window_ms=window_ms,
                lateness_ms=settings.allowed_lateness_s * 1000,
                session_timeout_ms=settings.funnel_session_timeout_s * 1000,
                order_retention_ms=settings.funnel_order_retention_s * 1000,
            ),
            rolling_ms=settings.funnel_rolling_s * 1000,
            buckets=max(settings.funnel_buckets, settings.total_workers),
            history_length=settings.history_length,
            payment_failures=PaymentFailureConfig(
                span_windows=max(1, settings.funnel_payment_span_s // settings.funnel_window_s),
                min_attempts=settings.funnel_payment_min_attempts,
                min_rate=settings.funnel_payment_failure_pct / 100,
            ),
            dropoff=DropoffConfig(
                min_sessions=settings.funnel_dropoff_min_sessions,
                drop_ratio=settings.funnel_dropoff_pct / 100,
            ),
            experiment_min_sessions=settings.funnel_experiment_min_sessions,
        )

    def aggregator_rules(self) -> AggregatorRules:
        return AggregatorRules(self.buckets, self.rules.window_ms, self.rolling_ms,
                               experiment_min_sessions=self.experiment_min_sessions)


class BucketBatch(NamedTuple):
    """One input batch's funnel events for one bucket, and the whole batch's progress."""

    bucket: str
    events: list[FunnelEvent]
    progress: Progress

    def __reduce__(self):
        # About half the batches cross to another process. Pickled as themselves, NamedTuple
        # events cost a Python call each way (21 us per event in all); as plain tuples
        # the pickler stays in C (5 us), and a C-level constructor turns them back.
        return _restore_batch, (self.bucket, [tuple(event) for event in self.events], self.progress)


_as_funnel_event = functools.partial(tuple.__new__, FunnelEvent)  # FunnelEvent._make without its Python frame


def _restore_batch(bucket: str, events: list[tuple], progress: Progress) -> BucketBatch:
    return BucketBatch(bucket, list(map(_as_funnel_event, events)), progress)


def _common_click(record: InputRecord) -> FunnelEvent | None:
    """The funnel event of a click of the common shape, decoded without its `ClickEvent`;
    None for anything else (other topics, bad JSON, unusual clicks): `decode_record` judges those."""
    if record.topic != "clickstream" or record.value is None:
        return None
    try:
        obj = loads(record.value)
    except JSONDecodeError:
        return None
    return click_funnel_event_fast(obj)


def triage_batch(records: list[InputRecord], config: FunnelConfig, now_ms: int) -> list[tuple[str, BucketBatch]]:
    """Decode a batch into funnel events grouped by the user's bucket; every bucket gets an entry."""
    latest_ts_ms = now_ms + config.max_event_ahead_ms
    buckets = config.buckets
    per_bucket: list[list[FunnelEvent]] = [[] for _ in range(buckets)]
    progress = Progress()
    crc32 = zlib.crc32  # not hash(): a user must land in the same bucket in every process
    for record in records:
        if type(record) is PartitionStatus:
            progress.report(record)
            continue
        item = _common_click(record)
        if item is not None:
            if item.ts > latest_ts_ms:
                continue  # a dead letter (published by intake)
            ts = item.ts
        else:
            event = decode_record(record, latest_ts_ms)
            if type(event) not in _FUNNEL_RECORDS:
                continue  # a dead letter (published by intake) or another topic
            ts = event.ts
            item = funnel_event(event)
        progress.saw((record.topic, record.partition), ts)
        if item is not None:
            per_bucket[crc32(item.user_id.encode()) % buckets].append(item)
    if not progress:
        return []
    return [(str(index), BucketBatch(str(index), events, progress)) for index, events in enumerate(per_bucket)]


class _BucketLogic(StatefulBatchLogic[BucketBatch, BucketReport, FunnelBucket]):
    """Bytewax adapter around the pure `FunnelBucket`; wall time enters only here."""

    def __init__(self, bucket: FunnelBucket, now_ms: Clock):
        self._bucket = bucket
        self._now_ms = now_ms

    def on_batch(self, batches: list[BucketBatch]):
        now = self._now_ms()
        bucket = self._bucket
        reports = []
        for batch in batches:
            bucket.bucket = batch.bucket  # the builder is not told its key; every batch names it
            reports.extend(bucket.add(batch.events, batch.progress, now))
        return reports, self.RETAIN

    def on_notify(self):
        return self._bucket.advance(self._now_ms()), self.RETAIN

    def on_eof(self):
        return self._bucket.flush(), self.RETAIN

    def notify_at(self) -> datetime | None:
        wake = self._bucket.next_wake_ms(self._now_ms())
        return None if wake is None else from_ms(wake)

    def snapshot(self) -> PickledState:
        return PickledState.of(self._bucket)


def bucket_for(resumed, config: FunnelConfig, now_ms: int) -> FunnelBucket:
    """The resumed bucket under the current rules; a new one if the window size changed."""
    resumed = restored(resumed)
    if resumed is not None and resumed.rules.window_ms == config.rules.window_ms:
        resumed.rules = config.rules
        resumed.clock.lateness_ms = config.rules.lateness_ms
        resumed.resume(now_ms)
        return resumed
    if resumed is not None:
        log.warning("funnel window changed since the last snapshot: the open windows of bucket %s are dropped",
                    resumed.bucket)
    return FunnelBucket("", config.rules)


class _AggregatorLogic(StatefulBatchLogic[BucketReport, FunnelOutput, FunnelAggregator]):
    def __init__(self, aggregator: FunnelAggregator):
        self._aggregator = aggregator

    def on_batch(self, reports: list[BucketReport]):
        return self._aggregator.add(reports), self.RETAIN

    def on_eof(self):
        return self._aggregator.flush(), self.RETAIN

    def snapshot(self) -> PickledState:
        return PickledState.of(self._aggregator)


def marked_windows(logic: _AggregatorLogic, now_ms: Clock = wall_clock_ms) -> ProgressMarking:
    """Candidates tagged, the aggregator's progress after them (the alert router's hold):
    `FunnelAggregator.stamped_after`, a window ahead of the buckets' `closed_through`.
    It moves once per window, when the buckets (which wake for that on quiet input)
    close one, so the same marker is repeated every `MARKER_INTERVAL_MS` in between:
    the router must not take a funnel that is working for one that is down."""
    return ProgressMarking(logic, ProgressReporter("funnel"), logic._aggregator.stamped_after, flat=True,
                           now_ms=now_ms, repeat=True)


def aggregator_for(resumed, config: FunnelConfig) -> FunnelAggregator:
    resumed = restored(resumed)
    if resumed is None or resumed.rules.window_ms != config.rules.window_ms:
        return FunnelAggregator(
            config.aggregator_rules(),
            PaymentFailureDetector(config.payment_failures),
            DropoffDetector(config.dropoff),
        )
    resumed.rules = config.aggregator_rules()
    # Fewer buckets than before the restart: the ones gone will never close another window.
    resumed.closed_through = {b: t for b, t in resumed.closed_through.items() if int(b) < config.buckets}
    resumed.payment_failures.config = config.payment_failures
    resumed.dropoff.config = config.dropoff
    return resumed


def funnel_outputs(item: FunnelOutput, history_length: int) -> tuple[OutboundMessage, list[RedisWrite]]:
    """Kafka: window results on `metrics`, candidates on `alert-candidates`. Redis: the
    latest result per series (newer window wins) and a capped history; all safe to repeat."""
    if isinstance(item, (AlertCandidate, Produced, ProgressMarker)):
        return candidate_message(item), []
    series = item.series
    payload = dumps(item.to_dict())
    order = item.window_end
    writes: list[RedisWrite] = [SetLatest(series, order, payload)]
    writes.append(AddToHistory(f"{series}:history", getattr(item, "window_start", order), payload, history_length))
    return OutboundMessage("metrics", series.encode(), payload), writes


def build_flow(
    records: Source[InputRecord],
    kafka_sink: Sink[OutboundMessage],
    redis_sink: Sink[RedisWrite],
    config: FunnelConfig,
    now_ms: Clock = wall_clock_ms,
) -> Dataflow:
    flow = Dataflow("funnel")
    raw = op.input("records", flow, records)
    # Decoding and the fan-out to buckets run a whole batch per Python call.
    bucket_batches = op.flat_map_batch("triage", raw, lambda batch: triage_batch(batch, config, now_ms()))
    reports = op.stateful_batch(
        "sessions",
        bucket_batches,
        lambda resumed: _BucketLogic(bucket_for(resumed, config, now_ms()), now_ms),
    )
    # One aggregator: it sees one report per bucket per closed window.
    results = op.stateful_batch(
        "windows",
        op.key_on("all", op.key_rm("unkey", reports), lambda _: "all"),
        lambda resumed: marked_windows(_AggregatorLogic(aggregator_for(resumed, config)), now_ms),
    )
    outputs = op.map("outputs", op.key_rm("unkey_results", results),
                     lambda item: funnel_outputs(item, config.history_length))
    op.output("kafka", op.map("messages", outputs, lambda out: out[0]), kafka_sink)
    op.output("redis", op.flat_map("writes", outputs, lambda out: out[1]), redis_sink)
    return flow


def flow_from_settings(settings: Settings) -> Dataflow:
    tune_gc_for_long_lived_state()
    return build_flow(
        KafkaInputSource(settings, FUNNEL_TOPICS),
        KafkaOutputSink(settings),
        RedisSink(settings),
        FunnelConfig.from_settings(settings),
    )


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run flows.funnel:flow` builds the flow from the environment
    # on first access, so importing this module for tests needs no configuration.
    if name == "flow":
        return flow_from_settings(Settings.from_env())
    raise AttributeError(name)
