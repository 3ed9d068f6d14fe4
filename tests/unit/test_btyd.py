"""BG/NBD: the fit recovers the parameters it simulated from, matches the published CDNOW
estimates, and its per-customer probabilities behave as the model says they must."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from operators.btyd import BgNbd, CustomerSample, day_rows, quiet_log_odds
from operators.churn_model import ChurnModel, ModelRules
from operators.rfm import DAY_MS, RfmRules

TRUE = BgNbd(r=0.8, alpha=20.0, a=0.9, b=3.0)  # days


def simulate(model: BgNbd, customers: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each customer's (x, t_x, T) after an age drawn in [60, 360] days, from the BG/NBD story."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(model.r, 1 / model.alpha, customers)
    drops = rng.beta(model.a, model.b, customers)
    ages = rng.uniform(60, 360, customers)
    x, t_x = np.zeros(customers), np.zeros(customers)
    for i in range(customers):
        t = 0.0
        while True:
            t += rng.exponential(1 / rates[i])
            if t > ages[i]:
                break
            x[i] += 1
            t_x[i] = t
            if rng.random() < drops[i]:
                break
    return x, t_x, ages


def test_the_fit_recovers_the_parameters_it_simulated_from():
    fitted = BgNbd.fit(*simulate(TRUE, 6_000, seed=1))
    for name in ("r", "alpha", "a", "b"):
        assert getattr(fitted, name) == pytest.approx(getattr(TRUE, name), rel=0.25), name


def test_day_rows_are_a_weighted_summary_with_the_same_fit():
    x, t_x, T = simulate(TRUE, 3_000, seed=2)
    T, t_x = np.round(T), np.where(x > 0, np.round(t_x), 0.0)
    rows = day_rows(x, t_x, T)
    assert len(rows[0]) < len(x) and rows[3].sum() == len(x)
    whole, summarised = BgNbd.fit(x, t_x, T), BgNbd.fit(*rows)
    assert np.allclose(whole, summarised, rtol=1e-3)


def cdnow_summary() -> Path:
    """The CDNOW customer summary that ships in the `lifetimes` wheel (a test dependency)."""
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.submodule_search_locations, "install the test extras: pip install -e '.[test]'"
    return Path(spec.submodule_search_locations[0]) / "datasets" / "cdnow_customers_summary.csv"


def test_the_published_cdnow_estimates():
    # Fader, Hardie & Lee (2005), 2,357 CDNOW customers over 39 weeks:
    # r 0.243, alpha 4.414 (weeks), a 0.793, b 2.426.
    rows = np.genfromtxt(cdnow_summary(), delimiter=",", skip_header=1)
    fitted = BgNbd.fit(rows[:, 1], rows[:, 2] * 7, rows[:, 3] * 7)
    assert fitted.r == pytest.approx(0.243, abs=0.002)
    assert fitted.alpha / 7 == pytest.approx(4.414, abs=0.02)
    assert fitted.a == pytest.approx(0.793, abs=0.005)
    assert fitted.b == pytest.approx(2.426, abs=0.02)


def test_probabilities_follow_the_model():
    one_purchase = TRUE.p_alive(0, 0, 100)
    assert one_purchase == 1.0  # no repeat purchase: no chance to have dropped out
    # A long silence after a last purchase makes death likelier, the more so for a frequent buyer.
    recent, silent = TRUE.p_alive([5, 5], [95, 20], [100, 100])
    frequent_silent = TRUE.p_alive(20, 20, 100)
    assert recent > silent > frequent_silent
    # No purchase within a longer horizon is less likely.
    short, long = TRUE.p_no_purchase([3, 3], [50, 50], [100, 100], 30), TRUE.p_no_purchase(3, 50, 100, 300)
    assert short[0] > long
    # Dead or alive-and-quiet, computed from the definitions:
    alive = TRUE.p_alive(3, 50, 100)
    quiet = ((TRUE.alpha + 100) / (TRUE.alpha + 130)) ** (TRUE.r + 3)
    assert TRUE.p_no_purchase(3, 50, 100, 30) == pytest.approx(1 - alive + alive * quiet, rel=1e-12)


@pytest.mark.parametrize("x,t_x,T,h", [(0, 0, 10, 90), (3, 50, 100, 30), (40, 200, 300, 90), (2, 299, 300, 5)])
def test_the_scalar_log_odds_match_the_array_probability(x, t_x, T, h):
    p = float(TRUE.p_no_purchase(x, t_x, T, h))
    assert quiet_log_odds(TRUE, x, t_x, T, h) == pytest.approx(math.log(p / (1 - p)), rel=1e-6, abs=1e-9)


def test_the_log_odds_of_a_customer_surely_gone_are_clipped():
    assert TRUE.p_no_purchase(40, 1, 300, 90) == 1.0  # forty purchases in a day, then 300 silent days
    assert quiet_log_odds(TRUE, 40, 1, 300, 90) == 30.0


def test_expected_purchases_grow_with_time():
    assert 0 < TRUE.expected_purchases(30) < TRUE.expected_purchases(300)


def test_the_fit_refuses_impossible_customers():
    with pytest.raises(ValueError):
        BgNbd.fit([1], [20], [10])  # the last purchase after the customer's age
    with pytest.raises(ValueError):
        BgNbd.fit([0], [5], [10])  # no repeat purchase but a repeat time


def test_the_sample_keeps_the_latest_customers():
    sample = CustomerSample(3)
    for i in range(5):
        sample.add(i, 0 if i == 0 else i, 10 + i)
    x, _, T, counts = sample.rows()
    assert len(sample) == 3 and sorted(x) == [2, 3, 4] and sorted(T) == [12, 13, 14] and counts.sum() == 3


def test_the_churn_model_scores_with_bgnbd_until_it_learned_both_outcomes():
    names = RfmRules().feature_names
    model = ChurnModel(names, ModelRules(batch_size=8, min_labels_per_class=20, btyd_refit_ms=DAY_MS,
                                         horizon_ms=60 * DAY_MS))

    def vector(orders: int, recency_days: float, age_days: float) -> list[float]:
        x = [0.0] * len(names)
        x[names.index("orders_total")] = math.log1p(orders)
        x[names.index("recency_days")] = math.log1p(recency_days)
        x[names.index("order_age_days")] = math.log1p(age_days)
        return x

    x, t_x, T = simulate(TRUE, 800, seed=3)
    for day, customer in enumerate(zip(x, t_x, T)):
        repeat, span, age = customer
        model.observe(vector(int(repeat) + 1, age - span, age), now=day * DAY_MS // 100)
    assert model.btyd is not None and model.btyd_sample.added == 800
    assert model.btyd.r == pytest.approx(TRUE.r, rel=0.5)
    lapsed, regular = vector(6, 200, 300), vector(6, 2, 300)
    assert model.score(lapsed) > 0.9 > 0.5 > model.score(regular)  # BG/NBD's probabilities
    assert model.score(lapsed) == pytest.approx(float(model.btyd.p_no_purchase(5, 100, 300, 60)), rel=1e-4)
    assert model.p_alive(regular) > model.p_alive(lapsed)
    # Only active labels (the first to resolve, or a horizon longer than the history): still BG/NBD.
    for step in range(200):
        model.learn(regular if step % 2 else lapsed, False, now=DAY_MS * 10)
    assert not model.trained and model.score(lapsed) > 0.9
    for step in range(20):
        model.learn(lapsed, True, now=DAY_MS * 11)
    model.learn_waiting()
    assert model.trained  # now the regression (calibrated) scores
