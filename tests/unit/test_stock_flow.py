"""The stock flow on TestingSource/TestingSink against the simulator's ground truth,
with one worker and with two, in order and reordered within the allowed lateness."""

import random
from dataclasses import replace

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from flows.stock import StockConfig, build_flow, triage_batch
from operators.stock import StockRules
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import HOUR
from state.kafka import InputRecord
from state.redis_store import ReplaceHash

LATENESS_MS = 10_000
CONFIG = StockConfig(max_event_ahead_ms=3_600_000, rules=StockRules(lateness_ms=LATENESS_MS), buckets=8)
NOW_MS = 1_731_300_000_000  # a fixed wall clock after the simulated run: everything runs on event time


def fixed_clock() -> int:
    return NOW_MS


@pytest.fixture(scope="module")
def flash_sale():
    sim = generate(("flash_sale",), seed=3, duration_ms=2 * HOUR, shoppers=50_000)
    records = [r for r in input_records(sim) if r.topic in ("orders", "inventory")]
    return records, sim.truth


def truth_levels(records):
    """The simulator's own rule, in event order: set =, restock/adjust +=, created -=, cancelled +=."""
    levels = {}
    for record in sorted(records, key=lambda r: r.timestamp_ms):
        event = orjson.loads(record.value)
        if record.topic == "inventory":
            key = (event["sku"], event.get("pool", "spot"))
            levels[key] = event["quantity"] if event["kind"] == "set" else levels.get(key, 0) + event["quantity"]
        elif event["status"] in ("created", "cancelled"):
            sign = -1 if event["status"] == "created" else 1
            for item in event["items"]:
                key = (item["sku"], item.get("pool", "spot"))
                levels[key] = levels.get(key, 0) + sign * item["quantity"]
    return levels


def run_stock(records, workers=1, batch_size=64):
    kafka_out, redis_out = [], []
    flow = build_flow(TestingSource(records, batch_size=batch_size), TestingSink(kafka_out), TestingSink(redis_out),
                      CONFIG, fixed_clock)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=workers)
    hashes = {}
    for write in redis_out:
        assert isinstance(write, ReplaceHash)
        hashes[write.key] = dict(write.fields)
    return kafka_out, hashes


def candidates(kafka_out):
    return [c for m in kafka_out if m.topic == "alert-candidates" if "progress" not in (c := orjson.loads(m.value))]


def assert_levels_equal_truth(hashes, records):
    for (sku, pool), level in truth_levels(records).items():
        field = "available" if pool == "spot" else "presale_available"
        assert hashes[f"stock:{sku}"][field] == level, (sku, pool)


@pytest.mark.parametrize("workers", [1, 2])
def test_final_levels_equal_the_truth_and_every_stockout_is_alerted(flash_sale, workers):
    records, truth = flash_sale
    kafka_out, hashes = run_stock(records, workers)

    assert_levels_equal_truth(hashes, records)
    outs = [(c["key"], c["ts"], c["active"]) for c in candidates(kafka_out) if c["rule"] == "stock.out"]
    expected = [(t.sku, t.ts, t.kind == "stockout") for t in truth if t.kind in ("stockout", "stock_restored")]
    assert sorted(expected) == sorted(outs)
    assert len(expected) >= 10
    assert not [c for c in candidates(kafka_out) if c["rule"] == "stock.oversell"]  # the simulator never oversells
    assert not [m for m in kafka_out if m.topic in ("alerts", "dead-letters")]

    flash = next(t for t in truth if t.kind == "incident")
    lows = {c["key"]: c for c in candidates(kafka_out) if c["rule"] == "stock.low" and c["active"]
            and c["detail"]["level"] in ("urgent", "out")}
    for sku in flash.detail["skus"]:
        assert lows[sku]["detail"]["replenish"]["quantity"] > 0


def test_level_changes_go_to_metrics_with_deterministic_ids(flash_sale):
    records, _ = flash_sale
    one, hashes = run_stock(records, 1)
    two, _ = run_stock(records, 2)
    levels = [orjson.loads(m.value) for m in one if m.topic == "metrics"]
    assert levels and all(m["metric"] == "stock_level" for m in levels)
    assert len({m["metric_id"] for m in levels}) == len(levels)
    # Progress markers follow the batching (one per batch that moved a bucket's clock): not results.
    assert sorted(m.value for m in one if b'"progress"' not in m.value) == sorted(
        m.value for m in two if b'"progress"' not in m.value)
    for m in levels:
        assert {"available", "reserved", "presale_available", "level", "updated_ts"} <= set(m)
    assert all(h["level"] in ("safe", "warning", "urgent", "out") for h in hashes.values())


@pytest.mark.parametrize("seed", [1, 2])
def test_reordered_within_the_lateness_the_ledger_is_still_exact(flash_sale, seed):
    records, _ = flash_sale
    rng = random.Random(seed)
    # Each event is delayed by up to 9 s (under the 10 s lateness): partitions and
    # producers interleave differently on a replay.
    shuffled = sorted(records, key=lambda r: r.timestamp_ms + rng.randrange(9_000))
    _, hashes = run_stock(shuffled, 1, batch_size=rng.choice([1, 16, 200]))
    assert_levels_equal_truth(hashes, records)
    _, reference = run_stock(records, 1)
    for key, fields in reference.items():
        assert (hashes[key]["available"], hashes[key]["reserved"], hashes[key]["presale_available"]) == (
            fields["available"], fields["reserved"], fields["presale_available"]), key


def test_bad_input_is_skipped_silently_and_other_topics_ignored():
    good = orjson.dumps({"event_id": "i1", "ts": 5, "sku": "A", "kind": "set", "quantity": 3})
    records = [
        InputRecord("inventory", 0, 0, b'{"broken', 0),
        InputRecord("inventory", 0, 1, good, 0),
        InputRecord("clickstream", 0, 0, b"{}", 0),
        InputRecord("orders", 0, 0, orjson.dumps({"event_id": "o", "ts": 6, "status": "created"}), 0),
    ]
    batches = triage_batch(records, CONFIG, NOW_MS)
    assert len(batches) == CONFIG.buckets
    assert sum(len(batch.lines) for _, batch in batches) == 1
    kafka_out, hashes = run_stock(records)
    assert hashes["stock:A"]["available"] == 3
    assert not [m for m in kafka_out if m.topic == "dead-letters"]


def test_config_reads_only_existing_settings():
    from shopstream.settings import Settings

    settings = Settings.from_env({"SHOPSTREAM_ALLOWED_LATENESS_S": "30", "SHOPSTREAM_PROCESSES": "4",
                                  "SHOPSTREAM_WORKERS_PER_PROCESS": "8"})
    config = StockConfig.from_settings(settings)
    assert config.rules.lateness_ms == 30_000 and config.buckets == 32
    assert config.rules == replace(StockRules(), lateness_ms=30_000)
