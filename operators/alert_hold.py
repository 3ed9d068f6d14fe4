"""The alert router's hold: candidates from several producer flows in one event-time order.

Pure logic, no Bytewax, Kafka or Redis. Six flows (and the intake's input windows)
write to `alert-candidates`, each at its own pace. A router that applied them as they
arrive, with a clock following the largest event time seen, would let a fast flow
move escalations, group flushes and the per-rule budget past a slow flow's older
candidates: the state changes would depend on CPU load, not on the input.

So every producer keys its records by its name (one partition, its own order) and
each shard of its stateful step (a bucket with its own stream clock) sends a progress
marker after its candidates: "everything I will send stamped up to `ts` is sent".
`ReleaseGate` holds candidates and releases them in (ts, dedup key, producer, shard,
arrival) order up to the release point: the minimum, over the expected producers, of
the minimum over each producer's shards of their latest marker (a producer that has
not heard from all its shards holds everything). Timers run only up to that point.

Wall time enters in one place: an expected producer that sends no marker for
`timeout_ms` is left out of the minimum (it is down; it must not silence every
alert) until it reports again. Candidates of producers not expected, and records
without a producer (the runner's `engine.flow_down`, stamped with wall time), are
applied at once. A producer's record stamped at or before that shard's latest marker
is a replay after the producer restarted (or broke its promise): it was applied
already, or it is too late to order, so it is dropped and counted.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from typing import Union

from operators.alert_detectors import InputWindow
from operators.alerts import AlertCandidate

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProgressMarker:
    """A producer shard's promise: its records stamped up to `ts` have all been sent."""

    producer: str
    shard: str
    shards: int  # how many shards the producer has: it is complete when all have reported
    ts: int

    def to_dict(self) -> dict:
        return {"progress": self.producer, "shard": self.shard, "shards": self.shards, "ts": self.ts}


@dataclass(frozen=True, slots=True)
class Sourced:
    """A candidate or an input window, with the producer shard that sent it."""

    producer: str
    shard: str
    item: Union[AlertCandidate, InputWindow]
    body: bytes = b""  # the record as sent: two identical records of one shard are one

    @property
    def ts(self) -> int:
        item = self.item
        return item.ts if isinstance(item, AlertCandidate) else item.window_end

    @property
    def order_key(self) -> str:
        item = self.item
        return item.dedup_key if isinstance(item, AlertCandidate) else f"input:{item.series}"


