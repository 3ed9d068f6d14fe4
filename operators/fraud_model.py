"""The online fraud model, its delayed labels, and thresholds set by a target rate.

- `FraudModel`: a river logistic regression (Adam) over the features of
  `fraud_features`, each on a signed log scale (counts, ages and upstream signals of
  any range land within a few units; a rare 0/1 flag stays 0/1). Online
  standardisation and max-abs scaling were measured and lost separation on both the
  simulator and the real-data harness (AUC .962/.989 and .98/.99 against .992/.992),
  so the log scale is the scaling. Labels arrive at real proportions (hundreds of legitimate per fraud),
  and the legitimate ones all at once when a horizon passes, so learning is balanced:
  a legitimate label is learned with probability `legit_per_fraud` x frauds seen /
  legitimate seen (river's `imblearn.RandomUnderSampler` rule, drawn from the
  payment id's hash, so a replay learns the same ones), and after every
  `legit_per_fraud` legitimate labels learned one of the last `fraud_memory` frauds
  is learned again: a burst of 150,000 legitimate labels moves the model like 1 in
  `legit_per_fraud` frauds, not like a flood. Until it has seen `min_fraud_labels`
  frauds the model abstains (a cold logistic regression says 0.5 for everything).
- `PendingLabels`: the features of decided payments waiting for their label. A
  `chargeback` labels its payment fraud whenever it arrives (before or after the
  horizon); a payment that succeeded and saw no chargeback for `horizon_ms` of event
  time is labelled legitimate. A declined payment is never labelled (no money moved,
  so no chargeback can come). Payments are kept whole (with card, device and IP, for
  the failure counts) only for `outcome_ms` after the decision; then they move into
  compact sealed chunks of packed columns (a 64-bit hash of the payment id, event
  time, decision, the decision's score, packed features): a month of payments costs
  ~200 bytes each and pickles as a handful of byte strings. A chunk is labelled as a
  whole once its newest payment is past the horizon (labels come at most one chunk
  span, `horizon_ms / 64`, late; the order of labels is a function of the events).
- `ScoreThresholds`: review and block thresholds as score quantiles, so "block at
  most 0.1% of good payments" is the setting, not a magic score. The scores are the
  ones the model gave at decision time (prequential: before it learned anything about
  those payments), over the last `window` payments the rules did not block, known
  frauds taken out when their chargeback arrives. Almost every payment is legitimate,
  so this sample is available at once, follows the model as it learns, and is never
  the model's view of payments it has already learned from.
"""

from __future__ import annotations

import math
import zlib
from array import array
from bisect import bisect_left, insort
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Mapping

from river import linear_model, optim

MODEL_NAME = "lr"


def _squash(x: Mapping[str, float]) -> dict[str, float]:
    """Every feature on a signed log scale: counts, ages and upstream signals of any
    range land within a few units."""
    log1p, copysign = math.log1p, math.copysign
    return {name: copysign(log1p(abs(value)), value) for name, value in x.items()}


def payment_hash(payment_id: str) -> int:
    """A stable 64-bit hash of a payment id (not `hash()`: it differs between processes)."""
    return int.from_bytes(zlib.crc32(payment_id.encode()).to_bytes(4, "little")
                          + zlib.adler32(payment_id.encode()).to_bytes(4, "little"), "little")


def _uniform(key: int) -> float:
    """A number in [0, 1) drawn from a 64-bit key (a splitmix64 step)."""
    z = (key + 0x9E3779B97F4A7C15) & 0xFFFF_FFFF_FFFF_FFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFF_FFFF_FFFF_FFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFF_FFFF_FFFF_FFFF
    return ((z ^ (z >> 31)) >> 11) / float(1 << 53)


def probability(logit: float) -> float:
    if logit < -40:
        return 0.0
    if logit > 40:
        return 1.0
    return 1.0 / (1.0 + math.exp(-logit))


