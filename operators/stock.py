"""The stock ledger: per SKU and pool, available and reserved units, levels, alert candidates.

Pure logic, no Bytewax. The flow feeds `StockLedger.add` batches of `StockLine`s
(one per inventory event, one per SKU and pool of an order event) for the SKUs of
one bucket.

Ledger rules (what `stock:{sku}` means):
- inventory `set` makes a pool's *available* (unreserved, sellable) units the
  given quantity; `restock` adds, `adjust` adds a signed delta.
- an order `created` reserves: available -= q, reserved += q. Its first terminal
  status in event time decides the rest: `paid` commits (reserved -= q, the units
  are sold), `cancelled` releases (reserved -= q, available += q), `refunded`
  releases a reservation still held; a refund of a paid order moves no stock
  (returns come back through inspection, as an inventory event).

Exact whatever the arrival order within the allowed lateness:
- An order's effect per SKU and pool is a function of the *set* of statuses seen
  (`_Hold.entries`), not of their arrival order. Each new status recomputes the
  order's ledger entries and applies only the difference, so a `paid` before its
  `created`, a `cancelled` that turns out to follow a `paid`, or a duplicate event
  never counts twice.
- Deltas commute; only `set` does not. A `set` at time T absorbs every delta
  stamped before T. Each pool keeps the deltas of the last lateness window, so a
  late `set` is rebased on exactly the deltas stamped at or after it, and a late
  delta stamped before the current `set` is absorbed, not applied.
- Restock and adjust events are deduplicated by `event_id` (a set is idempotent).
- An order's state is dropped once it is finished and the low watermark is a
  retention period past its last event (bounded memory); open reservations stay.

Lines wait for the stream clock (`operators.clock`): they apply in event-time order
once the watermark has passed them, so the levels, level changes and candidates are
the same however the input partitions interleave, a crash and a replay included.
While any input partition still has a backlog the watermark follows the slowest one,
so a `set` read late from a slow partition still finds the deltas stamped after it.
A SKU inventory has never reported gets no level and raises no level alert (its
orders still reserve); the bucket raises one `stock.unknown_sku` candidate for all
such SKUs instead.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from operators.alerts import AlertCandidate
from operators.clock import Progress, StreamClock
from operators.events import InventoryEvent, OrderEvent

LEVELS = ("safe", "warning", "urgent", "out")
_SEVERITY_OF_LEVEL = {level: rank for rank, level in enumerate(LEVELS)}
ORDER_KINDS = frozenset({"created", "paid", "cancelled", "refunded"})
_TERMINAL_RANK = {"paid": 0, "cancelled": 1, "refunded": 2}  # same instant: paid wins
RUNBOOK = "Check the SKU's open purchase orders; restock or pause its promotion."
UNKNOWN_SKU_RUNBOOK = "Orders name SKUs inventory never reported: check the catalogue sync and the inventory feed."
UNKNOWN_SKU_SAMPLE = 20  # SKUs named in a stock.unknown_sku candidate
# Lines at one instant apply in this order (counts first), then by reference: any total order
# that does not depend on arrival would do.
_KIND_RANK = {"set": 0, "restock": 1, "adjust": 2, "created": 3, "paid": 4, "cancelled": 5, "refunded": 6}


class StockLine(NamedTuple):
    """One change for one SKU and pool. A NamedTuple: built per order line, kept cheap."""

    sku: str
    ts: int
    kind: str  # set | restock | adjust | created | paid | cancelled | refunded
    pool: str  # spot | presale
    quantity: int  # order lines: units of the SKU in the order; adjust: signed delta
    ref: str  # order_id for order lines, event_id for inventory
    safety_stock: int | None = None


def _line_order(line: "StockLine") -> tuple:
    return line.ts, _KIND_RANK[line.kind], line.ref, line.sku, line.pool, line.quantity


def _line_ts(line: "StockLine") -> int:
    return line.ts


def order_lines(event: OrderEvent) -> list[StockLine]:
    """An order event fans out to one line per SKU and pool (repeated items summed).
    A refund request moves no stock (the `refunded` that answers it may)."""
    if event.status not in ORDER_KINDS:
        return []
    if len(event.items) == 1:
        item = event.items[0]
        return [StockLine(item.sku, event.ts, event.status, item.pool, item.quantity, event.order_id)]
    units: dict[tuple[str, str], int] = {}
    for item in event.items:
        key = (item.sku, item.pool)
        units[key] = units.get(key, 0) + item.quantity
    return [StockLine(sku, event.ts, event.status, pool, q, event.order_id) for (sku, pool), q in units.items()]


def inventory_line(event: InventoryEvent) -> StockLine:
    return StockLine(event.sku, event.ts, event.kind, event.pool, event.quantity, event.event_id, event.safety_stock)


@dataclass(frozen=True)
class StockRules:
    """How levels, velocity and suggestions are judged; all in event time."""

    lateness_ms: int = 10_000
    retention_ms: int = 600_000  # finished orders are remembered this long past the watermark (>= lateness)
    default_safety_stock: int = 0  # for pools whose inventory never carried safety_stock
    urgent_fraction: float = 0.5  # urgent at or below this share of the safety stock
    urgent_minutes: float = 30.0  # ... or when projected to run out within this many minutes
    velocity_window_ms: int = 300_000  # sales velocity over this much recent event time
    velocity_slots: int = 10
    velocity_min_units: int = 5  # fewer units sold in the window: too few to project from
    replenish_cover_minutes: float = 120.0  # a suggestion covers this long at the current velocity

    @property
    def slot_ms(self) -> int:
        return max(1, self.velocity_window_ms // self.velocity_slots)


class _Pool:
    """One SKU's spot or pre-sale stock."""

    __slots__ = ("available", "reserved", "set_ts", "log", "safety_stock", "safety_ts", "sales", "seen_events",
                 "tracked")

    def __init__(self) -> None:
        self.available = 0
        self.reserved = 0
        self.set_ts: int | None = None  # event time of the `set` the level is based on
        self.log: deque[tuple[int, int]] = deque()  # (ts, delta) applied since, within lateness
        self.safety_stock: int | None = None
        self.safety_ts = -1
        self.sales: dict[int, int] = {}  # velocity slot start -> units reserved
        self.seen_events: dict[str, int] = {}  # restock/adjust event_id -> ts (dedupe)
        self.tracked = False  # inventory has told us about this pool

    def apply(self, ts: int, delta: int) -> bool:
        if self.set_ts is not None and ts < self.set_ts:
            return False  # the later count already includes it
        self.available += delta
        self.log.append((ts, delta))
        return True

    def unapply(self, ts: int, delta: int) -> None:
        if self.set_ts is not None and ts < self.set_ts:
            return
        self.available -= delta
        try:
            self.log.remove((ts, delta))
        except ValueError:
            pass  # older than the lateness window: already pruned

    def set(self, ts: int, quantity: int) -> None:
        if self.set_ts is not None and ts < self.set_ts:
            return  # an older count, superseded
        self.set_ts = ts
        self.log = deque(entry for entry in self.log if entry[0] >= ts)
        self.available = quantity + sum(delta for _, delta in self.log)

    def prune(self, watermark: int, retention_ms: int) -> None:
        """Forget deltas no `set` within the lateness can need, and old inventory event ids."""
        log = self.log
        while log and log[0][0] < watermark:
            log.popleft()
        if len(self.seen_events) > 64:
            horizon = watermark - retention_ms
            self.seen_events = {e: ts for e, ts in self.seen_events.items() if ts >= horizon}

    def velocity(self, now: int, rules: StockRules) -> float:
        """Units reserved per minute over the velocity window ending at `now`; 0 when too few."""
        if not self.sales:
            return 0.0
        slot_ms = rules.slot_ms
        oldest = now - rules.velocity_window_ms
        units = 0
        first = now
        stale = None
        for start, sold in self.sales.items():
            if start + slot_ms <= oldest:
                stale = (stale or []) + [start]
            else:
                units += sold
                first = min(first, start)
        if stale:
            for start in stale:
                del self.sales[start]
        if units < rules.velocity_min_units:
            return 0.0
        # Over the time the SKU has been selling, up to the window: a flash sale that
        # started a minute ago is judged on that minute, not diluted over the window.
        span = min(rules.velocity_window_ms, max(slot_ms, now - first))
        return units * 60_000 / span


