"""Global event-time order: a calendar of future events and a queue of future work.

Generation runs ahead of output: a shopper's whole visit is written when it
starts, a chargeback weeks before it is due. Events wait in ten-second buckets;
a bucket is released, sorted by `ts`, only after every task due before its end
has run, and nothing is ever scheduled before the task that schedules it, so
output is in event-time order. The sort is stable and tasks run in (ts, order
scheduled) order, so ties come out in generation order: deterministic.
"""

from __future__ import annotations

import heapq
from itertools import count
from operator import itemgetter
from typing import Any, Callable

BUCKET_MS = 10_000  # bigger buckets cost less per bucket; the order inside is by sort

# (ts, topic, key, JSON object or its bytes): an event waiting for its bucket.
Entry = tuple[int, str, bytes, dict | bytes]

_by_ts = itemgetter(0)


class Buckets(dict):
    """bucket number -> list, like a defaultdict(list) that also notes each new bucket
    in a heap shared with other `Buckets`, so a quiet night is skipped, not walked."""

    def __init__(self, pending: list[int]):
        super().__init__()
        self._pending = pending

    def __missing__(self, bucket: int) -> list:
        entries = self[bucket] = []
        heapq.heappush(self._pending, bucket)
        return entries


class EventCalendar:
    """Events (and ground truth) waiting for their bucket of event time."""

    def __init__(self) -> None:
        self._pending: list[int] = []
        self.buckets = Buckets(self._pending)
        self.truth = Buckets(self._pending)

    def next_bucket(self, after: int, tasks: "TaskQueue") -> int | None:
        """The earliest bucket after `after` with anything in it or any task due in it."""
        candidate = after + 1
        if candidate in self.buckets or candidate in self.truth:
            return candidate  # the common case while traffic flows
        pending = self._pending
        while pending and (pending[0] <= after or (pending[0] not in self.buckets
                                                   and pending[0] not in self.truth)):
            heapq.heappop(pending)  # released already
        due = tasks.next_due()
        due_bucket = None if due is None else due // BUCKET_MS
        if not pending:
            return due_bucket
        return pending[0] if due_bucket is None else min(pending[0], due_bucket)

    def release(self, bucket: int) -> tuple[list[Entry], list]:
        """The bucket's events in event-time order (ties in generation order), and its truth."""
        pending = self._pending
        while pending and pending[0] <= bucket:
            heapq.heappop(pending)
        entries = self.buckets.pop(bucket, None) or []
        if len(entries) > 1:
            entries.sort(key=_by_ts)
        return entries, self.truth.pop(bucket, None) or []


class TaskQueue:
    """Work due at an event time: `fn(context, ts, *args)` runs when the output reaches `ts`."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._heap: list[tuple[int, int, Callable[..., Any], tuple]] = []
        self._order = count()
        self.now = 0  # ts of the task running (or last run)

    def schedule(self, ts: int, fn: Callable[..., Any], *args: Any) -> None:
        if ts < self.now:
            raise ValueError(f"cannot schedule at {ts}, before the current task at {self.now}")
        heapq.heappush(self._heap, (ts, next(self._order), fn, args))

    def run_until(self, limit: int) -> None:
        """Run every task due before `limit`, including ones they schedule."""
        heap = self._heap
        pop = heapq.heappop
        context = self._context
        while heap and heap[0][0] < limit:
            ts, _, fn, args = pop(heap)
            self.now = ts
            fn(context, ts, *args)

    def next_due(self) -> int | None:
        return self._heap[0][0] if self._heap else None
