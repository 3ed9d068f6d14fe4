"""The churn risk model: an online river logistic regression on RFM features, calibrated.

A customer scored at event time t is labelled *churned* if they place no paid
order within the churn horizon after t, *active* otherwise; the label is known
only later (at the next order, or when the horizon has passed), so the churn flow
keeps the features of a few moments per customer (`operators/churn.py`) and hands
each label to the model when it resolves.

Learning is in mini-batches (river's `learn_many`: one mean-gradient step per
batch): one `learn_one` costs ~28 µs, as much as everything else a replayed order
costs together, while a batch of 256 costs ~5 µs a label. Labels wait in a buffer
until `batch_size` of them have resolved, or `max_wait_ms` of event time (a week) has
passed since the first one (a small shop's model still moves weekly); both are decided
by the order of operations alone, so a replay learns exactly what the live flow learned.

The regression's probability is then calibrated: every label, before the model
learns from it, is scored (prequential), and its raw logit and outcome go into
bins with exponential forgetting; pool-adjacent-violators makes the bins' churn
rates monotone, and a score is the rate interpolated between bin centres. The
risk bands cut that calibrated probability at configured thresholds.

Beside the regression sits a buy-till-you-die model (BG/NBD, `operators/btyd.py`),
fitted without labels on the customers seen at their label snapshots (the latest
`btyd_sample` of them), again every `btyd_refit_ms` of event time. Its log-odds of
"no purchase within the churn horizon" is one more input of the regression (recency
means little without the customer's own pace; BG/NBD says it in one number), and it
*is* the score until the regression has learned `min_labels_per_class` labels of each
outcome: the first labels to resolve are all active (a churned label takes a whole
horizon), and a horizon longer than the history resolves no churned label at all;
a regression taught only one outcome says nobody churns. `trained` tells which it is.
"""

from __future__ import annotations

import math
from bisect import bisect
from dataclasses import dataclass

import numpy as np
import pandas as pd
from river import linear_model, optim, preprocessing

from operators.btyd import BgNbd, CustomerSample, quiet_log_odds
from operators.rfm import DAY_MS

RISKS = ("low", "medium", "high")
LAYOUT = 3  # the model's structure; a checkpoint of another layout cannot be warm-started from

# Cells of recency x the customer's own pace, one-hot: a linear model on smooth features
# cannot say "60 quiet days is late for a weekly buyer and early for a quarterly one".
# Edges in the features' log1p space (features are log1p of days, ratios and counts).
_RECENCY_EDGES = tuple(math.log1p(days) for days in (7, 14, 30, 60, 90, 180))
_GAP_RATIO_EDGES = tuple(math.log1p(ratio) for ratio in (0.5, 1, 2, 4))
_ORDERS_EDGES = tuple(math.log1p(count) for count in (1, 2, 4, 8))
_PACE_CELLS = len(_GAP_RATIO_EDGES) + 1
_ORDER_CELLS = len(_ORDERS_EDGES) + 1
CELL_NAMES = tuple(
    [f"recency{r}_pace{p}" for r in range(len(_RECENCY_EDGES) + 1) for p in range(_PACE_CELLS)]
    + [f"recency{r}_orders{o}" for r in range(len(_RECENCY_EDGES) + 1) for o in range(_ORDER_CELLS)]
)
_ORDERS_CELLS_AT = (len(_RECENCY_EDGES) + 1) * _PACE_CELLS  # first recency x orders column


@dataclass(frozen=True)
class ModelRules:
    learning_rate: float = 0.2  # per mini-batch step (mean gradient of the batch)
    l2: float = 0.0001
    batch_size: int = 256  # labels per learning step
    max_wait_ms: int = 7 * DAY_MS  # ... or fewer, once the oldest waiting label is this old (event time)
    medium_at: float = 0.4  # calibrated probability of churn from which the risk is medium
    high_at: float = 0.7  # ... and high
    horizon_ms: int = 90 * DAY_MS  # churned = no paid order within this long (BG/NBD's question)
    btyd_refit_ms: int = 28 * DAY_MS  # BG/NBD is fitted again this often (event time) ...
    btyd_sample: int = 20_000  # ... on the latest this many label snapshots
    min_labels_per_class: int = 100  # the regression scores once it learned this many of each outcome

    def __post_init__(self) -> None:
        if not 0 < self.medium_at < self.high_at < 1:
            raise ValueError(f"risk bands need 0 < medium < high < 1, got {self.medium_at}, {self.high_at}")
        if self.learning_rate <= 0 or self.l2 < 0:
            raise ValueError("the learning rate must be positive and l2 not negative")
        if self.batch_size < 1 or self.max_wait_ms < 0:
            raise ValueError("the learning batch needs at least one label and a wait of at least 0 ms")
        if self.horizon_ms <= 0 or self.btyd_refit_ms <= 0 or self.btyd_sample < 1 or self.min_labels_per_class < 1:
            raise ValueError("the churn horizon, BG/NBD refit interval and sample, and labels per class must be positive")

    def band(self, score: float) -> str:
        if score >= self.high_at:
            return "high"
        return "medium" if score >= self.medium_at else "low"


