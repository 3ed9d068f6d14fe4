"""coupons: abandoned-cart coupons pushed to shoppers (issue 5).

Reads `clickstream`, `orders` (both keyed by user) and `inventory`. Shoppers are
hashed into a fixed number of buckets, each with a `CartBook` (open carts and a
deadline heap); every input batch reaches every bucket with the batch's latest event
time per input partition, so deadlines pass on the stream's event time even for
shoppers who send nothing more, and by wall clock when all input is quiet.

Each bucket also keeps its paying shoppers' RFM, so an abandoned cart carries the
shopper's value tier at its deadline (the churn flow's rules, on event time), and a
private stock ledger of every SKU (the stock flow's rules and SHOPSTREAM_STOCK_*
settings), fed every batch's order and inventory lines in the same event-time loop,
so a cart carries the items that are out of stock as of its deadline. The offers
step reads which redeemed codes are our coupons in one Redis round trip, applies the
offer policy, and issues coupons through the shared issuer (cap, fraud flag,
exactly-once `coupon:{id}` and `stream:coupons`). Issued coupons go to the `coupons` topic; back-in-stock notes
to the Redis stream `stream:cart_notes`; per-window recovery counts to `metrics` and
to Redis (`coupons:recovery:latest` and its `:history`, for the dashboard).
Dead letters are skipped: the intake flow publishes them.

The offers step calls the shared `CouponIssuer` itself instead of ending in a
`CouponSink`, because the issuer's verdicts (issued, capped, flagged) feed the
recovery counts. It is as safe as a sink: after a crash the resumed epoch issues
the same coupons again, the issuer answers `duplicate`, and that counts as issued.

Run it the Bytewax way: `python -m bytewax.run flows.coupons:flow -r DIR -s 5 -b 0`.
"""

from __future__ import annotations

import logging
import pickle
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from flows.stock import StockConfig
from operators.carts import (
    CLICK_KINDS, ORDER_CREATED, ORDER_PAID, ORDER_REFUNDED, AbandonedCart, CartBook, CartEvent, CartOutput, CartRules,
)
from operators.clock import Clock, PartitionStatus, Progress, from_ms, wall_clock_ms
from operators.coupon_policy import CouponPolicy, Note, PolicyError, load_policy
from operators.coupon_recovery import BucketClock, DecisionFact, RecoveryFact, RecoveryWindows, RedemptionFact
from operators.coupons import Coupon
from operators.events import ClickEvent, InvalidEvent, InventoryEvent, OrderEvent
from operators.stock import StockLine, inventory_line, order_lines
from shopstream.rfm_settings import rfm_rules_from_settings
from shopstream.settings import ConfigError, Settings
from state.cart_offers import OfferPorts, RedisOfferPorts
from state.coupons import DUPLICATE, ISSUED, TOPIC as COUPONS_TOPIC
from state.kafka import InputRecord, KafkaInputSource, KafkaOutputSink, OutboundMessage
from state.redis_store import AddToHistory, RedisSink, RedisWrite, SetLatest, StreamAddOnce
from state.serde import decode_event, dumps
from state.snapshots import PickledState, restored, tune_gc_for_long_lived_state

log = logging.getLogger(__name__)

COUPON_TOPICS = ("clickstream", "orders", "inventory")
NOTES_STREAM = "stream:cart_notes"
_ORDER_KINDS = {"created": (1, ORDER_CREATED), "paid": (2, ORDER_PAID), "refunded": (3, ORDER_REFUNDED)}


@dataclass(frozen=True)
class CouponsConfig:
    max_event_ahead_ms: int  # events stamped further ahead of the wall clock are skipped (dead letters)
    policy: CouponPolicy
    rules: CartRules = field(default_factory=CartRules)
    buckets: int = 16  # cart shards: at least the number of workers, few enough to batch well
    note_ttl_s: int = 604_800  # how long a note's dedupe key lives (must outlive the longest replay)

    @classmethod
    def from_settings(cls, settings: Settings) -> "CouponsConfig":
        try:
            policy = load_policy(settings.coupon_policy or None)
        except PolicyError as err:
            raise ConfigError(f"SHOPSTREAM_COUPON_POLICY ({settings.coupon_policy}): {err}") from None
        rules = CartRules(
            abandon_after_ms=settings.coupon_abandon_after_s * 1000,
            lateness_ms=settings.coupon_lateness_ms,
            report_every_ms=settings.coupon_metrics_window_s * 1000,
            rfm=rfm_rules_from_settings(settings),
            stock=StockConfig.from_settings(settings).rules,
        )
        return cls(
            max_event_ahead_ms=settings.max_event_ahead_s * 1000,
            policy=policy,
            rules=rules,
            buckets=max(settings.coupon_buckets, settings.total_workers),
            note_ttl_s=settings.coupon_dedupe_ttl_s,
        )


class CartBatch(NamedTuple):
    """One input batch's cart events for one bucket, the whole batch's stock lines (every
    bucket keeps every SKU's ledger), and the whole batch's progress."""

    events: list[CartEvent]
    stock_lines: list[StockLine]
    progress: Progress


