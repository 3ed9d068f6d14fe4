"""Honest traffic: brushing rings and click farms, judged on event time.

Input events (clicks, orders, payments) wait in a buffer until the stream clock
(`operators.clock.StreamClock`) passes them, and are then applied in event-time order
(`ts`, topic, `event_id`): links go into the account graph (`operators.traffic_graph`),
clicks into session trails, orders and payments into per-account notes. Every
`judge_interval_ms` of event time (a *tick*, on a fixed grid), the engine looks at the
accounts touched since the last tick: an account linked to others is grown into its
component, and a component of at least `min_ring_members` accounts with enough
cohesion is a *ring* candidate. Each unflagged order and finished click session of its
members is scored with reason codes (`operators.traffic_behaviour`); those reaching
the threshold are flagged, once, with a deterministic id (`tf-o-{order_id}`,
`tf-s-{session_id}`).

What a tick sees is exactly the events with `ts` before the tick, so a replay (at any
speed, in any batching) flags the same orders and sessions with the same ring ids; only
events later than the allowed lateness can land in a later tick. Wall time only moves
the clock while every input partition is at its end (the clock's rule).

A ring keeps its id while it grows: a component that holds members of known rings takes
the oldest ring's id (first seen, then id); a new ring is named after its smallest
member id. Rings not seen for a horizon are forgotten, with their alerts resolved.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

from operators.alerts import AlertCandidate
from operators.clock import Progress, StreamClock
from operators.events import ClickEvent, OrderEvent, PaymentEvent
from operators.funnel import ORDER, PAYMENT, STAGE_OF_CLICK, STAGES, VISIT
from operators.traffic_behaviour import SessionTrail, raise_stage, score, scripted, stage_pairs
from operators.traffic_graph import CARD, DEVICE, IP, KIND_NAMES, LinkGraph, LinkRules, account_hash, key_hash

BRUSHING, CLICK_FARM = "brushing", "click_farm"
_TOPIC_RANK = {"clickstream": 0, "orders": 1, "payments": 2}
MINUTE_MS = 60_000
DAY_MS = 86_400_000


@dataclass(frozen=True)
class TrafficConfig:
    links: LinkRules = field(default_factory=LinkRules)
    lateness_ms: int = 10_000
    judge_interval_ms: int = MINUTE_MS  # ticks on a fixed event-time grid
    session_idle_ms: int = 10 * MINUTE_MS  # a session without a click this long is finished
    sweep_interval_ms: int = 3_600_000  # how often state past the horizon is dropped
    min_ring_members: int = 5
    min_cohesion: float = 0.15  # average link weight of a component (see traffic_graph)
    sku_min_accounts: int = 3  # this many members on one SKU is a concentration
    order_threshold: float = 0.6
    session_threshold: float = 0.6
    new_account_ms: int = 7 * DAY_MS
    ring_refund_share: float = 0.2
    max_orders_per_account: int = 16
    max_sessions_per_account: int = 16
    max_open_sessions: int = 200_000  # beyond this many open sessions the oldest is finished early
    farm_window_ms: int = 3_600_000  # click_farm alerts: share of a SKU's sessions from rings, per window
    farm_share: float = 0.5
    farm_min_sessions: int = 20
    metrics_window_ms: int = MINUTE_MS  # flagged figures per window: the funnel's KPI windows

    def __post_init__(self) -> None:
        if self.judge_interval_ms <= 0 or self.sweep_interval_ms < self.judge_interval_ms:
            raise ValueError("judge_interval_ms must be positive and at most sweep_interval_ms")
        if self.min_ring_members < 2:
            raise ValueError("a ring has at least two members")


@dataclass(frozen=True, slots=True)
class TrafficFlag:
    flag_id: str
    ts: int
    kind: str
    user_id: str
    ring_id: str
    ring_size: int
    score: float
    reasons: tuple[str, ...]
    order_id: str | None = None
    session_id: str | None = None
    sku: str | None = None
    amount: float | None = None  # a paid order's amount: the GMV the flag takes out of the numbers

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"flag_id": self.flag_id, "ts": self.ts, "kind": self.kind}
        if self.order_id is not None:
            out["order_id"] = self.order_id
        if self.session_id is not None:
            out["session_id"] = self.session_id
        out["user_id"] = self.user_id
        if self.sku is not None:
            out["sku"] = self.sku
        if self.amount is not None:
            out["amount"] = self.amount
        out.update(ring_id=self.ring_id, ring_size=self.ring_size, score=self.score, reasons=list(self.reasons))
        return out


@dataclass
class RingRecord:
    ring_id: str
    first_seen_ts: int
    last_seen_ts: int
    members: int = 0
    shared_keys: dict[str, int] = field(default_factory=dict)  # linking keys per kind
    skus: dict[str, int] = field(default_factory=dict)  # sku -> flagged orders or sessions
    flagged_orders: int = 0
    flagged_gmv: float = 0.0
    flagged_sessions: int = 0
    updated_ts: int = 0


class _Order:
    __slots__ = ("order_id", "ts", "session_id", "sku", "quantity", "amount", "paid_ts", "refunded", "flagged",
                 "succeeded_ts", "counted")

    def __init__(self, event: OrderEvent):
        self.order_id = event.order_id
        self.ts = event.ts
        self.session_id = event.session_id
        # The SKU an order pushes: its largest line (orders of one unit of one SKU are the pattern).
        top = max(event.items, key=lambda item: (item.quantity * item.unit_price, item.sku), default=None)
        self.sku = None if top is None else top.sku
        self.quantity = sum(item.quantity for item in event.items)
        self.amount = event.amount
        self.paid_ts: int | None = None
        self.refunded = False
        self.flagged = False
        self.succeeded_ts: int | None = None  # its first successful payment
        self.counted = False  # stands for its unknown session in the flagged windows' figures

    def __setstate__(self, state) -> None:
        _restore_slots(self, state)

    def stage_windows(self, window_ms: int) -> dict[int, int]:
        """The funnel stages of the order itself per window (`order` when created, `payment`
        when paid or its payment succeeded): what a flagged order takes out of the funnel
        when its session is not known."""
        windows = {self.ts // window_ms * window_ms: ORDER}
        for ts in (self.succeeded_ts, self.paid_ts):
            if ts is not None:
                windows[ts // window_ms * window_ms] = PAYMENT
        return windows


class _Session:
    """A finished session, as much of it as judging needs."""

    __slots__ = ("session_id", "first_ts", "skus", "direct", "ordered", "gaps", "flagged", "stages", "counted")

    def __init__(self, session_id: str, trail: SessionTrail):
        self.session_id = session_id
        self.first_ts = trail.first_ts
        self.skus = tuple(trail.skus)
        self.direct = trail.direct
        self.ordered = trail.ordered
        self.gaps = trail.signature()
        self.flagged = False
        self.stages = trail.stages
        self.counted = trail.counted

    def __setstate__(self, state) -> None:
        _restore_slots(self, state)

    def signature(self) -> tuple[int, ...]:
        return self.gaps


def _restore_slots(obj: Any, state: Any) -> None:
    """Snapshots from before funnel stages were kept: no stages, never counted."""
    slots = state[1] if isinstance(state, tuple) else state
    if type(obj) is _Order:
        slots.setdefault("succeeded_ts", None)
    else:
        slots.setdefault("stages", -1)  # traffic_behaviour.NO_MARKS
    slots.setdefault("counted", False)
    for name, value in slots.items():
        setattr(obj, name, value)


class _FlaggedWindow:
    """Flagged traffic of one KPI window (absolute figures, restated whenever they change)."""

    __slots__ = ("orders", "gmv", "sessions", "created_orders", "paid_orders", "stage_hist")

    def __init__(self, orders: int = 0, gmv: float = 0.0, sessions: int = 0) -> None:
        self.orders = orders  # flags of orders, by the flag's ts (paid, else created)
        self.gmv = gmv  # flagged orders' amounts, by paid time
        self.sessions = sessions  # flags of click-farm sessions, by first click
        self.created_orders = 0  # flagged orders created in the window (the KPI's `orders`)
        self.paid_orders = 0  # flagged orders paid in the window (the KPI's `paid_orders`)
        self.stage_hist = [0] * len(STAGES)  # flagged sessions by the deepest stage reached in the window


class _Account:
    __slots__ = ("user_id", "created_ts", "last_ts", "orders", "sessions")

    def __init__(self, user_id: str):
        self.user_id = user_id
        self.created_ts: int | None = None
        self.last_ts = 0
        self.orders: list[_Order] = []
        self.sessions: list[_Session] = []


@dataclass
class TrafficOutputs:
    flags: list[TrafficFlag] = field(default_factory=list)
    rings: list[RingRecord] = field(default_factory=list)  # rings changed by this step (absolute values)
    candidates: list[AlertCandidate] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)  # flagged figures of windows that changed

    def __bool__(self) -> bool:
        return bool(self.flags or self.rings or self.candidates or self.windows)


def ring_name(user_id: str) -> str:
    return "ring-" + hashlib.blake2b(user_id.encode(), digest_size=6).hexdigest()


class _Click(NamedTuple):
    """What the engine keeps of a click while it waits for the clock (picklable, small)."""

    ts: int
    user_id: str
    session_id: str
    type: str
    sku: str | None
    ip: str | None
    device_id: str | None


class _Payment(NamedTuple):
    ts: int
    user_id: str
    status: str
    ip: str | None
    device_id: str | None
    card_fingerprint: str | None
    account_created_ts: int | None
    order_id: str | None = None  # last: snapshots taken before it existed still load


def _compact(event: Any) -> Any:
    kind = type(event)
    if kind is ClickEvent:
        return _Click(event.ts, event.user_id, event.session_id, event.type, event.sku, event.ip, event.device_id)
    if kind is PaymentEvent:
        return _Payment(event.ts, event.user_id, event.status, event.ip, event.device_id, event.card_fingerprint,
                        event.account_created_ts, event.order_id)
    return event


class TrafficEngine:
    def __init__(self, config: TrafficConfig):
        self.config = config
        self.clock = StreamClock(lateness_ms=config.lateness_ms)
        self.graph = LinkGraph(config.links)
        self.pending: list[tuple[int, int, str, int, Any]] = []  # (ts, topic rank, event_id, seq, event)
        self._seq = 0
        self.ticked_ts: int | None = None  # the last tick (a multiple of judge_interval_ms)
        self.swept_ts = 0
        # Profiles by account hash, only for accounts with something to judge: an order, a
        # payment, or a finished session kept because the account was linked (or ordered).
        # Most shoppers only click and share nothing: the graph alone holds them.
        self.accounts: dict[int, _Account] = {}
        self.open_sessions: dict[str, SessionTrail] = {}
        self.dirty: set[str] = set()
        self.rings: dict[str, RingRecord] = {}
        self.ring_of: dict[str, str] = {}
        self.alerted: dict[str, str] = {}  # traffic.brushing dedup key -> ring id
        self.farm_counts: dict[int, dict[str, list[int]]] = {}  # window start -> sku -> [sessions, flagged]
        self.farm_active: set[str] = set()
        # Flagged traffic per KPI window: absolute figures, sent again whenever a later flag
        # (or a later event of a flagged order or session) lands in the window.
        self.flagged_windows: dict[int, _FlaggedWindow] = {}
        self.changed_windows: set[int] = set()

    def __setstate__(self, state: dict) -> None:
        # Snapshots from before the funnel stages: [orders, gmv, sessions] per window.
        windows = state.get("flagged_windows", {})
        for start, figures in list(windows.items()):
            if type(figures) is list:
                windows[start] = _FlaggedWindow(*figures)
        self.__dict__.update(state)

    def configure(self, config: TrafficConfig) -> None:
        """Resumed under (possibly) new settings."""
        self.config = config
        self.graph.rules = config.links
        self.clock.lateness_ms = config.lateness_ms

    # -- input -----------------------------------------------------------------------------
    def process(self, events: Iterable[ClickEvent | OrderEvent | PaymentEvent], now_ms: int,
                progress: Progress | None = None) -> TrafficOutputs:
        if progress:
            self.clock.advance(progress, now_ms)
        for event in events:
            if not progress:
                self.clock.observe(event.ts, now_ms)
            if self.ticked_ts is not None and event.ts < self.ticked_ts:
                self._apply(_compact(event))  # late: lands in the next tick
                continue
            self._seq += 1
            heapq.heappush(self.pending,
                           (event.ts, _TOPIC_RANK[_topic(event)], event.event_id, self._seq, _compact(event)))
        return self.advance(now_ms)

    def advance(self, now_ms: int) -> TrafficOutputs:
        out = TrafficOutputs()
        watermark = self.clock.watermark(now_ms)
        if watermark is not None:
            self._run_until(watermark, out)
        return out

    def flush(self) -> TrafficOutputs:
        """Finite input has ended: judge everything, as the clock would once quiet."""
        out = TrafficOutputs()
        if self.pending or self.open_sessions:
            last = max(max((e[0] for e in self.pending), default=0), self.clock.max_event_ms or 0)
            self._run_until(last + self.config.session_idle_ms + self.config.judge_interval_ms, out)
        return out

    def next_wake_ms(self, now_ms: int) -> int | None:
        """Wall time at which the clock reaches the next tick, if only wall time can move it."""
        if self.clock.max_event_ms is None:
            return None
        interval = self.config.judge_interval_ms
        next_tick = (self.ticked_ts + interval) if self.ticked_ts is not None else (
            (self.clock.max_event_ms // interval + 1) * interval)
        return self.clock.wall_time_when(next_tick, now_ms)

    def _run_until(self, watermark: int, out: TrafficOutputs) -> None:
        interval = self.config.judge_interval_ms
        pending = self.pending
        if self.ticked_ts is None:
            if not pending:
                return
            self.ticked_ts = pending[0][0] // interval * interval
        while self.ticked_ts + interval <= watermark:
            tick = self.ticked_ts + interval
            if not (self.dirty or self.open_sessions or self.farm_counts):
                # Nothing to judge until the next event: skip the empty ticks (a quiet night).
                upto = min(pending[0][0] if pending else watermark, watermark)
                tick = max(tick, upto // interval * interval)
            while pending and pending[0][0] < tick:
                self._apply(heapq.heappop(pending)[4])
            self._tick(tick, out)
            self.ticked_ts = tick
        while pending and pending[0][0] <= watermark:
            self._apply(heapq.heappop(pending)[4])

    # -- applying events -------------------------------------------------------------------
    def _account(self, user_id: str, ts: int) -> _Account:
        key = account_hash(user_id)
        account = self.accounts.get(key)
        if account is None:
            account = self.accounts[key] = _Account(user_id)
        if ts > account.last_ts:
            account.last_ts = ts
        return account

    def _link(self, user_id: str, kind: int, value: str | None, ts: int) -> None:
        if value:
            self.graph.link(account_hash(user_id), key_hash(kind, value), ts)

    def _apply(self, event: Any) -> None:
        kind = type(event)
        if kind is _Click:
            self._click(event)
        elif kind is OrderEvent:
            self._order(event)
        else:
            self._payment(event)

    def _click(self, click: _Click) -> None:
        trail = self.open_sessions.get(click.session_id)
        if trail is None:
            if len(self.open_sessions) >= self.config.max_open_sessions:
                # A flood of sessions: finish the oldest tenth at once (one sort, not one scan each).
                sessions = self.open_sessions
                for oldest in sorted(sessions, key=lambda s: (sessions[s].last_ts, s))[:max(1, len(sessions) // 10)]:
                    self._finish(oldest)
            trail = self.open_sessions[click.session_id] = SessionTrail(click.user_id, click.ts)
        # Link once per session and key: a session's clicks add nothing new to the graph.
        if click.ip and click.ip != trail.ip:
            trail.ip = click.ip
            self._link(trail.user_id, IP, click.ip, click.ts)
        if click.device_id and click.device_id != trail.device_id:
            trail.device_id = click.device_id
            self._link(trail.user_id, DEVICE, click.device_id, click.ts)
        trail.add(click.ts, click.type, click.sku)
        # The funnel stage per window (`raise_stage`); most clicks change nothing, so that
        # case is decided here without a call: a click per event is the engine's hot path.
        stage = STAGE_OF_CLICK.get(click.type, VISIT)
        size = self.config.metrics_window_ms
        offset = click.ts // size - trail.first_ts // size
        marks = trail.stages
        if type(marks) is int:
            if offset == 0 and not trail.counted:
                if stage > marks:
                    trail.stages = stage
                return
        elif marks[-2] == offset and stage <= marks[-1]:
            return
        self._reach(trail, click.ts, stage)

    def _order(self, event: OrderEvent) -> None:
        account = self._account(event.user_id, event.ts)
        if event.status == "created":
            if any(o.order_id == event.order_id for o in account.orders):
                return
            order = _Order(event)
            account.orders.append(order)
            if len(account.orders) > self.config.max_orders_per_account:
                account.orders.pop(0)
            session = self._session_of(account, event.session_id)
            if session is not None:
                session.ordered = True
                self._reach(session, event.ts, ORDER)
            self.dirty.add(event.user_id)
        elif event.status == "paid":
            for order in account.orders:
                if order.order_id == event.order_id and order.paid_ts is None:
                    self._order_paid(account, order, event.ts, "paid_ts")
                    if order.flagged:  # flagged before it was paid: its payment is flagged GMV too
                        figures = self._flagged(event.ts)
                        figures.paid_orders += 1
                        figures.gmv += order.amount
                    self.dirty.add(event.user_id)
        elif event.status == "refunded":
            for order in account.orders:
                if order.order_id == event.order_id:
                    order.refunded = True
                    self.dirty.add(event.user_id)

    def _payment(self, payment: _Payment) -> None:
        account = self._account(payment.user_id, payment.ts)
        if payment.account_created_ts is not None:
            account.created_ts = payment.account_created_ts
        if payment.status == "succeeded" and payment.order_id is not None:
            # The funnel's `payment` stage is reached by a successful payment as by a paid order.
            for order in account.orders:
                if order.order_id == payment.order_id and order.succeeded_ts is None:
                    self._order_paid(account, order, payment.ts, "succeeded_ts")
        if payment.status != "requested":
            return
        self._link(payment.user_id, IP, payment.ip, payment.ts)
        self._link(payment.user_id, DEVICE, payment.device_id, payment.ts)
        self._link(payment.user_id, CARD, payment.card_fingerprint, payment.ts)
        self.dirty.add(payment.user_id)

    def _finish(self, session_id: str) -> None:
        trail = self.open_sessions.pop(session_id)
        if not trail.ordered:
            window = trail.first_ts // self.config.farm_window_ms * self.config.farm_window_ms
            counts = self.farm_counts.setdefault(window, {})
            for sku in trail.skus:
                counts.setdefault(sku, [0, 0])[0] += 1
        key = account_hash(trail.user_id)
        if not (trail.ordered or key in self.accounts or self.graph.is_linked(key, trail.last_ts)):
            return  # an account that shares nothing: its session can never be a ring's
        account = self._account(trail.user_id, trail.last_ts)
        account.sessions.append(_Session(session_id, trail))
        if len(account.sessions) > self.config.max_sessions_per_account:
            account.sessions.pop(0)
        self.dirty.add(trail.user_id)

    # -- judging ---------------------------------------------------------------------------
    def _tick(self, tick: int, out: TrafficOutputs) -> None:
        config = self.config
        idle_before = tick - config.session_idle_ms
        for session_id in [s for s, t in self.open_sessions.items() if t.last_ts < idle_before]:
            self._finish(session_id)
        seen: set[int] = set()
        graph = self.graph
        for user_id in sorted(self.dirty):
            account = account_hash(user_id)
            if account in seen or not graph.is_linked(account, tick):
                continue
            component = graph.component(account, tick)
            seen |= component.members
            members = sorted(self.accounts[m].user_id for m in component.members if m in self.accounts)
            if len(component.members) >= config.min_ring_members and component.cohesion >= config.min_cohesion:
                self._judge_ring(members, component, tick, out)
        self.dirty.clear()
        self._window_figures(out)
        self._judge_farms(tick, out)
        if tick - self.swept_ts >= config.sweep_interval_ms:
            self._sweep(tick, out)
            self.swept_ts = tick

    def _judge_ring(self, members: list[str], component, tick: int, out: TrafficOutputs) -> None:
        config = self.config
        accounts = [self.accounts[account_hash(m)] for m in members]
        oldest = tick - config.links.horizon_ms
        ordered_by = Counter()  # sku -> members who ordered it
        viewed_by = Counter()  # sku -> members whose sessions without an order viewed it
        signatures = []
        orders = refunds = 0
        for account in accounts:
            ordered_by.update({o.sku for o in account.orders if o.ts >= oldest and o.sku is not None})
            viewed_by.update({sku for s in account.sessions if s.first_ts >= oldest and not s.ordered
                              for sku in s.skus})
            signatures.extend(s.gaps for s in account.sessions if len(s.gaps) >= 2)
            orders += len(account.orders)
            refunds += sum(o.refunded for o in account.orders)
        if not any(n >= config.sku_min_accounts for n in (*ordered_by.values(), *viewed_by.values())):
            return  # linked accounts that push no SKU together: not (yet) a ring
        ring = self._ring_for(members, tick)
        size = len(component.members)
        ring.members = max(ring.members, size)
        ring.shared_keys = {name: n for name, n in zip(KIND_NAMES, component.shared_keys)}
        ring.last_seen_ts = max(ring.last_seen_ts, tick)
        ring_reasons = ["ring.member"]
        if component.most_per_device >= 3:
            ring_reasons.append("ring.devices")
        unpaid_before = tick - config.session_idle_ms
        refund_ring = orders > 0 and refunds / orders >= config.ring_refund_share
        for account in accounts:
            self.ring_of[account.user_id] = ring.ring_id
            new_account = account.created_ts
            for order in account.orders:
                if order.flagged or order.ts < oldest:
                    continue
                if order.paid_ts is None and order.ts >= unpaid_before:
                    continue  # judged once paid (its flag then takes the GMV back), or once it clearly never was
                reasons = list(ring_reasons)
                session = self._session_of(account, order.session_id)
                if session is not None and session.direct:
                    reasons.append("path.direct")
                if order.sku is not None and ordered_by[order.sku] >= config.sku_min_accounts:
                    reasons.append("sku.concentration")
                if order.quantity == 1:
                    reasons.append("quantity.low")
                if session is not None and scripted(session.signature(), signatures, needed=3):
                    reasons.append("timing.scripted")  # 3: its own signature is among them
                if new_account is not None and 0 <= order.ts - new_account <= config.new_account_ms:
                    reasons.append("account.new")
                if refund_ring:
                    reasons.append("refund.ring")
                value = score(reasons)
                if value < config.order_threshold:
                    continue
                order.flagged = True
                flag = TrafficFlag(f"tf-o-{order.order_id}", order.paid_ts or order.ts, BRUSHING, account.user_id,
                                   ring.ring_id,
                                   size, value, tuple(reasons), order_id=order.order_id,
                                   session_id=order.session_id, sku=order.sku,
                                   amount=None if order.paid_ts is None else order.amount)
                out.flags.append(flag)
                ring.flagged_orders += 1
                if order.paid_ts is not None:
                    ring.flagged_gmv += order.amount
                self._count_flagged_order(account, order, flag)
                if order.sku is not None:
                    ring.skus[order.sku] = ring.skus.get(order.sku, 0) + 1
                    self._brushing_alert(ring, order.sku, tick, out)
            for session in account.sessions:
                if session.flagged or session.ordered or session.first_ts < oldest or not session.skus:
                    continue
                reasons = list(ring_reasons)
                if session.direct:
                    reasons.append("path.direct")
                if any(viewed_by[sku] >= config.sku_min_accounts for sku in session.skus):
                    reasons.append("sku.concentration")
                if scripted(session.gaps, signatures, needed=3):
                    reasons.append("timing.scripted")
                reasons.append("session.no_order")
                if new_account is not None and 0 <= session.first_ts - new_account <= config.new_account_ms:
                    reasons.append("account.new")
                value = score(reasons)
                if value < config.session_threshold:
                    continue
                session.flagged = True
                out.flags.append(TrafficFlag(f"tf-s-{session.session_id}", session.first_ts, CLICK_FARM,
                                             account.user_id, ring.ring_id, size, value, tuple(reasons),
                                             session_id=session.session_id, sku=session.skus[0]))
                ring.flagged_sessions += 1
                self._flagged(session.first_ts).sessions += 1
                self._count_session(session)
                for sku in session.skus:
                    ring.skus[sku] = ring.skus.get(sku, 0) + 1
                window = session.first_ts // config.farm_window_ms * config.farm_window_ms
                counts = self.farm_counts.setdefault(window, {})
                for sku in session.skus:
                    counts.setdefault(sku, [0, 0])[1] += 1
        ring.updated_ts = tick
        if all(r is not ring for r in out.rings):
            out.rings.append(ring)

    # -- flagged traffic per KPI window ------------------------------------------------------
    def _flagged(self, ts: int) -> _FlaggedWindow:
        window = ts // self.config.metrics_window_ms * self.config.metrics_window_ms
        figures = self.flagged_windows.get(window)
        if figures is None:
            figures = self.flagged_windows[window] = _FlaggedWindow()
        self.changed_windows.add(window)
        return figures

    def _reach(self, session: "SessionTrail | _Session", ts: int, stage: int) -> None:
        """A session reached `stage` at `ts`. Once it is counted as flagged, a deeper stage
        moves it in its window's histogram."""
        size = self.config.metrics_window_ms
        changed = raise_stage(session.stages, ts // size - session.first_ts // size, stage)
        if changed is not None:
            session.stages, before = changed
            if session.counted:
                self._move_stage(ts // size * size, before, stage)

    def _move_stage(self, window: int, before: int, after: int) -> None:
        hist = self._flagged(window).stage_hist
        if before >= 0:
            hist[before] -= 1
        hist[after] += 1

    def _order_paid(self, account: _Account, order: _Order, ts: int, field: str) -> None:
        """The order was paid (`paid_ts`) or its payment succeeded (`succeeded_ts`) at `ts`:
        the funnel's `payment` stage, for its session and for the order standing in for it."""
        size = self.config.metrics_window_ms
        before = order.stage_windows(size)
        setattr(order, field, ts)
        if order.counted:
            window = ts // size * size
            if before.get(window, -1) < PAYMENT:
                self._move_stage(window, before.get(window, -1), PAYMENT)
        session = self._session_of(account, order.session_id)
        if session is not None:
            self._reach(session, ts, PAYMENT)

    def _count_session(self, session: "SessionTrail | _Session") -> None:
        """Take a flagged session (once) out of the funnel: each window it was active in,
        at the deepest stage it reached there, as the funnel counted it."""
        if session.counted:
            return
        session.counted = True
        for window, stage in stage_pairs(session.stages, session.first_ts, self.config.metrics_window_ms):
            self._flagged(window).stage_hist[stage] += 1

    def _count_flagged_order(self, account: _Account, order: _Order, flag: TrafficFlag) -> None:
        figures = self._flagged(flag.ts)
        figures.orders += 1
        figures.gmv += flag.amount or 0.0
        self._flagged(order.ts).created_orders += 1
        if order.paid_ts is not None:
            self._flagged(order.paid_ts).paid_orders += 1
        # The fake order's session is fake traffic too; without a known session, the order
        # stands for it (the funnel joined it to some session of its user).
        session = self._session_of(account, order.session_id)
        if session is not None:
            self._count_session(session)
        elif not order.counted:
            order.counted = True
            for window, stage in order.stage_windows(self.config.metrics_window_ms).items():
                self._flagged(window).stage_hist[stage] += 1

    def _window_figures(self, out: TrafficOutputs) -> None:
        size = self.config.metrics_window_ms
        for window in sorted(self.changed_windows):
            figures = self.flagged_windows[window]
            reached, running = [], 0
            for n in reversed(figures.stage_hist):
                running += n
                reached.append(running)
            # One id per window: a later flag restates the window under the same id (latest wins).
            out.windows.append({
                "metric": "traffic", "metric_id": f"traffic:{window}", "window_start": window,
                "window_end": window + size, "flagged_orders": figures.orders, "flagged_gmv": round(figures.gmv, 2),
                "flagged_sessions": figures.sessions, "flagged_created_orders": figures.created_orders,
                "flagged_paid_orders": figures.paid_orders,
                "flagged_stages": dict(zip(STAGES, reversed(reached))),
            })
        self.changed_windows.clear()

    def _session_of(self, account: _Account, session_id: str | None) -> "SessionTrail | _Session | None":
        """The order's session: still open (orders come before the session goes idle) or finished."""
        if session_id is None:
            return None
        trail = self.open_sessions.get(session_id)
        if trail is not None:
            return trail
        return next((s for s in account.sessions if s.session_id == session_id), None)

    def _ring_for(self, members: list[str], tick: int) -> RingRecord:
        known = {self.ring_of[m] for m in members if m in self.ring_of and self.ring_of[m] in self.rings}
        if known:
            return min((self.rings[r] for r in known), key=lambda r: (r.first_seen_ts, r.ring_id))
        ring = RingRecord(ring_name(members[0]), first_seen_ts=tick, last_seen_ts=tick)
        self.rings[ring.ring_id] = ring
        return ring

    def _brushing_alert(self, ring: RingRecord, sku: str, tick: int, out: TrafficOutputs) -> None:
        key = f"{ring.ring_id}:{sku}"
        if key in self.alerted:
            return
        self.alerted[key] = ring.ring_id
        out.candidates.append(AlertCandidate(
            ts=tick, rule="traffic.brushing", key=key, active=True, severity="warning",
            summary=f"brushing ring {ring.ring_id} ({ring.members} accounts) is buying {sku}",
            value=float(ring.skus.get(sku, 0)), runbook="README.md#traffic",
            detail={"ring_id": ring.ring_id, "sku": sku, "members": ring.members}))

    def _judge_farms(self, tick: int, out: TrafficOutputs) -> None:
        config = self.config
        window_end_before = tick - config.session_idle_ms - config.farm_window_ms
        for window in sorted(self.farm_counts):
            counts = self.farm_counts[window]
            closed = window < window_end_before
            for sku in sorted(counts):
                sessions, flagged = counts[sku]
                holds = flagged >= config.farm_min_sessions and flagged >= config.farm_share * sessions
                if holds and sku not in self.farm_active:
                    self.farm_active.add(sku)
                    out.candidates.append(AlertCandidate(
                        ts=tick, rule="traffic.click_farm", key=sku, active=True, severity="warning",
                        summary=f"{flagged} of {sessions} sessions on {sku} came from click farms",
                        value=round(flagged / sessions, 4), threshold=config.farm_share,
                        runbook="README.md#traffic", detail={"window_start": window}))
            if closed:
                # The window is complete: SKUs it held that no longer hold in any later window clear.
                del self.farm_counts[window]
                for sku in sorted(self.farm_active):
                    if not any(self._farm_holds(c.get(sku)) for c in self.farm_counts.values()):
                        self.farm_active.discard(sku)
                        out.candidates.append(AlertCandidate(
                            ts=tick, rule="traffic.click_farm", key=sku, active=False, severity="warning",
                            summary=f"clicks on {sku} are no longer mostly from click farms"))

    def _farm_holds(self, counts: list[int] | None) -> bool:
        if counts is None:
            return False
        sessions, flagged = counts
        return flagged >= self.config.farm_min_sessions and flagged >= self.config.farm_share * sessions

    # -- forgetting ------------------------------------------------------------------------
    def _sweep(self, tick: int, out: TrafficOutputs) -> None:
        oldest = tick - self.config.links.horizon_ms
        self.graph.sweep(tick)
        for window in [w for w in self.flagged_windows if w < oldest]:
            del self.flagged_windows[window]
        for key in [k for k, a in self.accounts.items() if a.last_ts < oldest]:
            self.ring_of.pop(self.accounts.pop(key).user_id, None)
        for account in self.accounts.values():
            if account.orders and account.orders[0].ts < oldest:
                account.orders = [o for o in account.orders if o.ts >= oldest]
            if account.sessions and account.sessions[0].first_ts < oldest:
                account.sessions = [s for s in account.sessions if s.first_ts >= oldest]
        for ring_id in [r for r, ring in self.rings.items() if ring.last_seen_ts < oldest]:
            del self.rings[ring_id]
            for key in [k for k, r in self.alerted.items() if r == ring_id]:
                del self.alerted[key]
                out.candidates.append(AlertCandidate(
                    ts=tick, rule="traffic.brushing", key=key, active=False, severity="warning",
                    summary=f"brushing ring {ring_id} has not been seen for the link horizon"))

    def sizes(self) -> dict[str, int]:
        return {**self.graph.sizes(), "profiles": len(self.accounts), "open_sessions": len(self.open_sessions),
                "pending": len(self.pending), "rings": len(self.rings)}


def _topic(event: Any) -> str:
    kind = type(event)
    return "clickstream" if kind is ClickEvent else "orders" if kind is OrderEvent else "payments"
