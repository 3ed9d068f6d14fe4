"""Per-customer recency, frequency, monetary value, activity and tenure, and value tiers.

Pure logic, no Bytewax, no model. `CustomerState` is what the churn flow keeps per
customer; it must stay small (well under 1 KB), so windowed counts live in
fixed-width time slots (`RfmRules.slot_ms`, default a week) in compact ring
arrays: a horizon of H days sums the slots that overlap the last H days, so a
window is exact to the slot (a "30 day" window with weekly slots covers 28 to 35
days). The order rings are allocated on the first paid order and dropped when the
customer has been quiet longer than the longest horizon (compaction); lifetime
totals, tenure and the last scores stay.

Tiers come from configured thresholds, not from quantiles of the live population:
a quantile tier moves when other customers buy, so a replay split across a
different number of workers, or a customer's tier read by the abandoned-cart flow,
would depend on who else was seen. A customer's tier is the best one whose minimum
monetary value AND minimum number of paid orders within the tier horizon (the
longest RFM horizon) are both met; `bronze` has bought but meets no minimum in the
horizon; `new` has never paid an order.
"""

from __future__ import annotations

import math
import struct
from array import array
from dataclasses import dataclass
from functools import cached_property
from operator import attrgetter
from typing import NamedTuple

from operators.coupons import TIERS

DAY_MS = 86_400_000
RANKED_TIERS = TIERS[:3]  # diamond, gold, silver: the tiers with thresholds, best first


