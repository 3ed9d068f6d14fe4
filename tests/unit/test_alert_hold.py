"""The alert router's hold: candidates from several producers, however they interleave on
`alert-candidates`, give the same state changes (operators/alert_hold.py)."""

from __future__ import annotations

import random

import orjson
from bytewax.testing import TestingSource, TestingSink, run_main

from flows.alerts import AlertsConfig, AlertingState, alerting_for, build_flow
from operators.alert_hold import ProgressMarker, ReleaseGate, Sourced
from operators.alert_router import ActiveAlert, AlertMessage, RouterConfig
from operators.alerts import AlertCandidate
from state.alert_candidates import Produced, candidate_message, decode_record
from state.kafka import InputRecord

MINUTE = 60_000
T0 = 1_763_683_200_000
NOW_MS = 1_000  # a fixed wall clock: only event time moves
ROUTER = RouterConfig(escalate_after_ms=5 * MINUTE, warning_limit_ms=30 * MINUTE, reminder_ms=0,
                      group_wait_ms=10_000, group_interval_ms=MINUTE, rule_max_per_min=2)
HELD = AlertsConfig(router=ROUTER, producers=("fraud", "stock"), producer_timeout_ms=60_000)
UNHELD = AlertsConfig(router=ROUTER)


def candidate(minute: float, rule: str, key: str, active: bool = True, severity: str = "critical") -> AlertCandidate:
    return AlertCandidate(ts=T0 + int(minute * MINUTE), rule=rule, key=key, active=active, severity=severity,
                          summary=f"{rule} {key}")


def shard_records(producer: str, shard: str, shards: int, steps) -> list[bytes]:
    """One producer shard's records in its own order: candidates, then its marker."""
    out = []
    for item in steps:
        if isinstance(item, AlertCandidate):
            out.append(candidate_message(Produced(producer, shard, item)).value)
        else:
            out.append(candidate_message(ProgressMarker(producer, shard, shards, T0 + int(item * MINUTE))).value)
    return out


# Three shards (stock has two) whose candidates overlap in event time: out-of-stock storms
# on stock's shards that escalate, and a fraud spike that opens and clears between them.
SHARDS = {
    ("stock", "0"): shard_records("stock", "0", 2, [
        candidate(1, "stock.out", "sku-1"), candidate(1.5, "stock.out", "sku-2"), 2,
        candidate(6, "stock.out", "sku-4"), candidate(6, "stock.out", "sku-5"), 10,
        candidate(12, "stock.out", "sku-1", active=False), 20,
    ]),
    ("stock", "1"): shard_records("stock", "1", 2, [
        5, candidate(7, "stock.out", "sku-3"), candidate(7, "stock.out", "sku-6"), 9,
        candidate(13, "stock.out", "sku-3", active=False), 20,
    ]),
    ("fraud", "0"): shard_records("fraud", "0", 1, [
        candidate(3, "fraud.spike", "payments"), 4, 8,
        candidate(9, "fraud.spike", "payments", active=False), candidate(11, "fraud.spike", "payments"), 20,
    ]),
}


def interleave(order: list[tuple[str, str]]) -> list[bytes]:
    """The shards' records merged in the order `order` names shards (each keeps its own order)."""
    queues = {shard: list(records) for shard, records in SHARDS.items()}
    out = [queues[shard].pop(0) for shard in order]
    assert not any(queues.values())
    return out


def interleavings() -> dict[str, list[bytes]]:
    counts = {shard: len(records) for shard, records in SHARDS.items()}
    round_robin = []
    while any(counts.values()):
        for shard in SHARDS:
            if counts[shard]:
                round_robin.append(shard)
                counts[shard] -= 1
    stock_first = [s for s in SHARDS for _ in SHARDS[s] if s[0] == "stock"] + [("fraud", "0")] * len(SHARDS[("fraud", "0")])
    fraud_first = [("fraud", "0")] * len(SHARDS[("fraud", "0")]) + [s for s in SHARDS for _ in SHARDS[s] if s[0] == "stock"]
    out = {"round robin": interleave(round_robin), "fraud starved, then catching up": interleave(stock_first),
           "stock starved, then catching up": interleave(fraud_first)}
    for seed in range(3):
        shuffled = list(round_robin)
        random.Random(seed).shuffle(shuffled)
        out[f"shuffled {seed}"] = interleave(shuffled)
    return out


def route(values: list[bytes], config: AlertsConfig, now_ms: int = NOW_MS) -> tuple[list[dict], dict]:
    """Every record through the alerting state one by one: the alerts and `alerts:active`."""
    state = alerting_for(None, config, now_ms)
    outputs = []
    for value in values:
        outputs.extend(state.step(decode_record(value), now_ms, lambda keys: {}))
    return summary(outputs)


def summary(outputs) -> tuple[list[dict], dict]:
    alerts = [o.to_dict() for o in outputs if isinstance(o, AlertMessage)]
    active = {}
    for o in outputs:
        if isinstance(o, ActiveAlert):
            active[o.dedup_key] = None if o.alert is None else o.alert.to_dict()
    return alerts, active


def test_every_interleaving_of_the_producers_gives_the_same_state_changes():
    results = {name: route(values, HELD) for name, values in interleavings().items()}
    expected = results["round robin"]
    alerts, active = expected
    assert {a["status"] for a in alerts} == {"firing", "escalated", "resolved"}  # the scenario exercises them all
    assert any("group" in a for a in alerts)  # and the storm budget
    for name, result in results.items():
        assert result == expected, name


