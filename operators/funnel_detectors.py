"""Detectors on the funnel's closed windows: `payment.failure_rate` and `funnel.dropoff`.

`payment.failure_rate` counts shoppers, not payment attempts: a shopper who tried
to pay in a window failed if none of their payments in it succeeded. So a card-testing
bot's hundred declines (fraud's business) or a shopper's retries do not read as
the payment service failing, while a gateway outage, which fails everyone, does.

Both judge a window against a baseline learned from earlier windows that were not
alerting (decayed sums, so the baseline follows slow change), and both need a
statistically meaningful deviation from enough data: a one-sided binomial z-score
of the observed count against the baseline rate, and a minimum sample, so a quiet
region or a handful of payments never pages anyone. Each emits an `AlertCandidate`
when its condition starts and when it clears; the alert router does the rest.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from operators.alerts import AlertCandidate
from operators.funnel import STAGES


def deficit_z(observed: int, trials: int, expected_rate: float) -> float:
    """How many standard errors `observed` of `trials` lies below `expected_rate` (binomial)."""
    if trials <= 0 or not 0.0 < expected_rate < 1.0:
        return 0.0
    mean = trials * expected_rate
    return (mean - observed) / math.sqrt(trials * expected_rate * (1 - expected_rate))


# -- payment.failure_rate -------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentFailureConfig:
    span_windows: int = 5  # judged over the last five windows: a minute holds too few payments
    min_attempts: int = 30  # shoppers who tried to pay in the span, or no judgement
    min_failures: int = 10  # shoppers whose payments all failed
    min_rate: float = 0.15  # never alert below this failure rate...
    jump_factor: float = 3.0  # ...nor below this multiple of the usual rate
    z_min: float = 4.0  # failures this many standard errors above the usual rate
    critical_rate: float = 0.5
    baseline_alpha: float = 0.05  # per window
    prior_rate: float = 0.05  # the usual rate assumed before anything is learned...
    prior_attempts: float = 100.0  # ...worth this many payments


@dataclass
class PaymentFailureDetector:
    RULE = "payment.failure_rate"
    KEY = "all"

    config: PaymentFailureConfig = field(default_factory=PaymentFailureConfig)
    recent: deque = field(default_factory=deque)  # (succeeded, failed) of the last windows
    baseline_failed: float = -1.0
    baseline_attempts: float = -1.0
    alerting: bool = False
    severity: str = "warning"  # of the episode under way: its resolve carries the same

    def __post_init__(self) -> None:
        if self.baseline_attempts < 0:
            self.baseline_attempts = self.config.prior_attempts
            self.baseline_failed = self.config.prior_rate * self.config.prior_attempts

    @property
    def usual_rate(self) -> float:
        return max(0.005, self.baseline_failed / self.baseline_attempts)

    def observe(self, window_end: int, succeeded: int, failed: int) -> list[AlertCandidate]:
        """`succeeded`/`failed`: shoppers in the window with a successful payment / only failed ones."""
        config = self.config
        self.recent.append((succeeded, failed))
        while len(self.recent) > config.span_windows:
            self.recent.popleft()
        span_failed = sum(f for _, f in self.recent)
        attempts = span_failed + sum(s for s, _ in self.recent)
        rate = span_failed / attempts if attempts else 0.0
        usual = self.usual_rate
        threshold = max(config.min_rate, config.jump_factor * usual)
        if self.alerting:
            clear_below = max(config.min_rate / 2, 2 * usual)
            if rate < clear_below:
                self.alerting = False
                return [self._candidate(window_end, rate, span_failed, attempts, clear_below, usual, active=False)]
            return []
        z = -deficit_z(span_failed, attempts, usual)
        if (attempts >= config.min_attempts and span_failed >= config.min_failures and rate >= threshold
                and z >= config.z_min):
            self.alerting = True
            self.severity = "critical" if rate >= config.critical_rate else "warning"
            return [self._candidate(window_end, rate, span_failed, attempts, threshold, usual, active=True)]
        keep = 1 - config.baseline_alpha
        self.baseline_failed = self.baseline_failed * keep + failed
        self.baseline_attempts = self.baseline_attempts * keep + succeeded + failed
        return []

    def _candidate(self, ts: int, rate: float, failed: int, attempts: int, threshold: float, usual: float,
                   active: bool) -> AlertCandidate:
        if active:
            summary = (f"payments failing: {rate:.0%} of {attempts} shoppers who tried to pay recently could not, "
                       f"usually {usual:.1%}")
        else:
            summary = f"payment failures back to {rate:.1%} of {attempts} paying shoppers (usually {usual:.1%})"
        return AlertCandidate(
            ts=ts, rule=self.RULE, key=self.KEY, active=active,
            severity=self.severity,
            summary=summary, value=round(rate, 4), threshold=round(threshold, 4),
            runbook="Check the payment gateway and issuers' status pages, the failure_reason of recent failed "
                    "payments, and the latest payment-service release; fail over to the backup gateway.",
            detail={"shoppers_failed": failed, "shoppers_paying": attempts, "usual_rate": round(usual, 4)},
        )


# -- funnel.dropoff --------------------------------------------------------------------------


@dataclass(frozen=True)
class DropoffConfig:
    min_sessions: int = 200  # sessions at the previous stage in the window, or no judgement
    drop_ratio: float = 0.5  # conversion under half its baseline...
    z_min: float = 4.0  # ...and this many standard errors under it
    recover_ratio: float = 0.8  # back to 80% of the baseline clears the alert
    confirm_windows: int = 2  # consecutive low windows before firing
    baseline_alpha: float = 0.1  # per window
    min_baseline_windows: int = 10  # windows learned before a stage is judged
    stale_windows: int = 10  # an alerting series without sessions this many windows is cleared


@dataclass
class _StageBaseline:
    converted: float = 0.0  # decayed sessions that reached the stage...
    entered: float = 0.0  # ...of the decayed sessions at the previous stage
    windows: int = 0
    low_windows: int = 0
    idle_windows: int = 0
    alerting: bool = False


_RUNBOOK = {
    "product_view": "Check search and recommendations (empty results, slow listing pages) for this {what}.",
    "add_to_cart": "Check product pages and the cart service for this {what}: prices, stock shown, add-to-cart errors.",
    "checkout": "Check the cart page and the checkout entry for this {what}: coupons, shipping quotes, login.",
    "order": "Check order submission for this {what}: stock reservation, address and coupon validation errors.",
    "payment": "Check the payment step for this {what}: gateway errors, payment methods, the mini-program jump.",
}


@dataclass
class DropoffDetector:
    RULE = "funnel.dropoff"

    config: DropoffConfig = field(default_factory=DropoffConfig)
    series: dict[tuple[str, str, int], _StageBaseline] = field(default_factory=dict)

    def observe(self, window_end: int, dimension: str, value: str, stages: list[int]) -> list[AlertCandidate]:
        """`stages`: sessions that reached each stage (cumulative) in the window."""
        out = []
        config = self.config
        for stage in range(1, len(STAGES)):
            entered, converted = stages[stage - 1], stages[stage]
            state = self.series.get((dimension, value, stage))
            if state is None:
                state = self.series[(dimension, value, stage)] = _StageBaseline()
            usual = state.converted / state.entered if state.entered else 0.0
            rate = converted / entered if entered else 0.0
            if state.alerting:
                state.idle_windows = 0 if entered else state.idle_windows + 1
                if (entered and rate >= config.recover_ratio * usual) or state.idle_windows >= config.stale_windows:
                    state.alerting = False
                    state.low_windows = 0
                    out.append(self._candidate(window_end, dimension, value, stage, converted, entered, usual, False))
                continue
            judged = entered >= config.min_sessions and state.windows >= config.min_baseline_windows and usual > 0
            if judged and rate < config.drop_ratio * usual and deficit_z(converted, entered, usual) >= config.z_min:
                state.low_windows += 1
                if state.low_windows >= config.confirm_windows:
                    state.alerting = True
                    out.append(self._candidate(window_end, dimension, value, stage, converted, entered, usual, True))
                continue
            state.low_windows = 0
            if entered:
                keep = 1 - config.baseline_alpha
                state.converted = state.converted * keep + converted
                state.entered = state.entered * keep + entered
                state.windows += 1
        return out

    def _candidate(self, ts: int, dimension: str, value: str, stage: int, converted: int, entered: int,
                   usual: float, active: bool) -> AlertCandidate:
        what = "shop" if dimension == "all" else f"{dimension} {value}"
        name, previous = STAGES[stage], STAGES[stage - 1]
        rate = converted / entered if entered else 0.0
        if active:
            summary = (f"{what}: {previous} -> {name} conversion fell to {rate:.1%} ({converted} of {entered} "
                       f"sessions), usually {usual:.1%}")
        else:
            summary = f"{what}: {previous} -> {name} conversion back to {rate:.1%} (usually {usual:.1%})"
        return AlertCandidate(
            ts=ts, rule=self.RULE, key=f"{dimension}:{value}:{name}", active=active,
            severity="critical" if dimension == "all" else "warning",
            summary=summary, value=round(rate, 4), threshold=round(self.config.drop_ratio * usual, 4),
            runbook=_RUNBOOK[name].format(what=what if dimension != "all" else "shop"),
            detail={"stage": name, "sessions": entered, "converted": converted, "usual_rate": round(usual, 4)},
        )


# -- A/B experiments -------------------------------------------------------------------------


def two_proportion_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p-value) of the difference between x1/n1 and x2/n2 (pooled z-test)."""
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    pooled = (x1 + x2) / (n1 + n2)
    if pooled in (0.0, 1.0):
        return 0.0, 1.0
    z = (x2 / n2 - x1 / n1) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return z, math.erfc(abs(z) / math.sqrt(2))
