"""Per-flow supervision: backoff, restart budget, crash-loop reports and the status view (issue 15)."""

from __future__ import annotations

import os

import pytest

from shopstream.cli import main
from shopstream.runner import FlowSupervision, RestartPolicy, format_status, read_status, status_path, write_status
from shopstream.settings import Settings

POLICY = RestartPolicy(limit=3, window_s=600, backoff_s=1, backoff_max_s=60)


def crash(flow: FlowSupervision, now: float, error: str = "RuntimeError: boom") -> float:
    """Exit at `now`; returns the delay until the next start."""
    flow.exited(now, 1, error)
    return flow.next_start_at - now


def test_restarts_back_off_exponentially_up_to_the_cap():
    flow = FlowSupervision("churn", RestartPolicy(limit=100, window_s=600, backoff_s=1, backoff_max_s=8))
    flow.started(0)
    now, delays = 0.0, []
    for _ in range(6):
        delay = crash(flow, now + 0.5)  # crashes half a second after each start
        delays.append(delay)
        assert flow.state == "restarting" and not flow.due(now + 0.5 + delay - 0.01) and flow.due(now + 0.5 + delay)
        now = now + 0.5 + delay
        flow.started(now)
    assert delays == [1, 2, 4, 8, 8, 8]
    assert flow.restarts == 6


def test_a_flow_that_ran_long_enough_starts_its_backoff_over():
    flow = FlowSupervision("churn", POLICY)
    flow.started(0)
    assert crash(flow, 1) == 1
    flow.started(2)
    assert crash(flow, 3) == 2
    flow.started(5)
    assert crash(flow, 5 + 60) == 1  # healthy for backoff_max_s before this exit


def test_over_budget_a_flow_is_down_until_the_window_has_room():
    flow = FlowSupervision("churn", POLICY)
    flow.started(0)
    for at in (10, 20, 30):
        crash(flow, at)
        assert flow.state == "restarting"
        flow.started(flow.next_start_at)
    crash(flow, 40)  # the 4th exit within 600 s: over a budget of 3
    assert flow.state == "down"
    # It may start again once only 3 exits remain in the window: when the one at 10 leaves it.
    assert flow.next_start_at == pytest.approx(610)
    assert not flow.due(609) and flow.due(610)
    flow.started(610)
    assert flow.restarts == 4 and flow.state == "running"
    assert not flow.healthy(610 + 59) and flow.healthy(610 + 60)


def test_a_budget_of_zero_restarts_means_down_at_the_first_exit():
    flow = FlowSupervision("churn", RestartPolicy(limit=0, window_s=60, backoff_s=1, backoff_max_s=5))
    flow.started(0)
    crash(flow, 5)
    assert flow.state == "down" and flow.next_start_at == pytest.approx(65)


def test_status_file_round_trip_and_view(tmp_path):
    settings = Settings.from_env({}, recovery_dir=tmp_path)
    fraud, churn = FlowSupervision("fraud", POLICY), FlowSupervision("churn", POLICY)
    fraud.started(100)
    churn.started(100)
    for at in (110, 120, 130, 140):
        crash(churn, at, "redis.exceptions.TimeoutError: Timeout reading from socket")
    mono, wall = 150.0, 1_700_000_000.0
    write_status(status_path(settings), {
        "runner_pid": os.getpid(), "running": True, "updated_ts": int(wall * 1000),
        "flows": {"fraud": fraud.to_dict(wall, mono, [11]), "churn": churn.to_dict(wall, mono, [])},
    })
    status = read_status(settings)
    assert status["flows"]["churn"]["state"] == "down"
    assert status["flows"]["churn"]["restarts"] == 0 and status["flows"]["churn"]["exits_in_window"] == 4
    text, code = format_status(status, now_ms=int(wall * 1000))
    assert code == 1  # not every flow is running
    fraud_line = next(line for line in text.splitlines() if line.startswith("fraud"))
    churn_line = next(line for line in text.splitlines() if line.startswith("churn"))
    assert "running" in fraud_line and " 11 " in fraud_line
    assert "down (next try in" in churn_line and "exit 1: redis.exceptions.TimeoutError" in churn_line


def test_status_of_a_runner_that_is_gone_says_so(tmp_path):
    settings = Settings.from_env({}, recovery_dir=tmp_path)
    flow = FlowSupervision("fraud", POLICY)
    flow.started(0)
    write_status(status_path(settings), {"runner_pid": 2**22 + 12345, "running": True, "updated_ts": 0,
                                          "flows": {"fraud": flow.to_dict(0, 0, [1])}})
    text, code = format_status(read_status(settings), now_ms=5000)
    assert "not running" in text and code == 1


def test_status_command_without_a_runner(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SHOPSTREAM_RECOVERY_DIR", str(tmp_path))
    assert main(["status"]) == 1
    assert "no runner status yet" in capsys.readouterr().out


def test_restart_settings_have_documented_defaults():
    settings = Settings.from_env({})
    assert RestartPolicy.from_settings(settings) == RestartPolicy(limit=5, window_s=600, backoff_s=1, backoff_max_s=60)
