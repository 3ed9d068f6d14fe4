"""The intake flow end to end on the real broker and Redis, run the Bytewax way
(`python -m bytewax.run flows.intake:flow` with recovery) by the runner."""

from __future__ import annotations

import base64
import hashlib
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
    a_click = good[0][1].decode()
    order = {"event_id": "o2", "ts": BASE_TS, "order_id": "o2", "user_id": "u9", "status": "created", "amount": 1.0}
    item = {"sku": "A", "quantity": 1, "unit_price": 1.0}
    # (topic, key, value, the start of the dead letter's error)
    bad = [
        ("clickstream", b"u1", b'{"event_id": "broken", "ts": 17', "bad JSON"),  # malformed JSON
        ("clickstream", b"u2", orjson.dumps({**orjson.loads(good[0][1]), "event_id": "wrong-type", "ts": "soon"}),
         "field 'ts' must be an integer, got 'soon'"),
        ("clickstream", b"u3", b"\xff\xfe\x00 binary junk", "bad JSON"),
        # Accepted by the broker, but a dead letter quoting it whole would not be.
        ("clickstream", b"u4", b"\xff" * 900_000, "bad JSON"),
        ("clickstream", b"u5", a_click.replace('"event_id":"e0"', '"event_id":"\xc3\x28"').encode("latin-1"),
         "bad JSON"),  # invalid UTF-8 inside a string
        ("clickstream", b"u6", b"[" * 10_000 + b"]" * 10_000, "bad JSON: nested deeper than 1024 levels"),
        ("clickstream", b"u7", b'{"a":' * 100_000, "bad JSON: nested deeper"),  # orjson 3.8 segfaulted on it
        ("clickstream", b"u8", a_click.replace(f'"ts":{BASE_TS}', f'"ts":{2**70}').encode(), "field 'ts' must be <="),
        ("clickstream", b"u8", a_click.replace('"region":"east"', '"region":"east","price":NaN').encode(),
         "bad JSON"),
        ("orders", b"u9", b'{"event_id": "o1", "ts": 1, "status": "created"}', "missing field 'items'"),
        ("orders", b"u9", orjson.dumps({**order, "items": [item] * 10_000}),
         "field 'items' has 10000 items, more than 1000"),
        ("orders", b"u9", orjson.dumps({**order, "event_id": "o3", "items": [{**item, "quantity": 2**62}]}),
         "field 'quantity' must be <= 1000000000"),
        ("inventory", b"A", orjson.dumps({"event_id": "i1", "ts": BASE_TS, "sku": "A", "kind": "restock",
                                           "quantity": 2**62}), "field 'quantity' must be <= 1000000000"),
    ]
    click_pills = [(key, value) for topic, key, value, _ in bad if topic == "clickstream"]
    produce(settings, "clickstream", good[:200] + click_pills[:2] + good[200:400] + click_pills[2:] + good[400:])
    for topic in ("orders", "inventory"):
        produce(settings, topic, [(key, value) for t, key, value, _ in bad if t == topic])

    processes = start_flow(settings, "intake")
    try:
        wait_until(lambda: counted(redis_client, settings) == 600, 60, "all 600 good events counted")
        wait_until(lambda: len(read_topic(settings, "dead-letters")) >= len(bad), 30, "dead letters")
        assert all(p.popen.poll() is None for p in processes), "the flow stopped on bad input"
    finally:
        stop_all(processes)

    # Read again once the flow has stopped: nothing more can arrive, duplicates included.
    letters = [orjson.loads(value) for _, value in read_topic(settings, "dead-letters")]
    assert len(letters) == len(bad)
    assert len({d["dead_letter_id"] for d in letters}) == len(bad)
    # Each bad event exactly once, found by the hash of its whole value, with its reason.
    by_hash = {d["raw_sha256"]: d for d in letters}
    for topic, _, value, reason in bad:
        letter = by_hash[hashlib.sha256(value).hexdigest()]
        assert (letter["source_topic"], letter["raw_length"]) == (topic, len(value))
        assert letter["error"].startswith(reason), (letter["error"], reason)
    assert any(d.get("raw_encoding") == "base64" for d in letters)
    oversized = by_hash[hashlib.sha256(b"\xff" * 900_000).hexdigest()]
    assert oversized["raw_truncated"] is True and oversized["raw_encoding"] == "base64"
    assert base64.b64decode(oversized["raw"]) == b"\xff" * settings.dead_letter_raw_bytes
    assert all(len(value) < 500_000 for _, value in read_topic(settings, "dead-letters"))
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
