"""A stream-wide event-time clock that keeps moving when input goes quiet.

Bytewax watermarks are per key, so a key that goes silent never sees time pass.
This clock follows the largest event time seen across the whole stream, and
while no input at all arrives it advances with the wall clock, so windows and
timers still close when all input stops. Replaying history at full speed takes little wall
time, so a replay closes windows on event time alone, like the live run did.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


@dataclass
class StreamClock:
    lateness_ms: int
    max_event_ms: int | None = None
    last_input_wall_ms: int = 0  # wall time the last input arrived (or the flow resumed)

    def observe(self, event_ms: int, now_ms: int) -> None:
        """An event arrived: its time may move the clock forward."""
        if self.max_event_ms is None or event_ms > self.max_event_ms:
            self.max_event_ms = event_ms
        self.touch(now_ms)

    def touch(self, now_ms: int) -> None:
        """Input arrived (or the flow resumed): wall time counts only from here.

        So a flow catching up on a backlog, or restarting after downtime, is not
        mistaken for a quiet stream.
        """
        self.last_input_wall_ms = now_ms

    def watermark(self, now_ms: int) -> int | None:
        """Event time up to which the stream is considered complete; None before any event."""
        if self.max_event_ms is None:
            return None
        quiet_for = max(0, now_ms - self.last_input_wall_ms)
        return self.max_event_ms + quiet_for - self.lateness_ms

    def wall_time_when(self, event_ms: int, now_ms: int) -> int | None:
        """Wall-clock ms at which the watermark reaches `event_ms` if nothing else arrives."""
        watermark = self.watermark(now_ms)
        if watermark is None:
            return None
        return now_ms + max(0, event_ms - watermark)
