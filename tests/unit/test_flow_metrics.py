from state.flow_metrics import parse_consumer_lag

METRICS_PAGE = """
# HELP bytewax_kafka_consumer_lag Difference between last offset on the broker and the currently consumed offset.
# TYPE bytewax_kafka_consumer_lag gauge
bytewax_kafka_consumer_lag{partition="0",step_id="intake.records",topic="orders"} 12.0
bytewax_kafka_consumer_lag{partition="3",step_id="intake.records",topic="clickstream"} 0.0
bytewax_epoch_duration_count{step_id="intake"} 4.0
"""


def test_consumer_lag_is_read_per_topic_partition():
    assert parse_consumer_lag(METRICS_PAGE) == {("orders", 0): 12.0, ("clickstream", 3): 0.0}
