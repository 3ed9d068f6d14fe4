"""The alerts flow on TestingSource/TestingSink, with one worker and with two, and the
simulator's scenarios end to end: intake counts -> the alert detectors -> the router."""

from __future__ import annotations

from functools import lru_cache

import orjson
import pytest
from bytewax.testing import TestingSource, TestingSink, cluster_main, run_main

from flows import funnel, intake
from flows.alerts import AlertsConfig, build_flow, parse_ack
from operators.alert_router import Ack, RouterConfig
from operators.alerts import AlertCandidate
from operators.funnel import FunnelRules
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import HOUR
from state.alert_candidates import candidate_message
from state.kafka import InputRecord
from state.redis_store import DeleteHashField, DeleteUnlessNewer, SetHashField, StreamAddOnce

MINUTE = 60_000
T0 = 1_763_683_200_000
NOW_MS = 1_000  # a fixed wall clock: everything moves on event time
CONFIG = AlertsConfig(router=RouterConfig(escalate_after_ms=5 * MINUTE, warning_limit_ms=30 * MINUTE, reminder_ms=10 * MINUTE))


def fixed_clock() -> int:
    return NOW_MS


def candidate_record(offset, minute, active=True, key="sku-1", severity="critical"):
    candidate = AlertCandidate(
        ts=T0 + int(minute * MINUTE), rule="stock.out", key=key, active=active, severity=severity,
        summary=f"{key} is out of stock", value=0, threshold=0, runbook="restock",
    )
    message = candidate_message(candidate)
    return InputRecord("alert-candidates", 0, offset, message.value, candidate.ts, message.key)


def tick_record(offset, minute):
    value = orjson.dumps({"metric": "input", "topic": "orders", "dimension": "all", "value": "all",
                          "window_start": T0 + (minute - 1) * MINUTE, "window_end": T0 + minute * MINUTE,
                          "events": 3, "dead_letters": 0})
    return InputRecord("metrics", 0, offset, value, 0)


def run_alerts(records, workers=1, config=CONFIG, acks=None):
    kafka_out, redis_out = [], []
    flow = build_flow(TestingSource(records, batch_size=8), TestingSink(kafka_out), TestingSink(redis_out),
                      config, fixed_clock, acks=acks)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=workers)
    alerts = [orjson.loads(m.value) for m in kafka_out if m.topic == "alerts"]
    return alerts, redis_out


@pytest.mark.parametrize("workers", [1, 2])
def test_lifecycle_through_the_flow(workers):
    records = [candidate_record(0, 0), candidate_record(1, 0.5), candidate_record(2, 1, key="sku-2")]
    records += [tick_record(3 + m, m) for m in range(1, 13)]
    records += [candidate_record(20, 13, active=False), candidate_record(21, 13.5), candidate_record(22, 14, key="sku-2", active=False)]
    alerts, redis_out = run_alerts(records, workers, acks=lambda keys: {"stock.out:sku-2": Ack(T0 + MINUTE)})
    summary = [(a["key"], a["status"], (a["ts"] - T0) / MINUTE, a["count"], a.get("reminder", False)) for a in alerts]
    assert summary == [
        ("sku-1", "firing", 0, 1, False),
        ("sku-2", "firing", 1, 1, False),
        ("sku-1", "escalated", 5, 2, False),
        ("sku-1", "escalated", 10, 2, True),
        ("sku-1", "resolved", 13, 2, False),
        ("sku-1", "firing", 13.5, 1, False),  # a new episode, a new id
        ("sku-2", "resolved", 14, 1, False),
    ]
    ids = [a["alert_id"] for a in alerts]
    assert len(set(ids)) == len(ids)
    stream = [w for w in redis_out if isinstance(w, StreamAddOnce)]
    assert [w.dedupe_key for w in stream] == [f"alerts:sent:{i}" for i in ids]
    assert all(w.stream == "stream:alerts" and orjson.loads(w.fields["alert"])["alert_id"] == w.fields["alert_id"]
               for w in stream)
    active = [w for w in redis_out if isinstance(w, (SetHashField, DeleteHashField))]
    final = {}
    for w in active:
        final[w.field] = orjson.loads(w.value) if isinstance(w, SetHashField) else None
    assert final["stock.out:sku-2"] is None and final["stock.out:sku-1"]["first_seen_ts"] == T0 + 13.5 * MINUTE
    assert {(w.key, w.order) for w in redis_out if isinstance(w, DeleteUnlessNewer)} == {
        ("alerts:ack:stock.out:sku-1", T0), ("alerts:ack:stock.out:sku-2", T0 + MINUTE)
    }


def test_unusable_records_are_skipped_not_fatal():
    records = [InputRecord("alert-candidates", 0, 0, b"{not json", 0), InputRecord("metrics", 0, 1, b'{"metric": "kpi"}', 0),
               InputRecord("metrics", 0, 2, b'{"metric": "input"}', 0), candidate_record(3, 0)]
    alerts, _ = run_alerts(records)
    assert [a["status"] for a in alerts] == ["firing"]


def test_ack_values_written_by_the_cli_or_by_hand():
    assert parse_ack(b'{"first_seen_ts": 5, "by": "ana"}') == Ack(5)
    assert parse_ack(b"1") == Ack(None)


# -- scenarios from the simulator, through the intake flow's counts -----------------------------


