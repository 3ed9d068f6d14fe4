"""The intake flow end to end on the real broker and Redis, run the Bytewax way
(`python -m bytewax.run flows.intake:flow` with recovery) by the runner."""

from __future__ import annotations

import signal
from dataclasses import replace

import orjson
import pytest

from shopstream.runner import start_flow, stop_all
from tests.integration.kafka_helpers import produce, read_topic, wait_until

pytestmark = pytest.mark.integration

BASE_TS = 1_763_683_200_000  # 2025-11-21T00:00:00Z, a whole second
SECOND = 1000


def click(i: int, ts: int) -> tuple[bytes, bytes]:
    user = f"u{i % 97}"
    value = orjson.dumps(
        {
            "event_id": f"e{i}",
            "ts": ts,
            "user_id": user,
            "session_id": f"s-{user}",
            "type": "page_view",
            "channel": ("app", "web", "mini_program")[i % 3],
            "region": "east",
            "device": "android",
        }
    )
    return user.encode(), value


def clicks(first: int, count: int, start_s: int, span_s: int) -> list[tuple[bytes, bytes]]:
    """Clicks numbered from `first`, spread evenly over `span_s` seconds of event time, in order."""
    step = span_s * SECOND / count
    return [click(first + n, BASE_TS + start_s * SECOND + int(n * step)) for n in range(count)]


def window_history(redis_client, settings, series: str) -> dict[int, dict]:
    raw = redis_client.zrange(settings.redis_key(f"{series}:history"), 0, -1, withscores=True)
    return {int(score): orjson.loads(member) for member, score in raw}


def counted(redis_client, settings) -> int:
    history = window_history(redis_client, settings, "input:clickstream")
    return sum(w["events"] + w["late_events"] for w in history.values())


def test_poison_pills_go_to_dead_letters_once_and_the_flow_keeps_running(settings, redis_client):
    good = [click(i, BASE_TS + i * 10) for i in range(600)]  # 6 s of event time
    bad = [
        (b"u1", b'{"event_id": "broken", "ts": 17'),  # malformed JSON
        (b"u2", orjson.dumps({**orjson.loads(good[0][1]), "event_id": "wrong-type", "ts": "soon"})),
        (b"u3", b"\xff\xfe\x00 binary junk"),
    ]
    produce(settings, "clickstream", good[:200] + bad[:2] + good[200:400] + bad[2:] + good[400:])
    produce(settings, "orders", [(b"u9", b'{"event_id": "o1", "ts": 1, "status": "created"}')])

    processes = start_flow(settings, "intake")
    try:
        wait_until(lambda: counted(redis_client, settings) == 600, 60, "all 600 good events counted")
        wait_until(lambda: len(read_topic(settings, "dead-letters")) >= 4, 30, "dead letters")
        assert all(p.popen.poll() is None for p in processes), "the flow stopped on bad input"
    finally:
        stop_all(processes)

    # Read again once the flow has stopped: nothing more can arrive, duplicates included.
    letters = [orjson.loads(value) for _, value in read_topic(settings, "dead-letters")]
    assert len(letters) == 4
    by_topic = sorted((d["source_topic"], d["error"].split(":")[0]) for d in letters)
    assert by_topic == [
        ("clickstream", "bad JSON"),
        ("clickstream", "bad JSON"),
        ("clickstream", "field 'ts' must be an integer, got 'soon'"),
        ("orders", "missing field 'items'"),
    ]
    assert len({d["dead_letter_id"] for d in letters}) == 4
    assert any(d.get("raw_encoding") == "base64" for d in letters)
    assert redis_client.get(settings.redis_key("input:clickstream")) is not None


def test_kill_9_and_restart_loses_nothing_and_counts_nothing_twice(settings, redis_client):
    first_half = clicks(0, 20_000, start_s=0, span_s=20)
    second_half = clicks(20_000, 10_000, start_s=20, span_s=10)
    produce(settings, "clickstream", first_half)

    processes = start_flow(settings, "intake")
    wait_until(lambda: counted(redis_client, settings) >= 5_000, 60, "the flow to make progress")
    for proc in processes:
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()

    produce(settings, "clickstream", second_half)
    processes = start_flow(settings, "intake")
    try:
        wait_until(lambda: counted(redis_client, settings) >= 30_000, 90, "all events counted after restart")
        # Let the stream clock close any window still open, then check nothing is doubled.
        wait_until(
            lambda: max(window_history(redis_client, settings, "input:clickstream")) >= BASE_TS + 29 * SECOND,
            30,
            "the last window to close",
        )
    finally:
        stop_all(processes)

    history = window_history(redis_client, settings, "input:clickstream")
    # Every second of event time holds exactly 1000 clicks, none late, none doubled
    # (windows after the input stopped report zero, as a quiet topic should).
    assert {start - BASE_TS: w["events"] for start, w in history.items() if start < BASE_TS + 30 * SECOND} == {
        s * SECOND: 1000 for s in range(30)
    }
    assert all(w["events"] == 0 for start, w in history.items() if start >= BASE_TS + 30 * SECOND)
    assert all(w["late_events"] == 0 for w in history.values())
    channels = sum(
        sum(w["events"] + w["late_events"] for w in window_history(redis_client, settings, f"input:clickstream:channel:{c}").values())
        for c in ("app", "web", "mini_program")
    )
    assert channels == 30_000
    metric_ids = [orjson.loads(v)["metric_id"] for _, v in read_topic(settings, "metrics")]
    # At-least-once on Kafka: a replayed epoch may resend a window, always with the same id.
    assert set(metric_ids) >= {f"input:clickstream:{BASE_TS + s * SECOND}" for s in range(30)}


def test_two_processes_count_exactly_once(settings, redis_client):
    two_processes = replace(settings, processes=2)
    produce(two_processes, "clickstream", clicks(0, 6_000, start_s=0, span_s=6))

    processes = start_flow(two_processes, "intake")
    try:
        assert len(processes) == 2
        wait_until(lambda: counted(redis_client, settings) >= 6_000, 60, "all events counted by 2 processes")
        wait_until(
            lambda: max(window_history(redis_client, settings, "input:clickstream")) >= BASE_TS + 5 * SECOND,
            30,
            "the last window to close",
        )
        assert all(p.popen.poll() is None for p in processes)
    finally:
        stop_all(processes)
    assert counted(redis_client, settings) == 6_000
