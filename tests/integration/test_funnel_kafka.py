"""The funnel flow on the real broker and Redis, run the Bytewax way with recovery by
the runner: window results land in Redis, and after kill -9 and a restart the
restored sessions still join the orders that follow."""

from __future__ import annotations

import signal

import orjson
import pytest

from shopstream.runner import start_flow, stop_all
from tests.integration.kafka_helpers import produce, read_topic, wait_for_snapshot, wait_until
from tests.unit.test_funnel_flow import MINUTE, T0, click, hand_built_stream, order

pytestmark = pytest.mark.integration


def produce_records(settings, records) -> None:
    for topic in ("clickstream", "orders", "payments"):
        produce(settings, topic, [(r.key, r.value) for r in records if r.topic == topic])


def window_result(redis_client, settings, key: str, window_start: int):
    """The series' result for one window, from its history (the latest-window key moves on)."""
    members = redis_client.zrangebyscore(settings.redis_key(f"{key}:history"), window_start, window_start)
    return orjson.loads(members[0]) if members else None


def test_results_in_redis_and_sessions_survive_kill_9(settings, redis_client):
    stream = [r for r in hand_built_stream() if r != b"{not json"]  # minute 0, and s1 and s5 at 61-62 s
    produce_records(settings, stream + [click(66, "u9", "s9", "search")])
    processes = start_flow(settings, "funnel")
    try:
        result = wait_until(lambda: window_result(redis_client, settings, "funnel:all:all", T0), 60,
                            "minute 0 in Redis")
        assert list(result["stages"].values()) == [4, 3, 3, 2, 2, 1]
        kpi = wait_until(lambda: window_result(redis_client, settings, "kpi:latest", T0), 10, "kpi:latest")
        assert (kpi["gmv"], kpi["orders"], kpi["uv"]) == (100.0, 2, 4)
        wait_for_snapshot(settings, "funnel")  # the restart resumes, not replays
    finally:
        for proc in processes:
            proc.popen.send_signal(signal.SIGKILL)
            proc.popen.wait()

    # u1's order names no session: it can only join s1 if the restart restored it.
    produce_records(settings, [order(65, "u1", "o9", "created", 30.0), click(130, "u7", "s7", "page_view")])
    processes = start_flow(settings, "funnel")
    try:
        result = wait_until(lambda: window_result(redis_client, settings, "funnel:all:all", T0 + MINUTE), 60,
                            "minute 1 in Redis")
        assert list(result["stages"].values()) == [3, 1, 1, 1, 1, 0]  # s1 ordered; s5 and s9 looked around
        assert all(p.popen.poll() is None for p in processes)
    finally:
        stop_all(processes)
    history = redis_client.zrange(settings.redis_key("funnel:all:all:history"), 0, -1, withscores=True)
    assert [int(score) for _, score in history][:2] == [T0, T0 + MINUTE]
    published = [orjson.loads(v) for _, v in read_topic(settings, "metrics")]
    ids = {m["metric_id"] for m in published}
    assert {f"funnel:all:all:{T0}", f"funnel:all:all:{T0 + MINUTE}", f"kpi:latest:{T0}"} <= ids