_new_cart_event = tuple.__new__  # CartEvent(...) through NamedTuple's __new__ costs twice as much per click


def cart_event(event: ClickEvent | OrderEvent) -> CartEvent | None:
    if type(event) is ClickEvent:
        return _new_cart_event(CartEvent, (event.ts, 0, event.event_id, event.user_id, CLICK_KINDS[event.type],
                                           event.sku, event.category, event.price, event.quantity, None, None))
    rank_kind = _ORDER_KINDS.get(event.status)
    if rank_kind is None:
        return None  # a cancelled order is neither the shopper acting nor value
    rank, kind = rank_kind
    return CartEvent(event.ts, rank, event.event_id, event.user_id, kind, price=event.amount,
                     coupon_code=event.coupon_code, order_id=event.order_id)


def triage_batch(records: list[InputRecord], config: CouponsConfig, now_ms: int) -> list[tuple[str, CartBatch]]:
    """Decode a batch into cart events grouped by bucket, and the stock lines of its orders
    and inventory events for every bucket; every bucket gets an entry.

    Unusable records are skipped (the intake flow dead-letters them): the same check
    as `state.inputs.decode_record`, without building the dead letter."""
    latest_ts_ms = now_ms + config.max_event_ahead_ms
    buckets = config.buckets
    per_bucket: list[list[CartEvent]] = [[] for _ in range(buckets)]
    stock_lines: list[StockLine] = []  # one list shared by every bucket's batch: they only read it
    progress = Progress()
    crc32 = zlib.crc32  # not hash(): a shopper must land in the same bucket in every process
    for record in records:
        if type(record) is PartitionStatus:
            progress.report(record)
            continue
        try:
            event = decode_event(record.topic, record.value)
        except InvalidEvent:
            continue
        event_type = type(event)
        if (event_type is not ClickEvent and event_type is not OrderEvent and event_type is not InventoryEvent) \
                or event.ts > latest_ts_ms:
            continue  # another topic, or stamped too far ahead (a dead letter for intake)
        progress.saw((record.topic, record.partition), event.ts)
        if event_type is InventoryEvent:
            stock_lines.append(inventory_line(event))
            continue
        if event_type is OrderEvent:
            stock_lines.extend(order_lines(event))
        item = cart_event(event)
        if item is not None:
            per_bucket[crc32(item.user_id.encode()) % buckets].append(item)
    if not progress:
        return []
    return [(str(index), CartBatch(events, stock_lines, progress)) for index, events in enumerate(per_bucket)]


class _CartLogic(StatefulBatchLogic[CartBatch, CartOutput, CartBook]):
    """Bytewax adapter around the pure `CartBook`; wall time enters only here."""

    def __init__(self, book: CartBook, now_ms: Clock):
        self._book = book
        self._now_ms = now_ms

    def on_batch(self, batches: list[CartBatch]):
        now = self._now_ms()
        outputs = [self._book.add(batch.events, batch.progress, now, batch.stock_lines) for batch in batches]
        return [out for out in outputs if out.watermark is not None], self.RETAIN

    def on_notify(self):
        out = self._book.advance(self._now_ms())
        return ([out] if out.watermark is not None else []), self.RETAIN

    def notify_at(self) -> datetime | None:
        wake = self._book.next_wake_ms(self._now_ms())
        return None if wake is None else from_ms(wake)

    def snapshot(self) -> PickledState:
        return PickledState.of(self._book)


def book_for(resumed: CartBook | PickledState | None, config: CouponsConfig, now_ms: int) -> CartBook:
    resumed = restored(resumed)
    if resumed is None:
        return CartBook(config.rules)
    resumed.configure(config.rules, now_ms)
    return resumed


class OfferResults(NamedTuple):
    messages: list[OutboundMessage]
    writes: list[RedisWrite]
    facts: list[RecoveryFact]


def make_offers(outputs: list[tuple[str, CartOutput]], ports: OfferPorts, config: CouponsConfig) -> OfferResults:
    """Decide and issue the offers for a batch of abandoned carts: one lookup and one issue round trip.
    Each cart carries its tier and out-of-stock items as of its deadline (the book's)."""
    carts: list[AbandonedCart] = [cart for _, out in outputs for cart in out.abandoned]
    codes = sorted({r.coupon_code for _, out in outputs for r in out.redemptions})
    our_coupons = ports.our_coupons(codes)
    decisions = [config.policy.decide(cart, cart.tier, cart.out_of_stock) for cart in carts]
    coupons = [d for d in decisions if type(d) is Coupon]
    outcomes = iter(ports.issue(coupons))
    messages: list[OutboundMessage] = []
    writes: list[RedisWrite] = []
    verdicts: dict[str, str] = {}  # trigger_id -> outcome, for this batch's facts
    for decision in decisions:
        if type(decision) is Coupon:
            outcome = next(outcomes)
            if outcome in (ISSUED, DUPLICATE):
                # A duplicate was issued before (a replay): Kafka gets it again, same id.
                messages.append(OutboundMessage(COUPONS_TOPIC, decision.coupon_id.encode(),
                                                dumps(decision.to_dict())))
                outcome = ISSUED
            verdicts[decision.trigger_id] = outcome
        elif type(decision) is Note:
            writes.append(StreamAddOnce(dedupe_key=f"cart_note:{decision.note_id}", stream=NOTES_STREAM,
                                        fields={"note_id": decision.note_id, "user_id": decision.user_id,
                                                "note": dumps(decision.to_dict()).decode()},
                                        dedupe_ttl_s=config.note_ttl_s))
            verdicts[decision.trigger_id] = "note"
    facts: list[RecoveryFact] = []
    for bucket, out in outputs:
        for cart in out.abandoned:
            facts.append(DecisionFact(cart.ts, verdicts.get(cart.trigger_id, "no_offer")))
        for redemption in out.redemptions:
            if redemption.coupon_code in our_coupons:
                facts.append(RedemptionFact(redemption.ts, redemption.coupon_code, redemption.amount))
        facts.append(BucketClock(bucket, out.watermark))
    return OfferResults(messages, writes, facts)


