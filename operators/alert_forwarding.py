"""What an `alerts` message becomes in Alertmanager and in PagerDuty: pure mapping.

Alertmanager (API v2, `POST /api/v2/alerts`) identifies an alert by its labels, so the
labels are the ones that stay fixed for an episode: `alertname` (the rule), `key`,
`severity`, `group` (the rule's family, the part before the first dot: `stock`,
`payment`, ...) and `service="shopstream"`. Everything that changes (summary, value,
status) is an annotation. `startsAt` is the episode's `first_seen_ts`; a firing alert
carries `endsAt` a few resend intervals ahead (Prometheus does the same), so it stays
active only while the forwarder keeps re-posting it, and a resolved one carries its
resolve time.

PagerDuty (Events API v2) gets `trigger` for `firing` and `escalated` (same
`dedup_key`: one incident, updated), `acknowledge` when on-call acknowledged the
episode in shopstream (`alerts:ack:{dedup_key}`), `resolve` for `resolved`.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

SERVICE = "shopstream"
PD_DEDUP_MAX = 255
PD_SUMMARY_MAX = 1024
# PagerDuty's severities; an escalated warning is an error, an escalated critical stays critical.
_PD_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}
_PD_ESCALATED = {"critical": "critical", "warning": "error", "info": "warning"}


def iso(ts_ms: int) -> str:
    """RFC 3339 with milliseconds, UTC: what both APIs accept."""
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def rule_family(rule: str) -> str:
    return rule.split(".", 1)[0]


def labels(alert: dict[str, Any]) -> dict[str, str]:
    return {
        "alertname": str(alert["rule"]),
        "severity": str(alert["severity"]),
        "key": str(alert["key"]),
        "group": rule_family(str(alert["rule"])),
        "service": SERVICE,
    }


def _number(value: Any) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def alertmanager_alert(alert: dict[str, Any], now_ms: int, hold_ms: int) -> dict[str, Any]:
    """The Alertmanager v2 alert for the message's current state.

    `hold_ms`: how long a firing alert stays active in Alertmanager without a re-post."""
    annotations = {
        "summary": str(alert.get("summary", "")),
        "runbook_url": str(alert.get("runbook") or ""),
        "value": _number(alert.get("value")),
        "threshold": _number(alert.get("threshold")),
        "status": str(alert["status"]),
        "count": str(alert.get("count", 1)),
        "dedup_key": str(alert["dedup_key"]),
        "alert_id": str(alert["alert_id"]),
    }
    if alert.get("acknowledged"):
        annotations["acknowledged"] = "true"
    out = {
        "labels": labels(alert),
        "annotations": {k: v for k, v in annotations.items() if v != ""},
        "startsAt": iso(int(alert["first_seen_ts"])),
    }
    if alert["status"] == "resolved":
        # Never before startsAt: Alertmanager refuses an alert that ends before it starts.
        out["endsAt"] = iso(max(int(alert["ts"]), int(alert["first_seen_ts"])))
    else:
        out["endsAt"] = iso(now_ms + hold_ms)
    return out


def resolved_now(am_alert: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """The same Alertmanager alert (same labels), ended now."""
    return {**am_alert, "endsAt": iso(max(now_ms, _parse_ms(am_alert["startsAt"])))}


def _parse_ms(text: str) -> int:
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def pagerduty_dedup_key(dedup_key: str) -> str:
    """The contract's dedup_key, cut to PagerDuty's 255 characters; a longer one keeps its
    head and a hash of the whole, so two long keys never share an incident."""
    if len(dedup_key) <= PD_DEDUP_MAX:
        return dedup_key
    digest = hashlib.sha256(dedup_key.encode()).hexdigest()[:16]
    return dedup_key[: PD_DEDUP_MAX - len(digest) - 1] + "~" + digest


def pagerduty_action(alert: dict[str, Any]) -> str:
    return "resolve" if alert["status"] == "resolved" else "trigger"


def pagerduty_event(alert: dict[str, Any], routing_key: str, action: str | None = None) -> dict[str, Any]:
    """A PagerDuty Events API v2 event for the message (`action` overrides, e.g. acknowledge)."""
    action = action or pagerduty_action(alert)
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": pagerduty_dedup_key(str(alert["dedup_key"])),
    }
    if action != "trigger":
        return event  # resolve and acknowledge carry only the key
    severity = str(alert["severity"])
    escalated = alert["status"] == "escalated"
    summary = str(alert.get("summary") or alert["dedup_key"])
    if escalated:
        summary = "[escalated] " + summary
    event["payload"] = {
        "summary": summary[:PD_SUMMARY_MAX],
        "source": f"{SERVICE}:{alert['key']}"[:255],
        "severity": (_PD_ESCALATED if escalated else _PD_SEVERITY).get(severity, "warning"),
        "timestamp": iso(int(alert["ts"])),
        "component": str(alert["rule"]),
        "group": rule_family(str(alert["rule"])),
        "class": str(alert["status"]),
        "custom_details": alert,
    }
    runbook = str(alert.get("runbook") or "")
    if runbook.startswith(("http://", "https://")):
        event["links"] = [{"href": runbook, "text": "runbook"}]
    return event
