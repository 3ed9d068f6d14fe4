"""The storm test on the real broker and Redis: 10,000 SKUs going out at once are a
handful of messages on `alerts`, every SKU is in `alerts:active`, and the full list is
in `alerts:group:stock.out`."""

from __future__ import annotations

import orjson
import pytest

from operators.alerts import AlertCandidate
from shopstream.runner import start_flow, stop_all
from state.alert_candidates import candidate_message
from tests.integration.kafka_helpers import produce, read_topic, wait_until

pytestmark = pytest.mark.integration

T0 = 1_763_683_200_000
SKUS = 10_000


def test_ten_thousand_skus_out_at_once_are_a_handful_of_pages(settings, redis_client):
    storm = []
    for i in range(SKUS):
        c = AlertCandidate(ts=T0 + i % 1000, rule="stock.out", key=f"sku-{i:05d}", active=True, severity="critical",
                           summary=f"sku-{i:05d} is out of stock", value=0, threshold=0)
        message = candidate_message(c)
        storm.append((message.key, message.value))
    produce(settings, "alert-candidates", storm)
    group_key = settings.redis_key("alerts:group:stock.out")
    processes = start_flow(settings, "alerts")
    try:
        # The group waits 10 s of event time; input then goes quiet, so the wall clock moves it.
        wait_until(lambda: redis_client.exists(group_key), 120, "the grouped page")
    finally:
        stop_all(processes)
    assert redis_client.hlen(settings.redis_key("alerts:active")) == SKUS
    alerts = [orjson.loads(v) for _, v in read_topic(settings, "alerts")]
    assert 1 <= len({a["alert_id"] for a in alerts}) <= 5
    (page,) = {a["alert_id"]: a for a in alerts}.values()
    assert page["dedup_key"] == "stock.out:*" and page["count"] == SKUS and page["status"] == "firing"
    assert len(page["group"]["top_keys"]) == 10
    listed = orjson.loads(redis_client.get(group_key))
    assert listed["alert_id"] == page["alert_id"] and sorted(listed["keys"]["firing"]) == [
        f"sku-{i:05d}" for i in range(SKUS)]
    assert redis_client.ttl(group_key) > 0
