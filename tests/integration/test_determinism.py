"""Same input, same results: every flow together on the real broker and Redis.

One seeded simulation runs through the whole engine three times, each in its own
namespace: cleanly; with one clickstream partition starved (it delivers nothing for
seconds at a time while the others race ahead); and with three kill -9s while the
flows catch up. The outputs must be the same by id and body.

The input ends with a sentinel event far ahead in event time on every input
partition, so every window and deadline of the simulated hours closes on event time.
What happens after the sentinel is decided by wall time once everything is read,
so only results from before it are compared. The `alerts` flow's state changes are
compared too: the router holds every producer's candidates until each producer's
progress markers pass them (README: alerts). Left out: fields that record wall time.
"""

from __future__ import annotations

import pickle
import re
import signal
import sqlite3
from collections import defaultdict
from dataclasses import replace

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from shopstream import runner, services
from shopstream.runner import recovery_dir, start_flow, stop_all
from simulators import generate
from simulators.timeline import HOUR, parse_start
from state.kafka import read_topic
from tests.integration.kafka_helpers import produce, wait_until

pytestmark = pytest.mark.integration

START_MS = parse_start("2024-11-10T20:00+08:00")
DURATION_MS = 2 * HOUR
SENTINEL_MS = START_MS + DURATION_MS + 24 * HOUR
INPUT_TOPICS = ("clickstream", "orders", "payments", "inventory")
COMPARED_FLOWS = ("intake", "stock", "funnel", "coupons", "fraud", "churn", "traffic", "pricing", "order_success")
ALL_FLOWS = COMPARED_FLOWS + ("alerts",)
STARVED = ("clickstream", 0)

# The id of each output topic's records.
OUTPUT_IDS = {
    "alerts": "alert_id",
    "coupons": "coupon_id",
    "fraud-decisions": "decision_id",
    "churn-scores": "score_id",
    "metrics": "metric_id",
    "price-suggestions": "suggestion_id",
    "traffic-flags": "flag_id",
    "dead-letters": None,  # keyed by the event: (topic, partition, offset) is stable
}
# Redis keys not compared: the engine's own bookkeeping (`alerts:sent:*` is the dedupe
# mark of each `stream:alerts` entry, which is compared), and `fraud:ready:*`, a mailbox for
# the waiting payment service that expires 60 s of wall time after the decision (its
# decision stays in `fraud:decision:*`, which is compared).
SKIPPED_KEYS = ("alerts:sent:", "engine:", "flows:", "lag:", "fraud:ready:")
# Metrics restated under the same id as later input lands in their window: the latest wins,
# and how often a window was restated on the way depends on batching, so only the last counts.
RESTATED_METRICS = {"traffic"}
# Fields that record when something happened on the wall clock, not in the input.
WALL_TIME_FIELDS = {"decided_at", "updated_at", "updated_ts", "latency_ms", "emitted_at", "written_at"}


@pytest.fixture(scope="module")
def simulation():
    return generate(("flash_sale", "card_testing", "payment_outage", "brushing"), seed=11, start_ms=START_MS,
                    duration_ms=DURATION_MS, shoppers=20_000)


def namespace(settings, name: str):
    isolated = replace(settings, topic_prefix=f"{settings.topic_prefix}{name}.",
                       redis_prefix=f"{settings.redis_prefix}{name}:",
                       recovery_dir=settings.recovery_dir / name)
    services.create_topics(isolated)
    return isolated


def sentinels(partition: int) -> dict[str, dict]:
    """One valid event per input topic, a day after the simulation, for `partition`."""
    user, session, sku = f"zz-sentinel-u{partition}", f"zz-sentinel-s{partition}", f"zz-sentinel-sku{partition}"
    common = {"ts": SENTINEL_MS, "user_id": user}
    return {
        "clickstream": {**common, "event_id": f"zz-c{partition}", "type": "page_view", "session_id": session,
                        "channel": "app", "region": "beijing", "device": "ios"},
        "orders": {**common, "event_id": f"zz-o{partition}", "order_id": f"zz-o{partition}", "session_id": session,
                   "status": "created", "items": [{"sku": sku, "quantity": 1, "unit_price": 1.0, "pool": "spot"}],
                   "amount": 1.0, "currency": "CNY", "channel": "app", "region": "beijing", "shipping_fee": 0.0},
        "payments": {**common, "event_id": f"zz-p{partition}", "payment_id": f"zz-p{partition}",
                     "order_id": f"zz-o{partition}", "status": "requested", "amount": 1.0, "currency": "CNY",
                     "method": "alipay", "device_id": "zz-device", "ip": "10.0.0.1", "country": "CN",
                     "account_created_ts": START_MS},
        "inventory": {"event_id": f"zz-i{partition}", "ts": SENTINEL_MS, "sku": sku, "kind": "set", "quantity": 5,
                      "pool": "spot", "warehouse": "wh-north", "safety_stock": 1},
    }


