"""The dashboard's API and event stream over a real Redis filled with known values."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import replace

import httpx
import orjson
import pytest
import redis

from shopstream.dashboard.config import DashboardConfig
from shopstream.settings import ConfigError
from state.serde import loads
from tests.integration.dashboard_helpers import (
    HOSTILE_SKU,
    HOSTILE_SUMMARY,
    HOUR,
    MINUTE,
    T0,
    fast_config,
    fill_known,
    new_kpi_window,
    running_dashboard,
)
from tests.integration.ports import free_port

pytestmark = pytest.mark.integration

WAIT_S = 20  # generous bound for "it arrives"; nothing here measures time


def sse_events(response: httpx.Response):
    """(event, data) pairs of a Server-Sent Events stream."""
    event, data = "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event, loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def wait_for_event(events, predicate, what: str):
    deadline = time.monotonic() + WAIT_S
    for event, data in events:
        if predicate(event, data):
            return data
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no event with {what} within {WAIT_S}s")


def test_snapshot_shows_every_section_as_written(settings, redis_client):
    fill_known(redis_client, settings.redis_prefix)
    with running_dashboard(settings, fast_config()) as (url, _):
        snap = httpx.get(f"{url}/api/snapshot").json()

    assert snap["status"]["redis"] == "ok"
    kpi = snap["kpi"]
    assert kpi["latest"]["gmv"] == 1009.0 and kpi["latest"]["uv"] == 109 and kpi["latest"]["orders"] == 19
    assert kpi["latest"]["payment_success_rate"] == round(17 / 19, 4)
    assert kpi["rolling"]["gmv"] == 4321.5
    assert [w["gmv"] for w in kpi["history"]] == [1000.0 + i for i in range(10)]
    assert [c["value"] for c in kpi["channels"]] == ["app"]

    funnel = snap["funnel"]
    assert funnel["overall"]["stages"]["visit"] == 2468
    assert funnel["overall"]["conversion"]["product_view"] == round(1500 / 2468, 4)
    assert funnel["rolling"]["stages"]["visit"] == 20000
    assert [w["value"] for w in funnel["by"]["channel"]] == ["app"]
    assert [w["value"] for w in funnel["by"]["region"]] == ["east"]
    assert [w["value"] for w in funnel["by"]["device"]] == ["ios"]

    stock = snap["stock"]
    assert stock["counts"] == {"safe": 2, "warning": 1, "urgent": 1, "out": 2}
    assert [r["sku"] for r in stock["hot"]] == ["SKU-OUT", HOSTILE_SKU, "SKU-URGENT"]
    urgent = stock["hot"][2]
    assert urgent["minutes_to_stockout"] == 6.0
    assert urgent["replenish"] == 2 * 120 - 12  # covers SHOPSTREAM_STOCK_REPLENISH_COVER_MIN at 2/min

    alerts = snap["alerts"]
    assert alerts["by_severity"] == {"critical": 1, "warning": 1}
    first = alerts["active"][0]
    assert first["dedup_key"] == "stock.out:SKU-OUT" and first["count"] == 3 and first["acknowledged"] is False
    assert first["age_ms"] == 3 * MINUTE  # event time: newest stamp seen minus first seen
    assert alerts["active"][1]["summary"] == HOSTILE_SUMMARY  # as written; the page shows it as text
    assert {a["dedup_key"] for a in alerts["recent"]} == {"stock.out:SKU-OUT", "stock.low:SKU-9"}

    fraud = snap["fraud"]
    assert fraud["totals"] == {"approve": 3, "review": 1, "block": 1}
    assert fraud["per_minute"] == [
        {"minute": T0 + 8 * MINUTE, "approve": 1},
        {"minute": T0 + 9 * MINUTE, "approve": 2, "review": 1, "block": 1},
    ]
    assert fraud["latest_blocks"][0]["payment_id"] == "p4"
    assert fraud["latest_blocks"][0]["reasons"] == ["velocity.card", "geo.mismatch"]

    assert snap["coupons"]["issued"] == 1 and snap["coupons"]["recent"][0]["coupon_id"] == "c1"
    recovery = snap["coupons"]["recovery"]  # two hourly windows, as the coupons flow writes them
    assert (recovery["issued"], recovery["redeemed"], recovery["recovered_gmv"]) == (3, 2, 249.5)
    assert recovery["recovery_rate"] == round(2 / 3, 4) and recovery["until"] == T0 + HOUR
    assert snap["churn"]["grid"] == {"gold": {"high": 1, "low": 1}, "bronze": {"medium": 1}}
    [experiment] = snap["experiments"]
    assert experiment["name"] == "button_colour" and experiment["comparisons"][0]["lift"] == 0.4


def test_event_stream_sends_a_snapshot_then_what_changed(settings, redis_client):
    fill_known(redis_client, settings.redis_prefix)
    with running_dashboard(settings, fast_config()) as (url, _):
        with httpx.stream("GET", f"{url}/api/events", timeout=WAIT_S) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
            event, snapshot = next(events)
            assert event == "snapshot" and snapshot["kpi"]["latest"]["gmv"] == 1009.0

            new_kpi_window(redis_client, settings.redis_prefix, gmv=98765.25)
            update = wait_for_event(events, lambda e, d: e == "update" and "kpi" in d, "the new KPI window")
            assert update["kpi"]["latest"]["gmv"] == 98765.25
            assert "stock" not in update  # only what changed is sent

            redis_client.hset(f"{settings.redis_prefix}stock:SKU-SAFE-1", "level", "out")
            update = wait_for_event(events, lambda e, d: "stock" in d, "the stock change")
            assert update["stock"]["counts"]["out"] == 3


def test_acknowledge_sets_the_ack_key_as_the_command_line_does(settings, redis_client):
    fill_known(redis_client, settings.redis_prefix)
    ack_key = f"{settings.redis_prefix}alerts:ack:stock.out:SKU-OUT"
    with running_dashboard(settings, fast_config()) as (url, _):
        refused = httpx.post(f"{url}/api/alerts/ack", json={"dedup_key": "stock.out:SKU-OUT"},
                             headers={"origin": "http://evil.example"})
        assert refused.status_code == 403
        assert httpx.post(f"{url}/api/alerts/ack", content=b"dedup_key=stock.out:SKU-OUT",
                          headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 415
        assert httpx.post(f"{url}/api/alerts/ack", json={"dedup_key": "nope:nothing"}).status_code == 404
        assert redis_client.get(ack_key) is None

        response = httpx.post(f"{url}/api/alerts/ack", json={"dedup_key": "stock.out:SKU-OUT"},
                              headers={"origin": url})
        assert response.status_code == 200
        ack = loads(redis_client.get(ack_key))
        assert ack["first_seen_ts"] == T0 + 7 * MINUTE and ack["by"].startswith("dashboard")
        assert 0 < redis_client.ttl(ack_key) <= 7 * 24 * 3600

        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            active = httpx.get(f"{url}/api/snapshot").json()["alerts"]["active"]
            if active[0]["acknowledged"]:
                break
            time.sleep(0.05)
        assert active[0]["dedup_key"] == "stock.out:SKU-OUT" and active[0]["acknowledged"] is True


def test_token_protects_the_page_the_api_and_acknowledging(settings, redis_client):
    fill_known(redis_client, settings.redis_prefix)
    token = "s3cret-token-for-tests"
    with running_dashboard(settings, fast_config(token=token)) as (url, _):
        assert httpx.get(f"{url}/").status_code == 401
        assert httpx.get(f"{url}/api/snapshot").status_code == 401
        assert httpx.get(f"{url}/?token=wrong-token-value").status_code == 401
        assert httpx.post(f"{url}/api/alerts/ack", json={"dedup_key": "stock.out:SKU-OUT"}).status_code == 401
        assert redis_client.get(f"{settings.redis_prefix}alerts:ack:stock.out:SKU-OUT") is None
        assert httpx.get(f"{url}/static/dashboard.js").status_code == 200  # assets hold no data

        with httpx.Client(base_url=url) as browser:
            entry = browser.get(f"/?token={token}")
            assert entry.status_code == 303 and entry.headers["location"] == "/"
            cookie = entry.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie
            assert browser.get("/").status_code == 200  # the cookie now
            assert browser.get("/api/snapshot").json()["kpi"]["latest"]["gmv"] == 1009.0
        bearer = {"authorization": f"Bearer {token}"}
        assert httpx.post(f"{url}/api/alerts/ack", json={"dedup_key": "stock.out:SKU-OUT"},
                          headers=bearer).status_code == 200


def test_binding_beyond_loopback_needs_a_token():
    with pytest.raises(ConfigError, match="SHOPSTREAM_DASHBOARD_TOKEN"):
        DashboardConfig.from_env({"SHOPSTREAM_DASHBOARD_HOST": "0.0.0.0"})
    assert DashboardConfig.from_env({"SHOPSTREAM_DASHBOARD_HOST": "0.0.0.0",
                                     "SHOPSTREAM_DASHBOARD_TOKEN": "long-enough-token"}).host == "0.0.0.0"
    assert DashboardConfig.from_env({}).host == "127.0.0.1"
    with pytest.raises(ConfigError, match="SHOPSTREAM_DASHBOARD_PORT"):
        DashboardConfig.from_env({"SHOPSTREAM_DASHBOARD_PORT": "eighty"})


def _start_redis(port: int, directory) -> subprocess.Popen:
    process = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)
        finally:
            client.close()


def test_the_stream_survives_a_redis_restart(settings, tmp_path):
    """A Redis of its own (the shared one serves every other test): stopped under a
    connected page, the stream says so; started again, the values come back."""
    port = free_port()
    own = replace(settings, redis_url=f"redis://127.0.0.1:{port}/0")
    process = _start_redis(port, tmp_path)
    try:
        client = redis.Redis(port=port)
        fill_known(client, own.redis_prefix)
        with running_dashboard(own, fast_config()) as (url, _):
            with httpx.stream("GET", f"{url}/api/events", timeout=WAIT_S) as response:
                events = sse_events(response)
                assert next(events)[1]["status"]["redis"] == "ok"
                process.terminate()
                process.wait(WAIT_S)
                down = wait_for_event(events, lambda e, d: "status" in d, "the outage")
                assert down["status"]["redis"] == "unreachable"

                process = _start_redis(port, tmp_path)  # empty: a restart without persistence
                client = redis.Redis(port=port)
                new_kpi_window(client, own.redis_prefix, gmv=55555.0)
                wait_for_event(events, lambda e, d: "kpi" in d and (d["kpi"]["latest"] or {}).get("gmv") == 55555.0,
                               "the values after the restart")
            assert httpx.get(f"{url}/api/snapshot").json()["status"]["redis"] == "ok"
        client.close()
    finally:
        process.terminate()
        process.wait(WAIT_S)


def test_census_walks_are_not_starved_by_walks_that_restart_every_second(settings, redis_client):
    """With more SKUs than one SCAN call covers, the SKU walk needs several ticks and
    restarts every second: it must not keep the customer and fraud walks from ever finishing."""
    from shopstream.dashboard.reader import SCAN_COUNT, BoardReader
    from shopstream.dashboard.sample import Writer, decision

    prefix = settings.redis_prefix
    pipe = redis_client.pipeline(transaction=False)
    for i in range(int(SCAN_COUNT * 2.5)):
        pipe.hset(f"{prefix}stock:bulk-{i}", mapping={"level": "safe", "available": 100})
    pipe.execute()
    writer = Writer(redis_client, prefix)
    writer.customers({f"u{i}": {"tier": "gold", "risk": "low"} for i in range(3)})
    writer.decisions([decision("p1", T0, "block", 0.99, ("velocity.card",))])

    reader = BoardReader(redis_client, prefix, fast_config(census_s=1.0))
    for tick in range(60):  # a minute of one-second ticks, one SCAN call each
        sections = reader.poll(now=float(tick), scan_budget=1)
    assert sections["churn"] == {"customers": 3, "grid": {"gold": {"low": 3}}, "complete": True}
    assert sections["fraud"]["totals"] == {"block": 1}
    assert sections["stock"]["counts"] == {"safe": int(SCAN_COUNT * 2.5)}


def test_kpis_show_clean_figures_with_flagged_traffic_apart(settings, redis_client):
    """Issue 22: the traffic flow's flagged orders per window come out of the shown KPIs."""
    fill_known(redis_client, settings.redis_prefix)
    p = settings.redis_prefix
    redis_client.set(f"{p}traffic:window:{T0 + 9 * MINUTE}",
                     b'{"metric":"traffic","window_start":%d,"window_end":%d,"flagged_orders":3,'
                     b'"flagged_gmv":300.0,"flagged_sessions":5}' % (T0 + 9 * MINUTE, T0 + 10 * MINUTE))
    redis_client.set(f"{p}traffic:window:{T0 + 8 * MINUTE}", b'{"flagged_orders":1,"flagged_gmv":100.5}')
    redis_client.set(f"{p}traffic:window:{T0 + 7 * MINUTE}", b"{not json")  # skipped, never an error
    with running_dashboard(settings, fast_config()) as (url, _):
        kpi = httpx.get(f"{url}/api/snapshot").json()["kpi"]
    latest = kpi["latest"]
    assert latest["gmv"] == 709.0 and latest["gmv_gross"] == 1009.0 and latest["flagged_gmv"] == 300.0
    assert latest["paid_orders"] == 14 and latest["paid_orders_gross"] == 17 and latest["flagged_orders"] == 3
    assert latest["orders"] == 16 and latest["aov"] == round(709.0 / 14, 2) and latest["flagged_sessions"] == 5
    assert kpi["rolling"]["gmv"] == 4021.5
    assert [w["gmv"] for w in kpi["history"]] == [1000.0 + i for i in range(8)] + [907.5, 709.0]
    assert kpi["channels"][0]["gmv"] == 600.0  # channel windows stay gross


