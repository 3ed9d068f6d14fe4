"""Every producer keeps its progress markers' promise, and keeps making it on quiet input.

A marker `{"progress": P, "shard": S, "ts": T}` promises that shard S of producer P will
send nothing more stamped at or before T: the alert router releases the others'
candidates up to T, and drops a later record of S stamped at or before T as a replay.
So a candidate stamped at or before a marker its shard already sent is a lost alert.
The property is checked on every producer flow's real logic, on simulated incidents,
replayed at full speed and fed live (wall time following the records)."""

from __future__ import annotations

from functools import lru_cache

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows import fraud, funnel, intake, order_success, pricing, stock, traffic
from flows.alerts import AlertsConfig, alerting_for
from operators.alert_hold import ProgressMarker
from operators.alert_router import AlertMessage, RouterConfig
from operators.alerts import AlertCandidate
from operators.funnel import BucketReport, WindowPartial
from operators.funnel_detectors import PaymentFailureDetector
from operators.funnel_results import AggregatorRules, FunnelAggregator
from shopstream.settings import Settings
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import HOUR
from state.alert_candidates import (END_OF_STREAM, MARKER_INTERVAL_MS, ProgressMarking, ProgressReporter,
                                   candidate_message, decode_record)

MINUTE = 60_000
SETTINGS = Settings.from_env({})
SCENARIOS = ("payment_outage", "card_testing", "flash_sale", "traffic_drop")


def build(name: str, source, kafka_out: list, clock):
    kafka, redis = TestingSink(kafka_out), TestingSink([])
    if name == "fraud":
        return fraud.build_flow(source, kafka, redis, TestingSink([]), fraud.flow_config(SETTINGS), now_ms=clock)
    if name == "traffic":
        return traffic.build_flow(source, kafka, redis, traffic.flow_config(SETTINGS), clock)
    configs = {"stock": stock.StockConfig, "funnel": funnel.FunnelConfig, "intake": intake.IntakeConfig,
               "pricing": pricing.PricingConfig, "order_success": order_success.OrderSuccessConfig}
    module = {"stock": stock, "funnel": funnel, "intake": intake, "pricing": pricing,
              "order_success": order_success}[name]
    return module.build_flow(source, kafka, redis, configs[name].from_settings(SETTINGS), clock)


class LiveClock:
    """Wall time that follows the records as a live source hands them out."""

    def __init__(self, start: int):
        self.now = start

    def __call__(self) -> int:
        return self.now

    def feed(self, records):
        for item in records:
            self.now = max(self.now, item.timestamp_ms + 200)  # each event arrives 200 ms after it happened
            yield item


@lru_cache(maxsize=None)
def simulated() -> tuple:
    return tuple(input_records(generate(SCENARIOS, seed=3, duration_ms=2 * HOUR, shoppers=100_000)))


def broken_promises(messages) -> tuple[list[str], dict[str, int], dict[str, int]]:
    """(candidates stamped at or before their shard's earlier marker, candidates per
    producer, markers per producer), reading `alert-candidates` in the order sent."""
    marks: dict[tuple[str, str], int] = {}
    broken, candidates, markers = [], {}, {}
    for message in messages:
        if message.topic != "alert-candidates":
            continue
        obj = orjson.loads(message.value)
        if "progress" in obj:
            shard = (obj["progress"], obj["shard"])
            marks[shard] = max(marks.get(shard, obj["ts"]), obj["ts"])
            markers[obj["progress"]] = markers.get(obj["progress"], 0) + 1
            continue
        producer = obj["producer"]
        ts = obj["window_end"] if obj.get("metric") == "input" else obj["ts"]
        candidates[producer] = candidates.get(producer, 0) + 1
        promised = marks.get((producer, obj["shard"]))
        if promised is not None and ts <= promised:
            broken.append(f"{producer}/{obj['shard']} sent {obj.get('dedup_key', obj.get('series'))} at {ts} "
                          f"after promising {promised}")
    return broken, candidates, markers


PRODUCERS = ("funnel", "stock", "fraud", "traffic", "pricing", "order_success", "intake")


@pytest.mark.parametrize("name", PRODUCERS)
@pytest.mark.parametrize("pace", ["replay", "live"])
def test_no_producer_stamps_a_candidate_at_or_before_a_marker_it_sent(name, pace):
    records = list(simulated())
    out: list = []
    if pace == "replay":
        end = records[-1].timestamp_ms + MINUTE
        run_main(build(name, TestingSource(records, batch_size=500), out, lambda: end))
    else:
        clock = LiveClock(records[0].timestamp_ms)
        run_main(build(name, TestingSource(clock.feed(records), batch_size=20), out, clock))
    broken, candidates, markers = broken_promises(out)
    assert broken == []
    assert markers.get(name, 0) > 1
    if name in ("funnel", "stock", "fraud", "intake"):  # the incidents raise these flows' candidates
        assert candidates.get(name, 0) > 0


# -- the funnel's promise ------------------------------------------------------------------


class WallClock:
    def __init__(self, now: int):
        self.now = now

    def __call__(self) -> int:
        return self.now


T0 = 1_763_683_200_000  # a minute boundary


def funnel_windows(buckets: int = 2) -> ProgressMarking:
    aggregator = FunnelAggregator(AggregatorRules(buckets, window_ms=MINUTE, rolling_ms=3 * MINUTE),
                                  PaymentFailureDetector())
    logic = funnel._AggregatorLogic(aggregator)
    return funnel.marked_windows(logic)


