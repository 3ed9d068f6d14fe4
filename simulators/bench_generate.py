"""How fast the simulator generates and encodes events, in-process, on one core.

    python -m simulators.bench_generate                       # a day of normal traffic
    python -m simulators.bench_generate --scenario double11 --duration 6h --shoppers 200000

Counts everything from building the world to the last encoded event (no Kafka).
Reports events per wall second and per CPU second of this process: on a shared
machine the second is the honest "one core" figure. `measure(...)` is the same
thing as a function, for `shopstream bench`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from simulators.engine import DEFAULT_START_MS, generate
from simulators.scenarios import parse_scenarios
from simulators.timeline import DAY, parse_duration


@dataclass(frozen=True)
class GenerateResult:
    scenarios: tuple[str, ...]
    shoppers: int
    duration_ms: int
    events: int
    value_bytes: int
    seconds: float  # wall clock
    cpu_seconds: float  # this process's CPU time

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def events_per_cpu_s(self) -> float:
        return self.events / self.cpu_seconds if self.cpu_seconds else 0.0

    @property
    def megabytes_per_s(self) -> float:
        return self.value_bytes / self.seconds / 1e6 if self.seconds else 0.0

    def summary(self) -> str:
        return (f"generate+encode {','.join(self.scenarios)}: {self.events:,} events "
                f"({self.value_bytes / 1e6:.1f} MB) in {self.seconds:.2f}s = "
                f"{self.events_per_s:,.0f} events/s ({self.events_per_cpu_s:,.0f} per CPU second), "
                f"{self.megabytes_per_s:.1f} MB/s "
                f"[{self.shoppers:,} shoppers, {self.duration_ms / 3_600_000:g}h of event time]")


def measure(scenarios=("normal",), seed: int | str = 1, duration_ms: int = DAY, shoppers: int = 100_000,
            start_ms: int = DEFAULT_START_MS, max_events: int | None = None) -> GenerateResult:
    started, cpu_started = time.perf_counter(), time.process_time()
    sim = generate(scenarios, seed=seed, start_ms=start_ms, duration_ms=duration_ms, shoppers=shoppers)
    events = size = 0
    for event in sim:
        events += 1
        size += len(event.value)
        if events == max_events:
            break
    return GenerateResult(sim.params.scenarios, shoppers, duration_ms, events, size,
                          time.perf_counter() - started, time.process_time() - cpu_started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.bench_generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", help="repeatable or comma list (default normal)")
    parser.add_argument("--duration", default="1d", help="event time to generate (default 1d)")
    parser.add_argument("--shoppers", type=int, default=100_000)
    parser.add_argument("--seed", default="1")
    parser.add_argument("--max-events", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is reported last")
    args = parser.parse_args(argv)
    scenarios = parse_scenarios(args.scenario)
    results = []
    for _ in range(max(1, args.repeat)):
        result = measure(scenarios, seed=args.seed, duration_ms=parse_duration(args.duration),
                         shoppers=args.shoppers, max_events=args.max_events)
        results.append(result)
        print(result.summary(), flush=True)
    best = max(results, key=lambda r: r.events_per_cpu_s)
    print(f"best: {best.events_per_s:,.0f} events/s wall, {best.events_per_cpu_s:,.0f} events per CPU second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
