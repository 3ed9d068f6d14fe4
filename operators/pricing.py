"""Price watch: our price against rivals' per SKU, undercut and promotion alerts, and
price suggestions under inventory pressure. Pure logic, no Bytewax.

Input: `PriceEvent`s (ours, `seller` = `self`, and rivals' from a crawler) and the
stock lines of `orders` and `inventory` (`operators.stock`). Everything waits for the
stream clock (`operators.clock`) and is applied in event-time order, prices and stock
interleaved: a price observed at T is judged against the stock ledger as of T, never as
of whenever a batch happened to arrive. So every suggestion, alert candidate and view
depends only on the input, not on batching, load or a crash and replay.

Rules (all on event time):
- A SKU is ours once we have observed our own price for it; rival prices for other SKUs
  are kept (our price may come later) but raise nothing, and are forgotten once no rival
  price for the SKU has been seen for `foreign_horizon_ms` of event time (a crawler that
  covers a rival's whole range would otherwise grow the watch without end).
- A price far from the seller's last accepted price for the SKU (more than
  `max_jump_factor` times above or below; for a rival's first observation, against our
  price) is *flagged*, not acted on. It is accepted when the crawler sees it again
  `jump_confirm_ms` or more later (a real price change persists; a glitch does not).
- The gap is `(ours - lowest rival) / ours` in percent. A gap above `undercut_pct` that
  holds `undercut_hold_ms` raises `price.undercut` (critical when the SKU sells fast),
  stamped at the moment the hold ends; the gap closing clears it. One alert per SKU.
- A rival starting promotions on `promo_min_skus` of our SKUs within `promo_window_ms`
  raises `price.rival_promo` for that rival; it clears when fewer of our SKUs than that
  still carry the rival's promotions.
- Suggestions (`PriceSuggestion.rule`): `inventory.hold` (rivals are cheaper but stock is
  low or selling out: keep the price), `inventory.raise` (stock pressure and no cheaper
  rival: raise by `raise_pct_warning`/`raise_pct_urgent`, capped at the list price),
  `rival.match` (match the lowest rival, when it is more than `match_pct` below us), `rival.floor` (the rival is below our floor:
  go to the floor), `rival.follow_up` (every rival is well above us: follow them up to
  `follow_up_pct` below the lowest), `hold` (nothing to do). Never below the floor.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from operators.alerts import AlertCandidate
from operators.clock import Progress, StreamClock
from operators.events import PriceEvent
from operators.stock import StockLedger, StockLine, StockRules, StockView, _line_order

PRESSURE_LEVELS = frozenset({"warning", "urgent", "out"})
URGENT_LEVELS = frozenset({"urgent", "out"})
UNDERCUT_RUNBOOK = "Check the rival's offer; accept or reject the suggestion on price-suggestions."
PROMO_RUNBOOK = "A rival promotion wave: review price-suggestions for the SKUs in the detail."
PROMO_DETAIL_SKUS = 20  # SKUs named in a promotion-wave candidate, fastest sellers first


@dataclass(frozen=True)
class PriceRules:
    lateness_ms: int = 10_000
    undercut_pct: float = 5.0  # a rival this much below our price (percent of ours) undercuts us
    undercut_hold_ms: int = 60_000  # ... for this long before the alert fires
    max_jump_factor: float = 3.0  # a price this many times above/below the seller's last is flagged
    jump_confirm_ms: int = 60_000  # a flagged price seen again this much later is accepted
    default_floor_pct: float = 20.0  # without a floor: at most this far below our first observed price
    raise_pct_warning: float = 3.0  # inventory pressure at `warning` (or selling out): raise this much
    raise_pct_urgent: float = 8.0  # ... at `urgent`/`out`
    follow_up_pct: float = 1.0  # follow rivals up to this far below the lowest
    match_pct: float = 2.0  # a cheaper rival within this much of our price is jitter: hold
    resuggest_pct: float = 0.5  # under the same rule, a new price must move this much to be suggested again
    fast_velocity_per_min: float = 1.0  # a SKU selling this fast is a fast seller (critical undercut)
    sellout_minutes: float = 60.0  # projected to run out within this: inventory pressure
    promo_window_ms: int = 300_000
    promo_min_skus: int = 10
    foreign_horizon_ms: int = 6 * 3_600_000  # rival prices of a SKU we do not sell, unseen this long: forgotten
    stock: StockRules = field(default_factory=StockRules)


class PriceSuggestion(NamedTuple):
    suggestion_id: str
    ts: int
    sku: str
    current_price: float
    suggested_price: float
    floor: float
    rule: str
    reason: str
    currency: str
    lowest_rival: str | None
    lowest_rival_price: float | None
    gap_pct: float | None
    stock_level: str | None
    velocity_per_min: float | None

    def to_dict(self) -> dict:
        out = self._asdict()
        return {name: value for name, value in out.items() if value is not None}


class FlaggedPrice(NamedTuple):
    """A price not acted on: too far from the seller's history."""

    event_id: str
    ts: int
    sku: str
    seller: str
    price: float
    reference_price: float

    def to_dict(self) -> dict:
        return {"metric": "price_flagged", "metric_id": f"price_flagged:{self.event_id}", "ts": self.ts,
                "sku": self.sku, "seller": self.seller, "price": self.price,
                "reference_price": self.reference_price, "reason": "jump"}


