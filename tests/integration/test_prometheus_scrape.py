"""A real Prometheus (Debian's `prometheus`, started through the services launcher) scrapes
every flow process and the forwarder, found through the file-based service discovery
files that `shopstream run` and `shopstream alerts forward` write."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from dataclasses import replace

import orjson
import pytest

from shopstream import services
from shopstream.runner import FLOWS, api_ports, start_flows, stop_all, write_sd_file
from tests.integration.forwarding_helpers import PagerDutyReceiver, start_forwarder, stop_forwarder
from tests.integration.kafka_helpers import produce, wait_until
from tests.integration.ports import free_port

pytestmark = pytest.mark.integration


def query(prometheus_url: str, promql: str) -> list[dict]:
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]["result"]


def prometheus_yml(sd_dir) -> str:
    return f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: shopstream
    file_sd_configs:
      - files: ["{sd_dir}/*.json"]
        refresh_interval: 1s
"""


def test_prometheus_scrapes_every_flow_and_the_forwarder(settings, tmp_path):
    flows = list(FLOWS)
    settings = replace(settings, flow_api_port_base=free_port(span=len(flows)), metrics_sd_dir=tmp_path / "sd",
                       forward_metrics_port=free_port())
    pagerduty = PagerDutyReceiver()
    ports = api_ports(settings)
    sd_file = write_sd_file(settings, ports, flows)
    assert sd_file is not None and len(json.loads(sd_file.read_text())) == len(flows)
    prometheus = services.start_prometheus(tmp_path / "prometheus", free_port(), prometheus_yml(settings.metrics_sd_dir))
    processes = start_flows(settings, flows, log_dir=tmp_path / "logs")
    forwarder = start_forwarder(replace(settings, pagerduty_url=pagerduty.url, pagerduty_routing_key="R0UTINGKEY"),
                                tmp_path / "forwarder.log")
    try:
        now = int(time.time() * 1000)
        clicks = [(b"u1", orjson.dumps({"event_id": f"e{i}", "ts": now + i, "user_id": "u1", "session_id": "s1",
                                        "type": "page_view", "channel": "app", "region": "east", "device": "ios"}))
                  for i in range(50)]
        produce(settings, "clickstream", clicks + [(b"u1", b"not json")])
        wanted = set(flows) | {"forwarder"}

        def all_up():
            up = query(prometheus.url, 'up{job="shopstream"} == 1')
            return {r["metric"]["flow"] for r in up} >= wanted

        wait_until(all_up, 180, "every flow and the forwarder up in Prometheus", interval_s=1)

        def intake_counted():
            result = query(prometheus.url, 'shopstream_events_in_total{flow="intake",topic="clickstream"}')
            return result and float(result[0]["value"][1]) >= 51

        wait_until(intake_counted, 120, "intake's input count in Prometheus", interval_s=1)
        wait_until(lambda: query(prometheus.url, 'shopstream_dead_letters_total{flow="intake"}'), 120,
                   "the dead letter counted", interval_s=1)
        # Bytewax's own metrics come from the same page, consumer lag per input partition.
        wait_until(lambda: query(prometheus.url, 'bytewax_kafka_consumer_lag{flow="funnel"}'), 60,
                   "Bytewax's consumer lag", interval_s=1)
        assert query(prometheus.url, 'shopstream_forward_lag_messages{flow="forwarder"}')
    finally:
        stop_forwarder(forwarder)
        stop_all(processes)
        services.stop_monitoring(prometheus)
        pagerduty.close()
