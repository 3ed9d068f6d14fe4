"""Benchmark of `shopstream alerts forward` on real Kafka, Redis and Alertmanager.

    python -m shopstream.benchmarks.alert_forwarding --rate 100 --seconds 60 --runs 3

Kafka and Redis come from `shopstream services up` (as configured); Alertmanager is
Debian's `prometheus-alertmanager`, started on a free loopback port through the services
launcher. Each run uses fresh topic and Redis prefixes and starts the forwarder as its own
process (`shopstream alerts forward`, as in production). Alert state changes are produced
to `alerts` at `--rate` per second for `--seconds`, each a new episode (a `firing` message
stamped with the wall clock when produced), each on its own key, so every one is a real
change for Alertmanager. Measured:

- latency: produced -> accepted by Alertmanager (the alert's `updatedAt` there, which
  Alertmanager stamps on receipt; re-posts are off during the run so it is the first post);
- CPU: the forwarder process's user + system time over the run (from /proc), as a share
  of one core.

Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from shopstream import services
from shopstream.settings import Settings
from state.kafka import CheckedProducer
from state.serde import dumps


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _am_alerts(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=30) as response:
        return json.loads(response.read())


def _ms(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def one_run(settings: Settings, alertmanager_url: str, rate: float, seconds: float, run: int) -> dict:
    stamp = f"{time.strftime('%Y%m%d%H%M%S')}fw{run}"
    live = replace(settings, topic_prefix=f"bench{stamp}.", redis_prefix=f"bench{stamp}:",
                   alertmanager_url=alertmanager_url, forward_resend_s=3600, forward_metrics_port=0)
    services.create_topics(live)
    env = {**os.environ, **live.to_env()}
    log = open(Path(tempfile.gettempdir()) / f"forwarder-{stamp}.log", "wb")
    forwarder = subprocess.Popen([sys.executable, "-m", "shopstream.cli", "alerts", "forward"], env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
    producer = CheckedProducer(live)
    try:
        # Warm-up: one alert through, so the forwarder has joined its group and connected.
        warm = {"alert_id": f"stock.out:warm-{run}@1/firing", "ts": 1, "dedup_key": f"stock.out:warm-{run}",
                "rule": "stock.out", "severity": "info", "status": "firing", "key": f"warm-{run}", "summary": "warm-up",
                "first_seen_ts": 1, "count": 1}
        producer.produce("alerts", warm["dedup_key"].encode(), dumps(warm))
        producer.flush()
        while not any(a["labels"].get("key") == f"warm-{run}" for a in _am_alerts(alertmanager_url)):
            time.sleep(0.2)
        cpu_before, wall_before = _cpu_s(forwarder.pid), time.monotonic()
        total = int(rate * seconds)
        start = time.monotonic()
        for i in range(total):
            due = start + i / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            now = time.time_ns() // 1_000_000
            key = f"bench-{run}-{i}"
            alert = {"alert_id": f"stock.out:{key}@{now}/firing", "ts": now, "dedup_key": f"stock.out:{key}",
                     "rule": "stock.out", "severity": "critical", "status": "firing", "key": key,
                     "summary": f"{key} is out of stock", "value": 0, "threshold": 5, "first_seen_ts": now,
                     "count": 1}
            producer.produce("alerts", alert["dedup_key"].encode(), dumps(alert))
            producer.poll()
        producer.flush()
        deadline = time.monotonic() + 60
        while True:
            mine = [a for a in _am_alerts(alertmanager_url) if a["labels"].get("key", "").startswith(f"bench-{run}-")]
            if len(mine) >= total or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        cpu = (_cpu_s(forwarder.pid) - cpu_before) / (time.monotonic() - wall_before)
    finally:
        forwarder.terminate()
        forwarder.wait(30)
        log.close()
    latencies = [(_ms(a["updatedAt"]) - _ms(a["startsAt"])) / 1000 for a in mine]
    return {"sent": total, "in_alertmanager": len(mine), "p50_s": _percentile(latencies, 0.5),
            "p99_s": _percentile(latencies, 0.99), "max_s": max(latencies), "cpu_share": cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="alert state changes per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    services.up(settings)
    directory = Path(tempfile.mkdtemp(prefix="bench-alertmanager-"))
    alertmanager = services.start_alertmanager(directory, _free_port())
    try:
        results = []
        for run in range(args.runs):
            result = one_run(settings, alertmanager.url, args.rate, args.seconds, run)
            results.append(result)
            print(f"run {run + 1}: {result['in_alertmanager']}/{result['sent']} in Alertmanager, "
                  f"latency p50 {result['p50_s']:.3f} s, p99 {result['p99_s']:.3f} s, max {result['max_s']:.3f} s, "
                  f"forwarder CPU {100 * result['cpu_share']:.2f}% of one core", flush=True)
        print(f"median of {args.runs} runs at {args.rate:g}/s for {args.seconds:g} s: "
              f"p50 {statistics.median(r['p50_s'] for r in results):.3f} s, "
              f"p99 {statistics.median(r['p99_s'] for r in results):.3f} s, "
              f"CPU {100 * statistics.median(r['cpu_share'] for r in results):.2f}% of one core")
    finally:
        services.stop_monitoring(alertmanager)
    return 0


if __name__ == "__main__":
    sys.exit(main())