@dataclass
class PriceChanges:
    views: dict[str, dict] = field(default_factory=dict)  # sku -> the latest `price:{sku}` fields
    suggestions: list[PriceSuggestion] = field(default_factory=list)
    candidates: list[AlertCandidate] = field(default_factory=list)
    flagged: list[FlaggedPrice] = field(default_factory=list)


class _Rival(NamedTuple):
    price: float
    ts: int
    promo: str | None


@dataclass(slots=True)
class _SkuPrices:
    sku: str
    own: float | None = None
    own_ts: int = 0
    floor: float | None = None
    list_price: float | None = None
    currency: str = "CNY"
    rivals: dict[str, _Rival] = field(default_factory=dict)
    accepted: dict[str, float] = field(default_factory=dict)  # seller -> last accepted price
    jumps: dict[str, tuple[float, int]] = field(default_factory=dict)  # seller -> flagged (price, ts)
    undercut_since: int | None = None
    undercut_alerting: bool = False
    level: str | None = None
    velocity: float | None = None
    minutes_to_stockout: float | None = None
    stock_ts: int = 0
    suggestion: tuple[str, float] | None = None  # the last (rule, price) suggested

    def last_seen(self) -> int:
        """The latest rival observation, accepted or flagged."""
        return max([rival.ts for rival in self.rivals.values()] + [ts for _, ts in self.jumps.values()], default=0)

    def lowest(self) -> tuple[str | None, float | None]:
        """The cheapest rival and its price; ties go to the first seller name."""
        best_seller = best = None
        for seller, rival in self.rivals.items():
            price = rival.price
            if best is None or price < best or (price == best and seller < best_seller):
                best_seller, best = seller, price
        return best_seller, best

    def gap_pct(self, lowest: float | None) -> float | None:
        if self.own is None or lowest is None:
            return None
        return round((self.own - lowest) / self.own * 100, 3)


