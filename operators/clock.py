"""A stream-wide event-time clock that keeps moving when input goes quiet.

Bytewax watermarks are per key, so a key that goes silent never sees time pass.
This clock follows the largest event time seen across the whole stream, and
while no input at all arrives it advances with the wall clock, so windows and
timers still close when all input stops. Replaying history at full speed takes little wall
time, so a replay closes windows on event time alone, like the live run did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Hashable

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

Clock = Callable[[], int]  # wall-clock milliseconds since the epoch; tests pass a fixed one


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


@dataclass
class StreamClock:
    """Event time across the whole stream.

    With sources (e.g. input partitions), the clock follows the slowest source that
    is still delivering: when a backlog is read, fast partitions must not close the
    windows that slow partitions are still filling. A partition with a backlog
    delivers on every poll; one that has delivered nothing for `idle_source_ms` of
    wall time is caught up (or sparse) and stops holding the clock back. Without
    sources, the clock follows the largest event time seen.
    """

    lateness_ms: int
    idle_source_ms: int = 0
    startup_grace_ms: int = 0  # with sources: nothing closes this long after a start or resume
    max_event_ms: int | None = None  # the largest event time seen from any source
    last_input_wall_ms: int = 0  # wall time the last input arrived (or the flow resumed)
    sources: dict[Hashable, tuple[int, int]] = field(default_factory=dict)  # -> (max event ms, wall ms)
    started_wall_ms: int | None = None  # first input, or the last resume

    def observe(self, event_ms: int, now_ms: int, source: Hashable = None) -> None:
        """An event arrived: its time may move the clock forward."""
        if self.max_event_ms is None or event_ms > self.max_event_ms:
            self.max_event_ms = event_ms
        if self.started_wall_ms is None:
            self.started_wall_ms = now_ms
        if source is not None:
            previous = self.sources.get(source)
            latest = event_ms if previous is None else max(previous[0], event_ms)
            self.sources[source] = (latest, now_ms)
        self.touch(now_ms)

    def touch(self, now_ms: int) -> None:
        """Input arrived (or the flow resumed): wall time counts only from here.

        So a flow catching up on a backlog, or restarting after downtime, is not
        mistaken for a quiet stream.
        """
        self.last_input_wall_ms = now_ms

    def resume(self, now_ms: int) -> None:
        """Restored from a snapshot: the downtime is not quiet input, and every source
        gets a fresh chance to report before it can hold the clock back or not."""
        self.touch(now_ms)
        self.started_wall_ms = now_ms

    def _warming_up(self, now_ms: int) -> bool:
        """Right after a start, not every partition has delivered its first batch yet;
        the first ones must not move the clock past the others."""
        return bool(self.sources) and now_ms - self.started_wall_ms < self.startup_grace_ms

    def _delivering(self, now_ms: int) -> list[int]:
        return [latest for latest, wall in self.sources.values() if now_ms - wall < self.idle_source_ms]

    def watermark(self, now_ms: int) -> int | None:
        """Event time up to which the stream is considered complete; None before any event."""
        if self.max_event_ms is None or self._warming_up(now_ms):
            return None
        delivering = self._delivering(now_ms)
        if delivering:
            return min(delivering) - self.lateness_ms
        quiet_for = max(0, now_ms - self.last_input_wall_ms)
        return self.max_event_ms + quiet_for - self.lateness_ms

    def wall_time_when(self, event_ms: int, now_ms: int) -> int | None:
        """Wall-clock ms at which the watermark reaches `event_ms` if nothing else arrives."""
        if self.max_event_ms is None:
            return None
        all_idle_at = max((wall + self.idle_source_ms for _, wall in self.sources.values()), default=now_ms)
        reached_at = self.last_input_wall_ms + event_ms + self.lateness_ms - self.max_event_ms
        warmed_up_at = (self.started_wall_ms or now_ms) + (self.startup_grace_ms if self.sources else 0)
        return max(now_ms, all_idle_at, reached_at, warmed_up_at)