def produce_input(settings, simulation) -> None:
    by_topic = defaultdict(list)
    for event in simulation:
        by_topic[event.topic].append((event.key, event.value))
    for topic, messages in by_topic.items():
        produce(settings, topic, messages)
    producer = Producer(settings.kafka_config())
    for partition in range(settings.topic_partitions):
        for topic, event in sentinels(partition).items():
            producer.produce(settings.topic(topic), orjson.dumps(event), key=b"zz", partition=partition)
    assert producer.flush(30) == 0


def end_offsets(settings) -> dict[str, int]:
    consumer = Consumer({**settings.kafka_config(), "group.id": "determinism-check"})
    try:
        ends = {}
        for topic in INPUT_TOPICS + ("prices", "traffic-flags", "alert-candidates", "metrics"):
            for partition in range(settings.topic_partitions):
                _, high = consumer.get_watermark_offsets(TopicPartition(settings.topic(topic), partition), timeout=10)
                ends[f"{partition}-{settings.topic(topic)}"] = high
        return ends
    finally:
        consumer.close()


def committed_offsets(settings, flow: str) -> dict[str, int]:
    """The input offsets in the flow's last committed snapshot, by `{partition}-{topic}`."""
    input_key = re.compile(rf"^\d+-{re.escape(settings.topic_prefix)}")
    offsets = {}
    for part in recovery_dir(settings, flow).glob("part-*.sqlite3"):
        with sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5) as db:
            committed = db.execute("SELECT COALESCE(MIN(commit_epoch), 0) FROM commits").fetchone()[0]
            rows = db.execute(
                "SELECT state_key, ser_change FROM snaps WHERE snap_epoch <= ? ORDER BY snap_epoch", (committed,)
            ).fetchall()
        for state_key, change in rows:
            if input_key.match(state_key) and change is not None:
                offsets[state_key] = pickle.loads(change)
    return offsets


def committed_total(settings) -> int:
    """Input offsets committed by every compared flow together: grows with any flow's progress."""
    return sum(max(offset, 0) for flow in COMPARED_FLOWS for offset in committed_offsets(settings, flow).values())


def behind(settings, flows, ends: dict[str, int] | None = None) -> dict[str, dict[str, tuple[int, int]]]:
    """Per flow not yet done: its input partitions whose committed offset is short of the end
    (`ends`, or the partitions' ends now)."""
    ends = ends or end_offsets(settings)
    found = {}
    for flow in flows:
        offsets = committed_offsets(settings, flow)
        # A negative offset is Kafka's "from the beginning": nothing read yet, which is the
        # end of an empty partition (no prices are simulated).
        short = {key: (offset, ends[key]) for key, offset in offsets.items() if max(offset, 0) < ends[key]}
        if short or not offsets:
            found[flow] = short
    return found


def caught_up(settings, flows) -> bool:
    return not behind(settings, flows)


def start_engine(settings, starved: bool = False) -> list:
    settings = runner.with_alert_producers(settings, list(ALL_FLOWS))  # as `shopstream run` does
    processes = []
    for flow in ALL_FLOWS:
        module = runner.FLOWS[flow].split(":")[0]
        if starved:
            topic, partition = STARVED
            runner.FLOWS[flow] = f"tests.integration.stalled_flows:stalled({module!r}, {topic!r}, {partition})"
        try:
            processes += start_flow(settings, flow)
        finally:
            runner.FLOWS[flow] = f"{module}:flow"
    return processes


def run_to_end(settings, processes, timeout_s: float = 240) -> None:
    try:
        try:
            wait_until(lambda: caught_up(settings, COMPARED_FLOWS), timeout_s,
                       "every flow to read its input to the end", interval_s=1.0)
            # Then the router: its input is what the others wrote by now. Not the moving end:
            # idle producers still send a progress marker a second, so the end never stops.
            written = end_offsets(settings)
            wait_until(lambda: not behind(settings, ("alerts",), written), 120,
                       "the alerts flow to read its input to the end", interval_s=0.5)
        except TimeoutError as timeout:
            raise TimeoutError(f"{timeout}; still behind: {behind(settings, COMPARED_FLOWS)}") from None
        assert all(p.popen.poll() is None for p in processes), "a flow exited"
    finally:
        stop_all(processes)


def event_time(record: dict) -> int | None:
    for field in ("window_end", "ts"):
        if isinstance(record.get(field), int):
            return record[field]
    return None


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in WALL_TIME_FIELDS}


