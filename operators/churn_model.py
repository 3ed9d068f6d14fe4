"""The churn risk model: an online river logistic regression on RFM features.

A customer scored at event time t is labelled *churned* if they place no paid
order within the churn horizon after t, *active* otherwise; the label is known
only later (at the next order, or when the horizon has passed), so the churn flow
keeps the features of a few scored moments per customer (`operators/churn.py`)
and teaches the model when each resolves.

Logistic regression on standardised, log-scaled features gives a probability
directly: log loss is a proper scoring rule, so the online fit stays calibrated
as long as the features are (BENCHMARKS.md reports calibration by band). Risk
bands cut that probability at configured thresholds.
"""

from __future__ import annotations

import math
from bisect import bisect
from dataclasses import dataclass

from river import compose, linear_model, optim, preprocessing

RISKS = ("low", "medium", "high")

# Cells of recency x the customer's own pace, one-hot: a linear model on smooth features
# cannot say "60 quiet days is late for a weekly buyer and early for a quarterly one".
# Edges in the features' log1p space (features are log1p of days, ratios and counts).
_RECENCY_EDGES = tuple(math.log1p(days) for days in (7, 14, 30, 60, 90, 180))
_GAP_RATIO_EDGES = tuple(math.log1p(ratio) for ratio in (0.5, 1, 2, 4))
_ORDERS_EDGES = tuple(math.log1p(count) for count in (1, 2, 4, 8))


@dataclass(frozen=True)
class ModelRules:
    learning_rate: float = 0.05
    l2: float = 0.0001
    medium_at: float = 0.4  # probability of churn from which the risk is medium
    high_at: float = 0.7  # ... and high

    def __post_init__(self) -> None:
        if not 0 < self.medium_at < self.high_at < 1:
            raise ValueError(f"risk bands need 0 < medium < high < 1, got {self.medium_at}, {self.high_at}")
        if self.learning_rate <= 0 or self.l2 < 0:
            raise ValueError("the learning rate must be positive and l2 not negative")

    def band(self, score: float) -> str:
        if score >= self.high_at:
            return "high"
        return "medium" if score >= self.medium_at else "low"


class ChurnModel:
    """A river pipeline (scaler + logistic regression) with the feature names it was built for.

    river models are not thread-safe and cannot be merged: each churn bucket owns one.
    `labels_learned` counts the labels learned, so two models with the same history agree.
    """

    def __init__(self, feature_names: tuple[str, ...], rules: ModelRules = ModelRules()):
        self.feature_names = feature_names
        self._cells = tuple(feature_names.index(name) for name in ("recency_days", "gap_ratio", "orders_total"))
        self.rules = rules
        # Numeric features standardised; the one-hot cells pass as they are (a scaler
        # would zero them: a sparse feature that is always 1 when present has no variance).
        self.pipeline = compose.Pipeline(
            compose.TransformerUnion(
                compose.Select(*feature_names) | preprocessing.StandardScaler(),
                compose.Discard(*feature_names),
            ),
            linear_model.LogisticRegression(optimizer=optim.SGD(rules.learning_rate), l2=rules.l2),
        )
        self.labels_learned = 0
        self.churned_learned = 0
        self._terms: tuple | None = None  # what `score` reads from the pipeline, until the next learn

    def _as_dict(self, x) -> dict[str, float]:
        named = dict(zip(self.feature_names, x))
        recency, gap_ratio, orders = (x[index] for index in self._cells)
        recency_cell = bisect(_RECENCY_EDGES, recency)
        named[f"recency{recency_cell}_pace{bisect(_GAP_RATIO_EDGES, gap_ratio)}"] = 1.0
        named[f"recency{recency_cell}_orders{bisect(_ORDERS_EDGES, orders)}"] = 1.0
        return named

    def score(self, x) -> float:
        """Probability of churn for one feature vector: exactly what
        `pipeline.predict_proba_one(self._as_dict(x))[True]` returns, bit for bit, read
        from the pipeline's learned state (scaler means and variances, weights, intercept,
        taken once per learned label) without the dicts river's transformers pass along.
        The churn book scores several times per order (quiet customers are re-scored on
        a timer), so this is its hottest path; learning stays in river.

        The same floating-point operations in the same order as river's: the cells
        (`Discard`'s output) come first in the transformed dict, then the scaled features
        in the iteration order of `Select`'s key set; the dot product adds
        weight x value in that order from 0.0, then the intercept, then the sigmoid of
        `utils.math.sigmoid`. `test_churn_model` checks the equality over a learning history.
        """
        weight, intercept, scaled = self._terms or self._take_terms()
        recency_at, gap_ratio_at, orders_at = self._cells
        recency, gap_ratio, orders = x[recency_at], x[gap_ratio_at], x[orders_at]
        recency_cell = bisect(_RECENCY_EDGES, recency)
        dot = 0.0
        dot += weight(f"recency{recency_cell}_pace{bisect(_GAP_RATIO_EDGES, gap_ratio)}", 0.0) * 1.0
        dot += weight(f"recency{recency_cell}_orders{bisect(_ORDERS_EDGES, orders)}", 0.0) * 1.0
        for index, coefficient, mean, std in scaled:
            dot += coefficient * ((x[index] - mean) / std if std else 0.0)
        logit = dot + intercept
        if logit < -30:
            return 0
        if logit > 30:
            return 1
        return 1 / (1 + math.exp(-logit))

    def _take_terms(self) -> tuple:
        """(weight lookup, intercept, (feature index, weight, mean, standard deviation) in
        river's order): valid until the next label is learned."""
        scaled_steps = self.pipeline.steps["TransformerUnion"].transformers["Pipeline"].steps
        scaler = scaled_steps["StandardScaler"]
        regression = self.pipeline.steps["LogisticRegression"]
        weight = regression._weights.get
        position = {name: index for index, name in enumerate(self.feature_names)}
        scaled = tuple(
            (position[name], weight(name, 0.0), scaler.means.get(name, 0.0), scaler.vars.get(name, 0.0) ** 0.5)
            for name in scaled_steps["Select"].keys
        )
        self._terms = (weight, regression.intercept, scaled)
        return self._terms

    def __getstate__(self) -> dict:
        # The terms follow the iteration order of a set, which a copy may not keep: rebuilt after loading.
        return {**self.__dict__, "_terms": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._terms = None  # also for checkpoints saved before the terms existed

    def learn(self, x, churned: bool) -> None:
        self.pipeline.learn_one(self._as_dict(x), churned)
        self._terms = None
        self.labels_learned += 1
        self.churned_learned += churned

    def band(self, score: float) -> str:
        return self.rules.band(score)

    def compatible_with(self, feature_names: tuple[str, ...]) -> bool:
        """A checkpoint built for other features (other horizons) cannot be warm-started from."""
        return self.feature_names == feature_names