class Calibration:
    """Raw logit -> observed churn rate, from binned outcomes with forgetting, made monotone."""

    LOW, HIGH, WIDTH = -8.0, 8.0, 0.5  # bins of raw logit; scores beyond the ends use the end bins
    MIN_LABELS = 500.0  # until this much (decayed) evidence, scores are the raw probability

    def __init__(self, memory_ms: int = 90 * DAY_MS):
        bins = int((self.HIGH - self.LOW) / self.WIDTH)
        self.memory_ms = memory_ms  # evidence fades by e every this long of event time
        self.weight = np.zeros(bins)  # labels per bin, decayed
        self.churned = np.zeros(bins)
        self.as_of: int | None = None  # event time of the evidence
        self.centres: tuple[float, ...] = ()  # fitted curve: logits and their calibrated rates
        self.rates: tuple[float, ...] = ()

    def _bins(self, logits: np.ndarray) -> np.ndarray:
        index = np.floor((logits - self.LOW) / self.WIDTH).astype(int)
        return np.clip(index, 0, len(self.weight) - 1)

    def learn(self, logits: np.ndarray, churned: np.ndarray, now: int) -> None:
        if self.as_of is not None and now > self.as_of:
            keep = math.exp(-(now - self.as_of) / self.memory_ms)
            self.weight *= keep
            self.churned *= keep
        self.as_of = now if self.as_of is None else max(self.as_of, now)
        bins = self._bins(logits)
        np.add.at(self.weight, bins, 1.0)
        np.add.at(self.churned, bins, churned.astype(float))
        self._fit()

    def _fit(self) -> None:
        if self.weight.sum() < self.MIN_LABELS:
            self.centres = self.rates = ()
            return
        # Pool adjacent violators over the non-empty bins, weighted by their evidence.
        blocks: list[list[float]] = []  # [weight, churned, first centre, last centre]
        for index in np.flatnonzero(self.weight > 1e-9).tolist():  # plain floats: scores go to JSON
            centre = self.LOW + (index + 0.5) * self.WIDTH
            blocks.append([float(self.weight[index]), float(self.churned[index]), centre, centre])
            while len(blocks) > 1 and blocks[-2][1] / blocks[-2][0] >= blocks[-1][1] / blocks[-1][0]:
                weight, churned, _, last = blocks.pop()
                blocks[-1][0] += weight
                blocks[-1][1] += churned
                blocks[-1][3] = last
        # Each pooled block's rate sits at its evidence's middle; between blocks, interpolate.
        self.centres = tuple((first + last) / 2 for _, _, first, last in blocks)
        self.rates = tuple(churned / weight for weight, churned, _, _ in blocks)

    def probability(self, logit: float) -> float:
        centres = self.centres
        if not centres:
            return _sigmoid(logit)
        at = bisect(centres, logit)
        if at == 0:
            return self.rates[0]
        if at == len(centres):
            return self.rates[-1]
        left, right = centres[at - 1], centres[at]
        share = (logit - left) / (right - left)
        return self.rates[at - 1] + share * (self.rates[at] - self.rates[at - 1])


def _sigmoid(logit: float) -> float:
    if logit < -30:
        return 0.0
    if logit > 30:
        return 1.0
    return 1 / (1 + math.exp(-logit))