def kafka_outputs(settings) -> dict[str, dict[str, set]]:
    """Per output topic: id -> every distinct body seen (a restart may repeat an id); for
    restated metrics, the latest body (they are keyed by id, so the topic keeps their order)."""
    outputs = {}
    for topic, id_field in OUTPUT_IDS.items():
        by_id = defaultdict(set)
        for key, value in read_topic(settings, topic):
            record = orjson.loads(value)
            time = event_time(record)
            if time is not None and time >= SENTINEL_MS:
                continue
            record_id = record[id_field] if id_field else (key or b"").decode() + orjson.dumps(record).decode()
            body = orjson.dumps(comparable(record), option=orjson.OPT_SORT_KEYS)
            if record.get("metric") in RESTATED_METRICS:
                by_id[record_id] = {body}
            else:
                by_id[record_id].add(body)
        outputs[topic] = dict(by_id)
    return outputs


def without_wall_time(value: bytes) -> bytes:
    """A JSON object's value without its wall-time fields; anything else as it is."""
    if not value.startswith(b"{"):
        return value
    return orjson.dumps(comparable(orjson.loads(value)), option=orjson.OPT_SORT_KEYS)


def after_sentinel(value: bytes) -> bool:
    """An alert (in `alerts:active` or `stream:alerts`) stamped after the sentinel."""
    if not value.startswith(b'{"alert_id"'):
        return False
    return orjson.loads(value)["ts"] >= SENTINEL_MS


def redis_outputs(settings, client) -> dict[str, object]:
    prefix = settings.redis_key("").encode()
    out = {}
    for key in client.scan_iter(settings.redis_key("*"), count=1000):
        name = key[len(prefix):].decode()
        if name.startswith(SKIPPED_KEYS) or "zz-sentinel" in name:
            continue  # the sentinels' own keys are decided after the sentinel: by wall time
        kind = client.type(key)
        if kind == b"string":
            value = client.get(key)
            if name.startswith("alerts:group:") and orjson.loads(value)["ts"] >= SENTINEL_MS:
                continue  # decided after the sentinel
            out[name] = without_wall_time(value)
        elif kind == b"hash":
            out[name] = {k: v for k, v in client.hgetall(key).items()
                         if k.decode() not in WALL_TIME_FIELDS and not after_sentinel(v)}
        elif kind == b"zset":
            out[name] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"stream":  # entry ids are wall time; the entries, in any order, are the result
            out[name] = sorted(sorted(fields.items()) for _, fields in client.xrange(key)
                               if not after_sentinel(fields.get(b"alert", b"")))
        elif kind == b"set":
            out[name] = sorted(client.smembers(key))
        elif kind == b"list":
            out[name] = [without_wall_time(item) for item in client.lrange(key, 0, -1)]
    return out


def single_bodies(outputs):
    """The outputs of a run without restarts: each id once, with one body."""
    for topic, by_id in outputs.items():
        repeated = [i for i, bodies in by_id.items() if len(bodies) != 1]
        assert not repeated, f"{topic}: {len(repeated)} ids with several bodies, e.g. {repeated[:3]}"
    return {topic: {i: next(iter(b)) for i, b in by_id.items()} for topic, by_id in outputs.items()}


def differences(expected: dict, actual: dict) -> list[str]:
    """What differs, output by output: counts and a few examples, to read in a failure."""
    found = []
    for name in sorted(set(expected) | set(actual)):
        want, got = expected.get(name), actual.get(name)
        if want == got:
            continue
        if isinstance(want, dict) and isinstance(got, dict) and name in OUTPUT_IDS:
            changed = [i for i in want.keys() & got.keys() if want[i] != got[i]]
            found.append(f"{name}: {len(want.keys() - got.keys())} missing, {len(got.keys() - want.keys())} extra, "
                         f"{len(changed)} changed of {len(want)}; e.g. "
                         + "; ".join(f"{want[i]!r} became {got[i]!r}" for i in changed[:2]))
        else:
            found.append(f"{name}: {want!r:.300} became {got!r:.300}")
    return found


def families(found: list[str]) -> str:
    """How many differences per key family (`stock`, `funnel`, ...): the shape of a failure."""
    counts = defaultdict(int)
    for line in found:
        counts[re.split(r"[:.]", line, maxsplit=1)[0]] += 1
    return ", ".join(f"{family} {count}" for family, count in sorted(counts.items()))


def flagged_users(kafka: dict) -> set[str]:
    """Accounts the traffic flow flagged in the clean run."""
    return {orjson.loads(body)["user_id"] for body in kafka["traffic-flags"].values()}


