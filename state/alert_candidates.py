"""The internal `alert-candidates` topic: candidates, progress markers, input windows.

A producer flow's records are keyed by the producer's name, so they land on one
partition in the order the producer wrote them, and each shard of its stateful step
follows its candidates with a progress marker (`operators/alert_hold.py` says why):

    {"progress": "stock", "shard": "3", "shards": 16, "ts": 1731240000000}

Candidates carry `producer` and `shard` next to the contract's candidate fields; the
intake flow's input windows travel the same way (its `metrics` record plus the two
fields). A bare `AlertCandidate` (the runner's `engine.flow_down`, stamped with wall
time) is keyed by its dedup key and applied by the router at once.

A producer flow wraps its stateful step's logic in `ProgressMarking` (one line in its
`build_flow`); `candidate_message` encodes every kind of record.

Quiet input: a shard steps (and so marks) only when input arrives or its own timers
are due, which may be minutes apart, and the router would wait for it until the
producer timeout. So the wrapper also wakes the shard `MARKER_INTERVAL_MS` of wall
time after its last step: the inner logic advances to its watermark (which moves with
wall time once every partition is at its end) and the marker follows if it moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable

from bytewax.operators import StatefulBatchLogic

from operators.alert_detectors import InputWindow
from operators.alert_hold import ProgressMarker, Sourced
from operators.alerts import AlertCandidate
from operators.clock import Clock, StreamClock, from_ms, wall_clock_ms
from state.kafka import OutboundMessage
from state.serde import dumps, loads

TOPIC = "alert-candidates"
INTAKE = "intake"
END_OF_STREAM = 2**62  # a marker's ts once a finite input has ended: nothing more will come
MARKER_INTERVAL_MS = 1_000  # a shard whose watermark moves sends a marker at least this often (wall time)
UNKNOWN_SHARD = "?"  # a sharded step resumed and not yet told its shard by a batch


@dataclass(frozen=True, slots=True)
class Produced:
    """A record one producer shard writes: a candidate, or an input window's record."""

    producer: str
    shard: str
    item: AlertCandidate | dict  # a dict: the intake's `metrics` record of an input window


@dataclass
class ProgressReporter:
    """One shard's candidates, tagged, and its progress marker after them: at most one
    per step, and only when the shard's watermark moved."""

    producer: str
    shard: str = "0"
    shards: int = 1
    last_ts: int | None = None

    def mark(self, outputs: Iterable[Any], watermark: int | None, again: bool = False) -> None:
        """Tag the `candidates` of a step's outputs; the marker goes after the last one's."""
        last = None
        for out in outputs:
            out.candidates[:] = [self.tag(c) for c in out.candidates]
            last = out
        if last is not None:
            last.candidates.extend(self.marker(watermark, again))

    def tag(self, item):
        return Produced(self.producer, self.shard, item) if isinstance(item, (AlertCandidate, dict)) else item

    def marker(self, watermark: int | None, again: bool = False) -> list[ProgressMarker]:
        """The marker if the watermark moved; with `again`, also the same one once more."""
        if watermark is None or self.shard == UNKNOWN_SHARD:
            return []  # a promise under the wrong shard's name would release another shard's records
        if self.last_ts is not None and (watermark < self.last_ts or (watermark == self.last_ts and not again)):
            return []
        self.last_ts = watermark
        return [ProgressMarker(self.producer, self.shard, self.shards, watermark)]