def payments(start: int, failed: int, succeeded: int = 0) -> WindowPartial:
    return WindowPartial(start, {}, {"all": failed + succeeded}, {}, payers=failed + succeeded, payers_failed=failed)


def test_the_funnel_promises_up_to_the_end_of_the_next_window_to_close():
    windows = funnel_windows()
    out, _ = windows.on_batch([BucketReport("0", T0 + MINUTE, [payments(T0, 0, 200)]),
                               BucketReport("1", T0 + MINUTE, [])])
    (marker,) = [item for item in out if isinstance(item, ProgressMarker)]
    # The window T0..T0+1min is published; the next one's candidates are stamped T0+2min.
    assert marker.ts == T0 + 2 * MINUTE - 1
    # An outage in the next window: its candidate is stamped after the promise.
    out, _ = windows.on_batch([BucketReport("0", T0 + 2 * MINUTE, [payments(T0 + MINUTE, 200)]),
                               BucketReport("1", T0 + 2 * MINUTE, [])])
    (fired,) = [item.item for item in out if isinstance(getattr(item, "item", None), AlertCandidate)]
    assert fired.rule == "payment.failure_rate" and fired.ts == T0 + 2 * MINUTE > marker.ts


def test_between_windows_the_funnel_repeats_its_marker_every_interval():
    """Its promise moves once per window; the router takes a producer silent for its
    timeout (60 s, about a window) for down, so the funnel says every second it is there."""
    clock = WallClock(T0)
    aggregator = FunnelAggregator(AggregatorRules(1, window_ms=MINUTE, rolling_ms=3 * MINUTE))
    windows = funnel.marked_windows(funnel._AggregatorLogic(aggregator), clock)
    out, _ = windows.on_batch([BucketReport("0", T0 + MINUTE, [])])
    (first,) = [item.ts for item in out if isinstance(item, ProgressMarker)]
    assert int(windows.notify_at().timestamp() * 1000) == T0 + MARKER_INTERVAL_MS
    for second in range(1, 59):
        clock.now = T0 + second * 1_000
        out, _ = windows.on_notify()
        assert [item.ts for item in out if isinstance(item, ProgressMarker)] == [first]


def test_the_funnel_holds_its_promise_until_every_bucket_reported_and_promises_all_at_the_end():
    windows = funnel_windows()
    out, _ = windows.on_batch([BucketReport("0", T0 + 5 * MINUTE, [])])
    assert out == []  # bucket 1 may still report any window
    out, _ = windows.on_eof()
    assert [getattr(item, "ts", None) for item in out] == [END_OF_STREAM]


# -- markers on quiet input ----------------------------------------------------------------


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


def quiet_shop_escalations(interval_ms: int | None) -> list[int]:
    """Wall times of `escalated` messages for a critical stock.out raised just before a
    single-shard stock producer goes quiet, the router holding for it; 60 s of wall time."""
    clock = WallClock(T0)
    config = stock.StockConfig.from_settings(SETTINGS)
    logic = stock.marked("stock", stock._StockLogic(stock.ledger_for(None, config, clock()), clock), 1,
                         shard_of=lambda batch: batch.bucket, now_ms=clock, interval_ms=interval_ms)
    records = input_records(generate(("normal",), seed=1, duration_ms=MINUTE, shoppers=1_000))
    ((_, batch),) = [b for b in stock.triage_batch([r for r in records if r.topic == "inventory"][:1], config,
                                                   clock()) if b[1].lines]
    router = alerting_for(None, AlertsConfig(router=RouterConfig(escalate_after_ms=20_000, reminder_ms=0),
                                             producers=("stock",), producer_timeout_ms=60_000), clock())
    no_acks = lambda keys: {}  # noqa: E731
    escalated = []

    def deliver(outputs):
        for changes in outputs:
            for item in changes.candidates:
                for out in router.step(decode_record(candidate_message(item).value), clock(), no_acks):
                    if isinstance(out, AlertMessage) and out.status == "escalated":
                        escalated.append(clock())

    outputs, _ = logic.on_batch([batch])
    out_of_stock = AlertCandidate(ts=logic._reporter.last_ts + 1, rule="stock.out", key="sku-quiet", active=True,
                                  severity="critical", summary="sku-quiet is out of stock")
    outputs[-1].candidates.insert(0, logic._reporter.tag(out_of_stock))
    deliver(outputs)
    while clock.now < T0 + MINUTE:
        clock.now += 100
        wake = logic.notify_at()
        if wake is not None and wake.timestamp() * 1000 <= clock.now:
            deliver(logic.on_notify()[0])
        wake = router.next_wake_ms(clock.now)
        if wake is not None and wake <= clock.now:
            for out in router.advance(clock.now, no_acks):
                if isinstance(out, AlertMessage) and out.status == "escalated":
                    escalated.append(clock.now)
    return escalated


def test_a_quiet_shop_escalates_on_time_not_after_the_producer_timeout():
    (at,) = quiet_shop_escalations(MARKER_INTERVAL_MS)
    # Escalation is due 20 s of event time after the candidate (stamped at the shard's
    # watermark when the input stopped); the watermark moves with wall time from then.
    assert T0 + 20_000 <= at <= T0 + 20_000 + MARKER_INTERVAL_MS + 200
    assert quiet_shop_escalations(None) == []  # without the wake: held until the producer times out
