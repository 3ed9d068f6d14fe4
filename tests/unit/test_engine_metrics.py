"""Our Prometheus metrics, counted at the Kafka sink, and the service-discovery file of
`shopstream run`."""

import json
import socket
from dataclasses import replace

import orjson
import pytest
from prometheus_client import REGISTRY

from shopstream.runner import FLOWS, api_ports, check_ports_free, write_sd_file
from shopstream.settings import ConfigError, Settings
from state import engine_metrics
from state.kafka import OutboundMessage


def value(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_outputs_are_counted_by_topic_verdict_rule_and_window(monkeypatch):
    monkeypatch.setenv("BYTEWAX_DATAFLOW_API_ENABLED", "true")
    before = {
        "block": value("shopstream_fraud_decisions_total", decision="block"),
        "alerts": value("shopstream_alerts_total", rule="stock.out", status="escalated"),
        "reminders": value("shopstream_alerts_total", rule="stock.out", status="reminder"),
        "dead": value("shopstream_dead_letters_total", source_topic="orders"),
        "coupons": value("shopstream_records_out_total", topic="coupons"),
        "latency": value("shopstream_fraud_decision_latency_seconds_count"),
    }
    engine_metrics.count_out([
        OutboundMessage("fraud-decisions", b"u", orjson.dumps({"decision": "block", "ts": 1000, "decided_at": 1040})),
        OutboundMessage("alerts", b"k", orjson.dumps({"rule": "stock.out", "status": "escalated"})),
        OutboundMessage("alerts", b"k", orjson.dumps({"rule": "stock.out", "status": "escalated", "reminder": True})),
        OutboundMessage("dead-letters", b"d", orjson.dumps({"source_topic": "orders"})),
        OutboundMessage("coupons", b"c", orjson.dumps({"reason": "abandoned_cart", "kind": "amount_off"})),
        OutboundMessage("metrics", b"m", orjson.dumps({"metric": "kpi", "window_end": 1_763_683_260_000})),
        OutboundMessage("metrics", b"m", b"not json"),  # never stops a flow
    ])
    assert value("shopstream_fraud_decisions_total", decision="block") == before["block"] + 1
    assert value("shopstream_fraud_decision_latency_seconds_count") == before["latency"] + 1
    assert value("shopstream_alerts_total", rule="stock.out", status="escalated") == before["alerts"] + 1
    assert value("shopstream_alerts_total", rule="stock.out", status="reminder") == before["reminders"] + 1
    assert value("shopstream_dead_letters_total", source_topic="orders") == before["dead"] + 1
    assert value("shopstream_records_out_total", topic="coupons") == before["coupons"] + 1
    assert value("shopstream_window_end_timestamp_seconds", metric="kpi") == 1_763_683_260
    assert value("shopstream_window_freshness_seconds", metric="kpi") > 0


def test_the_sd_file_lists_every_flow_process_on_its_predictable_port(tmp_path):
    settings = replace(Settings.from_env({}), processes=2, metrics_sd_dir=tmp_path, flow_api_port_base=20000)
    ports = api_ports(settings)
    path = write_sd_file(settings, ports, list(FLOWS))
    groups = json.loads(path.read_text())
    assert groups[0] == {"targets": ["127.0.0.1:20000"], "labels": {"job": "shopstream", "flow": "intake", "process": "0"}}
    assert groups[3] == {"targets": ["127.0.0.1:20003"], "labels": {"job": "shopstream", "flow": "stock", "process": "1"}}
    assert len(groups) == 2 * len(FLOWS)
    assert write_sd_file(replace(settings, flow_api_port_base=0), api_ports(replace(settings, flow_api_port_base=0)),
                         list(FLOWS)) is None


def test_a_taken_metrics_port_is_refused_before_any_flow_starts():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match="SHOPSTREAM_FLOW_API_PORT_BASE"):
            check_ports_free({"intake": [port]})
