"""churn: customer value tiers (RFM), churn risk and win-back offers.

Reads `orders`, `clickstream` and `traffic-flags` (brushing flags take their orders back out
of the RFM values, see `_flag_record`), all keyed by user or flag. Customers are hashed into a fixed
number of buckets, one `ChurnBook` per bucket (customers, timers, its own river
model); every input batch reaches every bucket with the batch's latest event time
per input partition, so each bucket's clock, and with it the timers of quiet
customers, follows the whole stream (watermarks in Bytewax are per key). The
bucket count fixes which model scores a customer: keep it when replaying, or the
scores differ.

Outputs: `churn:{user_id}` hashes in Redis (latest view of each customer a batch
scored), `churn-scores` records on band or tier changes (Kafka key `user_id`),
and `churn_winback` coupons through the shared coupon issuer. Dead letters are
skipped: the intake flow publishes them.

Each bucket warm-starts from the latest `churn` model checkpoint
(`shopstream churn train`) when it has no recovered state.

Run it the Bytewax way: `python -m bytewax.run flows.churn:flow -r DIR -s 5 -b 0`.
"""

from __future__ import annotations

import copy
import logging
import zlib
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Iterable, NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from operators.churn import (
    CART_ADD,
    CLICK,
    PAID,
    REFUNDED,
    ChurnBook,
    ChurnChanges,
    ChurnInput,
    ChurnRules,
    WinbackOffer,
    learn_from_history,
)
from operators.churn_model import ChurnModel, ModelRules
from operators.clock import Clock, PartitionStatus, Progress, from_ms, wall_clock_ms
from operators.coupons import KINDS, TIERS, Coupon
from operators.events import (
    MAX_TS_MS,
    ClickEvent,
    InvalidEvent,
    OrderEvent,
    click_values_fast,
    event_time,
    order_values_fast,
    parse_event,
)
from operators.rfm import DAY_MS
from shopstream.rfm_settings import number_list, rfm_rules_from_settings
from shopstream.settings import ConfigError, Settings
from state.coupons import CouponSink
from state.kafka import InputRecord, KafkaInputSource, KafkaOutputSink, OutboundMessage
from state.model_checkpoints import ModelStore
from state.redis_store import RedisSink, RedisWrite, ReplaceHash
from state.serde import JSONDecodeError, dumps, loads
from state.snapshots import PickledState, collector_paused, restored, tune_gc_for_long_lived_state

log = logging.getLogger(__name__)

# traffic-flags: a brushing flag takes its order's value back out of the customer's RFM
# (as a refund at the order's paid time), so fake orders never lift a tier (issue 22).
CHURN_TOPICS = ("orders", "clickstream", "traffic-flags")
MODEL_NAME = "churn"


# -- configuration -------------------------------------------------------------------------


