"""Alert storms are grouped per rule (Alertmanager's group_wait / group_interval) on event
time, with a per-rule cap on messages per minute; every key stays in `alerts:active`."""

from __future__ import annotations

import copy
import pickle

import orjson
import pytest
from bytewax.testing import TestingSource, TestingSink, run_main

from flows.alerts import AlertsConfig, build_flow, router_outputs
from operators.alert_router import ActiveAlert, AlertMessage, AlertRouter, GroupKeys, RouterConfig, StreamTick
from operators.alerts import AlertCandidate
from operators.clock import PartitionStatus
from state.alert_candidates import candidate_message
from state.kafka import InputRecord
from state.redis_store import SetHashField, SetValue

SECOND = 1_000
MINUTE = 60_000
T0 = 1_763_683_200_000
NOW = 1_000  # a fixed wall clock: time moves by event time only
GROUPED = RouterConfig(escalate_after_ms=5 * MINUTE, warning_limit_ms=30 * MINUTE, reminder_ms=15 * MINUTE,
                       group_wait_ms=10 * SECOND, group_interval_ms=MINUTE, rule_max_per_min=5)


def cand(ts, key, active=True, rule="stock.out", severity="critical", value=0.0):
    return AlertCandidate(ts=ts, rule=rule, key=key, active=active, severity=severity,
                          summary=f"{key} is out of stock", value=value, threshold=0.0, runbook="restock it")


def storm(skus=10_000, at=T0, active=True):
    """Every SKU of one huge order going out (or back in) within one second."""
    return [cand(at + i % 1000, f"sku-{i:05d}", active) for i in range(skus)]


def route(router, items, batch=500):
    out = []
    for start in range(0, len(items), batch):
        out += router.add(items[start:start + batch], NOW, lambda keys: {})
    return out


def messages(out):
    return [o for o in out if isinstance(o, AlertMessage)]


def ticks(*minutes):
    return [StreamTick(T0 + int(m * MINUTE)) for m in minutes]


def test_ten_thousand_skus_out_at_once_page_a_handful_of_times_and_every_key_stays_active():
    router = AlertRouter(GROUPED)
    out = route(router, storm() + ticks(1, 6, 16, 20) + storm(at=T0 + 20 * MINUTE, active=False) + ticks(21))
    sent = messages(out)
    assert len(sent) <= 5
    assert [(m.status, m.reminder, m.count, m.key) for m in sent] == [
        ("firing", False, 10_000, "*"),
        ("escalated", False, 10_000, "*"),
        ("escalated", True, 10_000, "*"),  # the 15-minute reminder, once for all
        ("resolved", False, 10_000, "*"),
    ]
    firing = sent[0].to_dict()
    assert firing["dedup_key"] == "stock.out:*" and firing["alert_id"] == f"stock.out:*@{T0 + 10 * SECOND}/group"
    assert firing["ts"] == T0 + 10 * SECOND and firing["first_seen_ts"] == T0 and firing["severity"] == "critical"
    assert firing["group"]["keys"] == 10_000 and firing["group"]["open"] == 10_000
    assert firing["group"]["changes"] == {"firing": 10_000}
    # Top keys: the most severe, then the earliest, then by name.
    assert [k["key"] for k in firing["group"]["top_keys"]] == [f"sku-{i * 1000:05d}" for i in range(10)]
    assert "10,000 keys" in firing["summary"] and "sku-00000, sku-01000, sku-02000 and 9,997 more" in firing["summary"]
    # The full list for on-call, and every key in alerts:active while it was open.
    groups = [o for o in out if isinstance(o, GroupKeys)]
    assert len(groups) == 4 and groups[0].alert_id == firing["alert_id"]
    assert sorted(groups[0].keys["firing"]) == [f"sku-{i:05d}" for i in range(10_000)]
    assert groups[-1].keys.keys() == {"resolved"} and groups[-1].open == 0
    active_keys = {o.dedup_key for o in out if isinstance(o, ActiveAlert) and o.alert is not None}
    assert len(active_keys) == 10_000
    assert router.episodes == {}


def test_the_grouped_messages_do_not_depend_on_batching_and_repeat_after_a_replay():
    items = storm(2_000) + ticks(1, 6) + storm(2_000, at=T0 + 7 * MINUTE, active=False) + ticks(9)
    whole = [m.to_dict() for m in messages(route(AlertRouter(GROUPED), items, batch=len(items)))]
    one_by_one = [m.to_dict() for m in messages(route(AlertRouter(GROUPED), items, batch=1))]
    assert whole == one_by_one and len(whole) == 3
    # Resume from a snapshot taken while a group waits, replay the rest: the same ids and bodies.
    live = AlertRouter(GROUPED)
    first = messages(route(live, items[:1500]))
    assert first == []  # still inside group_wait
    snapshot = copy.deepcopy(live)
    rest = [m.to_dict() for m in messages(route(live, items[1500:], batch=333))]
    replayed = [m.to_dict() for m in messages(route(snapshot, items[1500:], batch=77))]
    assert rest == replayed == whole


def test_a_single_alert_is_the_usual_message_sent_after_the_group_wait():
    router = AlertRouter(GROUPED)
    assert messages(router.add([cand(T0, "sku-1")], NOW)) == []
    assert messages(router.add(ticks(10 / 60), NOW)) == []  # at the flush time itself a sibling may still come
    (sent,) = messages(router.add([cand(T0 + 10 * SECOND + 1, "other", rule="stock.low", severity="warning")], NOW))
    assert sent.alert_id == f"stock.out:sku-1@{T0}/firing" and sent.ts == T0 and sent.group is None
    assert "group" not in sent.to_dict()


