"""`shopstream churn train`: pre-train the churn model on a replay of order history.

The history is replayed through the churn flow's own logic (`flows.churn.pretrain`:
labels only, one customer at a time, taught in the order one bucket replaying it would
teach them, event time throughout), so the model is exactly the one a replay through
the flow's logic would have learned; the model is saved as the next version of
the `churn` checkpoint in SHOPSTREAM_CHURN_MODEL_DIR, which every churn bucket
without recovered state warm-starts from.

Sources: the `orders` and `clickstream` topics read to their current end (default),
or a seeded simulated history (`--simulate-customers`, see simulators/histories.py).
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Iterable

from shopstream.settings import Settings
from state.kafka import InputRecord


def add_arguments(subparsers) -> None:
    churn = subparsers.add_parser("churn", help="the churn model: pre-train it on order history")
    actions = churn.add_subparsers(dest="churn_action", required=True)
    train = actions.add_parser("train", help="replay order history, learn the churn labels, save a checkpoint")
    train.add_argument("--simulate-customers", type=int, default=0,
                       help="train on a simulated history of this many customers instead of the topics")
    train.add_argument("--days", type=int, default=730, help="simulated history length (default 730)")
    train.add_argument("--seed", type=int, default=1, help="simulated history seed")
    train.add_argument("--continue", dest="continue_training", action="store_true",
                       help="start from the latest checkpoint instead of a new model")
    train.set_defaults(handler=cmd_train)


def topic_history(settings: Settings, topics: Iterable[str], timeout_s: float = 120.0) -> list[InputRecord]:
    """Every message of the topics up to their current end, in event-time order.

    Sorted in memory: the replay applies events in event-time order only within the
    allowed lateness, and partitions read one after another are hours apart."""
    from confluent_kafka import Consumer, TopicPartition

    from state.serde import loads

    consumer = Consumer({**settings.kafka_config(), "group.id": f"churn-train-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    records: list[tuple[int, InputRecord]] = []
    try:
        for topic in topics:
            real = settings.topic(topic)
            partitions = consumer.list_topics(real, timeout=10).topics[real].partitions
            ends = {p: consumer.get_watermark_offsets(TopicPartition(real, p, 0), timeout=10)[1] for p in partitions}
            pending = {p for p, end in ends.items() if end > 0}
            consumer.assign([TopicPartition(real, p, 0) for p in pending])
            deadline = time.monotonic() + timeout_s
            while pending and time.monotonic() < deadline:
                for msg in consumer.consume(10_000, 0.5):
                    if msg.error():
                        continue
                    value = msg.value()
                    try:
                        ts = int(loads(value)["ts"])
                    except Exception:  # malformed: the replay skips it (intake dead-letters it)
                        ts = msg.timestamp()[1]
                    records.append((ts, InputRecord(topic, msg.partition(), msg.offset(), value,
                                                    msg.timestamp()[1], msg.key())))
                    if msg.offset() + 1 >= ends[msg.partition()]:
                        pending.discard(msg.partition())
            if pending:
                raise TimeoutError(f"could not read {real} to its end within {timeout_s}s")
            consumer.unassign()
    finally:
        consumer.close()
    records.sort(key=lambda pair: pair[0])
    return [record for _, record in records]


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from flows.churn import CHURN_TOPICS, MODEL_NAME, ChurnConfig, new_model, pretrain
    from operators.churn_model import ChurnModel
    from state.model_checkpoints import ModelStore
    from state.snapshots import tune_gc_for_long_lived_state

    config = ChurnConfig.from_settings(settings)
    if args.simulate_customers > 0:
        from simulators.histories import generate_history
        from simulators.testing import input_records
        from simulators.timeline import DAY

        history = generate_history(args.simulate_customers, seed=args.seed, duration_ms=args.days * DAY)
        records = input_records(history)
        source = f"simulated history: {args.simulate_customers} customers, {args.days} days, seed {args.seed}"
    else:
        records = topic_history(settings, CHURN_TOPICS)
        source = f"topics {', '.join(settings.topic(t) for t in CHURN_TOPICS)} to their end"
    model = new_model(config) if args.continue_training else ChurnModel(config.rules.rfm.feature_names,
                                                                       config.model_rules)
    tune_gc_for_long_lived_state()  # millions of records stay in memory: keep the collector off them
    started = time.perf_counter()
    run = pretrain(records, config, model)
    elapsed = time.perf_counter() - started
    version = ModelStore(settings.churn_model_dir).save(MODEL_NAME, run.model, {
        "source": source,
        "events": len(records),
        "labels": run.model.labels_learned,
        "churned_labels": run.model.churned_learned,
        "last_event_ts": run.last_event_ts,
    })
    print(f"churn model v{version} saved in {settings.churn_model_dir / MODEL_NAME}: {len(records):,} events "
          f"replayed in {elapsed:.1f}s, {run.model.labels_learned:,} labels learned "
          f"({run.model.churned_learned:,} churned), {run.customers:,} customers ({source})")
    return 0
