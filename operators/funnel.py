"""The shopping funnel per session, counted per event-time window: the pure logic.

Stages, in order: `visit` (any clickstream event), `product_view`, `add_to_cart`,
`checkout` (`checkout_start`, `shipping_quote`), `order` (an order `created`) and
`payment` (a payment `succeeded` or an order `paid`).

What a window counts: every session active in the window, at the deepest stage it
reached *in that window*; `stages[s]` is the number of sessions that reached stage
`s` or a later one, so the counts never grow down the funnel and conversion
between consecutive stages is at most 1. Orders and payments join the session they
came from: an order's `session_id`, else the user's latest session; a payment the
session of its order, else the user's latest session.

Events are applied in event-time order once the watermark has passed them, not in
the order they were read: which session an order joins, and so its channel, must not
depend on whether the clicks' partition was read before the orders' partition.

Users are sharded into a fixed number of buckets (`FunnelBucket`, one per bucket);
a user's sessions, orders and payments meet in the same bucket. Each bucket closes
windows on a stream-wide event-time clock and reports its partial counts;
`operators.funnel_results.FunnelAggregator` adds the buckets' reports up.

Memory: a session is dropped once the stream is `session_timeout_ms` of event time
past its last event, and with it its user's pointer to it; an order's pointer to its
session after `order_retention_ms`. Open windows hold only the sessions active in them.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from functools import partial
from sys import intern
from typing import Any, Mapping, NamedTuple

from operators.clock import Progress, StreamClock
from operators.events import ClickEvent, OrderEvent, PaymentEvent, click_values_fast

STAGES = ("visit", "product_view", "add_to_cart", "checkout", "order", "payment")
VISIT, PRODUCT_VIEW, ADD_TO_CART, CHECKOUT, ORDER, PAYMENT = range(len(STAGES))
STAGE_OF_CLICK = {
    "page_view": VISIT,
    "search": VISIT,
    "remove_from_cart": VISIT,
    "product_view": PRODUCT_VIEW,
    "add_to_cart": ADD_TO_CART,
    "checkout_start": CHECKOUT,
    "shipping_quote": CHECKOUT,
}
PAGE_VIEW_TYPES = frozenset({"page_view", "product_view"})  # what `pv` counts: pages seen
DIMENSIONS = ("channel", "region", "device")
UNKNOWN = "unknown"  # the channel of an order or payment no known session explains

# What a funnel event is (`FunnelEvent.kind`).
CLICK, ORDER_CREATED, ORDER_PAID, PAYMENT_SUCCEEDED, PAYMENT_FAILED = range(5)

# Per-channel KPI tallies of a window: a list indexed by these.
KPI_PV, KPI_ORDERS, KPI_PAID_ORDERS, KPI_GMV, KPI_PAYMENTS_OK, KPI_PAYMENTS_FAILED = range(6)
KPI_FIELDS = 6


class FunnelEvent(NamedTuple):
    """What the funnel needs of one input event; a tuple, cheap to build and to ship between workers."""

    ts: int
    kind: int
    user_id: str
    session_id: str | None = None  # clicks; orders when they carry it
    order_id: str | None = None  # orders and payments
    stage: int = VISIT  # clicks: the stage the click type reaches
    amount: float = 0.0  # paid orders
    channel: str | None = None  # clicks, and orders that carry it
    region: str | None = None
    device: str | None = None
    page_view: bool = False
    experiment: tuple[tuple[str, str], ...] | None = None


def _order_key(event: FunnelEvent) -> tuple:
    """Event time first, then fields that tell simultaneous events apart, so the order
    in which they are applied never depends on the order they were read."""
    return (event.ts, event.kind, event.session_id or "", event.order_id or "", event.user_id, event.stage,
            event.amount, event.channel or "", event.region or "", event.device or "")


_new_funnel_event = partial(tuple.__new__, FunnelEvent)  # FunnelEvent._make without its Python frame


def funnel_event(event: ClickEvent | OrderEvent | PaymentEvent) -> FunnelEvent | None:
    """The funnel's view of a validated input event; None for what the funnel ignores
    (payment requests and chargebacks, cancellations, refunds, inventory)."""
    kind = type(event)
    if kind is ClickEvent:
        return _click_funnel_event(event.ts, event.user_id, event.session_id, event.type, event.channel,
                                   event.region, event.device, event.experiment)
    if kind is OrderEvent:
        if event.status == "created":
            return FunnelEvent(event.ts, ORDER_CREATED, event.user_id, event.session_id, event.order_id,
                               ORDER, 0.0, event.channel)
        if event.status == "paid":
            return FunnelEvent(event.ts, ORDER_PAID, event.user_id, event.session_id, event.order_id,
                               PAYMENT, event.amount, event.channel)
        return None
    if kind is PaymentEvent:
        if event.status == "succeeded":
            return FunnelEvent(event.ts, PAYMENT_SUCCEEDED, event.user_id, None, event.order_id, PAYMENT)
        if event.status == "failed":
            return FunnelEvent(event.ts, PAYMENT_FAILED, event.user_id, None, event.order_id, VISIT)
    return None


def click_funnel_event_fast(obj: Any) -> FunnelEvent | None:
    """A decoded clickstream JSON object straight to its funnel event, without building the
    `ClickEvent` (clicks are most of the traffic); None when the checked reader must judge
    it, exactly when `ClickEvent.from_dict` would not take its fast path."""
    values = click_values_fast(obj)
    if values is None:
        return None
    return _click_funnel_event(values[1], values[2], values[3], values[4], values[5], values[6], values[7],
                               values[14])


def _click_funnel_event(ts: int, user_id: str, session_id: str, click_type: str, channel: str, region: str,
                        device: str, experiment: Mapping[str, str] | None) -> FunnelEvent:
    # Interned, the few distinct dimension values are pickled once per batch when
    # the batch crosses to another process, and shared when it is read back.
    return _new_funnel_event((
        ts, CLICK, user_id, session_id, None, STAGE_OF_CLICK[click_type], 0.0, intern(channel), intern(region),
        intern(device), click_type in PAGE_VIEW_TYPES, None if not experiment else tuple(sorted(experiment.items())),
    ))


@dataclass(frozen=True)
class FunnelRules:
    window_ms: int = 60_000
    lateness_ms: int = 10_000
    session_timeout_ms: int = 1_800_000  # a session is over after this much event time without events
    order_retention_ms: int = 3_600_000  # an order's payments are joined to its session this long

    def __post_init__(self) -> None:
        if self.session_timeout_ms < self.window_ms + self.lateness_ms:
            raise ValueError("a session must outlive the window it was counted in (timeout >= window + lateness)")


class _Session:
    __slots__ = ("user_id", "channel", "region", "device", "last_ts", "experiment", "converted")

    def __init__(self, user_id: str, channel: str, region: str, device: str, last_ts: int) -> None:
        self.user_id = user_id
        self.channel = channel
        self.region = region
        self.device = device
        self.last_ts = last_ts
        self.experiment: tuple[tuple[str, str], ...] | None = None
        self.converted = False  # reached `order`: counted once for its experiment variants

    def __reduce__(self):  # snapshots pickle every live session: a tuple is cheaper than a slots dict
        return _restore_session, (self.user_id, self.channel, self.region, self.device, self.last_ts,
                                  self.experiment, self.converted)


def _restore_session(user_id, channel, region, device, last_ts, experiment, converted) -> _Session:
    session = _Session(user_id, channel, region, device, last_ts)
    session.experiment, session.converted = experiment, converted
    return session


class _Window:
    __slots__ = ("sessions", "kpi", "payers", "experiments")

    def __init__(self) -> None:
        self.sessions: dict[str, int] = {}  # session id -> deepest stage reached in this window
        self.kpi: dict[str, list] = {}  # channel -> KPI tallies
        self.payers: dict[str, bool] = {}  # user who tried to pay -> any payment succeeded
        # (experiment, variant) -> [sessions first exposed, sessions first ordering] in this window
        self.experiments: dict[tuple[str, str], list[int]] = {}


END_OF_INPUT = 2**62  # `closed_through` of a bucket whose input has ended
NOTHING_DUE = 2**63  # `FunnelBucket.unjoined_due_ms` when nothing waits

# (dimension, value): ("all", "all"), ("channel", "app"), ("region", "zhejiang"), ("device", "ios")
SeriesKey = tuple[str, str]


@dataclass(frozen=True)
class WindowPartial:
    """One bucket's counts for one closed window."""

    window_start: int
    stage_hist: dict[SeriesKey, list[int]]  # sessions by the deepest stage reached in the window
    users: dict[str, int]  # distinct users per channel, and under "all"
    kpi: dict[str, list]  # channel -> KPI tallies
    payers: int = 0  # users who tried to pay in the window...
    payers_failed: int = 0  # ...and whose every payment in it failed
    experiments: dict[tuple[str, str], list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class BucketReport:
    """What a bucket says when it closes windows: their partial counts, that every
    window before `closed_through` is final for this bucket, and events that came
    too late for their window (corrections)."""

    bucket: str
    closed_through: int
    partials: list[WindowPartial]
    late_events: int = 0


@dataclass
class FunnelBucket:
    """Sessions and open windows of the users in one bucket."""

    bucket: str
    rules: FunnelRules
    clock: StreamClock = field(init=False)
    sessions: dict[str, _Session] = field(default_factory=dict)
    latest_session: dict[str, str] = field(default_factory=dict)  # user -> latest session id
    order_sessions: dict[str, tuple[str, int]] = field(default_factory=dict)  # order -> (session, last ts)
    # Expiry: slot start -> ids filed there by their last event time. A touched session is
    # not moved; when its slot comes due it is dropped or filed again under its new time,
    # so a touch costs nothing and each drop O(1) (a dict in touch order read from the
    # front would rescan its deleted entries on every read).
    session_expiry: dict[int, list[str]] = field(default_factory=dict)
    order_expiry: dict[int, list[str]] = field(default_factory=dict)
    # Orders and payments read before any click of their user (another topic's partition
    # ran ahead): they wait for the user's session until their window closes.
    unjoined: dict[str, list[FunnelEvent]] = field(default_factory=dict)
    # No waiting event's window ends before this (a lower bound): until the watermark
    # reaches it, closing windows need not scan `unjoined`, which a backlog whose orders
    # run ahead of the clicks fills with thousands of users. 0 (and in snapshots taken
    # before it existed): unknown, scan.
    unjoined_due_ms: int = 0
    windows: dict[int, _Window] = field(default_factory=dict)
    next_window: int | None = None  # start of the oldest window not yet closed
    closed_any: bool = False
    late_events: int = 0
    # Events read but not applied yet: a heap of (order key, arrival number, event),
    # applied once the watermark passes them (see the module docstring).
    pending: list = field(default_factory=list)
    arrivals: int = 0

    def __post_init__(self) -> None:
        self.clock = StreamClock(self.rules.lateness_ms)

    def __setstate__(self, state: dict) -> None:
        state.setdefault("pending", [])  # snapshots from before events waited for the watermark
        state.setdefault("arrivals", 0)
        self.__dict__.update(state)

    def resume(self, now_ms: int) -> None:
        self.clock.resume(now_ms)

    # -- input ------------------------------------------------------------------------------
    def add(self, events: list[FunnelEvent], progress: Progress, now_ms: int) -> list[BucketReport]:
        """One input batch's events of this bucket. `progress`: the whole batch's, so the
        clock follows the stream, not the bucket."""
        self.clock.advance(progress, now_ms)
        pending = self.pending
        for event in events:
            heapq.heappush(pending, (_order_key(event), self.arrivals, event))
            self.arrivals += 1
        return self.advance(now_ms)

    def _apply_through(self, watermark: int | None) -> None:
        """Apply the waiting events older than `watermark` (all when None), oldest first.

        Strictly older: an event at the watermark itself may still arrive from a
        partition exactly `lateness` behind, and must not be overtaken."""
        pending = self.pending
        window_ms = self.rules.window_ms
        while pending and (watermark is None or pending[0][0][0] < watermark):
            event = heapq.heappop(pending)[2]
            start = event.ts - event.ts % window_ms
            if self.next_window is None or (not self.closed_any and start < self.next_window):
                self.next_window = start
            if event.kind == CLICK:
                self._click(event, start)
            else:
                self._order_or_payment(event, start)

    def _window(self, start: int) -> _Window | None:
        """The open window for `start`; None (and a correction counted) when it has closed."""
        if start < self.next_window:
            self.late_events += 1
            return None
        window = self.windows.get(start)
        if window is None:
            window = self.windows[start] = _Window()
        return window

    @staticmethod
    def _touch(session: _Session, ts: int) -> None:
        if ts > session.last_ts:
            session.last_ts = ts

    def _file(self, expiry: dict[int, list[str]], key: str, ts: int) -> None:
        slot = ts - ts % self.rules.window_ms
        filed = expiry.get(slot)
        if filed is None:
            expiry[slot] = [key]
        else:
            filed.append(key)

    def _click(self, event: FunnelEvent, start: int) -> None:
        session_id = event.session_id
        session = self.sessions.get(session_id)
        if session is None:
            session = self.sessions[session_id] = _Session(event.user_id, event.channel, event.region, event.device,
                                                           event.ts)
            self._file(self.session_expiry, session_id, event.ts)
        else:
            self._touch(session, event.ts)
        user = event.user_id
        latest = self.latest_session.get(user)
        if latest is None or (latest != session_id and self._newer(session_id, latest)):
            self.latest_session[user] = session_id
        window = self._window(start)
        if event.experiment is not None and session.experiment is None:
            session.experiment = event.experiment
            self._count_experiment(window, event.experiment, 0)
        waiting = self.unjoined.pop(user, None) if self.unjoined else None
        if waiting is not None:
            for early in waiting:
                self._apply(early, early.ts - early.ts % self.rules.window_ms, *self._session_of(early))
        if window is None:
            return
        if window.sessions.get(session_id, -1) < event.stage:
            window.sessions[session_id] = event.stage
        if event.page_view:
            self._kpi(window, session.channel)[KPI_PV] += 1

    def _count_experiment(self, window: _Window | None, variants: tuple[tuple[str, str], ...], index: int) -> None:
        """An exposure (index 0) or a conversion (1), in the event's window; a late one in
        the oldest open window, so the totals never depend on when windows closed."""
        if window is None:
            window = self.windows.get(self.next_window)
            if window is None:
                window = self.windows[self.next_window] = _Window()
        for variant in variants:
            counts = window.experiments.get(variant)
            if counts is None:
                counts = window.experiments[variant] = [0, 0]
            counts[index] += 1

    def _newer(self, session_id: str, other_id: str) -> bool:
        """Is `session_id` the user's later session? (A late event of an older one must not win.)"""
        other = self.sessions.get(other_id)
        return other is None or self.sessions[session_id].last_ts >= other.last_ts

    def _kpi(self, window: _Window, channel: str) -> list:
        tallies = window.kpi.get(channel)
        if tallies is None:
            tallies = window.kpi[channel] = [0, 0, 0, 0.0, 0, 0]
        return tallies

    def _session_of(self, event: FunnelEvent) -> tuple[str | None, _Session | None]:
        """The session an order or payment came from (see the module docstring)."""
        session_id = event.session_id
        if session_id is None or session_id not in self.sessions:
            known = self.order_sessions.get(event.order_id) if event.order_id is not None else None
            session_id = known[0] if known is not None and known[0] in self.sessions else None
        if session_id is None:
            session_id = self.latest_session.get(event.user_id)
        session = self.sessions.get(session_id) if session_id is not None else None
        return (session_id, session) if session is not None else (None, None)

    def _order_or_payment(self, event: FunnelEvent, start: int) -> None:
        session_id, session = self._session_of(event)
        if session is None and start >= self.next_window:
            self.unjoined.setdefault(event.user_id, []).append(event)
            self.unjoined_due_ms = min(self.unjoined_due_ms, start + self.rules.window_ms)
            return
        self._apply(event, start, session_id, session)

    def _settle_unjoined(self, watermark: int | None) -> None:
        """Orders and payments whose window closes now (or all, at the end) without a
        session of their user: counted in the KPIs, under their own channel or `unknown`."""
        window_ms = self.rules.window_ms
        next_due = NOTHING_DUE
        for user in list(self.unjoined):
            waiting = self.unjoined[user]
            due = [e for e in waiting if watermark is None or e.ts - e.ts % window_ms + window_ms <= watermark]
            for event in due:
                self._apply(event, event.ts - event.ts % window_ms, None, None)
            if len(due) == len(waiting):
                del self.unjoined[user]
            else:
                kept = self.unjoined[user] = [e for e in waiting if e not in due]
                next_due = min(next_due, min(e.ts - e.ts % window_ms for e in kept) + window_ms)
        self.unjoined_due_ms = next_due

    def _apply(self, event: FunnelEvent, start: int, session_id: str | None, session: _Session | None) -> None:
        window = self._window(start)
        if session is not None:
            self._touch(session, event.ts)
            order_id = event.order_id
            if order_id is not None:
                known = self.order_sessions.get(order_id)
                if known is None:
                    self._file(self.order_expiry, order_id, event.ts)
                    self.order_sessions[order_id] = (session_id, event.ts)
                elif event.ts > known[1] or known[0] != session_id:
                    self.order_sessions[order_id] = (session_id, max(event.ts, known[1]))
            if event.stage >= ORDER and not session.converted and event.kind != PAYMENT_FAILED:
                session.converted = True
                if session.experiment is not None:
                    self._count_experiment(window, session.experiment, 1)
        if window is None:
            return
        kind = event.kind
        if session is not None and kind != PAYMENT_FAILED and window.sessions.get(session_id, -1) < event.stage:
            window.sessions[session_id] = event.stage
        channel = session.channel if session is not None else (event.channel or UNKNOWN)
        tallies = self._kpi(window, channel)
        if kind == ORDER_CREATED:
            tallies[KPI_ORDERS] += 1
        elif kind == ORDER_PAID:
            tallies[KPI_PAID_ORDERS] += 1
            tallies[KPI_GMV] += event.amount
        elif kind == PAYMENT_SUCCEEDED:
            tallies[KPI_PAYMENTS_OK] += 1
            window.payers[event.user_id] = True
        else:
            tallies[KPI_PAYMENTS_FAILED] += 1
            window.payers.setdefault(event.user_id, False)

    # -- closing windows --------------------------------------------------------------------
    def advance(self, now_ms: int) -> list[BucketReport]:
        """Close every window the watermark has passed; drop finished sessions.

        Reports whenever this bucket's closed range moved (with or without counts), so
        the aggregator knows every bucket is done with a window before it publishes it."""
        watermark = self.clock.watermark(now_ms)
        if watermark is None:
            return []
        window_ms = self.rules.window_ms
        before = self.next_window
        self._apply_through(watermark)
        if self.next_window is None:
            # No event of its own before the watermark: every window wholly before it is
            # final here too. (Not the first batch's event times: a batch may hold only a
            # partition that is ahead, and this bucket would then claim nothing earlier.)
            self.next_window = watermark - watermark % window_ms
        if self.unjoined and watermark >= self.unjoined_due_ms:
            self._settle_unjoined(watermark)
        partials = []
        while self.next_window + window_ms <= watermark:
            partial = self._close(self.next_window)
            if partial is not None:
                partials.append(partial)
            self.next_window += window_ms
            self.closed_any = True
            if not self.windows:  # nothing open: skip the empty stretch up to the watermark
                self.next_window = max(self.next_window, watermark - watermark % window_ms)
        self._expire(watermark)
        if self.next_window == before and not self.late_events:
            return []
        self.closed_any = True  # the aggregator heard where this bucket stands: it never goes back
        return [self._report(partials, self.next_window)]

    def flush(self) -> list[BucketReport]:
        """The input has ended: close every open window."""
        self._apply_through(None)
        if self.next_window is None:
            if self.clock.max_event_ms is None:
                return []
            # No event of its own: nothing to close, but the aggregator must hear it is done.
            self.closed_any = True
            return [self._report([], END_OF_INPUT)]
        self._settle_unjoined(None)
        partials = [p for p in (self._close(start) for start in sorted(self.windows)) if p is not None]
        self.closed_any = True
        return [self._report(partials, END_OF_INPUT)]

    def _report(self, partials: list[WindowPartial], closed_through: int) -> BucketReport:
        report = BucketReport(self.bucket, closed_through, partials, self.late_events)
        self.late_events = 0
        return report

    def _close(self, start: int) -> WindowPartial | None:
        window = self.windows.pop(start, None)
        if window is None:
            return None
        hist: dict[SeriesKey, list[int]] = {}
        users_all: set[str] = set()
        users_by_channel: dict[str, set[str]] = {}
        sessions = self.sessions
        for session_id, stage in window.sessions.items():
            session = sessions.get(session_id)
            if session is None:  # cannot happen while timeout >= window + lateness (FunnelRules checks)
                continue
            for key in (("all", "all"), ("channel", session.channel), ("region", session.region),
                        ("device", session.device)):
                counts = hist.get(key)
                if counts is None:
                    counts = hist[key] = [0] * len(STAGES)
                counts[stage] += 1
            users_all.add(session.user_id)
            channel_users = users_by_channel.get(session.channel)
            if channel_users is None:
                channel_users = users_by_channel[session.channel] = set()
            channel_users.add(session.user_id)
        users = {channel: len(members) for channel, members in users_by_channel.items()}
        users["all"] = len(users_all)
        payers_failed = sum(1 for succeeded in window.payers.values() if not succeeded)
        return WindowPartial(start, hist, users, window.kpi, len(window.payers), payers_failed, window.experiments)

    def _expire(self, watermark: int) -> None:
        horizon = watermark - self.rules.session_timeout_ms
        sessions, latest = self.sessions, self.latest_session
        for session_id in self._due(self.session_expiry, horizon):
            session = sessions.get(session_id)
            if session is None:
                continue
            if session.last_ts >= horizon:
                self._file(self.session_expiry, session_id, session.last_ts)  # touched since it was filed
                continue
            del sessions[session_id]
            if latest.get(session.user_id) == session_id:
                del latest[session.user_id]
        order_horizon = watermark - self.rules.order_retention_ms
        orders = self.order_sessions
        for order_id in self._due(self.order_expiry, order_horizon):
            known = orders.get(order_id)
            if known is None:
                continue
            if known[1] >= order_horizon:
                self._file(self.order_expiry, order_id, known[1])
                continue
            del orders[order_id]

    def _due(self, expiry: dict[int, list[str]], horizon: int) -> list[str]:
        """Ids filed in slots that end at or before `horizon`, taken out of `expiry`."""
        window_ms = self.rules.window_ms
        due_slots = [slot for slot in expiry if slot + window_ms <= horizon]
        return [key for slot in sorted(due_slots) for key in expiry.pop(slot)]

    def next_wake_ms(self, now_ms: int) -> int | None:
        """Wall-clock ms at which the next window closes if input stays quiet. Also for a
        bucket with no open window: the aggregator waits for every bucket to close it."""
        if self.next_window is None:
            return None
        return self.clock.wall_time_when(self.next_window + self.rules.window_ms, now_ms)