@dataclass(frozen=True)
class RfmRules:
    horizons_ms: tuple[int, ...] = (28 * DAY_MS, 91 * DAY_MS, 364 * DAY_MS)  # ascending
    slot_ms: int = 7 * DAY_MS
    activity_ms: int = 28 * DAY_MS  # visits and cart adds are counted over this horizon
    # Minimum monetary value and paid orders within the longest horizon, for diamond, gold, silver.
    tier_monetary: tuple[float, float, float] = (10_000.0, 3_000.0, 800.0)
    tier_orders: tuple[int, int, int] = (12, 6, 2)

    def __post_init__(self) -> None:
        if not self.horizons_ms or list(self.horizons_ms) != sorted(set(self.horizons_ms)):
            raise ValueError(f"RFM horizons must be distinct and ascending, got {self.horizons_ms}")
        if self.slot_ms <= 0 or any(h < self.slot_ms for h in self.horizons_ms) or self.activity_ms < self.slot_ms:
            raise ValueError("every horizon must be at least one slot long")
        if len(self.tier_monetary) != 3 or len(self.tier_orders) != 3:
            raise ValueError("tier thresholds need three values: diamond, gold, silver")
        if list(self.tier_monetary) != sorted(self.tier_monetary, reverse=True) or list(self.tier_orders) != sorted(
            self.tier_orders, reverse=True
        ):
            raise ValueError("tier thresholds must not increase from diamond to silver")

    @cached_property
    def order_slots(self) -> int:
        return -(-self.horizons_ms[-1] // self.slot_ms)

    @cached_property
    def activity_slots(self) -> int:
        return -(-self.activity_ms // self.slot_ms)

    def horizon_slots(self, horizon_ms: int) -> int:
        return -(-horizon_ms // self.slot_ms)

    @cached_property
    def slots_per_horizon(self) -> tuple[int, ...]:
        return tuple(self.horizon_slots(horizon) for horizon in self.horizons_ms)

    @property
    def feature_names(self) -> tuple[str, ...]:
        names = ["recency_days", "tenure_days", "orders_total", "has_orders", "gap_ratio", "gap_days",
                 "quiet_chance", "days_since_visit", "visits_recent", "carts_recent", "order_age_days"]
        for horizon in self.horizons_ms:
            days = horizon // DAY_MS
            names += [f"orders_{days}d", f"monetary_{days}d"]
        return tuple(names)


class CustomerState:
    """One customer. Slots, compact arrays and no per-order records: memory is the budget."""

    __slots__ = (
        "first_ts", "last_ts", "first_order_ts", "last_order_ts", "last_visit_ts", "orders_total", "spend_total",
        "head_slot", "orders", "spend", "activity", "last_session", "recent_orders",
        "score", "risk", "tier", "scored_ts", "episode_ts", "pending_ts", "pending_x", "wake_ts", "queued_ts",
    )

    def __init__(self, ts: int) -> None:
        self.first_ts = ts
        self.last_ts = ts  # last event of any kind
        self.first_order_ts: int | None = None
        self.last_order_ts: int | None = None
        self.last_visit_ts: int | None = None
        self.orders_total = 0  # lifetime paid orders
        self.spend_total = 0.0  # lifetime paid value, refunds taken off
        self.head_slot = ts  # replaced by the slot index on the first event that touches a ring
        self.orders: array | None = None  # paid orders per slot ('H'), over the longest horizon
        self.spend: array | None = None  # paid value per slot ('f')
        self.activity: array | None = None  # visits then cart adds per slot ('H'), over the activity horizon
        self.last_session = 0  # crc32 of the latest session id: a new one is a visit
        self.recent_orders = 0  # the last two paid order ids, hashed (`_seen_order`): a re-delivery counts once
        self.score: float | None = None
        self.risk: str | None = None
        self.tier: str | None = None
        self.scored_ts: int | None = None
        self.episode_ts: int | None = None  # start of the current high-risk episode
        self.pending_ts: array | None = None  # label snapshots awaiting their outcome ('q')
        self.pending_x: array | None = None  # their features, flattened ('f')
        self.wake_ts: int | None = None  # when the customer next needs attention (event time)
        self.queued_ts: int | None = None  # the earliest timer queued for it

    def __getstate__(self):
        return pack_state(self)

    def __setstate__(self, blob: bytes) -> None:
        restored = unpack_state(blob)
        for name in self.__slots__:
            setattr(self, name, getattr(restored, name))

    @property
    def compacted(self) -> bool:
        return self.orders is None and self.activity is None


def _advance(state: CustomerState, slot: int, rules: RfmRules) -> None:
    """Move the rings forward to `slot`, zeroing the slots that went by."""
    head = state.head_slot
    if slot <= head:
        return
    for ring in (state.orders, state.spend, state.activity):
        if ring is None:
            continue
        size = len(ring) if ring is not state.activity else len(ring) // 2
        for index in range(head + 1, min(slot, head + size) + 1):
            ring[index % size] = 0
            if ring is state.activity:
                ring[size + index % size] = 0
    state.head_slot = slot


def _touch_rings(state: CustomerState, ts: int, rules: RfmRules) -> int:
    slot = ts // rules.slot_ms
    if state.orders is None and state.activity is None:
        state.head_slot = slot
    else:
        _advance(state, slot, rules)
    return slot


def record_paid(state: CustomerState, ts: int, amount: float, order_key: int, rules: RfmRules) -> bool:
    """A paid order; False when it was already counted (the same order delivered again)."""
    mark = (order_key & 0x7FFF_FFFF) | 0x8000_0000  # never 0, so an empty half matches nothing
    recent = state.recent_orders
    if mark == recent & 0xFFFF_FFFF or mark == recent >> 32:
        return False
    state.recent_orders = ((recent & 0xFFFF_FFFF) << 32) | mark
    slot = _touch_rings(state, ts, rules)
    if state.orders is None:
        size = rules.order_slots
        state.orders = array("H", bytes(2 * size))
        state.spend = array("f", bytes(4 * size))
    if slot > state.head_slot - len(state.orders):  # older than the longest horizon: lifetime totals only
        index = slot % len(state.orders)
        state.orders[index] = min(state.orders[index] + 1, 65_535)
        state.spend[index] += amount
    state.orders_total += 1
    state.spend_total += amount
    if state.first_order_ts is None:
        state.first_order_ts = ts
    if state.last_order_ts is None or ts > state.last_order_ts:
        state.last_order_ts = ts
    state.last_ts = max(state.last_ts, ts)
    return True


def record_refund(state: CustomerState, ts: int, amount: float, rules: RfmRules) -> None:
    """A refund takes value back in the slot it arrives in (the paid slot is not kept)."""
    slot = _touch_rings(state, ts, rules)
    state.spend_total = max(0.0, state.spend_total - amount)
    if state.spend is not None and slot > state.head_slot - len(state.spend):
        state.spend[slot % len(state.spend)] -= amount
    state.last_ts = max(state.last_ts, ts)


def record_click(state: CustomerState, ts: int, session_key: int, is_cart_add: bool, rules: RfmRules) -> None:
    slot = _touch_rings(state, ts, rules)
    size = rules.activity_slots
    if state.activity is None:
        state.activity = array("H", bytes(4 * size))
    index = slot % size
    if session_key != state.last_session:
        state.last_session = session_key
        state.activity[index] = min(state.activity[index] + 1, 65_535)
    if is_cart_add:
        state.activity[size + index] = min(state.activity[size + index] + 1, 65_535)
    state.last_visit_ts = ts if state.last_visit_ts is None else max(state.last_visit_ts, ts)
    state.last_ts = max(state.last_ts, ts)


def _window_sums(ring: array, head: int, size: int, counts, offset: int = 0) -> tuple:
    """Sums of the newest `count` slots (the head slot and the ones before it) of a ring of
    `size` slots starting at `offset`, for each of the ascending `counts` (at most the whole ring).

    Summed by contiguous slices, not newest first: float32 slot values are exact in a
    double, so the order of additions can only show in the last bits of a slot holding a
    refund's leftover, far below the cent every monetary value is rounded to."""
    end = head % size + 1  # one past the head slot's index
    totals = []
    total = taken = 0
    for count in counts:
        count = min(count, size)
        if count > taken:
            low, high = end - count, end - taken  # the slots taken..count-1 back from the head
            if low >= 0:
                total += sum(ring[offset + low:offset + high])
            elif high <= 0:
                total += sum(ring[offset + size + low:offset + size + high])
            else:
                total += sum(ring[offset:offset + high]) + sum(ring[offset + size + low:offset + size])
            taken = count
        totals.append(total)
    return tuple(totals)


class RfmView(NamedTuple):
    """RFM values of one customer at one moment (what `churn:{user_id}` shows).
    A NamedTuple: built at every score, and a frozen dataclass costs a setattr per field."""

    recency_days: float | None  # since the last paid order; None without one
    frequency: int  # paid orders within the tier horizon
    monetary: float  # paid value within the tier horizon, refunds taken off
    tenure_days: float
    orders_by_horizon: tuple[int, ...]
    monetary_by_horizon: tuple[float, ...]
    visits: int  # sessions within the activity horizon
    cart_adds: int
    days_since_visit: float | None


def rfm_view(state: CustomerState, now: int, rules: RfmRules) -> RfmView:
    now_slot = now // rules.slot_ms
    head = state.head_slot
    behind = now_slot - head  # slots gone by since the ring last moved: they are empty
    counts = [slots - behind if slots > behind else 0 for slots in rules.slots_per_horizon]
    if state.orders is None or not counts[-1]:  # no rings, or quiet for longer than every horizon
        orders, spend = (0,) * len(counts), (0.0,) * len(counts)
    else:
        size = rules.order_slots
        orders = _window_sums(state.orders, head, size, counts)
        # float32 slots: round to cents, and a refund of an order older than the window cannot go below 0
        spend = tuple([round(total, 2) if total > 0 else 0.0
                       for total in _window_sums(state.spend, head, size, counts)])
    visits = carts = 0
    if state.activity is not None:
        size = rules.activity_slots
        count = size - behind
        if count > 0:
            (visits,) = _window_sums(state.activity, head, size, (count,))
            (carts,) = _window_sums(state.activity, head, size, (count,), offset=size)
    return RfmView(
        recency_days=None if state.last_order_ts is None else max(0, now - state.last_order_ts) / DAY_MS,
        frequency=orders[-1],
        monetary=spend[-1],
        tenure_days=max(0, now - state.first_ts) / DAY_MS,
        orders_by_horizon=orders,
        monetary_by_horizon=spend,
        visits=visits,
        cart_adds=carts,
        days_since_visit=None if state.last_visit_ts is None else max(0, now - state.last_visit_ts) / DAY_MS,
    )


def tier_of(state: CustomerState, view: RfmView, rules: RfmRules) -> str:
    if state.orders_total == 0:
        return "new"
    for tier, monetary, orders in zip(RANKED_TIERS, rules.tier_monetary, rules.tier_orders):
        if view.monetary >= monetary and view.frequency >= orders:
            return tier
    return "bronze"


def features(state: CustomerState, view: RfmView) -> tuple[float, ...]:
    """Model inputs, in `RfmRules.feature_names` order; logs keep them on one scale.

    `gap_ratio` (days since the last order over the customer's average days between
    orders) is what recency alone misses: sixty quiet days are alarming for a weekly
    buyer and normal for a twice-a-year one.
    """
    log1p = math.log1p
    tenure = view.tenure_days
    if state.orders_total:
        recency = view.recency_days
        span = (state.last_order_ts - state.first_order_ts) / DAY_MS
        # Average gap with the time before the first order as one more gap: defined from one order on.
        gap = (span + max(0.0, (state.first_order_ts - state.first_ts) / DAY_MS) + 1.0) / state.orders_total
        gap_ratio = recency / gap
    else:
        recency = gap = tenure
        gap_ratio = 1.0
    since_visit = tenure if view.days_since_visit is None else view.days_since_visit
    # Days since the first paid order: with recency and the order count, what a
    # buy-till-you-die model reads (`operators/btyd.py`, through the churn model).
    order_age = max(0.0, tenure - (state.first_order_ts - state.first_ts) / DAY_MS) if state.orders_total else 0.0
    # `quiet_chance`: how likely a customer buying at its pace (exponential gaps) is to stay
    # this quiet while still active; small values say it has probably stopped.
    values = [log1p(recency), log1p(tenure), log1p(state.orders_total), 1.0 if state.orders_total else 0.0,
              log1p(gap_ratio), log1p(gap), math.exp(-gap_ratio), log1p(since_visit), log1p(view.visits),
              log1p(view.cart_adds), log1p(order_age)]
    for orders, monetary in zip(view.orders_by_horizon, view.monetary_by_horizon):
        values += [log1p(orders), log1p(monetary)]
    return tuple(values)


# -- compact storage ------------------------------------------------------------------------
# A CustomerState as Python objects costs ~1.7 KB (every timestamp is a 32 byte int, every
# array a 64 byte header); the book stores each customer as one bytes value instead, and
# unpacks it for the few microseconds an event or timer works on it.

_NONE = -(2**63)
_HEADER = struct.Struct("<10q2IQ2d6B")
_RISK_CODES = ("low", "medium", "high")
_CODE_NONE = 255
_TIME_FIELDS = ("first_ts", "last_ts", "first_order_ts", "last_order_ts", "last_visit_ts", "head_slot",
                "scored_ts", "episode_ts", "wake_ts", "queued_ts")
_RISK_INDEX = {name: index for index, name in enumerate(_RISK_CODES)} | {None: _CODE_NONE}
_TIER_INDEX = {name: index for index, name in enumerate(TIERS)} | {None: _CODE_NONE}
_get_times = attrgetter(*_TIME_FIELDS)


def pack_state(state: CustomerState) -> bytes:
    times = [_NONE if value is None else value for value in _get_times(state)]
    order_slots = 0 if state.orders is None else len(state.orders)
    activity_len = 0 if state.activity is None else len(state.activity)
    pending = 0 if state.pending_ts is None else len(state.pending_ts)
    width = 0 if not pending else len(state.pending_x) // pending
    parts = [_HEADER.pack(*times, state.orders_total, state.last_session, state.recent_orders, state.spend_total,
                          -1.0 if state.score is None else state.score, _RISK_INDEX[state.risk],
                          _TIER_INDEX[state.tier], order_slots, activity_len, pending, width)]
    if order_slots:
        parts += [state.orders.tobytes(), state.spend.tobytes()]
    if activity_len:
        parts.append(state.activity.tobytes())
    if pending:
        parts += [state.pending_ts.tobytes(), state.pending_x.tobytes()]
    return b"".join(parts)


def unpack_state(blob: bytes) -> CustomerState:
    fields = _HEADER.unpack_from(blob)
    state = CustomerState.__new__(CustomerState)
    (state.first_ts, state.last_ts, state.first_order_ts, state.last_order_ts, state.last_visit_ts, state.head_slot,
     state.scored_ts, state.episode_ts, state.wake_ts, state.queued_ts) = [
        None if value == _NONE else value for value in fields[:10]]  # the order of _TIME_FIELDS
    (state.orders_total, state.last_session, state.recent_orders, state.spend_total, score, risk, tier,
     order_slots, activity_len, pending, width) = fields[10:]
    state.score = None if score < 0 else score
    state.risk = None if risk == _CODE_NONE else _RISK_CODES[risk]
    state.tier = None if tier == _CODE_NONE else TIERS[tier]
    at = _HEADER.size
    state.orders = state.spend = state.activity = state.pending_ts = state.pending_x = None
    if order_slots:
        state.orders = array("H", blob[at:at + 2 * order_slots])
        at += 2 * order_slots
        state.spend = array("f", blob[at:at + 4 * order_slots])
        at += 4 * order_slots
    if activity_len:
        state.activity = array("H", blob[at:at + 2 * activity_len])
        at += 2 * activity_len
    if pending:
        state.pending_ts = array("q", blob[at:at + 8 * pending])
        at += 8 * pending
        state.pending_x = array("f", blob[at:at + 4 * pending * width])
    return state


def compact(state: CustomerState) -> None:
    """Quiet longer than the longest horizon: every window is empty, drop the rings."""
    state.orders = state.spend = state.activity = None
