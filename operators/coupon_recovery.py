"""How well abandoned-cart coupons recover carts, per event-time window.

Pure logic. The coupons flow sends every decision's outcome (issued, capped,
flagged, a back-in-stock note, no offer) and every redemption of one of our
coupons (a paid order whose `coupon_code` is an abandoned-cart `coupon_id`) here,
and each cart bucket reports its watermark. A window is reported once every
bucket's watermark has passed its end, so its counts are final and the same in a
replay; a fact that arrives for a window already reported counts in the oldest
open window (and in its `late`). Each window goes to `metrics` as

    {metric: "coupon_recovery", metric_id, window_start, window_end, abandoned, issued,
     capped, flagged, notes, no_offer, redeemed, recovered_gmv, recovery_rate, late}

`recovery_rate` is redeemed / issued within the window (None when none issued):
coupons are redeemed hours after they are issued, so the rate over several
windows is the sum of redeemed over the sum of issued.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

OUTCOMES = ("issued", "capped", "flagged", "note", "no_offer")


class DecisionFact(NamedTuple):
    ts: int
    outcome: str  # one of OUTCOMES (an issuer `duplicate` is a coupon issued before: `issued`)


class RedemptionFact(NamedTuple):
    ts: int
    coupon_id: str
    amount: float


class BucketClock(NamedTuple):
    bucket: str
    watermark: int


RecoveryFact = DecisionFact | RedemptionFact | BucketClock


@dataclass
class _Window:
    counts: dict[str, int] = field(default_factory=dict)
    redeemed: set[str] = field(default_factory=set)  # coupon ids: a redelivered order counts once
    recovered_gmv: float = 0.0
    late: int = 0


@dataclass
class RecoveryWindows:
    window_ms: int
    buckets: int  # how many buckets report: a window closes when all of them have passed it
    windows: dict[int, _Window] = field(default_factory=dict)
    marks: dict[str, int] = field(default_factory=dict)  # bucket -> watermark
    next_start: int | None = None  # the oldest window not yet reported

    def add(self, facts: list[RecoveryFact]) -> list[dict[str, Any]]:
        for fact in facts:
            if type(fact) is BucketClock:
                if fact.watermark > self.marks.get(fact.bucket, -1):
                    self.marks[fact.bucket] = fact.watermark
                continue
            window, late = self._window_for(fact.ts)
            window.late += late
            if type(fact) is DecisionFact:
                window.counts[fact.outcome] = window.counts.get(fact.outcome, 0) + 1
            elif fact.coupon_id not in window.redeemed:
                window.redeemed.add(fact.coupon_id)
                window.recovered_gmv += fact.amount
        return self._close()

    def _window_for(self, ts: int) -> tuple[_Window, int]:
        start = ts - ts % self.window_ms
        late = 0
        if self.next_start is None:
            self.next_start = start
        elif start < self.next_start:
            start, late = self.next_start, 1
        window = self.windows.get(start)
        if window is None:
            window = self.windows[start] = _Window()
        return window, late

    def _close(self) -> list[dict[str, Any]]:
        if self.next_start is None or len(self.marks) < self.buckets:
            return []
        closable = min(self.marks.values())
        out = []
        while self.next_start + self.window_ms <= closable:
            start = self.next_start
            out.append(self._record(start, self.windows.pop(start, None) or _Window()))
            self.next_start = start + self.window_ms
        return out

    def _record(self, start: int, window: _Window) -> dict[str, Any]:
        counts = window.counts
        issued = counts.get("issued", 0)
        redeemed = len(window.redeemed)
        return {
            "metric": "coupon_recovery",
            "metric_id": f"coupon_recovery:{start}",
            "window_start": start,
            "window_end": start + self.window_ms,
            "abandoned": sum(counts.values()),
            **{outcome: counts.get(outcome, 0) for outcome in ("issued", "capped", "flagged")},
            "notes": counts.get("note", 0),
            "no_offer": counts.get("no_offer", 0),
            "redeemed": redeemed,
            "recovered_gmv": round(window.recovered_gmv, 2),
            "recovery_rate": round(redeemed / issued, 4) if issued else None,
            "late": window.late,
        }