def without_churn_of(users: set[str], outputs: dict) -> dict:
    """Kafka or Redis outputs without the churn results of `users`: a known gap. Churn takes a
    flagged order back out of RFM when the flag arrives, and flags come when the traffic flow
    finds the ring, at its own pace (README, Tests), so those customers' scores depend on it."""
    kept = {}
    for name, value in outputs.items():
        if name.startswith("churn:") and name.removeprefix("churn:") in users:
            continue
        if name == "churn-scores":
            value = {i: body for i, body in value.items() if orjson.loads(body)["user_id"] not in users}
        kept[name] = value
    return kept


def assert_same(expected: dict, actual: dict, what: str) -> None:
    found = differences(expected, actual)
    assert not found, f"{what}: {len(found)} outputs differ ({families(found)}):\n" + "\n".join(found[:40])


@pytest.fixture(scope="module")
def clean_run(service_settings, simulation, tmp_path_factory):
    from state.redis_store import connect

    # No lag poller: lag alerts are wall time by nature (and the flows serve no dataflow API here).
    settings = replace(service_settings, topic_prefix="det.", redis_prefix="det:", snapshot_interval_s=2,
                       flow_api_port_base=0,
                       recovery_dir=tmp_path_factory.mktemp("determinism"))
    clean = namespace(settings, "clean")
    produce_input(clean, simulation)
    run_to_end(clean, start_engine(clean))
    client = connect(clean)
    try:
        return settings, single_bodies(kafka_outputs(clean)), redis_outputs(clean, client)
    finally:
        client.close()


def test_the_clean_run_decides_something_in_every_output(clean_run):
    _, kafka, redis = clean_run
    assert len(kafka["coupons"]) > 10 and len(kafka["fraud-decisions"]) > 100 and kafka["churn-scores"]
    metrics = {orjson.loads(body)["metric"] for body in kafka["metrics"].values()}
    assert {"input", "funnel", "kpi", "fraud", "stock_level"} <= metrics
    assert kafka["alerts"] and redis.get("stream:alerts"), "no alert state change to compare"
    assert any(name.startswith("funnel:") for name in redis) and any(name.startswith("stock:") for name in redis)
    # The churn of flagged accounts is left out of the comparisons (a known gap); most is compared.
    customers = [name for name in redis if name.startswith("churn:")]
    assert 0 < len(flagged_users(kafka) & {name.removeprefix("churn:") for name in customers}) < len(customers) / 5


def test_a_starved_partition_changes_no_result(clean_run, simulation):
    from state.redis_store import connect

    settings, kafka, redis = clean_run
    starved = namespace(settings, "starved")
    produce_input(starved, simulation)
    run_to_end(starved, start_engine(starved, starved=True), timeout_s=420)
    client = connect(starved)
    flagged = flagged_users(kafka)
    try:
        assert_same(without_churn_of(flagged, kafka), without_churn_of(flagged, single_bodies(kafka_outputs(starved))),
                    "Kafka, starved run")
        assert_same(without_churn_of(flagged, redis), without_churn_of(flagged, redis_outputs(starved, client)),
                    "Redis, starved run")
    finally:
        client.close()


def test_three_kill_9s_while_catching_up_change_no_result(clean_run, simulation):
    from state.redis_store import connect

    settings, kafka, redis = clean_run
    crashed = namespace(settings, "crashed")
    produce_input(crashed, simulation)
    for _ in range(3):
        read_before = committed_total(crashed)
        processes = start_engine(crashed)
        try:
            # Killed once some flow committed progress of this run, before every flow is done. Any
            # flow: one that finished in an earlier round (the funnel is fast) has nothing new to commit.
            wait_until(lambda: committed_total(crashed) > read_before, 240,
                       "a flow to commit a snapshot of new progress", interval_s=0.2)
            assert not caught_up(crashed, COMPARED_FLOWS), "the input is too small to crash while catching up"
        finally:
            for proc in processes:
                proc.popen.send_signal(signal.SIGKILL)
                proc.popen.wait()
    run_to_end(crashed, start_engine(crashed))
    client = connect(crashed)
    flagged = flagged_users(kafka)
    try:
        repeated = kafka_outputs(crashed)
        for topic, by_id in repeated.items():
            changed = [i for i, bodies in by_id.items() if len(bodies) > 1]
            assert not changed, f"{topic}: a restart changed the body of {changed[:3]}"
        assert_same(without_churn_of(flagged, kafka), without_churn_of(flagged, single_bodies(repeated)),
                    "Kafka after kill -9s")
        assert_same(without_churn_of(flagged, redis), without_churn_of(flagged, redis_outputs(crashed, client)),
                    "Redis after kill -9s")
    finally:
        client.close()
