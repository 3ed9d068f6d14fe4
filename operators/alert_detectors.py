"""The router's own detectors, for what no other flow owns.

- `traffic.drop`: a topic or clickstream channel whose per-window input count falls
  far below its recent baseline (scaled for the time of day once a day of history
  exists), e.g. a channel that goes dark.
- `input.dead_letters`: the share of unusable input on a topic jumps.
- `lag`: a flow is more than a threshold of messages behind its input, for a while.

Input for the first two is the intake flow's `{"metric": "input"}` windows (every
recently active key reports every window, zeros included, so a dark channel shows
up as zeros, not silence). Each detector emits an `AlertCandidate` when its
condition starts and when it clears; the router does the rest.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

from operators.alerts import AlertCandidate
from operators.clock import StreamClock

HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class InputWindow:
    """One closed window of input counts from the intake flow (`metrics`, metric "input")."""

    topic: str
    dimension: str
    value: str
    window_start: int
    window_end: int
    events: int
    dead_letters: int
    late_events: int = 0  # arrived after their own window closed (a backlog across partitions)

    @property
    def volume(self) -> int:
        """Input that arrived in this window's turn: late events of earlier windows
        count here, so a partition running behind does not look like a drop."""
        return self.events + self.late_events

    @property
    def series(self) -> str:
        return self.topic if self.dimension == "all" else f"{self.topic} {self.dimension} {self.value}"

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "InputWindow":
        """Raises KeyError/TypeError/ValueError on a record that is not a usable input window."""
        return cls(
            topic=str(obj["topic"]),
            dimension=str(obj["dimension"]),
            value=str(obj["value"]),
            window_start=int(obj["window_start"]),
            window_end=int(obj["window_end"]),
            events=int(obj["events"]),
            dead_letters=int(obj.get("dead_letters", 0)),
            late_events=int(obj.get("late_events", 0)),
        )


@dataclass(frozen=True, slots=True)
class LagSample:
    """How many messages a flow is behind the end of its input partitions (summed)."""

    wall_ms: int
    flow: str
    messages: float


# -- traffic.drop --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficDropConfig:
    drop_ratio: float = 0.3  # a window under 30% of the expected count is low
    dark_ratio: float = 0.05  # under 5%: the channel went dark, critical
    recover_ratio: float = 0.6  # back to 60% of expected clears the alert
    confirm_windows: int = 2  # consecutive low windows before firing
    baseline_windows: int = 30  # the recent baseline: median of this many normal windows
    min_baseline_windows: int = 10
    min_expected: float = 20.0  # below this many events per window, noise rules: no judgement
    tz_offset_ms: int = 8 * HOUR_MS  # the shop's time of day (China)
    profile_alpha: float = 0.05  # per-hour-of-day profile, learned from normal windows
    profile_min_windows: int = 30  # an hour's typical count is used once learned from this many


@dataclass
class _SeriesState:
    recent: deque = field(default_factory=deque)  # (window_start, events) of normal windows
    hour_profile: dict[int, float] = field(default_factory=dict)  # hour of day -> typical count
    hour_windows: dict[int, int] = field(default_factory=dict)  # hour of day -> windows learned
    last_window: int = -1
    low_windows: int = 0
    alerting: bool = False


class TrafficDropDetector:
    RULE = "traffic.drop"

    def __init__(self, config: TrafficDropConfig):
        self.config = config
        self.series: dict[str, _SeriesState] = {}

    def _hour(self, ts: int) -> int:
        return ((ts + self.config.tz_offset_ms) // HOUR_MS) % 24

    def expected(self, state: _SeriesState, window_start: int) -> float | None:
        """Median of recent normal windows; once every hour involved has a typical
        count, each window is first divided by its hour's typical count and the
        median is scaled to this hour's, so an hour that is usually quieter expects less."""
        if len(state.recent) < self.config.min_baseline_windows:
            return None
        profile = {
            hour: typical
            for hour, typical in state.hour_profile.items()
            if state.hour_windows[hour] >= self.config.profile_min_windows
        }
        now_typical = profile.get(self._hour(window_start))
        typicals = [profile.get(self._hour(start)) for start, _ in state.recent]
        if now_typical and all(typicals):
            return now_typical * statistics.median(e / t for (_, e), t in zip(state.recent, typicals))
        return statistics.median(events for _, events in state.recent)

    def _learn(self, state: _SeriesState, window: InputWindow) -> None:
        state.recent.append((window.window_start, window.volume))
        while len(state.recent) > self.config.baseline_windows:
            state.recent.popleft()
        hour = self._hour(window.window_start)
        old = state.hour_profile.get(hour)
        alpha = self.config.profile_alpha
        state.hour_profile[hour] = window.volume if old is None else old + alpha * (window.volume - old)
        state.hour_windows[hour] = state.hour_windows.get(hour, 0) + 1

    def observe(self, window: InputWindow) -> list[AlertCandidate]:
        state = self.series.setdefault(window.series, _SeriesState())
        if window.window_start <= state.last_window:
            return []  # a window re-sent after a replay upstream
        state.last_window = window.window_start
        expected = self.expected(state, window.window_start)
        if expected is None or (expected < self.config.min_expected and not state.alerting):
            state.low_windows = 0
            self._learn(state, window)
            return []
        if state.alerting:
            if window.volume >= self.config.recover_ratio * expected:
                state.alerting = False
                state.low_windows = 0
                self._learn(state, window)
                return [self._candidate(window, expected, active=False)]
            return []
        if window.volume < self.config.drop_ratio * expected:
            state.low_windows += 1
            if state.low_windows >= self.config.confirm_windows:
                state.alerting = True
                return [self._candidate(window, expected, active=True)]
            return []
        state.low_windows = 0
        self._learn(state, window)
        return []

    def _candidate(self, window: InputWindow, expected: float, active: bool) -> AlertCandidate:
        minutes = (window.window_end - window.window_start) / 60_000
        per = "minute" if minutes == 1 else f"{minutes:g} min"
        what = window.topic if window.dimension == "all" else f"{window.topic} {window.dimension} {window.value!r}"
        dark = window.volume <= self.config.dark_ratio * expected
        if active:
            state = "went dark" if dark else "dropped"
            summary = f"{what} traffic {state}: {window.volume} events/{per}, usually ~{expected:.0f}"
        else:
            summary = f"{what} traffic back: {window.volume} events/{per} (usually ~{expected:.0f})"
        return AlertCandidate(
            ts=window.window_end,
            rule=self.RULE,
            key=window.series.replace(" ", ":"),
            active=active,
            severity="critical" if dark else "warning",
            summary=summary,
            value=window.volume,
            threshold=round(self.config.drop_ratio * expected, 1),
            runbook=(
                f"Check the {what} producers (app/web release, CDN, SDK, ingestion gateway) and the "
                "intake dead letters; compare with other channels to tell an outage from a real lull."
            ),
            detail={"expected": round(expected, 1), "window_start": window.window_start},
        )