@dataclass
class PriceWatch:
    """Every SKU's prices and a private stock ledger, on the stream's event-time clock."""

    rules: PriceRules
    clock: StreamClock = field(init=False)
    ledger: StockLedger = field(init=False)
    skus: dict[str, _SkuPrices] = field(default_factory=dict)
    pending: list = field(default_factory=list)  # PriceEvents and StockLines not yet passed by the watermark
    applied_until: int | None = None
    deadlines: list[tuple[int, str, int]] = field(default_factory=list)  # (due, sku, undercut_since) heap
    promo_starts: dict[str, deque] = field(default_factory=dict)  # rival -> (ts, sku) within the window
    promo_skus: dict[str, set] = field(default_factory=dict)  # rival -> our SKUs it has a promo on
    promo_alerting: set = field(default_factory=set)
    late_events: int = 0
    # (a rival observation's ts, sku) heap of SKUs seen only in rivals' prices, one entry
    # each: checked when the horizon has passed that observation.
    foreign: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.clock = StreamClock(lateness_ms=self.rules.lateness_ms)
        # The ledger is driven on this watch's event time (no lateness of its own): the
        # watch hands it lines only once the stream's watermark has passed them.
        self.ledger = StockLedger(replace(self.rules.stock, lateness_ms=0))

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "foreign" not in state:  # a snapshot from before foreign SKUs were forgotten
            self.foreign = [(sku.last_seen(), name) for name, sku in self.skus.items() if _foreign(sku)]
            heapq.heapify(self.foreign)

    def resume(self, now_ms: int) -> None:
        self.clock.resume(now_ms)

    # -- input ---------------------------------------------------------------------------
    def add(self, items: list, progress: Progress, now_ms: int) -> PriceChanges:
        self.clock.advance(progress, now_ms)
        if items:
            self.pending.extend(items)
        return self._run(self.clock.watermark(now_ms))

    def advance(self, now_ms: int) -> PriceChanges:
        return self._run(self.clock.watermark(now_ms))

    def flush(self) -> PriceChanges:
        """The input has ended (a finite replay): apply everything waiting, and let event
        time run on past the last hold, as quiet input would in a live run."""
        ends = [self.clock.max_event_ms] if self.clock.max_event_ms is not None else []
        ends.extend(due for due, _, _ in self.deadlines)
        return self._run(max(ends) if ends else None)

    def next_wake_ms(self, now_ms: int) -> int | None:
        due = [min(map(_item_ts, self.pending))] if self.pending else []
        if self.deadlines:
            due.append(self.deadlines[0][0])
        return self.clock.wall_time_when(min(due), now_ms) if due else None

    # -- the event-time loop ---------------------------------------------------------------
    def _run(self, watermark: int | None) -> PriceChanges:
        changes = PriceChanges()
        if watermark is None:
            return changes
        if self.applied_until is not None and watermark < self.applied_until:
            watermark = self.applied_until
        ready: list = []
        if self.pending:
            pending = sorted(self.pending, key=_item_order)
            cut = bisect_right(pending, watermark, key=_item_ts)
            ready, self.pending = pending[:cut], pending[cut:]
        lines: list[StockLine] = []
        for item in ready:
            ts = item.ts
            if self.applied_until is not None and ts < self.applied_until:
                self.late_events += 1  # later than the allowed lateness: its moment has been judged
                continue
            if type(item) is StockLine:
                lines.append(item)
                continue
            self._fire_deadlines(ts, changes, lines)
            if lines:
                self._apply_stock(lines, ts, changes)
                lines = []
            self._observe(item, changes)
        self._fire_deadlines(watermark, changes, lines)
        if lines:
            self._apply_stock(lines, watermark, changes)
        self._forget_foreign(watermark)
        self.applied_until = watermark
        return changes

    def _forget_foreign(self, until: int) -> None:
        """Drop SKUs seen only in rivals' prices whose last sighting is a horizon old."""
        foreign, horizon = self.foreign, self.rules.foreign_horizon_ms
        while foreign and foreign[0][0] + horizon <= until:
            _, name = heapq.heappop(foreign)
            sku = self.skus.get(name)
            if sku is None or not _foreign(sku):
                continue  # ours by now, or stocked: kept
            seen = sku.last_seen()
            if seen + horizon <= until:
                del self.skus[name]
            else:
                heapq.heappush(foreign, (seen, name))  # seen again since: check again later

    def _fire_deadlines(self, until: int, changes: PriceChanges, lines: list[StockLine]) -> None:
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= until:
            due, sku_id, since = heapq.heappop(deadlines)
            # Stock lines before the deadline count for the alert's severity.
            before = [line for line in lines if line.ts <= due]
            if before:
                self._apply_stock(before, due, changes)
                lines[:] = [line for line in lines if line.ts > due]
            sku = self.skus[sku_id]
            if sku.undercut_since != since or sku.undercut_alerting:
                continue  # the gap closed (or reopened) since this deadline was set
            sku.undercut_alerting = True
            changes.candidates.append(self._undercut_candidate(sku, due))
            self._view(sku, due, changes)

    def _apply_stock(self, lines: list[StockLine], until: int, changes: PriceChanges) -> None:
        stock = self.ledger.apply_through(lines, until)
        for view in stock.views:
            sku = self.skus.get(view.sku)
            if sku is None:
                sku = self.skus[view.sku] = _SkuPrices(view.sku)
            pressure_before = self._pressure(sku, until)
            _take_stock(sku, view)
            if sku.own is not None and self._pressure(sku, until) != pressure_before:
                self._judge(sku, view.updated_ts, f"stock@{view.updated_ts}", changes)

    # -- prices ----------------------------------------------------------------------------
    def _observe(self, event: PriceEvent, changes: PriceChanges) -> None:
        name, seller, price, ts = event.sku, event.seller, event.price, event.ts
        own = seller == PriceEvent.OWN_SELLER
        sku = self.skus.get(name)
        if sku is None:
            sku = self.skus[name] = _SkuPrices(name)
            if not own:
                heapq.heappush(self.foreign, (ts, name))
        reference = sku.accepted.get(seller)
        if reference is None and not own:
            reference = sku.own
        if reference is not None:
            factor = self.rules.max_jump_factor
            # The usual case inline; a jump goes to `_plausible`, which judges it again.
            if not reference / factor <= price <= reference * factor and not self._plausible(sku, event, reference):
                changes.flagged.append(FlaggedPrice(event.event_id, ts, name, seller, price, reference))
                return
        if sku.jumps:
            sku.jumps.pop(seller, None)
        sku.accepted[seller] = price
        if own:
            sku.own, sku.own_ts, sku.currency = price, ts, event.currency
            if event.floor is not None:
                sku.floor = event.floor
            elif sku.floor is None:
                sku.floor = round(price * (1 - self.rules.default_floor_pct / 100), 2)
            if event.list_price is not None:
                sku.list_price = event.list_price
        else:
            before = sku.rivals.get(seller)
            sku.rivals[seller] = _Rival(price, ts, event.promo)
            if sku.own is not None:
                self._track_promo(sku, seller, before, event, changes)
        if sku.own is not None:
            self._judge(sku, ts, event.event_id, changes)

    def _plausible(self, sku: _SkuPrices, event: PriceEvent, reference: float) -> bool:
        factor = self.rules.max_jump_factor
        if reference / factor <= event.price <= reference * factor:
            return True
        flagged = sku.jumps.get(event.seller)
        if flagged is not None and abs(event.price - flagged[0]) <= 0.01 * flagged[0]:
            if event.ts - flagged[1] >= self.rules.jump_confirm_ms:
                return True  # seen again well after the first sighting: a real change
            return False
        sku.jumps[event.seller] = (event.price, event.ts)
        return False

    def _track_promo(self, sku: _SkuPrices, rival: str, before: _Rival | None, event: PriceEvent,
                     changes: PriceChanges) -> None:
        rules = self.rules
        if event.promo is None:
            promoted = self.promo_skus.get(rival)
            if promoted is None:
                return  # this rival never had a promotion: nothing to end (most crawls)
            promoted.discard(sku.sku)
            if rival in self.promo_alerting and len(promoted) < rules.promo_min_skus:
                self.promo_alerting.discard(rival)
                changes.candidates.append(AlertCandidate(
                    ts=event.ts, rule="price.rival_promo", key=rival, active=False, severity="warning",
                    summary=f"{rival}'s promotion wave is over ({len(promoted)} of our SKUs still on promotion)",
                    value=float(len(promoted)), threshold=float(rules.promo_min_skus)))
            return
        promoted = self.promo_skus.get(rival)
        if promoted is None:
            promoted = self.promo_skus[rival] = set()
        promoted.add(sku.sku)
        if before is not None and before.promo == event.promo:
            return  # the same promotion seen again, not a new start
        starts = self.promo_starts.setdefault(rival, deque())
        starts.append((event.ts, sku.sku))
        while starts and starts[0][0] <= event.ts - rules.promo_window_ms:
            starts.popleft()
        started = {name for _, name in starts}
        if rival in self.promo_alerting or len(started) < rules.promo_min_skus:
            return
        self.promo_alerting.add(rival)
        fastest = sorted(started, key=lambda name: (-(self.skus[name].velocity or 0.0), name))
        changes.candidates.append(AlertCandidate(
            ts=event.ts, rule="price.rival_promo", key=rival, active=True, severity="warning",
            summary=f"{rival} started promotions on {len(started)} of our SKUs within "
                    f"{rules.promo_window_ms // 60_000} min",
            value=float(len(started)), threshold=float(rules.promo_min_skus), runbook=PROMO_RUNBOOK,
            detail={"skus": fastest[:PROMO_DETAIL_SKUS], "promo": event.promo}))

    # -- judgement ---------------------------------------------------------------------------
    def _pressure(self, sku: _SkuPrices, ts: int) -> str | None:
        """`urgent`, `warning` or None: how hard stock pushes the price up at `ts`."""
        if sku.level in URGENT_LEVELS:
            return "urgent"
        fresh = ts - sku.stock_ts <= self.rules.stock.velocity_window_ms
        if fresh and sku.minutes_to_stockout is not None and sku.minutes_to_stockout <= self.rules.sellout_minutes:
            return "urgent"
        if sku.level in PRESSURE_LEVELS:
            return "warning"
        return None

    def _fast(self, sku: _SkuPrices, ts: int) -> bool:
        fresh = ts - sku.stock_ts <= self.rules.stock.velocity_window_ms
        return fresh and (sku.velocity or 0.0) >= self.rules.fast_velocity_per_min

    def _judge(self, sku: _SkuPrices, ts: int, trigger: str, changes: PriceChanges) -> None:
        rules = self.rules
        seller, lowest = sku.lowest()
        gap = sku.gap_pct(lowest)
        undercut = gap is not None and gap > rules.undercut_pct
        if undercut and sku.undercut_since is None:
            sku.undercut_since = ts
            heapq.heappush(self.deadlines, (ts + rules.undercut_hold_ms, sku.sku, ts))
        elif not undercut and sku.undercut_since is not None:
            sku.undercut_since = None
            if sku.undercut_alerting:
                sku.undercut_alerting = False
                changes.candidates.append(AlertCandidate(
                    ts=ts, rule="price.undercut", key=sku.sku, active=False, severity="warning",
                    summary=f"{sku.sku}: the gap to the lowest rival closed ({_pct(gap)})",
                    value=gap, threshold=rules.undercut_pct))
        rule, price, raise_pct = self._suggest(sku, ts, lowest, gap)
        if self._new_advice(sku.suggestion, rule, price):
            sku.suggestion = (rule, price)
            changes.suggestions.append(PriceSuggestion(
                suggestion_id=f"{sku.sku}:{ts}:{trigger}", ts=ts, sku=sku.sku, current_price=sku.own,
                suggested_price=price, floor=sku.floor, rule=rule, reason=_reason(rule, sku, seller, lowest, raise_pct),
                currency=sku.currency, lowest_rival=seller, lowest_rival_price=lowest, gap_pct=gap,
                stock_level=sku.level, velocity_per_min=sku.velocity))
        self._view(sku, ts, changes, seller, lowest, gap)

    def _new_advice(self, last: tuple[str, float] | None, rule: str, price: float) -> bool:
        """A rule change is news; a price under the same rule is news when it moves enough
        (a rival's crawl jitter must not flood the storefront)."""
        if last is None:
            return rule != "hold"
        if last[0] != rule:
            return True
        return abs(price - last[1]) > last[1] * self.rules.resuggest_pct / 100

    def _suggest(self, sku: _SkuPrices, ts: int, lowest: float | None,
                 gap: float | None) -> tuple[str, float, float | None]:
        """(rule, price, the raise in percent for `inventory.raise`); the reason's text is
        written only for advice that goes out (`_reason`)."""
        rules, own, floor = self.rules, sku.own, sku.floor
        pressure = self._pressure(sku, ts)
        pct = None
        if pressure is not None:
            if lowest is not None and lowest < own:
                rule, price = "inventory.hold", own
            else:
                pct = rules.raise_pct_urgent if pressure == "urgent" else rules.raise_pct_warning
                price = own * (1 + pct / 100)
                if sku.list_price is not None and sku.list_price > own:
                    price = min(price, sku.list_price)
                rule = "inventory.raise"
        elif lowest is None:
            rule, price = "hold", own
        elif gap is not None and gap > rules.match_pct:
            if lowest < floor:
                rule, price = "rival.floor", floor
            else:
                rule, price = "rival.match", lowest
        elif lowest > own * (1 + rules.undercut_pct / 100):
            rule, price = "rival.follow_up", lowest * (1 - rules.follow_up_pct / 100)
        else:
            rule, price = "hold", own
        return rule, round(max(price, floor), 2), pct

    def _undercut_candidate(self, sku: _SkuPrices, ts: int) -> AlertCandidate:
        seller, lowest = sku.lowest()
        gap = sku.gap_pct(lowest)
        fast = self._fast(sku, ts)
        return AlertCandidate(
            ts=ts, rule="price.undercut", key=sku.sku, active=True, severity="critical" if fast else "warning",
            summary=f"{sku.sku}: {seller} at {lowest:g} undercuts our {sku.own:g} by {_pct(gap)} "
                    f"for {(ts - sku.undercut_since) // 1000} s" + (" (fast seller)" if fast else ""),
            value=gap, threshold=self.rules.undercut_pct, runbook=UNDERCUT_RUNBOOK,
            detail={"rival": seller, "rival_price": lowest, "our_price": sku.own, "since_ts": sku.undercut_since,
                    "velocity_per_min": sku.velocity, "stock_level": sku.level})

    def _view(self, sku: _SkuPrices, ts: int, changes: PriceChanges, seller: str | None = None,
              lowest: float | None = None, gap: float | None = None) -> None:
        """`price:{sku}` as of `ts`; `seller`, `lowest` and `gap` when the caller has them."""
        if sku.own is None:
            return
        if lowest is None:
            seller, lowest = sku.lowest()
            gap = sku.gap_pct(lowest)
        fields: dict = {"own_price": sku.own, "floor": sku.floor, "currency": sku.currency, "updated_ts": ts}
        if lowest is not None:
            fields["lowest_rival_price"] = lowest
            fields["lowest_rival"] = seller
            fields["gap_pct"] = gap
        since = sku.undercut_since
        if since is not None:
            fields["gap_since_ts"] = since
            fields["gap_held_ms"] = ts - since
        if sku.level is not None:
            fields["stock_level"] = sku.level
        if sku.velocity is not None:
            fields["velocity_per_min"] = sku.velocity
        if sku.minutes_to_stockout is not None:
            fields["minutes_to_stockout"] = sku.minutes_to_stockout
        suggestion = sku.suggestion
        if suggestion is not None:
            fields["suggested_price"] = suggestion[1]
            fields["suggestion_rule"] = suggestion[0]
        changes.views[sku.sku] = fields


