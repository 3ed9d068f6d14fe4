"""Snapshots of large flow state for Bytewax recovery, and the process tuning they need.

Flows that keep big, long-lived state (a stock ledger, cart books, session buckets, a
fraud engine, churn books) hand Bytewax a `PickledState` from `snapshot`: the state
pickled once, right then, so later changes cannot reach the snapshot. It pickles as
"unpickle these bytes", so the recovery store holds the state itself and a resume gets
the state back, not the wrapper. Cheaper than a copy, which would be pickled twice.
"""

from __future__ import annotations

import gc
import pickle
from contextlib import contextmanager
from typing import Any, Iterator


class PickledState:
    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    @classmethod
    def of(cls, state: Any) -> "PickledState":
        return cls(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))

    def __reduce__(self):
        return pickle.loads, (self.data,)


def restored(resumed: Any) -> Any:
    """The state a step resumes with: a `PickledState` handed back without going through
    the recovery store (Bytewax may do that within one run) is unpickled here."""
    if isinstance(resumed, PickledState):
        return pickle.loads(resumed.data)
    return resumed


def tune_gc_for_long_lived_state() -> None:
    """A flow process keeps hundreds of thousands of long-lived objects while every message
    allocates short-lived ones, so CPython's default collector (a young collection every
    700 allocations, full ones as the state grows) spent about 15% of the stock flow's time
    scanning the same state. Collect the young generation 20 times less often, and leave the
    objects of start-up (modules, Bytewax, clients) out of every scan."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(14_000, 10, 10)


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for a one-shot batch job (a history replayed to
    pre-train a model) that builds millions of acyclic objects and keeps many of them, so
    the collector would only rescan the kept ones, ~15% of the job. Reference counting
    still frees everything; cycles made inside are collected when it ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