@dataclass
class FraudModel:
    fraud_weight: float = 1.0  # weight of a fraud label (balance comes from sampling, below)
    min_fraud_labels: int = 5
    learning_rate: float = 0.005
    legit_per_fraud: float = 10.0  # legitimate labels learned per fraud label, at most
    fraud_memory: int = 256  # the last frauds, learned again to keep the balance in a burst
    fraud_labels: int = 0
    legit_labels: int = 0  # legitimate labels seen (learned or not)
    legit_learned: int = 0
    version: int = 0  # bumped at every checkpoint
    pipeline: object = None
    legit_memory_size: int = 2560
    memory: deque | None = None  # squashed features of the latest frauds
    legit_memory: deque | None = None  # ... and of the latest legitimate payments learned
    since_replay: int = 0
    replay_at: int = 0
    legit_at: int = 0

    def __post_init__(self) -> None:
        if self.pipeline is None:
            self.pipeline = linear_model.LogisticRegression(optimizer=optim.Adam(self.learning_rate), l2=1e-4)
        if self.memory is None:
            self.memory = deque(maxlen=self.fraud_memory)
        if self.legit_memory is None:
            self.legit_memory = deque(maxlen=self.legit_memory_size)

    def __setstate__(self, state: dict) -> None:
        # Checkpoints of the previous model (fraud weight 10, no memories) keep their regression.
        self.__dict__.update(state)
        for name, value in (("legit_learned", state.get("legit_labels", 0)), ("legit_per_fraud", 10.0),
                            ("fraud_memory", 256), ("since_replay", 0), ("replay_at", 0), ("memory", None), ("legit_memory", None), ("legit_at", 0),
                            ("legit_memory_size", 2560)):
            self.__dict__.setdefault(name, value)
        if self.memory is None:
            self.memory = deque(maxlen=self.fraud_memory)
        if self.legit_memory is None:
            self.legit_memory = deque(maxlen=self.legit_memory_size)

    @property
    def ready(self) -> bool:
        return self.fraud_labels >= self.min_fraud_labels and self.legit_learned >= self.min_fraud_labels

    @property
    def model_version(self) -> str:
        """Names the checkpoint the model grew from and how many labels it has learned since."""
        return f"{MODEL_NAME}-v{self.version}+{self.fraud_labels + self.legit_labels}"

    def logit(self, x: Mapping[str, float]) -> float | None:
        """Log-odds of fraud, or None while not ready. Thresholds compare these: probabilities
        of confident scores all round to 1.0 in float32 and would tie."""
        if not self.ready:
            return None
        return float(self.pipeline._raw_dot_one(_squash(x)))

    def score(self, x: Mapping[str, float]) -> float | None:
        """Probability of fraud (under the balanced training mix), or None while not ready."""
        logit = self.logit(x)
        return None if logit is None else probability(logit)

    def learn(self, x: Mapping[str, float], is_fraud: bool, key: int = 0) -> None:
        """One label; `key` (the payment's hash) draws whether a legitimate one is learned.

        Every learning step keeps the classes at 1 : `legit_per_fraud`: a fraud is learned
        with that many legitimate examples from memory, and every that many legitimate
        labels learned are followed by a fraud from memory. Frauds that come before any
        legitimate label (chargebacks arrive long before the horizon) wait in memory."""
        squashed = _squash(x)
        learn_one = self.pipeline.learn_one
        ratio = max(1, int(round(self.legit_per_fraud)))
        legit = self.legit_memory
        if is_fraud:
            self.fraud_labels += 1
            self.memory.append(squashed)
            if not legit:
                return  # learned from memory once legitimate examples exist
            learn_one(squashed, True, w=self.fraud_weight)
            for _ in range(ratio):
                learn_one(legit[self.legit_at % len(legit)], False)
                self.legit_at += 1
            return
        self.legit_labels += 1
        share = self.legit_per_fraud * max(self.fraud_labels, 1) / self.legit_labels
        if share < 1.0 and _uniform(key) >= share:
            return
        self.legit_learned += 1
        legit.append(squashed)
        learn_one(squashed, False)
        self.since_replay += 1
        if self.since_replay >= ratio and self.memory:
            self.since_replay = 0
            again = self.memory[self.replay_at % len(self.memory)]
            self.replay_at += 1
            learn_one(again, True, w=self.fraud_weight)


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
    score: float = math.nan  # the decision's model logit if it went into the thresholds' window, else NaN

    def __reduce__(self):
        # As a plain tuple of fields it pickles three times faster than a slotted dataclass's default.
        return Pending, (self.ts, self.payment_id, self.user_id, self.amount, self.schema, self.packed,
                         self.decision, self.card, self.device, self.ip, self.succeeded, self.score)


@dataclass(frozen=True, slots=True)
class Label:
    pending: Pending
    is_fraud: bool
    ts: int  # event time the label became known
    key: int = 0  # the payment id's 64-bit hash (draws whether a legitimate label is learned)


_DECISIONS = ("approve", "review", "block")
_DECISION_CODE = {name: code for code, name in enumerate(_DECISIONS)}
_SUCCEEDED, _GONE = 1, 2  # row flags: the payment succeeded; labelled already (fraud) or declined


