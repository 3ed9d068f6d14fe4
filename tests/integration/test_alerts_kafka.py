"""The alerts flow on the real broker and Redis: kill -9 and restart re-pages nothing,
acknowledgement through the CLI, and the traffic_drop scenario end to end."""

from __future__ import annotations

import argparse
import io
import signal
from dataclasses import replace

import orjson
import pytest

from operators.alerts import AlertCandidate
from shopstream import alerts_cli
from shopstream.runner import start_flow, stop_all
from simulators import generate
from simulators.timeline import HOUR
from state.alert_candidates import candidate_message
from tests.integration.kafka_helpers import produce, read_topic, wait_until

pytestmark = pytest.mark.integration

MINUTE = 60_000
T0 = 1_763_683_200_000


def candidates(*specs):
    out = []
    for minute, key, active in specs:
        c = AlertCandidate(ts=T0 + int(minute * MINUTE), rule="stock.out", key=key, active=active,
                           severity="critical", summary=f"{key} is out of stock", value=0, threshold=0)
        message = candidate_message(c)
        out.append((message.key, message.value))
    return out


def stream_ids(redis_client, settings):
    entries = redis_client.xrange(settings.redis_key("stream:alerts"))
    return [fields[b"alert_id"].decode() for _, fields in entries]


def test_kill_9_and_restart_does_not_repeat_a_page_and_ack_stops_escalation(settings, redis_client):
    produce(settings, "alert-candidates", candidates((0, "sku-1", True), (0, "sku-2", True)) +
            candidates(*[(m / 2000, "sku-1", True) for m in range(1, 2000)]))  # a storm of repeats
    processes = start_flow(settings, "alerts")
    try:
        wait_until(lambda: len(stream_ids(redis_client, settings)) >= 2, 60, "both alerts to fire")
        wait_until(lambda: orjson.loads(redis_client.hget(settings.redis_key("alerts:active"), "stock.out:sku-1")
                                        or b'{"count": 0}')["count"] >= 2000, 60, "the storm to be counted")
    finally:
        for proc in processes:
            proc.popen.send_signal(signal.SIGKILL)
            proc.popen.wait()

    # On call acknowledges sku-2; then 10 minutes of event time pass and sku-1 clears.
    args = argparse.Namespace(dedup_key="stock.out:sku-2", note="on it")
    assert alerts_cli.cmd_ack(args, settings) == 0
    assert redis_client.exists(settings.redis_key("alerts:ack:stock.out:sku-2"))
    produce(settings, "alert-candidates", candidates((10, "sku-1", False)))
    processes = start_flow(settings, "alerts")
    try:
        wait_until(lambda: f"stock.out:sku-1@{T0}/resolved" in stream_ids(redis_client, settings), 60, "the resolve")
    finally:
        stop_all(processes)

    ids = stream_ids(redis_client, settings)
    assert ids == [
        f"stock.out:sku-1@{T0}/firing",
        f"stock.out:sku-2@{T0}/firing",
        f"stock.out:sku-1@{T0}/escalated",
        f"stock.out:sku-1@{T0}/resolved",
    ]
    topic_ids = {orjson.loads(v)["alert_id"] for _, v in read_topic(settings, "alerts")}
    assert topic_ids == set(ids)  # at-least-once on Kafka, always the same ids
    active = redis_client.hgetall(settings.redis_key("alerts:active"))
    assert list(active) == [b"stock.out:sku-2"]
    assert orjson.loads(active[b"stock.out:sku-2"])["acknowledged"] is True
    resolved = [orjson.loads(v) for _, v in read_topic(settings, "alerts") if b"resolved" in v][0]
    assert resolved["count"] == 2000

    board = io.StringIO()
    alerts_cli.cmd_tail(argparse.Namespace(once=True, color="never", from_beginning=False), settings, out=board)
    text = board.getvalue()
    assert "firing now: 1 critical" in text and "stock.out:sku-2" in text and "[acknowledged]" in text


def test_traffic_drop_end_to_end_pages_once_and_resolves(settings, redis_client):
    # Only clickstream, with 5 minutes of allowed lateness: read flat out from a backlog,
    # topics and partitions advance at different event-time speeds and the intake's
    # stream-wide clock would close windows before slower partitions fill them (see README).
    minute_windows = replace(settings, input_window_s=60, allowed_lateness_s=300)
    sim = generate(("traffic_drop",), seed=3, duration_ms=3 * HOUR, shoppers=100_000)
    by_topic: dict[str, list] = {}
    for event in sim:
        by_topic.setdefault(event.topic, []).append((event.key, event.value))
    produce(minute_windows, "clickstream", by_topic["clickstream"])
    (incident,) = [r for r in sim.truth if getattr(r, "name", None) == "traffic_drop"]
    dedup_key = f"traffic.drop:clickstream:channel:{incident.detail['channel']}"

    processes = start_flow(minute_windows, "intake") + start_flow(minute_windows, "alerts")
    try:
        wait_until(lambda: f"{dedup_key}@" in " ".join(stream_ids(redis_client, settings))
                   and any(i.endswith("/resolved") for i in stream_ids(redis_client, settings)),
                   180, "the traffic drop to fire and resolve")
    finally:
        stop_all(processes)
    alerts = [orjson.loads(v) for _, v in read_topic(settings, "alerts")]
    changes = sorted({(a["alert_id"], a["status"], a["ts"]) for a in alerts if not a.get("reminder")}, key=lambda x: x[2])
    assert [(alert_id.split("@")[0], status) for alert_id, status, _ in changes] == [
        (dedup_key, "firing"), (dedup_key, "escalated"), (dedup_key, "resolved")
    ]
    assert incident.start_ts < changes[0][2] <= incident.start_ts + 3 * MINUTE
    assert incident.end_ts < changes[-1][2] <= incident.end_ts + 3 * MINUTE
