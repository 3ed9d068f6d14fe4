"""The stream clock: data moves it; wall time only once every input partition is at its end."""

import pickle

from operators.clock import PartitionStatus, Progress, StreamClock
from operators.input_counts import InputCounter, tally_batch
from tests.unit.test_input_counts import MINUTE, click

NOW = 1_000_000_000
A, B = ("clickstream", 0), ("clickstream", 1)


def progress(latest=None, **caught_up):
    """A batch's progress: `latest` event times, and `a=`/`b=` reports (True: at its end)."""
    batch = Progress(dict(latest or {}))
    for name, done in caught_up.items():
        source = {"a": A, "b": B}[name]
        batch.report(PartitionStatus(source[0], source[1], done, 2))
    return batch


def test_nothing_closes_before_every_partition_has_reported():
    clock = StreamClock(lateness_ms=0)
    clock.advance(progress({A: 50_000}, a=False), NOW)
    assert clock.watermark(NOW + 3_600_000) is None  # B has not said where it stands
    clock.advance(progress({B: 20_000}, b=False), NOW + 1)
    assert clock.watermark(NOW + 1) == 20_000


def test_a_starved_partition_with_a_backlog_holds_the_clock_however_long_it_is_silent():
    clock = StreamClock(lateness_ms=1_000)
    clock.advance(progress({A: 10_000, B: 10_000}, a=False, b=False), NOW)
    for step in range(1, 11):  # A races ahead for 10 s of wall time; B delivers nothing
        clock.advance(progress({A: 10_000 + step * MINUTE}), NOW + step * 1_000)
    assert clock.watermark(NOW + 10_000) == 9_000
    assert clock.wall_time_when(20_000, NOW + 10_000) is None  # only B's input can move it


def test_a_partition_at_its_end_does_not_hold_the_clock():
    clock = StreamClock(lateness_ms=0)
    clock.advance(progress({A: 10_000, B: 90_000}, a=True, b=False), NOW)
    assert clock.watermark(NOW) == 90_000
    clock.advance(progress({B: 95_000}), NOW + 1)
    assert clock.watermark(NOW + 1) == 95_000


def test_wall_time_moves_the_clock_only_when_every_partition_is_at_its_end():
    clock = StreamClock(lateness_ms=0)
    clock.advance(progress({A: 10_000, B: 20_000}, a=True, b=False), NOW)
    assert clock.watermark(NOW + 60_000) == 20_000
    clock.advance(progress(b=True), NOW + 60_000)
    assert clock.watermark(NOW + 60_000) == 20_000
    assert clock.watermark(NOW + 65_000) == 25_000
    assert clock.wall_time_when(30_000, NOW + 65_000) == NOW + 70_000


def test_the_clock_never_goes_back_when_a_partition_falls_behind_again():
    clock = StreamClock(lateness_ms=0)
    clock.advance(progress({A: 10_000, B: 20_000}, a=True, b=True), NOW)
    assert clock.watermark(NOW) == 20_000
    clock.advance(progress({A: 12_000}, a=False), NOW + 1)  # new messages arrived on A
    assert clock.watermark(NOW + 1) == 20_000


def test_a_resumed_clock_waits_for_every_partition_to_report_again():
    clock = StreamClock(lateness_ms=0)
    clock.advance(progress({A: 10_000, B: 20_000}, a=True, b=True), NOW)
    assert clock.watermark(NOW) == 20_000
    resumed = pickle.loads(pickle.dumps(clock))
    resumed.resume(NOW + 3_600_000)
    resumed.advance(progress({A: 30_000}, a=False), NOW + 3_600_000)
    assert resumed.wall_time_when(30_000, NOW + 3_600_000) is None
    assert resumed.watermark(NOW + 7_200_000) == 20_000  # what it had reached, no further
    resumed.advance(progress(b=True), NOW + 7_200_000)
    assert resumed.watermark(NOW + 7_200_000) == 30_000


def test_a_snapshot_of_the_previous_clock_resumes_with_its_event_times():
    old = StreamClock.__new__(StreamClock)
    old.__setstate__({"lateness_ms": 0, "idle_source_ms": 500, "startup_grace_ms": 5_000, "max_event_ms": 20_000,
                      "last_input_wall_ms": NOW, "sources": {A: (10_000, NOW), B: (20_000, NOW)},
                      "started_wall_ms": NOW})
    assert old.latest == {A: 10_000, B: 20_000}
    old.resume(NOW)
    old.advance(progress(a=False, b=True), NOW)
    assert old.watermark(NOW) == 10_000


def test_a_backlog_that_delivers_nothing_for_10_s_does_not_let_a_window_close():
    counter = InputCounter(MINUTE, lateness_ms=0, key_idle_windows=5)
    clicks = [click(ts, n=0) for ts in range(0, 3 * MINUTE, 10_000)]
    counter.add(tally_batch(clicks, MINUTE), NOW, progress({A: clicks[-1].ts}, a=True, b=False))
    batch = progress({B: 5_000})
    counter.add(tally_batch([click(5_000, n=1)], MINUTE), NOW, batch)
    for wall in range(NOW, NOW + 10_001, 500):  # B is starved: nothing arrives for 10 s
        assert counter.advance(wall) == []
