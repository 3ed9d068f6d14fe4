"""fraud: a decision for every `requested` payment, inline with the payment service.

Reads `payments` only (requests, outcomes and chargebacks; orders add nothing the
payment does not carry), so the process stays lean: heavy clickstream work runs
in other processes and cannot delay a decision. The whole input batch goes to one
engine (`operators.fraud_engine`): velocity per device, IP and card crosses users,
and the river model has one owner.

Outputs, per batch:
- Redis: `fraud:decision:{payment_id}` (JSON, TTL 24 h) and a push to
  `fraud:ready:{payment_id}` (TTL 60 s), both in one "decide once" Lua script:
  a replay after a crash never pushes twice nor changes a decision given;
  `fraud:flagged:{user_id}` for the coupon flows when a payment is blocked or a
  chargeback arrives.
- Kafka: `fraud-decisions`, `fraud` window metrics on `metrics`, `fraud.spike`
  candidates on `alert-candidates`.
- Model checkpoints in SHOPSTREAM_FRAUD_MODEL_DIR (the latest one warm-starts a
  flow that has no recovery state yet).

Dead letters are skipped: the intake flow publishes them.
Run it the Bytewax way: `python -m bytewax.run flows.fraud:flow -r DIR -s 5 -b 0`.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from operators.clock import Clock, PartitionStatus, Progress, from_ms, wall_clock_ms
from operators.events import PaymentEvent
from operators.fraud_engine import FraudConfig, FraudEngine, FraudOutputs, ModelBundle, ModelCheckpoint
from operators.fraud_features import DAY_MS
from operators.fraud_rules import FraudRules
from operators.pseudonym import Pseudonymizer
from shopstream.settings import ConfigError, Settings
from state.alert_candidates import candidate_message, marked
from state.inputs import decode_record
from state.kafka import InputRecord, KafkaInputSource, KafkaOutputSink, OutboundMessage
from state.model_checkpoints import CheckpointSink, ModelStore
from state.redis_store import DecideOnce, RedisSink, RedisWrite, SetIfLater
from state.serde import dumps
from state.snapshots import PickledState, restored, tune_gc_for_long_lived_state

log = logging.getLogger(__name__)

MODEL_NAME = "fraud"  # checkpoints live in SHOPSTREAM_FRAUD_MODEL_DIR/fraud/
FRAUD_TOPICS = ("payments",)
DECISION_TTL_S = 24 * 3600  # CONTRACT: fraud:decision TTL 24 h
READY_TTL_S = 60  # CONTRACT: fraud:ready TTL 60 s

# A decision waits in no queue: the broker answers a fetch as soon as one message is
# there. The sink flushes every batch (which sends at once, whatever linger.ms says),
# so a small linger only lets a batch's messages share requests.
LOW_LATENCY_CONSUMER = {"fetch.wait.max.ms": 5, "fetch.min.bytes": 1}
LOW_LATENCY_PRODUCER = {"linger.ms": 2}


@dataclass(frozen=True)
class FraudFlowConfig:
    engine: FraudConfig
    pseudonym_key: str
    max_event_ahead_ms: int
    flag_ttl_s: int


def fraud_config(settings: Settings) -> FraudConfig:
    return FraudConfig(
        rules=FraudRules(card_test_cards=settings.fraud_card_test_cards,
                         card_test_attempts=settings.fraud_card_test_attempts),
        label_horizon_ms=settings.fraud_label_horizon_ms,
        block_good_rate=settings.fraud_block_good_bp / 10_000,
        review_good_rate=settings.fraud_review_good_bp / 10_000,
        history_ms=settings.fraud_history_days * DAY_MS,
        checkpoint_interval_ms=settings.fraud_checkpoint_interval_s * 1000,
        metrics_window_ms=settings.fraud_metrics_window_s * 1000,
        lateness_ms=settings.allowed_lateness_s * 1000,
        spike_factor=float(settings.fraud_spike_factor),
        spike_min_blocks=settings.fraud_spike_min_blocks,
    )


def pseudonym_key(settings: Settings) -> str:
    """SHOPSTREAM_PSEUDONYM_KEY; if unset, a random key kept next to the model
    checkpoints, so pseudonyms stay stable across restarts on this machine."""
    if settings.pseudonym_key:
        return settings.pseudonym_key
    path = Path(settings.fraud_model_dir) / "pseudonym.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
        log.warning("SHOPSTREAM_PSEUDONYM_KEY is not set: generated a pseudonym key in %s", path)
    return path.read_text().strip()


class PaymentBatch(NamedTuple):
    payments: list[PaymentEvent]
    progress: Progress  # the metric windows close on the stream clock (`operators.clock`)


def decode_batch(records: list[InputRecord], max_event_ahead_ms: int, now_ms: int) -> list[tuple[str, PaymentBatch]]:
    latest_ts_ms = now_ms + max_event_ahead_ms
    payments = []
    progress = Progress()
    for record in records:
        if type(record) is PartitionStatus:
            progress.report(record)
            continue
        event = decode_record(record, latest_ts_ms)
        if type(event) is PaymentEvent:
            payments.append(event)
            progress.saw((record.topic, record.partition), event.ts)
    return [("fraud", PaymentBatch(payments, progress))] if progress else []


class _FraudLogic(StatefulBatchLogic[PaymentBatch, FraudOutputs, FraudEngine]):
    """Bytewax adapter around the pure `FraudEngine`; wall time enters only here."""

    def __init__(self, engine: FraudEngine, now_ms: Clock):
        self._engine = engine
        self._now_ms = now_ms

    def on_batch(self, batches: list[PaymentBatch]):
        now = self._now_ms()
        return [self._engine.process(batch.payments, now, batch.progress) for batch in batches], self.RETAIN

    def on_notify(self):
        return [self._engine.advance(self._now_ms())], self.RETAIN

    def notify_at(self) -> datetime | None:
        wake = self._engine.next_wake_ms(self._now_ms())
        return None if wake is None else from_ms(wake)

    def snapshot(self) -> PickledState:
        return PickledState.of(self._engine)


def engine_for(resumed: "FraudEngine | PickledState | None", config: FraudFlowConfig, warm_start: ModelBundle | None,
               now_ms: int) -> FraudEngine:
    """The resumed engine under the current settings, else a new one from the latest checkpoint."""
    pseudonym = Pseudonymizer(config.pseudonym_key)
    resumed = restored(resumed)
    if resumed is None:
        return FraudEngine(config.engine, pseudonym, warm_start)
    resumed.configure(config.engine, pseudonym)
    resumed.clock.resume(now_ms)
    return resumed


def fraud_outputs(out: FraudOutputs, flag_ttl_s: int) -> tuple[list[RedisWrite], list[OutboundMessage]]:
    writes: list[RedisWrite] = []
    messages: list[OutboundMessage] = []
    entries = []
    for decision in out.decisions:
        value = dumps(decision.to_dict())
        entries.append((f"fraud:decision:{decision.payment_id}", f"fraud:ready:{decision.payment_id}", value))
        messages.append(OutboundMessage("fraud-decisions", decision.payment_id.encode(), value))
    if entries:
        writes.append(DecideOnce(tuple(entries), DECISION_TTL_S, READY_TTL_S))
    for flag in out.flags:
        writes.append(SetIfLater(f"fraud:flagged:{flag.user_id}", dumps({"reason": flag.reason, "ts": flag.ts}),
                                 flag.ts, flag_ttl_s))
    messages.extend(OutboundMessage("metrics", b"fraud", dumps(record)) for record in out.metrics)
    messages.extend(candidate_message(candidate) for candidate in out.candidates)
    return writes, messages


def build_flow(
    records: Source[InputRecord],
    kafka_sink: Sink[OutboundMessage],
    redis_sink: Sink[RedisWrite],
    model_sink: Sink[ModelCheckpoint],
    config: FraudFlowConfig,
    warm_start: ModelBundle | None = None,
    now_ms: Clock = wall_clock_ms,
) -> Dataflow:
    flow = Dataflow("fraud")
    raw = op.input("payments", flow, records)
    batches = op.flat_map_batch("decode", raw, lambda batch: decode_batch(batch, config.max_event_ahead_ms, now_ms()))
    outputs = op.stateful_batch(
        "engine", batches,
        lambda resumed: marked("fraud", _FraudLogic(engine_for(resumed, config, warm_start, now_ms()), now_ms), now_ms=now_ms)
    )
    unkeyed = op.key_rm("unkey", outputs)
    # Redis first: the payment service waits on it; the topics are for everyone else.
    writes_and_messages = op.map("outputs", unkeyed, lambda out: fraud_outputs(out, config.flag_ttl_s))
    op.output("redis", op.flat_map("writes", writes_and_messages, lambda wm: wm[0]), redis_sink)
    op.output("kafka", op.flat_map("messages", writes_and_messages, lambda wm: wm[1]), kafka_sink)
    op.output("models", op.flat_map("checkpoints", unkeyed, lambda out: out.checkpoints), model_sink)
    return flow


def flow_config(settings: Settings) -> FraudFlowConfig:
    return FraudFlowConfig(
        engine=fraud_config(settings),
        pseudonym_key=pseudonym_key(settings),
        max_event_ahead_ms=settings.max_event_ahead_s * 1000,
        flag_ttl_s=settings.fraud_flag_ttl_days * 24 * 3600,
    )


def raise_cpu_priority(nice: int) -> None:
    """The payment service waits on this process: on a shared host it should get the
    CPU first (SHOPSTREAM_FRAUD_NICE < 0 needs root or CAP_SYS_NICE)."""
    if nice == 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:
        raise ConfigError(
            f"SHOPSTREAM_FRAUD_NICE={nice} needs root or CAP_SYS_NICE; set it to 0 or grant the capability"
        ) from None


def latest_bundle(store: ModelStore) -> ModelBundle | None:
    """The newest fraud checkpoint's model and thresholds, if any."""
    checkpoint = store.load(MODEL_NAME)
    if checkpoint is None:
        return None
    if not isinstance(checkpoint.model, ModelBundle):
        raise ValueError(f"{store.path(MODEL_NAME, checkpoint.version)} is not a fraud model checkpoint")
    return checkpoint.model


def flow_from_settings(settings: Settings) -> Dataflow:
    raise_cpu_priority(settings.fraud_nice)
    # Feature state and pending labels are many long-lived objects; every payment
    # allocates short-lived ones. The default collector rescans the former all the time.
    tune_gc_for_long_lived_state()
    warm_start = latest_bundle(ModelStore(settings.fraud_model_dir))
    if warm_start is not None:
        log.info("fraud model warm start from %s", warm_start.model.model_version)
    return build_flow(
        # Polls never wait: a quiet partition must not hold up a busy one (Bytewax
        # itself pauses a partition 1 ms after an empty poll).
        KafkaInputSource(settings, FRAUD_TOPICS, consumer_overrides=LOW_LATENCY_CONSUMER, poll_timeout_s=0),
        KafkaOutputSink(settings, producer_overrides=LOW_LATENCY_PRODUCER),
        RedisSink(settings),
        CheckpointSink(settings.fraud_model_dir, MODEL_NAME),
        flow_config(settings),
        warm_start,
    )


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run flows.fraud:flow` builds the flow from the environment
    # on first access, so importing this module for tests needs no configuration.
    if name == "flow":
        return flow_from_settings(Settings.from_env())
    raise AttributeError(name)