class _Hold:
    """One order's statuses for one SKU and pool, and the ledger entries they imply."""

    __slots__ = ("quantity", "created", "paid", "cancelled", "refunded", "reserve", "release", "holding", "last_ts")

    def __init__(self, quantity: int) -> None:
        self.quantity = quantity
        self.created: int | None = None
        self.paid: int | None = None
        self.cancelled: int | None = None
        self.refunded: int | None = None
        self.reserve: tuple[int, int] | None = None  # applied entries (ts, delta)
        self.release: tuple[int, int] | None = None
        self.holding = 0
        self.last_ts = 0

    def entries(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None, int]:
        """(reserve entry, release entry, units held) from the statuses seen, in any order."""
        q = self.quantity
        terminal = None
        for kind in ("paid", "cancelled", "refunded"):
            ts = getattr(self, kind)
            if ts is not None and (terminal is None or (ts, _TERMINAL_RANK[kind]) < terminal[:2]):
                terminal = (ts, _TERMINAL_RANK[kind], kind)
        reserve = None if self.created is None else (self.created, -q)
        release = None
        if terminal is not None:
            if terminal[2] == "cancelled" or (terminal[2] == "refunded" and self.created is not None):
                release = (terminal[0], q)
        holding = q if self.created is not None and terminal is None else 0
        return reserve, release, holding

    @property
    def finished(self) -> bool:
        return self.paid is not None or self.cancelled is not None or self.refunded is not None

    def __reduce__(self):
        # Every snapshot pickles every remembered order. The default for slots (a dict of
        # them per hold, built through copyreg) is 2.5 times slower to write than a tuple.
        # Snapshots written the default way still load: they do not go through here.
        return _restore_hold, (self.quantity, self.created, self.paid, self.cancelled, self.refunded, self.reserve,
                               self.release, self.holding, self.last_ts)