# -- input.dead_letters --------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterConfig:
    min_share: float = 0.02  # at least 2% of a topic's input unusable...
    jump_factor: float = 5.0  # ...and 5x its usual share
    min_dead_letters: int = 20  # per window: a handful of bad events is not a page
    critical_share: float = 0.5  # half the input unusable: critical
    baseline_alpha: float = 0.05


@dataclass
class _DeadLetterState:
    baseline_share: float = 0.0
    last_window: int = -1
    alerting: bool = False
    threshold: float = 0.0


class DeadLetterDetector:
    RULE = "input.dead_letters"

    def __init__(self, config: DeadLetterConfig):
        self.config = config
        self.topics: dict[str, _DeadLetterState] = {}

    def observe(self, window: InputWindow) -> list[AlertCandidate]:
        if window.dimension != "all":
            return []
        state = self.topics.setdefault(window.topic, _DeadLetterState())
        if window.window_start <= state.last_window:
            return []
        state.last_window = window.window_start
        total = window.events + window.dead_letters
        share = window.dead_letters / total if total else 0.0
        threshold = max(self.config.min_share, self.config.jump_factor * state.baseline_share)
        if state.alerting:
            if share < state.threshold / 2 or window.dead_letters < self.config.min_dead_letters / 2:
                state.alerting = False
                return [self._candidate(window, share, state.threshold, active=False)]
            return []
        if share > threshold and window.dead_letters >= self.config.min_dead_letters:
            state.alerting = True
            state.threshold = threshold
            return [self._candidate(window, share, threshold, active=True)]
        state.baseline_share += self.config.baseline_alpha * (share - state.baseline_share)
        return []

    def _candidate(self, window: InputWindow, share: float, threshold: float, active: bool) -> AlertCandidate:
        if active:
            summary = (
                f"{window.topic}: {share:.0%} of input unusable ({window.dead_letters} dead letters "
                f"in one window), usually under {threshold:.0%}"
            )
        else:
            summary = f"{window.topic}: unusable input back to {share:.1%}"
        return AlertCandidate(
            ts=window.window_end,
            rule=self.RULE,
            key=window.topic,
            active=active,
            severity="critical" if share >= self.config.critical_share else "warning",
            summary=summary,
            value=round(share, 4),
            threshold=round(threshold, 4),
            runbook=(
                f"Read the newest `dead-letters` records with source_topic={window.topic}: the `error` "
                "names the field; find the producer release that changed the schema and roll it back."
            ),
            detail={"dead_letters": window.dead_letters, "events": window.events},
        )


