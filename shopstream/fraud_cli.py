"""`shopstream fraud train`: pre-train the fraud model from a replay of history.

The replay runs the same engine as the live flow, at full speed on event time:
chargebacks label their payments when they come, payments past the label horizon
count as legitimate. The result is saved as the next checkpoint in
SHOPSTREAM_FRAUD_MODEL_DIR, where the fraud flow picks it up on a fresh start.

A replay that finds no usable payment, or learns no label, fails (exit 1) and saves
nothing: an empty model must never become the latest.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Iterable, Iterator

from flows.fraud import MODEL_NAME, fraud_config, latest_bundle
from operators.events import PaymentEvent
from operators.fraud_engine import FraudConfig, FraudEngine
from operators.pseudonym import Pseudonymizer
from shopstream.settings import ConfigError, Settings
from state.inputs import decode_record
from state.kafka import InputRecord
from state.model_checkpoints import ModelStore
from state.topic_history import TopicError, read_to_end, resolve_topic

REPLAY_BATCH = 500


class NothingLearned(Exception):
    """The replay had nothing to learn from; the message says why."""


def payments_of(records: Iterable[InputRecord], skipped: dict[str, int] | None = None) -> Iterator[PaymentEvent]:
    """The payment events among `records`; `skipped` counts the others by reason."""
    for record in records:
        if record.topic == "payments":
            event = decode_record(record)
            if type(event) is PaymentEvent:
                yield event
                continue
            reason = getattr(event, "error", "not a payment")
        else:
            reason = f"from topic {record.topic}"
        if skipped is not None:
            skipped[reason] = skipped.get(reason, 0) + 1


def check_usable(payments: list, skipped: dict[str, int], source: str) -> None:
    if payments:
        return
    read = sum(skipped.values())
    detail = ""
    if skipped:
        reason, count = max(skipped.items(), key=lambda item: item[1])
        detail = f"; most common problem ({count:,}x): {reason}"
    raise NothingLearned(f"no usable payment events in {source} ({read:,} messages read{detail}); "
                         "nothing saved")


def check_learned(engine: FraudEngine, before: tuple[int, int], payments: int, config: FraudConfig) -> None:
    model = engine.bundle.model
    if (model.fraud_labels, model.legit_labels) == before:
        days = config.label_horizon_ms / 86_400_000
        raise NothingLearned(
            f"replayed {payments:,} payment events but learned no label: a payment is labelled by its "
            f"chargeback, or as legitimate once {days:g} days of event time (SHOPSTREAM_FRAUD_LABEL_HORIZON, e.g. 6h) "
            "have passed after it; nothing saved")


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


def _topic_records(settings: Settings, topic: str) -> list[InputRecord]:
    """Every message of the topic (any name: see `resolve_topic`), read as payments."""
    return read_to_end(settings, {resolve_topic(settings, topic): "payments"})


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
    try:
        return _train(args, settings, started)
    except (NothingLearned, TopicError) as err:
        print(f"fraud train: {err}", file=sys.stderr)
        return 1


def _train(args: argparse.Namespace, settings: Settings, started: float) -> int:
    if args.from_topic:
        records = _topic_records(settings, args.from_topic)
        source = f"topic {resolve_topic(settings, args.from_topic)}"
    else:
        records = _simulated_records(args)
        source = f"the simulated run {args.simulate}"
    skipped: dict[str, int] = {}
    # A topic partition is replayed after another: order by event time, as live.
    payments = sorted(payments_of(records, skipped), key=lambda p: p.ts)
    check_usable(payments, skipped, source)
    store = ModelStore(settings.fraud_model_dir)
    config = fraud_config(settings)
    bundle = None if args.fresh else latest_bundle(store)
    before = (bundle.model.fraud_labels, bundle.model.legit_labels) if bundle is not None else (0, 0)
    engine = train(config, payments, None if args.fresh else store)
    check_learned(engine, before, len(payments), config)
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
    train_parser.add_argument("--from-topic", help="replay this topic of payment events to its end: a contract "
                              "name (payments) gets the topic prefix, any other name is used as is")
    train_parser.add_argument("--simulate", help="replay a simulator run with these scenarios (comma list)")
    train_parser.add_argument("--seed", type=int, default=1)
    train_parser.add_argument("--duration", default="30d", help="simulated event time (default 30d)")
    train_parser.add_argument("--shoppers", type=int, default=50_000)
    train_parser.add_argument("--fraud-share", type=float, help="simulated fraud share of payment value")
    train_parser.add_argument("--fresh", action="store_true", help="start from an empty model, not the latest")
    train_parser.set_defaults(handler=_cmd_train)
