"""traffic: brushing rings and click farms, flagged on event time (issue 22).

Reads `clickstream`, `orders` and `payments`. The whole input batch goes to one engine
(`operators.traffic_engine`): the account graph crosses users, so it has one owner,
like fraud's velocity state.

Outputs, per batch:
- Kafka: `traffic-flags` (one per flagged order or session, keyed by `flag_id`), the
  flagged figures per KPI window on `metrics` (`{metric: "traffic", metric_id, window_start,
  window_end, flagged_orders, flagged_gmv, flagged_sessions, flagged_created_orders,
  flagged_paid_orders, flagged_stages}`, again under the same `metric_id` whenever a later
  flag lands in the window: the latest wins; `operators.traffic_kpi` subtracts them), and
  `traffic.brushing` / `traffic.click_farm` candidates on `alert-candidates`.
- Redis: `traffic:order:{order_id}` (the flag JSON, TTL the link horizon);
  `ring:{ring_id}` (the ring's absolute figures, replaced whole);
  `traffic:window:{window_start}` (the window's flagged figures, TTL the horizon); and
  `fraud:flagged:{user_id}` for every flagged account, so the coupon flows' shared
  guardrail (`state.coupons`) never sends a ring member a coupon.

Every write is an absolute value and every id is derived from the input, so a replay
after a crash writes the same thing again. Dead letters are skipped: the intake flow
publishes them.
Run it the Bytewax way: `python -m bytewax.run flows.traffic:flow -r DIR -s 5 -b 0`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from operators.clock import Clock, PartitionStatus, Progress, from_ms, wall_clock_ms
from operators.events import ClickEvent, OrderEvent, PaymentEvent
from operators.traffic_engine import RingRecord, TrafficConfig, TrafficEngine, TrafficOutputs
from operators.traffic_graph import LinkRules
from shopstream.settings import Settings
from state.alert_candidates import candidate_message, marked
from state.inputs import decode_record
from state.kafka import InputRecord, KafkaInputSource, KafkaOutputSink, OutboundMessage
from state.redis_store import RedisSink, RedisWrite, ReplaceHash, SetIfLater, SetValue
from state.serde import dumps
from state.snapshots import PickledState, restored, tune_gc_for_long_lived_state

TRAFFIC_TOPICS = ("clickstream", "orders", "payments")
FLAGS_TOPIC = "traffic-flags"
_USED = (ClickEvent, OrderEvent, PaymentEvent)


@dataclass(frozen=True)
class TrafficFlowConfig:
    engine: TrafficConfig
    max_event_ahead_ms: int
    flag_ttl_s: int  # fraud:flagged:{user_id}, shared with the fraud flow's flags


class TrafficBatch(NamedTuple):
    events: list
    progress: Progress  # ticks run on the stream clock (`operators.clock`)


def decode_batch(records: list, max_event_ahead_ms: int, now_ms: int) -> list[tuple[str, TrafficBatch]]:
    latest_ts_ms = now_ms + max_event_ahead_ms
    events = []
    progress = Progress()
    for record in records:
        if type(record) is PartitionStatus:
            progress.report(record)
            continue
        event = decode_record(record, latest_ts_ms)
        if type(event) in _USED:
            events.append(event)
            progress.saw((record.topic, record.partition), event.ts)
    return [("traffic", TrafficBatch(events, progress))] if progress else []


class _TrafficLogic(StatefulBatchLogic[TrafficBatch, TrafficOutputs, TrafficEngine]):
    """Bytewax adapter around the pure `TrafficEngine`; wall time enters only here."""

    def __init__(self, engine: TrafficEngine, now_ms: Clock):
        self._engine = engine
        self._now_ms = now_ms

    def on_batch(self, batches: list[TrafficBatch]):
        now = self._now_ms()
        return [self._engine.process(batch.events, now, batch.progress) for batch in batches], self.RETAIN

    def on_notify(self):
        return [self._engine.advance(self._now_ms())], self.RETAIN

    def on_eof(self):
        # A finite input (a test, a replay from a file) has ended: nothing more is coming.
        return [self._engine.flush()], self.RETAIN

    def notify_at(self) -> datetime | None:
        wake = self._engine.next_wake_ms(self._now_ms())
        return None if wake is None else from_ms(wake)

    def snapshot(self) -> PickledState:
        return PickledState.of(self._engine)


def engine_for(resumed, config: TrafficConfig, now_ms: int) -> TrafficEngine:
    engine = restored(resumed)
    if engine is None:
        return TrafficEngine(config)
    engine.configure(config)
    engine.clock.resume(now_ms)
    return engine


def ring_fields(ring: RingRecord) -> dict[str, str | int | float]:
    """`ring:{ring_id}` as the README documents it (`shared_keys` and `skus` are JSON)."""
    return {
        "members": ring.members,
        "shared_keys": dumps(ring.shared_keys).decode(),
        "first_seen_ts": ring.first_seen_ts,
        "last_seen_ts": ring.last_seen_ts,
        "skus": dumps(dict(sorted(ring.skus.items()))).decode(),
        "flagged_orders": ring.flagged_orders,
        "flagged_gmv": round(ring.flagged_gmv, 2),
        "flagged_sessions": ring.flagged_sessions,
        "updated_ts": ring.updated_ts,
    }


def traffic_outputs(out: TrafficOutputs, config: TrafficFlowConfig) -> tuple[list[RedisWrite], list[OutboundMessage]]:
    writes: list[RedisWrite] = []
    messages: list[OutboundMessage] = []
    horizon_s = config.engine.links.horizon_ms // 1000
    for flag in out.flags:
        value = dumps(flag.to_dict())
        messages.append(OutboundMessage(FLAGS_TOPIC, flag.flag_id.encode(), value))
        if flag.order_id is not None:
            writes.append(SetValue(f"traffic:order:{flag.order_id}", value, horizon_s))
        writes.append(SetIfLater(f"fraud:flagged:{flag.user_id}",
                                 dumps({"reason": f"traffic.{flag.kind}", "ts": flag.ts, "ring_id": flag.ring_id}),
                                 flag.ts, config.flag_ttl_s))
    for ring in out.rings:
        writes.append(ReplaceHash(f"ring:{ring.ring_id}", ring_fields(ring)))
    for window in out.windows:
        value = dumps(window)
        writes.append(SetValue(f"traffic:window:{window['window_start']}", value, horizon_s))
        messages.append(OutboundMessage("metrics", window["metric_id"].encode(), value))
    messages.extend(candidate_message(candidate) for candidate in out.candidates)
    return writes, messages


def build_flow(
    records: Source[InputRecord],
    kafka_sink: Sink[OutboundMessage],
    redis_sink: Sink[RedisWrite],
    config: TrafficFlowConfig,
    now_ms: Clock = wall_clock_ms,
) -> Dataflow:
    flow = Dataflow("traffic")
    raw = op.input("inputs", flow, records)
    batches = op.flat_map_batch("decode", raw, lambda batch: decode_batch(batch, config.max_event_ahead_ms, now_ms()))
    outputs = op.stateful_batch(
        "engine", batches, lambda resumed: marked("traffic", _TrafficLogic(engine_for(resumed, config.engine, now_ms()), now_ms),
                                  now_ms=now_ms)
    )
    unkeyed = op.filter("nonempty", op.key_rm("unkey", outputs), bool)
    writes_and_messages = op.map("outputs", unkeyed, lambda out: traffic_outputs(out, config))
    op.output("redis", op.flat_map("writes", writes_and_messages, lambda wm: wm[0]), redis_sink)
    op.output("kafka", op.flat_map("messages", writes_and_messages, lambda wm: wm[1]), kafka_sink)
    return flow


def flow_config(settings: Settings) -> TrafficFlowConfig:
    return TrafficFlowConfig(
        engine=TrafficConfig(
            links=LinkRules(horizon_ms=settings.traffic_horizon_days * 86_400_000),
            lateness_ms=settings.allowed_lateness_s * 1000,
            session_idle_ms=settings.traffic_session_idle_s * 1000,
            min_ring_members=settings.traffic_min_ring_members,
            order_threshold=settings.traffic_order_threshold_pct / 100,
            session_threshold=settings.traffic_session_threshold_pct / 100,
            metrics_window_ms=settings.funnel_window_s * 1000,
        ),
        max_event_ahead_ms=settings.max_event_ahead_s * 1000,
        flag_ttl_s=settings.fraud_flag_ttl_days * 86_400,
    )


def flow_from_settings(settings: Settings) -> Dataflow:
    tune_gc_for_long_lived_state()  # the account graph is many long-lived objects
    return build_flow(KafkaInputSource(settings, TRAFFIC_TOPICS), KafkaOutputSink(settings), RedisSink(settings),
                      flow_config(settings))


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run flows.traffic:flow` builds the flow from the environment on
    # first access, so importing this module for tests needs no configuration.
    if name == "flow":
        return flow_from_settings(Settings.from_env())
    raise AttributeError(name)
