"""stock: the live stock ledger per SKU, levels, and stock alert candidates.

Reads `orders` (keyed by user) and `inventory` (keyed by SKU) and re-keys both by
SKU: each order fans out to one line per SKU and pool. SKUs are hashed into a
fixed number of buckets, one ledger per bucket, so the engine sees a handful of
items per input batch instead of one per order line. Every input batch reaches
every bucket with the batch's latest event time, so each bucket's clock follows
the whole stream (watermarks in Bytewax are per key).

Outputs: `stock:{sku}` hashes in Redis (the latest view of every SKU a batch
changed), `stock_level` records on `metrics` for level changes, and
`stock.low` / `stock.out` / `stock.oversell` candidates on `alert-candidates`.
Dead letters are skipped: the intake flow publishes them.

Run it the Bytewax way: `python -m bytewax.run flows.stock:flow -r DIR -s 5 -b 0`.
"""

from __future__ import annotations

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

from operators.clock import Clock, PartitionStatus, Progress, from_ms, wall_clock_ms
from operators.events import InventoryEvent, OrderEvent
from operators.stock import StockChanges, StockLedger, StockLine, StockRules, inventory_line, order_lines
from shopstream.settings import Settings
from state.alert_candidates import candidate_message, marked
from state.inputs import decode_record
from state.kafka import InputRecord, KafkaInputSource, KafkaOutputSink, OutboundMessage
from state.redis_store import RedisSink, RedisWrite, ReplaceHash
from state.serde import dumps
from state.snapshots import PickledState, restored, tune_gc_for_long_lived_state

log = logging.getLogger(__name__)

STOCK_TOPICS = ("orders", "inventory")


@dataclass(frozen=True)
class StockConfig:
    max_event_ahead_ms: int  # events stamped further ahead of the wall clock are skipped (dead letters)
    rules: StockRules = field(default_factory=StockRules)
    buckets: int = 16  # ledger shards: at least the number of workers, few enough to batch well

    @classmethod
    def from_settings(cls, settings: Settings) -> "StockConfig":
        lateness_ms = settings.allowed_lateness_s * 1000
        rules = StockRules(
            lateness_ms=lateness_ms,
            retention_ms=max(settings.stock_retention_s * 1000, lateness_ms),
            default_safety_stock=settings.stock_default_safety_stock,
            urgent_fraction=settings.stock_urgent_percent / 100,
            urgent_minutes=float(settings.stock_urgent_minutes),
            velocity_window_ms=settings.stock_velocity_window_s * 1000,
            velocity_min_units=settings.stock_velocity_min_units,
            replenish_cover_minutes=float(settings.stock_replenish_cover_min),
        )
        return cls(
            max_event_ahead_ms=settings.max_event_ahead_s * 1000,
            rules=rules,
            buckets=max(settings.stock_buckets, settings.total_workers),
        )


class StockBatch(NamedTuple):
    """One input batch's lines for one bucket, and the whole batch's progress."""

    lines: list[StockLine]
    progress: Progress
    bucket: str = "0"  # the ledger shard they are for (its progress markers name it)


def triage_batch(records: list[InputRecord], config: StockConfig, now_ms: int) -> list[tuple[str, StockBatch]]:
    """Decode a batch into stock lines grouped by bucket; every bucket gets an entry."""
    latest_ts_ms = now_ms + config.max_event_ahead_ms
    buckets = config.buckets
    per_bucket: list[list[StockLine]] = [[] for _ in range(buckets)]
    progress = Progress()
    crc32 = zlib.crc32  # not hash(): a SKU must land in the same bucket in every process
    for record in records:
        if type(record) is PartitionStatus:
            progress.report(record)
            continue
        event = decode_record(record, latest_ts_ms)
        if type(event) is OrderEvent:
            lines = order_lines(event)
        elif type(event) is InventoryEvent:
            lines = [inventory_line(event)]
        else:
            continue  # a dead letter (published by intake) or another topic
        progress.saw((record.topic, record.partition), event.ts)
        for line in lines:
            per_bucket[crc32(line.sku.encode()) % buckets].append(line)
    if not progress:
        return []
    return [(str(index), StockBatch(lines, progress, str(index))) for index, lines in enumerate(per_bucket)]