def test_the_cap_is_per_rule_and_a_notification_beyond_it_is_one_grouped_message():
    router = AlertRouter(GROUPED)
    items = [cand(T0 + i, f"sku-{i}") for i in range(5)]
    items += [cand(T0 + i, f"channel-{i}", rule="traffic.drop") for i in range(6)]
    sent = messages(route(router, items + ticks(1)))
    assert sorted((m.rule, m.key) for m in sent) == sorted(
        [("stock.out", f"sku-{i}") for i in range(5)] + [("traffic.drop", "*")])


def test_a_steady_trickle_stays_within_the_cap_in_every_minute():
    config = RouterConfig(escalate_after_ms=60 * MINUTE, warning_limit_ms=60 * MINUTE, reminder_ms=0,
                          group_wait_ms=0, group_interval_ms=5 * SECOND, rule_max_per_min=3)
    router = AlertRouter(config)
    sent_at: list[tuple[int, AlertMessage]] = []
    for i in range(600):  # a new SKU out every 2 s for 20 minutes, one per batch
        ts = T0 + i * 2 * SECOND
        for m in messages(router.add([cand(ts, f"sku-{i}")], NOW)):
            sent_at.append((ts, m))
    times = [ts for ts, _ in sent_at]
    assert all(sum(1 for t in times if start <= t < start + MINUTE) <= 3 for start in times)
    # Nothing is lost: every SKU is in one message, or waits for the next minute's.
    keys = [m.key for _, m in sent_at if m.group is None]
    grouped = sum(m.count for _, m in sent_at if m.group is not None)
    waiting = len(router.groups["stock.out"].pending)
    assert len(set(keys)) == len(keys) and len(keys) + grouped + waiting == 600 and waiting <= 30


def test_without_grouping_every_change_goes_out_at_once():
    router = AlertRouter(RouterConfig())
    assert len(messages(router.add(storm(50), NOW))) == 50


def test_a_router_snapshotted_before_grouping_resumes():
    router = AlertRouter(GROUPED)
    router.add([cand(T0, "sku-1")], NOW)
    state = router.__dict__.copy()
    for name in ("groups", "due_floor", "resolved_floor"):
        del state[name]
    old = AlertRouter.__new__(AlertRouter)
    old.__setstate__(state)
    resumed = pickle.loads(pickle.dumps(old))
    assert resumed.groups == {} and resumed.due_floor == T0 + 5 * MINUTE
    out = resumed.add(ticks(6), NOW)
    assert [m.alert_id for m in messages(out)] == [f"stock.out:sku-1@{T0}/escalated"]


@pytest.mark.parametrize("workers", [1])
def test_a_storm_through_the_flow_is_a_handful_of_messages_and_the_full_list_in_redis(workers):
    records = []
    for offset, c in enumerate(storm() + [cand(T0 + MINUTE, "late-sku")]):
        message = candidate_message(c)
        records.append(InputRecord("alert-candidates", 0, offset, message.value, c.ts, message.key))
    kafka_out, redis_out = [], []
    config = AlertsConfig(router=GROUPED)
    run_main(build_flow(TestingSource(records, batch_size=1000), TestingSink(kafka_out), TestingSink(redis_out),
                        config, lambda: NOW))
    alerts = [orjson.loads(m.value) for m in kafka_out if m.topic == "alerts"]
    assert [(a["dedup_key"], a["count"]) for a in alerts] == [("stock.out:*", 10_000)]
    active = {w.field for w in redis_out if isinstance(w, SetHashField) and w.key == "alerts:active"}
    assert len(active) == 10_001  # the late SKU waits for the next group, but is active at once
    (group,) = [w for w in redis_out if isinstance(w, SetValue)]
    assert group.key == "alerts:group:stock.out" and group.ttl_s == config.stream_dedupe_ttl_s
    listed = orjson.loads(group.value)
    assert listed["alert_id"] == alerts[0]["alert_id"] and listed["count"] == 10_000
    assert len(set(listed["keys"]["firing"])) == 10_000


def test_group_keys_become_one_redis_value():
    keys = GroupKeys("stock.out", "stock.out:*@5/group", 5, 2, {"firing": ("a", "b"), "resolved": ("c",)})
    msgs, writes = router_outputs(keys, AlertsConfig())
    assert msgs == [] and writes == [SetValue("alerts:group:stock.out", orjson.dumps(keys.to_dict()), 7 * 24 * 3600)]
    assert keys.to_dict()["count"] == 3


def test_partition_reports_among_the_records_are_skipped():
    c = cand(T0, "sku-1")
    message = candidate_message(c)
    records = [PartitionStatus("alert-candidates", 0, False, 1),
               InputRecord("alert-candidates", 0, 0, message.value, c.ts, message.key),
               PartitionStatus("alert-candidates", 0, True, 1)]
    kafka_out = []
    run_main(build_flow(TestingSource(records), TestingSink(kafka_out), TestingSink([]),
                        AlertsConfig(router=RouterConfig()), lambda: NOW))
    assert [orjson.loads(m.value)["alert_id"] for m in kafka_out] == [f"stock.out:sku-1@{T0}/firing"]