@dataclass
class ReleaseGate:
    expected: frozenset[str]
    timeout_ms: int
    shards: dict[str, int] = field(default_factory=dict)  # producer -> its shard count (latest marker)
    marks: dict[str, dict[str, int]] = field(default_factory=dict)  # producer -> shard -> latest marker ts
    heard_wall_ms: dict[str, int] = field(default_factory=dict)  # producer -> wall ms of its last marker
    absent: set[str] = field(default_factory=set)  # producers timed out (logged once)
    held: list[tuple[int, str, str, str, int, Sourced]] = field(default_factory=list)  # a heap
    held_bodies: set[tuple[str, str, bytes]] = field(default_factory=set)
    arrivals: int = 0  # tie-breaker: one shard's records keep their order
    released: int | None = None  # the release point given so far; never goes back
    dropped: int = 0  # replays and records later than their shard's marker
    late: int = 0  # records of a producer that was absent, older than the release point

    @classmethod
    def start(cls, expected, timeout_ms: int, now_ms: int) -> "ReleaseGate":
        gate = cls(frozenset(expected), timeout_ms)
        gate.resume(now_ms)
        return gate

    @property
    def enabled(self) -> bool:
        return bool(self.expected)

    def configure(self, expected, timeout_ms: int) -> None:
        self.expected = frozenset(expected)
        self.timeout_ms = timeout_ms

    def resume(self, now_ms: int) -> None:
        """Started or restored: every producer has `timeout_ms` from now to report."""
        for producer in self.expected:
            self.heard_wall_ms[producer] = now_ms
        self.absent.clear()

    # -- input ---------------------------------------------------------------------------
    def offer(self, item: ProgressMarker | Sourced, now_ms: int) -> Sourced | None:
        """Take one record in arrival order; returns it when it must be applied at once."""
        if isinstance(item, ProgressMarker):
            self._mark(item, now_ms)
            return None
        if item.producer not in self.expected:
            return item
        ts = item.ts
        if ts <= self.marks.get(item.producer, {}).get(item.shard, ts - 1):
            self.dropped += 1
            log.debug("dropping %s from %s/%s at %d: its shard already passed it", item.order_key,
                      item.producer, item.shard, ts)
            return None
        if self.released is not None and ts <= self.released:
            self.late += 1  # its producer was absent while the others moved on
            return item
        identity = (item.producer, item.shard, item.body)
        if item.body and identity in self.held_bodies:
            self.dropped += 1  # a producer restarted before its marker: the same record again
            return None
        self.held_bodies.add(identity)
        self.arrivals += 1
        heapq.heappush(self.held, (ts, item.order_key, item.producer, item.shard, self.arrivals, item))
        return None

    def _mark(self, marker: ProgressMarker, now_ms: int) -> None:
        shards = self.marks.setdefault(marker.producer, {})
        if marker.ts > shards.get(marker.shard, marker.ts - 1):
            shards[marker.shard] = marker.ts
        self.shards[marker.producer] = marker.shards
        self.heard_wall_ms[marker.producer] = now_ms
        if marker.producer in self.absent:
            self.absent.discard(marker.producer)
            log.warning("alert producer %s reports again; the router waits for it", marker.producer)

    # -- release -------------------------------------------------------------------------
    def present(self, now_ms: int) -> list[str]:
        """Expected producers heard from within the timeout (the others are down)."""
        out = []
        for producer in sorted(self.expected):
            heard = self.heard_wall_ms.setdefault(producer, now_ms)
            if now_ms - heard < self.timeout_ms:
                out.append(producer)
            elif producer not in self.absent:
                self.absent.add(producer)
                log.warning("alert producer %s sent no progress for %d s: alerts no longer wait for it",
                            producer, self.timeout_ms // 1000)
        return out

    def point(self, now_ms: int) -> tuple[bool, int | None]:
        """(held, release point). held False: no expected producer is present, the router
        runs on its own clock; otherwise candidates and timers run up to the point."""
        present = self.present(now_ms)
        if not present:
            return False, self.released
        lows = []
        for producer in present:
            shards = self.marks.get(producer, {})
            if not shards or len(shards) < self.shards.get(producer, 1):
                return True, self.released  # a shard has not said where it stands
            lows.append(min(shards.values()))
        low = min(lows)
        if self.released is None or low > self.released:
            self.released = low
        return True, self.released

    def release(self, upto: int | None) -> list[Sourced]:
        """Held records stamped up to `upto`, in release order."""
        out = []
        held = self.held
        while held and upto is not None and held[0][0] <= upto:
            item = heapq.heappop(held)[-1]
            self.held_bodies.discard((item.producer, item.shard, item.body))
            out.append(item)
        return out

    def release_all(self) -> list[Sourced]:
        """Everything held, in release order (the router runs without the hold)."""
        out = [heapq.heappop(self.held)[-1] for _ in range(len(self.held))]
        self.held_bodies.clear()
        return out

    def pass_to(self, horizon: int) -> None:
        """The router moved on without the gate (every producer absent): what is held up
        to there is released and later records of those times are late."""
        if self.released is None or horizon > self.released:
            self.released = horizon

    def next_timeout_ms(self) -> int | None:
        """Wall ms at which a present producer would time out, releasing the others."""
        times = [heard + self.timeout_ms for producer, heard in self.heard_wall_ms.items()
                 if producer in self.expected and producer not in self.absent]
        return min(times, default=None)
