from operators.clock import PartitionStatus, Progress, StreamClock
from operators.dead_letters import DeadLetter
from operators.events import parse_event
from operators.input_counts import InputCounter, tally_batch

MINUTE = 60_000


def click(ts, channel="app", n=0):
    return parse_event(
        "clickstream",
        {
            "event_id": f"c{ts}-{n}",
            "ts": ts,
            "user_id": "u",
            "session_id": "s",
            "type": "page_view",
            "channel": channel,
            "region": "east",
            "device": "ios",
        },
    )


def order(ts):
    return parse_event(
        "orders",
        {"event_id": f"o{ts}", "ts": ts, "order_id": "o", "user_id": "u", "status": "paid", "items": [], "amount": 1},
    )


def dead(offset):
    return DeadLetter(ts=0, source_topic="orders", partition=0, offset=offset, error="bad JSON", raw="{")


def counts_by_key(results):
    return {(r.series, r.window_start): (r.events, r.dead_letters, r.late_events) for r in results}


def test_clock_advances_with_wall_time_when_input_is_quiet():
    clock = StreamClock(lateness_ms=1000)
    clock.observe(10_000, now_ms=500_000)
    assert clock.watermark(500_000) == 9_000
    assert clock.watermark(503_000) == 12_000
    assert clock.wall_time_when(20_000, now_ms=500_000) == 511_000


def test_tally_collapses_a_batch_per_key_and_window():
    tallies = tally_batch([click(1), click(2, "web"), click(MINUTE + 1), order(5), dead(1), dead(2)], MINUTE)
    by_key = {(t.key, t.window_start): t for t in tallies}
    assert by_key[(("clickstream", "all", "all"), 0)].events == 2
    assert by_key[(("clickstream", "channel", "web"), 0)].events == 1
    assert by_key[(("clickstream", "all", "all"), MINUTE)].max_ts == MINUTE + 1
    assert by_key[(("orders", "all", "all"), 0)].events == 1
    assert by_key[(("orders", "all", "all"), None)].dead_letters == 2


def test_windows_close_on_event_time_with_exact_counts():
    counter = InputCounter(MINUTE, lateness_ms=0, key_idle_windows=5)
    now = 1_000_000_000
    closed = counter.add(tally_batch([click(ts) for ts in range(0, 3 * MINUTE, 1000)], MINUTE), now)
    got = counts_by_key(closed)
    # Two full windows closed by event time; the third is still open.
    assert got[("input:clickstream", 0)] == (60, 0, 0)
    assert got[("input:clickstream", MINUTE)] == (60, 0, 0)
    assert ("input:clickstream", 2 * MINUTE) not in got


def test_quiet_input_closes_windows_by_wall_clock():
    counter = InputCounter(MINUTE, lateness_ms=0, key_idle_windows=5)
    now = 1_000_000_000
    assert counter.add(tally_batch([click(10)], MINUTE), now) == []
    wake = counter.next_wake_ms(now)
    assert wake == now + MINUTE - 10
    assert counts_by_key(counter.advance(wake)) == {
        ("input:clickstream", 0): (1, 0, 0),
        ("input:clickstream:channel:app", 0): (1, 0, 0),
    }


def test_a_channel_that_goes_dark_reports_zeros_then_is_forgotten():
    counter = InputCounter(MINUTE, lateness_ms=0, key_idle_windows=2)
    now = 0
    events = [click(1, "web")] + [click(ts, "app") for ts in range(0, 6 * MINUTE, 10_000)]
    results = counter.add(tally_batch(events, MINUTE), now)
    web = {r.window_start: r.events for r in results if r.series == "input:clickstream:channel:web"}
    assert web == {0: 1, MINUTE: 0, 2 * MINUTE: 0}


def test_late_events_are_counted_not_dropped():
    counter = InputCounter(MINUTE, lateness_ms=0, key_idle_windows=5)
    counter.add(tally_batch([click(ts) for ts in range(0, 2 * MINUTE, 1000)], MINUTE), 0)
    # Window 0 is closed; two more of its events arrive, then the next window closes.
    counter.add(tally_batch([click(5, n=1), click(6, n=1)], MINUTE), 0)
    closed = counter.add(tally_batch([click(2 * MINUTE + 1)], MINUTE), 0)
    assert counts_by_key(closed)[("input:clickstream", MINUTE)] == (60, 0, 2)


def test_dead_letters_count_in_the_current_stream_window():
    counter = InputCounter(MINUTE, lateness_ms=0, key_idle_windows=5)
    counter.add(tally_batch([order(MINUTE + 5), dead(1), dead(2)], MINUTE), 0)
    closed = counter.flush()
    assert counts_by_key(closed)[("input:orders", MINUTE)] == (1, 2, 0)


def test_flush_closes_every_open_window():
    counter = InputCounter(MINUTE, lateness_ms=10 * MINUTE, key_idle_windows=5)
    counter.add(tally_batch([order(1), order(3 * MINUTE)], MINUTE), 0)
    closed = counter.flush()
    assert [r.window_start for r in closed] == [0, MINUTE, 2 * MINUTE, 3 * MINUTE]
    assert sum(r.events for r in closed) == 2


