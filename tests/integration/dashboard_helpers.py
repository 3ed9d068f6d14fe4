"""The dashboard on a free loopback port over the test's Redis, and known values to show."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import uvicorn

from shopstream.dashboard.app import Board, create_app
from shopstream.dashboard.config import DashboardConfig
from shopstream.dashboard.sample import ROLLING, StockView, Writer, decision
from tests.integration.ports import free_port

T0 = 1_763_640_000_000  # a window start, event time (ms)
MINUTE = 60_000
HOUR = 60 * MINUTE
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard"

HOSTILE_SUMMARY = '<img src=x onerror="window.pwned=1"><b>bold</b> & SKU-9 low'
HOSTILE_SKU = "<script>window.pwned=2</script>"


def fast_config(**overrides) -> DashboardConfig:
    """Short intervals so a test sees a change in a fraction of a second."""
    return replace(DashboardConfig(), **{"poll_s": 0.1, "stock_poll_s": 0.2, "census_s": 0.2, **overrides})


@contextmanager
def running_dashboard(settings, config: DashboardConfig):
    port = free_port()
    config = replace(config, host="127.0.0.1", port=port)
    board = Board(settings, config)
    server = uvicorn.Server(uvicorn.Config(
        create_app(board), host="127.0.0.1", port=port, log_level="warning", access_log=False,
        lifespan="on", timeout_graceful_shutdown=1,
    ))
    thread = threading.Thread(target=server.run, name="dashboard-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", board
    finally:
        server.should_exit = True
        thread.join(15)
        board.client.close()


def fill_known(client, prefix: str) -> dict:
    """Every section's keys with known values; returns what the page must show."""
    w = Writer(client, prefix)
    for i in range(10):
        w.kpi(T0 + i * MINUTE, T0 + (i + 1) * MINUTE, gmv=1000.0 + i, orders=10 + i, paid_orders=8 + i, uv=100 + i,
              pv=500 + i, payments_succeeded=8 + i, payments_failed=2)
    w.kpi(T0 + 9 * MINUTE, T0 + 10 * MINUTE, gmv=4321.5, orders=37, paid_orders=30, uv=912, pv=5555,
          payments_succeeded=45, payments_failed=5, view=ROLLING)
    w.kpi(T0 + 9 * MINUTE, T0 + 10 * MINUTE, gmv=600.0, orders=6, paid_orders=5, uv=50, pv=300,
          payments_succeeded=5, payments_failed=0, dimension="channel", value="app")
    w.funnel(T0 + 9 * MINUTE, T0 + 10 * MINUTE, "all", "all", (2468, 1500, 700, 300, 220, 200))
    w.funnel(T0, T0 + 10 * MINUTE, "all", "all", (20000, 15000, 7000, 3000, 2200, 2000), view=ROLLING)
    w.funnel(T0 + 9 * MINUTE, T0 + 10 * MINUTE, "channel", "app", (1357, 900, 400, 200, 150, 140))
    w.funnel(T0 + 9 * MINUTE, T0 + 10 * MINUTE, "region", "east", (999, 700, 300, 100, 90, 80))
    w.funnel(T0 + 9 * MINUTE, T0 + 10 * MINUTE, "device", "ios", (888, 600, 200, 100, 80, 70))
    w.experiment("button_colour", T0 + 10 * MINUTE, (("control", 2000, 100), ("green", 2000, 140)))
    w.stock([
        StockView("SKU-SAFE-1", 500, 0, 0, "safe", T0),
        StockView("SKU-SAFE-2", 400, 0, 0, "safe", T0),
        StockView("SKU-WARN", 30, 0, 0, "warning", T0),
        StockView("SKU-URGENT", 12, 2, 0, "urgent", T0, velocity_per_min=2.0, minutes_to_stockout=6.0),
        StockView("SKU-OUT", 0, 5, 0, "out", T0, velocity_per_min=1.0, minutes_to_stockout=0.0),
        StockView(HOSTILE_SKU, 0, 0, 0, "out", T0),
    ])
    w.alert("stock.out", "SKU-OUT", "critical", "SKU-OUT is out of stock in the spot pool",
            ts=T0 + 10 * MINUTE, first_seen_ts=T0 + 7 * MINUTE, count=3)
    w.alert("stock.low", "SKU-9", "warning", HOSTILE_SUMMARY, ts=T0 + 9 * MINUTE, first_seen_ts=T0 + 9 * MINUTE)
    w.decisions([
        decision("p1", T0 + 9 * MINUTE + 1000, "approve"),
        decision("p2", T0 + 9 * MINUTE + 2000, "approve"),
        decision("p3", T0 + 9 * MINUTE + 3000, "review", 0.6),
        decision("p4", T0 + 9 * MINUTE + 4000, "block", 0.97, ("velocity.card", "geo.mismatch")),
        decision("p5", T0 + 8 * MINUTE, "approve"),
    ])
    w.coupon({"coupon_id": "c1", "ts": T0, "user_id": "u1", "reason": "abandoned_cart", "trigger_id": "cart1",
              "kind": "amount_off", "value": 20, "expires_ts": T0 + 86_400_000})
    w.coupon_recovery(HOUR, [(T0 - HOUR, "issued"), (T0 - HOUR, "issued"), (T0 - HOUR, "capped"), (T0, "issued")],
                      [(T0 - HOUR + 60_000, "c0", 150.0), (T0 + 60_000, "c1", 99.5)], T0 + HOUR)
    w.customers({
        "u1": {"score": 0.8, "risk": "high", "tier": "gold", "recency_days": 40, "frequency": 6, "monetary": 3500,
               "updated_ts": T0},
        "u2": {"score": 0.1, "risk": "low", "tier": "gold", "recency_days": 2, "frequency": 7, "monetary": 4000,
               "updated_ts": T0},
        "u3": {"score": 0.5, "risk": "medium", "tier": "bronze", "recency_days": 10, "frequency": 1, "monetary": 50,
               "updated_ts": T0},
    })
    return {"gmv": 1009.0, "orders": 19, "uv": 109, "visit": 2468, "app_visit": 1357}


def new_kpi_window(client, prefix: str, gmv: float, minute: int = 10) -> None:
    Writer(client, prefix).kpi(T0 + minute * MINUTE, T0 + (minute + 1) * MINUTE, gmv=gmv, orders=77, paid_orders=70,
                               uv=700, pv=7000, payments_succeeded=70, payments_failed=0)
