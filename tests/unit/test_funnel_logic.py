"""The funnel's pure logic: session memory, the detectors,
the experiment test and the funnel settings."""

import math

import pytest

from operators.clock import Progress
from operators.funnel import CLICK, KPI_ORDERS, ORDER_CREATED, PAYMENT_FAILED, PAYMENT_SUCCEEDED, FunnelBucket, FunnelEvent, FunnelRules
from operators.funnel_detectors import DropoffConfig, DropoffDetector, PaymentFailureDetector, two_proportion_test
from shopstream.settings import ConfigError, Settings

MINUTE = 60_000
T0 = 1_763_683_200_000


# -- sessions -----------------------------------------------------------------------------------


def click(seconds, user, session, stage=0):
    return FunnelEvent(T0 + int(seconds * 1000), CLICK, user, session, None, stage, 0.0, "app", "zj", "ios", True)


def pay(seconds, user, order_id, succeeded):
    kind = PAYMENT_SUCCEEDED if succeeded else PAYMENT_FAILED
    return FunnelEvent(T0 + int(seconds * 1000), kind, user, None, order_id, 5 if succeeded else 0)


RULES = FunnelRules(window_ms=MINUTE, lateness_ms=0, session_timeout_ms=30 * MINUTE, order_retention_ms=60 * MINUTE)


def feed(bucket, events):
    """The events, and the stream moved just past the last of them, so all are applied
    (an event waits until the watermark is past it)."""
    return bucket.add(events, Progress({("clickstream", 0): max(e.ts for e in events) + 1}), 0)


def test_finished_sessions_are_dropped_after_the_timeout():
    bucket = FunnelBucket("0", RULES)
    feed(bucket, [click(n, f"u{n}", f"s{n}") for n in range(1000)])
    feed(bucket, [click(25 * 60, "u0", "s0")])  # s0 is still going 25 minutes later
    assert len(bucket.sessions) == 1000
    feed(bucket, [click(31 * 60 + 1000, "late", "x")])  # 30 minutes after the others' last events
    assert set(bucket.sessions) == {"s0", "x"}
    assert set(bucket.latest_session) == {"u0", "late"}
    feed(bucket, [click(56 * 60, "late", "x")])
    assert set(bucket.sessions) == {"x"} and not bucket.windows.keys() - {T0 + 56 * MINUTE}


def order(seconds, user, order_id):
    return FunnelEvent(T0 + int(seconds * 1000), ORDER_CREATED, user, None, order_id, 4)


def test_an_order_joins_the_same_session_whichever_partition_was_read_first():
    """The order (no session id) joins the user's latest session at its event time: the
    web session that started before it, even when those clicks are read after it."""
    app_click = click(1, "u1", "s-app")
    web_click = FunnelEvent(T0 + 3000, CLICK, "u1", "s-web", None, 0, 0.0, "web", "zj", "pc", True)
    placed = order(5, "u1", "o1")

    def channels_of_orders(batches):
        bucket = FunnelBucket("0", RULES)
        for batch in batches:
            bucket.add(batch, Progress({("clickstream", 0): 3000 + T0, ("orders", 0): 5000 + T0}), 0)
        (report,) = bucket.flush()
        return {channel: tallies[KPI_ORDERS] for partial in report.partials for channel, tallies in partial.kpi.items()}

    clicks_first = channels_of_orders([[app_click, web_click], [placed]])
    orders_first = channels_of_orders([[placed], [app_click], [web_click]])
    assert clicks_first == orders_first
    assert clicks_first.get("web") == 1 and not clicks_first.get("app")


def test_a_shopper_whose_payments_all_failed_counts_once_and_a_bot_retrying_cards_once():
    bucket = FunnelBucket("0", RULES)
    events = [click(1, "bot", "sb"), click(1, "u1", "s1"), click(1, "u2", "s2")]
    events += [pay(2 + n, "bot", f"ob{n}", n % 10 == 9) for n in range(40)]  # 36 declines, 4 successes
    events += [pay(3, "u1", "o1", False), pay(4, "u1", "o1", True), pay(5, "u2", "o2", False)]
    feed(bucket, events)
    (report,) = bucket.flush()
    (partial,) = report.partials
    assert (partial.payers, partial.payers_failed) == (3, 1)
    assert partial.kpi["app"][4:] == [5, 38]  # the KPI counts every payment


# -- detectors -----------------------------------------------------------------------------------


