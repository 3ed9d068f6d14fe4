"""The funnel flow on TestingSource/TestingSink: exact counts for a hand-built stream,
replay at full speed equals a live run, late events, bad input, and the simulator's
payment outage against a normal day."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from flows.funnel import FunnelConfig, build_flow
from operators.funnel import FunnelRules
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import HOUR
from state.kafka import InputRecord
from state.redis_store import AddToHistory, SetLatest

MINUTE = 60_000
T0 = 1_763_683_200_000  # a minute boundary
NOW_MS = 1_000  # a fixed wall clock: everything moves on event time
CONFIG = FunnelConfig(
    max_event_ahead_ms=10**13,
    rules=FunnelRules(window_ms=MINUTE, lateness_ms=5_000),
    rolling_ms=3 * MINUTE,
    buckets=4,
)


def fixed_clock() -> int:
    return NOW_MS


def run_funnel(records, workers=1, batch_size=100, config=CONFIG, clock=fixed_clock, source=None):
    kafka_out, redis_out = [], []
    flow = build_flow(source or TestingSource(records, batch_size=batch_size), TestingSink(kafka_out),
                      TestingSink(redis_out), config, clock)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=workers)
    return kafka_out, redis_out


def metrics(kafka_out) -> list[dict]:
    return [orjson.loads(m.value) for m in kafka_out if m.topic == "metrics"]


def candidates(kafka_out) -> list[dict]:
    return [c for m in kafka_out if m.topic == "alert-candidates" if "progress" not in (c := orjson.loads(m.value))]


def find(records, **match) -> dict:
    (found,) = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    return found


# -- a hand-built stream ----------------------------------------------------------------------

_offsets: dict[str, int] = {}


def record(topic: str, obj: dict) -> InputRecord:
    offset = _offsets.get(topic, 0)
    _offsets[topic] = offset + 1
    return InputRecord(topic, 0, offset, orjson.dumps(obj), obj.get("ts", 0), obj.get("user_id", "").encode())


def click(second: float, user: str, session: str, kind: str, channel="app", region="zj", device="ios", **extra):
    return record("clickstream", {"event_id": f"c-{session}-{second}-{kind}", "ts": T0 + int(second * 1000),
                                  "user_id": user, "session_id": session, "type": kind, "channel": channel,
                                  "region": region, "device": device, **extra})


def order(second: float, user: str, order_id: str, status: str, amount: float, session: str | None = None):
    obj = {"event_id": f"o-{order_id}-{status}", "ts": T0 + int(second * 1000), "order_id": order_id,
           "user_id": user, "status": status, "amount": amount,
           "items": [{"sku": "sku-1", "quantity": 1, "unit_price": amount}]}
    if session is not None:
        obj["session_id"] = session
    return record("orders", obj)


def payment(second: float, user: str, order_id: str, status: str, amount: float):
    return record("payments", {"event_id": f"p-{order_id}-{status}-{second}", "ts": T0 + int(second * 1000),
                               "payment_id": f"pay-{order_id}-{second}", "order_id": order_id, "user_id": user,
                               "status": status, "amount": amount, "method": "card"})


def hand_built_stream() -> list[InputRecord]:
    """Minute 0: four sessions. s1 goes all the way (its order names no session: it joins
    u1's latest session); s2 checks out and orders but its payment fails; s3 adds to cart
    on the web; s4 only looks around. Minute 1: s1 browses again; s5 visits from the web."""
    return [
        click(1, "u1", "s1", "page_view"),
        click(2, "u2", "s2", "search", region="gd", device="android"),
        click(3, "u3", "s3", "page_view", channel="web", device="pc"),
        click(4, "u1", "s1", "product_view"),
        click(5, "u2", "s2", "product_view", region="gd", device="android"),
        click(6, "u3", "s3", "product_view", channel="web", device="pc"),
        click(7, "u4", "s4", "page_view"),
        click(8, "u1", "s1", "add_to_cart"),
        click(9, "u2", "s2", "add_to_cart", region="gd", device="android"),
        click(10, "u3", "s3", "add_to_cart", channel="web", device="pc"),
        click(11, "u1", "s1", "checkout_start"),
        click(12, "u2", "s2", "checkout_start", region="gd", device="android"),
        order(13, "u1", "o1", "created", 100.0),
        order(14, "u2", "o2", "created", 50.0, session="s2"),
        payment(15, "u1", "o1", "requested", 100.0),
        payment(16, "u1", "o1", "succeeded", 100.0),
        payment(17, "u2", "o2", "failed", 50.0),
        order(18, "u1", "o1", "paid", 100.0),
        click(61, "u1", "s1", "page_view"),
        click(62, "u5", "s5", "page_view", channel="web", region="gd", device="pc"),
        b"{not json",
    ]


def with_bad_input(items) -> list[InputRecord]:
    return [record("clickstream", {}) if item == b"{not json" else item for item in items]


@pytest.mark.parametrize("workers", [1, 2])
def test_exact_stage_counts_and_rates_for_a_hand_built_stream(workers):
    records = with_bad_input(hand_built_stream())
    records.append(InputRecord("clickstream", 0, 999, b"{not json", T0))
    kafka_out, redis_out = run_funnel(records, workers, batch_size=3)
    out = metrics(kafka_out)
    minute0 = find(out, metric="funnel", view="tumbling", window_start=T0, dimension="all")
    assert minute0["stages"] == {"visit": 4, "product_view": 3, "add_to_cart": 3, "checkout": 2, "order": 2,
                                 "payment": 1}
    assert minute0["conversion"] == {"product_view": 0.75, "add_to_cart": 1.0, "checkout": 0.6667, "order": 1.0,
                                     "payment": 0.5}
    assert minute0["dropoff"]["payment"] == 0.5 and minute0["overall_conversion"] == 0.25
    web = find(out, metric="funnel", view="tumbling", window_start=T0, dimension="channel", value="web")
    assert list(web["stages"].values()) == [1, 1, 1, 0, 0, 0]
    gd = find(out, metric="funnel", view="tumbling", window_start=T0, dimension="region", value="gd")
    assert list(gd["stages"].values()) == [1, 1, 1, 1, 1, 0]
    minute1 = find(out, metric="funnel", view="tumbling", window_start=T0 + MINUTE, dimension="all")
    assert list(minute1["stages"].values()) == [2, 0, 0, 0, 0, 0]

    kpi0 = find(out, metric="kpi", view="tumbling", window_start=T0, dimension="all")
    assert (kpi0["gmv"], kpi0["orders"], kpi0["paid_orders"], kpi0["aov"]) == (100.0, 2, 1, 100.0)
    assert (kpi0["uv"], kpi0["pv"], kpi0["payments"]) == (4, 6, 2)
    assert (kpi0["payment_success_rate"], kpi0["payment_failure_rate"]) == (0.5, 0.5)
    app0 = find(out, metric="kpi", view="tumbling", window_start=T0, dimension="channel", value="app")
    assert (app0["uv"], app0["orders"], app0["gmv"]) == (3, 2, 100.0)

    rolling = find(out, metric="funnel", view="rolling", window_end=T0 + 2 * MINUTE, dimension="all")
    assert rolling["window_start"] == T0 + 2 * MINUTE - 3 * MINUTE
    assert list(rolling["stages"].values()) == [6, 3, 3, 2, 2, 1]  # session-windows over both minutes
    assert "uv" not in find(out, metric="kpi", view="rolling", window_end=T0 + MINUTE, dimension="all")

    latest = {w.key: orjson.loads(w.value) for w in redis_out if isinstance(w, SetLatest) and w.order == T0 + MINUTE}
    assert latest["funnel:all:all"] == minute0 and latest["kpi:latest"] == kpi0
    assert latest["funnel:channel:web"] == web and latest["kpi:channel:app"] == app0
    assert {w.key for w in redis_out if isinstance(w, AddToHistory)} >= {"funnel:all:all:history", "kpi:latest:history"}
    assert candidates(kafka_out) == []


def test_a_window_is_published_once_every_bucket_has_closed_it():
    records = with_bad_input(hand_built_stream())
    kafka_out, _ = run_funnel(records[:18] + [click(70, "u6", "s6", "page_view")], batch_size=18)
    # Minute 0 closed while input flowed (not at the end); its records come before minute 1's.
    windows = [m["window_start"] for m in metrics(kafka_out) if m["metric"] == "funnel" and m["view"] == "tumbling"]
    assert windows == sorted(windows) and windows[0] == T0


# -- late events -----------------------------------------------------------------------------


def test_late_events_within_the_lateness_count_and_later_ones_become_corrections():
    records = [
        click(10, "u1", "s1", "page_view"),
        click(62, "u2", "s2", "page_view"),  # the watermark is now 62 s - 5 s: minute 0 still open
        click(58, "u3", "s3", "page_view"),  # out of order, within the lateness: counted in minute 0
        click(70, "u4", "s4", "page_view"),  # the watermark passes 60 s: minute 0 closes
        click(59, "u5", "s5", "page_view"),  # too late for minute 0: a correction
        click(130, "u6", "s6", "page_view"),
    ]
    out = metrics(run_funnel(records, batch_size=1)[0])
    minute0 = find(out, metric="funnel", view="tumbling", window_start=T0, dimension="all")
    assert minute0["stages"]["visit"] == 2 and minute0["late_events"] == 0
    minute1 = find(out, metric="funnel", view="tumbling", window_start=T0 + MINUTE, dimension="all")
    assert minute1["stages"]["visit"] == 2 and minute1["late_events"] == 1
    assert find(out, metric="kpi", view="tumbling", window_start=T0 + MINUTE, dimension="all")["late_events"] == 1


# -- replay at full speed == live ------------------------------------------------------------


class LiveClock:
    """Wall time that follows the records as a live source hands them out."""

    def __init__(self):
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def feed(self, records):
        for item in records:
            self.now = item.timestamp_ms + 200  # each event arrives 200 ms after it happened
            yield item


@lru_cache(maxsize=None)
def simulated(names: tuple[str, ...], hours: int, seed: int, shoppers: int = 400_000) -> tuple:
    sim = generate(names, seed=seed, duration_ms=hours * HOUR, shoppers=shoppers)
    records = [r for r in input_records(sim) if r.topic != "inventory"]
    return records, tuple(t for t in sim.truth if getattr(t, "name", None) in names)


def by_id(kafka_out) -> dict[str, dict]:
    return {m["metric_id"]: m for m in metrics(kafka_out)}


def test_replay_at_full_speed_equals_the_live_result():
    records, _ = simulated(("normal",), 1, 7, 100_000)
    replay = by_id(run_funnel(records, batch_size=1000)[0])
    clock = LiveClock()
    live_out, _ = run_funnel(None, clock=clock, source=TestingSource(clock.feed(records), batch_size=20))
    live = by_id(live_out)
    assert len(replay) > 500
    assert live == replay
    two_workers = by_id(run_funnel(records, workers=2, batch_size=64)[0])
    assert two_workers == replay


# -- detection on simulated traffic ----------------------------------------------------------


FLOW_CONFIG = replace(CONFIG, rolling_ms=15 * MINUTE, buckets=8)


@lru_cache(maxsize=None)
def funnel_scenario(names: tuple[str, ...], hours: int, seed: int):
    """The funnel flow's output on simulated traffic, and the scenario's incidents."""
    records, incidents = simulated(names, hours, seed)
    kafka_out, _ = run_funnel(records, batch_size=1000, config=FLOW_CONFIG)
    return kafka_out, incidents


def test_a_payment_outage_raises_payment_failure_rate_once():
    kafka_out, incidents = funnel_scenario(("payment_outage",), 3, 3)
    (incident,) = incidents
    found = [(c["dedup_key"], c["active"]) for c in candidates(kafka_out) if c["rule"] == "payment.failure_rate"]
    assert found == [("payment.failure_rate:all", True), ("payment.failure_rate:all", False)]
    fired, cleared = (c for c in candidates(kafka_out) if c["rule"] == "payment.failure_rate")
    assert incident.start_ts < fired["ts"] <= incident.start_ts + 6 * MINUTE
    assert incident.end_ts < cleared["ts"] <= incident.end_ts + 10 * MINUTE
    assert fired["value"] >= fired["threshold"] and fired["runbook"]


@pytest.mark.parametrize("seed", [1, 2])
def test_a_normal_day_raises_nothing(seed):
    kafka_out, _ = funnel_scenario(("normal",), 6, seed)
    assert candidates(kafka_out) == []
    experiment = [m for m in metrics(kafka_out) if m["metric"] == "experiment"][-1]
    assert set(experiment["variants"]) == {"control", "treatment"}
    assert experiment["variants"]["control"]["sessions"] > 10_000
