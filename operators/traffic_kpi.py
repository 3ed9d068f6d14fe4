"""Clean figures: the funnel flow's KPI and funnel windows with flagged traffic taken out.

The funnel flow counts every order and session; the traffic flow (`flows/traffic.py`)
writes, per KPI window (`traffic:window:{start}`, metric "traffic"), what of it was
flagged: orders created and paid in the window and their GMV (by paid time), and the
flagged sessions by the deepest funnel stage they reached in the window, counted as the
funnel counts sessions. Clean = gross - flagged, window by window; a rolling view adds
its windows up. A dashboard or summary shows the clean figures by default and the gross
and flagged ones next to them.

Records written before the traffic flow counted created and paid orders apart
(`flagged_created_orders`, `flagged_paid_orders`) fall back to `flagged_orders` for both.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

STAGES = ("visit", "product_view", "add_to_cart", "checkout", "order", "payment")  # the funnel's


def _int(value: Any) -> int:
    return value if type(value) is int else int(value) if type(value) is float else 0


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def clean_kpi(kpi: Mapping[str, Any], flagged_windows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`kpi` with `gmv`, `orders`, `paid_orders` and `aov` clean; `*_gross` and `flagged_*` apart."""
    flagged_orders = flagged_sessions = flagged_created = flagged_paid = 0
    flagged_gmv = 0.0
    for window in flagged_windows:
        orders_flagged = int(window.get("flagged_orders") or 0)
        flagged_orders += orders_flagged
        flagged_gmv += float(window.get("flagged_gmv") or 0.0)
        flagged_sessions += int(window.get("flagged_sessions") or 0)
        flagged_created += int(window.get("flagged_created_orders", orders_flagged) or 0)
        flagged_paid += int(window.get("flagged_paid_orders", orders_flagged) or 0)
    out = dict(kpi)
    gmv = float(kpi.get("gmv") or 0.0)
    paid = int(kpi.get("paid_orders") or 0)
    orders = int(kpi.get("orders") or 0)
    clean_gmv = round(max(0.0, gmv - flagged_gmv), 2)
    clean_paid = max(0, paid - flagged_paid)
    out.update(
        gmv=clean_gmv,
        orders=max(0, orders - flagged_created),
        paid_orders=clean_paid,
        aov=round(clean_gmv / clean_paid, 2) if clean_paid else None,
        gmv_gross=kpi.get("gmv"),
        orders_gross=kpi.get("orders"),
        paid_orders_gross=kpi.get("paid_orders"),
        aov_gross=kpi.get("aov"),
        flagged_orders=flagged_orders,
        flagged_gmv=round(flagged_gmv, 2),
        flagged_sessions=flagged_sessions,
        flagged_created_orders=flagged_created,
        flagged_paid_orders=flagged_paid,
    )
    return out


def clean_funnel(funnel: Mapping[str, Any], flagged_windows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """An overall funnel window (`dimension` "all") with the flagged sessions taken out of
    `stages`, and `conversion`, `dropoff` and `overall_conversion` computed again from the
    clean stages; the gross ones as `stages_gross`, `conversion_gross`,
    `overall_conversion_gross`, the flagged ones as `flagged_stages`. Per channel, region or
    device the traffic flow does not count: those windows stay gross."""
    gross = funnel.get("stages")
    if not isinstance(gross, Mapping):
        return dict(funnel)
    flagged = dict.fromkeys(STAGES, 0)
    for window in flagged_windows:
        stages = window.get("flagged_stages")
        if isinstance(stages, Mapping):
            for stage in STAGES:
                flagged[stage] += _int(stages.get(stage))
    clean, ceiling = {}, None
    for stage in STAGES:
        n = max(0, _int(gross.get(stage)) - flagged[stage])
        # Down the funnel counts never grow (a session reaching a stage reached the ones before).
        clean[stage] = n if ceiling is None else min(n, ceiling)
        ceiling = clean[stage]
    conversion = {STAGES[i]: _ratio(clean[STAGES[i]], clean[STAGES[i - 1]]) for i in range(1, len(STAGES))}
    out = dict(funnel)
    out.update(
        stages=clean,
        conversion=conversion,
        dropoff={stage: None if rate is None else round(1 - rate, 4) for stage, rate in conversion.items()},
        overall_conversion=_ratio(clean[STAGES[-1]], clean[STAGES[0]]),
        stages_gross=dict(gross),
        conversion_gross=funnel.get("conversion"),
        overall_conversion_gross=funnel.get("overall_conversion"),
        flagged_stages=flagged,
    )
    return out


def window_starts(kpi: Mapping[str, Any], step_ms: int) -> list[int]:
    """The traffic windows inside a KPI window (one for tumbling, several for rolling)."""
    start, end = kpi.get("window_start"), kpi.get("window_end")
    if type(start) is not int or type(end) is not int or step_ms <= 0 or end <= start:
        return []
    first = start // step_ms * step_ms
    return list(range(first, end, step_ms))[:10_000]
