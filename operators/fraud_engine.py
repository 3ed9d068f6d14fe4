"""The fraud engine: one decision per `requested` payment, learning from late labels.

Pure logic, no I/O: `FraudEngine.process(events, now_ms)` takes a batch of payment
events in arrival order and returns what must be written (decisions, user flags,
window metrics, alert candidates, a model checkpoint when one is due). Time is
event time; the wall clock only moves the stream clock while input is quiet.

One engine owns all state: velocity per device, IP and card crosses users, and a
river model cannot be merged, so the fraud flow runs one of these per process.
"""

from __future__ import annotations

import logging
import math
import pickle
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from operators.alerts import AlertCandidate
from operators.clock import Progress, StreamClock
from operators.events import PaymentEvent
from operators.fraud_features import DAY_MS, HOUR_MS, MINUTE_MS, FeatureState
from operators.fraud_model import FeatureCodec, FraudModel, Label, Pending, PendingLabels, ScoreThresholds, probability
from operators.fraud_rules import MODEL_SCORE, FraudRules, stricter
from operators.pseudonym import Pseudonymizer

log = logging.getLogger(__name__)

SPIKE_RULE = "fraud.spike"
SPIKE_KEY = "payments"
_BASELINE_ALPHA = 0.1  # EWMA weight of the newest quiet window in the block baseline


@dataclass(frozen=True)
class FraudConfig:
    rules: FraudRules = field(default_factory=FraudRules)
    label_horizon_ms: int = 30 * DAY_MS
    outcome_ms: int = HOUR_MS  # a payment's outcome (succeeded / failed) is expected within this
    threshold_window: int = 10_000  # decision scores the thresholds are quantiles of ...
    threshold_max_age_ms: int = DAY_MS  # ... given at most this long ago (while 500 remain)
    block_good_rate: float = 0.001
    review_good_rate: float = 0.01
    history_ms: int = 90 * DAY_MS
    checkpoint_interval_ms: int = 5 * MINUTE_MS
    metrics_window_ms: int = MINUTE_MS
    lateness_ms: int = 10_000
    spike_factor: float = 5.0
    spike_min_blocks: int = 5


@dataclass(frozen=True, slots=True)
class FraudDecision:
    decision_id: str
    ts: int
    payment_id: str
    order_id: str
    user_id: str
    decision: str
    score: float
    reasons: tuple[str, ...]
    model_version: str
    decided_at: int  # wall clock ms when decided (event time is `ts`)
    amount: float  # for metrics; not part of the JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "ts": self.ts,
            "payment_id": self.payment_id,
            "order_id": self.order_id,
            "user_id": self.user_id,
            "decision": self.decision,
            "score": self.score,
            "reasons": list(self.reasons),
            "model_version": self.model_version,
            "decided_at": self.decided_at,
        }


@dataclass(frozen=True, slots=True)
class UserFlag:
    """`fraud:flagged:{user_id}` for the coupon flows: this user must not get coupons."""

    user_id: str
    reason: str  # "blocked" | "chargeback"
    ts: int


@dataclass(frozen=True, slots=True)
class ModelCheckpoint:
    version: int
    ts: int  # event time of the checkpoint
    data: bytes  # the pickled `ModelBundle`


@dataclass
class ModelBundle:
    """What a checkpoint holds: the model and its thresholds (no payment data)."""

    model: FraudModel
    thresholds: ScoreThresholds  # over the scores given at decision time (prequential)
    codec: FeatureCodec = field(default_factory=FeatureCodec)


@dataclass
class FraudOutputs:
    decisions: list[FraudDecision] = field(default_factory=list)
    flags: list[UserFlag] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[AlertCandidate] = field(default_factory=list)
    checkpoints: list[ModelCheckpoint] = field(default_factory=list)


@dataclass
class _Window:
    start: int
    requested: int = 0
    approved: int = 0
    reviewed: int = 0
    blocked: int = 0
    blocked_amount: float = 0.0


