"""The engine's outputs: decisions as docs/contract.md, flags, metrics, the spike alert, privacy."""

import logging
import pickle

from operators.fraud_engine import FraudConfig, FraudEngine
from operators.pseudonym import Pseudonymizer
from tests.unit.fraud_streams import DAY, MINUTE, SECOND, T0, outcome, payment

KEY = "k" * 32
NOW = T0 + 1000 * DAY  # a wall clock long after the stream: windows close on event time


def engine(**overrides) -> FraudEngine:
    defaults = dict(label_horizon_ms=10 * DAY, lateness_ms=0, metrics_window_ms=MINUTE)
    defaults.update(overrides)
    return FraudEngine(FraudConfig(**defaults), Pseudonymizer(KEY))


def test_a_decision_per_requested_payment_with_the_contract_fields():
    e = engine()
    request = payment(T0, payment_id="pay-1", user="u-1")
    out = e.process([request, outcome(request, T0 + 500, "succeeded")], NOW)
    assert len(out.decisions) == 1
    body = out.decisions[0].to_dict()
    assert set(body) == {"decision_id", "ts", "payment_id", "order_id", "user_id", "decision", "score",
                         "reasons", "model_version", "decided_at"}
    assert body["decision_id"] == "fd-pay-1" and body["ts"] == T0 and body["decided_at"] == NOW
    assert body["decision"] == "approve" and body["reasons"] == [] and body["model_version"] == "lr-v0+0"


def test_a_repeated_request_is_not_decided_again():
    e = engine()
    request = payment(T0, payment_id="pay-dup")
    assert len(e.process([request], NOW).decisions) == 1
    assert e.process([request], NOW).decisions == []


def test_blocks_and_chargebacks_flag_the_user_for_the_coupon_flows():
    e = engine()
    out = None
    for n in range(6):
        out = e.process([payment(T0 + n * SECOND, card=f"c{n}", device="bot", user="tester", amount=2.0)], NOW)
    assert out.decisions[0].decision == "block"
    assert [(f.user_id, f.reason) for f in out.flags] == [("tester", "blocked")]
    request = payment(T0 + MINUTE, user="honest-looking")
    e.process([request, outcome(request, T0 + MINUTE + SECOND, "succeeded")], NOW)
    out = e.process([outcome(request, T0 + 5 * DAY, "chargeback")], NOW)
    assert [(f.user_id, f.reason, f.ts) for f in out.flags] == [("honest-looking", "chargeback", T0 + 5 * DAY)]


def test_window_metrics_count_decisions_and_label_quality():
    e = engine()
    fraud = payment(T0, user="thief", amount=5000.0)
    good = payment(T0 + SECOND, user="good", amount=50.0)
    e.process([fraud, good, outcome(fraud, T0 + 2 * SECOND, "succeeded"),
               outcome(good, T0 + 2 * SECOND, "succeeded")], NOW)
    for n in range(6):  # a card-testing burst in the same minute
        e.process([payment(T0 + 10 * SECOND + n, card=f"c{n}", device="bot", ip="9.9.9.9", user="b", amount=1.0)], NOW)
    out = e.process([payment(T0 + 2 * MINUTE, user="later")], NOW)
    first = out.metrics[0]
    assert first["metric"] == "fraud" and first["window_start"] == T0 - T0 % MINUTE
    assert (first["requested"], first["approved"], first["blocked"]) == (8, 6, 2)
    assert first["blocked_amount"] == 2.0
    e.process([outcome(fraud, T0 + 3 * DAY, "chargeback")], NOW)
    e.process([payment(T0 + 11 * DAY, user="much-later")], NOW)
    out = e.process([payment(T0 + 11 * DAY + 2 * MINUTE, user="closes-the-window")], NOW)
    quality = out.metrics[-1]
    assert quality["labelled_fraud"] == 1 and quality["recall"] == 0.0  # the fraud was approved
    assert quality["labelled_legit"] == 1 and quality["false_block_rate"] == 0.0


