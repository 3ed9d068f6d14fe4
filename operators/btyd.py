"""Buy-till-you-die: the BG/NBD model (Fader, Hardie & Lee 2005), fitted by maximum likelihood.

A customer buys at a Poisson rate drawn from Gamma(r, alpha) and, after each purchase,
drops out for good with a probability drawn from Beta(a, b). From a customer's repeat
purchases `x`, the age of their last purchase `t_x` and their own age `T` (both since the
first purchase), the model says how likely they are still alive and how likely they are
to make no purchase in the next `h`. It needs no labels: the parameters are fitted on the
population's (x, t_x, T) alone, so it works from the first day, before any churn label has
resolved, and when no label can (a horizon longer than the history).

Pure numpy/scipy, no state. Times are in days; (x, t_x, T) rows rounded to whole days are
deduplicated and weighted, so a fit over tens of thousands of customers is a few
thousand rows. `lifetimes` (unmaintained since 2020, and its import needs autograd and
dill) implements the same likelihood; `tests/unit/test_btyd.py` checks this one against
the published CDNOW estimates and against parameters it simulated from.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, gammaln


class BgNbd(NamedTuple):
    r: float
    alpha: float  # in days (the Gamma's scale of purchase rates)
    a: float
    b: float

    # -- fitting -------------------------------------------------------------------------------
    @staticmethod
    def fit(x, t_x, T, weights=None, start: "BgNbd | None" = None) -> "BgNbd":
        """Maximum-likelihood parameters for customers with `x` repeat purchases, the last at
        `t_x` days and their age `T` days after their first purchase (`weights`: how many
        customers each row stands for). `start`: the previous fit, to converge in fewer steps."""
        x, t_x, T = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
        w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
        if len(x) == 0 or w.sum() <= 0:
            raise ValueError("BG/NBD needs at least one customer")
        if np.any(x < 0) or np.any(t_x < 0) or np.any(T < t_x) or np.any((x == 0) & (t_x != 0)):
            raise ValueError("BG/NBD needs x >= 0 and 0 <= t_x <= T, with t_x = 0 when x = 0")
        scale = max(float(np.average(T, weights=w)), 1.0)  # fit in units of the mean age: better conditioned
        t_x, T = t_x / scale, T / scale
        repeat = x > 0
        total = w.sum()

        def loss(log_params: np.ndarray) -> float:
            r, alpha, a, b = np.exp(log_params)
            common = gammaln(r + x) - gammaln(r) + r * math.log(alpha) + betaln(a, b + x) - betaln(a, b)
            stayed = -(r + x) * np.log(alpha + T)
            # The last purchase was also the moment of dropping out (only possible after one).
            dropped = np.where(repeat, math.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x),
                               -np.inf)
            return -float(np.dot(w, common + np.logaddexp(stayed, dropped))) / total

        first = np.log([start.r, start.alpha / scale, start.a, start.b]) if start else np.zeros(4)
        result = minimize(loss, first, method="L-BFGS-B", bounds=[(-12.0, 12.0)] * 4)
        r, alpha, a, b = np.exp(result.x)
        return BgNbd(float(r), float(alpha * scale), float(a), float(b))

    # -- what it says about one customer or many ----------------------------------------------
    def p_alive(self, x, t_x, T):
        """Probability the customer has not dropped out by `T` (1 for one without a repeat purchase)."""
        x, t_x, T = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
        r, alpha, a, b = self
        log_odds_dead = math.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) + (r + x) * (
            np.log(alpha + T) - np.log(alpha + t_x))
        return np.where(x > 0, 1.0 / (1.0 + np.exp(np.minimum(log_odds_dead, 700.0))), 1.0)

    def p_no_purchase(self, x, t_x, T, horizon_days: float):
        """Probability of no purchase in the next `horizon_days`: dropped out already, or alive
        and buying at a rate (Gamma posterior r + x, alpha + T) that leaves the horizon empty.
        (In BG/NBD a customer drops out only right after a purchase, so one alive who buys
        nothing stays alive throughout.)"""
        x, T = np.asarray(x, dtype=np.float64), np.asarray(T, dtype=np.float64)
        alive = self.p_alive(x, t_x, T)
        r, alpha, _, _ = self
        quiet_if_alive = np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + horizon_days)))
        return 1.0 - alive + alive * quiet_if_alive

    def expected_purchases(self, t: float):
        """Expected purchases of a new customer in its first `t` days (for checks: E[X(t)])."""
        from scipy.special import hyp2f1

        r, alpha, a, b = self
        z = t / (alpha + t)
        return (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, z))


def quiet_log_odds(model: BgNbd, x: float, t_x: float, T: float, horizon_days: float) -> float:
    """log(p / (1 - p)) of `model.p_no_purchase` for one customer, in plain floats (the churn
    score's hot path: numpy costs more than the arithmetic for one value), clipped to +-30."""
    r, alpha, a, b = model
    log_quiet_if_alive = (r + x) * (math.log(alpha + T) - math.log(alpha + T + horizon_days))
    if x > 0:
        log_odds_dead = math.log(a) - math.log(max(b + x - 1, 1e-12)) + (r + x) * (
            math.log(alpha + T) - math.log(alpha + t_x))
        alive = 1.0 / (1.0 + math.exp(min(log_odds_dead, 700.0)))
    else:
        alive = 1.0
    buying = -math.expm1(log_quiet_if_alive)  # P(a purchase in the horizon | alive), without cancellation
    if alive <= 0.0 or buying <= 0.0:
        return 30.0
    quiet = 1.0 - alive * buying
    return max(-30.0, min(30.0, math.log(quiet) - math.log(alive) - math.log(buying)))


def day_rows(x, t_x, T) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, t_x, T) rounded to whole days and deduplicated, with the count of each row: the
    weighted rows `BgNbd.fit` takes."""
    x = np.asarray(x, dtype=np.float64)
    T = np.round(np.asarray(T, dtype=np.float64))
    t_x = np.where(x > 0, np.minimum(np.round(np.asarray(t_x, dtype=np.float64)), T), 0.0)
    rows, counts = np.unique(np.stack([x, t_x, T], axis=1), axis=0, return_counts=True)
    return rows[:, 0], rows[:, 1], rows[:, 2], counts.astype(np.float64)


class CustomerSample:
    """The latest `capacity` customers' (x, t_x, T) in days, as seen at their label
    snapshots: what the churn model fits BG/NBD on. A ring of float32 columns, so the
    model's snapshot stays small (12 bytes a customer)."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("the BG/NBD sample needs room for at least one customer")
        self.columns = np.zeros((3, capacity), dtype=np.float32)
        self.added = 0

    def add(self, x: float, t_x: float, T: float) -> None:
        self.columns[:, self.added % self.columns.shape[1]] = (x, t_x, T)
        self.added += 1

    def __len__(self) -> int:
        return min(self.added, self.columns.shape[1])

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        x, t_x, T = self.columns[:, :len(self)].astype(np.float64)
        return day_rows(x, t_x, T)
