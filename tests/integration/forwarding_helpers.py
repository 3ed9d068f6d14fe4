"""A local PagerDuty Events API receiver, the forwarder as a process, Alertmanager reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from shopstream.settings import Settings


class PagerDutyReceiver:
    """Answers like events.pagerduty.com/v2/enqueue (202), records every accepted event;
    `fail_for(seconds)` answers 503 meanwhile (and records nothing)."""

    def __init__(self):
        self.events: list[dict] = []
        self.refused = 0
        self._fail_until = 0.0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    failing = time.monotonic() < receiver._fail_until
                    if failing:
                        receiver.refused += 1
                    else:
                        event = json.loads(body)
                        if self.path != "/v2/enqueue" or "routing_key" not in event:
                            self._answer(400, {"status": "invalid event"})
                            return
                        receiver.events.append(event)
                if failing:
                    self._answer(503, {"status": "unavailable"})
                else:
                    self._answer(202, {"status": "success", "dedup_key": event["dedup_key"]})

            def _answer(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v2/enqueue"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def fail_for(self, seconds: float) -> None:
        with self._lock:
            self._fail_until = time.monotonic() + seconds

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.events)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_forwarder(settings: Settings, log_file: Path, **env: str) -> subprocess.Popen:
    """`shopstream alerts forward` as its own process, with `settings` and extra environment."""
    full_env = {**os.environ, **settings.to_env(), **env}
    with open(log_file, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "shopstream.cli", "alerts", "forward"], env=full_env,
                                stdout=log, stderr=subprocess.STDOUT)


def stop_forwarder(process: subprocess.Popen, signum: int | None = None) -> None:
    if process.poll() is None:
        if signum is None:
            process.terminate()
        else:
            process.send_signal(signum)
    process.wait(timeout=30)


def alertmanager_alerts(url: str) -> list[dict]:
    """Alertmanager's current (not resolved) alerts, as `GET /api/v2/alerts` gives them."""
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
        return json.loads(response.read())


def forwarded_to_the_end(settings: Settings) -> bool:
    """Whether the forwarder's group has committed every message now on `alerts`: it commits
    only after every destination accepted, so all it will post for them is posted."""
    consumer = Consumer({**settings.kafka_config(), "group.id": settings.forward_group, "enable.auto.commit": False})
    try:
        topic = settings.topic("alerts")
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        for committed in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10):
            _, end = consumer.get_watermark_offsets(TopicPartition(topic, committed.partition), timeout=10)
            if end > 0 and committed.offset < end:
                return False
        return True
    finally:
        consumer.close()