class _RecoveryLogic(StatefulBatchLogic[list, dict, RecoveryWindows]):
    def __init__(self, windows: RecoveryWindows):
        self._windows = windows

    def on_batch(self, fact_lists: list[list[RecoveryFact]]):
        return [m for facts in fact_lists for m in self._windows.add(facts)], self.RETAIN

    def snapshot(self) -> RecoveryWindows:
        return pickle.loads(pickle.dumps(self._windows))


def windows_for(resumed: RecoveryWindows | None, config: CouponsConfig) -> RecoveryWindows:
    if resumed is not None and resumed.window_ms == config.rules.report_every_ms:
        resumed.buckets = config.buckets
        # Buckets that no longer exist would hold every window open forever.
        resumed.marks = {bucket: mark for bucket, mark in resumed.marks.items() if int(bucket) < config.buckets}
        return resumed
    return RecoveryWindows(config.rules.report_every_ms, config.buckets)


RECOVERY_KEY = "coupons:recovery:latest"
RECOVERY_HISTORY = 168  # windows kept in `coupons:recovery:latest:history` (a week of hourly windows)


def recovery_writes(window: dict) -> list[RedisWrite]:
    """A recovery window for the dashboard: the latest window and a capped history, like
    the KPI series (one member per window start, so a replay writes the same)."""
    payload = dumps(window)
    return [SetLatest(RECOVERY_KEY, window["window_end"], payload),
            AddToHistory(f"{RECOVERY_KEY}:history", window["window_start"], payload, RECOVERY_HISTORY)]


def build_flow(
    records: Source[InputRecord],
    kafka_sink: Sink[OutboundMessage],
    redis_sink: Sink[RedisWrite],
    ports: OfferPorts,
    config: CouponsConfig,
    now_ms: Clock = wall_clock_ms,
) -> Dataflow:
    flow = Dataflow("coupons")
    raw = op.input("records", flow, records)
    # Decoding and the fan-out to buckets run a whole batch per Python call.
    bucket_batches = op.flat_map_batch("triage", raw, lambda batch: triage_batch(batch, config, now_ms()))
    carts = op.stateful_batch(
        "carts", bucket_batches, lambda resumed: _CartLogic(book_for(resumed, config, now_ms()), now_ms)
    )
    # Offers for every bucket of a batch in one lookup and one issue round trip.
    results = op.flat_map_batch("offers", carts, lambda outputs: [make_offers(outputs, ports, config)])
    recovery = op.stateful_batch(
        "recovery",
        op.map("facts", results, lambda r: ("recovery", r.facts)),
        lambda resumed: _RecoveryLogic(windows_for(resumed, config)),
    )
    recovery_windows = op.key_rm("unkey", recovery)
    metrics = op.map(
        "metric_msg", recovery_windows, lambda m: OutboundMessage("metrics", m["metric_id"].encode(), dumps(m)),
    )
    kafka_out = op.merge("kafka_out", op.flat_map("coupon_msgs", results, lambda r: r.messages), metrics)
    op.output("kafka", kafka_out, kafka_sink)
    redis_out = op.merge("redis_out", op.flat_map("note_writes", results, lambda r: r.writes),
                         op.flat_map("recovery_writes", recovery_windows, recovery_writes))
    op.output("redis", redis_out, redis_sink)
    return flow


def flow_from_settings(settings: Settings) -> Dataflow:

    tune_gc_for_long_lived_state()  # the same trade-off: many long-lived carts, short-lived messages
    return build_flow(
        KafkaInputSource(settings, COUPON_TOPICS),
        KafkaOutputSink(settings),
        RedisSink(settings),
        RedisOfferPorts(settings),
        CouponsConfig.from_settings(settings),
    )


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run flows.coupons:flow` builds the flow from the environment
    # on first access, so importing this module for tests needs no configuration.
    if name == "flow":
        return flow_from_settings(Settings.from_env())
    raise AttributeError(name)