@dataclass
class Quality:
    """Decisions against the labels that have arrived (flagged = review or block)."""

    fraud_flagged: int = 0
    fraud_approved: int = 0
    fraud_blocked: int = 0
    legit_flagged: int = 0
    legit_blocked: int = 0
    legit_approved: int = 0

    def add(self, label: Label) -> None:
        decision = label.pending.decision
        if label.is_fraud:
            if decision == "approve":
                self.fraud_approved += 1
            else:
                self.fraud_flagged += 1
                self.fraud_blocked += decision == "block"
        else:
            if decision == "approve":
                self.legit_approved += 1
            else:
                self.legit_flagged += 1
                self.legit_blocked += decision == "block"

    def to_dict(self) -> dict[str, Any]:
        fraud = self.fraud_flagged + self.fraud_approved
        legit = self.legit_flagged + self.legit_approved
        flagged = self.fraud_flagged + self.legit_flagged
        return {
            "labelled_fraud": fraud,
            "labelled_legit": legit,
            "precision": None if flagged == 0 else round(self.fraud_flagged / flagged, 4),
            "recall": None if fraud == 0 else round(self.fraud_flagged / fraud, 4),
            "block_recall": None if fraud == 0 else round(self.fraud_blocked / fraud, 4),
            "false_block_rate": None if legit == 0 else round(self.legit_blocked / legit, 6),
            "false_flag_rate": None if legit == 0 else round(self.legit_flagged / legit, 6),
        }


def _event_order(event: PaymentEvent) -> tuple:
    return event.ts, event.event_id


def _event_ts(event: PaymentEvent) -> int:
    return event.ts