@lru_cache(maxsize=None)
def scenario(names: tuple[str, ...], hours: int, seed: int):
    """The simulator's traffic counted by the intake flow (1-minute windows); its
    `metrics` records and the ground-truth incidents."""
    sim = generate(names, seed=seed, duration_ms=hours * HOUR, shoppers=100_000)
    records = input_records(sim)
    kafka_out, redis_out = [], []
    config = intake.IntakeConfig(window_ms=MINUTE, lateness_ms=5_000, history_length=2,
                                 key_idle_windows=60, max_event_ahead_ms=10**13)
    run_main(intake.build_flow(TestingSource(records, batch_size=1000), TestingSink(kafka_out),
                               TestingSink(redis_out), config, fixed_clock))
    metrics = [InputRecord("metrics", 0, i, m.value, 0) for i, m in enumerate(kafka_out) if m.topic == "metrics"]
    incidents = [r for r in sim.truth if getattr(r, "name", None) in names]
    return metrics, incidents


def test_traffic_drop_pages_once_and_resolves():
    metrics, incidents = scenario(("traffic_drop",), 3, 3)
    alerts, _ = run_alerts(metrics, workers=2)
    (incident,) = incidents
    channel = incident.detail["channel"]
    assert [(a["dedup_key"], a["status"]) for a in alerts if not a.get("reminder")] == [
        (f"traffic.drop:clickstream:channel:{channel}", "firing"),
        (f"traffic.drop:clickstream:channel:{channel}", "escalated"),
        (f"traffic.drop:clickstream:channel:{channel}", "resolved"),
    ]
    firing, _, resolved = (a for a in alerts if not a.get("reminder"))
    # Detected within three 1-minute windows of going dark; resolved within three of coming back.
    assert incident.start_ts < firing["ts"] <= incident.start_ts + 3 * MINUTE
    assert incident.end_ts < resolved["ts"] <= incident.end_ts + 3 * MINUTE
    assert firing["severity"] == "critical" and "went dark" in firing["summary"]


@pytest.mark.parametrize("seed", [1, 2])
def test_a_normal_evening_pages_nobody(seed):
    metrics, _ = scenario(("normal",), 6, seed)
    alerts, _ = run_alerts(metrics)
    assert alerts == []


@lru_cache(maxsize=None)
def intake_and_funnel(names: tuple[str, ...], hours: int, seed: int):
    """The intake and funnel flows on the simulator's traffic: the router's input (alert
    candidates and metrics, in event-time order as both flows publish them) and the incidents.

    400,000 shoppers: with the simulator's default 50,000, a whole payment outage holds
    about ten payments, too few for any detector to tell from chance."""
    sim = generate(names, seed=seed, duration_ms=hours * HOUR, shoppers=400_000)
    records = input_records(sim)
    intake_out, funnel_out = [], []
    intake_config = intake.IntakeConfig(window_ms=MINUTE, lateness_ms=5_000, history_length=2,
                                        key_idle_windows=60, max_event_ahead_ms=10**13)
    run_main(intake.build_flow(TestingSource(records, batch_size=1000), TestingSink(intake_out), TestingSink([]),
                               intake_config, fixed_clock))
    run_main(funnel.build_flow(TestingSource(records, batch_size=1000), TestingSink(funnel_out), TestingSink([]),
                               FUNNEL_CONFIG, fixed_clock))
    messages = [m for m in intake_out + funnel_out if m.topic in ("metrics", "alert-candidates")]
    messages.sort(key=lambda m: orjson.loads(m.value).get("window_end") or orjson.loads(m.value)["ts"])
    router_input = [InputRecord(m.topic, 0, i, m.value, 0) for i, m in enumerate(messages)]
    return router_input, [r for r in sim.truth if getattr(r, "name", None) in names]


FUNNEL_CONFIG = funnel.FunnelConfig(max_event_ahead_ms=10**13,
                                    rules=FunnelRules(window_ms=MINUTE, lateness_ms=5_000))


def episodes(alerts, rule):
    return [(a["dedup_key"], a["status"], a["ts"]) for a in alerts if a["rule"] == rule and not a.get("reminder")]


def test_payment_outage_pages_once_and_resolves():
    router_input, incidents = intake_and_funnel(("payment_outage",), 3, 3)
    (incident,) = incidents
    alerts, _ = run_alerts(router_input)
    pages = episodes(alerts, "payment.failure_rate")
    assert [(key, status) for key, status, _ in pages if status != "escalated"] == [
        ("payment.failure_rate:all", "firing"),
        ("payment.failure_rate:all", "resolved"),
    ]
    firing = next(ts for _, status, ts in pages if status == "firing")
    resolved = next(ts for _, status, ts in pages if status == "resolved")
    assert incident.start_ts < firing < incident.end_ts
    assert incident.end_ts < resolved
    assert len({a["first_seen_ts"] for a in alerts if a["rule"] == "payment.failure_rate"}) == 1  # one episode
    assert [a for a in alerts if a["rule"] != "payment.failure_rate"] == []


@pytest.mark.parametrize("seed", [1, 2])
def test_a_normal_day_pages_nobody_about_payments_or_the_funnel(seed):
    router_input, _ = intake_and_funnel(("normal",), 6, seed)
    assert sum(b'"metric":"funnel"' in r.value for r in router_input) > 1000  # the funnel flow did run
    alerts, _ = run_alerts(router_input)
    assert [a for a in alerts if a["rule"] in ("payment.failure_rate", "funnel.dropoff")] == []
