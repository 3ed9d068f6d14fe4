"""The alert lifecycle on hand-built candidate streams: dedupe, count, reminders,
escalation, acknowledgement, resolution, and ids that survive a replay."""

import copy

from operators.alert_router import (
    Ack,
    AckCleared,
    ActiveAlert,
    AlertMessage,
    AlertRouter,
    RouterConfig,
    StreamTick,
)
from operators.alerts import AlertCandidate

MINUTE = 60_000
T0 = 1_763_683_200_000
NOW = 1_000  # a fixed wall clock: time moves by event time only
CONFIG = RouterConfig(escalate_after_ms=5 * MINUTE, warning_limit_ms=30 * MINUTE, reminder_ms=15 * MINUTE)


def cand(minute, active=True, severity="critical", key="sku-1", rule="stock.out", value=0.0):
    return AlertCandidate(
        ts=T0 + int(minute * MINUTE), rule=rule, key=key, active=active, severity=severity,
        summary=f"{key} is out of stock", value=value, threshold=0.0, runbook="restock it",
    )


def tick(minute):
    return StreamTick(T0 + int(minute * MINUTE))


def messages(outputs):
    return [o for o in outputs if isinstance(o, AlertMessage)]


def run(router, *batches, acks=None):
    out = []
    for batch in batches:
        out += router.add(batch, NOW, acks or (lambda keys: {}))
    return out


def test_a_condition_is_one_alert_with_a_growing_count_then_resolves():
    router = AlertRouter(RouterConfig(escalate_after_ms=60 * MINUTE, warning_limit_ms=60 * MINUTE, reminder_ms=0))
    out = run(router, [cand(0)], [cand(0.1), cand(0.2)], [cand(1)], [cand(2, active=False, value=12)])
    sent = messages(out)
    assert [(m.status, m.count) for m in sent] == [("firing", 1), ("resolved", 4)]
    first, resolved = sent
    assert first.alert_id == f"stock.out:sku-1@{T0}/firing"
    assert resolved.alert_id == f"stock.out:sku-1@{T0}/resolved"
    assert resolved.first_seen_ts == T0 and resolved.value == 12 and resolved.ts == T0 + 2 * MINUTE
    assert first.to_dict() == {
        "alert_id": f"stock.out:sku-1@{T0}/firing", "ts": T0, "dedup_key": "stock.out:sku-1",
        "rule": "stock.out", "severity": "critical", "status": "firing", "key": "sku-1",
        "summary": "sku-1 is out of stock", "value": 0.0, "threshold": 0.0, "first_seen_ts": T0,
        "count": 1, "runbook": "restock it",
    }
    # alerts:active follows: the count while open, then removed, and the ack cleared.
    active = [o for o in out if isinstance(o, ActiveAlert)]
    assert [a.alert.count if a.alert else None for a in active] == [1, 3, 4, None]
    assert [o for o in out if isinstance(o, AckCleared)] == [AckCleared("stock.out:sku-1", T0)]
    assert router.episodes == {}


def test_critical_escalates_after_five_minutes_of_event_time_then_reminds():
    router = AlertRouter(CONFIG)
    out = run(router, [cand(0)], [tick(4.9)], [tick(5)], [tick(14)], [tick(15.5)], [tick(31)])
    sent = messages(out)
    assert [(m.status, m.ts - T0, m.reminder) for m in sent] == [
        ("firing", 0, False),
        ("escalated", 5 * MINUTE, False),
        ("escalated", 15 * MINUTE, True),
        ("escalated", 30 * MINUTE, True),
    ]
    assert sent[2].alert_id.endswith("/reminder-1") and sent[3].alert_id.endswith("/reminder-2")


def test_a_warning_escalates_only_past_its_limit_and_info_never_reminds():
    router = AlertRouter(CONFIG)
    out = run(router, [cand(0, severity="warning"), cand(0, severity="info", key="x")], [tick(29)], [tick(30)])
    sent = messages(out)
    assert [(m.dedup_key, m.status, m.ts - T0) for m in sent if not m.reminder] == [
        ("stock.out:sku-1", "firing", 0),
        ("stock.out:x", "firing", 0),
        ("stock.out:sku-1", "escalated", 30 * MINUTE),
    ]
    assert [m.dedup_key for m in sent if m.reminder] == ["stock.out:sku-1"]  # at 15 min


