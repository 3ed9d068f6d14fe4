"""A stream-wide event-time clock that only data, or the wall time of true quiet, moves.

Bytewax watermarks are per key, so a key that goes silent never sees time pass.
This clock follows the whole stream instead. Its input tells it, per input
partition, the latest event time read and whether the partition is caught up
(its read position reached the partition's end offset; the Kafka source reports
that, see `PartitionStatus`). Then:

- no window or timer closes before every input partition has reported where it stands;
- while any partition still has unread messages, the clock follows the slowest such
  partition, whatever the wall clock says: a CPU-starved partition with a backlog holds
  the clock back, so late data within the allowed lateness is never late because of load;
- only when every partition is at its end does the clock advance with the wall clock
  (from the largest event time seen), so timers still fire when input goes quiet.

Wall time therefore never decides an event-time result of a replay: a replay at full
speed closes windows on event time alone, like the live run did.

Without partition reports (a test source, or a flow fed by another flow's output) the
clock follows the largest event time seen, and advances by wall clock while no input
arrives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Hashable, NamedTuple

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

Clock = Callable[[], int]  # wall-clock milliseconds since the epoch; tests pass a fixed one
Source = Hashable  # an input partition, e.g. (topic, partition)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


class PartitionStatus(NamedTuple):
    """Where one input partition stands, emitted by the source among its records.

    The source emits one when it starts (or resumes) and whenever `caught_up` changes,
    after the records read before the change.
    """

    topic: str  # the contract name
    partition: int
    caught_up: bool  # the read position reached the partition's end offset
    partitions: int  # how many partitions the source reads in all (every worker's)


@dataclass(slots=True)
class Progress:
    """What one input batch says about time: the latest event time per partition, and
    the partitions that reported where they stand. Every flow's triage builds one per
    batch and hands it to every shard, so each shard's clock follows the whole stream."""

    latest: dict[Source, int] = field(default_factory=dict)
    caught_up: dict[Source, bool] = field(default_factory=dict)
    partitions: int = 0  # from the reports; 0: the input does not report

    def saw(self, source: Source, event_ms: int) -> None:
        if event_ms > self.latest.get(source, event_ms - 1):
            self.latest[source] = event_ms

    def report(self, status: PartitionStatus) -> None:
        self.caught_up[(status.topic, status.partition)] = status.caught_up
        self.partitions = status.partitions

    def __bool__(self) -> bool:
        return bool(self.latest or self.caught_up)


@dataclass
class StreamClock:
    """Event time across the whole stream (see the module docstring for the rule)."""

    lateness_ms: int
    max_event_ms: int | None = None  # the largest event time seen from any source
    last_input_wall_ms: int = 0  # wall time the last input arrived (or the flow resumed)
    latest: dict[Source, int] = field(default_factory=dict)  # latest event time per partition
    caught_up: dict[Source, bool] = field(default_factory=dict)  # partitions reported since the last start
    partitions: int = 0  # how many partitions the input has; 0: it does not report
    high_water_ms: int | None = None  # the highest watermark given: the clock never goes back

    def observe(self, event_ms: int, now_ms: int) -> None:
        """An event arrived from input that does not report partitions."""
        if self.max_event_ms is None or event_ms > self.max_event_ms:
            self.max_event_ms = event_ms
        self.touch(now_ms)

    def advance(self, progress: Progress, now_ms: int) -> None:
        """One input batch's progress: its event times and partition reports."""
        latest = self.latest
        for source, event_ms in progress.latest.items():
            if event_ms > latest.get(source, event_ms - 1):
                latest[source] = event_ms
            if self.max_event_ms is None or event_ms > self.max_event_ms:
                self.max_event_ms = event_ms
        if progress.caught_up:
            self.caught_up.update(progress.caught_up)
            self.partitions = progress.partitions
        self.touch(now_ms)

    def touch(self, now_ms: int) -> None:
        """Input arrived (or the flow resumed): quiet time counts only from here."""
        self.last_input_wall_ms = now_ms

    def resume(self, now_ms: int) -> None:
        """Restored from a snapshot: the downtime is not quiet input, and every partition
        must report again where it stands before anything closes."""
        self.touch(now_ms)
        self.caught_up.clear()

    def _held_at(self) -> int | None:
        """With partition reports: the event time the stream is held at, `None` when it
        cannot move at all, or the largest event time when every partition is at its end."""
        if len(self.caught_up) < self.partitions:
            return None  # not every partition has said where it stands
        behind = [self.latest.get(source) for source, done in self.caught_up.items() if not done]
        if not behind:
            return self.max_event_ms
        if None in behind:
            return None  # a partition with a backlog has not delivered an event yet
        return min(behind)

    def catching_up(self) -> bool:
        """True while some reported partition still has unread messages (a backlog)."""
        return self._reports() and not self._all_caught_up()

    def read_through(self) -> int | None:
        """While catching up: the latest event time read from the slowest partition that still
        has a backlog (every partition has delivered what is older, lateness aside); `None`
        while one has not reported or delivered yet. Not moved by the wall clock."""
        return self._held_at()

    def _reports(self) -> bool:
        return bool(self.partitions or self.caught_up)

    def _all_caught_up(self) -> bool:
        return len(self.caught_up) >= self.partitions and all(self.caught_up.values())

    def watermark(self, now_ms: int) -> int | None:
        """Event time up to which the stream is considered complete; None before any event."""
        if self.max_event_ms is None:
            return None
        if self._reports() and not self._all_caught_up():
            held_at = self._held_at()
            if held_at is None:
                return self.high_water_ms
            candidate = held_at - self.lateness_ms
        else:
            quiet_for = max(0, now_ms - self.last_input_wall_ms)
            candidate = self.max_event_ms + quiet_for - self.lateness_ms
        if self.high_water_ms is None or candidate > self.high_water_ms:
            self.high_water_ms = candidate
        return self.high_water_ms

    def wall_time_when(self, event_ms: int, now_ms: int) -> int | None:
        """Wall-clock ms at which the watermark reaches `event_ms` if nothing else arrives;
        None when only input can move it (a partition still has unread messages)."""
        if self.max_event_ms is None:
            return None
        if self._reports() and not self._all_caught_up():
            return None
        reached_at = self.last_input_wall_ms + event_ms + self.lateness_ms - self.max_event_ms
        return max(now_ms, reached_at)

    def __setstate__(self, state: dict) -> None:
        # Snapshots of the previous clock (wall-time idleness per source) resume: their
        # per-source (event ms, wall ms) pairs keep the event times; reports start afresh.
        if "sources" in state:
            state = dict(state)
            sources = state.pop("sources")
            state.setdefault("latest", {source: event_ms for source, (event_ms, _) in sources.items()})
            for stale in ("idle_source_ms", "startup_grace_ms", "started_wall_ms"):
                state.pop(stale, None)
        state.setdefault("latest", {})
        state.setdefault("caught_up", {})
        state.setdefault("partitions", 0)
        state.setdefault("high_water_ms", None)
        self.__dict__.update(state)
