"""Sending a simulation to Kafka: pacing, progress, and a checked flush at the end.

Pacing has two independent limits, both optional: `rate` (events per wall second)
and `speed` (event-time seconds per wall second: 1 is live, 1440 plays a day in a
minute). With both, an event waits until both allow it. With neither, flat out.
Events before `live_from_ms` (a pre-roll) go out flat out and count towards neither
limit: a live run then starts with shoppers already mid-session, as a real shop does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

from simulators.engine import SimEvent
from simulators.timeline import iso


class Producer(Protocol):
    def produce(self, topic: str, key: bytes | None, value: bytes) -> None: ...

    def flush(self) -> None: ...


@dataclass
class Pacer:
    rate: float = 0.0
    speed: float = 0.0
    start_ms: int = 0  # the event time that maps to the first paced event's wall instant
    live_from_ms: int | None = None  # events before this are the pre-roll: not paced
    _wall_start: float | None = None
    _prerolled: int = 0  # pre-roll events seen: the rate limit counts from the first paced event

    @property
    def paced(self) -> bool:
        return self.rate > 0 or self.speed > 0

    def wait(self, sent: int, ts: int) -> None:
        """Sleep until the `sent`-th event (0-based) at event time `ts` is due."""
        if self.live_from_ms is not None and ts < self.live_from_ms:
            self._prerolled += 1
            return
        if self._wall_start is None:
            self._wall_start = time.monotonic()
        due = 0.0
        if self.rate > 0:
            due = (sent - self._prerolled) / self.rate
        if self.speed > 0:
            due = max(due, (ts - self.start_ms) / 1000.0 / self.speed)
        delay = self._wall_start + due - time.monotonic()
        if delay > 0.001:
            time.sleep(delay)


@dataclass
class ProduceStats:
    per_topic: dict[str, int] = field(default_factory=dict)
    events: int = 0
    value_bytes: int = 0
    last_ts: int | None = None
    interrupted: bool = False  # stopped by Ctrl-C; what was sent is still flushed
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed if self.elapsed > 0 else 0.0

    def line(self) -> str:
        topics = ", ".join(f"{t} {n:,}" for t, n in sorted(self.per_topic.items()))
        at = f" | event time {iso(self.last_ts)}" if self.last_ts is not None else ""
        return (f"{self.events:,} events ({topics}) in {self.elapsed:.1f}s = "
                f"{self.events_per_s:,.0f} events/s{at}")


def send(events: Iterable[SimEvent], producer: Producer, pacer: Pacer | None = None,
         max_events: int | None = None, progress: Callable[[ProduceStats], None] | None = None,
         progress_every_s: float = 5.0) -> ProduceStats:
    """Produce every event (up to `max_events`), then flush; a failed delivery raises.
    Ctrl-C stops the stream, not the flush: what was produced is delivered or reported."""
    stats = ProduceStats()
    per_topic = stats.per_topic
    produce = producer.produce
    paced = pacer is not None and pacer.paced
    next_report = time.monotonic() + progress_every_s
    sent = size = 0
    last_ts = None
    try:
        for event in events:
            if sent == max_events:
                break
            if paced:
                pacer.wait(sent, event.ts)
            produce(event.topic, event.key, event.value)
            per_topic[event.topic] = per_topic.get(event.topic, 0) + 1
            size += len(event.value)
            last_ts = event.ts
            sent += 1
            if not sent & 1023 or paced:
                now = time.monotonic()
                if now >= next_report:
                    stats.events, stats.value_bytes, stats.last_ts = sent, size, last_ts
                    if paced:
                        producer.flush()  # time to spare: surface delivery failures early
                    if progress is not None:
                        progress(stats)
                    next_report = now + progress_every_s
    except KeyboardInterrupt:
        stats.interrupted = True
    stats.events, stats.value_bytes, stats.last_ts = sent, size, last_ts
    producer.flush()
    stats.finished = time.monotonic()
    return stats
