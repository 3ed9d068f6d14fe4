"""Order success and refund response, the Double 11 plan's system indicators. Pure logic.

Order success, per event-time window of order creation, overall and per channel: a
created order is *processed* when it is `paid` or `cancelled`, its payment `succeeded`,
or a payment was declined for the shopper's own reason (`decline_reasons`: the shop
answered, the card said no). It has *failed* when a payment failed for any other reason
(a gateway timeout, an issuer outage) and no success followed within `retry_grace_ms`
(`payment_failed`), or nothing at all happened within `outcome_timeout_ms` (`no_outcome`).
A window's figures are final once every order in it is decided (at most the outcome
timeout after the window ends). `orders.success_rate` fires as soon as a complete
window (its end passed) with at least `min_orders` orders has more failures than the
minimum rate allows, without waiting for the rest; it clears on the next final window
with enough orders at or above the minimum.

Refund response, per window of `refund_requested`: the time to `refunded`, as
percentiles (nearest rank), reported `refund_wait_ms` after the window ends; a request
still unanswered then counts as slower than any answer. `orders.refund_response` fires
when p95 exceeds `refund_p95_ms` over at least `refund_min_requests` requests.

Everything runs on the stream clock in event-time order, timers included, so the
results depend only on the input.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from dataclasses import dataclass, field

from operators.alerts import AlertCandidate
from operators.clock import Progress, StreamClock
from operators.events import OrderEvent, PaymentEvent

DEFAULT_DECLINES = frozenset({"card_declined", "insufficient_funds", "expired_card", "risk_declined",
                              "insufficient_balance", "payment_password_error"})
SUCCESS_RUNBOOK = "Check the payment gateway and order service health; see detail.failed_by for the cause."
REFUND_RUNBOOK = "Refund responses are slow: check the refund service and its queue."
_PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class OrderRules:
    lateness_ms: int = 10_000
    window_ms: int = 300_000
    outcome_timeout_ms: int = 2_400_000
    retry_grace_ms: int = 120_000
    success_min: float = 0.999
    min_orders: int = 1000
    decline_reasons: frozenset = DEFAULT_DECLINES
    refund_p95_ms: int = 60_000
    refund_wait_ms: int = 600_000
    refund_min_requests: int = 20


@dataclass(slots=True)
class _Order:
    created_ts: int
    channel: str
    window: int
    decided: bool = False
    failed_since: int | None = None


@dataclass(slots=True)
class _Window:
    start: int
    orders: dict = field(default_factory=dict)  # channel -> created orders
    failed: dict = field(default_factory=dict)  # channel -> failed orders
    failed_by: dict = field(default_factory=dict)  # reason -> failed orders
    undecided: int = 0
    last_decision: int = 0
    complete: bool = False  # its end has passed: no more orders can join


@dataclass(slots=True)
class _RefundWindow:
    start: int
    requests: dict = field(default_factory=dict)  # order_id -> response ms (None: unanswered)


@dataclass
class OrderChanges:
    metrics: list[dict] = field(default_factory=list)
    candidates: list[AlertCandidate] = field(default_factory=list)


def nearest_rank(values: list[float], pct: int) -> float:
    """The nearest-rank percentile of sorted values (`inf` stands for unanswered)."""
    return values[max(0, math.ceil(pct / 100 * len(values)) - 1)]


@dataclass
class OrderSuccess:
    rules: OrderRules
    clock: StreamClock = field(init=False)
    pending: list = field(default_factory=list)
    applied_until: int | None = None
    orders: dict[str, _Order] = field(default_factory=dict)
    windows: dict[int, _Window] = field(default_factory=dict)
    refund_requested: dict[str, tuple[int, int]] = field(default_factory=dict)  # order_id -> (ts, window)
    refund_windows: dict[int, _RefundWindow] = field(default_factory=dict)
    timers: list[tuple[int, int, str]] = field(default_factory=list)  # (due, kind rank, order id or window) heap
    alerting: set = field(default_factory=set)  # dimension keys with orders.success_rate firing
    refund_alerting: bool = False
    late_events: int = 0

    def __post_init__(self) -> None:
        self.clock = StreamClock(lateness_ms=self.rules.lateness_ms)

    def resume(self, now_ms: int) -> None:
        self.clock.resume(now_ms)

    def add(self, events: list, progress: Progress, now_ms: int) -> OrderChanges:
        self.clock.advance(progress, now_ms)
        self.pending.extend(events)
        return self._run(self.clock.watermark(now_ms))

    def advance(self, now_ms: int) -> OrderChanges:
        return self._run(self.clock.watermark(now_ms))

    def flush(self) -> OrderChanges:
        """The input has ended: let event time run until every open window is final."""
        ends = [self.clock.max_event_ms] if self.clock.max_event_ms is not None else []
        ends.extend(due for due, _, _ in self.timers)
        return self._run(max(ends) if ends else None, inclusive=True)

    def next_wake_ms(self, now_ms: int) -> int | None:
        due = [min(event.ts for event in self.pending)] if self.pending else []
        if self.timers:
            due.append(self.timers[0][0])
        # Applied, or fired, once the watermark is past them.
        return self.clock.wall_time_when(min(due) + 1, now_ms) if due else None

    # -- the event-time loop -------------------------------------------------------------------
    def _run(self, watermark: int | None, inclusive: bool = False) -> OrderChanges:
        """Events and timers strictly older than `watermark` (a partition at the watermark may
        still deliver an event stamped with it, which comes before timers due at its instant);
        through it, inclusive, at the end of the input."""
        changes = OrderChanges()
        if watermark is None:
            return changes
        if not inclusive:
            watermark -= 1  # applied through the last millisecond before the watermark
        if self.applied_until is not None and watermark < self.applied_until:
            watermark = self.applied_until
        ready: list = []
        if self.pending:
            pending = sorted(self.pending, key=_event_order)
            cut = bisect_right(pending, watermark, key=lambda event: event.ts)
            ready, self.pending = pending[:cut], pending[cut:]
        for event in ready:
            if self.applied_until is not None and event.ts <= self.applied_until:
                self.late_events += 1
                continue
            self._fire(event.ts - 1, changes)  # timers due before the event; at its instant, the event first
            if type(event) is OrderEvent:
                self._order(event, changes)
            else:
                self._payment(event, changes)
        self._fire(watermark, changes)
        self.applied_until = watermark
        return changes

    def _push(self, due: int, rank: int, ref) -> None:
        heapq.heappush(self.timers, (due, rank, ref))

    def _fire(self, until: int, changes: OrderChanges) -> None:
        timers = self.timers
        while timers and timers[0][0] <= until:
            due, rank, ref = heapq.heappop(timers)
            if rank == 0:  # an order's outcome timeout or retry grace
                order = self.orders.get(ref)
                if order is not None and not order.decided:
                    if order.failed_since is not None and order.failed_since + self.rules.retry_grace_ms <= due:
                        self._decide(ref, order, due, "payment_failed", changes)
                    elif order.created_ts + self.rules.outcome_timeout_ms <= due:
                        reason = "no_outcome" if order.failed_since is None else "payment_failed"
                        self._decide(ref, order, due, reason, changes)
            elif rank == 1:  # a window's end: no order can join it any more
                window = self.windows.get(ref)
                if window is not None:
                    window.complete = True
                    window.last_decision = max(window.last_decision, due)
                    self._check(window, due, changes)
            elif rank == 2:  # forget a decided order (late duplicates of it are ignored until then)
                self.orders.pop(ref, None)
            else:  # rank 3: a refund window is reported
                self._report_refunds(ref, due, changes)

    # -- orders ----------------------------------------------------------------------------------
    def _order(self, event: OrderEvent, changes: OrderChanges) -> None:
        status, order_id = event.status, event.order_id
        if status == "created":
            if order_id in self.orders:
                return  # a duplicate
            rules = self.rules
            start = event.ts - event.ts % rules.window_ms
            window = self.windows.get(start)
            if window is None:
                window = self.windows[start] = _Window(start)
                self._push(start + rules.window_ms, 1, start)
            channel = event.channel or "unknown"
            window.orders[channel] = window.orders.get(channel, 0) + 1
            window.undecided += 1
            self.orders[order_id] = _Order(event.ts, channel, start)
            self._push(event.ts + rules.outcome_timeout_ms, 0, order_id)
            self._push(event.ts + 2 * rules.outcome_timeout_ms, 2, order_id)
        elif status in ("paid", "cancelled"):
            self._succeeded(order_id, event.ts, changes)
        elif status == "refund_requested":
            if order_id not in self.refund_requested:
                start = event.ts - event.ts % self.rules.window_ms
                refunds = self.refund_windows.get(start)
                if refunds is None:
                    refunds = self.refund_windows[start] = _RefundWindow(start)
                    self._push(start + self.rules.window_ms + self.rules.refund_wait_ms, 3, start)
                refunds.requests[order_id] = None
                self.refund_requested[order_id] = (event.ts, start)
        elif status == "refunded":
            requested = self.refund_requested.pop(order_id, None)
            if requested is not None:
                refunds = self.refund_windows.get(requested[1])
                if refunds is not None:
                    refunds.requests[order_id] = event.ts - requested[0]

    def _payment(self, event: PaymentEvent, changes: OrderChanges) -> None:
        if event.status == "succeeded":
            self._succeeded(event.order_id, event.ts, changes)
        elif event.status == "failed":
            order = self.orders.get(event.order_id)
            if order is None or order.decided:
                return
            if event.failure_reason in self.rules.decline_reasons:
                self._decide(event.order_id, order, event.ts, None, changes)  # processed: the shopper's card said no
            elif order.failed_since is None:
                order.failed_since = event.ts
                self._push(event.ts + self.rules.retry_grace_ms, 0, event.order_id)

    def _succeeded(self, order_id: str, ts: int, changes: OrderChanges) -> None:
        order = self.orders.get(order_id)
        if order is not None and not order.decided:
            self._decide(order_id, order, ts, None, changes)

    def _decide(self, order_id: str, order: _Order, ts: int, failure: str | None, changes: OrderChanges) -> None:
        order.decided = True
        window = self.windows[order.window]
        window.undecided -= 1
        window.last_decision = max(window.last_decision, ts)
        if failure is not None:
            window.failed[order.channel] = window.failed.get(order.channel, 0) + 1
            window.failed_by[failure] = window.failed_by.get(failure, 0) + 1
        if window.complete:
            self._check(window, ts, changes)

    def _check(self, window: _Window, ts: int, changes: OrderChanges) -> None:
        """A complete window: alert as soon as its failures alone break the minimum; report
        and clear once every order is decided."""
        rules = self.rules
        final = window.undecided == 0
        for key, orders, failed in self._dimensions(window):
            enough = orders >= rules.min_orders
            rate = 1 - failed / orders if orders else 1.0
            if enough and rate < rules.success_min and key not in self.alerting:
                self.alerting.add(key)
                changes.candidates.append(AlertCandidate(
                    ts=ts, rule="orders.success_rate", key=key, active=True, severity="critical",
                    summary=f"order processing success {rate:.3%} < {rules.success_min:.1%} ({key}, "
                            f"{failed} of {orders} orders failed in the window from {window.start})",
                    value=round(rate, 6), threshold=rules.success_min, runbook=SUCCESS_RUNBOOK,
                    detail={"window_start": window.start, "failed_by": dict(window.failed_by)}))
            elif final and enough and rate >= rules.success_min and key in self.alerting:
                self.alerting.discard(key)
                changes.candidates.append(AlertCandidate(
                    ts=ts, rule="orders.success_rate", key=key, active=False, severity="critical",
                    summary=f"order processing success back at {rate:.3%} ({key})",
                    value=round(rate, 6), threshold=rules.success_min))
        if final:
            self._report(window, changes)

    def _dimensions(self, window: _Window):
        yield "all", sum(window.orders.values()), sum(window.failed.values())
        for channel in sorted(window.orders):
            yield f"channel:{channel}", window.orders[channel], window.failed.get(channel, 0)

    def _report(self, window: _Window, changes: OrderChanges) -> None:
        end = window.start + self.rules.window_ms
        for key, orders, failed in self._dimensions(window):
            dimension, _, value = key.partition(":")
            changes.metrics.append({
                "metric": "order_success", "metric_id": f"order_success:{key}:{window.start}",
                "window_start": window.start, "window_end": end, "final_ts": window.last_decision,
                "dimension": dimension, "value": value or "all", "orders": orders,
                "processed": orders - failed, "failed": failed,
                "success_rate": round(1 - failed / orders, 6) if orders else None,
                **({"failed_by": dict(window.failed_by)} if dimension == "all" else {}),
            })
        del self.windows[window.start]

    # -- refunds ---------------------------------------------------------------------------------
    def _report_refunds(self, start: int, ts: int, changes: OrderChanges) -> None:
        refunds = self.refund_windows.pop(start)
        rules = self.rules
        times = sorted(math.inf if ms is None else ms for ms in refunds.requests.values())
        for order_id, ms in refunds.requests.items():
            if ms is None:
                self.refund_requested.pop(order_id, None)  # too late to count now
        record = {"metric": "refund_response", "metric_id": f"refund_response:{start}", "window_start": start,
                  "window_end": start + rules.window_ms, "requests": len(times),
                  "answered": sum(1 for t in times if t != math.inf)}
        record["unanswered"] = record["requests"] - record["answered"]
        p95 = None
        for pct in _PERCENTILES:
            value = nearest_rank(times, pct) if times else None
            record[f"p{pct}_ms"] = None if value in (None, math.inf) else int(value)
            if pct == 95:
                p95 = value
        changes.metrics.append(record)
        if len(times) < rules.refund_min_requests:
            return
        slow = p95 is not None and p95 > rules.refund_p95_ms
        if slow and not self.refund_alerting:
            self.refund_alerting = True
            shown = "unanswered" if p95 == math.inf else f"{p95 / 1000:.0f} s"
            changes.candidates.append(AlertCandidate(
                ts=ts, rule="orders.refund_response", key="all", active=True, severity="warning",
                summary=f"refund response p95 {shown} > {rules.refund_p95_ms // 1000} s "
                        f"({len(times)} requests from {start})",
                value=None if p95 == math.inf else p95 / 1000, threshold=rules.refund_p95_ms / 1000,
                runbook=REFUND_RUNBOOK, detail={"window_start": start, "unanswered": record["unanswered"]}))
        elif not slow and self.refund_alerting:
            self.refund_alerting = False
            changes.candidates.append(AlertCandidate(
                ts=ts, rule="orders.refund_response", key="all", active=False, severity="warning",
                summary=f"refund response p95 back to {p95 / 1000:.0f} s", value=p95 / 1000,
                threshold=rules.refund_p95_ms / 1000))


def _event_order(event) -> tuple:
    return event.ts, event.event_id
