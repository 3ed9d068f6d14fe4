"""Benchmarks of issue 15: outages waited out, and one flow's crash loop not felt by fraud.

    python -m shopstream.benchmarks.outages all [--rate 2000] [--seconds 40] [--runs 3]
    python -m shopstream.benchmarks.outages redis-pause|crash-loop ...

Both start their own Kafka and Redis on free ports in a scratch directory (the launcher
of `shopstream services up`), run the flows with `shopstream run` as a subprocess, and
feed `double11` traffic stamped with the wall clock at `--rate` events/s from a separate
process (`shopstream.benchmarks.fraud background`).

- redis-pause: all seven flows. Each flow's total consumer lag is read once a second
  from its dataflow API. "Normal lag" of a flow is twice the largest lag it showed in
  the 15 s before the pause (at least 200 messages). Redis is paused with SIGSTOP for
  20 s; the number is the time from SIGCONT until the last flow is back to normal lag
  and stays there for 10 s (longer than the longest retry backoff, so a gauge that is
  stale while a flow still waits cannot end the measurement early).
- crash-loop: fraud and churn; churn is killed with SIGKILL every `--kill-every` seconds
  (the runner restarts it each time) while the payment service's client sends
  `requested` payments one after another and waits for each decision on Redis, as in
  `shopstream.benchmarks.fraud latency`. The same run without kills is the baseline.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from shopstream import bench, runner, services
from shopstream.benchmarks.fraud import PROBE_TIMEOUT_MS, _probe_payment, _start_background
from shopstream.fraud_client import FraudClient
from shopstream.settings import Settings
from state.flow_metrics import consumer_lag
from tests.integration.ports import free_port

PAUSE_S = 20
STABLE_S = 10
BASELINE_S = 15
WARMUP_S = 20


def _start_runner(settings: Settings, flows: list[str], log_dir: Path, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "shopstream.cli", "run", *flows, "--log-dir", str(log_dir)],
        env={**os.environ, **settings.to_env(), **{k: str(v) for k, v in env.items()}},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_running(settings: Settings, flows: list[str], timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = runner.read_status(settings)
        if status and all(status["flows"].get(f, {}).get("state") == "running" for f in flows):
            return status
        time.sleep(0.5)
    raise TimeoutError(f"flows {flows} did not start: {runner.read_status(settings)}")


def _lags(settings: Settings, flows: list[str]) -> dict[str, float | None]:
    ports = runner.api_ports(settings)
    out: dict[str, float | None] = {}
    for name in flows:
        try:
            out[name] = sum(sum(consumer_lag(port, timeout_s=1.0).values()) for port in ports[name])
        except Exception:  # noqa: BLE001 - a flow between polls or restarting: no reading
            out[name] = None
    return out


def redis_pause(settings: Settings, rate: float, seed: int) -> dict:
    flows = list(runner.FLOWS)
    live = replace(settings, flow_api_port_base=free_port(span=len(flows)))
    log_dir = settings.services_dir / "bench-logs"
    proc = background = None
    try:
        proc = _start_runner(live, flows, log_dir)
        status = _wait_running(live, flows)
        background = _start_background(live, rate, WARMUP_S + BASELINE_S + PAUSE_S + 240, seed)
        time.sleep(WARMUP_S)  # flows assigned, caught up with the start of the traffic
        normal = {name: 0.0 for name in flows}
        until = time.monotonic() + BASELINE_S
        while time.monotonic() < until:
            for name, lag in _lags(live, flows).items():
                normal[name] = max(normal[name], lag or 0.0)
            time.sleep(1)
        threshold = {name: max(2 * lag, 200.0) for name, lag in normal.items()}
        redis_pid = services.redis_pid(live)
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            time.sleep(PAUSE_S)
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        resumed = time.monotonic()
        normal_since: dict[str, float | None] = {name: None for name in flows}
        peak = {name: 0.0 for name in flows}
        deadline = resumed + 300
        while time.monotonic() < deadline:
            now = time.monotonic()
            for name, lag in _lags(live, flows).items():
                if lag is not None:
                    peak[name] = max(peak[name], lag)
                if lag is None or lag > threshold[name]:
                    normal_since[name] = None
                elif normal_since[name] is None:
                    normal_since[name] = now
            if all(since is not None and now - since >= STABLE_S for since in normal_since.values()):
                break
            time.sleep(1)
        else:
            raise TimeoutError(f"flows not back to normal lag 300 s after the pause: {_lags(live, flows)}")
        final = runner.read_status(live)
        restarts = {name: final["flows"][name]["restarts"] for name in flows}
        return {
            "recovery_s": round(max(normal_since.values()) - resumed, 1),
            "per_flow_s": {name: round(since - resumed, 1) for name, since in normal_since.items()},
            "normal_lag": normal,
            "peak_lag": peak,
            "restarts": restarts,
            "pids_unchanged": all(final["flows"][n]["pids"] == status["flows"][n]["pids"] for n in flows),
        }
    finally:
        _stop(background)
        _stop(proc)


def fraud_during_crash_loop(settings: Settings, rate: float, seconds: float, kill_every_s: float,
                            seed: int) -> dict:
    flows = ["fraud", "churn"]
    log_dir = settings.services_dir / "bench-logs"
    proc = background = None
    client = FraudClient(settings, timeout_ms=PROBE_TIMEOUT_MS)
    delays: list[float] = []
    fallbacks = kills = 0
    try:
        proc = _start_runner(settings, flows, log_dir, SHOPSTREAM_RESTART_LIMIT=10_000,
                             SHOPSTREAM_RESTART_BACKOFF_S=1, SHOPSTREAM_RESTART_BACKOFF_MAX_S=2)
        _wait_running(settings, flows)
        if rate > 0:
            background = _start_background(settings, rate, seconds + 10, seed)
        time.sleep(5)  # warm-up
        started = time.monotonic()
        next_kill = started + (kill_every_s if kill_every_s > 0 else float("inf"))
        n = 0
        while time.monotonic() - started < seconds:
            if time.monotonic() >= next_kill:
                churn = runner.read_status(settings)["flows"]["churn"]
                if churn["state"] == "running" and churn["pids"]:
                    os.kill(churn["pids"][0], signal.SIGKILL)
                    kills += 1
                next_kill += kill_every_s
            verdict = client.check(_probe_payment(n, int(time.time() * 1000)))
            n += 1
            if verdict.source == "engine":
                delays.append(verdict.waited_ms)
            else:
                fallbacks += 1
            time.sleep(0.01)
        status = runner.read_status(settings)
    finally:
        client.close()
        _stop(background)
        _stop(proc)
    delays.sort()
    return {
        "kills": kills,
        "churn_restarts": status["flows"]["churn"]["restarts"],
        "fraud_restarts": status["flows"]["fraud"]["restarts"],
        "probes": len(delays) + fallbacks,
        "fallbacks": fallbacks,
        "p50_ms": round(statistics.median(delays), 2),
        "p99_ms": round(bench._percentile(delays, 0.99), 2),
        "max_ms": round(delays[-1], 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["all", "redis-pause", "crash-loop"])
    parser.add_argument("--rate", type=float, default=2_000, help="background double11 events/s")
    parser.add_argument("--seconds", type=float, default=40.0, help="crash-loop: probing time per run")
    parser.add_argument("--kill-every", type=float, default=5.0, help="crash-loop: seconds between kills of churn")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="shopstream-bench-outages-") as scratch:
        scratch = Path(scratch)
        base = Settings.from_env(
            {}, kafka_bootstrap_servers=f"127.0.0.1:{free_port(span=2)}",
            redis_url=f"redis://127.0.0.1:{free_port()}/0", services_dir=scratch / "services",
        )
        services.up(base)
        try:
            for run in range(args.runs):
                if args.what in ("all", "redis-pause"):
                    live = bench._bench_settings(base, 1, scratch / f"pause{run}")
                    services.create_topics(live)
                    r = redis_pause(live, args.rate, args.seed + run)
                    print(f"redis pause {PAUSE_S} s at {args.rate:,.0f} events/s, 7 flows: back to normal lag "
                          f"{r['recovery_s']} s after SIGCONT (per flow {r['per_flow_s']}); peak lag {r['peak_lag']}; "
                          f"restarts {sum(r['restarts'].values())}, same processes {r['pids_unchanged']}; "
                          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
                if args.what in ("all", "crash-loop"):
                    for kill_every in (0.0, args.kill_every):
                        live = replace(bench._bench_settings(base, 1, scratch / f"loop{run}-{kill_every}"),
                                       fraud_model_dir=scratch / f"models{run}-{kill_every}",
                                       churn_model_dir=scratch / f"churn-models{run}-{kill_every}")
                        services.create_topics(live)
                        r = fraud_during_crash_loop(live, args.rate, args.seconds, kill_every, args.seed + run)
                        what = f"churn killed every {kill_every:.0f} s" if kill_every else "no crash loop (baseline)"
                        print(f"fraud decision latency, {what}, background {args.rate:,.0f} events/s: "
                              f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms over {r['probes']:,} "
                              f"probes ({r['fallbacks']} fallbacks); churn kills {r['kills']}, restarts "
                              f"{r['churn_restarts']}; fraud restarts {r['fraud_restarts']}; "
                              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
        finally:
            services.down(base, wipe=True)


if __name__ == "__main__":
    main()
