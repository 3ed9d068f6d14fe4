"""The buckets' reports added up into window results, KPIs, experiments and alert candidates.

`FunnelAggregator` publishes a window once every bucket has closed it, in window
order: the funnel per (dimension, value) and the KPIs overall and per channel, for
the tumbling window and for the rolling view (the last `rolling_ms`, ending with
it). The rolling view adds up its tumbling windows: its stage counts are
session-windows (a session active in three of its minutes counts three times),
and it has no unique-visitor count, since unique visitors do not add up.
Events that arrived after their window was published are reported as
`late_events` (corrections) on the next window's overall records.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from operators.alerts import AlertCandidate
from operators.funnel import (
    KPI_FIELDS,
    KPI_GMV,
    KPI_ORDERS,
    KPI_PAID_ORDERS,
    KPI_PAYMENTS_FAILED,
    KPI_PAYMENTS_OK,
    KPI_PV,
    STAGES,
    BucketReport,
    SeriesKey,
)
from operators.funnel_detectors import DropoffDetector, PaymentFailureDetector, two_proportion_test

TUMBLING, ROLLING = "tumbling", "rolling"


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


@dataclass(frozen=True, slots=True)
class FunnelWindow:
    """Sessions per stage for one series and window (`metrics`, metric "funnel")."""

    view: str  # tumbling | rolling
    window_start: int
    window_end: int
    dimension: str  # all | channel | region | device
    value: str
    stages: tuple[int, ...]  # sessions that reached each stage or a later one
    late_events: int = 0

    @property
    def series(self) -> str:
        base = f"funnel:{self.dimension}:{self.value}"
        return base if self.view == TUMBLING else f"{base}:rolling"

    def to_dict(self) -> dict[str, Any]:
        conversion = {STAGES[i]: _ratio(self.stages[i], self.stages[i - 1]) for i in range(1, len(STAGES))}
        return {
            "metric": "funnel",
            "metric_id": f"{self.series}:{self.window_start}",
            "view": self.view,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "dimension": self.dimension,
            "value": self.value,
            "stages": dict(zip(STAGES, self.stages)),
            "conversion": conversion,
            "dropoff": {stage: None if rate is None else round(1 - rate, 4) for stage, rate in conversion.items()},
            "overall_conversion": _ratio(self.stages[-1], self.stages[0]),
            "late_events": self.late_events,
        }


@dataclass(frozen=True, slots=True)
class KpiWindow:
    """Shop KPIs for one window, overall or for one channel (`metrics`, metric "kpi")."""

    view: str
    window_start: int
    window_end: int
    dimension: str  # all | channel
    value: str
    gmv: float  # paid orders' amounts
    orders: int  # orders created
    paid_orders: int
    uv: int | None  # unique visitors (tumbling only)
    pv: int  # page and product views
    payments_succeeded: int
    payments_failed: int
    late_events: int = 0

    @property
    def series(self) -> str:
        base = "kpi:latest" if self.dimension == "all" else f"kpi:{self.dimension}:{self.value}"
        return base if self.view == TUMBLING else f"{base}:rolling"

    def to_dict(self) -> dict[str, Any]:
        attempts = self.payments_succeeded + self.payments_failed
        out = {
            "metric": "kpi",
            "metric_id": f"{self.series}:{self.window_start}",
            "view": self.view,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "dimension": self.dimension,
            "value": self.value,
            "gmv": round(self.gmv, 2),
            "orders": self.orders,
            "paid_orders": self.paid_orders,
            "aov": None if not self.paid_orders else round(self.gmv / self.paid_orders, 2),
            "pv": self.pv,
            "payments": attempts,
            "payment_success_rate": _ratio(self.payments_succeeded, attempts),
            "payment_failure_rate": _ratio(self.payments_failed, attempts),
            "late_events": self.late_events,
        }
        if self.uv is not None:
            out["uv"] = self.uv
        return out


@dataclass(frozen=True, slots=True)
class ExperimentResult:
    """Per-variant conversion to order of an A/B test, since the flow started counting
    (`metrics`, metric "experiment"); each variant against the control."""

    name: str
    window_end: int
    variants: tuple[tuple[str, int, int], ...]  # (variant, sessions, sessions that ordered)
    control: str
    alpha: float
    min_sessions: int

    @property
    def series(self) -> str:
        return f"experiment:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        counts = {variant: (sessions, orders) for variant, sessions, orders in self.variants}
        control_sessions, control_orders = counts[self.control]
        comparisons = []
        for variant, (sessions, orders) in counts.items():
            if variant == self.control:
                continue
            z, p_value = two_proportion_test(control_orders, control_sessions, orders, sessions)
            enough = min(sessions, control_sessions) >= self.min_sessions
            control_rate = control_orders / control_sessions if control_sessions else 0.0
            comparisons.append({
                "variant": variant,
                "lift": None if not control_rate or not sessions else round((orders / sessions) / control_rate - 1, 4),
                "z": round(z, 3),
                "p_value": round(p_value, 5),
                "enough_sessions": enough,
                "significant": enough and p_value < self.alpha,
            })
        return {
            "metric": "experiment",
            "metric_id": f"{self.series}:{self.window_end}",
            "name": self.name,
            "window_end": self.window_end,
            "control": self.control,
            "variants": {v: {"sessions": s, "orders": o, "conversion": _ratio(o, s)} for v, (s, o) in counts.items()},
            "comparisons": comparisons,
        }


FunnelOutput = FunnelWindow | KpiWindow | ExperimentResult | AlertCandidate


class _Totals:
    """One window's counts, added up over buckets (or over windows, for the rolling view)."""

    __slots__ = ("stage_hist", "users", "kpi", "payers", "payers_failed", "experiments")

    def __init__(self) -> None:
        self.stage_hist: dict[SeriesKey, list[int]] = {}
        self.users: dict[str, int] = {}
        self.kpi: dict[str, list] = {}
        self.payers = 0
        self.payers_failed = 0
        self.experiments: dict[tuple[str, str], list[int]] = {}  # (name, variant) -> [exposed, ordered]

    def add(self, stage_hist, users, kpi) -> None:
        for key, counts in stage_hist.items():
            mine = self.stage_hist.get(key)
            if mine is None:
                self.stage_hist[key] = list(counts)
            else:
                for i, n in enumerate(counts):
                    mine[i] += n
        for channel, n in users.items():
            self.users[channel] = self.users.get(channel, 0) + n
        for channel, tallies in kpi.items():
            mine = self.kpi.get(channel)
            if mine is None:
                self.kpi[channel] = list(tallies)
            else:
                for i in range(KPI_FIELDS):
                    mine[i] += tallies[i]


