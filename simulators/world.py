"""The shared state of one simulation run: time span, randomness, ids, and outputs.

Generator steps (visits, payments, fraud, stock) receive the `World` and write
through it: `emit` queues an event, `schedule` queues future work, `record` queues
ground truth. Anything at or after the end of the run is dropped here, so steps
need not check. Each concern has its own `random.Random`, seeded from the run's
seed, so adding a scenario does not reshuffle the shoppers of the base traffic.
"""

from __future__ import annotations

import hashlib
from itertools import count
from random import Random
from typing import TYPE_CHECKING, Any, Callable

from simulators.catalog import Catalog
from simulators.ordering import BUCKET_MS, EventCalendar, TaskQueue
from simulators.population import Population
from simulators.profile import ShopProfile
from simulators.timeline import DailyCurve
from simulators.truth import TruthRecord

if TYPE_CHECKING:
    from simulators.inventory import StockLedger
    from simulators.scenarios import ScenarioPlan


def run_tag(seed: int | str, scenarios: tuple[str, ...], start_ms: int, duration_ms: int, shoppers: int,
            profile: ShopProfile) -> str:
    """A short id prefix unique to these parameters: two different runs never share
    an event, session, order or payment id; the same run always gives the same ids."""
    text = f"{seed}|{','.join(scenarios)}|{start_ms}|{duration_ms}|{shoppers}|{profile!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _ids(prefix: str) -> Callable[[], str]:
    return map(prefix.__add__, map(str, count())).__next__


class World:
    def __init__(self, *, profile: ShopProfile, seed: int | str, scenarios: tuple[str, ...],
                 start_ms: int, duration_ms: int, shoppers: int):
        self.profile = profile
        self.seed = seed
        self.start_ms = start_ms
        self.end_ms = start_ms + duration_ms
        self.tag = run_tag(seed, scenarios, start_ms, duration_ms, shoppers, profile)
        self.rng = Random(f"{seed}:traffic")  # arrivals and what shoppers do
        self.fraud_rng = Random(f"{seed}:fraud")
        self.ops_rng = Random(f"{seed}:ops")  # warehouse work: restocks, adjustments

        self.calendar = EventCalendar()
        self.buckets = self.calendar.buckets
        self.truth_buckets = self.calendar.truth
        self.tasks = TaskQueue(self)

        self.event_id = _ids(f"{self.tag}-e")
        self.session_id = _ids(f"{self.tag}-s")
        self.order_id = _ids(f"{self.tag}-o")
        self.payment_id = _ids(f"{self.tag}-p")
        # Malformed copies get ids of their own, so the valid stream is the same at any bad rate.
        self.bad_event_id = _ids(f"{self.tag}-b")

        self.curve = DailyCurve(profile.evening_share, profile.local_utc_offset_h)
        shares = dict(profile.lifecycle_mix)
        total_share = sum(shares.values())
        daily_rates = {"new": profile.visits_per_day_new, "growing": profile.visits_per_day_growing,
                       "mature": profile.visits_per_day_mature, "lapsing": profile.visits_per_day_lapsing}
        sessions_per_day = shoppers * sum(daily_rates[g] * s for g, s in shares.items()) / total_share
        self.catalog = Catalog(profile, Random(f"{seed}:catalog"), sessions_per_day)
        self.population = Population(shoppers, profile, Random(f"{seed}:population"), self.catalog,
                                     start_ms, self.tag)
        # Set by the engine once the world exists (they write through it).
        self.stock: StockLedger
        self.plan: ScenarioPlan

    # -- output ---------------------------------------------------------------------
    def emit(self, ts: int, topic: str, key: bytes, obj: dict) -> None:
        if ts < self.end_ms:
            self.buckets[ts // BUCKET_MS].append((ts, topic, key, obj))

    def schedule(self, ts: int, fn: Callable[..., Any], *args: Any) -> None:
        if ts < self.end_ms:
            self.tasks.schedule(ts, fn, *args)

    def record(self, truth: TruthRecord) -> None:
        if truth.ts < self.end_ms:
            self.truth_buckets[truth.ts // BUCKET_MS].append(truth)
