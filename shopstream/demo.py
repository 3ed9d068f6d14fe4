"""`shopstream demo`: the whole system on one screen.

Starts Kafka and Redis, runs every flow with recovery, produces live shop traffic
(with a sprinkle of malformed events), and prints a live summary read back from
Redis: input per topic and channel, dead letters, flow health. Stops cleanly at
the end or on Ctrl-C.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace

import orjson

from shopstream import services
from shopstream.runner import FlowProcess, preflight, resolve_flows, start_flow, stop_all
from shopstream.settings import INPUT_TOPICS, Settings
from state.redis_store import connect

# Short windows so results show up within seconds, not after a minute.
DEMO_WINDOW_S = 5
DEMO_LATENESS_S = 2
DEMO_RATE = 300  # events per second of live traffic
DEMO_BAD_RATE = 0.005  # share of deliberately malformed events
REFRESH_S = 3.0


def _simulator_command(duration_s: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shopstream.cli",
        "simulate",
        "--scenario",
        "normal",
        "--start",
        "now",
        "--speed",
        "1",
        "--rate",
        str(DEMO_RATE),
        "--duration",
        f"{int(duration_s) + 60}s",
        "--bad-rate",
        str(DEMO_BAD_RATE),
        "--seed",
        "11",
        # Sessions per day scale with the population: ten million shoppers give a few
        # hundred events per second live in the evening, the rate cap keeps it there.
        "--shoppers",
        "10000000",
    ]


def _window_history(client, settings: Settings, series: str) -> list[dict]:
    members = client.zrange(settings.redis_key(f"{series}:history"), 0, -1)
    return [orjson.loads(member) for member in members]


def render_summary(client, settings: Settings, processes: list[FlowProcess], started: float) -> str:
    lines = [f"shopstream demo: {time.monotonic() - started:5.0f}s  (windows of {settings.input_window_s}s)"]
    lines.append(f"  {'topic':<12} {'last window':>12} {'events':>8} {'dead letters':>13} {'total':>9}")
    for topic in INPUT_TOPICS:
        history = _window_history(client, settings, f"input:{topic}")
        total = sum(w["events"] for w in history)
        dead = sum(w["dead_letters"] for w in history)
        last = history[-1] if history else None
        window = time.strftime("%H:%M:%S", time.gmtime(last["window_start"] / 1000)) if last else "-"
        lines.append(
            f"  {topic:<12} {window:>12} {last['events'] if last else 0:>8} {dead:>13} {total:>9}"
        )
    channels = []
    for key in client.scan_iter(settings.redis_key("input:clickstream:channel:*:history")):
        channel = key.decode().split(":channel:")[1].rsplit(":", 1)[0]
        history = _window_history(client, settings, f"input:clickstream:channel:{channel}")
        if history:
            channels.append(f"{channel}={history[-1]['events']}")
    lines.append("  clickstream by channel (last window): " + (", ".join(sorted(channels)) or "-"))
    health = ", ".join(
        f"{p.flow_name}#{p.process_id} {'running' if p.popen.poll() is None else f'exited {p.popen.returncode}'}"
        for p in processes
    )
    lines.append(f"  flows: {health}")
    return "\n".join(lines)


def run_demo(settings: Settings, duration_s: float, keep_services: bool) -> int:
    settings = replace(settings, input_window_s=DEMO_WINDOW_S, allowed_lateness_s=DEMO_LATENESS_S)
    print("starting Kafka and Redis (the first run fetches Kafka from Maven Central)...", flush=True)
    services.up(settings)
    preflight(settings)
    log_dir = settings.services_dir / "logs"
    processes: list[FlowProcess] = []
    simulator = None
    client = connect(settings)
    try:
        for flow_name in resolve_flows(None):
            processes += start_flow(settings, flow_name, log_dir=log_dir)
        simulator_log = open(log_dir / "simulator.log", "ab")
        simulator = subprocess.Popen(
            _simulator_command(duration_s),
            env={**os.environ, **settings.to_env()},
            stdout=simulator_log,
            stderr=subprocess.STDOUT,
        )
        print(f"flows and simulator running; logs in {log_dir}; Ctrl-C stops", flush=True)
        started = time.monotonic()
        while time.monotonic() - started < duration_s:
            time.sleep(REFRESH_S)
            print(render_summary(client, settings, processes, started), flush=True)
            failed = [p for p in processes if p.popen.poll() is not None]
            if failed:
                print(f"a flow stopped; see {log_dir}", file=sys.stderr)
                return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping...", flush=True)
        if simulator is not None and simulator.poll() is None:
            simulator.terminate()
            simulator.wait(10)
        stop_all(processes)
        client.close()
        if not keep_services:
            services.down(settings)
        print("demo stopped", flush=True)