def reached(hist: list[int]) -> tuple[int, ...]:
    """Sessions by deepest stage -> sessions that reached each stage or a later one."""
    out, running = [], 0
    for n in reversed(hist):
        running += n
        out.append(running)
    return tuple(reversed(out))


@dataclass(frozen=True)
class AggregatorRules:
    buckets: int
    window_ms: int = 60_000
    rolling_ms: int = 900_000
    experiment_alpha: float = 0.05
    experiment_min_sessions: int = 1000  # per variant before a difference is called significant


@dataclass
class FunnelAggregator:
    rules: AggregatorRules
    payment_failures: PaymentFailureDetector = field(default_factory=PaymentFailureDetector)
    dropoff: DropoffDetector = field(default_factory=DropoffDetector)
    closed_through: dict[str, int] = field(default_factory=dict)  # bucket -> windows before this are final
    pending: dict[int, _Totals] = field(default_factory=dict)
    recent: deque = field(default_factory=deque)  # (window start, _Totals) in the rolling view
    late_events: int = 0  # corrections not yet reported
    published_through: int | None = None
    experiments: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # name -> variant -> [sessions, orders]
    experiments_changed: set[str] = field(default_factory=set)

    def add(self, reports: list[BucketReport]) -> list[FunnelOutput]:
        for report in reports:
            for partial in report.partials:
                totals = self.pending.get(partial.window_start)
                if totals is None:
                    totals = self.pending[partial.window_start] = _Totals()
                totals.add(partial.stage_hist, partial.users, partial.kpi)
                totals.payers += partial.payers
                totals.payers_failed += partial.payers_failed
                for variant, counts in partial.experiments.items():
                    mine = totals.experiments.get(variant)
                    if mine is None:
                        totals.experiments[variant] = list(counts)
                    else:
                        mine[0] += counts[0]
                        mine[1] += counts[1]
            self.late_events += report.late_events
            previous = self.closed_through.get(report.bucket, report.closed_through)
            self.closed_through[report.bucket] = max(previous, report.closed_through)
        if len(self.closed_through) < self.rules.buckets:
            return []  # a bucket has not closed anything yet: it may still hold any window
        return self._publish_through(min(self.closed_through.values()))

    def stamped_after(self) -> int | None:
        """Every alert candidate this aggregator emits from now on is stamped after this
        (the alert router's hold reads it as the funnel's progress); None until every
        bucket has reported.

        Candidates are stamped at the end of the window they judge, and windows start on
        multiples of `window_ms`. Windows ending by the oldest bucket's `closed_through`
        are published; any other window, pending or not yet reported, ends at the first
        window boundary after it at the earliest, so the promise reaches one ms short of
        that boundary: a full window ahead of `closed_through` itself, which is what lets
        the other producers' alerts go without waiting for the funnel's next window."""
        if len(self.closed_through) < self.rules.buckets:
            return None
        window_ms = self.rules.window_ms
        return (min(self.closed_through.values()) // window_ms + 1) * window_ms - 1

    def flush(self) -> list[FunnelOutput]:
        """The input has ended: publish everything still pending."""
        if not self.pending:
            return []
        return self._publish_through(max(self.pending) + self.rules.window_ms)

    def _experiment(self, name: str, variant: str) -> list[int]:
        self.experiments_changed.add(name)
        return self.experiments.setdefault(name, {}).setdefault(variant, [0, 0])

    def _publish_through(self, closed_through: int) -> list[FunnelOutput]:
        out: list[FunnelOutput] = []
        window_ms = self.rules.window_ms
        for start in sorted(s for s in self.pending if s + window_ms <= closed_through):
            out.extend(self._publish(start, self.pending.pop(start)))
        return out

    def _publish(self, start: int, totals: _Totals) -> list[FunnelOutput]:
        end = start + self.rules.window_ms
        late, self.late_events = self.late_events, 0
        out: list[FunnelOutput] = []
        out.extend(self._funnel_windows(TUMBLING, start, end, totals, late))
        out.extend(self._kpi_windows(TUMBLING, start, end, totals, late))
        self.recent.append((start, totals))
        rolling_start = end - self.rules.rolling_ms
        while self.recent and self.recent[0][0] < rolling_start:
            self.recent.popleft()
        rolling = _Totals()
        for _, window in self.recent:
            rolling.add(window.stage_hist, {}, window.kpi)
        out.extend(self._funnel_windows(ROLLING, rolling_start, end, rolling, 0))
        out.extend(self._kpi_windows(ROLLING, rolling_start, end, rolling, 0))
        out.extend(self.payment_failures.observe(end, totals.payers - totals.payers_failed, totals.payers_failed))
        for key in sorted(totals.stage_hist):
            out.extend(self.dropoff.observe(end, key[0], key[1], list(reached(totals.stage_hist[key]))))
        for (name, variant), (exposed, ordered) in sorted(totals.experiments.items()):
            counts = self._experiment(name, variant)
            counts[0] += exposed
            counts[1] += ordered
        for name in sorted(self.experiments_changed):
            out.append(self._experiment_result(name, end))
        self.experiments_changed.clear()
        self.published_through = end
        return out

    def _funnel_windows(self, view, start, end, totals: _Totals, late: int) -> list[FunnelWindow]:
        return [
            FunnelWindow(view, start, end, dimension, value, reached(hist), late if dimension == "all" else 0)
            for (dimension, value), hist in sorted(totals.stage_hist.items())
        ]

    @staticmethod
    def _overall_kpi(totals: _Totals) -> list:
        overall = [0, 0, 0, 0.0, 0, 0]
        for tallies in totals.kpi.values():
            for i in range(KPI_FIELDS):
                overall[i] += tallies[i]
        return overall

    def _kpi_windows(self, view, start, end, totals: _Totals, late: int) -> list[KpiWindow]:
        tumbling = view == TUMBLING
        series = [("all", "all", self._overall_kpi(totals))]
        series += [("channel", channel, tallies) for channel, tallies in sorted(totals.kpi.items())]
        return [
            KpiWindow(
                view, start, end, dimension, value, gmv=t[KPI_GMV], orders=t[KPI_ORDERS], paid_orders=t[KPI_PAID_ORDERS],
                uv=totals.users.get(value, 0) if tumbling else None, pv=t[KPI_PV],
                payments_succeeded=t[KPI_PAYMENTS_OK], payments_failed=t[KPI_PAYMENTS_FAILED],
                late_events=late if dimension == "all" else 0,
            )
            for dimension, value, t in series
        ]

    def _experiment_result(self, name: str, end: int) -> ExperimentResult:
        variants = self.experiments[name]
        control = "control" if "control" in variants else min(variants)
        return ExperimentResult(
            name, end, tuple((v, counts[0], counts[1]) for v, counts in sorted(variants.items())), control,
            self.rules.experiment_alpha, self.rules.experiment_min_sessions,
        )
