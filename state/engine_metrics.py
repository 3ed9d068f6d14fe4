"""The engine's own Prometheus metrics, counted where records enter and leave a flow.

Every flow process serves these on its Bytewax dataflow API port (`/metrics`), next to
Bytewax's own metrics: Bytewax appends the `prometheus_client` default registry to its
page, so a metric defined here is served by whichever flow process touches it. The Kafka
source counts what it reads, the Kafka sink what it wrote (after Kafka acknowledged it),
so a number here is never ahead of the topic.

Counting is per batch (one `inc` per topic); only a few output topics are decoded, and
only while the metrics are served (BYTEWAX_DATAFLOW_API_ENABLED), to read the verdict,
rule or window of a record. Labels are bounded: contract topics, verdicts, rules, states.
"""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from typing import Iterable

from prometheus_client import Counter, Gauge, Histogram

from state.serde import loads

EVENTS_IN = Counter("shopstream_events_in", "Records read from a Kafka topic", ["topic"])
RECORDS_OUT = Counter("shopstream_records_out", "Records written to a Kafka topic (acknowledged by Kafka)", ["topic"])
DEAD_LETTERS = Counter("shopstream_dead_letters", "Inputs that could not be used, by source topic", ["source_topic"])
FRAUD_DECISIONS = Counter("shopstream_fraud_decisions", "Fraud decisions by verdict", ["decision"])
FRAUD_LATENCY = Histogram(
    "shopstream_fraud_decision_latency_seconds",
    "From a payment request's event time to its decision (decided_at - ts)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.08, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)
COUPONS = Counter("shopstream_coupons_issued", "Coupons issued, by reason and kind", ["reason", "kind"])
ALERTS = Counter("shopstream_alerts", "Alert state changes on the alerts topic, by rule and status",
                 ["rule", "status"])
WINDOW_END = Gauge("shopstream_window_end_timestamp_seconds",
                   "End of the latest window result written, by metric (event time)", ["metric"])
WINDOW_WRITTEN = Gauge("shopstream_window_written_timestamp_seconds",
                       "Wall time the latest window result was written, by metric", ["metric"])
WINDOW_FRESHNESS = Gauge("shopstream_window_freshness_seconds",
                         "Wall time now minus the end of the latest window written, by metric", ["metric"])

_latest_window_end: dict[str, float] = {}


def serving() -> bool:
    """Metrics are served by this process (the dataflow API is on)."""
    return os.environ.get("BYTEWAX_DATAFLOW_API_ENABLED", "").lower() in ("1", "true")


def count_in(topic: str, records: int) -> None:
    if records:
        EVENTS_IN.labels(topic).inc(records)


def count_out(messages: Iterable) -> None:
    """A batch of `OutboundMessage`s Kafka acknowledged."""
    per_topic: Tally[str] = Tally()
    decode = serving()
    for message in messages:
        per_topic[message.topic] += 1
        if decode and message.topic in _DECODED:
            try:
                _DECODED[message.topic](loads(message.value))
            except Exception:  # noqa: BLE001 - a metric must never stop a flow
                pass
    for topic, n in per_topic.items():
        RECORDS_OUT.labels(topic).inc(n)


def _dead_letter(obj: dict) -> None:
    DEAD_LETTERS.labels(str(obj.get("source_topic", "?"))[:100]).inc()


def _fraud(obj: dict) -> None:
    FRAUD_DECISIONS.labels(str(obj.get("decision", "?"))[:20]).inc()
    decided_at, ts = obj.get("decided_at"), obj.get("ts")
    if isinstance(decided_at, (int, float)) and isinstance(ts, (int, float)):
        FRAUD_LATENCY.observe(max(0.0, (decided_at - ts) / 1000))


def _coupon(obj: dict) -> None:
    COUPONS.labels(str(obj.get("reason", "?"))[:40], str(obj.get("kind", "?"))[:40]).inc()


def _alert(obj: dict) -> None:
    status = "reminder" if obj.get("reminder") else str(obj.get("status", "?"))[:20]
    ALERTS.labels(str(obj.get("rule", "?"))[:100], status).inc()


def _window(obj: dict) -> None:
    window_end = obj.get("window_end")
    if not isinstance(window_end, (int, float)):
        return
    metric = str(obj.get("metric", "?"))[:40]
    end_s = window_end / 1000
    if end_s >= _latest_window_end.get(metric, float("-inf")):
        if metric not in _latest_window_end:
            WINDOW_FRESHNESS.labels(metric).set_function(lambda m=metric: time.time() - _latest_window_end[m])
        _latest_window_end[metric] = end_s
        WINDOW_END.labels(metric).set(end_s)
    WINDOW_WRITTEN.labels(metric).set(time.time())


_DECODED = {
    "dead-letters": _dead_letter,
    "fraud-decisions": _fraud,
    "coupons": _coupon,
    "alerts": _alert,
    "metrics": _window,
}
