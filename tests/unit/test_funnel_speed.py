"""What the funnel's speed-ups must not change: triage reads common clicks without their
`ClickEvent`, yet gives the same bucket batches as decoding every record; and closing
windows skips the scan of waiting orders only while none of them can be due."""

import random
import zlib

import json

import orjson

from flows.funnel import _FUNNEL_RECORDS, BucketBatch, FunnelConfig, triage_batch
from operators.clock import Progress
from operators.funnel import ORDER, ORDER_CREATED, FunnelBucket, FunnelEvent, FunnelRules, funnel_event
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import HOUR
from state.inputs import decode_record
from tests.unit.test_stock_speed import ODD_VALUES

MINUTE = 60_000
T0 = 1_763_683_200_000


def triage_by_decoding_every_record(records, config, now_ms):
    """The funnel's triage as it was: every record through the checked decoder."""
    latest_ts_ms = now_ms + config.max_event_ahead_ms
    per_bucket = [[] for _ in range(config.buckets)]
    progress = Progress()
    for record in records:
        event = decode_record(record, latest_ts_ms)
        if type(event) not in _FUNNEL_RECORDS:
            continue
        progress.saw((record.topic, record.partition), event.ts)
        item = funnel_event(event)
        if item is not None:
            per_bucket[zlib.crc32(item.user_id.encode()) % config.buckets].append(item)
    if not progress:
        return []
    return [(str(i), BucketBatch(str(i), events, progress)) for i, events in enumerate(per_bucket)]


def mutated_clicks(records, rnd):
    """Clicks with odd values, missing fields, bad JSON, no value, and a far-future time."""
    out = []
    for record in records:
        if record.topic != "clickstream" or rnd.random() < 0.6:
            out.append(record)
            continue
        obj = orjson.loads(record.value)
        name = rnd.choice([*obj, "price", "quantity", "experiment", "ts", "type"])
        roll = rnd.random()
        if roll < 0.05:
            value = b"{not json"
        elif roll < 0.08:
            value = None
        elif roll < 0.12:
            value = orjson.dumps({**obj, "ts": obj["ts"] + 10 * 365 * 24 * HOUR})
        elif roll < 0.2:
            obj.pop(name, None)
            value = orjson.dumps(obj)
        else:
            value = json.dumps({**obj, name: rnd.choice(ODD_VALUES + [{"exp": "a"}, {"exp": 1}])}).encode()
        out.append(record._replace(value=value))
    return out


def test_triage_gives_the_bucket_batches_of_the_checked_decoder():
    sim = generate(("double11",), seed=5, duration_ms=HOUR, shoppers=20_000)
    records = [r for r in input_records(sim) if r.topic in ("clickstream", "orders", "payments")][:20_000]
    records = mutated_clicks(records, random.Random(3))
    config = FunnelConfig(max_event_ahead_ms=HOUR)
    now_ms = max(r.timestamp_ms for r in records)
    batches = [records[i:i + 500] for i in range(0, len(records), 500)]
    fast = [triage_batch(batch, config, now_ms) for batch in batches]
    checked = [triage_by_decoding_every_record(batch, config, now_ms) for batch in batches]
    assert fast == checked
    events = sum(len(batch.events) for out in fast for _, batch in out)
    assert 10_000 < events < len(records)  # most records count; the broken ones do not


def order(minute, user, order_id):
    return FunnelEvent(T0 + minute * MINUTE + 1000, ORDER_CREATED, user, None, order_id, ORDER, 0.0, "app")


def test_orders_without_a_session_wait_until_their_own_window_closes():
    rules = FunnelRules(window_ms=MINUTE, lateness_ms=0)
    bucket = FunnelBucket("0", rules)
    source = ("orders", 0)

    def read(orders, through_ms):
        """The orders, and the stream read through `through_ms` (events wait for the watermark)."""
        return bucket.add(orders, Progress({source: through_ms}), 0)

    read([order(0, "early", "o0")], T0 + 1001)
    read([], T0 + 30_000)
    assert set(bucket.unjoined) == {"early"}  # its window is open: a session may still come
    assert bucket.unjoined_due_ms <= T0 + MINUTE  # the earliest waiting window's end, or lower

    read([order(1, "next", "o1")], T0 + MINUTE + 1001)  # window 0 closed: its order counts without a session
    assert set(bucket.unjoined) == {"next"}
    assert bucket.unjoined_due_ms == T0 + 2 * MINUTE

    read([order(0, "later", "o9")], T0 + MINUTE + 1002)  # late: counted as a correction
    assert set(bucket.unjoined) == {"next"}  # not waiting: its window has closed
    reports = read([order(3, "last", "o3")], T0 + 3 * MINUTE + 1001)
    assert set(bucket.unjoined) == {"last"}
    assert bucket.unjoined_due_ms == T0 + 4 * MINUTE
    closed = {p.window_start: p for report in reports for p in report.partials}
    assert sum(t[1] for t in closed[T0 + MINUTE].kpi.values()) == 1  # the order of window 1

    bucket.flush()
    assert not bucket.unjoined
