"""`shopstream churn train`: pre-train the churn model on a replay of order history.

The history is replayed through the churn flow's own logic (`flows.churn.pretrain`:
labels only, one customer at a time, taught in the order one bucket replaying it would
teach them, event time throughout), so the model is exactly the one a replay through
the flow's logic would have learned; the model is saved as the next version of
the `churn` checkpoint in SHOPSTREAM_CHURN_MODEL_DIR, which every churn bucket
without recovered state warm-starts from.

Sources: the `orders` and `clickstream` topics read to their current end (default),
or a seeded simulated history (`--simulate-customers`, see simulators/histories.py).
`--orders-topic` / `--clickstream-topic` read other topics (an archive, another
environment's): contract names get the topic prefix, any other name is used as is.
`--traffic-flags-topic` adds the traffic flow's flags (not read unless named: a history
from before the traffic flow ran has none).

A history with no usable order or click, or one that teaches no label, fails (exit 1)
and saves nothing: an untrained model must never become the latest.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Iterable

from shopstream.settings import Settings
from state.kafka import InputRecord
from state.topic_history import TopicError, read_to_end, resolve_topic


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
    train.add_argument("--orders-topic", default="orders",
                       help="topic of order events (default orders; a contract name gets the topic prefix, "
                       "any other name is used as is)")
    train.add_argument("--clickstream-topic", default="clickstream",
                       help="topic of clickstream events (default clickstream; same naming rule)")
    train.add_argument("--traffic-flags-topic", default=None,
                       help="also read the traffic flow's flags from this topic (e.g. traffic-flags; same "
                       "naming rule), so brushing orders are taken back as the flow takes them back")
    train.set_defaults(handler=cmd_train)


def topic_history(settings: Settings, topics: Iterable[str], timeout_s: float = 120.0) -> list[InputRecord]:
    """Every message of the contract topics up to their current end, in event-time order."""
    return read_to_end(settings, {settings.topic(topic): topic for topic in topics}, timeout_s)


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
        named = {"orders": args.orders_topic, "clickstream": args.clickstream_topic,
                 "traffic-flags": args.traffic_flags_topic}
        topics = {resolve_topic(settings, named[t]): t for t in CHURN_TOPICS if named[t]}
        try:
            records = read_to_end(settings, topics)
        except TopicError as err:
            print(f"churn train: {err}", file=sys.stderr)
            return 1
        source = f"topics {', '.join(topics)} to their end"
    model = new_model(config) if args.continue_training else ChurnModel(config.rules.rfm.feature_names,
                                                                       config.model_rules)
    labels_before = model.labels_learned
    tune_gc_for_long_lived_state()  # millions of records stay in memory: keep the collector off them
    started = time.perf_counter()
    run = pretrain(records, config, model)
    elapsed = time.perf_counter() - started
    if run.customers == 0:
        print(f"churn train: no usable order or clickstream events in {source} ({len(records):,} messages read); "
              "nothing saved", file=sys.stderr)
        return 1
    span_days = (run.last_event_ts - run.first_event_ts) / 86_400_000
    if run.model.labels_learned == labels_before:
        print(f"churn train: {len(records):,} events of {run.customers:,} customers taught no label: a label date "
              f"comes every SHOPSTREAM_CHURN_LABEL_PERIOD_DAYS ({settings.churn_label_period_days}) days per paying "
              f"customer and its label (churned or active) is learned SHOPSTREAM_CHURN_HORIZON "
              f"({config.rules.horizon_ms / 86_400_000:g} days) after it, all within the history (about "
              f"{span_days:.0f} days here): shorten the horizon or replay more history ({source}); nothing saved",
              file=sys.stderr)
        return 1
    churned = run.model.churned_learned
    active = run.model.labels_learned - churned
    if not churned or not active:
        print(f"churn train: the history taught {churned:,} churned and {active:,} active labels: a model taught one "
              f"outcome only says everyone {'churns' if churned else 'stays'}. A churned label needs "
              f"SHOPSTREAM_CHURN_HORIZON ({config.rules.horizon_ms / 86_400_000:g} days) of quiet after a label date, "
              f"all within the history (about {span_days:.0f} days here): shorten the horizon or replay more "
              f"history ({source}); nothing saved (the flow scores with BG/NBD until its regression has learned "
              "both outcomes)", file=sys.stderr)
        return 1
    version = ModelStore(settings.churn_model_dir).save(MODEL_NAME, run.model, {
        "source": source,
        "events": len(records),
        "labels": run.model.labels_learned,
        "churned_labels": run.model.churned_learned,
        "last_event_ts": run.last_event_ts,
    })
    if not run.model.trained:
        print(f"churn train: {churned:,} churned and {active:,} active labels, fewer than "
              f"{config.model_rules.min_labels_per_class} of one outcome: the flow scores with BG/NBD until its "
              "regression has learned that many", file=sys.stderr)
    print(f"churn model v{version} saved in {settings.churn_model_dir / MODEL_NAME}: {len(records):,} events "
          f"replayed in {elapsed:.1f}s, {run.model.labels_learned:,} labels learned "
          f"({run.model.churned_learned:,} churned), {run.customers:,} customers ({source})")
    return 0