def test_acknowledged_alerts_neither_escalate_nor_remind():
    router = AlertRouter(CONFIG)
    asked = []

    def acks(keys):
        asked.append(list(keys))
        return {"stock.out:sku-1": Ack(T0)}

    out = run(router, [cand(0), cand(0, key="sku-2")], [tick(1)], [tick(6)], [tick(40)], acks=acks)
    sent = messages(out)
    assert [(m.key, m.status) for m in sent if not m.reminder] == [
        ("sku-1", "firing"), ("sku-2", "firing"), ("sku-2", "escalated"),
    ]
    assert all(m.key == "sku-2" for m in sent if m.reminder)
    # Redis is asked only when a timer is due, once per batch, only for what is due.
    assert asked == [["stock.out:sku-1", "stock.out:sku-2"], ["stock.out:sku-2"]]
    acked = [o for o in out if isinstance(o, ActiveAlert) and o.dedup_key == "stock.out:sku-1"][-1]
    assert acked.alert.acknowledged and acked.alert.to_dict()["acknowledged"] is True


def test_an_ack_for_an_earlier_episode_does_not_silence_a_new_one():
    router = AlertRouter(CONFIG)
    out = run(router, [cand(0)], [cand(1, active=False)], [cand(2)], [tick(8)],
              acks=lambda keys: {k: Ack(T0) for k in keys})
    assert [m.status for m in messages(out)] == ["firing", "resolved", "firing", "escalated"]


def test_a_bare_ack_value_acknowledges_the_open_episode():
    router = AlertRouter(CONFIG)
    out = run(router, [cand(0)], [tick(8)], acks=lambda keys: {k: Ack(None) for k in keys})
    assert [m.status for m in messages(out)] == ["firing"]


def test_a_storm_of_repeats_is_one_alert_plus_reminders_and_one_active_write_per_batch():
    router = AlertRouter(RouterConfig(escalate_after_ms=5 * MINUTE, reminder_ms=MINUTE))
    out = []
    batch_writes = []
    for second in range(0, 10 * 60, 1):  # 10 minutes, ~1,667 candidates a second
        batch = [cand(second / 60 + i / 100_000) for i in range(0, 1667, 50)]
        result = router.add(batch, NOW, lambda keys: {})
        batch_writes.append(sum(isinstance(o, ActiveAlert) for o in result))
        out += result
    sent = messages(out)
    assert [m.alert_id.rsplit("/", 1)[1] for m in sent] == ["firing", "reminder-1", "reminder-2", "reminder-3",
                                                           "reminder-4", "escalated"] + [
        f"reminder-{n}" for n in range(6, 10)
    ]
    assert max(batch_writes) == 1
    assert router.episodes["stock.out:sku-1"].count == 600 * len(range(0, 1667, 50))


def test_severity_upgrade_starts_the_escalation_clock_at_the_upgrade():
    router = AlertRouter(CONFIG)
    out = run(router, [cand(0, severity="warning")], [cand(10, severity="critical")], [tick(14.9)], [tick(15)])
    assert [(m.status, m.severity, m.ts - T0) for m in messages(out) if not m.reminder] == [
        ("firing", "warning", 0), ("escalated", "critical", 15 * MINUTE),
    ]


def test_a_replay_from_a_snapshot_sends_the_same_ids_and_ignores_stale_repeats():
    batches = [[cand(0)], [tick(3)], [tick(7)], [cand(9, active=False)], [tick(20)]]
    live = AlertRouter(CONFIG)
    run(live, *batches[:2])
    snapshot = copy.deepcopy(live)
    first = [m.alert_id for m in messages(run(live, *batches[2:]))]
    # Resume from the snapshot and replay the same input, grouped differently.
    replayed = [m.alert_id for m in messages(run(snapshot, batches[2] + batches[3], batches[4]))]
    assert first == replayed == [f"stock.out:sku-1@{T0}/escalated", f"stock.out:sku-1@{T0}/resolved"]
    # The detector's candidates arriving again after the resolve open nothing.
    assert messages(run(live, [cand(0)], [cand(9, active=False)])) == []


def test_timers_fire_by_wall_clock_when_input_is_quiet():
    router = AlertRouter(CONFIG)
    router.add([cand(0)], now_ms=NOW)
    wake = router.next_wake_ms(NOW)
    assert wake == NOW + 5 * MINUTE
    assert messages(router.advance(wake - 1)) == []
    assert [m.status for m in messages(router.advance(wake))] == ["escalated"]


def test_a_resumed_router_does_not_count_downtime_as_quiet_input():
    router = AlertRouter(CONFIG)
    router.add([cand(0)], now_ms=NOW)
    router.resume(NOW + 60 * MINUTE)  # restarted an hour later
    assert messages(router.advance(NOW + 60 * MINUTE)) == []
