"""`shopstream simulate`: realistic traffic to the input topics, with ground truth.

    shopstream simulate --scenario double11,card_testing --duration 1d --speed 1440 --truth truth.jsonl
    shopstream simulate --start 2024-11-10T20:00+08:00 --duration 6h --seed 7   # flat out, reproducible
"""

from __future__ import annotations

import argparse
import sys
import time

from shopstream.settings import Settings
from simulators.engine import generate
from simulators.produce import Pacer, ProduceStats, Producer, send
from simulators.scenarios import SCENARIOS, parse_scenarios
from simulators.timeline import iso, parse_duration, parse_start
from simulators.truth import TruthWriter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", action="append", metavar="NAME[,NAME]",
                        help=f"repeatable or comma list, mixed freely: {', '.join(SCENARIOS)} (default normal)")
    parser.add_argument("--seed", default="1", help="same seed, scenarios, start, duration and shoppers "
                                                    "give byte-identical traffic (default 1)")
    parser.add_argument("--duration", default="1h", help="event time to cover: 30m, 2h, 1d, 1d12h (default 1h)")
    parser.add_argument("--start", default="now",
                        help="event time of the first event: ISO 8601 (UTC if no offset), epoch ms, or now (default)")
    parser.add_argument("--rate", type=float, default=0.0, help="target events per second; 0 = flat out (default)")
    parser.add_argument("--speed", type=float, default=0.0,
                        help="event-time seconds per wall second: 1 = live, 1440 = a day a minute; "
                             "0 = no time pacing (default). With --rate, both limits apply")
    parser.add_argument("--preroll", default=None,
                        help="event time at the start sent flat out before pacing begins, so a live run "
                             "starts with shoppers mid-session: e.g. 10m (default none)")
    parser.add_argument("--shoppers", type=int, default=50_000,
                        help="population size; a normal day brings ~0.4 visits and ~2.5 events per shopper "
                             "(so live at --speed 1, ~4,000,000 shoppers give ~300 events/s at 20:00 "
                             "with sessions in flight) "
                             "(default 50000)")
    parser.add_argument("--bad-rate", type=float, default=0.0,
                        help="share of events followed by a malformed copy, for dead-letter tests (default 0)")
    parser.add_argument("--truth", metavar="PATH", help="write ground truth here as JSON lines")
    parser.add_argument("--max-events", type=int, default=None, help="stop after this many events")


def run(args: argparse.Namespace, settings: Settings, producer: Producer | None = None) -> int:
    """Generate and produce; returns the exit code. A failed Kafka delivery raises DeliveryError."""
    try:
        scenarios = parse_scenarios(args.scenario)
        duration_ms = parse_duration(args.duration)
        start_ms = parse_start(args.start)
        preroll_ms = parse_duration(args.preroll) if args.preroll else 0
        if preroll_ms >= duration_ms:
            raise ValueError("--preroll must be shorter than --duration")
        if args.rate < 0 or args.speed < 0:
            raise ValueError("--rate and --speed must be >= 0")
        if args.shoppers < 1:
            raise ValueError("--shoppers must be at least 1")
        if not 0.0 <= args.bad_rate < 1.0:
            raise ValueError("--bad-rate must be in [0, 1)")
    except ValueError as err:
        print(f"simulate: {err}", file=sys.stderr)
        return 2
    if start_ms is None:
        start_ms = int(time.time() * 1000)
    seed = int(args.seed) if str(args.seed).lstrip("-").isdigit() else args.seed
    if producer is None:
        from state.kafka import CheckedProducer  # needs confluent-kafka; not for in-process use

        producer = CheckedProducer(settings)
    truth = TruthWriter(args.truth) if args.truth else None
    sim = generate(scenarios, seed=seed, start_ms=start_ms, duration_ms=duration_ms, shoppers=args.shoppers,
                   bad_rate=args.bad_rate, on_truth=truth.write if truth else None)
    pace = "flat out" if not (args.rate or args.speed) else \
        " and ".join(filter(None, [f"{args.rate:g} events/s" if args.rate else "",
                                   f"speed {args.speed:g}x" if args.speed else ""]))
    print(f"simulate: {','.join(scenarios)} seed {seed}, {iso(start_ms)} + {args.duration}, "
          f"{args.shoppers:,} shoppers, {pace} -> {settings.kafka_bootstrap_servers}", flush=True)

    def progress(stats: ProduceStats) -> None:
        if truth:
            truth.flush()
        print(f"simulate: {stats.line()}", flush=True)

    try:
        live_from_ms = start_ms + preroll_ms
        pacer = Pacer(args.rate, args.speed, live_from_ms, live_from_ms if preroll_ms else None)
        stats = send(sim, producer, pacer, args.max_events, progress)
    finally:
        if truth:
            truth.close()
    print(f"simulate: {'interrupted; ' if stats.interrupted else ''}done: {stats.line()}", flush=True)
    if truth:
        print(f"simulate: {truth.count:,} ground-truth records -> {truth.path}", flush=True)
    return 130 if stats.interrupted else 0
