"""Reminders are for people: a replay or a backlog (event time hours behind the wall
clock) sends no burst of stale reminders, and live reminders go on once caught up.
Escalations stay state changes on event time, whatever the wall clock says."""

from operators.alert_router import AlertMessage, AlertRouter, RouterConfig, StreamTick
from operators.alerts import AlertCandidate

MINUTE = 60_000
HOUR = 60 * MINUTE
T0 = 1_763_683_200_000
CONFIG = RouterConfig(escalate_after_ms=5 * MINUTE, warning_limit_ms=30 * MINUTE, reminder_ms=15 * MINUTE)


def cand(minute, active=True):
    return AlertCandidate(ts=T0 + int(minute * MINUTE), rule="stock.out", key="sku-1", active=active,
                          severity="critical", summary="sku-1 is out of stock", value=0.0, threshold=0.0)


def sent(outputs):
    return [o for o in outputs if isinstance(o, AlertMessage)]


def test_a_backlog_of_ten_hours_sends_state_changes_but_no_stale_reminders():
    router = AlertRouter(CONFIG)
    wall = T0 + 10 * HOUR  # the router reads a backlog from ten hours ago
    out = router.add([cand(0)], wall)
    for minute in range(1, 10 * 60, 3):  # catching up, a batch per 3 minutes of event time
        out += router.add([StreamTick(T0 + minute * MINUTE)], wall)
        wall += 50  # at full speed
    statuses = [(m.status, m.reminder) for m in sent(out)]
    assert statuses == [("firing", False), ("escalated", False)]
    # Caught up (event time near the wall clock): reminders every interval again.
    live = []
    for minute in range(600, 660):
        live += router.add([StreamTick(T0 + minute * MINUTE)], T0 + minute * MINUTE + 2_000)
    reminders = [m for m in sent(live) if m.reminder]
    assert [(m.ts - T0) // MINUTE for m in reminders] == [600, 615, 630, 645]


def test_the_same_backlog_gives_the_same_state_changes_as_living_through_it():
    def run(wall_for):
        router = AlertRouter(CONFIG)
        out = router.add([cand(0)], wall_for(0))
        for minute in range(1, 120):
            out += router.add([StreamTick(T0 + minute * MINUTE)] + ([cand(minute, active=False)] if minute == 100
                                                                    else []), wall_for(minute))
        return [(m.alert_id, m.ts) for m in sent(out) if not m.reminder]

    live = run(lambda minute: T0 + minute * MINUTE)
    replay = run(lambda minute: T0 + 12 * HOUR + minute)
    assert live == replay == [(f"stock.out:sku-1@{T0}/firing", T0), (f"stock.out:sku-1@{T0}/escalated", T0 + 5 * MINUTE),
                              (f"stock.out:sku-1@{T0}/resolved", T0 + 100 * MINUTE)]
