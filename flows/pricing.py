"""pricing: the price watch per SKU against rivals, undercut and promotion alerts, and
price suggestions under inventory pressure (issue 23).

Reads `prices` (ours and rivals' from a crawler) and, for inventory pressure, `orders`
and `inventory`: the watch keeps its own stock ledger with the stock flow's rules, so a
price observed at event time T is judged on the stock as of T (reading the stock flow's
Redis hashes instead would make a replay's suggestions depend on how far that flow had
got). One watch owns every SKU: a promotion wave spans SKUs, and one process handles
the price feed (see BENCHMARKS.md).

Outputs: `price-suggestions` (keyed by SKU, `suggestion_id` deterministic), `price:{sku}`
hashes in Redis, `price.undercut` / `price.rival_promo` candidates on `alert-candidates`,
and `price_flagged` records on `metrics` for prices too far from their history.

Run it the Bytewax way: `python -m bytewax.run flows.pricing:flow -r DIR -s 5 -b 0`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from flows.stock import StockConfig
from operators.clock import Clock, PartitionStatus, Progress, from_ms, wall_clock_ms
from operators.events import InventoryEvent, OrderEvent, PriceEvent
from operators.pricing import PriceChanges, PriceRules, PriceWatch
from operators.stock import inventory_line, order_lines
from shopstream.settings import Settings
from state.alert_candidates import candidate_message, marked
from state.inputs import decode_record
from state.kafka import InputRecord, KafkaInputSource, KafkaOutputSink, OutboundMessage
from state.redis_store import RedisSink, RedisWrite, ReplaceHash
from state.serde import dumps
from state.snapshots import PickledState, restored, tune_gc_for_long_lived_state

PRICING_TOPICS = ("prices", "orders", "inventory")
WATCH_KEY = "all"


@dataclass(frozen=True)
class PricingConfig:
    max_event_ahead_ms: int
    rules: PriceRules = field(default_factory=PriceRules)

    @classmethod
    def from_settings(cls, settings: Settings) -> "PricingConfig":
        stock = StockConfig.from_settings(settings)
        rules = PriceRules(
            lateness_ms=settings.allowed_lateness_s * 1000,
            undercut_pct=settings.price_undercut_pct,
            undercut_hold_ms=settings.price_undercut_hold_s * 1000,
            max_jump_factor=settings.price_max_jump_factor,
            jump_confirm_ms=settings.price_jump_confirm_s * 1000,
            default_floor_pct=settings.price_default_floor_pct,
            raise_pct_warning=settings.price_raise_pct_warning,
            raise_pct_urgent=settings.price_raise_pct_urgent,
            follow_up_pct=settings.price_follow_up_pct,
            match_pct=settings.price_match_pct,
            fast_velocity_per_min=settings.price_fast_velocity_per_min,
            sellout_minutes=settings.price_sellout_minutes,
            promo_window_ms=settings.price_promo_window_s * 1000,
            promo_min_skus=settings.price_promo_min_skus,
            foreign_horizon_ms=settings.price_foreign_horizon_s * 1000,
            stock=stock.rules,
        )
        return cls(max_event_ahead_ms=settings.max_event_ahead_s * 1000, rules=rules)


class PricingBatch(NamedTuple):
    items: list  # PriceEvents and StockLines
    progress: Progress


def triage_batch(records: list[InputRecord], config: PricingConfig, now_ms: int) -> list[tuple[str, PricingBatch]]:
    latest_ts_ms = now_ms + config.max_event_ahead_ms
    items: list = []
    progress = Progress()
    for record in records:
        if type(record) is PartitionStatus:
            progress.report(record)
            continue
        event = decode_record(record, latest_ts_ms)
        kind = type(event)
        if kind is PriceEvent:
            items.append(event)
        elif kind is OrderEvent:
            items.extend(order_lines(event))
        elif kind is InventoryEvent:
            items.append(inventory_line(event))
        else:
            continue  # a dead letter (intake publishes it) or another topic
        progress.saw((record.topic, record.partition), event.ts)
    if not progress:
        return []
    return [(WATCH_KEY, PricingBatch(items, progress))]


class _PricingLogic(StatefulBatchLogic[PricingBatch, PriceChanges, PriceWatch]):
    """Bytewax adapter around the pure `PriceWatch`; wall time enters only here."""

    def __init__(self, watch: PriceWatch, now_ms: Clock):
        self._watch = watch
        self._now_ms = now_ms

    def on_batch(self, batches: list[PricingBatch]):
        now = self._now_ms()
        return [self._watch.add(batch.items, batch.progress, now) for batch in batches], self.RETAIN

    def on_notify(self):
        return [self._watch.advance(self._now_ms())], self.RETAIN

    def on_eof(self):
        return [self._watch.flush()], self.RETAIN

    def notify_at(self) -> datetime | None:
        wake = self._watch.next_wake_ms(self._now_ms())
        return None if wake is None else from_ms(wake)

    def snapshot(self) -> PickledState:
        return PickledState.of(self._watch)


def watch_for(resumed: "PriceWatch | PickledState | None", config: PricingConfig, now_ms: int) -> PriceWatch:
    resumed = restored(resumed)
    if resumed is None:
        return PriceWatch(config.rules)
    resumed.rules = config.rules
    resumed.clock.lateness_ms = config.rules.lateness_ms
    resumed.resume(now_ms)
    return resumed


def pricing_outputs(changes: PriceChanges) -> tuple[list[OutboundMessage], list[RedisWrite]]:
    messages = [OutboundMessage("price-suggestions", s.sku.encode(), dumps(s.to_dict())) for s in changes.suggestions]
    messages.extend(candidate_message(candidate) for candidate in changes.candidates)
    messages.extend(OutboundMessage("metrics", f.sku.encode(), dumps(f.to_dict())) for f in changes.flagged)
    writes: list[RedisWrite] = [ReplaceHash(f"price:{sku}", fields) for sku, fields in changes.views.items()]
    return messages, writes


def build_flow(
    records: Source[InputRecord],
    kafka_sink: Sink[OutboundMessage],
    redis_sink: Sink[RedisWrite],
    config: PricingConfig,
    now_ms: Clock = wall_clock_ms,
) -> Dataflow:
    flow = Dataflow("pricing")
    raw = op.input("records", flow, records)
    batches = op.flat_map_batch("triage", raw, lambda batch: triage_batch(batch, config, now_ms()))
    changes = op.stateful_batch(
        "watch", batches, lambda resumed: marked("pricing", _PricingLogic(watch_for(resumed, config, now_ms()), now_ms),
                                 now_ms=now_ms)
    )
    outputs = op.map("outputs", op.key_rm("unkey", changes), pricing_outputs)
    op.output("kafka", op.flat_map("messages", outputs, lambda out: out[0]), kafka_sink)
    op.output("redis", op.flat_map("writes", outputs, lambda out: out[1]), redis_sink)
    return flow


def flow_from_settings(settings: Settings) -> Dataflow:
    tune_gc_for_long_lived_state()
    return build_flow(
        KafkaInputSource(settings, PRICING_TOPICS),
        KafkaOutputSink(settings),
        RedisSink(settings),
        PricingConfig.from_settings(settings),
    )


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        return flow_from_settings(Settings.from_env())
    raise AttributeError(name)
