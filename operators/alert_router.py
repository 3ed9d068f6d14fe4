"""The alert router: alert candidates in, one on-call message per state change out.

Pure logic, no Bytewax, Kafka or Redis. One `AlertRouter` owns every open alert
(an *episode*: from the candidate that starts a condition to the one that clears
it) and decides, on the stream's event time:

- `firing` when a condition starts; repeated `active` candidates only grow `count`;
- `escalated` when a `critical` alert stays unacknowledged `escalate_after_ms`, or a
  `warning` stays unacknowledged past `warning_limit_ms`;
- a reminder (the current status again, `reminder: true`) every `reminder_ms`
  while the alert is open and unacknowledged;
- `resolved` when an inactive candidate for it arrives.

Every message id is derived from the episode and the state change
(`{dedup_key}@{first_seen_ts}/firing`, `/escalated`, `/reminder-3`, `/resolved`),
never from a counter or the wall clock, so a replay after a crash re-sends the
same ids and the Redis stream keeps each message once.

Acknowledgements live in Redis (set by on-call); the router asks for them through
an injected lookup, once per call and only for alerts that have a timer due, since
an acknowledgement matters only when it would stop an escalation or a reminder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from operators.alerts import SEVERITIES, AlertCandidate
from operators.clock import StreamClock

STATUSES = ("firing", "escalated", "resolved")
_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class RouterConfig:
    escalate_after_ms: int = 5 * 60_000  # a critical alert unacknowledged this long escalates
    warning_limit_ms: int = 30 * 60_000  # a warning still open and unacknowledged this long escalates
    reminder_ms: int = 15 * 60_000  # repeat an open, unacknowledged alert this often; 0 = never
    forget_resolved_ms: int = 24 * 3_600_000  # how long a resolved episode shuts out replayed candidates


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledgement read from `alerts:ack:{dedup_key}`.

    `first_seen_ts` names the episode it was given for (set by `shopstream alerts ack`);
    None (a bare `SET ... 1` by hand) acknowledges whatever episode is open.
    """

    first_seen_ts: int | None = None


# dedup keys -> the acknowledgements that exist among them
AckLookup = Callable[[Sequence[str]], Mapping[str, Ack]]


def no_acks(keys: Sequence[str]) -> Mapping[str, Ack]:
    return {}


@dataclass(frozen=True, slots=True)
class StreamTick:
    """Event time from elsewhere in the stream (an input window closed): moves the clock."""

    ts: int


