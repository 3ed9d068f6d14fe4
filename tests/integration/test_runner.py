"""The runner supervises each flow: none outlives its starter, a flow that exits is restarted
within a budget and reported when it crash-loops, and the others keep running (issue 15)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import orjson
import pytest

from shopstream.runner import read_status, run_flows
from tests.integration.kafka_helpers import produce, read_topic, wait_until

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; it only waits to be reaped by init.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_flows_stop_when_the_process_that_started_them_is_killed(settings, tmp_path):
    pid_file = tmp_path / "flow.pids"
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from shopstream.runner import start_flow
                from shopstream.settings import Settings
                processes = start_flow(Settings.from_env(), "intake")
                open({str(pid_file)!r}, "w").write(" ".join(str(p.popen.pid) for p in processes))
                time.sleep(600)
                """
            ),
        ],
        env={**os.environ, **settings.to_env()},
    )
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30, "the flow to start")
        flow_pids = [int(pid) for pid in pid_file.read_text().split()]
        assert all(_alive(pid) for pid in flow_pids)
        starter.send_signal(signal.SIGKILL)
        starter.wait()
        wait_until(lambda: not any(_alive(pid) for pid in flow_pids), 15, "the orphaned flow to stop")
    finally:
        starter.kill()


def test_a_flow_that_keeps_dying_is_restarted_then_reported_down(settings, monkeypatch):
    # A recovery store that is not a directory makes the flow fail at every start.
    monkeypatch.setattr("shopstream.runner.prepare_recovery", lambda settings, name: None)
    broken = settings.recovery_dir / "intake"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text("not a recovery store")
    quick = replace(settings, restart_limit=2, restart_backoff_s=0, restart_backoff_max_s=1)

    def down() -> bool:
        status = read_status(quick)
        return bool(status) and status["flows"]["intake"]["state"] == "down"

    assert run_flows(quick, ["intake"], should_stop=down) == 0
    intake = read_status(quick)["flows"]["intake"]
    assert intake["restarts"] == 2 and intake["exits_in_window"] == 3
    assert intake["last_exit_code"] not in (0, None) and intake["last_error"]
    candidates = [c for _, v in read_topic(quick, "alert-candidates") if "rule" in (c := orjson.loads(v))]
    assert [(c["rule"], c["key"], c["active"], c["severity"]) for c in candidates] == [
        ("engine.flow_down", "intake", True, "critical")
    ]


def _set_stock(settings, sku: str, quantity: int) -> None:
    event = {"event_id": f"probe-{quantity}", "ts": int(time.time() * 1000), "sku": sku, "kind": "set",
             "quantity": quantity}
    produce(settings, "inventory", [(sku.encode(), orjson.dumps(event))])


def _available(redis_client, settings, sku: str) -> int | None:
    value = redis_client.hget(settings.redis_key(f"stock:{sku}"), "available")
    return None if value is None else int(value)


def test_killing_one_flow_repeatedly_restarts_it_and_the_others_keep_going(settings, redis_client, tmp_path):
    env = {**os.environ, **settings.to_env(), "SHOPSTREAM_RESTART_LIMIT": "2",
           "SHOPSTREAM_RESTART_BACKOFF_S": "1", "SHOPSTREAM_RESTART_BACKOFF_MAX_S": "2"}
    runner = subprocess.Popen(
        [sys.executable, "-m", "shopstream.cli", "run", "intake", "stock", "--log-dir", str(tmp_path / "logs")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )

    def flow(name: str) -> dict:
        status = read_status(settings)
        return status["flows"][name] if status else {}

    try:
        wait_until(lambda: flow("intake").get("state") == "running" and flow("stock").get("state") == "running",
                   60, "both flows to start")
        stock_pids = flow("stock")["pids"]
        _set_stock(settings, "probe", 0)
        wait_until(lambda: _available(redis_client, settings, "probe") == 0, 60, "the stock flow to write")
        for kill in range(1, 4):
            pid = flow("intake")["pids"][0]
            os.kill(pid, signal.SIGKILL)
            # The other flow keeps its output going while intake is down or restarting.
            _set_stock(settings, "probe", kill)
            wait_until(lambda: _available(redis_client, settings, "probe") == kill, 60, f"stock output after kill {kill}")
            if kill < 3:
                wait_until(lambda: flow("intake").get("state") == "running" and flow("intake")["pids"] != [pid],
                           60, f"intake restarted after kill {kill}")
        wait_until(lambda: flow("intake").get("state") == "down", 30, "intake reported down")
        assert flow("intake")["restarts"] == 2
        assert flow("intake")["last_error"] == "killed by SIGKILL"
        assert flow("stock")["state"] == "running" and flow("stock")["restarts"] == 0
        assert flow("stock")["pids"] == stock_pids

        shown = subprocess.run([sys.executable, "-m", "shopstream.cli", "status"], env=env, capture_output=True,
                               text=True, timeout=60)
        assert shown.returncode == 1  # not everything is running
        lines = {line.split()[0]: line for line in shown.stdout.splitlines()[2:]}
        assert lines["intake"].split()[1] == "down" and "killed by SIGKILL" in lines["intake"], shown.stdout
        assert lines["stock"].split()[1:3] == ["running", "0"], shown.stdout
        assert " 2 " in lines["intake"], shown.stdout
        wait_until(lambda: any(orjson.loads(v).get("rule") == "engine.flow_down"
                               for _, v in read_topic(settings, "alert-candidates")), 30, "the flow_down candidate")
    finally:
        runner.send_signal(signal.SIGTERM)
        output, _ = runner.communicate(timeout=60)
    assert runner.returncode == 0, output.decode(errors="replace")
    assert not _alive(stock_pids[0])
    final = read_status(settings)
    assert final["running"] is False and final["flows"]["stock"]["state"] == "stopped"
