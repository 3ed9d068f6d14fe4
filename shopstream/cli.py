"""The `shopstream` command line: services, simulate, run, demo."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from shopstream.masking import Masker
from shopstream.services import ServiceError
from shopstream.settings import ConfigError, Settings
from state.kafka import DeliveryError


def _cmd_services(args: argparse.Namespace, settings: Settings) -> int:
    from shopstream import services

    if args.action == "up":
        services.up(settings)
        print(services.format_status(services.status(settings)))
    elif args.action == "down":
        services.down(settings, wipe=args.wipe)
        if args.wipe:
            # The recovery store holds offsets into the data just deleted.
            shutil.rmtree(settings.recovery_dir, ignore_errors=True)
        print("services stopped" + (", data and recovery store deleted" if args.wipe else ""))
    elif args.action == "status":
        statuses = services.status(settings)
        print(services.format_status(statuses))
        return 0 if all(s.answering for s in statuses.values()) else 1
    elif args.action == "topics":
        services.create_topics(settings)
        print(f"topics ready with {settings.topic_partitions} partitions each")
    elif args.action == "fetch":
        print(f"Kafka {settings.kafka_version} jars in {services.fetch_kafka(settings)}")
    return 0


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from simulators import cli as simulate_cli

    return simulate_cli.run(args, settings)


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from shopstream.runner import run_flows

    return run_flows(settings, args.flows, log_dir=args.log_dir)


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from shopstream.runner import format_status, read_status

    text, code = format_status(read_status(settings))
    print(text)
    return code


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from shopstream.demo import run_demo

    return run_demo(settings, duration_s=args.duration, keep_services=args.keep_services)


def _cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from shopstream.dashboard.app import serve
    from shopstream.dashboard.config import DashboardConfig

    return serve(settings, DashboardConfig.from_env(os.environ, host=args.host, port=args.port))


def _cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from shopstream.bench import format_report, run_bench, write_json

    if args.flows[:1] == ["engine"]:
        return _cmd_bench_engine(args, settings)

    report = run_bench(
        settings,
        args.flows,
        events=args.events,
        processes=args.bench_processes,
        scenario=args.scenario,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds,
        seed=args.seed,
    )
    print(format_report(report))
    if args.json:
        write_json(report, args.json)
    return 0


def _cmd_bench_engine(args: argparse.Namespace, settings: Settings) -> int:
    from shopstream.bench import write_json
    from shopstream.benchmarks import engine

    if args.flows[1:]:
        raise ConfigError("bench engine takes its flows as --flows a,b (and --without c), not as arguments")
    summary = engine.run_from_args(args, settings)
    if args.json:
        write_json(summary, args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shopstream",
        description="Real-time e-commerce stream processing on Bytewax, Kafka and Redis.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True)

    services = commands.add_parser("services", help="local Kafka and Redis for development and tests")
    services.add_argument("action", choices=["up", "down", "status", "topics", "fetch"])
    services.add_argument(
        "--wipe", action="store_true", help="with down: delete the services' data and the recovery store"
    )
    services.set_defaults(handler=_cmd_services)

    simulate = commands.add_parser("simulate", help="produce realistic traffic to the input topics")
    from simulators import cli as simulate_cli

    simulate_cli.add_arguments(simulate)
    simulate.set_defaults(handler=_cmd_simulate)

    run = commands.add_parser("run", help="run the dataflows with recovery on")
    run.add_argument("flows", nargs="*", help="flow names (default: all)")
    run.add_argument("--processes", type=int, help="processes per flow (SHOPSTREAM_PROCESSES)")
    run.add_argument("--workers", type=int, help="workers per process (SHOPSTREAM_WORKERS_PER_PROCESS)")
    run.add_argument("--log-dir", type=Path, help="write each process's output to a file here")
    run.set_defaults(handler=_cmd_run)

    status = commands.add_parser(
        "status", help="every flow of the running `shopstream run`: state, restarts, last error "
        "(exit code 0 only when all are running)"
    )
    status.set_defaults(handler=_cmd_status)

    demo = commands.add_parser("demo", help="services up, flows running, traffic flowing, live summary")
    demo.add_argument("--duration", type=float, default=90.0, help="seconds to run (default 90)")
    demo.add_argument("--keep-services", action="store_true", help="leave Kafka and Redis running")
    demo.set_defaults(handler=_cmd_demo)
    dashboard = commands.add_parser(
        "dashboard", help="the live operations page over Redis (SHOPSTREAM_DASHBOARD_*; see the README)"
    )
    dashboard.add_argument("--host", help="address to bind (SHOPSTREAM_DASHBOARD_HOST, default 127.0.0.1)")
    dashboard.add_argument("--port", type=int, help="port (SHOPSTREAM_DASHBOARD_PORT, default 8050)")
    dashboard.set_defaults(handler=_cmd_dashboard)
    from shopstream import alerts_cli

    alerts_cli.add_arguments(commands)
    from shopstream import fraud_cli

    fraud_cli.add_arguments(commands)
    from shopstream import churn_cli

    churn_cli.add_arguments(commands)

    bench = commands.add_parser("bench", help="measure flows on real Kafka and Redis (see BENCHMARKS.md)")
    bench.add_argument(
        "flows", nargs="*", help="flows measured on the shared input backlog (default: intake); "
        "`engine`: every flow together (with --flows, --without, --shoppers, --runs); other "
        "flows have their own modules, see BENCHMARKS.md"
    )
    from shopstream.benchmarks import engine

    engine.add_arguments(bench)
    bench.add_argument("--events", type=int, default=1_000_000, help="backlog size (default 1,000,000)")
    bench.add_argument("--processes", dest="bench_processes", type=int, default=1, help="processes per flow")
    bench.add_argument("--scenario", default="double11", help="simulator scenario (default double11)")
    bench.add_argument("--latency-rate", type=float, default=5_000, help="live events/s for latency runs")
    bench.add_argument("--latency-seconds", type=float, default=30, help="0 skips latency runs")
    bench.add_argument("--seed", type=int, default=1)
    bench.add_argument("--json", type=Path, help="also write the report as JSON here")
    bench.set_defaults(handler=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Secrets never printed: every log line and every error below is masked.
    masker = Masker.from_env(os.environ)
    masker.install()
    sys.excepthook = masker.excepthook
    try:
        settings = Settings.from_env()
        overrides = {}
        if getattr(args, "processes", None) is not None:
            overrides["processes"] = args.processes
        if getattr(args, "workers", None) is not None:
            overrides["workers_per_process"] = args.workers
        if overrides:
            settings = replace(settings, **overrides)
            settings.validate()
        return args.handler(args, settings)
    except ConfigError as err:
        print(f"configuration error: {masker.redact(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (ServiceError, DeliveryError) as err:
        print(f"error: {masker.redact(str(err))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
