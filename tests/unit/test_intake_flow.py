"""The intake flow on TestingSource/TestingSink, with one worker and with two."""

import orjson
import pytest
from bytewax.testing import TestingSource, TestingSink, cluster_main, run_main

from operators.clock import Progress
from flows.intake import IntakeConfig, build_flow
from state.kafka import InputRecord
from state.redis_store import AddToHistory, SetLatest

MINUTE = 60_000
CONFIG = IntakeConfig(
    window_ms=MINUTE, lateness_ms=0, history_length=10, key_idle_windows=60, max_event_ahead_ms=3_600_000
)
NOW_MS = 1_000_000_000  # a fixed wall clock: windows close on event time and at the end of input


def fixed_clock() -> int:
    return NOW_MS


def click_bytes(i, ts, channel):
    return orjson.dumps(
        {
            "event_id": f"e{i}",
            "ts": ts,
            "user_id": f"u{i % 7}",
            "session_id": f"s{i % 7}",
            "type": "product_view",
            "channel": channel,
            "region": "east",
            "device": "android",
        }
    )


def build_records():
    """Three minutes of clicks on two channels, a few orders, and three poison pills."""
    records = []
    offset = 0
    for i in range(180):
        records.append(InputRecord("clickstream", 0, offset, click_bytes(i, i * 1000, "app" if i % 3 else "web"), 0))
        offset += 1
    records.insert(10, InputRecord("clickstream", 0, 1000, b'{"event_id": "x", "ts": ', 0))
    records.insert(50, InputRecord("clickstream", 0, 1001, click_bytes(9999, "noon", "app"), 0))
    records.insert(90, InputRecord("orders", 1, 7, b"\xff\xfe not utf-8", 0))
    # Stamped in microseconds: 1000x in the future; it would drag the clock with it.
    records.insert(120, InputRecord("clickstream", 0, 1002, click_bytes(8888, NOW_MS * 1000, "app"), 0))
    return records


def run_intake(records, workers, config=CONFIG):
    kafka_out, redis_out = [], []
    flow = build_flow(
        TestingSource(records, batch_size=16), TestingSink(kafka_out), TestingSink(redis_out), config, fixed_clock
    )
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=workers)
    return kafka_out, redis_out


@pytest.mark.parametrize("workers", [1, 2])
def test_counts_every_good_event_and_routes_each_bad_one_once(workers):
    kafka_out, redis_out = run_intake(build_records(), workers)

    dead = [orjson.loads(m.value) for m in kafka_out if m.topic == "dead-letters"]
    assert sorted(d["dead_letter_id"] for d in dead) == [
        "clickstream:0:1000",
        "clickstream:0:1001",
        "clickstream:0:1002",
        "orders:1:7",
    ]
    by_id = {d["dead_letter_id"]: d for d in dead}
    assert by_id["clickstream:0:1001"]["error"].startswith("field 'ts' must be an integer")
    assert by_id["orders:1:7"]["raw_encoding"] == "base64"
    assert by_id["clickstream:0:1000"]["raw"] == '{"event_id": "x", "ts": '
    assert "beyond the allowed future" in by_id["clickstream:0:1002"]["error"]

    metrics = [orjson.loads(m.value) for m in kafka_out if m.topic == "metrics"]
    totals = {m["window_start"]: m for m in metrics if m["dimension"] == "all" and m["topic"] == "clickstream"}
    assert {start: m["events"] for start, m in totals.items()} == {0: 60, MINUTE: 60, 2 * MINUTE: 60}
    assert sum(m["dead_letters"] for m in totals.values()) == 3
    web = sum(m["events"] for m in metrics if m["value"] == "web")
    assert web == 60
    assert len({m["metric_id"] for m in metrics}) == len(metrics)

    latest = [w for w in redis_out if isinstance(w, SetLatest) and w.key == "input:clickstream"]
    assert max(w.order for w in latest) == 3 * MINUTE
    history = [w for w in redis_out if isinstance(w, AddToHistory) and w.key == "input:clickstream:history"]
    assert sorted(w.score for w in history) == [0, MINUTE, 2 * MINUTE]


def test_dead_letters_keep_as_many_raw_bytes_as_configured():
    from dataclasses import replace

    from shopstream.settings import Settings

    config = IntakeConfig.from_settings(Settings.from_env({"SHOPSTREAM_DEAD_LETTER_RAW_BYTES": "8"}))
    assert config.dead_letter_raw_bytes == 8
    config = replace(config, window_ms=MINUTE, lateness_ms=0, max_event_ahead_ms=3_600_000)
    kafka_out, _ = run_intake(build_records(), 1, config)
    dead = {d["dead_letter_id"]: d for d in (orjson.loads(m.value) for m in kafka_out if m.topic == "dead-letters")}
    cut = dead["clickstream:0:1000"]
    assert (cut["raw"], cut["raw_truncated"], cut["raw_length"]) == ('{"event_', True, 24)


def test_one_and_two_workers_give_the_same_results():
    one, _ = run_intake(build_records(), 1)
    two, _ = run_intake(build_records(), 2)
    # Progress markers follow the batching (one per batch that moved the clock): not results.
    assert sorted(m.value for m in one if b'"progress"' not in m.value) == sorted(
        m.value for m in two if b'"progress"' not in m.value)


def test_counts_do_not_depend_on_how_upstream_batches_are_grouped():
    """Bytewax may hand the counter several upstream batches at once (it does with two
    workers); the result must equal handing them over one by one."""
    from flows.intake import _InputCountLogic
    from operators.events import parse_event
    from operators.input_counts import InputCounter, InputTallies, tally_batch

    def clicks(*timestamps):
        return [
            parse_event(
                "clickstream",
                {"event_id": f"e{ts}", "ts": ts, "user_id": "u", "session_id": "s", "type": "search",
                 "channel": "app", "region": "r", "device": "d"},
            )
            for ts in timestamps
        ]

    # The first batch closes window 0; the second brings one more event for it (late).
    first = InputTallies(tally_batch(clicks(1, MINUTE + 1), MINUTE), Progress({("clickstream", 0): MINUTE + 1}))
    second = InputTallies(tally_batch(clicks(2, MINUTE * 2 + 1), MINUTE), Progress({("clickstream", 0): MINUTE * 2 + 1}))

    def logic():
        return _InputCountLogic(InputCounter(MINUTE, 0, 5), fixed_clock)

    one_by_one = logic()
    separate = one_by_one.on_batch([first])[0] + one_by_one.on_batch([second])[0]
    together = logic().on_batch([first, second])[0]
    assert together == separate
    assert [(c.window_start, c.events, c.late_events) for c in together if c.dimension == "all"] == [
        (0, 1, 0),
        (MINUTE, 1, 1),
    ]