class _Chunk:
    """Sealed pending payments as packed columns, rows sorted by payment-id hash."""

    __slots__ = ("hashes", "ts", "decisions", "flags", "scores", "schemas", "offsets", "values", "newest", "live")

    def __init__(self, hashes, ts, decisions, flags, scores, schemas, offsets, values, newest, live):
        self.hashes, self.ts, self.decisions, self.flags = hashes, ts, decisions, flags
        self.scores, self.schemas, self.offsets, self.values = scores, schemas, offsets, values
        self.newest, self.live = newest, live

    @classmethod
    def seal(cls, entries: list[Pending]) -> "_Chunk":
        rows = sorted(((payment_hash(p.payment_id), p) for p in entries), key=lambda row: row[0])
        hashes, ts, scores = array("Q"), array("q"), array("f")
        decisions, flags, schemas, offsets = bytearray(), bytearray(), array("H"), array("I", [0])
        values = bytearray()
        for key, p in rows:
            hashes.append(key)
            ts.append(p.ts)
            scores.append(p.score)
            decisions.append(_DECISION_CODE[p.decision])
            flags.append(_SUCCEEDED if p.succeeded else 0)
            schemas.append(p.schema)
            values += p.packed
            offsets.append(len(values))
        return cls(hashes, ts, decisions, flags, scores, schemas, offsets, bytes(values),
                   max(ts) if ts else 0, len(rows))

    def find(self, key: int) -> int:
        at = bisect_left(self.hashes, key)
        return at if at < len(self.hashes) and self.hashes[at] == key else -1

    def pending(self, row: int) -> Pending:
        start, end = self.offsets[row], self.offsets[row + 1]
        return Pending(self.ts[row], "", "", 0.0, self.schemas[row], self.values[start:end],
                       _DECISIONS[self.decisions[row]], None, None, None,
                       bool(self.flags[row] & _SUCCEEDED), self.scores[row])

    def __reduce__(self):
        return _Chunk, (self.hashes, self.ts, self.decisions, self.flags, self.scores, self.schemas,
                        self.offsets, self.values, self.newest, self.live)


