"""Long order histories with known churners, for the churn flow's tests and benchmarks.

The day-scale simulator (`simulators.engine`) covers hours to days of traffic; churn
needs months to years per customer. This module generates them directly, seeded and
reproducible, in the contract's JSON for `orders` and `clickstream`:

- customers sign up uniformly over the first 80% of the run;
- each buys at its own pace: the mean gap between orders is lognormal around 30
  days (ASSUMED; from a few days to a year), gaps exponential around it;
- after every paid order a customer drops out for good with its own probability
  (Beta(1.5, 8), mean ~16%: the BG/NBD "buy till you die" story, ASSUMED), so
  heterogeneous paces make recency alone an imperfect churn signal;
- segments price-sensitive 45% / quality 30% / impulse 25% (PLAYBOOK), order
  values lognormal around 250 / 500 (PLAYBOOK) / 350 CNY;
- each order comes from a session (page view, product view, add to cart, checkout
  start) and is `created`, then `paid` minutes later (95%) or `cancelled` after 30
  minutes; 5% of paid orders are `refunded` days later; customers also browse
  without buying, and keep browsing for a few weeks after dropping out, less and less.

`history.truth[user_id]` holds each customer's sign-up, paid order times and the
time it dropped out (None if still buying at the end of the run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from random import Random
from typing import Iterator

from simulators.engine import SimEvent
from simulators.timeline import DAY, MINUTE
from state.serde import dumps

DEFAULT_HISTORY_START_MS = 1_672_531_200_000  # 2023-01-01 00:00 UTC
SEGMENTS = (("price", 0.45, 250.0), ("quality", 0.30, 500.0), ("impulse", 0.25, 350.0))
CHANNELS = ("app", "mini_program", "web", "live_stream")


@dataclass(frozen=True)
class CustomerTruth:
    user_id: str
    signup_ts: int
    paid_ts: tuple[int, ...]
    dropout_ts: int | None  # the last paid order before it stopped buying; None if still active at the end

    def ordered_within(self, start_ms: int, end_ms: int) -> bool:
        return any(start_ms < ts <= end_ms for ts in self.paid_ts)


@dataclass
class History:
    events: list[SimEvent]  # in event-time order
    truth: dict[str, CustomerTruth]
    start_ms: int
    end_ms: int

    def __iter__(self) -> Iterator[SimEvent]:
        return iter(self.events)

    @property
    def order_events(self) -> int:
        return sum(1 for event in self.events if event.topic == "orders")


def generate_history(customers: int = 2_000, seed: int = 1, start_ms: int = DEFAULT_HISTORY_START_MS,
                     duration_ms: int = 730 * DAY, clicks: bool = True, prefix: str = "h") -> History:
    """A seeded history of `customers` over `duration_ms`; same arguments, same bytes."""
    if customers < 1 or duration_ms <= 0:
        raise ValueError("need at least one customer and a positive duration")
    end_ms = start_ms + duration_ms
    rows: list[tuple[int, int, str, bytes, bytes]] = []  # (ts, seq, topic, key, value)
    truth: dict[str, CustomerTruth] = {}
    seq = 0

    def emit(ts: int, topic: str, user_id: str, obj: dict) -> None:
        nonlocal seq
        if ts < end_ms:
            rows.append((ts, seq, topic, user_id.encode(), dumps(obj)))
            seq += 1

    for number in range(customers):
        rng = Random(f"{seed}:{number}")
        user_id = f"{prefix}{seed}-u{number:07d}"
        region = f"province-{rng.randrange(20):02d}"
        channel = rng.choice(CHANNELS)
        device = f"dev-{rng.getrandbits(40):010x}"
        roll, segment_aov = rng.random(), SEGMENTS[-1][2]
        for _, share, aov in SEGMENTS:
            if roll < share:
                segment_aov = aov
                break
            roll -= share
        signup = start_ms + int(rng.random() * 0.8 * duration_ms)
        mean_gap_ms = min(365 * DAY, max(3 * DAY, math.exp(rng.gauss(math.log(30), 0.8)) * DAY))
        drop_p = rng.betavariate(1.5, 8)
        events = 0

        def session(ts: int, buy_sku: str | None) -> None:
            nonlocal events
            sid = f"{user_id}-s{events}"
            events += 1
            base = {"user_id": user_id, "session_id": sid, "channel": channel, "region": region, "device": device}
            sku = buy_sku or f"sku-{rng.randrange(5000):05d}"
            kinds = ["page_view", "product_view"] + (["add_to_cart", "checkout_start"] if buy_sku else [])
            for step, kind in enumerate(kinds):
                emit(ts + step * MINUTE, "clickstream", user_id,
                     {"event_id": f"{sid}-c{step}", "ts": ts + step * MINUTE, "type": kind, "sku": sku, **base})

        paid: list[int] = []
        dropout = None
        ts = signup + int(rng.expovariate(1 / mean_gap_ms) * 0.5)
        while ts < end_ms:
            sku = f"sku-{rng.randrange(5000):05d}"
            if clicks:
                session(ts - 5 * MINUTE, sku)
            order_id = f"{user_id}-o{len(paid)}-{events}"
            amount = round(min(20_000.0, segment_aov * math.exp(rng.gauss(-0.18, 0.6))), 2)
            order = {"order_id": order_id, "user_id": user_id, "items": [
                {"sku": sku, "quantity": 1, "unit_price": amount}], "amount": amount, "currency": "CNY",
                "channel": channel, "region": region}
            emit(ts, "orders", user_id, {"event_id": f"{order_id}-created", "ts": ts, "status": "created", **order})
            events += 1
            if rng.random() < 0.95:
                paid_ts = ts + rng.randrange(1, 10) * MINUTE
                emit(paid_ts, "orders", user_id, {"event_id": f"{order_id}-paid", "ts": paid_ts, "status": "paid",
                                                 **order})
                if paid_ts < end_ms:
                    paid.append(paid_ts)
                if rng.random() < 0.05:
                    refund_ts = paid_ts + rng.randrange(3, 10) * DAY
                    emit(refund_ts, "orders", user_id, {"event_id": f"{order_id}-refunded", "ts": refund_ts,
                                                       "status": "refunded", **order})
                if rng.random() < drop_p:
                    dropout = paid_ts
                    break
            else:
                emit(ts + 30 * MINUTE, "orders", user_id, {"event_id": f"{order_id}-cancelled",
                                                           "ts": ts + 30 * MINUTE, "status": "cancelled", **order})
            gap = rng.expovariate(1 / mean_gap_ms)
            if clicks and rng.random() < 0.7:  # a browse-only visit between orders
                session(ts + int(gap * rng.random()), None)
            ts += max(int(gap), 10 * MINUTE)
        if dropout is not None and clicks:
            # Lapsing: a few more visits, ever rarer (about one in the first fortnight, then fewer).
            visit = dropout
            rate = 1 / (14 * DAY)
            while True:
                visit += int(rng.expovariate(rate))
                rate /= 2
                if visit >= end_ms or rate < 1 / (400 * DAY):
                    break
                session(visit, None)
        truth[user_id] = CustomerTruth(user_id, signup, tuple(paid), dropout)
    rows.sort(key=lambda row: (row[0], row[1]))
    return History([SimEvent(topic, key, value, ts) for ts, _, topic, key, value in rows], truth, start_ms, end_ms)
