"""`shopstream fraud train`: pre-train the fraud model from a replay of history.

The replay runs the same engine as the live flow, at full speed on event time:
chargebacks label their payments when they come, payments past the label horizon
count as legitimate. The result is saved as the next checkpoint in
SHOPSTREAM_FRAUD_MODEL_DIR, where the fraud flow picks it up on a fresh start.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Iterable, Iterator

from flows.fraud import MODEL_NAME, fraud_config, latest_bundle
from operators.events import PaymentEvent
from operators.fraud_engine import FraudConfig, FraudEngine
from operators.pseudonym import Pseudonymizer
from shopstream.settings import ConfigError, Settings
from state.inputs import decode_record
from state.kafka import InputRecord, KafkaInputSource
from state.model_checkpoints import ModelStore

REPLAY_BATCH = 500


def payments_of(records: Iterable[InputRecord]) -> Iterator[PaymentEvent]:
    for record in records:
        if record.topic == "payments":
            event = decode_record(record)
            if type(event) is PaymentEvent:
                yield event


def replay(engine: FraudEngine, payments: Iterable[PaymentEvent], batch: int = REPLAY_BATCH) -> int:
    """Feed history through the engine; the replay's own event time is its clock."""
    pending: list[PaymentEvent] = []
    count = 0
    for payment in payments:
        pending.append(payment)
        if len(pending) >= batch:
            engine.process(pending, pending[-1].ts)
            count += len(pending)
            pending = []
    if pending:
        engine.process(pending, pending[-1].ts)
        count += len(pending)
    return count


def train(config: FraudConfig, payments: Iterable[PaymentEvent], store: ModelStore | None = None) -> FraudEngine:
    """A trained engine, warm from the store's latest checkpoint if there is one."""
    bundle = latest_bundle(store) if store is not None else None
    engine = FraudEngine(config, Pseudonymizer("training-run-never-logged"), bundle)
    replay(engine, payments)
    return engine


def _topic_records(settings: Settings, topic: str) -> Iterator[InputRecord]:
    source = KafkaInputSource(settings, [topic], tail=False)
    for part_name in source.list_parts():
        part = source.build_part("train", part_name, None)
        try:
            while True:
                try:
                    yield from part.next_batch()
                except StopIteration:
                    break
        finally:
            part.close()


def _simulated_records(args: argparse.Namespace) -> Iterator[InputRecord]:
    from simulators import generate
    from simulators.timeline import parse_duration
    from simulators.profile import PROFILE
    from simulators.testing import input_records

    profile = PROFILE if args.fraud_share is None else replace(PROFILE, fraud_value_share=args.fraud_share)
    sim = generate(tuple(args.simulate.split(",")), seed=args.seed, duration_ms=parse_duration(args.duration),
                   shoppers=args.shoppers, profile=profile)
    return iter(input_records(e for e in sim if e.topic == "payments"))


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    if (args.from_topic is None) == (args.simulate is None):
        raise ConfigError("fraud train needs exactly one of --from-topic TOPIC or --simulate SCENARIOS")
    started = time.monotonic()
    records = _topic_records(settings, args.from_topic) if args.from_topic else _simulated_records(args)
    # A topic partition is replayed after another: order by event time, as live.
    payments = sorted(payments_of(records), key=lambda p: p.ts)
    store = ModelStore(settings.fraud_model_dir)
    engine = train(fraud_config(settings), payments, None if args.fresh else store)
    checkpoint = engine.checkpoint(payments[-1].ts if payments else 0)
    version = store.save_pickled(MODEL_NAME, checkpoint.data, {"model_version": checkpoint.version, "ts": checkpoint.ts})
    path = store.path(MODEL_NAME, version)
    model = engine.bundle.model
    print(f"replayed {len(payments):,} payment events in {time.monotonic() - started:.1f}s; "
          f"learned {model.fraud_labels:,} fraud and {model.legit_labels:,} legitimate labels; "
          f"saved {engine.bundle.model.model_version} to {path}")
    return 0


def add_arguments(commands) -> None:
    fraud = commands.add_parser("fraud", help="the fraud model: pre-train from history")
    actions = fraud.add_subparsers(dest="fraud_action", required=True)
    train_parser = actions.add_parser("train", help="replay history through the engine, save a checkpoint")
    train_parser.add_argument("--from-topic", help="replay this input topic (e.g. payments) to its end")
    train_parser.add_argument("--simulate", help="replay a simulator run with these scenarios (comma list)")
    train_parser.add_argument("--seed", type=int, default=1)
    train_parser.add_argument("--duration", default="30d", help="simulated event time (default 30d)")
    train_parser.add_argument("--shoppers", type=int, default=50_000)
    train_parser.add_argument("--fraud-share", type=float, help="simulated fraud share of payment value")
    train_parser.add_argument("--fresh", action="store_true", help="start from an empty model, not the latest")
    train_parser.set_defaults(handler=_cmd_train)
