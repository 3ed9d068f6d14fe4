"""Small helpers for integration tests: produce, read a topic to its end, wait."""

from __future__ import annotations

import time
from typing import Callable, Iterable, TypeVar


from shopstream.settings import Settings
from state.kafka import CheckedProducer, read_topic

__all__ = ["produce", "read_topic", "wait_until"]  # read_topic lives in state.kafka

T = TypeVar("T")


def produce(settings: Settings, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Produce (key, value) pairs to a contract topic and wait for every delivery."""
    producer = CheckedProducer(settings)
    count = 0
    for key, value in messages:
        producer.produce(topic, key, value)
        count += 1
    producer.flush()
    return count


def wait_until(condition: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.2) -> T:
    """Poll `condition` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def wait_for_snapshot(settings: Settings, flow_name: str, timeout_s: float = 60) -> None:
    """Wait until the flow's recovery store commits two epochs past the one committed now:
    what the flow has processed so far is then snapshotted, so a restart resumes from it."""
    import sqlite3

    from shopstream.runner import recovery_dir

    parts = sorted(recovery_dir(settings, flow_name).glob("part-*.sqlite3"))

    def committed() -> int:
        epochs = []
        for part in parts:
            with sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5) as db:
                epochs.append(db.execute("SELECT COALESCE(MAX(commit_epoch), 0) FROM commits").fetchone()[0])
        return min(epochs, default=0)

    start = committed()
    wait_until(lambda: committed() >= start + 2, timeout_s, f"a snapshot of {flow_name}", interval_s=0.2)
