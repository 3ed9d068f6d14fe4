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

Storms are grouped the way Alertmanager groups them (`group_by: [rule]`,
`group_wait`, `group_interval`), on event time: a rule's state changes wait
`group_wait_ms` after the first one, then at least `group_interval_ms` after the
rule's previous notification, and go out together. A notification that fits the
rule's budget (`rule_max_per_min` messages in any minute of event time) is sent as
the individual messages, unchanged; a larger one becomes a single grouped message
(`dedup_key` `{rule}:*`, `count` = keys, the top keys in `group`) plus the full
key list for Redis (`GroupKeys`). `alerts:active` follows every key at once.
Grouped ids are `{rule}:*@{flush ts}/group`, the flush time derived from event
times only, so a replay repeats them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from operators.alerts import SEVERITIES, AlertCandidate
from operators.clock import StreamClock

STATUSES = ("firing", "escalated", "resolved")
_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
# A reminder due this long (or one interval, if longer) before the wall clock is stale:
# the router is replaying or catching up, and on-call is not reminded of the past.
STALE_REMINDER_MS = 5 * 60_000


@dataclass(frozen=True)
class RouterConfig:
    escalate_after_ms: int = 5 * 60_000  # a critical alert unacknowledged this long escalates
    warning_limit_ms: int = 30 * 60_000  # a warning still open and unacknowledged this long escalates
    reminder_ms: int = 15 * 60_000  # repeat an open, unacknowledged alert this often; 0 = never
    forget_resolved_ms: int = 24 * 3_600_000  # how long a resolved episode shuts out replayed candidates
    # Storm grouping per rule (Alertmanager's group_wait / group_interval); group_interval_ms 0 = off:
    # every state change goes out at once.
    group_wait_ms: int = 0  # a rule's first change waits this long for its siblings
    group_interval_ms: int = 0  # then at least this long after the rule's previous notification
    rule_max_per_min: int = 5  # messages per rule in any minute of event time; more keys: one grouped message
    group_top_keys: int = 10  # keys named in a grouped message (all of them are in `GroupKeys`)

    @property
    def grouping(self) -> bool:
        return self.group_interval_ms > 0


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
    group: Mapping[str, Any] | None = None  # a grouped message: counts and top keys

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
        if self.group is not None:
            out["group"] = self.group
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


@dataclass(frozen=True, slots=True)
class GroupKeys:
    """Every key of a grouped message, by what happened to it (`alerts:group:{rule}`)."""

    rule: str
    alert_id: str
    ts: int
    open: int  # episodes of the rule open after this notification
    keys: Mapping[str, tuple[str, ...]]  # "firing" | "escalated" | "resolved" | "reminder" -> keys

    def to_dict(self) -> dict[str, Any]:
        return {"alert_id": self.alert_id, "ts": self.ts, "rule": self.rule, "open": self.open,
                "count": sum(len(keys) for keys in self.keys.values()),
                "keys": {change: list(keys) for change, keys in self.keys.items()}}


RouterOutput = AlertMessage | ActiveAlert | AckCleared | GroupKeys

GROUP_KEY = "*"  # the `key` of a grouped message: every key of its rule
_CHANGE_RANK = {"escalated": 0, "firing": 1, "reminder": 2, "resolved": 3}
_MINUTE_MS = 60_000


