"""Benchmarks of the churn flow's logic on simulated order histories (issue 7's numbers).

    python -m shopstream.benchmarks.churn [all|auc|speed|memory] [--customers N] [--runs 3]

- auc: a model pre-trained on one population's history (`pretrain`, as `shopstream
  churn train` does) scores a held-out population (another seed, other customers) at
  one moment, the churn horizon before the end of its history, without learning from
  it; the truth is whether each customer paid an order within the horizon after that
  moment. AUC of the churn score and of recency alone (days since the last paid
  order), on the same customers; and calibration per risk band (mean calibrated score
  against the observed churn rate).
- speed: an order history (orders only, then orders + clickstream) replayed two ways:
  pre-training (`pretrain`, what `churn train` runs: labels only, the same model as a
  scoring replay) and a scoring replay through one `ChurnBook` (the flow's logic
  without the engine: every customer scored at each order and re-scored while quiet).
  Order events per CPU second (process time: a shared machine's other processes do not
  count), median of `--runs`, next to a baseline measured in the same run, interleaved
  run by run, on the same records: decoding them only (`decode_record`).
- memory: Python heap (tracemalloc) held by the book after replaying a history,
  per tracked customer, and pickled size per customer.

Replays run on event time only (a fixed wall clock), like a full-speed replay.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import statistics
import time
import tracemalloc
from bisect import bisect_left, bisect_right

from flows.churn import ChurnConfig, pretrain, replay_history
from operators.rfm import DAY_MS
from shopstream.settings import Settings
from simulators.histories import generate_history
from simulators.testing import input_records
from state.inputs import decode_record
from state.snapshots import tune_gc_for_long_lived_state

NOW_MS = 1_900_000_000_000


def config() -> ChurnConfig:
    return ChurnConfig.from_settings(Settings.from_env())


def auc(scores: list[float], labels: list[bool]) -> float:
    """Probability that a random churner scores above a random active customer (ties half)."""
    negatives = sorted(s for s, churned in zip(scores, labels) if not churned)
    positives = [s for s, churned in zip(scores, labels) if churned]
    wins = 0.0
    for score in positives:
        below = bisect_left(negatives, score)
        wins += below + (bisect_right(negatives, score) - below) / 2
    return wins / (len(positives) * len(negatives))


def bench_auc(customers: int, days: int) -> None:
    cfg = config()
    horizon = cfg.rules.horizon_ms
    train = generate_history(customers, seed=101, duration_ms=days * DAY_MS, prefix="train")
    model = pretrain(input_records(train), cfg, now_ms=NOW_MS).model
    held_out = generate_history(customers, seed=202, duration_ms=days * DAY_MS, prefix="test")
    cut = held_out.end_ms - horizon
    seen = [r for r in input_records(held_out) if r.timestamp_ms <= cut]
    scored = replay_history(seen, cfg, model=model, learning=False, now_ms=NOW_MS).scores_at(cut)
    users = sorted(scored)
    labels = [not held_out.truth[u].ordered_within(cut, cut + horizon) for u in users]
    churn_scores = [scored[u][0] for u in users]
    recency = [scored[u][1] for u in users]
    print(f"auc: trained on {customers:,} customers x {days} days ({model.labels_learned:,} labels), "
          f"held-out {len(users):,} customers who had paid, {sum(labels):,} churned within "
          f"{horizon // DAY_MS} days after the cut")
    print(f"auc: churn score {auc(churn_scores, labels):.4f}   recency alone {auc(recency, labels):.4f}")
    for band in ("low", "medium", "high"):
        members = [(s, churned) for s, churned in zip(churn_scores, labels) if model.band(s) == band]
        if members:
            mean_score = statistics.fmean(s for s, _ in members)
            observed = statistics.fmean(churned for _, churned in members)
            print(f"calibration: {band:<6} {len(members):>6,} customers, mean score {mean_score:.3f}, "
                  f"observed churn {observed:.3f}")


def _cpu_seconds(work) -> float:
    gc.collect()
    started = time.process_time()
    work()
    return time.process_time() - started


def bench_speed(customers: int, days: int, runs: int) -> None:
    cfg = config()
    tune_gc_for_long_lived_state()  # as `shopstream churn train` and every flow process do
    for clicks in (False, True):
        history = generate_history(customers, seed=303, duration_ms=days * DAY_MS, clicks=clicks)
        records = input_records(history)
        orders = sum(1 for r in records if r.topic == "orders")
        decode_s, train_s, score_s = [], [], []
        for _ in range(runs):  # interleaved, so all see the same share of a busy machine
            decode_s.append(_cpu_seconds(lambda: [decode_record(r) for r in records]))
            train_s.append(_cpu_seconds(lambda: pretrain(records, cfg, now_ms=NOW_MS)))
            score_s.append(_cpu_seconds(lambda: replay_history(records, cfg, now_ms=NOW_MS)))
        decode = orders / statistics.median(decode_s)
        label = "orders + clickstream" if clicks else "orders only"
        print(f"speed ({label}, {customers:,} customers x {days} days, {len(records):,} events, {orders:,} order "
              f"events): decode-only baseline {decode:,.0f} order events/s")
        for name, seconds in (("pre-training replay (churn train)", train_s), ("scoring replay (the flow's book)",
                                                                                 score_s)):
            replay = orders / statistics.median(seconds)
            print(f"speed ({label}): {name} {replay:,.0f} order events/s "
                  f"({replay * len(records) / orders:,.0f} events/s); replay/baseline {replay / decode:.3f}; "
                  f"runs {', '.join(f'{orders / s:,.0f}' for s in seconds)}")


def bench_memory(customers: int, days: int) -> None:
    cfg = config()
    records = input_records(generate_history(customers, seed=404, duration_ms=days * DAY_MS))
    pretrain(records[:5_000], cfg, now_ms=NOW_MS)  # pandas and river import lazily: not per-customer memory
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    book = replay_history(records, cfg, now_ms=NOW_MS)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    tracked = len(book.customers)
    states = [book.customer(user_id) for user_id in book.customers]
    compacted = sum(1 for c in states if c.compacted)
    pending = sum(1 for c in states if c.pending_ts is not None)
    pickled = len(pickle.dumps(book.customers)) + len(pickle.dumps(book.timers))
    print(f"memory: {tracked:,} customers tracked ({compacted:,} compacted, {pending:,} with labels pending) "
          f"of {customers:,}; heap {held / tracked:,.0f} bytes per customer (book, timers and model "
          f"included); pickled {pickled / tracked:,.0f} bytes per customer")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=["all", "auc", "speed", "memory"])
    parser.add_argument("--customers", type=int, default=None,
                        help="customers simulated (default: 5,000 for auc and memory, 20,000 for speed)")
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.what in ("all", "auc"):
        bench_auc(args.customers or 5_000, args.days)
    if args.what in ("all", "speed"):
        bench_speed(args.customers or 20_000, args.days, args.runs)
    if args.what in ("all", "memory"):
        bench_memory(args.customers or 5_000, args.days)


if __name__ == "__main__":
    main()