def parse_winback(text: str) -> dict[str, WinbackOffer]:
    """`tier:kind:value:min_spend:valid_days,...`; min_spend 0 = none. Empty: no win-backs."""
    env = "SHOPSTREAM_CHURN_WINBACK"
    offers: dict[str, WinbackOffer] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        parts = entry.split(":")
        if len(parts) != 5:
            raise ConfigError(f"{env} entries look like gold:amount_off:50:300:14, got {entry!r}")
        tier, kind, value, min_spend, days = parts
        if tier not in TIERS or tier == "new":
            raise ConfigError(f"{env}: tier must be one of {', '.join(TIERS[:-1])}, got {tier!r}")
        if kind not in KINDS:
            raise ConfigError(f"{env}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        try:
            offer = WinbackOffer(kind, float(value), float(min_spend) or None, int(days) * DAY_MS)
        except ValueError:
            raise ConfigError(f"{env}: value, min_spend and days must be numbers in {entry!r}") from None
        if offer.valid_ms <= 0 or offer.value < 0 or (kind == "percent_off" and not 0 < offer.value < 100):
            raise ConfigError(f"{env}: {entry!r} needs valid days > 0 and a value in range for {kind}")
        offers[tier] = offer
    return offers


@dataclass(frozen=True)
class ChurnConfig:
    max_event_ahead_ms: int
    rules: ChurnRules
    model_rules: ModelRules
    buckets: int = 8
    model_dir: str | None = None  # warm start from the latest checkpoint here

    @classmethod
    def from_settings(cls, settings: Settings) -> "ChurnConfig":
        s = settings
        bands = number_list("SHOPSTREAM_CHURN_RISK_BANDS", s.churn_risk_bands, float, 2)
        (rate,) = number_list("SHOPSTREAM_CHURN_LEARNING_RATE", s.churn_learning_rate, float, 1)
        rfm = rfm_rules_from_settings(s)
        try:
            model_rules = ModelRules(learning_rate=rate, batch_size=s.churn_learn_batch,
                                     max_wait_ms=s.churn_learn_wait_days * DAY_MS, medium_at=bands[0], high_at=bands[1],
                                     horizon_ms=s.churn_horizon_ms)
        except ValueError as err:
            raise ConfigError(f"SHOPSTREAM_CHURN_RISK_BANDS / SHOPSTREAM_CHURN_LEARNING_RATE: {err}") from None
        rules = ChurnRules(
            rfm=rfm,
            horizon_ms=s.churn_horizon_ms,
            rescore_ms=s.churn_rescore_ms,
            label_period_ms=s.churn_label_period_days * DAY_MS,
            lateness_ms=s.allowed_lateness_s * 1000,
            winback_offers=parse_winback(s.churn_winback),
            currency=s.churn_currency or None,
            emit_features=bool(s.churn_emit_features),
        )
        return cls(
            max_event_ahead_ms=s.max_event_ahead_s * 1000,
            rules=rules,
            model_rules=model_rules,
            buckets=max(s.churn_buckets, s.total_workers),
            model_dir=str(s.churn_model_dir),
        )


# -- the dataflow --------------------------------------------------------------------------


class ChurnBatch(NamedTuple):
    """One input batch's events for one bucket, and the whole batch's progress."""

    inputs: list[ChurnInput]
    progress: Progress


def churn_input(event: OrderEvent | ClickEvent) -> ChurnInput | None:
    """The RFM-relevant part of an event; None for events that change nothing (created, cancelled)."""
    if type(event) is OrderEvent:
        return _order_input(event.status, event.ts, event.user_id, event.order_id, event.amount, event.event_id)
    return _click_input(event.type, event.ts, event.user_id, event.session_id, event.event_id)


def _order_input(status: str, ts: int, user_id: str, order_id: str, amount: float, event_id: str) -> ChurnInput | None:
    if status == "paid":
        return ChurnInput(ts, PAID, user_id, order_id, amount, event_id)
    if status == "refunded":
        return ChurnInput(ts, REFUNDED, user_id, order_id, amount, event_id)
    return None


def _click_input(click_type: str, ts: int, user_id: str, session_id: str, event_id: str) -> ChurnInput:
    return ChurnInput(ts, CART_ADD if click_type == "add_to_cart" else CLICK, user_id, session_id, 0.0, event_id)


_IGNORED_STATUSES = frozenset(("created", "cancelled"))  # half of all order events: they change no RFM value


def churn_record(record: InputRecord, latest_ts_ms: int) -> tuple[int, ChurnInput | None] | None:
    """(event time, churn input) of one record, the input None when the event changes no
    customer; None for a record that is not a valid event (a dead letter: intake publishes it).

    Every order and click of years of history passes here, so the common shapes are read
    as values (`order_values_fast`, `click_values_fast`) without building the records,
    and an order `created` or `cancelled` is not validated beyond its event time (it
    moves the stream's clock, nothing else; half the order events of a history are these)."""
    if record.value is None:
        return None
    try:
        obj = loads(record.value)  # refuses nesting that would crash orjson's parser
    except JSONDecodeError:
        return None
    topic = record.topic
    if topic == "traffic-flags":
        return _flag_record(obj, latest_ts_ms)
    if topic == "orders":
        status = obj.get("status") if type(obj) is dict else None
        if type(status) is str and status in _IGNORED_STATUSES:
            ts = obj.get("ts")
            if type(ts) is not int or not 0 <= ts <= MAX_TS_MS:
                try:
                    ts = event_time(obj)  # the checked reader's rule (a whole-number float is fine)
                except InvalidEvent:
                    return None
            return (ts, None) if ts <= latest_ts_ms else None
        values = order_values_fast(obj)
        if values is not None:
            event_id, ts, order_id, user_id, status, _, amount = values[:7]
            return None if ts > latest_ts_ms else (ts, _order_input(status, ts, user_id, order_id, amount, event_id))
    elif topic == "clickstream":
        values = click_values_fast(obj)
        if values is not None:
            event_id, ts, user_id, session_id, click_type = values[:5]
            return None if ts > latest_ts_ms else (ts, _click_input(click_type, ts, user_id, session_id, event_id))
    try:  # an uncommon shape: the checked reader decides
        event = parse_event(topic, obj)
    except InvalidEvent:
        return None
    if (type(event) is not OrderEvent and type(event) is not ClickEvent) or event.ts > latest_ts_ms:
        return None
    return event.ts, churn_input(event)


def _flag_record(obj, latest_ts_ms: int) -> tuple[int, ChurnInput | None] | None:
    """A `traffic-flags` message: a flagged paid order (`amount` set) is taken back like a
    refund at the time it was paid; other flags only move the clock."""
    if type(obj) is not dict:
        return None
    ts = obj.get("ts")
    if type(ts) is not int or not 0 <= ts <= min(MAX_TS_MS, latest_ts_ms):
        return None
    amount, order_id, user_id, flag_id = obj.get("amount"), obj.get("order_id"), obj.get("user_id"), obj.get("flag_id")
    if (obj.get("kind") != "brushing" or type(amount) not in (int, float) or not 0 <= amount < 1e12
            or type(order_id) is not str or type(user_id) is not str or type(flag_id) is not str):
        return ts, None
    return ts, ChurnInput(ts, REFUNDED, user_id, order_id, float(amount), flag_id)


def triage_batch(records: list[InputRecord], config: ChurnConfig, now_ms: int) -> list[tuple[str, ChurnBatch]]:
    """Decode a batch into churn inputs grouped by bucket; every bucket gets an entry."""
    latest_ts_ms = now_ms + config.max_event_ahead_ms
    buckets = config.buckets
    per_bucket: list[list[ChurnInput]] = [[] for _ in range(buckets)]
    progress = Progress()
    crc32 = zlib.crc32  # not hash(): a customer must land in the same bucket in every process
    for record in records:
        if type(record) is PartitionStatus:
            progress.report(record)
            continue
        decoded = churn_record(record, latest_ts_ms)
        if decoded is None:
            continue
        ts, item = decoded
        progress.saw((record.topic, record.partition), ts)
        if item is not None:
            per_bucket[crc32(item.user_id.encode()) % buckets].append(item)
    if not progress:
        return []
    return [(str(index), ChurnBatch(inputs, progress)) for index, inputs in enumerate(per_bucket)]


class _ChurnLogic(StatefulBatchLogic[ChurnBatch, ChurnChanges, ChurnBook]):
    """Bytewax adapter around the pure `ChurnBook`; wall time enters only here."""

    def __init__(self, book: ChurnBook, now_ms: Clock):
        self._book = book
        self._now_ms = now_ms

    def on_batch(self, batches: list[ChurnBatch]):
        now = self._now_ms()
        return [self._book.add(batch.inputs, batch.progress, now) for batch in batches], self.RETAIN

    def on_notify(self):
        return [self._book.advance(self._now_ms())], self.RETAIN

    def on_eof(self):
        # A finite input (a test, a replay from a file) has ended: nothing more is coming.
        return [self._book.flush()], self.RETAIN

    def notify_at(self) -> datetime | None:
        wake = self._book.next_wake_wall_ms(self._now_ms())
        return None if wake is None else from_ms(wake)

    def snapshot(self) -> PickledState:
        return PickledState.of(self._book)


def new_model(config: ChurnConfig) -> ChurnModel:
    """The latest compatible checkpoint (pre-trained on history), else a cold model."""
    feature_names = config.rules.rfm.feature_names
    if config.model_dir:
        checkpoint = ModelStore(config.model_dir).load(MODEL_NAME)
        if checkpoint is not None and isinstance(checkpoint.model, ChurnModel):
            if checkpoint.model.compatible_with(feature_names):
                model = copy.deepcopy(checkpoint.model)
                model.rules = config.model_rules
                log.info("churn model warm-started from checkpoint v%d", checkpoint.version)
                return model
            log.warning("churn checkpoint v%d was built for other features or an older model layout; starting cold",
                        checkpoint.version)
    return ChurnModel(feature_names, config.model_rules)


def book_for(resumed: "ChurnBook | PickledState | None", config: ChurnConfig, now_ms: int) -> ChurnBook:
    """The resumed book under the current rules, or a new one with a warm-started model."""
    resumed = restored(resumed)
    if resumed is None:
        return ChurnBook(config.rules, new_model(config))
    resumed.__dict__.setdefault("scoring", True)  # a book snapshotted before pre-training existed
    if not resumed.model.compatible_with(config.rules.rfm.feature_names):
        # A model of the older layout (learning one label at a time) cannot go on learning:
        # the customers, their pending labels and the clock resume, the model restarts.
        log.warning("recovered churn model has an older layout; starting from the latest checkpoint, or cold")
        resumed.model = new_model(config)
    resumed.rules = config.rules
    resumed.model.rules = config.model_rules
    resumed.clock.lateness_ms = config.rules.lateness_ms
    resumed.resume(now_ms)
    return resumed


def churn_outputs(changes: ChurnChanges) -> tuple[list[OutboundMessage], list[RedisWrite], list[Coupon]]:
    messages = [
        OutboundMessage("churn-scores", score.user_id.encode(), dumps(score.to_dict())) for score in changes.scores
    ]
    writes: list[RedisWrite] = [ReplaceHash(f"churn:{user_id}", view) for user_id, view in changes.views.items()]
    return messages, writes, changes.coupons


def replay_history(records: Iterable[InputRecord], config: ChurnConfig, model: ChurnModel | None = None,
                   learning: bool = True, batch_size: int = 5_000, now_ms: int | None = None) -> ChurnBook:
    """Replay recorded `orders`/`clickstream` history through one book, the flow's logic
    without the engine (benchmarks, evaluation). With one bucket, every label teaches
    the same model."""
    one_bucket = replace(config, buckets=1)
    book = ChurnBook(config.rules, model or ChurnModel(config.rules.rfm.feature_names, config.model_rules),
                     learning=learning)
    now = wall_clock_ms() if now_ms is None else now_ms
    batch: list[InputRecord] = []

    def feed() -> None:
        for _, bucket_batch in triage_batch(batch, one_bucket, now):
            book.add(bucket_batch.inputs, bucket_batch.progress, now)
        batch.clear()

    for record in records:
        batch.append(record)
        if len(batch) >= batch_size:
            feed()
    feed()
    book.flush()
    return book


class Pretraining(NamedTuple):
    model: ChurnModel
    customers: int
    last_event_ts: int | None
    first_event_ts: int | None = None


def pretrain(records: Iterable[InputRecord], config: ChurnConfig, model: ChurnModel | None = None,
             now_ms: int | None = None) -> Pretraining:
    """Teach a model the labels of recorded history (sorted by event time): exactly the
    model `replay_history` would teach, several times faster (`learn_from_history`);
    every waiting label is learned at the end."""
    model = model or ChurnModel(config.rules.rfm.feature_names, config.model_rules)
    latest_ts_ms = (wall_clock_ms() if now_ms is None else now_ms) + config.max_event_ahead_ms
    inputs: list[ChurnInput] = []
    first_ts = last_ts = None
    with collector_paused():
        for record in records:
            decoded = churn_record(record, latest_ts_ms)
            if decoded is None:
                continue
            ts, item = decoded
            last_ts = ts if last_ts is None or ts > last_ts else last_ts
            first_ts = ts if first_ts is None or ts < first_ts else first_ts
            if item is not None:
                inputs.append(item)
        customers = 0 if last_ts is None else learn_from_history(config.rules, model, inputs, last_ts)
        model.learn_waiting()
    return Pretraining(model, customers, last_ts, first_ts)


def build_flow(
    records: Source[InputRecord],
    kafka_sink: Sink[OutboundMessage],
    redis_sink: Sink[RedisWrite],
    coupon_sink: Sink[Coupon],
    config: ChurnConfig,
    now_ms: Clock = wall_clock_ms,
) -> Dataflow:
    flow = Dataflow("churn")
    raw = op.input("records", flow, records)
    bucket_batches = op.flat_map_batch("triage", raw, lambda batch: triage_batch(batch, config, now_ms()))
    changes = op.stateful_batch(
        "book", bucket_batches, lambda resumed: _ChurnLogic(book_for(resumed, config, now_ms()), now_ms)
    )
    outputs = op.map("outputs", op.key_rm("unkey", changes), churn_outputs)
    op.output("kafka", op.flat_map("messages", outputs, lambda out: out[0]), kafka_sink)
    op.output("redis", op.flat_map("writes", outputs, lambda out: out[1]), redis_sink)
    op.output("coupons", op.flat_map("offers", outputs, lambda out: out[2]), coupon_sink)
    return flow


def flow_from_settings(settings: Settings) -> Dataflow:
    config = ChurnConfig.from_settings(settings)  # bad configuration fails here, before any input
    tune_gc_for_long_lived_state()
    return build_flow(
        KafkaInputSource(settings, CHURN_TOPICS),
        KafkaOutputSink(settings),
        RedisSink(settings),
        CouponSink(settings),
        config,
    )


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run flows.churn:flow` builds the flow from the environment
    # on first access, so importing this module for tests needs no configuration.
    if name == "flow":
        return flow_from_settings(Settings.from_env())
    raise AttributeError(name)
