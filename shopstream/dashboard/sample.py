"""Known values written to Redis exactly as the flows write them, for the dashboard's
tests and benchmark: each helper builds the flow's own record (FunnelWindow,
KpiWindow, StockView, AlertMessage, ...) and applies the flow's own `RedisWrite`s."""

from __future__ import annotations

from dataclasses import dataclass

from flows.alerts import AlertsConfig, router_outputs
from flows.coupons import recovery_writes
from flows.funnel import funnel_outputs
from operators.alert_router import ActiveAlert, AlertMessage
from operators.coupon_recovery import BucketClock, DecisionFact, RecoveryWindows, RedemptionFact
from operators.funnel_results import ROLLING, TUMBLING, ExperimentResult, FunnelWindow, KpiWindow
from operators.stock import StockView
from state.redis_store import DecideOnce, RedisWrite, ReplaceHash, StreamAddOnce
from state.serde import dumps

HISTORY_LENGTH = 120


@dataclass
class Writer:
    """Applies RedisWrites in one pipeline, like the flows' Redis sink."""

    client: object
    prefix: str

    def apply(self, writes: list[RedisWrite]) -> None:
        from state.redis_store import _Scripts  # the sink's own scripts: the same Lua, the same keys

        scripts = _Scripts(self.client)
        pipe = self.client.pipeline(transaction=False)
        for write in writes:
            write.apply(pipe, self.prefix, scripts)
        pipe.execute()

    # -- funnel and KPIs ----------------------------------------------------------------------

    def funnel(self, window_start: int, window_end: int, dimension: str, value: str, stages: tuple[int, ...],
               view: str = TUMBLING) -> None:
        item = FunnelWindow(view, window_start, window_end, dimension, value, stages)
        self.apply(funnel_outputs(item, HISTORY_LENGTH)[1])

    def kpi(self, window_start: int, window_end: int, gmv: float, orders: int, paid_orders: int, uv: int | None,
            pv: int, payments_succeeded: int, payments_failed: int, dimension: str = "all", value: str = "all",
            view: str = TUMBLING) -> None:
        item = KpiWindow(view, window_start, window_end, dimension, value, gmv, orders, paid_orders,
                         uv if view == TUMBLING else None, pv, payments_succeeded, payments_failed)
        self.apply(funnel_outputs(item, HISTORY_LENGTH)[1])

    def experiment(self, name: str, window_end: int, variants: tuple[tuple[str, int, int], ...]) -> None:
        item = ExperimentResult(name, window_end, variants, "control", 0.05, 1000)
        self.apply(funnel_outputs(item, HISTORY_LENGTH)[1])

    # -- stock ----------------------------------------------------------------------------------

    def stock(self, views: list[StockView]) -> None:
        self.apply([ReplaceHash(f"stock:{view.sku}", view.fields()) for view in views])

    # -- alerts ---------------------------------------------------------------------------------

    def alert(self, rule: str, key: str, severity: str, summary: str, ts: int, first_seen_ts: int,
              count: int = 1, status: str = "firing") -> AlertMessage:
        message = AlertMessage(
            alert_id=f"{rule}:{key}:{first_seen_ts}:{ts}:{status}", ts=ts, dedup_key=f"{rule}:{key}", rule=rule,
            severity=severity, status=status, key=key, summary=summary, first_seen_ts=first_seen_ts, count=count,
        )
        config = AlertsConfig()
        writes = router_outputs(message, config)[1]
        writes += router_outputs(ActiveAlert(message.dedup_key, None if status == "resolved" else message), config)[1]
        self.apply(writes)
        return message

    # -- fraud, coupons, customers ------------------------------------------------------------

    def decisions(self, decisions: list[dict]) -> None:
        entries = tuple((f"fraud:decision:{d['payment_id']}", f"fraud:ready:{d['payment_id']}", dumps(d))
                        for d in decisions)
        self.apply([DecideOnce(entries, 24 * 3600, 60)])

    def coupon(self, coupon: dict) -> None:
        # The entry's fields as the coupon issuer's script adds them (state/coupons.py).
        fields = {"coupon_id": coupon["coupon_id"], "user_id": coupon["user_id"], "coupon": dumps(coupon).decode()}
        self.apply([StreamAddOnce(f"sample:coupon:{coupon['coupon_id']}", "stream:coupons", fields, 3600)])

    def coupon_recovery(self, window_ms: int, outcomes: list[tuple[int, str]],
                        redemptions: list[tuple[int, str, float]], through_ms: int) -> None:
        """Abandoned carts' outcomes (ts, issued | capped | ...) and redemptions (ts, code,
        amount) through the coupons flow's recovery windows, closed up to `through_ms`."""
        windows = RecoveryWindows(window_ms, 1)
        facts = [DecisionFact(ts, outcome) for ts, outcome in outcomes]
        facts += [RedemptionFact(ts, code, amount) for ts, code, amount in redemptions]
        closed = windows.add(facts + [BucketClock("0", through_ms)])
        self.apply([write for window in closed for write in recovery_writes(window)])

    def customers(self, views: dict[str, dict]) -> None:
        self.apply([ReplaceHash(f"churn:{user_id}", view) for user_id, view in views.items()])


def decision(payment_id: str, ts: int, verdict: str, score: float = 0.1, reasons: tuple[str, ...] = ()) -> dict:
    return {"decision_id": f"d-{payment_id}", "ts": ts, "payment_id": payment_id, "order_id": f"o-{payment_id}",
            "user_id": f"u-{payment_id}", "decision": verdict, "score": score, "reasons": list(reasons),
            "model_version": "sample", "decided_at": ts}


__all__ = ["Writer", "decision", "StockView", "TUMBLING", "ROLLING"]