@dataclass(frozen=True, slots=True)
class AlertMessage:
    """One message on the contract's `alerts` topic."""

    alert_id: str
    ts: int
    dedup_key: str
    rule: str
    severity: str
    status: str
    key: str
    summary: str
    first_seen_ts: int
    count: int
    value: float | None = None
    threshold: float | None = None
    runbook: str | None = None
    reminder: bool = False
    acknowledged: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "alert_id": self.alert_id,
            "ts": self.ts,
            "dedup_key": self.dedup_key,
            "rule": self.rule,
            "severity": self.severity,
            "status": self.status,
            "key": self.key,
            "summary": self.summary,
        }
        for name in ("value", "threshold"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out["first_seen_ts"] = self.first_seen_ts
        out["count"] = self.count
        if self.runbook is not None:
            out["runbook"] = self.runbook
        # Extras beyond the contract (consumers ignore unknown fields).
        if self.reminder:
            out["reminder"] = True
        if self.acknowledged:
            out["acknowledged"] = True
        return out


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    """What `alerts:active` should hold for `dedup_key` now: the alert, or nothing."""

    dedup_key: str
    alert: AlertMessage | None


@dataclass(frozen=True, slots=True)
class AckCleared:
    """The episode that began at `first_seen_ts` is over: its acknowledgement goes."""

    dedup_key: str
    first_seen_ts: int


RouterOutput = AlertMessage | ActiveAlert | AckCleared


@dataclass
class Episode:
    rule: str
    key: str
    severity: str
    summary: str
    value: float | None
    threshold: float | None
    runbook: str | None
    first_seen_ts: int
    last_ts: int
    count: int = 1
    status: str = "firing"
    escalate_at: int | None = None
    next_reminder_at: int | None = None
    acknowledged: bool = False
    last_alert_id: str = ""

    @property
    def dedup_key(self) -> str:
        return f"{self.rule}:{self.key}"

    def next_due(self) -> int | None:
        if self.acknowledged:
            return None
        dues = [t for t in (self.escalate_at if self.status == "firing" else None, self.next_reminder_at) if t is not None]
        return min(dues, default=None)

    def message(self, status: str, ts: int, suffix: str, reminder: bool = False) -> AlertMessage:
        alert_id = f"{self.dedup_key}@{self.first_seen_ts}/{suffix}"
        if not reminder:
            self.last_alert_id = alert_id
        return self._as_message(alert_id, ts, status, reminder=reminder)

    def current(self) -> AlertMessage:
        """The alert as `alerts:active` shows it: the last state change, with today's count."""
        return self._as_message(self.last_alert_id, self.last_ts, self.status, acknowledged=self.acknowledged)

    def _as_message(self, alert_id: str, ts: int, status: str, **flags: bool) -> AlertMessage:
        return AlertMessage(
            alert_id=alert_id,
            ts=ts,
            dedup_key=self.dedup_key,
            rule=self.rule,
            severity=self.severity,
            status=status,
            key=self.key,
            summary=self.summary,
            first_seen_ts=self.first_seen_ts,
            count=self.count,
            value=self.value,
            threshold=self.threshold,
            runbook=self.runbook,
            **flags,
        )


@dataclass
class AlertRouter:
    config: RouterConfig
    clock: StreamClock = field(default_factory=lambda: StreamClock(lateness_ms=0))
    episodes: dict[str, Episode] = field(default_factory=dict)
    resolved_at: dict[str, int] = field(default_factory=dict)  # dedup_key -> ts of its last resolve

    def resume(self, now_ms: int) -> None:
        """Restored from a snapshot: the downtime is not quiet input."""
        self.clock.touch(now_ms)

    # -- the step ------------------------------------------------------------------------
    def add(
        self, items: Iterable[AlertCandidate | StreamTick], now_ms: int, acks: AckLookup = no_acks
    ) -> list[RouterOutput]:
        """Route one batch: candidates and ticks in event-time order, timers in between."""
        ordered = sorted(items, key=lambda item: item.ts)
        for item in ordered:
            self.clock.observe(item.ts, now_ms)
        horizon = self.clock.watermark(now_ms)
        out: list[RouterOutput] = []
        if horizon is None:
            return out
        acked = self._read_acks(horizon, acks)
        for item in ordered:
            self._fire_timers(item.ts, acked, out)
            if isinstance(item, AlertCandidate):
                self._apply(item, out)
        self._fire_timers(horizon, acked, out)
        self._forget(horizon)
        return coalesce(out)

    def advance(self, now_ms: int, acks: AckLookup = no_acks) -> list[RouterOutput]:
        """Fire the timers that are due by now (input may have gone quiet)."""
        return self.add((), now_ms, acks)

    def next_wake_ms(self, now_ms: int) -> int | None:
        """Wall-clock ms at which the earliest timer is due if input stays quiet."""
        due = min((d for e in self.episodes.values() if (d := e.next_due()) is not None), default=None)
        return None if due is None else self.clock.wall_time_when(due, now_ms)

    # -- internals -----------------------------------------------------------------------
    def _read_acks(self, horizon: int, acks: AckLookup) -> set[str]:
        due = sorted(k for k, e in self.episodes.items() if (d := e.next_due()) is not None and d <= horizon)
        if not due:
            return set()
        found = acks(due)
        return {
            key
            for key, ack in found.items()
            if key in self.episodes
            and (ack.first_seen_ts is None or ack.first_seen_ts == self.episodes[key].first_seen_ts)
        }

    def _fire_timers(self, upto: int, acked: set[str], out: list[RouterOutput]) -> None:
        due = sorted(
            (d, key) for key, e in self.episodes.items() if (d := e.next_due()) is not None and d <= upto
        )
        for _, key in due:
            episode = self.episodes[key]
            if key in acked:
                episode.acknowledged = True
                out.append(ActiveAlert(key, episode.current()))
                continue
            escalated_at = None
            if episode.status == "firing" and episode.escalate_at is not None and episode.escalate_at <= upto:
                escalated_at = episode.escalate_at
                episode.status = "escalated"
                episode.last_ts = escalated_at
                out.append(episode.message("escalated", escalated_at, "escalated"))
                out.append(ActiveAlert(key, episode.current()))
            if episode.next_reminder_at is not None and episode.next_reminder_at <= upto:
                interval = self.config.reminder_ms
                due_at = episode.next_reminder_at
                # A long quiet stretch owes one reminder, not one per missed interval.
                missed = (upto - due_at) // interval
                due_at += missed * interval
                if due_at != escalated_at:
                    number = (due_at - episode.first_seen_ts) // interval
                    out.append(episode.message(episode.status, due_at, f"reminder-{number}", reminder=True))
                episode.next_reminder_at = due_at + interval

    def _apply(self, candidate: AlertCandidate, out: list[RouterOutput]) -> None:
        key = candidate.dedup_key
        episode = self.episodes.get(key)
        if not candidate.active:
            if episode is None:
                return
            del self.episodes[key]
            self.resolved_at[key] = candidate.ts
            episode.last_ts = candidate.ts
            episode.summary = candidate.summary  # what cleared it, in the detector's words
            if candidate.value is not None:
                episode.value = candidate.value
            out.append(episode.message("resolved", candidate.ts, "resolved"))
            out.append(ActiveAlert(key, None))
            out.append(AckCleared(key, episode.first_seen_ts))
            return
        if episode is not None:
            episode.count += 1
            episode.summary = candidate.summary
            episode.value = candidate.value
            episode.threshold = candidate.threshold
            episode.runbook = candidate.runbook or episode.runbook
            if _RANK[candidate.severity] > _RANK[episode.severity]:
                episode.severity = candidate.severity
                if episode.status == "firing":
                    episode.escalate_at = self._escalation_due(candidate.severity, candidate.ts, episode.escalate_at)
            out.append(ActiveAlert(key, episode.current()))
            return
        if candidate.ts <= self.resolved_at.get(key, -1):
            return  # a replayed candidate of an episode that is already over
        episode = Episode(
            rule=candidate.rule,
            key=candidate.key,
            severity=candidate.severity,
            summary=candidate.summary,
            value=candidate.value,
            threshold=candidate.threshold,
            runbook=candidate.runbook,
            first_seen_ts=candidate.ts,
            last_ts=candidate.ts,
            escalate_at=self._escalation_due(candidate.severity, candidate.ts, None),
            # `info` is for the record, not for waking anyone: no reminders.
            next_reminder_at=(
                candidate.ts + self.config.reminder_ms
                if self.config.reminder_ms > 0 and candidate.severity != "info"
                else None
            ),
        )
        self.episodes[key] = episode
        out.append(episode.message("firing", candidate.ts, "firing"))
        out.append(ActiveAlert(key, episode.current()))

    def _escalation_due(self, severity: str, since: int, current: int | None) -> int | None:
        if severity == "critical":
            due = since + self.config.escalate_after_ms
        elif severity == "warning":
            due = since + self.config.warning_limit_ms
        else:
            return current
        return due if current is None else min(current, due)

    def _forget(self, horizon: int) -> None:
        cutoff = horizon - self.config.forget_resolved_ms
        if self.resolved_at and min(self.resolved_at.values()) < cutoff:
            self.resolved_at = {k: ts for k, ts in self.resolved_at.items() if ts >= cutoff}


def coalesce(out: list[RouterOutput]) -> list[RouterOutput]:
    """Messages in order; `alerts:active` once per key (its final state), so a storm
    of repeats costs one Redis write per batch, not one per candidate."""
    last_active: dict[str, ActiveAlert] = {}
    for item in out:
        if isinstance(item, ActiveAlert):
            last_active.pop(item.dedup_key, None)
            last_active[item.dedup_key] = item
    kept = [item for item in out if not isinstance(item, ActiveAlert)]
    return kept + list(last_active.values())