class ChurnModel:
    """Scaler + logistic regression (river) + calibration, with the feature names it was built for.

    river models are not thread-safe and cannot be merged: each churn bucket owns one.
    `labels_learned` counts the labels handed to `learn` (those waiting for the next
    batch included), so two models with the same history agree.
    """

    def __init__(self, feature_names: tuple[str, ...], rules: ModelRules = ModelRules()):
        self.layout = LAYOUT
        self.feature_names = feature_names
        self.input_names = feature_names + ("btyd_quiet",)  # what the regression reads
        self._cells = tuple(feature_names.index(name) for name in ("recency_days", "gap_ratio", "orders_total"))
        self._btyd_at = tuple(feature_names.index(name) for name in ("orders_total", "recency_days", "order_age_days"))
        self.btyd: BgNbd | None = None  # the latest fit; None until the first
        self.btyd_sample = CustomerSample(rules.btyd_sample)
        self.btyd_fitted_ts: int | None = None
        self.rules = rules
        # Numeric features are standardised; the one-hot cells pass as they are (a scaler
        # would zero them: a sparse feature that is always 1 when present has no variance).
        self.scaler = preprocessing.StandardScaler()
        self.regression = linear_model.LogisticRegression(optimizer=optim.SGD(rules.learning_rate), l2=rules.l2)
        self.calibration = Calibration()
        self.labels_learned = 0
        self.churned_learned = 0
        self.batches_learned = 0
        self._waiting_x: list = []  # features of the labels not learned yet, one sequence each
        self._waiting_y: list[bool] = []
        self._waiting_since: int | None = None  # event time of the oldest waiting label
        self._waiting_now = 0  # ... and of the newest
        self._terms: tuple | None = None  # what `score` reads from the river models, until the next batch

    # -- scoring -----------------------------------------------------------------------------
    def cells(self, x) -> tuple[int, int]:
        """Column offsets (in CELL_NAMES) of the two one-hot cells a feature vector falls in."""
        recency_at, gap_ratio_at, orders_at = self._cells
        recency_cell = bisect(_RECENCY_EDGES, x[recency_at])
        return (recency_cell * _PACE_CELLS + bisect(_GAP_RATIO_EDGES, x[gap_ratio_at]),
                _ORDERS_CELLS_AT + recency_cell * _ORDER_CELLS + bisect(_ORDERS_EDGES, x[orders_at]))

    def logit(self, x) -> float:
        """The regression's raw log-odds of churn for one feature vector: what river's
        `regression.predict_proba_one` takes the sigmoid of, for the scaled features and
        the two hot cells, read from the learned state once per batch instead of through
        river's dicts (quiet customers are re-scored on a timer: this is the hot path).
        `test_churn_model` checks it against river."""
        scaled, cell_weights, intercept, (coefficient, mean, std) = self._terms or self._take_terms()
        pace_cell, orders_cell = self.cells(x)
        dot = cell_weights[pace_cell] + cell_weights[orders_cell]
        for index, weight, feature_mean, feature_std in scaled:
            dot += weight * ((x[index] - feature_mean) / feature_std if feature_std else 0.0)
        if std:
            dot += coefficient * (self.btyd_quiet(x) - mean) / std
        return dot + intercept

    def raw_probability(self, x) -> float:
        return _sigmoid(self.logit(x))

    @property
    def trained(self) -> bool:
        """The regression has learned enough of both outcomes to score; until then BG/NBD scores."""
        least = self.rules.min_labels_per_class
        return self.churned_learned >= least and self.labels_learned - self.churned_learned >= least \
            and self.batches_learned > 0

    def score(self, x) -> float:
        """Probability of churn: the regression's, calibrated, once `trained`; before, BG/NBD's
        probability of no purchase within the horizon (0.5 before its first fit)."""
        if self.trained:
            return self.calibration.probability(self.logit(x))
        return _sigmoid(self.btyd_quiet(x))

    # -- buy-till-you-die ----------------------------------------------------------------------
    def customer_days(self, x) -> tuple[float, float, float] | None:
        """BG/NBD's view of a feature vector: repeat purchases, days from the first to the last
        purchase, days since the first; None for a customer who never paid."""
        orders_at, recency_at, age_at = self._btyd_at
        orders = round(math.expm1(x[orders_at]))
        if orders < 1:
            return None
        age = math.expm1(x[age_at])
        span = max(0.0, age - math.expm1(x[recency_at])) if orders > 1 else 0.0
        return orders - 1.0, span, age

    def btyd_quiet(self, x) -> float:
        """BG/NBD's log-odds of no purchase within the horizon; 0 without a fit or a paid order."""
        if self.btyd is None:
            return 0.0
        days = self.customer_days(x)
        if days is None:
            return 0.0
        return quiet_log_odds(self.btyd, *days, self.rules.horizon_ms / DAY_MS)

    def p_alive(self, x) -> float | None:
        days = None if self.btyd is None else self.customer_days(x)
        return None if days is None else float(self.btyd.p_alive(*days))

    def observe(self, x, now: int) -> None:
        """A customer at a label snapshot (event time `now`): into the BG/NBD sample; BG/NBD is
        fitted again when `btyd_refit_ms` has passed since the last fit."""
        days = self.customer_days(x)
        if days is None:
            return
        self.btyd_sample.add(*days)
        if self.btyd_fitted_ts is None:
            self.btyd_fitted_ts = now  # the first fit waits one interval: a sample of the first day is thin
        elif now - self.btyd_fitted_ts >= self.rules.btyd_refit_ms:
            self.btyd_fitted_ts = now
            try:
                x, span, age, customers = self.btyd_sample.rows()
                self.btyd = BgNbd.fit(x, span, age, customers, start=self.btyd)
            except ValueError:
                return  # not a usable sample (cannot happen from customer_days): keep the last fit
            self._terms = None

    def _take_terms(self) -> tuple:
        # Plain floats: river's mini-batch updates leave numpy scalars, slower to compute with and not JSON.
        weight = self.regression._weights.get
        scaler = self.scaler
        scaled = tuple(
            (index, float(weight(name, 0.0)), float(scaler.means.get(name, 0.0)),
             float(scaler.vars.get(name, 0.0)) ** 0.5)
            for index, name in enumerate(self.feature_names)
        )
        cells = tuple(float(weight(name, 0.0)) for name in CELL_NAMES)
        btyd = self.input_names[-1]
        btyd_terms = (float(weight(btyd, 0.0)), float(scaler.means.get(btyd, 0.0)),
                      float(max(scaler.vars.get(btyd, 0.0), 0.0)) ** 0.5)
        self._terms = (scaled, cells, float(self.regression.intercept), btyd_terms)
        return self._terms

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_terms": None}

    def band(self, score: float) -> str:
        return self.rules.band(score)

    # -- learning ----------------------------------------------------------------------------
    def learn(self, x, churned: bool, now: int) -> None:
        """One resolved label at event time `now`; the model changes when its batch is full
        or the oldest waiting label is `max_wait_ms` old."""
        self._waiting_x.append(x)
        self._waiting_y.append(churned)
        self.labels_learned += 1
        self.churned_learned += churned
        if self._waiting_since is None:
            self._waiting_since = now
        self._waiting_now = now
        if len(self._waiting_y) >= self.rules.batch_size or now - self._waiting_since >= self.rules.max_wait_ms:
            self.learn_waiting()

    def learn_waiting(self) -> None:
        """Learn from every waiting label now (also at the end of a replay, before a checkpoint)."""
        if not self._waiting_y:
            return
        numeric = np.array([(*x, self.btyd_quiet(x)) for x in self._waiting_x], dtype=np.float64)
        churned = np.array(self._waiting_y, dtype=bool)
        pace_cells, orders_cells = zip(*map(self.cells, self._waiting_x))  # the cells scoring uses
        rows = np.arange(len(numeric))
        hot = np.zeros((len(numeric), len(CELL_NAMES)))
        hot[rows, pace_cells] = hot[rows, orders_cells] = 1.0
        self.calibration.learn(self._logits(numeric, hot), churned, self._waiting_now)  # scored before learning
        frame = pd.DataFrame(numeric, columns=list(self.input_names))
        self.scaler.learn_many(frame)
        variances = self.scaler.vars
        for name in self.input_names:
            # river computes a batch's variance as E[x^2] - mean^2: a feature constant at a value
            # not exact in binary comes out a hair below zero, and its square root complex.
            if variances[name] < 0:
                variances[name] = 0.0
        scaled = self.scaler.transform_many(frame)
        inputs = pd.concat([scaled, pd.DataFrame(hot, columns=list(CELL_NAMES), index=scaled.index)], axis=1)
        self.regression.learn_many(inputs, pd.Series(churned, index=rows))
        self.batches_learned += 1
        self._waiting_x, self._waiting_y, self._waiting_since = [], [], None
        self._terms = None

    def _logits(self, numeric: np.ndarray, hot: np.ndarray) -> np.ndarray:
        scaled, cell_weights, intercept, btyd_terms = self._terms or self._take_terms()
        coefficients = np.array([c for _, c, _, _ in scaled] + [btyd_terms[0]])
        means = np.array([m for _, _, m, _ in scaled] + [btyd_terms[1]])
        stds = np.array([s for _, _, _, s in scaled] + [btyd_terms[2]])
        standardised = np.divide(numeric - means, stds, out=np.zeros_like(numeric), where=stds > 0)
        return standardised @ coefficients + hot @ np.array(cell_weights) + intercept

    def compatible_with(self, feature_names: tuple[str, ...]) -> bool:
        """A checkpoint built for other features (other horizons) or another layout cannot be warm-started from."""
        return getattr(self, "layout", 1) == LAYOUT and self.feature_names == feature_names
