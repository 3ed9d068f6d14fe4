"""Clean KPI figures: a KPI window with the traffic flow's flagged orders taken out.

The funnel flow counts every order; the traffic flow (`flows/traffic.py`) writes, per
KPI window, the flagged orders, GMV and sessions it found (`traffic:window:{start}`), by
the time the order was paid. A dashboard or summary shows the clean figures by default
and the gross and flagged ones next to them. A flagged order created and paid in
different windows counts in the window of its payment.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping


def clean_kpi(kpi: Mapping[str, Any], flagged_windows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`kpi` with `gmv`, `orders`, `paid_orders` and `aov` clean; `*_gross` and `flagged_*` apart."""
    flagged_orders = flagged_sessions = 0
    flagged_gmv = 0.0
    for window in flagged_windows:
        flagged_orders += int(window.get("flagged_orders") or 0)
        flagged_gmv += float(window.get("flagged_gmv") or 0.0)
        flagged_sessions += int(window.get("flagged_sessions") or 0)
    out = dict(kpi)
    gmv = float(kpi.get("gmv") or 0.0)
    paid = int(kpi.get("paid_orders") or 0)
    orders = int(kpi.get("orders") or 0)
    clean_gmv = round(max(0.0, gmv - flagged_gmv), 2)
    clean_paid = max(0, paid - flagged_orders)
    out.update(
        gmv=clean_gmv,
        orders=max(0, orders - flagged_orders),
        paid_orders=clean_paid,
        aov=round(clean_gmv / clean_paid, 2) if clean_paid else None,
        gmv_gross=kpi.get("gmv"),
        orders_gross=kpi.get("orders"),
        paid_orders_gross=kpi.get("paid_orders"),
        aov_gross=kpi.get("aov"),
        flagged_orders=flagged_orders,
        flagged_gmv=round(flagged_gmv, 2),
        flagged_sessions=flagged_sessions,
    )
    return out


def window_starts(kpi: Mapping[str, Any], step_ms: int) -> list[int]:
    """The traffic windows inside a KPI window (one for tumbling, several for rolling)."""
    start, end = kpi.get("window_start"), kpi.get("window_end")
    if type(start) is not int or type(end) is not int or step_ms <= 0 or end <= start:
        return []
    first = start // step_ms * step_ms
    return list(range(first, end, step_ms))[:10_000]
