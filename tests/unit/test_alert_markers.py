"""Producer shards keep their progress markers moving on quiet input.

A marker `{"progress": P, "shard": S, "ts": T}` promises that shard S of producer P will
send nothing more stamped at or before T; the alert router holds everyone's candidates
until every expected shard's marker passes them. A shard that steps only on input or
its own timers would leave the router waiting on quiet input."""

from __future__ import annotations

from flows import stock
from operators.alert_hold import ProgressMarker
from shopstream.settings import Settings
from simulators import generate
from simulators.testing import input_records
from state.alert_candidates import ProgressMarking, ProgressReporter

MINUTE = 60_000
T0 = 1_763_683_200_000  # a minute boundary
SETTINGS = Settings.from_env({})


# -- markers on quiet input ----------------------------------------------------------------


class WallClock:
    def __init__(self, now: int):
        self.now = now

    def __call__(self) -> int:
        return self.now


def quiet_stock(clock: WallClock) -> ProgressMarking:
    """One stock bucket that saw one inventory line and then nothing more (wall time from T0)."""
    config = stock.StockConfig.from_settings(SETTINGS)
    logic = stock.marked("stock", stock._StockLogic(stock.ledger_for(None, config, clock()), clock), config.buckets,
                         shard_of=lambda batch: batch.bucket, now_ms=clock)
    records = input_records(generate(("normal",), seed=1, duration_ms=MINUTE, shoppers=1_000))
    inventory = [r for r in records if r.topic == "inventory"][:1]
    ((_, batch),) = [b for b in stock.triage_batch(inventory, config, clock()) if b[1].lines]
    logic.on_batch([batch])
    return logic


def markers_in(out) -> list[int]:
    return [c.ts for changes in out for c in changes.candidates if isinstance(c, ProgressMarker)]


def test_a_quiet_shard_wakes_every_interval_and_its_marker_follows_its_watermark():
    clock = WallClock(T0)
    logic = quiet_stock(clock)
    first = logic._reporter.last_ts
    assert first is not None
    wake = logic.notify_at()
    assert wake is not None and int(wake.timestamp() * 1000) == T0 + 1_000  # the wrapper's own wake
    clock.now = T0 + 1_000
    out, _ = logic.on_notify()
    (second,) = markers_in(out)
    assert second == first + 1_000  # the watermark moved with wall time, and the marker with it
    assert int(logic.notify_at().timestamp() * 1000) <= T0 + 2_000
    for step in range(2, 61):  # a minute of quiet input: a marker every second, never one minute apart
        clock.now = T0 + step * 1_000
        (mark,) = markers_in(logic.on_notify()[0])
        assert mark == first + step * 1_000


def test_without_the_wake_a_quiet_shard_would_send_nothing_until_its_own_timers():
    clock = WallClock(T0)
    logic = quiet_stock(clock)
    silent = ProgressMarking(logic._inner, ProgressReporter("stock", "0", 16), logic._watermark, now_ms=clock,
                             interval_ms=None)  # the wrapper as it was
    inner_wake = logic._inner.notify_at()
    assert silent.notify_at() == inner_wake
    assert inner_wake is None or int(inner_wake.timestamp() * 1000) > T0 + 1_000


def test_a_resumed_shard_sends_no_marker_before_a_batch_names_it():
    clock = WallClock(T0)
    logic = quiet_stock(clock)
    config = stock.StockConfig.from_settings(SETTINGS)
    ledger = stock.ledger_for(logic.snapshot(), config, clock())
    resumed = stock.marked("stock", stock._StockLogic(ledger, clock), config.buckets,
                           shard_of=lambda batch: batch.bucket, now_ms=clock)
    clock.now = T0 + 5_000
    assert markers_in(resumed.on_notify()[0]) == []  # it would speak for shard "0", whichever it is
    assert resumed.notify_at() == resumed._inner.notify_at()
