"""Flows with one input partition starved, for the determinism tests.

`python -m bytewax.run "tests.integration.stalled_flows:stalled('flows.funnel', 'clickstream', 0)"`
runs the funnel flow unchanged except that partition 0 of `clickstream` delivers nothing
for `stall_s` seconds at a time, then a few small batches: the way a CPU-starved consumer
with a backlog behaves. The flow's results must not change because of it.
"""

from __future__ import annotations

import importlib
import time

from bytewax.dataflow import Dataflow

from state import kafka

FREE_S = 0.3  # how long the partition may read between two stalls
MAX_RECORDS = 20  # per batch while it reads: the backlog drains slowly


def stalled(flow_module: str, topic: str, partition: int, stall_s: float = 2.0) -> Dataflow:
    read = kafka._InputPartition.next_batch
    period_s = stall_s + FREE_S
    started = time.monotonic()

    def next_batch(self):
        if self._contract_topic != topic or self._partition != partition:
            return read(self)
        if (time.monotonic() - started) % period_s < stall_s:
            time.sleep(0.01)  # as a starved process would: nothing read, nothing reported
            return []
        self._batch_size = MAX_RECORDS
        return read(self)

    kafka._InputPartition.next_batch = next_batch
    return importlib.import_module(flow_module).flow