def _restore_hold(quantity, created, paid, cancelled, refunded, reserve, release, holding, last_ts) -> _Hold:
    hold = _Hold.__new__(_Hold)
    hold.quantity, hold.created, hold.paid, hold.cancelled, hold.refunded = quantity, created, paid, cancelled, refunded
    hold.reserve, hold.release, hold.holding, hold.last_ts = reserve, release, holding, last_ts
    return hold


class _Sku:
    __slots__ = ("sku", "pools", "holds", "level", "low_active", "low_urgent", "out_active", "oversell_active",
                 "oversell_orders", "updated_ts", "projected")

    def __init__(self, sku: str) -> None:
        self.sku = sku
        self.pools: dict[str, _Pool] = {}
        self.holds: dict[tuple[str, str], _Hold] = {}
        self.level: str | None = None
        self.low_active = False
        self.low_urgent = False  # the low episode already carried a replenishment suggestion
        self.out_active = False
        self.oversell_active = False
        self.oversell_orders = 0
        self.updated_ts = 0
        self.projected = False  # urgent only because of its velocity: re-judged as time passes

    @property
    def known(self) -> bool:
        """Inventory has told us about at least one of its pools."""
        return any(pool.tracked for pool in self.pools.values())

    def pool(self, name: str) -> _Pool:
        pool = self.pools.get(name)
        if pool is None:
            pool = self.pools[name] = _Pool()
        return pool


@dataclass(frozen=True, slots=True)
class StockView:
    """`stock:{sku}` as of the last change: the contract's hash."""

    sku: str
    available: int
    reserved: int
    presale_available: int
    level: str
    updated_ts: int
    velocity_per_min: float | None = None
    minutes_to_stockout: float | None = None

    def fields(self) -> dict[str, str | int | float]:
        out: dict[str, str | int | float] = {
            "available": self.available,
            "reserved": self.reserved,
            "presale_available": self.presale_available,
            "level": self.level,
            "updated_ts": self.updated_ts,
        }
        if self.velocity_per_min is not None:
            out["velocity_per_min"] = self.velocity_per_min
        if self.minutes_to_stockout is not None:
            out["minutes_to_stockout"] = self.minutes_to_stockout
        return out


