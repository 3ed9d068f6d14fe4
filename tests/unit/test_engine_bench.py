"""The engine benchmark's bookkeeping: which flows it runs and which backlog each must drain."""
import pytest

from flows import churn, coupons, fraud, funnel, order_success, pricing, stock, traffic
from shopstream.benchmarks import engine
from shopstream.runner import FLOWS
from shopstream.settings import INPUT_TOPICS, ConfigError


def test_each_flow_drains_the_input_topics_it_reads():
    read = {"stock": stock.STOCK_TOPICS, "funnel": funnel.FUNNEL_TOPICS, "coupons": coupons.COUPON_TOPICS,
            "fraud": fraud.FRAUD_TOPICS, "churn": churn.CHURN_TOPICS, "traffic": traffic.TRAFFIC_TOPICS,
            "pricing": pricing.PRICING_TOPICS, "order_success": order_success.ORDER_TOPICS, "intake": INPUT_TOPICS,
            "alerts": ()}
    assert set(engine.FLOW_INPUTS) == set(FLOWS)
    for flow, topics in read.items():
        assert set(engine.FLOW_INPUTS[flow]) == set(topics) & set(INPUT_TOPICS), flow


def test_flows_are_every_flow_unless_chosen_or_left_out():
    assert engine.selected_flows(None, None) == list(FLOWS)
    assert engine.selected_flows(None, ["traffic", "pricing"]) == [f for f in FLOWS if f not in ("traffic", "pricing")]
    assert engine.selected_flows(["fraud", "alerts"], None) == ["fraud", "alerts"]
    with pytest.raises(ConfigError, match="unknown flow"):
        engine.selected_flows(None, ["trafic"])
    with pytest.raises(ConfigError, match="at least one flow"):
        engine.selected_flows(["alerts"], None)


def _run(rate: int, churn_drain: float, churn_rss: float) -> engine.EngineRun:
    flows = [engine.FlowDrain("intake", 1000, 1000 / rate, 100.0), engine.FlowDrain("churn", 900, churn_drain, churn_rss)]
    return engine.EngineRun(events=1000, produce_events_per_s=1, read_once_events_per_s=10 * rate,
                            engine_events_per_s=rate, engine_drain_s=1000 / rate, flows=flows, alerts_after_s=None)


def test_the_summary_takes_medians_per_figure():
    summary = engine.summarize([_run(100, 9.0, 300.0), _run(300, 3.0, 100.0), _run(200, 5.0, 200.0)],
                               ["intake", "churn"], "double11", 1000)
    median = summary["median"]
    assert median["engine_events_per_s"] == 200
    assert median["share_of_ceiling"] == 0.1
    assert median["flows"]["churn"] == {"drain_s": 5.0, "peak_rss_mb": 200.0}
    assert median["total_peak_rss_mb"] == 300.0
    assert len(summary["runs"]) == 3


def test_the_cost_of_a_flow_is_the_median_of_paired_ratios():
    # The machine slows down between pairs: each pair's ratio holds, the medians' ratio does not.
    with_runs = [_run(100, 1.0, 1.0), _run(200, 1.0, 1.0), _run(400, 1.0, 1.0)]
    without_runs = [_run(125, 1.0, 1.0), _run(250, 1.0, 1.0), _run(100, 1.0, 1.0)]
    assert engine.paired_ratio(with_runs, without_runs) == 0.8
