"""The whole engine draining one backlog: every flow at once, as `shopstream run` runs them.

    shopstream bench engine [--events 1000000] [--shoppers 200000] [--runs 3]
                            [--flows intake,stock,...] [--without traffic,pricing]
                            [--compare-without traffic]
    python -m shopstream.benchmarks.engine (same options)

One run, on fresh topics and Redis keys:
1. a seeded simulator backlog of `--events` contract events (default `double11`) on the
   input topics;
2. the read-once ceiling: one plain consumer reads every input topic once, decodes and
   validates each event, and discards it (what one core can read);
3. every selected flow started together, one process each, with recovery as `shopstream
   run` starts them; each flow's progress from its own consumer-lag gauge.

Reported: the engine's events/s (backlog events / seconds from starting the flows until
every flow has consumed all of its input topics, start-up included), each flow's drain
time and peak RSS, the engine's share of the ceiling, and, for the alerts flow (which reads
other flows' output), how long after that it had caught up too. With `--runs N` the medians
of N runs, each on its own backlog of the same seed. With `--compare-without F`, runs with
every chosen flow alternate with runs without F, and the median of the pairs' rate ratios
is the cost of F measured on one machine in one session.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shopstream import bench, services
from shopstream.runner import FLOWS, FlowProcess, free_ports, resolve_flows, start_flow, stop_all
from shopstream.settings import INPUT_TOPICS, ConfigError, Settings
from state.flow_metrics import consumer_lag, peak_rss_bytes

# The input topics each flow reads (other flows' outputs, such as churn's traffic-flags, are
# not part of the backlog). The alerts flow reads only other flows' outputs.
FLOW_INPUTS: dict[str, tuple[str, ...]] = {
    "intake": INPUT_TOPICS,
    "stock": ("orders", "inventory"),
    "funnel": ("clickstream", "orders", "payments"),
    "coupons": ("clickstream", "orders", "inventory"),
    "fraud": ("payments",),
    "churn": ("orders", "clickstream"),
    "traffic": ("clickstream", "orders", "payments"),
    "pricing": ("prices", "orders", "inventory"),
    "order_success": ("orders", "payments"),
    "alerts": (),
}
SAMPLE_INTERVAL_S = 0.25
DRAIN_TIMEOUT_S = 900.0
ALERTS_SETTLE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class FlowDrain:
    flow: str
    events: int  # backlog events on the flow's input topics
    drain_s: float  # from the flows' start until it had consumed them all
    peak_rss_mb: float


@dataclass(frozen=True)
class EngineRun:
    events: int
    produce_events_per_s: float
    read_once_events_per_s: float
    engine_events_per_s: float
    engine_drain_s: float
    flows: list[FlowDrain]
    alerts_after_s: float | None  # alerts caught up this long after the others (None: not run)

    @property
    def share_of_ceiling(self) -> float:
        return self.engine_events_per_s / self.read_once_events_per_s


def selected_flows(flows: list[str] | None, without: list[str] | None) -> list[str]:
    names = resolve_flows(flows or None)
    unknown = sorted(set(without or ()) - set(FLOWS))
    if unknown:
        raise ConfigError(f"unknown flow(s) in --without: {', '.join(unknown)}; choose from: {', '.join(FLOWS)}")
    names = [name for name in names if name not in set(without or ())]
    if not any(FLOW_INPUTS[name] for name in names):
        raise ConfigError("bench engine needs at least one flow that reads the input topics")
    return names


def _flow_backlog(settings: Settings, backlog: bench.Backlog, flow: str) -> dict[tuple[str, int], int]:
    topics = {settings.topic(name) for name in FLOW_INPUTS[flow]}
    return {tp: end for tp, end in backlog.end_offsets.items() if tp[0] in topics}


def _consumed(ports: list[int], ends: dict[tuple[str, int], int]) -> int:
    lag: dict[tuple[str, int], float] = {}
    for port in ports:
        try:
            lag.update(consumer_lag(port))
        except OSError:
            pass  # still starting its metrics server: it has consumed nothing yet
    return int(sum(end - lag.get(tp, end) for tp, end in ends.items()))


def _caught_up_on_own_topics(ports: list[int]) -> bool:
    """True when every partition the process reports has no lag (for the alerts flow,
    whose input other flows are still writing)."""
    lags: dict[tuple[str, int], float] = {}
    for port in ports:
        try:
            lags.update(consumer_lag(port))
        except OSError:
            return False
    return bool(lags) and all(lag == 0 for lag in lags.values())


def _check_alive(running: dict[str, list[FlowProcess]]) -> None:
    for name, processes in running.items():
        for proc in processes:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"flow {name} exited with {proc.popen.returncode} during the bench "
                                   f"(last error: {proc.last_error() or 'none'})")


def _peak_rss_mb(processes: list[FlowProcess]) -> float:
    return round(sum(peak_rss_bytes(p.popen.pid) or 0 for p in processes) / 2**20, 1)


def run_once(settings: Settings, flows: list[str], events: int, scenario: str, shoppers: int, seed: int,
             scratch: Path) -> EngineRun:
    run = bench._bench_settings(settings, 1, scratch)
    services.create_topics(run)
    running: dict[str, list[FlowProcess]] = {}
    try:
        backlog = bench.fill_backlog(run, scenario, events, seed, shoppers=shoppers)
        read_once = bench.raw_ceiling(run, backlog, 1)
        ports = {name: free_ports(1) for name in flows}
        started = time.monotonic()
        for name in flows:
            running[name] = start_flow(run, name, log_dir=scratch / "logs", api_ports=ports[name])
        pending = {name: _flow_backlog(run, backlog, name) for name in flows if FLOW_INPUTS[name]}
        drains: dict[str, tuple[int, float]] = {}
        rss: dict[str, float] = {}
        deadline = started + DRAIN_TIMEOUT_S
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"flows {', '.join(pending)} did not drain in {DRAIN_TIMEOUT_S:.0f} s")
            _check_alive(running)
            for name, ends in list(pending.items()):
                total = sum(ends.values())
                if _consumed(ports[name], ends) >= total:
                    drains[name] = (total, time.monotonic() - started)
                    rss[name] = _peak_rss_mb(running[name])
                    del pending[name]
            time.sleep(SAMPLE_INTERVAL_S)
        engine_drain_s = max(seconds for _, seconds in drains.values())
        alerts_after_s = None
        if "alerts" in running:
            settle_deadline = time.monotonic() + ALERTS_SETTLE_TIMEOUT_S
            while not _caught_up_on_own_topics(ports["alerts"]) and time.monotonic() < settle_deadline:
                _check_alive(running)
                time.sleep(SAMPLE_INTERVAL_S)
            alerts_after_s = round(time.monotonic() - started - engine_drain_s, 2)
            drains["alerts"] = (0, time.monotonic() - started)
            rss["alerts"] = _peak_rss_mb(running["alerts"])
    finally:
        stop_all([proc for processes in running.values() for proc in processes])
        services.delete_topics(run)
    return EngineRun(
        events=backlog.events,
        produce_events_per_s=round(backlog.produce_rate),
        read_once_events_per_s=round(read_once),
        engine_events_per_s=round(backlog.events / engine_drain_s),
        engine_drain_s=round(engine_drain_s, 2),
        flows=[FlowDrain(name, drains[name][0], round(drains[name][1], 2), rss[name]) for name in flows],
        alerts_after_s=alerts_after_s,
    )


def measure(settings: Settings, flows: list[str], events: int, scenario: str, shoppers: int, seed: int,
            runs: int) -> dict:
    services.up(settings)
    results = []
    with tempfile.TemporaryDirectory(prefix="shopstream-bench-engine-") as scratch:
        for index in range(runs):
            results.append(run_once(settings, flows, events, scenario, shoppers, seed, Path(scratch) / f"run{index}"))
            print(format_run(results[-1], index + 1, runs), flush=True)
    return summarize(results, flows, scenario, shoppers)


def compare(settings: Settings, flows: list[str], without: list[str], events: int, scenario: str, shoppers: int,
            seed: int, runs: int) -> dict:
    """The engine with `flows` and without `without`, runs alternating so both see the same
    machine: the cost of the left-out flows as a ratio measured in one session."""
    services.up(settings)
    reduced = [name for name in flows if name not in without]
    results: dict[str, list[EngineRun]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory(prefix="shopstream-bench-engine-") as scratch:
        for index in range(runs):
            for label, chosen in (("with", flows), ("without", reduced)):
                result = run_once(settings, chosen, events, scenario, shoppers, seed, Path(scratch) / f"{label}{index}")
                results[label].append(result)
                print(f"[{label} {','.join(without)}] " + format_run(result, index + 1, runs), flush=True)
    return {
        "left_out": without,
        "with": summarize(results["with"], flows, scenario, shoppers),
        "without": summarize(results["without"], reduced, scenario, shoppers),
        "rate_with_over_without": paired_ratio(results["with"], results["without"]),
    }


def paired_ratio(with_runs: list[EngineRun], without_runs: list[EngineRun]) -> float:
    """Median of the ratios of runs side by side: the machine's drift between pairs cancels."""
    return round(statistics.median(a.engine_events_per_s / b.engine_events_per_s
                                   for a, b in zip(with_runs, without_runs)), 3)