def stages(visits, rate):
    """Cumulative stage counts with `rate` conversion into product_view and a steady rest."""
    viewed = round(visits * rate)
    return [visits, viewed, viewed // 10, viewed // 20, viewed // 25, viewed // 30]


def test_dropoff_fires_on_a_meaningful_drop_and_clears_on_recovery():
    detector = DropoffDetector(DropoffConfig())
    out = []
    for minute in range(15):
        out += detector.observe(T0 + minute * MINUTE, "channel", "app", stages(1000, 0.7))
    assert out == []
    out += detector.observe(T0 + 15 * MINUTE, "channel", "app", stages(1000, 0.2))
    assert out == []  # one low window is not yet a drop
    (fired,) = detector.observe(T0 + 16 * MINUTE, "channel", "app", stages(1000, 0.2))
    assert (fired.key, fired.active, fired.severity) == ("channel:app:product_view", True, "warning")
    assert fired.value == 0.2 and fired.threshold == 0.35 and "app" in fired.summary
    assert detector.observe(T0 + 17 * MINUTE, "channel", "app", stages(1000, 0.3)) == []
    (cleared,) = detector.observe(T0 + 18 * MINUTE, "channel", "app", stages(1000, 0.65))
    assert (cleared.key, cleared.active) == ("channel:app:product_view", False)


def test_a_quiet_region_pages_nobody():
    detector = DropoffDetector(DropoffConfig())
    out = []
    for minute in range(15):
        out += detector.observe(T0 + minute * MINUTE, "region", "tibet", stages(150, 0.7))
    for minute in range(15, 25):
        out += detector.observe(T0 + minute * MINUTE, "region", "tibet", stages(150, 0.1))  # under min_sessions
    assert out == []


def test_payment_failures_page_on_a_jump_and_not_on_a_few_unlucky_shoppers():
    detector = PaymentFailureDetector()
    out = []
    for minute in range(30):
        out += detector.observe(T0 + minute * MINUTE, 10, 0 if minute % 3 else 1)
    out += detector.observe(T0 + 30 * MINUTE, 1, 3)  # 3 of 4 failed: too few to judge
    assert out == []
    for minute in range(31, 34):
        out += detector.observe(T0 + minute * MINUTE, 5, 6)
    (fired,) = out
    assert (fired.dedup_key, fired.active) == ("payment.failure_rate:all", True)
    assert fired.value >= 0.15 and fired.detail["shoppers_paying"] >= 30
    for minute in range(34, 45):
        out += detector.observe(T0 + minute * MINUTE, 10, 0)
    assert [(c.active, c.severity) for c in out] == [(True, fired.severity), (False, fired.severity)]


def test_two_proportion_test():
    z, p = two_proportion_test(100, 1000, 130, 1000)
    assert z == pytest.approx(2.10, abs=0.01) and p == pytest.approx(0.036, abs=0.001)
    assert two_proportion_test(0, 0, 5, 10) == (0.0, 1.0)
    assert math.isclose(two_proportion_test(50, 100, 50, 100)[1], 1.0)


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("env, variable", [
    ({"SHOPSTREAM_FUNNEL_ROLLING_S": "90"}, "SHOPSTREAM_FUNNEL_ROLLING_S"),
    ({"SHOPSTREAM_FUNNEL_SESSION_TIMEOUT_S": "30"}, "SHOPSTREAM_FUNNEL_SESSION_TIMEOUT_S"),
    ({"SHOPSTREAM_FUNNEL_DROPOFF_PCT": "100"}, "SHOPSTREAM_FUNNEL_DROPOFF_PCT"),
    ({"SHOPSTREAM_FUNNEL_BUCKETS": "0"}, "SHOPSTREAM_FUNNEL_BUCKETS"),
    ({"SHOPSTREAM_FUNNEL_WINDOW_S": "soon"}, "SHOPSTREAM_FUNNEL_WINDOW_S"),
])
def test_bad_funnel_settings_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(env)


def test_funnel_settings_reach_the_flow_config():
    from flows.funnel import FunnelConfig

    settings = Settings.from_env({"SHOPSTREAM_FUNNEL_WINDOW_S": "30", "SHOPSTREAM_FUNNEL_ROLLING_S": "600",
                                  "SHOPSTREAM_FUNNEL_PAYMENT_SPAN_S": "120", "SHOPSTREAM_PROCESSES": "12"})
    config = FunnelConfig.from_settings(settings)
    assert (config.rules.window_ms, config.rolling_ms, config.payment_failures.span_windows) == (30_000, 600_000, 4)
    assert config.buckets == 12


def test_a_bucket_batch_crosses_processes_as_itself():
    import pickle

    from flows.funnel import BucketBatch

    batch = BucketBatch("3", [click(1, "u1", "s1", 2), pay(2, "u1", "o1", True)], {("clickstream", 0): T0})
    copy = pickle.loads(pickle.dumps(batch))
    assert copy == batch and type(copy) is BucketBatch
    assert [type(event) for event in copy.events] == [FunnelEvent, FunnelEvent] and copy.events[0].stage == 2


def test_a_resumed_aggregator_forgets_buckets_that_no_longer_exist():
    from dataclasses import replace

    from flows.funnel import FunnelConfig, aggregator_for
    from operators.funnel import BucketReport

    config = FunnelConfig(max_event_ahead_ms=0, buckets=4)
    aggregator = aggregator_for(None, config)
    aggregator.add([BucketReport(str(b), T0 + MINUTE, []) for b in range(4)])
    resumed = aggregator_for(aggregator, replace(config, buckets=2))
    assert set(resumed.closed_through) == {"0", "1"} and resumed.rules.buckets == 2


def test_a_bucket_without_events_reports_as_soon_as_the_watermark_passes_a_window():
    """The first batch may hold only a partition that is ahead (clicks at 61 s); a bucket
    with no events of its own must still tell the aggregator that minute 0 is final once
    the stream's watermark passes it, not only when it closes minute 1."""
    bucket = FunnelBucket("0", RULES)
    ahead, behind = ("clickstream", 1), ("orders", 0)
    assert bucket.add([], Progress({ahead: T0 + 61_000}, {ahead: True, behind: False}, 2), 0) == []
    (report,) = bucket.add([], Progress({behind: T0 + 18_000}, {behind: True}, 2), 0)
    assert report.closed_through == T0 + MINUTE and report.partials == []
