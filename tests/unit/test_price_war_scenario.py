"""`shopstream simulate --scenario price_war`: the price feed beside the shop's traffic,
its truth in the truth file, and the pricing flow finding exactly what the truth says."""

import argparse

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.pricing import PricingConfig, build_flow
from operators.events import PriceEvent, parse_event
from shopstream.settings import Settings
from simulators import cli as simulate_cli
from simulators import SimEvent, generate
from simulators.prices import WATCHED_SKUS
from simulators.testing import input_records
from simulators.timeline import HOUR, MINUTE, parse_start

START = "2024-11-10T20:00:00+08:00"
NOW_MS = 1_900_000_000_000  # a wall clock after the run: everything runs on event time


class FakeProducer:
    def __init__(self):
        self.messages = []

    def produce(self, topic, key, value):
        self.messages.append((topic, key, value))

    def flush(self):
        pass


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """`shopstream simulate --scenario normal,price_war` for an hour: what it produced and its truth file."""
    truth_path = tmp_path_factory.mktemp("price_war") / "truth.jsonl"
    parser = argparse.ArgumentParser()
    simulate_cli.add_arguments(parser)
    args = parser.parse_args(["--scenario", "normal,price_war", "--seed", "5", "--duration", "1h", "--start", START,
                              "--shoppers", "20000", "--truth", str(truth_path)])
    producer = FakeProducer()
    assert simulate_cli.run(args, Settings.from_env({}), producer=producer) == 0
    truth = [orjson.loads(line) for line in truth_path.read_bytes().splitlines()]
    return producer.messages, truth


def test_simulate_price_war_produces_the_price_feed_beside_the_shop(simulated):
    messages, truth = simulated
    topics = {topic for topic, _, _ in messages}
    assert topics == {"clickstream", "orders", "payments", "inventory", "prices"}
    prices = [parse_event("prices", orjson.loads(value)) for topic, _, value in messages if topic == "prices"]
    assert all(type(p) is PriceEvent for p in prices)
    assert all(key == orjson.loads(value)["sku"].encode() for topic, key, value in messages if topic == "prices")
    (war,) = [r for r in truth if r["kind"] == "incident" and r["name"] == "price_war"]
    ours = {p.sku for p in prices if p.own}
    assert len(ours) == war["detail"]["skus"] == WATCHED_SKUS
    assert set(war["detail"]["floors"]) == ours
    assert {p.sku for p in prices} - ours == set(war["detail"]["foreign_skus"])
    undercuts = [r for r in truth if r["kind"] == "price_undercut"]
    assert undercuts and all(u["sku"] in ours and u["price"] < u["our_price"] for u in undercuts)
    assert [r["kind"] for r in truth if r["kind"] == "price_promo_wave"] == ["price_promo_wave"]
    # The same command gives the same bytes: a price war is as reproducible as the shop.
    sim = generate(("price_war",), seed=5, start_ms=parse_start(START), duration_ms=HOUR, shoppers=20_000)
    assert [(e.topic, e.key, e.value) for e in sim] == messages
    assert [r.to_dict() for r in sim.truth] == truth


def test_the_pricing_flow_finds_each_undercut_of_the_truth_file_once(simulated):
    messages, truth = simulated
    records = input_records([_event(topic, key, value) for topic, key, value in messages
                             if topic in ("prices", "orders", "inventory")])
    kafka_out = []
    run_main(build_flow(TestingSource(records, batch_size=500), TestingSink(kafka_out), TestingSink([]),
                        PricingConfig(max_event_ahead_ms=3_600_000), lambda: NOW_MS))
    fired: dict[str, list[int]] = {}
    for message in kafka_out:
        if message.topic == "alert-candidates":
            candidate = orjson.loads(message.value)
            if candidate.get("rule") == "price.undercut" and candidate["active"]:  # not a progress marker
                fired.setdefault(candidate["key"], []).append(candidate["ts"])
    undercuts = {r["sku"]: r for r in truth if r["kind"] == "price_undercut"}
    assert set(fired) == set(undercuts)  # nothing for duplicates, dips, glitches or SKUs we do not sell
    for sku, (ts,) in fired.items():
        assert 0 <= ts - undercuts[sku]["ts"] <= 5 * MINUTE
    (war,) = [r for r in truth if r["kind"] == "incident" and r["name"] == "price_war"]
    floors = war["detail"]["floors"]
    suggestions = [orjson.loads(m.value) for m in kafka_out if m.topic == "price-suggestions"]
    assert suggestions and all(s["suggested_price"] >= floors[s["sku"]] for s in suggestions)


def _event(topic, key, value):
    return SimEvent(topic, key, value, orjson.loads(value)["ts"])


def test_the_demo_traffic_includes_the_price_war():
    from shopstream import demo
    from simulators.scenarios import parse_scenarios

    command = demo._simulator_command(90)
    assert "price_war" in parse_scenarios([command[command.index("--scenario") + 1]])