@dataclass
class PendingLabels:
    horizon_ms: int
    outcome_ms: int = 3_600_000  # payments kept whole this long after the decision, for their outcome
    chunk_rows: int = 4096
    recent: OrderedDict[str, Pending] = field(default_factory=OrderedDict)  # in decision order
    sealing: list[Pending] = field(default_factory=list)  # past the outcome window, not sealed yet
    chunks: deque = field(default_factory=deque)  # of _Chunk, oldest first
    sealed_live: int = 0

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        if "entries" in state:  # a snapshot of the previous layout: every payment whole
            state["recent"] = state.pop("entries")
        self.__init__(**state)

    @property
    def _outcome_ms(self) -> int:
        return max(1, min(self.outcome_ms, self.horizon_ms // 2))

    @property
    def _span_ms(self) -> int:
        return max(1, self.horizon_ms // 64)

    def add(self, pending: Pending) -> None:
        self.recent[pending.payment_id] = pending

    def get(self, payment_id: str) -> Pending | None:
        """A payment decided within the outcome window (a duplicate request comes within seconds)."""
        return self.recent.get(payment_id)

    def _sealed(self, payment_id: str) -> tuple[_Chunk, int] | None:
        key = payment_hash(payment_id)
        for chunk in reversed(self.chunks):
            row = chunk.find(key)
            if row >= 0 and not chunk.flags[row] & _GONE:
                return chunk, row
        return None

    def _waiting(self, payment_id: str) -> Pending | None:
        for pending in self.sealing:
            if pending.payment_id == payment_id:
                return pending
        return None

    def succeeded(self, payment_id: str) -> None:
        pending = self.recent.get(payment_id) or self._waiting(payment_id)
        if pending is not None:
            pending.succeeded = True
            return
        found = self._sealed(payment_id)
        if found is not None:
            chunk, row = found
            chunk.flags[row] |= _SUCCEEDED

    def failed(self, payment_id: str) -> Pending | None:
        """A declined payment can never be labelled: forget it (returned, while whole, for failure counts)."""
        pending = self.recent.pop(payment_id, None)
        if pending is not None:
            return pending
        waiting = self._waiting(payment_id)
        if waiting is not None:
            self.sealing.remove(waiting)
            return None
        found = self._sealed(payment_id)
        if found is not None:
            self._drop(*found)
        return None

    def _drop(self, chunk: _Chunk, row: int) -> None:
        chunk.flags[row] |= _GONE
        chunk.live -= 1
        self.sealed_live -= 1

    def chargeback(self, payment_id: str, ts: int) -> Label | None:
        pending = self.recent.pop(payment_id, None)
        if pending is None:
            pending = self._waiting(payment_id)
            if pending is not None:
                self.sealing.remove(pending)
        if pending is not None:
            return Label(pending, True, ts, payment_hash(payment_id))
        found = self._sealed(payment_id)
        if found is None:
            return None
        chunk, row = found
        self._drop(chunk, row)
        return Label(chunk.pending(row), True, ts, chunk.hashes[row])

    def _seal(self) -> None:
        chunk = _Chunk.seal(self.sealing)
        self.sealing = []
        self.chunks.append(chunk)
        self.sealed_live += chunk.live

    def expire(self, now_ts: int) -> list[Label]:
        """Payments past the horizon: legitimate if they succeeded, forgotten if not."""
        recent = self.recent
        outcome_cutoff = now_ts - self._outcome_ms
        span = self._span_ms
        while recent:
            payment_id, pending = next(iter(recent.items()))
            if pending.ts >= outcome_cutoff:
                break
            del recent[payment_id]
            sealing = self.sealing
            if sealing and (len(sealing) >= self.chunk_rows or pending.ts - sealing[0].ts >= span):
                self._seal()
            self.sealing.append(pending)
        cutoff = now_ts - self.horizon_ms
        if self.sealing and max(p.ts for p in self.sealing) < cutoff:
            self._seal()
        labels: list[Label] = []
        chunks = self.chunks
        while chunks and chunks[0].newest < cutoff:
            chunk = chunks.popleft()
            self.sealed_live -= chunk.live
            flags = chunk.flags
            for row in range(len(chunk.hashes)):
                if flags[row] == _SUCCEEDED:
                    labels.append(Label(chunk.pending(row), False, now_ts, chunk.hashes[row]))
        return labels

    def __len__(self) -> int:
        return len(self.recent) + len(self.sealing) + self.sealed_live


@dataclass
class ScoreThresholds:
    """Score quantiles over the last `window` scores.

    The engine adds the score of every payment the model judged, when it judged it
    (prequential), and removes a payment's score when its chargeback says it was fraud.
    (`items` and `refresh`: the previous layout, kept so old checkpoints load.)
    """

    block_good_rate: float  # e.g. 0.001: block at most 0.1% of good payments
    review_good_rate: float  # e.g. 0.01: block or review at most 1%
    window: int = 10_000
    min_scores: int = 500
    recent: deque = field(default_factory=deque)  # scores, oldest first
    items: deque = field(default_factory=deque)  # what each score was given to (optional)
    ordered: list[float] = field(default_factory=list)
    added_since_refresh: int = 0

    max_age_ms: int = 0  # scores older than this (event time) go while at least `min_scores` remain; 0: no limit
    times: deque = field(default_factory=deque)  # event time of each score in `recent` (with `max_age_ms`)

    def add(self, score: float, item: object = None, ts: int | None = None) -> None:
        self.recent.append(score)
        if item is not None:
            self.items.append(item)
        insort(self.ordered, score)
        self.added_since_refresh += 1
        if ts is not None and self.max_age_ms:
            self.times.append(ts)
        if len(self.recent) > self.window:
            self._drop_oldest()
        if self.times and len(self.times) == len(self.recent):
            # The model keeps learning: scores given long ago say little about today's.
            cutoff = ts - self.max_age_ms
            while len(self.recent) > self.min_scores and self.times[0] < cutoff:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        old = self.recent.popleft()
        if self.items:
            self.items.popleft()
        if self.times:
            self.times.popleft()
        del self.ordered[bisect_left(self.ordered, old)]

    def remove(self, score: float) -> bool:
        """Take one occurrence of `score` out (a payment that turned out fraud); False if gone already."""
        at = bisect_left(self.ordered, score)
        if at >= len(self.ordered) or self.ordered[at] != score:
            return False
        del self.ordered[at]
        for index in range(len(self.recent) - 1, -1, -1):
            if self.recent[index] == score:
                del self.recent[index]
                if len(self.times) > index:
                    del self.times[index]
                break
        return True

    def refresh(self, score_of) -> None:
        """Rescore every kept item with `score_of(item)`."""
        self.recent = deque(score_of(item) for item in self.items)
        self.ordered = sorted(self.recent)
        self.added_since_refresh = 0

    def __setstate__(self, state: dict) -> None:
        state.setdefault("max_age_ms", 0)
        state.setdefault("times", deque())
        self.__dict__.update(state)

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
