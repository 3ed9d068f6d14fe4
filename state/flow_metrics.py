"""Reading a running flow's own numbers: Kafka consumer lag and memory.

Bytewax keeps input offsets in its recovery store, not in a consumer group, so
lag tools cannot see it. With BYTEWAX_DATAFLOW_API_ENABLED each flow process
serves Prometheus metrics, including `bytewax_kafka_consumer_lag` per input
partition (updated about once a second from librdkafka's statistics).
"""

from __future__ import annotations

import re
import tempfile
import urllib.request
from pathlib import Path

_LAG_LINE = re.compile(r'^bytewax_kafka_consumer_lag\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def api_env(port: int) -> dict[str, str]:
    """Environment that makes one flow process serve its metrics on `port`."""
    return {
        "BYTEWAX_DATAFLOW_API_ENABLED": "true",
        "BYTEWAX_DATAFLOW_API_PORT": str(port),
        # The API also writes `dataflow.json` into this directory; keep it out of the work tree.
        "BYTEWAX_DATAFLOW_API_CACHE_PATH": tempfile.gettempdir(),
    }


def parse_consumer_lag(metrics_text: str) -> dict[tuple[str, int], float]:
    """(topic, partition) -> messages behind, from a Prometheus metrics page."""
    lag = {}
    for line in metrics_text.splitlines():
        match = _LAG_LINE.match(line.strip())
        if match:
            labels = dict(_LABEL.findall(match["labels"]))
            lag[(labels["topic"], int(labels["partition"]))] = float(match["value"])
    return lag


def consumer_lag(port: int, timeout_s: float = 2.0) -> dict[tuple[str, int], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as response:
        return parse_consumer_lag(response.read().decode())


def peak_rss_bytes(pid: int) -> int | None:
    """The process's peak resident memory (VmHWM), None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None
