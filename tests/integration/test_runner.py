"""The runner supervises flows: none outlives its starter, one failure stops the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from shopstream.runner import run_flows
from tests.integration.kafka_helpers import wait_until

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


def test_a_flow_that_dies_stops_the_run_with_its_exit_code(settings, monkeypatch):
    # A recovery store that is not a directory makes the flow fail at start.
    monkeypatch.setattr("shopstream.runner.prepare_recovery", lambda settings, name: None)
    broken = settings.recovery_dir / "intake"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text("not a recovery store")
    assert run_flows(settings, ["intake"]) != 0