def test_funnel_shows_clean_conversion_with_the_gross_beside_it(settings, redis_client):
    """Issue 22: flagged sessions per stage come out of the overall funnel (latest and
    rolling), conversion is computed again on what is left; created and paid flagged orders
    come out of the KPI's orders and paid orders each."""
    fill_known(redis_client, settings.redis_prefix)
    p = settings.redis_prefix
    redis_client.set(f"{p}traffic:window:{T0 + 9 * MINUTE}", orjson.dumps({
        "metric": "traffic", "window_start": T0 + 9 * MINUTE, "window_end": T0 + 10 * MINUTE,
        "flagged_orders": 3, "flagged_gmv": 300.0, "flagged_sessions": 13, "flagged_created_orders": 2,
        "flagged_paid_orders": 3, "flagged_stages": {"visit": 18, "product_view": 18, "add_to_cart": 10,
                                                     "checkout": 10, "order": 5, "payment": 5}}))
    with running_dashboard(settings, fast_config()) as (url, _):
        snapshot = httpx.get(f"{url}/api/snapshot").json()
    overall, rolling = snapshot["funnel"]["overall"], snapshot["funnel"]["rolling"]
    assert list(overall["stages"].values()) == [2450, 1482, 690, 290, 215, 195]
    assert overall["overall_conversion"] == round(195 / 2450, 4)
    assert overall["conversion"]["payment"] == round(195 / 215, 4)
    assert list(overall["stages_gross"].values()) == [2468, 1500, 700, 300, 220, 200]
    assert overall["overall_conversion_gross"] == round(200 / 2468, 4) and overall["flagged_stages"]["visit"] == 18
    assert rolling["stages"]["visit"] == 20000 - 18 and rolling["stages_gross"]["visit"] == 20000
    assert snapshot["funnel"]["by"]["channel"][0]["stages"]["visit"] == 1357  # per channel: gross
    latest = snapshot["kpi"]["latest"]
    assert (latest["orders"], latest["paid_orders"], latest["gmv"]) == (19 - 2, 17 - 3, 709.0)

    from shopstream.demo import _funnel_line
    line = _funnel_line(redis_client, settings)
    assert line.startswith("funnel (last window): visit 2450 > product_view 1482 > ")
    assert "; conversion 7.96% (gross 8.10%); GMV 709, 17 orders (3 flagged orders, 300 GMV, left out)" in line


def test_demo_summary_shows_clean_gmv_and_the_rings(settings, redis_client):
    from shopstream.demo import _funnel_line, _traffic_line

    fill_known(redis_client, settings.redis_prefix)
    p = settings.redis_prefix
    assert _traffic_line(redis_client, settings) == "traffic: no ring found"
    redis_client.set(f"{p}traffic:window:{T0 + 9 * MINUTE}", b'{"flagged_orders":3,"flagged_gmv":300.0}')
    redis_client.hset(f"{p}ring:ring-1", mapping={"flagged_orders": 3, "flagged_gmv": 300.0, "flagged_sessions": 0})
    redis_client.hset(f"{p}ring:ring-2", mapping={"flagged_orders": 0, "flagged_gmv": 0, "flagged_sessions": 40})
    line = _funnel_line(redis_client, settings)
    assert "GMV 709, 16 orders (3 flagged orders, 300 GMV, left out)" in line
    assert _traffic_line(redis_client, settings) == (
        "traffic: 2 rings, 3 fake orders (300 GMV) and 40 farm sessions flagged")