def summarize(results: list[EngineRun], flows: list[str], scenario: str, shoppers: int) -> dict:
    def median(values):
        return statistics.median(values)

    return {
        "scenario": scenario,
        "shoppers": shoppers,
        "flows": flows,
        "runs": [asdict(result) | {"share_of_ceiling": round(result.share_of_ceiling, 3)} for result in results],
        "median": {
            "events": median([r.events for r in results]),
            "engine_events_per_s": median([r.engine_events_per_s for r in results]),
            "read_once_events_per_s": median([r.read_once_events_per_s for r in results]),
            "share_of_ceiling": round(median([r.share_of_ceiling for r in results]), 3),
            "engine_drain_s": median([r.engine_drain_s for r in results]),
            "flows": {
                name: {
                    "drain_s": median([next(f.drain_s for f in r.flows if f.flow == name) for r in results]),
                    "peak_rss_mb": median([next(f.peak_rss_mb for f in r.flows if f.flow == name) for r in results]),
                }
                for name in flows
            },
            "total_peak_rss_mb": median([sum(f.peak_rss_mb for f in r.flows) for r in results]),
        },
    }


def format_run(result: EngineRun, index: int, runs: int) -> str:
    lines = [
        f"run {index}/{runs}: {result.events:,} events; engine {result.engine_events_per_s:,} events/s "
        f"({result.engine_drain_s} s), read-once ceiling {result.read_once_events_per_s:,} events/s "
        f"({result.share_of_ceiling:.0%}); simulator produced {result.produce_events_per_s:,} events/s",
        f"  {'flow':<14} {'events':>10} {'drain s':>8} {'peak RSS MB':>12}",
    ]
    for drain in result.flows:
        lines.append(f"  {drain.flow:<14} {drain.events:>10,} {drain.drain_s:>8} {drain.peak_rss_mb:>12}")
    if result.alerts_after_s is not None:
        lines.append(f"  alerts caught up {result.alerts_after_s} s after the last input flow")
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    m = summary["median"]
    lines = [
        f"medians of {len(summary['runs'])} run(s), {summary['scenario']}, {m['events']:,} events, "
        f"{summary['shoppers']:,} shoppers, flows: {', '.join(summary['flows'])}",
        f"engine {m['engine_events_per_s']:,} events/s, read-once ceiling {m['read_once_events_per_s']:,} events/s "
        f"({m['share_of_ceiling']:.0%}), drained in {m['engine_drain_s']} s, peak RSS of all flows "
        f"{m['total_peak_rss_mb']:,.0f} MB",
    ]
    for name, figures in m["flows"].items():
        lines.append(f"  {name:<14} drain {figures['drain_s']:>7} s  peak RSS {figures['peak_rss_mb']:>7} MB")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine bench's own options (shared by `shopstream bench engine` and this module)."""
    parser.add_argument("--flows", dest="engine_flows",
                        help="engine: comma list of flows (default: every flow `shopstream run` starts)")
    parser.add_argument("--without", help="engine: comma list of flows to leave out, e.g. traffic,pricing")
    parser.add_argument("--shoppers", type=int, default=200_000, help="engine: simulated population (default 200,000)")
    parser.add_argument("--runs", type=int, default=1, help="engine: runs; the summary gives medians")
    parser.add_argument("--compare-without", help="engine: alternate runs with every chosen flow and without "
                        "these (comma list), and report the rate ratio")


def split(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shopstream.benchmarks.engine", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--scenario", default="double11")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    add_arguments(parser)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    summary = run_from_args(args, settings)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def run_from_args(args: argparse.Namespace, settings: Settings) -> dict:
    """Measure as the options say and print the summary (shared with `shopstream bench engine`)."""
    flows = selected_flows(split(args.engine_flows), split(args.without))
    left_out = split(args.compare_without)
    if left_out:
        selected_flows(flows, left_out)  # the names must be flows, and something must remain
        summary = compare(settings, flows, left_out, args.events, args.scenario, args.shoppers, args.seed, args.runs)
        print(f"with {', '.join(left_out)}:\n{format_summary(summary['with'])}")
        print(f"without:\n{format_summary(summary['without'])}")
        print(f"engine rate with / without (median of paired runs): {summary['rate_with_over_without']:.2f}")
        return summary
    summary = measure(settings, flows, args.events, args.scenario, args.shoppers, args.seed, args.runs)
    print(format_summary(summary))
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
