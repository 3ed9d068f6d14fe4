"""Per-window input counts per topic (and per clickstream channel), on event time.

The basis of traffic alerts: every key that was active recently gets a result for
every window, zero included, so a channel that goes dark shows up as zeros
instead of silence. Counting is pre-aggregated per batch (`tally_batch`) so the
single counting step sees a few tallies per batch, not every event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from operators.clock import Progress, StreamClock
from operators.dead_letters import DeadLetter
from operators.events import ClickEvent, InputEvent

# (topic, dimension, value): ("clickstream", "all", "all"), ("clickstream", "channel", "app")
CounterKey = tuple[str, str, str]

@dataclass(frozen=True, slots=True)
class Tally:
    key: CounterKey
    window_start: int | None  # None for dead letters: counted at the stream's current time
    events: int = 0
    dead_letters: int = 0
    max_ts: int | None = None


class InputTallies(NamedTuple):
    """One batch's tallies, and its progress (`operators.clock.Progress`)."""

    tallies: list[Tally]
    progress: Progress


@dataclass(frozen=True, slots=True)
class InputCount:
    topic: str
    dimension: str
    value: str
    window_start: int
    window_end: int
    events: int
    dead_letters: int
    late_events: int  # arrived after their window closed; reported with the next window

    @property
    def series(self) -> str:
        """Redis/metric series name: `input:orders`, `input:clickstream:channel:app`."""
        if self.dimension == "all":
            return f"input:{self.topic}"
        return f"input:{self.topic}:{self.dimension}:{self.value}"


def tally_batch(items: Iterable[InputEvent | DeadLetter], window_ms: int) -> list[Tally]:
    """Collapse one batch of decoded input into one tally per (key, window)."""
    events: dict[tuple[CounterKey, int], list[int]] = {}
    dead_letters: dict[CounterKey, int] = {}
    for item in items:
        if isinstance(item, DeadLetter):
            key = (item.source_topic, "all", "all")
            dead_letters[key] = dead_letters.get(key, 0) + 1
            continue
        topic = item.TOPIC
        window_start = item.ts - item.ts % window_ms
        keys = [(topic, "all", "all")]
        if isinstance(item, ClickEvent):
            keys.append((topic, "channel", item.channel))
        for key in keys:
            slot = events.setdefault((key, window_start), [0, item.ts])
            slot[0] += 1
            slot[1] = max(slot[1], item.ts)
    tallies = [
        Tally(key=key, window_start=start, events=count, max_ts=max_ts)
        for (key, start), (count, max_ts) in events.items()
    ]
    tallies.extend(Tally(key=key, window_start=None, dead_letters=n) for key, n in dead_letters.items())
    return tallies


@dataclass
class InputCounter:
    """Open windows of counts; closes them as the stream clock passes their end."""

    window_ms: int
    lateness_ms: int
    key_idle_windows: int
    clock: StreamClock = field(init=False)
    open_windows: dict[int, dict[CounterKey, list[int]]] = field(default_factory=dict)
    late_events: dict[CounterKey, int] = field(default_factory=dict)
    # Dead letters seen before the first usable event: no stream time to place them at yet.
    early_dead_letters: dict[CounterKey, int] = field(default_factory=dict)
    last_active: dict[CounterKey, int] = field(default_factory=dict)  # key -> last closed window with input
    next_window: int | None = None  # start of the oldest window not yet closed
    closed_any: bool = False

    def __post_init__(self) -> None:
        self.clock = StreamClock(self.lateness_ms)

    def resume(self, now_ms: int) -> None:
        """Restored from a snapshot: the downtime is not quiet input."""
        self.clock.resume(now_ms)

    def add(
        self, tallies: Iterable[Tally], now_ms: int, progress: Progress | None = None
    ) -> list[InputCount]:
        """Count one batch's tallies (events before dead letters), then close what is due.

        `progress`: the batch's per-partition progress; with it the clock holds while any
        partition has a backlog (`operators.clock`)."""
        tallies = sorted(tallies, key=lambda t: t.window_start is None)
        if progress is not None:
            self.clock.advance(progress, now_ms)
        for tally in tallies:
            if tally.window_start is not None:
                if progress is None:
                    self.clock.observe(tally.max_ts, now_ms)
                self._count(tally.key, tally.window_start, tally.events, 0)
            elif self.next_window is None:
                self.early_dead_letters[tally.key] = self.early_dead_letters.get(tally.key, 0) + tally.dead_letters
            else:
                self._count(tally.key, self._stream_window(now_ms), 0, tally.dead_letters)
        if self.early_dead_letters and self.next_window is not None:
            for key, count in self.early_dead_letters.items():
                self._count(key, self.next_window, 0, count)
            self.early_dead_letters.clear()
        return self.advance(now_ms)

    def _stream_window(self, now_ms: int) -> int:
        """The open window that holds the stream's current time."""
        watermark = self.clock.watermark(now_ms)
        if watermark is None:  # the clock is still warming up
            return self.next_window
        stream_now = watermark + self.lateness_ms
        return max(stream_now - stream_now % self.window_ms, self.next_window)

    def _count(self, key: CounterKey, window_start: int, events: int, dead_letters: int) -> None:
        if self.next_window is None or (not self.closed_any and window_start < self.next_window):
            self.next_window = window_start
        if window_start < self.next_window:  # its window has already been reported
            self.late_events[key] = self.late_events.get(key, 0) + events
            return
        counts = self.open_windows.setdefault(window_start, {}).setdefault(key, [0, 0])
        counts[0] += events
        counts[1] += dead_letters

    def advance(self, now_ms: int) -> list[InputCount]:
        """Close every window whose end the watermark has passed."""
        watermark = self.clock.watermark(now_ms)
        if watermark is None or self.next_window is None:
            return []
        results: list[InputCount] = []
        while self.next_window + self.window_ms <= watermark:
            results.extend(self._close_next())
            if not self.last_active and not self.late_events:
                # No key to report zeros for: skip the empty stretch to the next data.
                floor = watermark - watermark % self.window_ms
                self.next_window = max(self.next_window, min(self.open_windows, default=floor))
        return results

    def _close_next(self) -> list[InputCount]:
        start = self.next_window
        counts = self.open_windows.pop(start, {})
        for key in counts:
            self.last_active[key] = start
        idle_before = start - self.key_idle_windows * self.window_ms
        for key in [k for k, last in self.last_active.items() if last < idle_before]:
            del self.last_active[key]
        reported = sorted(set(self.last_active) | set(counts) | set(self.late_events))
        self.next_window += self.window_ms
        self.closed_any = True
        return [
            InputCount(
                topic=key[0],
                dimension=key[1],
                value=key[2],
                window_start=start,
                window_end=start + self.window_ms,
                events=counts.get(key, (0, 0))[0],
                dead_letters=counts.get(key, (0, 0))[1],
                late_events=self.late_events.pop(key, 0),
            )
            for key in reported
        ]

    def flush(self) -> list[InputCount]:
        """Close every open window and report pending late events: the input has ended."""
        if self.next_window is None:
            return []
        results: list[InputCount] = []
        while self.open_windows or self.late_events:
            if not self.last_active and not self.late_events:
                self.next_window = max(self.next_window, min(self.open_windows))  # skip the empty stretch
            results.extend(self._close_next())
        return results

    def next_wake_ms(self, now_ms: int) -> int | None:
        """Wall-clock ms at which the oldest open window closes if input stays quiet."""
        if self.next_window is None:
            return None
        return self.clock.wall_time_when(self.next_window + self.window_ms, now_ms)