class FraudEngine:
    def __init__(self, config: FraudConfig, pseudonym: Pseudonymizer, bundle: ModelBundle | None = None):
        self.config = config
        self.pseudonym = pseudonym
        self.bundle = bundle or self.fresh_bundle(config)
        self.features = FeatureState(history_ms=config.history_ms)
        self.pending = PendingLabels(config.label_horizon_ms, outcome_ms=config.outcome_ms)
        self.clock = StreamClock(lateness_ms=config.lateness_ms)
        self.quality = Quality()
        self.windows: dict[int, _Window] = {}
        self.closed_until = 0  # windows ending at or before this event time are out
        self.block_baseline: float | None = None
        self.spiking = False
        self.next_checkpoint_ts: int | None = None
        self.next_expiry_ts: int | None = None

    @staticmethod
    def fresh_bundle(config: FraudConfig) -> ModelBundle:
        return ModelBundle(FraudModel(), ScoreThresholds(config.block_good_rate, config.review_good_rate,
                                                         window=config.threshold_window,
                                                         max_age_ms=config.threshold_max_age_ms))

    def configure(self, config: FraudConfig, pseudonym: Pseudonymizer) -> None:
        """Settings may change across restarts; state (model, features, labels) stays."""
        self.config = config
        self.pseudonym = pseudonym
        self.pending.horizon_ms = config.label_horizon_ms
        self.pending.outcome_ms = config.outcome_ms
        self.features.history_ms = config.history_ms
        self.clock.lateness_ms = config.lateness_ms
        thresholds = self.bundle.thresholds
        thresholds.block_good_rate = config.block_good_rate
        thresholds.review_good_rate = config.review_good_rate
        thresholds.window = config.threshold_window
        thresholds.max_age_ms = config.threshold_max_age_ms
        thresholds.items.clear()  # a checkpoint of the previous layout kept features of labelled payments

    # -- the stream ----------------------------------------------------------------
    def process(self, events: list[PaymentEvent], now_ms: int, progress: Progress | None = None) -> FraudOutputs:
        """Decide, learn and count one batch. With `progress` (the Kafka source's partition
        reports), metric windows close only once every partition has passed them, so a
        catch-up replay counts every decision; without it the clock follows the events."""
        out = FraudOutputs()
        if progress is not None:
            self.clock.advance(progress, now_ms)
            events = self._in_time_order(events)
        self._handle(events, now_ms, progress is None, out)
        self.advance(now_ms, out)
        return out

    def _in_time_order(self, events: list[PaymentEvent]) -> list[PaymentEvent]:
        """Live (every partition at its end), a payment is decided the moment it is read. While
        the flow catches up on a backlog, velocity counts would depend on which partition is
        read first, so a payment waits until every partition with a backlog has read past it
        (no lateness: it is the order across partitions that matters, and live a partition
        is behind only for a fetch or two), and payments are handled in event-time order: a
        replay, or a restart after a crash, decides what living through it decided."""
        waiting = self.__dict__.setdefault("waiting", [])  # snapshots from before this buffer
        waiting.extend(events)
        if not waiting:
            return []
        waiting.sort(key=_event_order)
        if not self.clock.catching_up():
            ready, self.waiting = waiting, []
            return ready
        read_through = self.clock.read_through()
        cut = 0 if read_through is None else bisect_left(waiting, read_through, key=_event_ts)
        ready, self.waiting = waiting[:cut], waiting[cut:]
        return ready

    def _handle(self, events: list[PaymentEvent], now_ms: int, observe: bool, out: FraudOutputs) -> None:
        for event in events:
            status = event.status
            if status == "requested":
                self._decide(event, now_ms, out)
            elif status == "succeeded":
                self.pending.succeeded(event.payment_id)
            elif status == "failed":
                self._failed(event)
            elif status == "chargeback":
                self._chargeback(event, out)
            if observe:
                self.clock.observe(event.ts, now_ms)

    def advance(self, now_ms: int, out: FraudOutputs | None = None) -> FraudOutputs:
        """Work that follows the clock: payments it has passed, labels past the horizon,
        expiry, windows, checkpoints."""
        if out is None:  # a wake without input: waiting payments the clock has passed
            out = FraudOutputs()
            self._handle(self._in_time_order([]), now_ms, False, out)
        clock_ts = self.clock.max_event_ms
        if clock_ts is None:
            return out
        for label in self.pending.expire(clock_ts):
            self._learn(label)
        if self.next_expiry_ts is None or clock_ts >= self.next_expiry_ts:
            self.features.expire(clock_ts)
            self.next_expiry_ts = clock_ts + MINUTE_MS
        watermark = self.clock.watermark(now_ms)
        if watermark is not None:
            self._close_windows(watermark, out)
        if self.next_checkpoint_ts is None:
            self.next_checkpoint_ts = clock_ts + self.config.checkpoint_interval_ms
        elif clock_ts >= self.next_checkpoint_ts:
            out.checkpoints.append(self.checkpoint(clock_ts))
            self.next_checkpoint_ts = clock_ts + self.config.checkpoint_interval_ms
        return out

    def next_wake_ms(self, now_ms: int) -> int | None:
        """Wall time at which the oldest open window closes if input stays quiet."""
        if not self.windows:
            return None  # waiting payments move with input only (a partition with a backlog)
        end = min(self.windows) + self.config.metrics_window_ms
        return self.clock.wall_time_when(end, now_ms)

    # -- decisions -----------------------------------------------------------------
    def _decide(self, payment: PaymentEvent, now_ms: int, out: FraudOutputs) -> None:
        if self.pending.get(payment.payment_id) is not None:
            return  # a duplicate request: decided already (Redis keeps the first decision)
        x = self.features.features(payment)
        rules = self.config.rules
        decision, reasons = rules.judge(x)
        model = self.bundle.model
        logit = model.logit(x)
        score = None if logit is None else probability(logit)
        kept_score = math.nan
        if logit is not None:
            thresholds = self.bundle.thresholds  # over logits: confident probabilities tie at 1.0
            kept_score = array("f", (logit,))[0]  # as the pending store keeps it (float32)
            model_decision = thresholds.decide(kept_score)  # before this payment's score joins the window
            if decision != "block":
                # Prequential: the score given now, before any label of this payment; payments
                # the rules block are not the population the thresholds are for.
                thresholds.add(kept_score, ts=payment.ts)
            else:
                kept_score = math.nan
            if model_decision != "approve":
                reasons.append(MODEL_SCORE)
                decision = stricter(decision, model_decision)
        if decision != "approve":
            reasons.extend(code for code in rules.explain(x) if code not in reasons)
        result = FraudDecision(
            decision_id=f"fd-{payment.payment_id}",
            ts=payment.ts,
            payment_id=payment.payment_id,
            order_id=payment.order_id,
            user_id=payment.user_id,
            decision=decision,
            score=round(score or 0.0, 6),
            reasons=tuple(reasons),
            model_version=model.model_version,
            decided_at=now_ms,
            amount=payment.amount,
        )
        out.decisions.append(result)
        schema, packed = self.bundle.codec.encode(x)
        self.pending.add(
            Pending(payment.ts, payment.payment_id, payment.user_id, payment.amount, schema, packed, decision,
                    payment.card_fingerprint, payment.device_id, payment.ip, False, kept_score)
        )
        self._count(result)
        if decision == "block":
            out.flags.append(UserFlag(payment.user_id, "blocked", payment.ts))
            log.debug("blocked payment %s of %s: %s", payment.payment_id, self.pseudonym(payment.user_id),
                      ",".join(reasons))

    def _count(self, decision: FraudDecision) -> None:
        width = self.config.metrics_window_ms
        start = decision.ts - decision.ts % width
        if start < self.closed_until:
            return  # later than its window, which is already out (the payment is still decided)
        window = self.windows.get(start)
        if window is None:
            window = self.windows[start] = _Window(start)
        window.requested += 1
        if decision.decision == "approve":
            window.approved += 1
        elif decision.decision == "review":
            window.reviewed += 1
        else:
            window.blocked += 1
            window.blocked_amount += decision.amount

    # -- outcomes and labels -------------------------------------------------------
    def _failed(self, event: PaymentEvent) -> None:
        pending = self.pending.failed(event.payment_id)
        if pending is not None and not math.isnan(pending.score):
            # Declined: not a good payment either (card testing is mostly declines).
            self.bundle.thresholds.remove(pending.score)
        if pending is not None:
            self.features.record_failure(event.ts, pending.card, pending.device, pending.ip, pending.user_id)

    def _chargeback(self, event: PaymentEvent, out: FraudOutputs) -> None:
        out.flags.append(UserFlag(event.user_id, "chargeback", event.ts))
        label = self.pending.chargeback(event.payment_id, event.ts)
        if label is not None:
            if not math.isnan(label.pending.score):
                self.bundle.thresholds.remove(label.pending.score)  # a fraud is not a good payment
            self._learn(label)
        log.debug("chargeback for payment %s of %s", event.payment_id, self.pseudonym(event.user_id))

    def _learn(self, label: Label) -> None:
        self.quality.add(label)
        if label.pending.decision == "block":
            # Live, a blocked payment is never charged, so it never earns a label; one
            # that "succeeded" anyway (a manual override, an open-loop simulator) says
            # little, and card-testing charges that nobody disputes would otherwise
            # teach the model (and the thresholds) that bot bursts are legitimate.
            return
        features = self.bundle.codec.decode(label.pending.schema, label.pending.packed)
        self.bundle.model.learn(features, label.is_fraud, label.key)

    # -- windows, alerts, checkpoints ------------------------------------------------
    def _close_windows(self, watermark: int, out: FraudOutputs) -> None:
        width = self.config.metrics_window_ms
        for start in sorted(self.windows):
            if start + width > watermark:
                break
            window = self.windows.pop(start)
            self.closed_until = start + width
            out.metrics.append(self._metrics(window))
            candidate = self._judge_spike(window)
            if candidate is not None:
                out.candidates.append(candidate)

    def _thresholds(self) -> ScoreThresholds:
        return self.bundle.thresholds

    def _metrics(self, window: _Window) -> dict[str, Any]:
        thresholds = self._thresholds()
        record: dict[str, Any] = {
            "metric": "fraud",
            "metric_id": f"fraud:{window.start}",
            "window_start": window.start,
            "window_end": window.start + self.config.metrics_window_ms,
            "requested": window.requested,
            "approved": window.approved,
            "reviewed": window.reviewed,
            "blocked": window.blocked,
            "blocked_amount": round(window.blocked_amount, 2),
            "model_version": self.bundle.model.model_version,
            "block_threshold": round(probability(thresholds.block), 6) if thresholds.ready else None,
            "review_threshold": round(probability(thresholds.review), 6) if thresholds.ready else None,
            "pending_labels": len(self.pending),
        }
        record.update(self.quality.to_dict())
        return record

    def _judge_spike(self, window: _Window) -> AlertCandidate | None:
        config = self.config
        baseline = self.block_baseline
        limit = max(float(config.spike_min_blocks), config.spike_factor * (baseline or 0.0))
        spiking = window.blocked >= limit
        if not spiking:
            # Only quiet windows teach the baseline: an attack must not become normal.
            self.block_baseline = (
                float(window.blocked) if baseline is None
                else (1 - _BASELINE_ALPHA) * baseline + _BASELINE_ALPHA * window.blocked
            )
        if spiking == self.spiking:
            return None
        self.spiking = spiking
        end = window.start + config.metrics_window_ms
        if spiking:
            summary = (
                f"{window.blocked} of {window.requested} payments blocked in {config.metrics_window_ms // 1000}s "
                f"(usually {baseline or 0.0:.1f}): card testing or another fraud attack"
            )
        else:
            summary = f"blocked payments back to normal ({window.blocked} in the last window)"
        return AlertCandidate(
            ts=end,
            rule=SPIKE_RULE,
            key=SPIKE_KEY,
            active=spiking,
            severity="critical",
            summary=summary,
            value=float(window.blocked),
            threshold=limit,
            runbook="README.md#fraud",
            detail={"requested": window.requested, "blocked_amount": round(window.blocked_amount, 2),
                    "window_start": window.start},
        )

    def checkpoint(self, ts: int) -> ModelCheckpoint:
        self.bundle.model.version += 1
        data = pickle.dumps(self.bundle, protocol=pickle.HIGHEST_PROTOCOL)
        return ModelCheckpoint(self.bundle.model.version, ts, data)
