"""Short outages are waited out (issue 15): Redis paused with SIGSTOP for 20 s and the Kafka
broker restarted while traffic flows; no flow exits, and the outputs equal a run without the outage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from shopstream import services
from shopstream.runner import read_status
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import HOUR
from tests.integration.kafka_helpers import produce, read_topic, wait_until
from tests.integration.test_stock_kafka import matches_truth, stock_hashes
from tests.unit.test_stock_flow import truth_levels

pytestmark = pytest.mark.integration

PAUSE_S = 20


def start_runner(settings, flows: list[str], log_dir, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "shopstream.cli", "run", *flows, "--log-dir", str(log_dir)],
        env={**os.environ, **settings.to_env(), **{k: str(v) for k, v in env.items()}},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def flows_running(settings, flows: list[str]) -> dict | None:
    status = read_status(settings)
    if status and all(status["flows"].get(name, {}).get("state") == "running" for name in flows):
        return status
    return None


def stop_runner(runner: subprocess.Popen) -> tuple[int, str]:
    if runner.poll() is None:
        runner.send_signal(signal.SIGTERM)
    output, _ = runner.communicate(timeout=60)
    return runner.returncode, output.decode(errors="replace")


@pytest.fixture(scope="module")
def flash_sale():
    sim = generate(("flash_sale",), seed=7, duration_ms=2 * HOUR, shoppers=60_000)
    return [e for e in sim if e.topic in ("orders", "inventory")]


def produce_part(settings, events) -> None:
    for topic in ("inventory", "orders"):
        produce(settings, topic, [(e.key, e.value) for e in events if e.topic == topic])


def test_a_redis_pause_and_a_broker_restart_are_waited_out(settings, redis_client, flash_sale, tmp_path):
    events = flash_sale
    truth = truth_levels(input_records(events))
    thirds = [events[: len(events) // 3], events[len(events) // 3: 2 * len(events) // 3], events[2 * len(events) // 3:]]
    produce_part(settings, thirds[0])
    flows = ["stock", "intake"]
    runner = start_runner(settings, flows, tmp_path / "logs", SHOPSTREAM_OUTAGE_LIMIT_S=180)
    redis_pid = services.redis_pid(settings)
    assert redis_pid is not None
    try:
        first = wait_until(lambda: flows_running(settings, flows), 60, "the flows to start")
        pids = {name: first["flows"][name]["pids"] for name in flows}
        wait_until(lambda: len(stock_hashes(redis_client, settings)) >= 500, 90, "the stock flow to make progress")

        os.kill(redis_pid, signal.SIGSTOP)
        try:
            produce_part(settings, thirds[1])  # traffic keeps coming while Redis is paused
            time.sleep(PAUSE_S)  # the outage itself, not a wait for a result
        finally:
            os.kill(redis_pid, signal.SIGCONT)

        services.restart_kafka(settings)
        produce_part(settings, thirds[2])

        wait_until(lambda: matches_truth(redis_client, settings, truth), 180, "the ledger to equal the truth")
        status = flows_running(settings, flows)
        assert status is not None, read_status(settings)
        for name in flows:
            assert status["flows"][name]["restarts"] == 0, status["flows"][name]
            assert status["flows"][name]["pids"] == pids[name]  # the same processes: none exited
        assert runner.poll() is None
    finally:
        os.kill(redis_pid, signal.SIGCONT)
        code, output = stop_runner(runner)
    assert code == 0, output
    assert "exited" not in output, output

    # The outage was noticed and waited out, once each way, by the stock flow's Redis sink.
    log_text = (tmp_path / "logs" / "stock-0.log").read_text(errors="replace")
    assert "unreachable" in log_text and "reachable again after an outage of" in log_text, log_text[-3000:]
    # Nothing became a dead letter, and the ledger is exact: equal to a run without the outage.
    assert read_topic(settings, "dead-letters") == []
    assert matches_truth(redis_client, settings, truth)