def test_a_card_testing_attack_raises_and_clears_fraud_spike():
    e = engine(spike_min_blocks=5, spike_factor=5.0)
    candidates = []
    ts = T0
    for minute in range(10):  # quiet minutes: ordinary payments, no blocks
        for n in range(5):
            candidates += e.process([payment(ts + minute * MINUTE + n * SECOND, user=f"u{minute}-{n}",
                                             card=f"c{minute}-{n}", device=f"d{minute}-{n}", ip=None)], NOW).candidates
    attack = T0 + 10 * MINUTE
    for n in range(30):
        candidates += e.process([payment(attack + n * SECOND, card=f"stolen{n}", device="bot", ip="6.6.6.6",
                                         user=f"bot{n}", amount=1.0)], NOW).candidates
    for minute in range(11, 14):
        candidates += e.process([payment(T0 + minute * MINUTE, user=f"calm{minute}", card=f"k{minute}",
                                         device=f"e{minute}", ip=None)], NOW).candidates
    assert [(c.rule, c.key, c.active) for c in candidates] == [("fraud.spike", "payments", True),
                                                                ("fraud.spike", "payments", False)]
    assert candidates[0].value == 26 and "card testing" in candidates[0].summary


def test_windows_close_by_wall_clock_when_input_stops():
    e = engine(lateness_ms=10 * SECOND)
    wall = T0 + 5 * SECOND
    e.process([payment(T0 + SECOND)], wall)
    assert e.advance(wall).metrics == []
    wake = e.next_wake_ms(wall)
    assert wake is not None and wake <= wall + MINUTE + 10 * SECOND
    assert len(e.advance(wake).metrics) == 1


def test_no_card_number_name_or_address_is_kept_and_logs_are_pseudonymous(caplog):
    e = engine()
    request = payment(T0, user="alice@example.com", card="fp-123")
    e.process([request, outcome(request, T0 + SECOND, "succeeded")], NOW)
    with caplog.at_level(logging.DEBUG, logger="operators.fraud_engine"):
        e.process([outcome(request, T0 + DAY, "chargeback")], NOW)
        for n in range(6):
            e.process([payment(T0 + DAY + n, card=f"c{n}", device="bot", user="alice@example.com")], NOW)
    assert caplog.records and all("alice" not in r.getMessage() for r in caplog.records)
    assert Pseudonymizer(KEY)("alice@example.com") in caplog.text
    state = pickle.dumps(e)
    assert b"card_last4" not in state and b"card_bin" not in state and b"billing" not in state


def test_pseudonyms_are_stable_per_key_and_differ_across_keys():
    a, b = Pseudonymizer(KEY), Pseudonymizer("another-secret-key-123")
    assert a("u1") == a("u1") != a("u2")
    assert a("u1") != b("u1") and "u1" not in a("u1")
    assert KEY not in repr(a)


def test_catching_up_decides_the_same_whichever_partition_is_read_first():
    """A card-testing bot's attempts land on two partitions (keyed by user). Replaying a backlog,
    one partition may be read far ahead of the other; decided on arrival, the attempts read
    first would see none of the other partition's and pass the velocity rules."""
    from operators.clock import PartitionStatus, Progress

    attempts = [payment(T0 + n * SECOND, card=f"c{n}", device="bot", ip="6.6.6.6", user=f"u{n % 2}",
                        payment_id=f"p{n}", amount=1.0) for n in range(12)]
    by_partition = {p: [a for a in attempts if a.user_id == f"u{p}"] for p in (0, 1)}

    def batch(events, partition, caught_up=None):
        progress = Progress()
        for event in events:
            progress.saw(("payments", partition), event.ts)
        if caught_up is not None:
            progress.report(PartitionStatus("payments", partition, caught_up, 2))
        return events, progress

    def decisions(batches):
        e = engine()
        for partition in (0, 1):  # both report a backlog before anything is read
            e.process([], NOW, batch([], partition, False)[1])
        found = {}
        for events, progress in batches:
            found.update((d.payment_id, (d.decision, tuple(d.reasons))) for d in e.process(events, NOW, progress).decisions)
        return found

    interleaved = decisions([batch([a], int(a.user_id[1]), True if a is attempts[-1] else None) for a in attempts]
                            + [batch([], 0, True)])
    first_then_second = decisions([batch(by_partition[0], 0, True), batch(by_partition[1], 1, True)])
    second_then_first = decisions([batch(by_partition[1], 1, True), batch(by_partition[0], 0, True)])
    assert len(interleaved) == 12 and any(d == "block" for d, _ in interleaved.values())
    assert first_then_second == interleaved and second_then_first == interleaved