class _StockLogic(StatefulBatchLogic[StockBatch, StockChanges, StockLedger]):
    """Bytewax adapter around the pure `StockLedger`; wall time enters only here."""

    def __init__(self, ledger: StockLedger, now_ms: Clock):
        self._ledger = ledger
        self._now_ms = now_ms

    def on_batch(self, batches: list[StockBatch]):
        now = self._now_ms()
        return [self._ledger.add(batch.lines, batch.progress, now) for batch in batches], self.RETAIN

    def on_notify(self):
        return [self._ledger.advance(self._now_ms())], self.RETAIN

    def on_eof(self):
        # A finite input (a test, a replay from a file) has ended: nothing more is coming.
        return [self._ledger.flush()], self.RETAIN

    def notify_at(self) -> datetime | None:
        wake = self._ledger.next_wake_ms(self._now_ms())
        return None if wake is None else from_ms(wake)

    def snapshot(self) -> PickledState:
        return PickledState.of(self._ledger)


def ledger_for(resumed: "StockLedger | PickledState | None", config: StockConfig, now_ms: int) -> StockLedger:
    """The resumed ledger under the current rules (thresholds may change across restarts)."""
    resumed = restored(resumed)
    if resumed is None:
        return StockLedger(config.rules)
    resumed.rules = config.rules
    resumed.clock.lateness_ms = config.rules.lateness_ms
    resumed.resume(now_ms)
    return resumed


def stock_outputs(changes: StockChanges) -> tuple[list[OutboundMessage], list[RedisWrite]]:
    """Kafka: level changes on `metrics`, candidates on `alert-candidates`. Redis: absolute hashes."""
    messages = [
        OutboundMessage("metrics", change.sku.encode(), dumps(change.to_dict())) for change in changes.level_changes
    ]
    messages.extend(candidate_message(candidate) for candidate in changes.candidates)
    writes: list[RedisWrite] = [ReplaceHash(f"stock:{view.sku}", view.fields()) for view in changes.views]
    return messages, writes


def build_flow(
    records: Source[InputRecord],
    kafka_sink: Sink[OutboundMessage],
    redis_sink: Sink[RedisWrite],
    config: StockConfig,
    now_ms: Clock = wall_clock_ms,
) -> Dataflow:
    flow = Dataflow("stock")
    raw = op.input("records", flow, records)
    # Decoding and the fan-out to SKUs run a whole batch per Python call.
    bucket_batches = op.flat_map_batch("triage", raw, lambda batch: triage_batch(batch, config, now_ms()))
    changes = op.stateful_batch(
        "ledger",
        bucket_batches,
        lambda resumed: marked("stock", _StockLogic(ledger_for(resumed, config, now_ms()), now_ms), config.buckets,
                               shard_of=lambda batch: batch.bucket, now_ms=now_ms),
    )
    outputs = op.map("outputs", op.key_rm("unkey", changes), stock_outputs)
    op.output("kafka", op.flat_map("messages", outputs, lambda out: out[0]), kafka_sink)
    op.output("redis", op.flat_map("writes", outputs, lambda out: out[1]), redis_sink)
    return flow


def flow_from_settings(settings: Settings) -> Dataflow:
    tune_gc_for_long_lived_state()
    return build_flow(
        KafkaInputSource(settings, STOCK_TOPICS),
        KafkaOutputSink(settings),
        RedisSink(settings),
        StockConfig.from_settings(settings),
    )


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run flows.stock:flow` builds the flow from the environment
    # on first access, so importing this module for tests needs no configuration.
    if name == "flow":
        return flow_from_settings(Settings.from_env())
    raise AttributeError(name)