def test_a_restart_after_downtime_does_not_close_open_windows_early():
    counter = InputCounter(MINUTE, lateness_ms=1000, key_idle_windows=5)
    counter.add(tally_batch([click(ts) for ts in range(0, 30_000, 1000)], MINUTE), now_ms=100_000)
    # Down for ten minutes: restored from the snapshot, then the backlog arrives.
    counter.resume(now_ms=700_000)
    assert counter.advance(now_ms=700_001) == []
    closed = counter.add(tally_batch([click(ts, n=1) for ts in range(30_000, 62_000, 1000)], MINUTE), 700_002)
    assert counts_by_key(closed)[("input:clickstream", 0)] == (60, 0, 0)


def test_backlog_of_old_events_is_not_mistaken_for_a_quiet_stream():
    counter = InputCounter(MINUTE, lateness_ms=5000, key_idle_windows=5)
    counter.add(tally_batch([click(MINUTE - 1000)], MINUTE), now_ms=0)
    # Input keeps arriving (older events from a lagging partition) for two wall minutes.
    for second in range(1, 120):
        assert counter.add(tally_batch([click(second, n=second)], MINUTE), now_ms=second * 1000) == []


def test_late_events_are_reported_even_when_no_window_is_open():
    counter = InputCounter(MINUTE, lateness_ms=0, key_idle_windows=5)
    counter.add(tally_batch([click(1), click(MINUTE + 1)], MINUTE), 0)
    counter.add(tally_batch([click(2, n=1)], MINUTE), 0)
    closed = counter.flush()
    assert sum(r.events + r.late_events for r in closed if r.series == "input:clickstream") == 2
    assert counter.late_events == {}


def test_late_events_of_a_key_that_went_idle_are_still_reported():
    counter = InputCounter(MINUTE, lateness_ms=0, key_idle_windows=1)
    counter.add(tally_batch([click(1, "web")] + [click(ts, "app") for ts in range(0, 5 * MINUTE, 10_000)], MINUTE), 0)
    counter.add(tally_batch([click(3, "web", n=1)], MINUTE), 0)  # web went idle long ago
    closed = counter.add(tally_batch([click(6 * MINUTE, "app")], MINUTE), 0)
    web = [r for r in closed if r.series == "input:clickstream:channel:web"]
    assert [(r.window_start, r.late_events) for r in web] == [(4 * MINUTE, 1)]


def test_dead_letters_before_the_first_event_join_the_first_window():
    counter = InputCounter(MINUTE, lateness_ms=0, key_idle_windows=5)
    counter.add(tally_batch([dead(1), dead(2)], MINUTE), now_ms=10**12)  # a replay of old data
    counter.add(tally_batch([order(5)], MINUTE), now_ms=10**12)
    closed = counter.flush()
    assert counts_by_key(closed) == {("input:orders", 0): (1, 2, 0)}


def test_a_jump_in_event_time_reports_a_bounded_number_of_windows():
    counter = InputCounter(MINUTE, lateness_ms=0, key_idle_windows=3)
    counter.add(tally_batch([order(1)], MINUTE), 0)
    closed = counter.add(tally_batch([order(30 * 24 * 60 * MINUTE)], MINUTE), 0)  # a month later
    # The first window, three windows of zeros while the key goes idle, then the jump.
    assert [r.window_start for r in closed] == [0, MINUTE, 2 * MINUTE, 3 * MINUTE]


def test_a_fast_partition_does_not_close_windows_a_slow_one_is_still_filling():
    counter = InputCounter(MINUTE, lateness_ms=0, key_idle_windows=5)

    def poll(now_ms, partition, start, end, caught_up=False):
        clicks = [click(ts, n=partition) for ts in range(start, end, 10_000)]
        progress = Progress({("clickstream", partition): clicks[-1].ts})
        progress.report(PartitionStatus("clickstream", partition, caught_up, 2))
        return counter.add(tally_batch(clicks, MINUTE), now_ms, progress)

    # Reading a backlog: every poll, partition 0 gets much further in event time than 1.
    assert poll(0, 0, 0, 5 * MINUTE) + poll(0, 1, 0, MINUTE // 2) == []
    assert poll(4000, 0, 5 * MINUTE, 10 * MINUTE) == []
    closed = poll(4000, 1, MINUTE // 2, 2 * MINUTE) + poll(7000, 1, 2 * MINUTE, 3 * MINUTE)
    # Only what the slow partition has passed closes, holding both partitions' clicks.
    totals = {r.window_start: r.events for r in closed if r.series == "input:clickstream"}
    assert totals == {0: 12, MINUTE: 12}
    # Silence from a partition with a backlog is not quiet: nothing more closes, however long.
    assert counter.advance(now_ms=7000 + 600_000) == []
    # Once both reach their end, what was read closes, and then quiet wall time moves the clock.
    progress = Progress()
    progress.report(PartitionStatus("clickstream", 0, True, 2))
    assert counter.add([], 650_000, progress) == []  # partition 1 still has a backlog
    progress.report(PartitionStatus("clickstream", 1, True, 2))
    totals = {r.window_start: r.events for r in counter.add([], 700_000, progress) if r.dimension == "all"}
    assert totals == {2 * MINUTE: 12, **{m * MINUTE: 6 for m in range(3, 9)}}
    assert counter.advance(now_ms=700_000 + 9_999) == []
    totals = {r.window_start: r.events for r in counter.advance(now_ms=700_000 + 10_000) if r.dimension == "all"}
    assert totals == {9 * MINUTE: 6}


def test_clock_without_sources_keeps_following_the_largest_event_time():
    clock = StreamClock(lateness_ms=0)
    clock.observe(10, now_ms=0)
    clock.observe(5, now_ms=0)
    assert clock.watermark(0) == 10
