"""order_success: order processing success per window and channel, refund response
percentiles, and their alerts (issue 23).

Reads `orders` and `payments`. One tracker owns every order: a window's figures add up
orders from every user, and at shop rates (hundreds of orders per second on Double 11)
one process keeps up (see BENCHMARKS.md). Outputs: `order_success` and
`refund_response` records on `metrics` (deterministic `metric_id`), the latest of each
in Redis (`orders:success:{dimension}:{value}`, `orders:refunds`; a replay never moves
them back), and `orders.success_rate` / `orders.refund_response` candidates on
`alert-candidates`.

Run it the Bytewax way: `python -m bytewax.run flows.order_success:flow -r DIR -s 5 -b 0`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from operators.clock import Clock, PartitionStatus, Progress, from_ms, wall_clock_ms
from operators.events import OrderEvent, PaymentEvent
from operators.order_success import OrderChanges, OrderRules, OrderSuccess
from shopstream.settings import ConfigError, Settings
from state.alert_candidates import candidate_message, marked
from state.inputs import decode_record
from state.kafka import InputRecord, KafkaInputSource, KafkaOutputSink, OutboundMessage
from state.redis_store import RedisSink, RedisWrite, SetLatest
from state.serde import dumps
from state.snapshots import PickledState, restored, tune_gc_for_long_lived_state

ORDER_TOPICS = ("orders", "payments")
TRACKER_KEY = "all"
_OUTCOME_PAYMENTS = frozenset({"succeeded", "failed"})


@dataclass(frozen=True)
class OrderSuccessConfig:
    max_event_ahead_ms: int
    rules: OrderRules = field(default_factory=OrderRules)

    @classmethod
    def from_settings(cls, settings: Settings) -> "OrderSuccessConfig":
        try:
            success_min = Decimal(settings.order_success_pct_min) / 100
        except ArithmeticError:
            raise ConfigError(f"SHOPSTREAM_ORDER_SUCCESS_PCT_MIN must be a number, "
                              f"got {settings.order_success_pct_min!r}") from None
        if not 0 < success_min <= 1:
            raise ConfigError("SHOPSTREAM_ORDER_SUCCESS_PCT_MIN must be above 0 and at most 100")
        rules = OrderRules(
            lateness_ms=settings.allowed_lateness_s * 1000,
            window_ms=settings.order_window_s * 1000,
            outcome_timeout_ms=settings.order_outcome_timeout_s * 1000,
            retry_grace_ms=settings.order_retry_grace_s * 1000,
            success_min=float(success_min),
            min_orders=settings.order_success_min_orders,
            decline_reasons=frozenset(r.strip() for r in settings.order_decline_reasons.split(",") if r.strip()),
            refund_p95_ms=settings.refund_response_p95_s * 1000,
            refund_wait_ms=settings.refund_wait_s * 1000,
            refund_min_requests=settings.refund_min_requests,
        )
        return cls(max_event_ahead_ms=settings.max_event_ahead_s * 1000, rules=rules)


class OrderBatch(NamedTuple):
    events: list
    progress: Progress


def triage_batch(records: list[InputRecord], config: OrderSuccessConfig, now_ms: int) -> list[tuple[str, OrderBatch]]:
    latest_ts_ms = now_ms + config.max_event_ahead_ms
    events: list = []
    progress = Progress()
    for record in records:
        if type(record) is PartitionStatus:
            progress.report(record)
            continue
        event = decode_record(record, latest_ts_ms)
        kind = type(event)
        if kind is not OrderEvent and kind is not PaymentEvent:
            continue  # a dead letter (intake publishes it)
        progress.saw((record.topic, record.partition), event.ts)
        if kind is OrderEvent or event.status in _OUTCOME_PAYMENTS:
            events.append(event)
    if not progress:
        return []
    return [(TRACKER_KEY, OrderBatch(events, progress))]


class _OrderLogic(StatefulBatchLogic[OrderBatch, OrderChanges, OrderSuccess]):
    def __init__(self, tracker: OrderSuccess, now_ms: Clock):
        self._tracker = tracker
        self._now_ms = now_ms

    def on_batch(self, batches: list[OrderBatch]):
        now = self._now_ms()
        return [self._tracker.add(batch.events, batch.progress, now) for batch in batches], self.RETAIN

    def on_notify(self):
        return [self._tracker.advance(self._now_ms())], self.RETAIN

    def on_eof(self):
        return [self._tracker.flush()], self.RETAIN

    def notify_at(self) -> datetime | None:
        wake = self._tracker.next_wake_ms(self._now_ms())
        return None if wake is None else from_ms(wake)

    def snapshot(self) -> PickledState:
        return PickledState.of(self._tracker)


def tracker_for(resumed, config: OrderSuccessConfig, now_ms: int) -> OrderSuccess:
    resumed = restored(resumed)
    if resumed is None:
        return OrderSuccess(config.rules)
    resumed.rules = config.rules
    resumed.clock.lateness_ms = config.rules.lateness_ms
    resumed.resume(now_ms)
    return resumed


def order_outputs(changes: OrderChanges) -> tuple[list[OutboundMessage], list[RedisWrite]]:
    messages = [OutboundMessage("metrics", m["metric_id"].encode(), dumps(m)) for m in changes.metrics]
    messages.extend(candidate_message(candidate) for candidate in changes.candidates)
    writes: list[RedisWrite] = []
    for record in changes.metrics:
        if record["metric"] == "order_success":
            key = f"orders:success:{record['dimension']}:{record['value']}"
        else:
            key = "orders:refunds"
        writes.append(SetLatest(key, record["window_start"], dumps(record)))
    return messages, writes


def build_flow(
    records: Source[InputRecord],
    kafka_sink: Sink[OutboundMessage],
    redis_sink: Sink[RedisWrite],
    config: OrderSuccessConfig,
    now_ms: Clock = wall_clock_ms,
) -> Dataflow:
    flow = Dataflow("order_success")
    raw = op.input("records", flow, records)
    batches = op.flat_map_batch("triage", raw, lambda batch: triage_batch(batch, config, now_ms()))
    changes = op.stateful_batch(
        "tracker", batches, lambda resumed: marked("order_success", _OrderLogic(tracker_for(resumed, config, now_ms()), now_ms),
                                     now_ms=now_ms)
    )
    outputs = op.map("outputs", op.key_rm("unkey", changes), order_outputs)
    op.output("kafka", op.flat_map("messages", outputs, lambda out: out[0]), kafka_sink)
    op.output("redis", op.flat_map("writes", outputs, lambda out: out[1]), redis_sink)
    return flow


def flow_from_settings(settings: Settings) -> Dataflow:
    tune_gc_for_long_lived_state()
    return build_flow(
        KafkaInputSource(settings, ORDER_TOPICS),
        KafkaOutputSink(settings),
        RedisSink(settings),
        OrderSuccessConfig.from_settings(settings),
    )


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        return flow_from_settings(Settings.from_env())
    raise AttributeError(name)