class ProgressMarking(StatefulBatchLogic):
    """A producer's stateful logic, its candidates tagged and followed by its shard's marker.

    `watermark` reads the shard's event time after a step: every candidate it will
    emit later is stamped after it (each flow closes windows, applies lines and fires
    timers only up to its watermark). `shard_of` names the shard from a batch (the
    builder is not told its key); without it the producer has one shard. `flat`: the
    step returns candidates among other items (funnel, intake), not objects with a
    `candidates` list. `interval_ms`: wake the inner logic this long (wall time, by
    `now_ms`) after the last step, so its marker moves on quiet input; None: no wake
    of its own. `repeat`: on that wake, send the marker again even if it has not moved
    (the funnel's aggregator, whose promise moves once per window while its buckets
    work: without it the router would take it for down after the producer timeout)."""

    def __init__(self, inner: StatefulBatchLogic, reporter: ProgressReporter, watermark: Callable[[], int | None],
                 shard_of: Callable[[Any], str] | None = None, flat: bool = False,
                 now_ms: Clock = wall_clock_ms, interval_ms: int | None = MARKER_INTERVAL_MS, repeat: bool = False):
        self._inner = inner
        self._reporter = reporter
        self._watermark = watermark
        self._shard_of = shard_of
        self._flat = flat
        self._now_ms = now_ms
        self._interval_ms = interval_ms
        self._repeat = repeat
        self._stepped_ms = now_ms()  # wall time of the last step (or the start)
        if shard_of is not None:
            reporter.shard = UNKNOWN_SHARD

    def on_batch(self, values):
        if self._shard_of is not None and values:
            self._reporter.shard = self._shard_of(values[-1])
        out, retain = self._inner.on_batch(values)
        return self._marked(out, self._watermark()), retain

    def on_notify(self):
        # Also the wrapper's own wake: the inner logic advances to its watermark first,
        # so nothing it will emit is stamped at or before the marker that follows.
        again = self._repeat and self._interval_ms is not None and (
            self._now_ms() - self._stepped_ms >= self._interval_ms)
        out, retain = self._inner.on_notify()
        return self._marked(out, self._watermark(), again), retain

    def on_eof(self):
        out, retain = self._inner.on_eof()
        return self._marked(out, END_OF_STREAM), retain

    def notify_at(self) -> datetime | None:
        inner = self._inner.notify_at()
        if self._interval_ms is None or self._watermark() is None or self._reporter.shard == UNKNOWN_SHARD:
            return inner
        beat = from_ms(self._stepped_ms + self._interval_ms)
        return beat if inner is None or beat < inner else inner

    def snapshot(self):
        return self._inner.snapshot()

    def _marked(self, out: Iterable[Any], watermark: int | None, again: bool = False) -> list:
        self._stepped_ms = self._now_ms()
        out = list(out)
        if self._flat:
            return [self._reporter.tag(item) for item in out] + self._reporter.marker(watermark, again)
        self._reporter.mark(out, watermark, again)
        return out


def marked(producer: str, logic: StatefulBatchLogic, shards: int = 1,
           shard_of: Callable[[Any], str] | None = None, flat: bool = False,
           now_ms: Clock = wall_clock_ms, interval_ms: int | None = MARKER_INTERVAL_MS) -> ProgressMarking:
    """`logic` with progress markers from the stream clock of the state it wraps
    (its watermark: the clock's highest, which never goes back); `now_ms` is the
    flow's wall clock, for the wake every `interval_ms` on quiet input."""
    clocks = [v.clock for v in vars(logic).values() if isinstance(getattr(v, "clock", None), StreamClock)]
    if len(clocks) != 1:
        raise TypeError(f"{type(logic).__name__} must hold exactly one state with a stream clock")
    clock = clocks[0]
    return ProgressMarking(logic, ProgressReporter(producer, shards=shards), lambda: clock.high_water_ms,
                           shard_of=shard_of, flat=flat, now_ms=now_ms, interval_ms=interval_ms)


def candidate_message(item: AlertCandidate | Produced | ProgressMarker) -> OutboundMessage:
    if isinstance(item, ProgressMarker):
        return OutboundMessage(TOPIC, item.producer.encode(), dumps(item.to_dict()))
    if isinstance(item, Produced):
        body = item.item.to_dict() if isinstance(item.item, AlertCandidate) else dict(item.item)
        body["producer"], body["shard"] = item.producer, item.shard
        return OutboundMessage(TOPIC, item.producer.encode(), dumps(body))
    return OutboundMessage(TOPIC, item.dedup_key.encode(), dumps(item.to_dict()))


def decode_record(value: bytes) -> AlertCandidate | Sourced | ProgressMarker:
    """Raises on a record that is none of the three (the router logs and skips it)."""
    obj = loads(value)
    if "progress" in obj:
        return ProgressMarker(str(obj["progress"]), str(obj["shard"]), int(obj["shards"]), int(obj["ts"]))
    item = InputWindow.from_dict(obj) if obj.get("metric") == "input" else AlertCandidate.from_dict(obj)
    if "producer" in obj:
        return Sourced(str(obj["producer"]), str(obj["shard"]), item, value)
    if isinstance(item, InputWindow):
        raise ValueError("an input window without its producer")
    return item


def decode_candidate(value: bytes) -> AlertCandidate:
    return AlertCandidate.from_dict(loads(value))