def _reason(rule: str, sku: _SkuPrices, seller: str | None, lowest: float | None, raise_pct: float | None) -> str:
    """Why `_suggest` chose `rule`, in words for the storefront's reviewers."""
    if rule == "inventory.hold":
        return f"{seller} is cheaper ({lowest:g}) but stock is {sku.level or 'selling out'}: hold"
    if rule == "inventory.raise":
        return f"stock {sku.level or 'selling out'} and no cheaper rival: raise up to {raise_pct:g}%"
    if rule == "rival.floor":
        return f"{seller} at {lowest:g} is below our floor {sku.floor:g}: go to the floor"
    if rule == "rival.match":
        return f"match {seller} at {lowest:g}"
    if rule == "rival.follow_up":
        return f"every rival is above us; {seller} lowest at {lowest:g}: follow up"
    return "no rival price" if lowest is None else "in line with rivals"


def _foreign(sku: _SkuPrices) -> bool:
    """Seen only in rivals' prices: no price of ours, no stock of ours."""
    return sku.own is None and sku.level is None


def _take_stock(sku: _SkuPrices, view: StockView) -> None:
    sku.level = view.level
    sku.velocity = view.velocity_per_min
    sku.minutes_to_stockout = view.minutes_to_stockout
    sku.stock_ts = view.updated_ts


def _pct(gap: float | None) -> str:
    return "n/a" if gap is None else f"{gap:.1f}%"


def _item_ts(item) -> int:
    return item.ts


def _item_order(item) -> tuple:
    """Stock lines before prices at one instant (a price is judged on the stock as of its
    moment); any total order that does not depend on arrival would do."""
    if type(item) is StockLine:
        return (item.ts, 0, _line_order(item))
    return (item.ts, 1, (item.event_id, item.sku, item.seller, item.price))