# -- lag -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LagConfig:
    threshold_messages: float = 100_000  # behind by more than this...
    sustain_ms: int = 60_000  # ...for this long (wall clock: lag is a wall-clock matter)
    critical_factor: float = 10.0  # ten times the threshold: critical


@dataclass
class _LagState:
    above_since: int | None = None
    alerting: bool = False


class LagDetector:
    RULE = "lag"

    def __init__(self, config: LagConfig):
        self.config = config
        self.flows: dict[str, _LagState] = {}

    def observe(self, sample: LagSample, stream_ts: int) -> list[AlertCandidate]:
        """`stream_ts` stamps the candidate: the stream's event time when the lag was seen,
        so a wall-clock reading never drags the router's event-time clock."""
        state = self.flows.setdefault(sample.flow, _LagState())
        limit = self.config.threshold_messages
        if sample.messages > limit:
            if state.above_since is None:
                state.above_since = sample.wall_ms
            if not state.alerting and sample.wall_ms - state.above_since >= self.config.sustain_ms:
                state.alerting = True
                return [self._candidate(sample, stream_ts, active=True)]
            return []
        state.above_since = None
        if state.alerting and sample.messages < limit / 2:
            state.alerting = False
            return [self._candidate(sample, stream_ts, active=False)]
        return []

    def _candidate(self, sample: LagSample, stream_ts: int, active: bool) -> AlertCandidate:
        limit = self.config.threshold_messages
        if active:
            summary = (
                f"flow {sample.flow} is {sample.messages:,.0f} messages behind its input "
                f"(limit {limit:,.0f}) for over {self.config.sustain_ms // 1000} s"
            )
        else:
            summary = f"flow {sample.flow} caught up ({sample.messages:,.0f} messages behind)"
        return AlertCandidate(
            ts=stream_ts,
            rule=self.RULE,
            key=sample.flow,
            active=active,
            severity="critical" if sample.messages >= self.config.critical_factor * limit else "warning",
            summary=summary,
            value=sample.messages,
            threshold=limit,
            runbook=(
                f"Check `shopstream run` logs for {sample.flow}: restarts or a slow step; add processes "
                "(SHOPSTREAM_PROCESSES, partitions >= workers) or shed load."
            ),
        )


# -- all three, one state ------------------------------------------------------------------


@dataclass
class InputDetectors:
    """The detectors as one piece of state, with a stream clock for stamping lag alerts."""

    traffic: TrafficDropDetector
    dead_letters: DeadLetterDetector
    lag: LagDetector
    clock: StreamClock = field(default_factory=lambda: StreamClock(lateness_ms=0))

    def resume(self, now_ms: int) -> None:
        self.clock.touch(now_ms)

    def add(self, items: list[InputWindow | LagSample], now_ms: int) -> list[AlertCandidate]:
        out: list[AlertCandidate] = []
        windows = sorted((i for i in items if isinstance(i, InputWindow)), key=lambda w: (w.window_end, w.series))
        for window in windows:
            self.clock.observe(window.window_end, now_ms)
            out += self.traffic.observe(window)
            out += self.dead_letters.observe(window)
        for sample in (i for i in items if isinstance(i, LagSample)):
            stream_ts = self.clock.watermark(now_ms)
            out += self.lag.observe(sample, sample.wall_ms if stream_ts is None else stream_ts)
        return out