def test_without_the_hold_the_interleaving_changes_the_state_changes():
    """What the hold fixes: the router's clock follows the fastest producer."""
    results = {name: route(values, UNHELD) for name, values in interleavings().items()}
    assert len({orjson.dumps(result) for result in results.values()}) > 1


def test_the_flow_gives_the_same_alerts_however_the_source_batches():
    def run(values, batch_size):
        records = [InputRecord("alert-candidates", 0, offset, value, 0, None) for offset, value in enumerate(values)]
        kafka_out, redis_out = [], []
        run_main(build_flow(TestingSource(records, batch_size=batch_size), TestingSink(kafka_out),
                            TestingSink(redis_out), HELD, lambda: NOW_MS))
        return [orjson.loads(m.value) for m in kafka_out if m.topic == "alerts"]

    runs = [run(values, size) for values in list(interleavings().values())[:3] for size in (1, 4, 50)]
    assert runs[0] and all(r == runs[0] for r in runs)


def test_a_producer_that_has_not_heard_from_every_shard_holds_everything():
    fraud = SHARDS[("fraud", "0")]
    only_shard_0 = SHARDS[("stock", "0")]  # stock says it has 2 shards; shard 1 never reported
    alerts, active = route(fraud + only_shard_0, HELD)
    assert alerts == [] and active == {}


def test_a_silent_producer_is_left_out_after_the_timeout_and_waited_for_again_when_back():
    state = alerting_for(None, HELD, NOW_MS)
    no_acks = lambda keys: {}  # noqa: E731
    heard = NOW_MS + 30_000
    for value in SHARDS[("fraud", "0")]:
        assert state.step(decode_record(value), heard, no_acks) == []  # stock has not reported: all held
    assert state.next_wake_ms(heard) == NOW_MS + 60_000  # when stock times out
    assert state.advance(NOW_MS + 59_999, no_acks) == []
    released, _ = summary(state.advance(NOW_MS + 60_000, no_acks))
    assert [(a["dedup_key"], a["status"]) for a in released][:2] == [
        ("fraud.spike:payments", "firing"), ("fraud.spike:payments", "escalated")]
    # Stock comes back: its records are waited for again, from where fraud got to.
    later = NOW_MS + 61_000
    back = shard_records("stock", "0", 1, [candidate(30, "stock.out", "sku-9"), 31])
    assert state.step(decode_record(back[0]), later, no_acks) == []
    assert state.step(decode_record(back[1]), later, no_acks) == []  # fraud's 20 min is the release point
    more = shard_records("fraud", "0", 1, [40])
    alerts, _ = summary(state.step(decode_record(more[0]), later, no_acks))
    assert [(a["dedup_key"], a["status"]) for a in alerts] == [("stock.out:sku-9", "firing")]


def test_a_restarted_producer_repeats_nothing():
    """After a crash a producer re-sends what followed its last snapshot: records its shard
    already passed are dropped, and a held record sent twice counts once."""
    values = interleavings()["round robin"]
    stock0 = SHARDS[("stock", "0")]
    replayed = values + stock0[:4] + values[-1:]
    assert route(replayed, HELD) == route(values, HELD)
    twice = list(values)
    twice.insert(twice.index(stock0[4]) + 1, stock0[4])  # sku-5 at 6 min, sent again before its marker
    assert route(twice, HELD) == route(values, HELD)


def test_candidates_without_a_producer_or_from_one_not_expected_apply_at_once():
    flow_down = candidate_message(candidate(0, "engine.flow_down", "stock")).value  # the runner's, on wall time
    other = candidate_message(Produced("pricing", "0", candidate(0, "price.undercut", "sku-1"))).value
    alerts, active = route([flow_down, other], HELD)
    assert [a["dedup_key"] for a in alerts] == ["engine.flow_down:stock"]  # not grouped: pages at once
    assert set(active) == {"engine.flow_down:stock", "price.undercut:sku-1"}  # the other waits for its group


def test_without_expected_producers_markers_change_nothing():
    values = interleavings()["round robin"]
    plain = [candidate_message(decode_record(v).item).value for v in values if b'"progress"' not in v]
    assert route(values, UNHELD) == route(plain, UNHELD)


def test_the_gate_never_moves_its_release_point_back():
    gate = ReleaseGate.start(("fraud",), 60_000, NOW_MS)
    gate.offer(ProgressMarker("fraud", "0", 1, T0 + 100), NOW_MS)
    assert gate.point(NOW_MS) == (True, T0 + 100)
    gate.offer(ProgressMarker("fraud", "0", 1, T0 + 50), NOW_MS)  # a restarted shard starts from its snapshot
    assert gate.point(NOW_MS) == (True, T0 + 100)
    late = Sourced("fraud", "0", candidate(0, "fraud.spike", "payments"))
    assert gate.offer(late, NOW_MS) is None and gate.dropped == 1


def test_a_snapshot_keeps_what_the_hold_holds():
    """Held candidates are snapshot state (a detail map included)."""
    import copy
    import pickle

    state = alerting_for(None, HELD, NOW_MS)
    held = AlertCandidate(ts=T0, rule="stock.out", key="sku-1", active=True, severity="critical", summary="out",
                          detail={"suggested_restock": 40})
    state.step(decode_record(candidate_message(Produced("stock", "0", held)).value), NOW_MS, lambda keys: {})
    for restored in (copy.deepcopy(state), pickle.loads(pickle.dumps(state))):
        assert [entry[-1].item for entry in restored.gate.held] == [held]
