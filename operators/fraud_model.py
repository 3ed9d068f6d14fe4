"""The online fraud model, its delayed labels, and thresholds set by a target rate.

- `FraudModel`: a river logistic regression over the (log-squashed)
  features of `fraud_features`. Fraud labels are rare, so each one weighs
  `fraud_weight` legitimate ones. Until it has seen `min_fraud_labels` frauds the
  model abstains (a cold logistic regression says 0.5 for everything).
- `PendingLabels`: the features of decided payments waiting for their label. A
  `chargeback` labels its payment fraud whenever it arrives; a payment that
  succeeded and saw no chargeback for `horizon_ms` of event time is labelled
  legitimate. A declined payment is never labelled (no money moved, so no
  chargeback can come) and leaves at once. Nothing else changes the model.
- `ScoreThresholds`: review and block thresholds as score quantiles over recent
  legitimate payments, so "block at most 0.1% of good payments" is the setting,
  not a magic score. The scores are the model's own at the time each payment
  was labelled legitimate, so they follow the model as it learns.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, insort
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Mapping

from river import linear_model, optim

MODEL_NAME = "lr"


def _squash(x: Mapping[str, float]) -> dict[str, float]:
    """Every feature on a signed log scale: counts, ages and upstream signals of any
    range land within a few units, so one SGD step size suits them all and a rare
    extreme value cannot blow the weights up (no scaler: a scaler turns rare flags
    into huge values)."""
    log1p, copysign = math.log1p, math.copysign
    return {name: copysign(log1p(abs(value)), value) for name, value in x.items()}


@dataclass
class FraudModel:
    fraud_weight: float = 10.0
    min_fraud_labels: int = 5
    learning_rate: float = 0.001
    fraud_labels: int = 0
    legit_labels: int = 0
    version: int = 0  # bumped at every checkpoint
    pipeline: object = None

    def __post_init__(self) -> None:
        if self.pipeline is None:
            # Adam: per-feature step sizes, so features that fraud rarely shows (a
            # takeover's risky signals next to a stolen card's young account) still learn.
            self.pipeline = linear_model.LogisticRegression(optimizer=optim.Adam(self.learning_rate), l2=1e-3)

    @property
    def ready(self) -> bool:
        return self.fraud_labels >= self.min_fraud_labels

    @property
    def model_version(self) -> str:
        """Names the checkpoint the model grew from and how many labels it has learned since."""
        return f"{MODEL_NAME}-v{self.version}+{self.fraud_labels + self.legit_labels}"

    def score(self, x: Mapping[str, float]) -> float | None:
        """Probability of fraud, or None while the model is not ready."""
        if not self.ready:
            return None
        return float(self.pipeline.predict_proba_one(_squash(x)).get(True, 0.0))

    def learn(self, x: Mapping[str, float], is_fraud: bool) -> None:
        self.pipeline.learn_one(_squash(x), is_fraud, w=self.fraud_weight if is_fraud else 1.0)
        if is_fraud:
            self.fraud_labels += 1
        else:
            self.legit_labels += 1


@dataclass
class FeatureCodec:
    """Features of pending payments, packed: a payment waits weeks for its label, so
    its features are kept as float32 bytes under a shared tuple of names."""

    schemas: list[tuple[str, ...]] = field(default_factory=list)
    index: dict[tuple[str, ...], int] = field(default_factory=dict)

    def encode(self, x: Mapping[str, float]) -> tuple[int, bytes]:
        names = tuple(x)
        schema = self.index.get(names)
        if schema is None:
            schema = self.index[names] = len(self.schemas)
            self.schemas.append(names)
        return schema, array("f", x.values()).tobytes()

    def decode(self, schema: int, packed: bytes) -> dict[str, float]:
        values = array("f")
        values.frombytes(packed)
        return dict(zip(self.schemas[schema], values))


@dataclass(slots=True)
class Pending:
    """A decided payment waiting for its label (no card data, only features)."""

    ts: int
    payment_id: str
    user_id: str
    amount: float
    schema: int  # features, packed by a FeatureCodec
    packed: bytes
    decision: str
    card: str | None
    device: str | None
    ip: str | None
    succeeded: bool = False

    def __reduce__(self):
        # Snapshots pickle tens of thousands of these; as a plain tuple of fields it is
        # three times faster than a slotted dataclass's default (the flow stalls meanwhile).
        return Pending, (self.ts, self.payment_id, self.user_id, self.amount, self.schema, self.packed,
                         self.decision, self.card, self.device, self.ip, self.succeeded)


@dataclass(frozen=True, slots=True)
class Label:
    pending: Pending
    is_fraud: bool
    ts: int  # event time the label became known


@dataclass
class PendingLabels:
    horizon_ms: int
    entries: OrderedDict[str, Pending] = field(default_factory=OrderedDict)  # in decision order

    def add(self, pending: Pending) -> None:
        self.entries[pending.payment_id] = pending

    def get(self, payment_id: str) -> Pending | None:
        return self.entries.get(payment_id)

    def succeeded(self, payment_id: str) -> None:
        pending = self.entries.get(payment_id)
        if pending is not None:
            pending.succeeded = True

    def failed(self, payment_id: str) -> Pending | None:
        """A declined payment can never be labelled: forget it (returned for failure counts)."""
        return self.entries.pop(payment_id, None)

    def chargeback(self, payment_id: str, ts: int) -> Label | None:
        pending = self.entries.pop(payment_id, None)
        return None if pending is None else Label(pending, True, ts)

    def expire(self, now_ts: int) -> list[Label]:
        """Payments past the horizon: legitimate if they succeeded, forgotten if not."""
        labels, entries, cutoff = [], self.entries, now_ts - self.horizon_ms
        while entries:
            payment_id, pending = next(iter(entries.items()))
            if pending.ts >= cutoff:
                break
            del entries[payment_id]
            if pending.succeeded:
                labels.append(Label(pending, False, now_ts))
        return labels

    def __len__(self) -> int:
        return len(self.entries)


@dataclass
class ScoreThresholds:
    """Score quantiles over the last `window` scores.

    With items (the packed features of legitimate payments), `refresh` rescores
    them all with the current model: scores given by an older model would keep
    thresholds where that model put them, long after it has learned better.
    """

    block_good_rate: float  # e.g. 0.001: block at most 0.1% of good payments
    review_good_rate: float  # e.g. 0.01: block or review at most 1%
    window: int = 10_000
    min_scores: int = 500
    recent: deque = field(default_factory=deque)  # scores, oldest first
    items: deque = field(default_factory=deque)  # what each score was given to (optional)
    ordered: list[float] = field(default_factory=list)
    added_since_refresh: int = 0

    def add(self, score: float, item: object = None) -> None:
        self.recent.append(score)
        if item is not None:
            self.items.append(item)
        insort(self.ordered, score)
        self.added_since_refresh += 1
        if len(self.recent) > self.window:
            old = self.recent.popleft()
            if self.items:
                self.items.popleft()
            del self.ordered[bisect_left(self.ordered, old)]

    def refresh(self, score_of) -> None:
        """Rescore every kept item with `score_of(item)`."""
        self.recent = deque(score_of(item) for item in self.items)
        self.ordered = sorted(self.recent)
        self.added_since_refresh = 0

    @property
    def ready(self) -> bool:
        return len(self.ordered) >= self.min_scores

    def _quantile(self, good_rate: float) -> float:
        ordered = self.ordered
        index = min(len(ordered) - 1, int(math.floor(len(ordered) * (1.0 - good_rate))))
        return ordered[index]

    @property
    def block(self) -> float:
        return self._quantile(self.block_good_rate)

    @property
    def review(self) -> float:
        return self._quantile(self.review_good_rate)

    def decide(self, score: float) -> str:
        """Strictly above a threshold: a legitimate score equal to it is not flagged."""
        if not self.ready:
            return "approve"
        if score > self.block:
            return "block"
        if score > self.review:
            return "review"
        return "approve"
