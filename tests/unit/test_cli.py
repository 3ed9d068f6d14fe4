"""Bad configuration fails at start with a message that says what to fix."""

import pytest

import flows.intake
from shopstream.cli import main
from shopstream.runner import preflight
from shopstream.settings import ConfigError, Settings
from tests.integration.ports import free_port


def test_a_malformed_setting_stops_run_before_anything_starts(monkeypatch, capsys):
    monkeypatch.setenv("SHOPSTREAM_PROCESSES", "two")
    assert main(["run"]) == 2
    assert "configuration error: SHOPSTREAM_PROCESSES must be an integer, got 'two'" in capsys.readouterr().err


def test_an_unknown_flow_is_named(capsys):
    assert main(["run", "no_such_flow"]) == 2
    assert "unknown flow(s) no_such_flow; choose from: intake" in capsys.readouterr().err


def test_a_bad_flag_value_is_named(capsys):
    assert main(["run", "--processes", "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_the_bytewax_entry_point_validates_settings_too(monkeypatch):
    monkeypatch.setenv("SHOPSTREAM_INPUT_WINDOW_S", "0")
    with pytest.raises(ConfigError, match="SHOPSTREAM_INPUT_WINDOW_S must be at least 1"):
        flows.intake.flow


def test_unreachable_kafka_says_how_to_start_it():
    settings = Settings.from_env({}, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    with pytest.raises(ConfigError, match=r"not reachable.*shopstream services up"):
        preflight(settings)


def test_demo_traffic_starts_at_the_latest_evening_peak_in_china():
    from datetime import datetime, timezone

    from shopstream.demo import shop_evening_start

    def start_for(utc_text):
        now = datetime.fromisoformat(utc_text).replace(tzinfo=timezone.utc).timestamp()
        return datetime.fromtimestamp(shop_evening_start(now) / 1000, timezone.utc).isoformat()

    # 20:00 in China is 12:00 UTC.
    assert start_for("2026-11-21T23:48:00") == "2026-11-21T12:00:00+00:00"
    assert start_for("2026-11-21T11:59:00") == "2026-11-20T12:00:00+00:00"


def test_demo_traffic_prerolls_the_minutes_before_the_evening_peak(monkeypatch):
    from shopstream import demo

    monkeypatch.setattr(demo.time, "time", lambda: 1_700_000_000.0)
    command = demo._simulator_command(90)
    option = dict(zip(command[4::2], command[5::2]))  # after `python -m shopstream.cli simulate`
    evening = demo.shop_evening_start(1_700_000_000.0)
    assert int(option["--start"]) == evening - demo.DEMO_PREROLL_MS
    assert option["--preroll"] == f"{demo.DEMO_PREROLL_MS // 1000}s"
    assert option["--duration"] == f"{demo.DEMO_PREROLL_MS // 1000 + 150}s"  # the pre-roll, the run, a margin


def test_bench_points_flows_with_their_own_benchmark_to_it(capsys):
    assert main(["bench", "alerts"]) == 2
    assert "python -m shopstream.benchmarks.alerts" in capsys.readouterr().err
