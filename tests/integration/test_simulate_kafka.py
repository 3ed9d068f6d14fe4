"""`shopstream simulate` against the real broker: everything arrives, keyed and in order."""

from __future__ import annotations

import argparse
import collections

import orjson
import pytest

from simulators import cli as simulate_cli
from simulators import generate
from simulators.timeline import MINUTE, parse_start
from tests.integration.kafka_helpers import read_topic

pytestmark = pytest.mark.integration


def test_simulate_produces_every_event_keyed_and_in_order_per_key(settings, tmp_path, capsys):
    truth_path = tmp_path / "truth.jsonl"
    argv = ["--scenario", "card_testing,flash_sale", "--seed", "3", "--duration", "20m",
            "--start", "2024-11-10T20:00+08:00", "--shoppers", "20000", "--bad-rate", "0.01",
            "--truth", str(truth_path)]
    parser = argparse.ArgumentParser()
    simulate_cli.add_arguments(parser)
    assert simulate_cli.run(parser.parse_args(argv), settings) == 0
    assert "done:" in capsys.readouterr().out

    sim = generate(("card_testing", "flash_sale"), seed=3, start_ms=parse_start("2024-11-10T20:00+08:00"),
                   duration_ms=20 * MINUTE, shoppers=20_000, bad_rate=0.01)
    expected = collections.defaultdict(list)
    for event in sim:
        expected[event.topic].append((event.key, event.value))
    for topic, messages in expected.items():
        received = read_topic(settings, topic)
        assert sorted(received) == sorted(messages), topic
        # One key, one partition: each key's messages keep the simulator's order.
        by_key_sent, by_key_received = collections.defaultdict(list), collections.defaultdict(list)
        for key, value in messages:
            by_key_sent[key].append(value)
        for key, value in received:
            by_key_received[key].append(value)
        assert by_key_received == by_key_sent, topic
    lines = truth_path.read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == [r.to_dict() for r in sim.truth]
    assert any(r.kind == "bad_event" for r in sim.truth)
