"""What an alerts message becomes in Alertmanager and in PagerDuty."""

from operators.alert_forwarding import (
    alertmanager_alert,
    iso,
    pagerduty_dedup_key,
    pagerduty_event,
    resolved_now,
)

T0 = 1_763_683_200_000
NOW = T0 + 90_000


def alert(status="firing", severity="critical", **extra):
    out = {"alert_id": f"stock.out:sku-1@{T0}/{status}", "ts": T0 + 60_000, "dedup_key": "stock.out:sku-1",
           "rule": "stock.out", "severity": severity, "status": status, "key": "sku-1",
           "summary": "sku-1 is out of stock", "value": 0.0, "threshold": 0.0, "first_seen_ts": T0, "count": 3,
           "runbook": "https://runbooks.example/stock-out"}
    return {**out, **extra}


def test_alertmanager_labels_stay_fixed_for_an_episode_and_the_rest_are_annotations():
    firing = alertmanager_alert(alert(), NOW, hold_ms=240_000)
    assert firing == {
        "labels": {"alertname": "stock.out", "severity": "critical", "key": "sku-1", "group": "stock",
                   "service": "shopstream"},
        "annotations": {"summary": "sku-1 is out of stock", "runbook_url": "https://runbooks.example/stock-out",
                        "value": "0", "threshold": "0", "status": "firing", "count": "3",
                        "dedup_key": "stock.out:sku-1", "alert_id": f"stock.out:sku-1@{T0}/firing"},
        "startsAt": "2025-11-21T00:00:00.000Z",
        "endsAt": iso(NOW + 240_000),
    }
    escalated = alertmanager_alert(alert("escalated"), NOW, 240_000)
    assert escalated["labels"] == firing["labels"] and escalated["annotations"]["status"] == "escalated"
    resolved = alertmanager_alert(alert("resolved", ts=T0 + 600_000), NOW, 240_000)
    assert resolved["labels"] == firing["labels"]
    assert (resolved["startsAt"], resolved["endsAt"]) == (iso(T0), iso(T0 + 600_000))


def test_a_resolve_never_ends_before_it_starts_and_resolved_now_keeps_the_labels():
    resolved = alertmanager_alert(alert("resolved", ts=T0 - 5), NOW, 1)
    assert resolved["endsAt"] == resolved["startsAt"]
    ended = resolved_now(alertmanager_alert(alert(), NOW, 1), NOW + 7)
    assert ended["endsAt"] == iso(NOW + 7) and ended["labels"]["key"] == "sku-1"


def test_pagerduty_trigger_carries_the_schema_and_the_contract_dedup_key():
    event = pagerduty_event(alert(), "R0UTINGKEY")
    assert event["routing_key"] == "R0UTINGKEY" and event["event_action"] == "trigger"
    assert event["dedup_key"] == "stock.out:sku-1"
    payload = event["payload"]
    assert payload["summary"] == "sku-1 is out of stock"
    assert payload["source"] == "shopstream:sku-1"
    assert payload["severity"] == "critical"
    assert payload["timestamp"] == iso(T0 + 60_000)
    assert payload["custom_details"]["alert_id"] == f"stock.out:sku-1@{T0}/firing"
    assert event["links"] == [{"href": "https://runbooks.example/stock-out", "text": "runbook"}]


def test_pagerduty_escalation_raises_severity_and_resolve_and_acknowledge_carry_only_the_key():
    assert pagerduty_event(alert("escalated", severity="warning"), "k")["payload"]["severity"] == "error"
    assert pagerduty_event(alert("escalated"), "k")["payload"]["severity"] == "critical"
    assert pagerduty_event(alert(severity="info"), "k")["payload"]["severity"] == "info"
    assert pagerduty_event(alert("resolved"), "k") == {"routing_key": "k", "event_action": "resolve",
                                                       "dedup_key": "stock.out:sku-1"}
    assert pagerduty_event(alert(), "k", "acknowledge")["event_action"] == "acknowledge"


def test_pagerduty_dedup_key_is_at_most_255_characters_and_long_keys_stay_distinct():
    short = "stock.out:" + "x" * 245
    assert pagerduty_dedup_key(short) == short
    a, b = "funnel.dropoff:" + "a" * 300, "funnel.dropoff:" + "a" * 299 + "b"
    assert len(pagerduty_dedup_key(a)) == 255 == len(pagerduty_dedup_key(b))
    assert pagerduty_dedup_key(a) != pagerduty_dedup_key(b)
    assert pagerduty_dedup_key(a) == pagerduty_dedup_key(a)