@dataclass(frozen=True, slots=True)
class LevelChange:
    ts: int
    sku: str
    level: str
    previous_level: str | None
    view: StockView

    @property
    def metric_id(self) -> str:
        return f"stock_level:{self.sku}:{self.ts}:{self.level}"

    def to_dict(self) -> dict:
        out = {
            "metric": "stock_level",
            "metric_id": self.metric_id,
            "ts": self.ts,
            "sku": self.sku,
            "level": self.level,
            "previous_level": self.previous_level,
        }
        out.update(self.view.fields())
        return out


@dataclass
class StockChanges:
    """What one batch changed: the latest view of each changed SKU, level changes, candidates."""

    views: list[StockView] = field(default_factory=list)
    level_changes: list[LevelChange] = field(default_factory=list)
    candidates: list[AlertCandidate] = field(default_factory=list)


class _Judgement(NamedTuple):
    level: str
    velocity: float  # units/min over tracked pools
    minutes_to_stockout: float | None
    projected: bool  # urgent only by projection
    worst_pool: str
    safety_stock: int


@dataclass
class StockLedger:
    """The ledgers of the SKUs in one bucket, with the stream's event-time clock.

    Lines wait until the watermark passes them, then apply in event-time order (ties
    broken by kind and reference), each judged at its own event time. SKUs urgent only
    by projection are re-judged on a grid of velocity slots. So every level change and
    candidate depends only on the lines, never on how they were batched or interleaved.
    """

    rules: StockRules
    clock: StreamClock = field(init=False)
    skus: dict[str, _Sku] = field(default_factory=dict)
    expiry: list[tuple[int, str, str, str]] = field(default_factory=list)  # (drop at, sku, order, pool) heap
    projected: set[str] = field(default_factory=set)  # SKUs urgent only by velocity projection
    pending: list[StockLine] = field(default_factory=list)  # arrived, not yet passed by the watermark
    applied_until: int | None = None  # lines before this have been applied (the last watermark)
    next_tick: int | None = None  # next slot boundary at which projected SKUs are re-judged
    unknown_skus: set[str] = field(default_factory=set)  # ordered, never seen in inventory
    _watermark: int | None = None  # low watermark: older state may be forgotten
    _event_now: int | None = None  # the event time being applied (the line's, or a tick's)
    _sales_recorded: int = 0  # sales recorded so far: tells `_apply_lines` a line moved a velocity

    def __post_init__(self) -> None:
        self.clock = StreamClock(lateness_ms=self.rules.lateness_ms)

    def resume(self, now_ms: int) -> None:
        """Restored from a snapshot: the downtime is not quiet input, and every input
        partition reports again before anything is applied or forgotten."""
        self.clock.resume(now_ms)

    def __setstate__(self, state: dict) -> None:
        # A snapshot of the previous ledger (lines applied on arrival, its own per-partition
        # watermark) resumes with nothing waiting and the stream clock's rule.
        for stale in ("partitions", "started_wall_ms", "_now_ms"):
            state.pop(stale, None)
        state.setdefault("pending", [])
        state.setdefault("applied_until", None)
        state.setdefault("next_tick", None)
        state.setdefault("unknown_skus", set())
        self.__dict__.update(state)

    # -- input -------------------------------------------------------------------------------
    def add(self, lines: list[StockLine], progress: Progress, now_ms: int) -> StockChanges:
        """One batch of this bucket's lines, and the whole input batch's progress, so every
        bucket's clock follows the stream, not its SKUs."""
        self.clock.advance(progress, now_ms)
        if lines:
            self.pending.extend(lines)
        return self._run(now_ms)

    def advance(self, now_ms: int) -> StockChanges:
        """Quiet input: the watermark still passes waiting lines and projection ticks."""
        return self._run(now_ms)

    def flush(self) -> StockChanges:
        """The input has ended (a finite replay): apply every waiting line."""
        return self._run(None)

    def apply_through(self, lines: list[StockLine], until: int) -> StockChanges:
        """For a ledger driven by another event-time loop (the price watch's and each cart
        bucket's copy): `lines`
        and every waiting line up to `until`, inclusive, and the ticks up to it. The caller
        has already waited for its own watermark, so no clock of this ledger is involved."""
        if lines:
            self.pending.extend(lines)
        return self._apply_until(until, inclusive=True)

    def level(self, sku: str) -> str | None:
        """The SKU's level after the lines applied so far (what `stock:{sku}` says); None
        while inventory has not told us about it."""
        entry = self.skus.get(sku)
        return None if entry is None else entry.level

    def next_wake_ms(self, now_ms: int) -> int | None:
        """Wall time at which the quiet-input watermark reaches the next waiting line or tick."""
        due = [self.pending[0].ts + 1] if self.pending else []  # sorted by the last `_run`; applies once passed
        if self.projected and self.next_tick is not None:
            due.append(self.next_tick)
        return self.clock.wall_time_when(min(due), now_ms) if due else None

    def _run(self, now_ms: int | None) -> StockChanges:
        if now_ms is None:  # the end of the input: every line applies
            return self._apply_until(self.clock.max_event_ms, inclusive=True)
        # Strictly older than the watermark: a partition that has reached the watermark may
        # still deliver another line stamped with it, which must not come after its equals.
        return self._apply_until(self.clock.watermark(now_ms), inclusive=False)

    def _apply_until(self, watermark: int | None, inclusive: bool) -> StockChanges:
        changes = StockChanges()
        if watermark is None:
            return changes
        if self.applied_until is not None and watermark < self.applied_until:
            watermark = self.applied_until
        pending = self.pending
        ready: list[StockLine] = []
        if pending:
            pending.sort(key=_line_order)
            cut = (bisect_right if inclusive else bisect_left)(pending, watermark, key=_line_ts)
            ready, self.pending = pending[:cut], pending[cut:]
        self._watermark = watermark
        self._apply_lines(ready, watermark, changes)
        self.applied_until = watermark
        self._expire()
        return changes

    def _apply_lines(self, lines: list[StockLine], watermark: int, changes: StockChanges) -> None:
        dirty: dict[str, _Sku] = {}
        # A SKU's judgement after its latest line. A level depends only on each pool's
        # available units, safety stock and sales (and the event time), so a line that
        # moves none of them (a payment, a re-delivered status) leaves the judgement as it
        # was and judging again would change nothing.
        judged: dict[str, _Judgement] = {}
        skus = self.skus
        retention_ms = self.rules.retention_ms
        unknown_before = len(self.unknown_skus)
        for line in lines:
            self._tick_until(line.ts, dirty, judged, changes)
            if self._event_now is None or line.ts > self._event_now:
                self._event_now = line.ts
            name = line.sku
            sku = skus.get(name)
            if sku is None:
                sku = skus[name] = _Sku(name)
            pool = sku.pools.get(line.pool)
            before = None if pool is None else (pool.available, pool.safety_stock)
            sales = self._sales_recorded
            if self._apply(sku, line, changes):
                if line.ts > sku.updated_ts:
                    sku.updated_ts = line.ts
                if not sku.known:
                    self.unknown_skus.add(name)
                    continue  # no level, view or alert before inventory has told us about the SKU
                self.unknown_skus.discard(name)
                pool = sku.pools[line.pool]
                if (name not in judged or sales != self._sales_recorded
                        or before != (pool.available, pool.safety_stock)):
                    judged[name] = self._judge(sku, line.ts, changes, line.ref)
                dirty[name] = sku
            sku.pools[line.pool].prune(watermark, retention_ms)
        self._tick_until(watermark, dirty, judged, changes)
        self._report_unknown(unknown_before, watermark, changes)
        changes.views.extend(self._view(sku, judged.get(name)) for name, sku in dirty.items())

    def _tick_until(self, until: int, dirty: dict[str, _Sku], judged: dict[str, _Judgement],
                    changes: StockChanges) -> None:
        """Re-judge SKUs urgent only by projection at each slot boundary up to `until`:
        they cool down as sales slow, without events of their own."""
        slot_ms = self.rules.slot_ms
        if self.next_tick is None or not self.projected:
            self.next_tick = until - until % slot_ms + slot_ms
            return
        while self.projected and self.next_tick <= until:
            tick = self._event_now = max(self.next_tick, self._event_now or self.next_tick)
            for name in sorted(self.projected):
                sku = self.skus[name]
                before = sku.level
                judged[name] = self._judge(sku, tick, changes)
                if sku.level != before:
                    dirty[name] = sku
            self.next_tick += slot_ms
        if self.next_tick <= until:  # nothing projected: skip the quiet stretch
            self.next_tick = until - until % slot_ms + slot_ms

    def _report_unknown(self, unknown_before: int, ts: int, changes: StockChanges) -> None:
        """One `stock.unknown_sku` candidate for all the SKUs ordered but never stocked, not
        one per SKU: an order of thousands of unknown SKUs is one problem for on-call."""
        unknown = self.unknown_skus
        if len(unknown) == unknown_before:
            return
        if unknown:
            sample = sorted(unknown)[:UNKNOWN_SKU_SAMPLE]
            changes.candidates.append(AlertCandidate(
                ts=ts, rule="stock.unknown_sku", key="orders", active=True, severity="warning",
                summary=f"{len(unknown)} SKU(s) ordered but never seen in inventory, e.g. {', '.join(sample[:5])}",
                value=float(len(unknown)), threshold=0.0, runbook=UNKNOWN_SKU_RUNBOOK,
                detail={"unknown_skus": len(unknown), "sample": sample},
            ))
        else:
            changes.candidates.append(AlertCandidate(
                ts=ts, rule="stock.unknown_sku", key="orders", active=False, severity="warning",
                summary="every ordered SKU is known to inventory", value=0.0, threshold=0.0,
            ))

    def _apply(self, sku: _Sku, line: StockLine, changes: StockChanges) -> bool:
        """Apply one line; False when it changed nothing (a duplicate)."""
        pool = sku.pool(line.pool)
        kind = line.kind
        if kind in ORDER_KINDS:
            return self._order(sku, pool, line, changes)
        if line.safety_stock is not None and line.ts >= pool.safety_ts:
            pool.safety_stock, pool.safety_ts = line.safety_stock, line.ts
        pool.tracked = True
        if kind == "set":
            pool.set(line.ts, line.quantity)
            return True
        if line.ref in pool.seen_events:
            return False
        pool.seen_events[line.ref] = line.ts
        pool.apply(line.ts, line.quantity)
        return True

    def _order(self, sku: _Sku, pool: _Pool, line: StockLine, changes: StockChanges) -> bool:
        key = (line.ref, line.pool)
        hold = sku.holds.get(key)
        if hold is None:
            hold = sku.holds[key] = _Hold(line.quantity)
        kind = line.kind
        seen = getattr(hold, kind)
        if seen is not None and seen <= line.ts:
            return False  # a duplicate (or a later copy) of a status already counted
        if kind == "created":
            hold.quantity = line.quantity  # the order as placed is the authority
        setattr(hold, kind, line.ts)
        if line.ts > hold.last_ts:
            hold.last_ts = line.ts
        reserve, release, holding = hold.entries()
        if reserve != hold.reserve:
            if hold.reserve is not None:
                pool.unapply(*hold.reserve)
            if reserve is not None:
                before = pool.available
                if pool.apply(*reserve):
                    self._record_sale(pool, reserve[0], line.quantity)
                    if pool.tracked and before < hold.quantity:
                        self._oversold(sku, line, before, changes)
            hold.reserve = reserve
        if release != hold.release:
            if hold.release is not None:
                pool.unapply(*hold.release)
            if release is not None:
                pool.apply(*release)
            hold.release = release
        pool.reserved += holding - hold.holding
        hold.holding = holding
        if hold.finished:
            heapq.heappush(self.expiry, (hold.last_ts + self.rules.retention_ms, sku.sku, line.ref, line.pool))
        return True

    def _record_sale(self, pool: _Pool, ts: int, units: int) -> None:
        slot = ts - ts % self.rules.slot_ms
        pool.sales[slot] = pool.sales.get(slot, 0) + units
        self._sales_recorded += 1

    def _oversold(self, sku: _Sku, line: StockLine, before: int, changes: StockChanges) -> None:
        sku.oversell_orders += 1
        if sku.oversell_active:
            return
        sku.oversell_active = True
        changes.candidates.append(
            AlertCandidate(
                ts=line.ts, rule="stock.oversell", key=sku.sku, active=True, severity="critical",
                summary=f"{sku.sku}: order {line.ref} reserved {line.quantity} with {max(0, before)} "
                        f"left in the {line.pool} pool (oversold)",
                value=float(line.quantity), threshold=float(before), runbook=RUNBOOK,
                detail={"order_id": line.ref, "pool": line.pool, "requested": line.quantity,
                        "available_before": before},
            )
        )

    # -- levels and candidates -------------------------------------------------------------
    def _judgement(self, sku: _Sku, now: int) -> _Judgement:
        rules = self.rules
        worst = None
        velocity = 0.0
        minutes = None
        for name, pool in sku.pools.items():
            pool_velocity = pool.velocity(now, rules)
            velocity += pool_velocity
            pool_minutes = None
            if pool_velocity > 0:
                pool_minutes = max(0.0, pool.available) / pool_velocity
                minutes = pool_minutes if minutes is None else min(minutes, pool_minutes)
            safety = rules.default_safety_stock if pool.safety_stock is None else pool.safety_stock
            available = pool.available
            projected = False
            if available <= 0:
                level = "out"
            elif available <= safety * rules.urgent_fraction:
                level = "urgent"
            elif pool_minutes is not None and pool_minutes <= rules.urgent_minutes:
                level, projected = "urgent", True
            elif available <= safety:
                level = "warning"
            else:
                level = "safe"
            rank = _SEVERITY_OF_LEVEL[level]
            if worst is None or rank > worst[0]:
                worst = (rank, level, projected, name, safety)
        if worst is None:
            return _Judgement("safe", 0.0, None, False, "spot", rules.default_safety_stock)
        return _Judgement(worst[1], round(velocity, 3), None if minutes is None else round(minutes, 2),
                          worst[2], worst[3], worst[4])

    def _judge(self, sku: _Sku, ts: int, changes: StockChanges, order_id: str | None = None) -> _Judgement:
        judgement = self._judgement(sku, self._event_now)
        level = judgement.level
        if judgement.projected != sku.projected:
            sku.projected = judgement.projected
            (self.projected.add if sku.projected else self.projected.discard)(sku.sku)
        if sku.oversell_active and all(pool.available >= 0 for pool in sku.pools.values()):
            sku.oversell_active = False
            changes.candidates.append(
                AlertCandidate(
                    ts=ts, rule="stock.oversell", key=sku.sku, active=False, severity="critical",
                    summary=f"{sku.sku}: no pool is oversold any more",
                    detail={"orders_oversold": sku.oversell_orders},
                )
            )
            sku.oversell_orders = 0
        if level == sku.level:
            return judgement
        previous, sku.level = sku.level, level
        view = self._view(sku, judgement)
        if previous is not None or level != "safe":  # a new SKU starting safe is no change worth a record
            changes.level_changes.append(LevelChange(ts, sku.sku, level, previous, view))
        low = level != "safe"
        urgent = level in ("urgent", "out")
        pool = sku.pools.get(judgement.worst_pool)
        if low and (not sku.low_active or (urgent and not sku.low_urgent)):
            detail = {"level": level, "pool": judgement.worst_pool, "safety_stock": judgement.safety_stock}
            if urgent:
                detail["replenish"] = self._suggestion(pool, judgement)
            changes.candidates.append(
                AlertCandidate(
                    ts=ts, rule="stock.low", key=sku.sku, active=True, severity="warning",
                    summary=self._summary(sku.sku, view, judgement),
                    value=float(view.available if judgement.worst_pool == "spot" else view.presale_available),
                    threshold=float(judgement.safety_stock), runbook=RUNBOOK, detail=detail,
                )
            )
            sku.low_active = True
            sku.low_urgent = sku.low_urgent or urgent
        elif not low and sku.low_active:
            sku.low_active = sku.low_urgent = False
            changes.candidates.append(
                AlertCandidate(
                    ts=ts, rule="stock.low", key=sku.sku, active=False, severity="warning",
                    summary=f"{sku.sku} is back above its safety stock ({view.available} available)",
                    value=float(view.available), threshold=float(judgement.safety_stock),
                )
            )
        if level == "out" and not sku.out_active:
            sku.out_active = True
            changes.candidates.append(
                AlertCandidate(
                    ts=ts, rule="stock.out", key=sku.sku, active=True, severity="critical",
                    summary=f"{sku.sku} is out of stock in the {judgement.worst_pool} pool",
                    value=float(pool.available if pool else 0), threshold=0.0, runbook=RUNBOOK,
                    detail={"pool": judgement.worst_pool, "reserved": view.reserved,
                            "replenish": self._suggestion(pool, judgement),
                            **({"order_id": order_id} if order_id else {})},
                )
            )
        elif level != "out" and sku.out_active:
            sku.out_active = False
            changes.candidates.append(
                AlertCandidate(
                    ts=ts, rule="stock.out", key=sku.sku, active=False, severity="critical",
                    summary=f"{sku.sku} is back in stock ({view.available} available)",
                    value=float(view.available), threshold=0.0,
                )
            )
        return judgement

    def _summary(self, sku: str, view: StockView, judgement: _Judgement) -> str:
        text = f"{sku} stock {judgement.level}: {view.available} available, safety stock {judgement.safety_stock}"
        if judgement.minutes_to_stockout is not None:
            text += f", out in ~{judgement.minutes_to_stockout:.0f} min at {judgement.velocity:g}/min"
        return text

    def _suggestion(self, pool: _Pool | None, judgement: _Judgement) -> dict:
        """Units to order so the pool covers `replenish_cover_minutes` at its velocity plus safety stock."""
        rules = self.rules
        available = pool.available if pool is not None else 0
        velocity = pool.velocity(self._event_now, rules) if pool is not None else 0.0
        target = math.ceil(velocity * rules.replenish_cover_minutes) + max(judgement.safety_stock, 1)
        return {
            "quantity": max(0, target - available),
            "target_units": target,
            "cover_minutes": rules.replenish_cover_minutes,
            "velocity_per_min": round(velocity, 3),
        }

    def _view(self, sku: _Sku, judgement: _Judgement | None = None) -> StockView:
        if judgement is None:
            judgement = self._judgement(sku, self._event_now)
        spot = sku.pools.get("spot")
        presale = sku.pools.get("presale")
        velocity = judgement.velocity
        return StockView(
            sku=sku.sku,
            available=spot.available if spot else 0,
            reserved=sum(pool.reserved for pool in sku.pools.values()),
            presale_available=presale.available if presale else 0,
            level=sku.level or judgement.level,
            updated_ts=sku.updated_ts,
            velocity_per_min=velocity if velocity > 0 else None,
            minutes_to_stockout=judgement.minutes_to_stockout,
        )

    # -- bounded memory -----------------------------------------------------------------------
    def _expire(self) -> None:
        """Drop finished orders a retention period behind the watermark."""
        watermark = self._watermark
        if watermark is None:
            return
        expiry = self.expiry
        while expiry and expiry[0][0] < watermark:
            _, name, order_id, pool_name = heapq.heappop(expiry)
            sku = self.skus.get(name)
            hold = sku.holds.get((order_id, pool_name)) if sku else None
            if hold is None:
                continue
            if hold.last_ts + self.rules.retention_ms >= watermark:
                continue  # touched since: a later entry in the heap covers it
            del sku.holds[(order_id, pool_name)]

    def open_orders(self) -> int:
        return sum(len(sku.holds) for sku in self.skus.values())