@dataclass
class RuleGroup:
    """One rule's notifications waiting to go out, and when they last did."""

    pending: list[AlertMessage] = field(default_factory=list)
    flush_at: int | None = None
    last_flush: int | None = None
    sent: list[int] = field(default_factory=list)  # flush times of messages sent in the last minute


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
    groups: dict[str, RuleGroup] = field(default_factory=dict)  # rule -> its waiting notifications
    # Lower bounds (never above the truth) of the earliest episode timer and the oldest
    # resolve, so a storm of candidates does not rescan every episode per candidate.
    due_floor: int | None = None
    resolved_floor: int | None = None

    def __setstate__(self, state: dict) -> None:
        # Snapshots from before grouping resume; the floors start conservative.
        state = dict(state)
        state.setdefault("groups", {})
        state["due_floor"] = min((d for e in state["episodes"].values() if (d := e.next_due()) is not None),
                                 default=None)
        state["resolved_floor"] = min(state["resolved_at"].values(), default=None)
        self.__dict__.update(state)

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
            self._fire_timers(item.ts, acked, out, now_ms)
            if isinstance(item, AlertCandidate):
                self._apply(item, out)
        self._fire_timers(horizon, acked, out, now_ms)
        self._forget(horizon)
        return coalesce(out)

    def release(
        self,
        items: Sequence[AlertCandidate],
        horizon: int | None,
        now_ms: int,
        acks: AckLookup = no_acks,
        at_once: Sequence[AlertCandidate] = (),
        ungrouped: Sequence[AlertCandidate] = (),
    ) -> list[RouterOutput]:
        """The hold's step (`operators/alert_hold.py`): event time is the release point
        `horizon`, not the largest event time seen. `ungrouped` (wall-time candidates such
        as `engine.flow_down`) and `at_once` (too late to order) are applied first without
        moving time; then `items`, released in order, with the timers due before each;
        then the timers due by `horizon`."""
        out: list[RouterOutput] = []
        for item in (*ungrouped, *at_once, *items):
            self.clock.observe(item.ts, now_ms)  # the clock the router falls back to
        acked = self._read_acks(horizon, acks) if horizon is not None else set()
        for candidates, grouped in ((ungrouped, False), (at_once, True), (items, True)):
            for candidate in candidates:
                if horizon is not None:
                    self._fire_timers(min(candidate.ts, horizon), acked, out, now_ms)
                self._apply(candidate, out, grouped)
        if horizon is not None:
            self._fire_timers(horizon, acked, out, now_ms)
            self._forget(horizon)
        return coalesce(out)

    def advance(self, now_ms: int, acks: AckLookup = no_acks) -> list[RouterOutput]:
        """Fire the timers that are due by now (input may have gone quiet)."""
        return self.add((), now_ms, acks)

    def next_wake_ms(self, now_ms: int) -> int | None:
        """Wall-clock ms at which the earliest timer is due if input stays quiet."""
        # A group flushes once the clock is past its flush time (`_flush_groups`).
        dues = [d for d in (self.due_floor, *(g.flush_at + 1 for g in self.groups.values() if g.flush_at is not None))
                if d is not None]
        return None if not dues else self.clock.wall_time_when(min(dues), now_ms)

    # -- internals -----------------------------------------------------------------------
    def _read_acks(self, horizon: int, acks: AckLookup) -> set[str]:
        if self.due_floor is None or self.due_floor > horizon:
            return set()
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

    def _fire_timers(self, upto: int, acked: set[str], out: list[RouterOutput], now_ms: int | None = None) -> None:
        """Episode timers due by `upto`, and group flushes before it, in event-time order.

        Escalations are state changes and follow event time alone. A reminder is a repeat
        for people: one due at event time D goes out only while D is within one reminder
        interval (at least STALE_REMINDER_MS) of the wall clock (`now_ms`), so a replay or a backlog, whose event time
        runs hours behind, skips its reminders instead of sending a burst of stale ones;
        live (event time near wall time) or quiet (the clock then follows the wall clock),
        they arrive every interval."""
        if self.due_floor is None or self.due_floor > upto:
            self._flush_groups(upto, out)
            return
        due = sorted(
            (d, key) for key, e in self.episodes.items() if (d := e.next_due()) is not None and d <= upto
        )
        for due_at, key in due:
            self._flush_groups(due_at, out)
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
                self._page(episode.message("escalated", escalated_at, "escalated"), out)
                out.append(ActiveAlert(key, episode.current()))
            if episode.next_reminder_at is not None and episode.next_reminder_at <= upto:
                interval = self.config.reminder_ms
                due_at = episode.next_reminder_at
                # A long quiet stretch owes one reminder, not one per missed interval.
                missed = (upto - due_at) // interval
                due_at += missed * interval
                stale = now_ms is not None and now_ms - due_at >= max(interval, STALE_REMINDER_MS)
                if due_at != escalated_at and not stale:
                    number = (due_at - episode.first_seen_ts) // interval
                    self._page(episode.message(episode.status, due_at, f"reminder-{number}", reminder=True), out)
                episode.next_reminder_at = due_at + interval
        self.due_floor = min((d for e in self.episodes.values() if (d := e.next_due()) is not None), default=None)
        self._flush_groups(upto, out)

    def _apply(self, candidate: AlertCandidate, out: list[RouterOutput], grouped: bool = True) -> None:
        key = candidate.dedup_key
        episode = self.episodes.get(key)
        if not candidate.active:
            if episode is None:
                return
            del self.episodes[key]
            self.resolved_at[key] = candidate.ts
            if self.resolved_floor is None or candidate.ts < self.resolved_floor:
                self.resolved_floor = candidate.ts
            episode.last_ts = candidate.ts
            episode.summary = candidate.summary  # what cleared it, in the detector's words
            if candidate.value is not None:
                episode.value = candidate.value
            self._page(episode.message("resolved", candidate.ts, "resolved"), out, grouped)
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
                    self._note_due(episode.next_due())
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
        self._note_due(episode.next_due())
        self._page(episode.message("firing", candidate.ts, "firing"), out, grouped)
        out.append(ActiveAlert(key, episode.current()))

    def _escalation_due(self, severity: str, since: int, current: int | None) -> int | None:
        if severity == "critical":
            due = since + self.config.escalate_after_ms
        elif severity == "warning":
            due = since + self.config.warning_limit_ms
        else:
            return current
        return due if current is None else min(current, due)

    def _note_due(self, due: int | None) -> None:
        if due is not None and (self.due_floor is None or due < self.due_floor):
            self.due_floor = due

    def _forget(self, horizon: int) -> None:
        cutoff = horizon - self.config.forget_resolved_ms
        if self.resolved_floor is not None and self.resolved_floor < cutoff:
            self.resolved_at = {k: ts for k, ts in self.resolved_at.items() if ts >= cutoff}
            self.resolved_floor = min(self.resolved_at.values(), default=None)

    # -- storm grouping ------------------------------------------------------------------
    def _page(self, message: AlertMessage, out: list[RouterOutput], grouped: bool = True) -> None:
        """A state change for on-call: out now, or into its rule's group."""
        if not self.config.grouping or not grouped:
            out.append(message)
            return
        group = self.groups.setdefault(message.rule, RuleGroup())
        group.pending.append(message)
        if group.flush_at is None:
            flush_at = message.ts + self.config.group_wait_ms
            if group.last_flush is not None:
                flush_at = max(flush_at, group.last_flush + self.config.group_interval_ms)
            group.flush_at = flush_at

    def _flush_groups(self, before: int, out: list[RouterOutput]) -> None:
        """Send every group due strictly before `before`: a flush at F holds every change
        stamped up to F, however the input was batched."""
        while True:
            due = min(((g.flush_at, rule) for rule, g in self.groups.items()
                       if g.flush_at is not None and g.flush_at < before), default=None)
            if due is None:
                return
            self._flush(due[1], due[0], out)

    def _flush(self, rule: str, at: int, out: list[RouterOutput]) -> None:
        group = self.groups[rule]
        group.sent = [ts for ts in group.sent if ts > at - _MINUTE_MS]
        budget = self.config.rule_max_per_min - len(group.sent)
        if budget <= 0:
            group.flush_at = group.sent[0] + _MINUTE_MS  # when the oldest leaves the minute
            return
        if len(group.pending) <= budget:
            out.extend(group.pending)
            group.sent.extend(at for _ in group.pending)
        else:
            out.extend(self._grouped(rule, at, group.pending))
            group.sent.append(at)
        group.pending = []
        group.flush_at = None
        group.last_flush = at

    def _grouped(self, rule: str, at: int, pending: list[AlertMessage]) -> tuple[AlertMessage, GroupKeys]:
        latest: dict[str, AlertMessage] = {}
        for message in pending:  # in event-time order: a key's last change is what it is now
            latest.pop(message.key, None)
            latest[message.key] = message

        def change(m: AlertMessage) -> str:
            return "reminder" if m.reminder else m.status

        ranked = sorted(latest.values(), key=lambda m: (-_RANK[m.severity], _CHANGE_RANK[change(m)],
                                                        m.first_seen_ts, m.key))
        changes: dict[str, list[str]] = {}
        for m in ranked:
            changes.setdefault(change(m), []).append(m.key)
        ordered = dict(sorted(changes.items(), key=lambda item: _CHANGE_RANK[item[0]]))
        statuses = {m.status for m in ranked}
        status = next(s for s in ("escalated", "firing", "resolved") if s in statuses)
        open_keys = sum(1 for e in self.episodes.values() if e.rule == rule)
        top = ranked[: self.config.group_top_keys]
        named = ", ".join(m.key for m in top[:3]) + (f" and {len(ranked) - 3:,} more" if len(ranked) > 3 else "")
        what = ", ".join(f"{len(keys):,} {name}" for name, keys in ordered.items())
        alert_id = f"{rule}:{GROUP_KEY}@{at}/group"
        message = AlertMessage(
            alert_id=alert_id,
            ts=at,
            dedup_key=f"{rule}:{GROUP_KEY}",
            rule=rule,
            severity=ranked[0].severity,
            status=status,
            key=GROUP_KEY,
            summary=f"{rule} on {len(ranked):,} keys ({what}): {named}; {open_keys:,} open",
            first_seen_ts=min(m.first_seen_ts for m in ranked),
            count=len(ranked),
            runbook=ranked[0].runbook,
            reminder=all(m.reminder for m in ranked),
            group={
                "keys": len(ranked),
                "open": open_keys,
                "changes": {name: len(keys) for name, keys in ordered.items()},
                "top_keys": [_top_key(m) for m in top],
            },
        )
        return message, GroupKeys(rule, alert_id, at, open_keys, {name: tuple(keys) for name, keys in ordered.items()})


def _top_key(message: AlertMessage) -> dict[str, Any]:
    top: dict[str, Any] = {"key": message.key, "status": message.status, "severity": message.severity,
                           "first_seen_ts": message.first_seen_ts}
    if message.value is not None:
        top["value"] = message.value
    return top


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
