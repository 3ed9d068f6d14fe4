"""traffic.drop, input.dead_letters and lag on hand-built windows and samples."""

import pytest

from operators.alert_detectors import (
    DeadLetterConfig,
    DeadLetterDetector,
    InputWindow,
    LagConfig,
    LagDetector,
    LagSample,
    TrafficDropConfig,
    TrafficDropDetector,
)

MINUTE = 60_000
T0 = 1_763_683_200_000


def window(minute, events, dimension="channel", value="app", dead=0, topic="clickstream"):
    start = T0 + minute * MINUTE
    return InputWindow(topic, dimension, value, start, start + MINUTE, events, dead)


def feed(detector, windows):
    return [c for w in windows for c in detector.observe(w)]


def test_a_channel_going_dark_fires_once_critical_and_resolves_when_it_returns():
    detector = TrafficDropDetector(TrafficDropConfig())
    counts = [100, 95, 104, 98] * 5 + [0, 0, 0, 0, 0] + [97, 101]
    out = feed(detector, [window(m, n) for m, n in enumerate(counts)])
    assert [(c.active, c.severity, (c.ts - T0) // MINUTE) for c in out] == [(True, "critical", 22), (False, "warning", 26)]
    fired = out[0]
    assert fired.dedup_key == "traffic.drop:clickstream:channel:app"
    assert fired.summary == "clickstream channel 'app' traffic went dark: 0 events/minute, usually ~99"
    assert fired.value == 0 and fired.threshold == pytest.approx(29.7, abs=0.5) and fired.runbook


def test_a_dip_of_one_window_or_a_modest_drop_pages_nobody():
    detector = TrafficDropDetector(TrafficDropConfig())
    counts = [100] * 20 + [10] + [100] * 5 + [60] * 10 + [45] * 10
    assert feed(detector, [window(m, n) for m, n in enumerate(counts)]) == []


def test_quiet_series_are_not_judged_and_replayed_windows_count_once():
    detector = TrafficDropDetector(TrafficDropConfig())
    assert feed(detector, [window(m, 5 if m < 20 else 0) for m in range(30)]) == []  # too small to tell
    loud = TrafficDropDetector(TrafficDropConfig())
    windows = [window(m, 100) for m in range(20)] + [window(20, 0)]
    assert feed(loud, windows + windows[-1:]) == []  # the same low window twice is still one


def test_the_time_of_day_profile_scales_the_expectation():
    detector = TrafficDropDetector(TrafficDropConfig(profile_alpha=1.0, profile_min_windows=20, tz_offset_ms=0))
    # Yesterday: 400/min in hour 0, 130/min in hour 1.
    assert feed(detector, [window(m, 400 if m < 60 else 130) for m in range(120)]) == []
    # Today the fall from 400 to 100 at the same hour is what that hour looks like, not a drop...
    day = 24 * 60
    today = [window(day + m, 400 if m < 60 else 100) for m in range(40, 70)]
    assert feed(detector, today) == []
    # ...while without a day of history it is one.
    assert [c.active for c in feed(TrafficDropDetector(TrafficDropConfig(tz_offset_ms=0)), today)] == [True]


def test_dead_letter_share_jump_fires_and_clears():
    detector = DeadLetterDetector(DeadLetterConfig())
    quiet = [window(m, 1000, "all", "all", dead=2) for m in range(10)]
    burst = [window(10 + m, 400, "all", "all", dead=600) for m in range(3)]
    back = [window(13, 1000, "all", "all", dead=1)]
    out = feed(detector, quiet + burst + back)
    assert [(c.active, c.severity, c.key) for c in out] == [(True, "critical", "clickstream"), (False, "warning", "clickstream")]
    assert out[0].value == 0.6 and out[0].summary.startswith("clickstream: 60% of input unusable")


def test_a_few_dead_letters_page_nobody():
    detector = DeadLetterDetector(DeadLetterConfig())
    assert feed(detector, [window(m, 100, "all", "all", dead=10) for m in range(30)]) == []


def test_lag_must_last_before_it_fires_and_clears_under_half_the_threshold():
    detector = LagDetector(LagConfig(threshold_messages=1000, sustain_ms=30_000))
    samples = [(0, 5000), (10_000, 5000), (20_000, 900), (30_000, 5000), (50_000, 5000), (60_000, 5000),
               (70_000, 800), (80_000, 400)]
    out = [c for wall, lag in samples for c in detector.observe(LagSample(wall, "intake", lag), stream_ts=T0 + wall)]
    assert [(c.active, c.ts - T0, c.key) for c in out] == [(True, 60_000, "intake"), (False, 80_000, "intake")]
    assert out[0].summary == "flow intake is 5,000 messages behind its input (limit 1,000) for over 30 s"
