"""Fraud and churn models on real public data that PyPI packages ship (issue 16).

    python -m shopstream.benchmarks.models [fraud|churn|all] [--fraud-share 0.01] [--horizon 12h]
                                           [--kafka] [--customers-share 1.0]

Runs the engines' own logic (`FraudEngine`, the churn flow's `replay_history`) in process,
on event time only; with `--kafka`, churn is also replayed as contract events through
Kafka, the churn flow and Redis, and its stored scores compared with the in-process ones
(fraud through Kafka is not written yet).

- fraud: river's Statlog (Shuttle) data (`river.datasets.Shuttle`, shipped inside the river
  wheel: 49,097 real sensor records, 9 numeric attributes, 3,511 rare-class "anomalies").
  No real card-payment data set ships in a PyPI wheel (river's CreditCard is a download),
  so this is the closest real labelled, imbalanced data: not fraud. Each record becomes a
  `requested` payment (the attributes as `signals`, one user/card/device per payment, so
  velocity rules see nothing), spread evenly over two days in the file's order, `succeeded`
  a second later; the rare class is kept at `--fraud-share` of payments (drawn by a hash
  of the row) and charged back 6 h after the payment. Printed: AUC, AP, recall at 0.1%
  and 1% false-positive rate on day 2, the decisions' false-block and flag rates on good
  payments, AUC per 4-hour block, and a baseline in the same run: a river logistic
  regression on the same features, labels revealed at the same delays, no balancing.
- churn: CDNOW (the `lifetimes` wheel ships `CDNOW_master.txt`: 23,570 customers' real
  purchases, 1997-01 to 1998-06). Orders of the first 39 weeks are replayed; every
  customer who bought is judged by the score the engine stored for it (what
  `churn:{user}` holds) at the end of them, and that score's age is printed; churned =
  no purchase in the next 39 weeks. Baselines in the same run: days since the last
  purchase alone; BG/NBD fitted on the same customers; a batch logistic regression on
  the engine's own label snapshots (same features, outcomes at the same delay) fitted
  to convergence; and, as a reference of what the features can tell at all, a
  regression fitted on the evaluation's own outcomes (5-fold).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
import zlib
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import numpy as np

HOUR = 3_600_000
DAY = 24 * HOUR


def ranking(y, s) -> dict:
    """AUC (ties averaged), average precision, recall at 0.1% and 1% false-positive rate."""
    from scipy.stats import rankdata
    y = np.asarray(y, dtype=int)
    s = np.asarray(s, dtype=float)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    ranks = rankdata(s)
    auc = (ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    order = np.argsort(-s, kind="mergesort")
    hits = y[order]
    tp, fp = np.cumsum(hits), np.cumsum(1 - hits)
    ap = float((tp[hits == 1] / (np.arange(1, len(hits) + 1)[hits == 1])).sum() / positives)

    def recall_at(rate: float) -> float:
        at = np.searchsorted(fp, rate * negatives, side="right") - 1
        return float(tp[at] / positives) if at >= 0 else 0.0

    return {"auc": round(float(auc), 4), "ap": round(ap, 4), "recall_0.1%": round(recall_at(0.001), 3),
            "recall_1%": round(recall_at(0.01), 3), "positives": positives, "negatives": negatives}


# -- fraud -------------------------------------------------------------------------------------


def shuttle_payments(fraud_share: float, t0: int, span_ms: int, delay_ms: int):
    from river import datasets

    from operators.events import PaymentEvent
    from operators.fraud_model import _uniform

    rows = list(datasets.Shuttle())
    rare = sum(y for _, y in rows)
    keep = fraud_share * (len(rows) - rare) / (1 - fraud_share) / rare
    rows = [(x, y) for i, (x, y) in enumerate(rows) if not y or _uniform(i * 7919 + 1) < keep]
    timed = []
    for i, (x, y) in enumerate(rows):
        ts = t0 + i * span_ms // len(rows)
        base = dict(event_id=f"r{i}", ts=ts, payment_id=f"p{i}", order_id=f"o{i}", user_id=f"u{i}", amount=100.0,
                    currency=None, method="card", card_fingerprint=f"c{i}", card_bin=None, card_last4=None,
                    device_id=f"d{i}", ip=f"ip{i}", country=None, billing_country=None, account_created_ts=None,
                    failure_reason=None, signals={k: float(v) for k, v in x.items()})
        timed.append((ts, 0, PaymentEvent(status="requested", **base), x, y))
        timed.append((ts + 1000, 1, PaymentEvent(status="succeeded", **{**base, "event_id": f"s{i}", "ts": ts + 1000}),
                      None, None))
        if y:
            timed.append((ts + delay_ms, 2, PaymentEvent(status="chargeback",
                                                         **{**base, "event_id": f"c{i}", "ts": ts + delay_ms}),
                          None, None))
    timed.sort(key=lambda item: (item[0], item[1]))
    return timed, {f"p{i}": y for i, (_, y) in enumerate(rows)}


def fraud(fraud_share: float, horizon_ms: int, block_bp: int, through_kafka: bool = False) -> None:
    from river import linear_model, optim, preprocessing

    from dataclasses import replace

    from flows.fraud import fraud_config
    from operators.fraud_engine import FraudEngine
    from shopstream.settings import Settings
    from operators.pseudonym import Pseudonymizer

    t0, delay = 1_700_000_000_000, 6 * HOUR
    timed, truth = shuttle_payments(fraud_share, t0, 2 * DAY, delay)
    # The engine as the fraud flow configures it (allowed lateness, review rate, ...), with
    # this run's horizon and block target: the same settings the --kafka run passes the flow.
    settings = replace(Settings.from_env(), fraud_label_horizon=duration_text(horizon_ms), fraud_block_good_bp=block_bp)
    config = fraud_config(settings)
    engine = FraudEngine(config, Pseudonymizer("models-benchmark-key"))
    baseline = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.01))
    reveal: list[tuple[int, dict, bool]] = []  # the baseline's labels, revealed at the same delays
    decided, baseline_scores = {}, {}
    started = time.perf_counter()
    events = [item[2] for item in timed]
    for start in range(0, len(events), 500):
        batch = events[start:start + 500]
        for decision in engine.process(batch, batch[-1].ts).decisions:
            decided[decision.payment_id] = (decision.ts, decision.score, decision.decision)
    seconds = time.perf_counter() - started
    for ts, kind, event, x, y in timed:
        while reveal and reveal[0][0] <= ts:
            _, rx, ry = reveal.pop(0)
            baseline.learn_one(rx, ry)
        if kind == 0:
            baseline_scores[event.payment_id] = baseline.predict_proba_one(x).get(True, 0.0)
            reveal.append((ts + (delay if y else horizon_ms), x, bool(y)))
            reveal.sort(key=lambda item: item[0])
    day2 = [(truth[p], score, verdict) for p, (ts, score, verdict) in decided.items() if ts >= t0 + DAY]
    good = [verdict for y, _, verdict in day2 if not y]
    model = engine.bundle.model
    print(f"fraud (river Shuttle, rare class at {fraud_share:.2%}, {len(truth):,} payments over 2 days, "
          f"chargebacks 6 h later, horizon {horizon_ms / HOUR:g} h; engine {seconds:.1f} s; labels: "
          f"{model.fraud_labels} fraud, {model.legit_labels:,} legitimate, {model.legit_learned:,} learned)")
    print(f"  engine, day 2: {ranking([y for y, _, _ in day2], [s for _, s, _ in day2])}")
    print(f"  baseline logistic regression, day 2: "
          f"{ranking([truth[p] for p in decided if decided[p][0] >= t0 + DAY], [baseline_scores[p] for p in decided if decided[p][0] >= t0 + DAY])}")
    print(f"  decisions on good day-2 payments: false-block rate {sum(v == 'block' for v in good) / len(good):.5f} "
          f"(target {block_bp / 10_000:.4f}), blocked or reviewed {sum(v != 'approve' for v in good) / len(good):.5f}")
    blocks = []
    for block in range(12):
        chosen = [(truth[p], s) for p, (ts, s, _) in decided.items() if t0 + block * 4 * HOUR <= ts < t0 + (block + 1) * 4 * HOUR]
        ys = [y for y, _ in chosen]
        blocks.append(ranking(ys, [s for _, s in chosen])["auc"] if 0 < sum(ys) < len(ys) else None)
    print(f"  AUC per 4-hour block (the model abstains, AUC 0.5, until its first labels): {blocks}")
    if through_kafka:
        kafka_decided, kafka_seconds = fraud_through_kafka(timed, list(decided), horizon_ms, block_bp)
        kafka_day2 = [(truth[p], score, verdict) for p, (ts, score, verdict) in kafka_decided.items() if ts >= t0 + DAY]
        kafka_good = [verdict for y, _, verdict in kafka_day2 if not y]
        same = sum(kafka_decided.get(p) == decision for p, decision in decided.items())
        print(f"  through Kafka and Redis (payments as contract events, the fraud flow as `shopstream run fraud` "
              f"runs it, decisions read from the fraud-decisions topic; {kafka_seconds:.0f} s), day 2: "
              f"{ranking([y for y, _, _ in kafka_day2], [s for _, s, _ in kafka_day2])}; false-block rate "
              f"{sum(v == 'block' for v in kafka_good) / max(len(kafka_good), 1):.5f}; {len(kafka_decided):,} decisions, "
              f"{same:,} equal the in-process engine's")


# -- churn -------------------------------------------------------------------------------------


def cdnow_path() -> Path:
    spec = importlib.util.find_spec("lifetimes")  # the file only: importing lifetimes needs more packages
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("churn needs the CDNOW data the `lifetimes` wheel ships: pip install --no-deps lifetimes")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "CDNOW_master.txt"


def logistic_fit(features: np.ndarray, outcomes: np.ndarray, l2: float = 1e-4):
    """A batch logistic regression fitted to convergence (L-BFGS) on standardised features:
    the reference an online learner is measured against. Returns a scoring function."""
    from scipy.optimize import minimize

    mean, std = features.mean(axis=0), features.std(axis=0)
    std[std == 0] = 1.0
    design = np.column_stack([(features - mean) / std, np.ones(len(features))])
    y = outcomes.astype(float)

    def loss(w: np.ndarray):
        z = design @ w
        penalty = np.r_[w[:-1], 0.0]
        return (float(np.mean(np.logaddexp(0.0, z) - y * z) + l2 * penalty @ penalty),
                design.T @ (1 / (1 + np.exp(-z)) - y) / len(y) + 2 * l2 * penalty)

    w = minimize(loss, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B").x
    return lambda rows: np.column_stack([(rows - mean) / std, np.ones(len(rows))]) @ w


def cdnow_orders() -> list[tuple[str, int, float, int]]:
    """CDNOW's purchases as (customer, event time ms at noon local, amount, line number)."""

    def ms(day: date) -> int:
        return int(time.mktime(day.timetuple())) * 1000 + 12 * HOUR

    out = []
    for n, line in enumerate(cdnow_path().read_text().split("\n")):
        if not line.strip():
            continue
        customer, day, _, amount = line.split()[-4:]
        if not day.isdigit():
            continue  # the header
        out.append((customer, ms(date(int(day[:4]), int(day[4:6]), int(day[6:]))), float(amount), n))
    return out


@contextmanager
def own_namespace(**overrides):
    """Settings for one run on the configured Kafka and Redis (`shopstream services up` starts
    them if none run): topics and Redis keys under prefixes of this run's own
    (`models{pid}.` / `models{pid}:`, one partition), recovery and model checkpoints in a
    temporary directory (empty: a cold model, as in process), one process of one worker.
    The run's topics and keys are deleted at the end."""
    import os
    import tempfile
    from dataclasses import replace

    from shopstream import services
    from shopstream.settings import Settings
    from state.redis_store import connect

    with tempfile.TemporaryDirectory(prefix="shopstream-models-") as scratch:
        settings = replace(Settings.from_env(), topic_prefix=f"models{os.getpid()}.",
                           redis_prefix=f"models{os.getpid()}:", recovery_dir=Path(scratch) / "recovery",
                           partitions=1, processes=1, workers_per_process=1, flow_api_port_base=0,
                           churn_model_dir=Path(scratch) / "models", fraud_model_dir=Path(scratch) / "models",
                           **overrides)
        services.up(settings)
        services.create_topics(settings)
        redis = connect(settings)
        try:
            yield settings, redis
        finally:
            for key in redis.scan_iter(settings.redis_key("*"), count=5000):
                redis.delete(key)
            redis.close()
            services.delete_topics(settings)


def duration_text(ms: int) -> str:
    return f"{ms // HOUR}h" if ms % HOUR == 0 else f"{ms}ms"


def fraud_through_kafka(timed, payment_ids: list[str], horizon_ms: int, block_bp: int) -> tuple[dict, float]:
    """The payments as contract events on Kafka (in event-time order, keyed by user), the
    fraud flow started as `shopstream run fraud` starts it; returns each payment's
    decision read back from the `fraud-decisions` topic, (ts, score, decision), and the
    seconds from the flow's start to the last decision in Redis."""
    from shopstream.runner import start_flow, stop_all
    from state.kafka import CheckedProducer, read_topic

    with own_namespace(fraud_label_horizon=duration_text(horizon_ms),
                       fraud_block_good_bp=block_bp, pseudonym_key="models-benchmark-key") as (settings, redis):
        producer = CheckedProducer(settings)
        for _, _, event, _, _ in timed:
            producer.produce("payments", event.user_id.encode(), _payment_json(event))
        producer.flush()
        processes = []
        try:
            started = time.perf_counter()
            processes = start_flow(settings, "fraud")
            keys = [settings.redis_key(f"fraud:decision:{payment}") for payment in payment_ids]
            while True:
                pipe = redis.pipeline(transaction=False)
                for key in keys:
                    pipe.exists(key)
                if all(pipe.execute()):
                    break
                if any(proc.popen.poll() is not None for proc in processes):
                    raise SystemExit("the fraud flow stopped before deciding every payment")
                time.sleep(2)
            seconds = time.perf_counter() - started
        finally:
            stop_all(processes)
        import orjson

        decided = {}
        for _, value in read_topic(settings, "fraud-decisions", timeout_s=60):
            decision = orjson.loads(value)
            decided.setdefault(decision["payment_id"], (decision["ts"], decision["score"], decision["decision"]))
        return decided, seconds


def _payment_json(event) -> bytes:
    from state.serde import dumps

    return dumps(event.to_dict())


def churn_through_kafka(records, cut: int, users: list[str]) -> tuple[dict[str, float], float]:
    """The orders as contract events on Kafka (`own_namespace`), the churn flow started as
    `shopstream run churn` starts it, with recovery. Returns the score each customer's
    `churn:{user}` hash holds once every one was scored at or after the evaluation moment
    minus one re-score interval, and the seconds that took. One churn bucket
    (`SHOPSTREAM_CHURN_BUCKETS=1`), so one model learns every label, as in process. A page
    view of a visitor who never pays, at the evaluation moment plus the allowed lateness,
    moves the stream's event time there (a visitor is not a customer: never scored)."""
    from flows.churn import ChurnConfig
    from shopstream.runner import start_flow, stop_all
    from state.kafka import CheckedProducer
    from state.serde import dumps

    # One bucket, one model learning every label, as the in-process replay: with the
    # default 8, each bucket's model learns an eighth of them.
    with own_namespace(churn_buckets=1) as (settings, redis):
        rescore_ms = ChurnConfig.from_settings(settings).rules.rescore_ms
        processes = []
        try:
            producer = CheckedProducer(settings)
            for record in records:
                producer.produce("orders", _user_key(record.value), record.value)
            producer.produce("clickstream", b"models-clock", dumps({
                "event_id": "models-clock", "ts": cut - 1 + settings.allowed_lateness_s * 1000,
                "user_id": "models-clock", "session_id": "models-clock", "type": "page_view",
                "channel": "web", "region": "-", "device": "-"}))
            producer.flush()
            started = time.perf_counter()
            processes = start_flow(settings, "churn")
            keys = [settings.redis_key(f"churn:{user}") for user in users]
            while True:
                pipe = redis.pipeline(transaction=False)
                for key in keys:
                    pipe.hmget(key, "score", "updated_ts")
                found = pipe.execute()
                if all(ts is not None and int(ts) >= cut - 1 - rescore_ms for _, ts in found):
                    break
                if any(proc.popen.poll() is not None for proc in processes):
                    raise SystemExit("the churn flow stopped before scoring every customer")
                time.sleep(2)
            seconds = time.perf_counter() - started
            return {user: float(score) for user, (score, _) in zip(users, found)}, seconds
        finally:
            stop_all(processes)


def _user_key(value: bytes) -> bytes:
    import orjson

    return orjson.loads(value)["user_id"].encode()


def churn(through_kafka: bool = False, share: float = 1.0) -> None:
    from flows.churn import ChurnConfig, churn_record, replay_history
    from operators.btyd import BgNbd, day_rows
    from operators.churn import _LabelLog, learn_from_history
    from operators.rfm import features, rfm_view, unpack_state
    from shopstream.settings import Settings
    from state.kafka import InputRecord
    from state.serde import dumps

    cut = int(time.mktime(date(1997, 10, 1).timetuple())) * 1000  # local midnight: before that day's orders
    window_days = 273  # 39 weeks
    orders = cdnow_orders()
    if share < 1:  # a sample of customers, drawn by a hash of the id (the same in every run)
        orders = [row for row in orders if zlib.crc32(row[0].encode()) < share * 2**32]
    later_buyers = {customer for customer, ts, _, _ in orders if cut <= ts < cut + window_days * DAY}
    records = sorted((InputRecord("orders", 0, n, dumps({
        "event_id": f"cd{n}", "ts": ts, "order_id": f"cd{n}", "user_id": customer, "status": "paid",
        "items": [], "amount": amount}), ts) for customer, ts, amount, n in orders if ts < cut),
        key=lambda record: record.timestamp_ms)
    config = ChurnConfig.from_settings(Settings.from_env())
    rules = config.rules
    started = time.perf_counter()
    book = replay_history(records, config, now_ms=cut)
    book.run_to(cut - 1)  # the evaluation moment: every quiet customer's re-scores up to it have run
    seconds = time.perf_counter() - started
    users, stored, ages, xs = [], [], [], []
    for user_id, blob in sorted(book.customers.items()):
        user = unpack_state(blob)
        if user.orders_total == 0:
            continue
        users.append(user_id)
        stored.append(user.score)
        ages.append(cut - 1 - user.scored_ts)
        xs.append(features(user, rfm_view(user, cut - 1, rules.rfm)))
    churned = np.array([user not in later_buyers for user in users])
    xs = np.array(xs)
    print(f"churn (CDNOW, {len(users):,} customers who bought in the first 39 weeks, {churned.mean():.0%} "
          f"churned: no purchase in the next 39; engine horizon {rules.horizon_ms / DAY:g} d, label snapshots "
          f"every {rules.label_period_ms / DAY:g} d, {book.model.labels_learned:,} labels learned; replay {seconds:.0f} s)")
    print(f"  engine, stored churn score (what churn:{{user}} holds): {ranking(churned, stored)}")
    print(f"  stored scores' age at the evaluation moment: at most {max(ages) / DAY:.2f} d "
          f"(re-score interval {rules.rescore_ms / DAY:g} d), median {float(np.median(ages)) / DAY:.2f} d")
    if through_kafka:
        kafka_scores, kafka_seconds = churn_through_kafka(records, cut, users)
        same = sum(kafka_scores.get(user) == score for user, score in zip(users, stored))
        print(f"  through Kafka and Redis (orders as contract events, the churn flow as `shopstream run churn` "
              f"runs it, scores read from churn:{{user}}; {kafka_seconds:.0f} s): "
              f"{ranking(churned, [kafka_scores.get(user, 0.0) for user in users])}; "
              f"{same:,} of {len(users):,} scores equal the in-process replay's")
    recency = xs[:, book.model.feature_names.index("recency_days")]
    print(f"  baseline, recency alone: {ranking(churned, recency)}")
    # BG/NBD the way it is usually fitted (lifetimes' summary_data_from_transaction_data):
    # repeat purchases counted in distinct days, times in days, from the raw purchases.
    purchase_days: dict[str, set[int]] = {}
    for customer, ts, _, _ in orders:
        if ts < cut:
            purchase_days.setdefault(customer, set()).add(ts // DAY)
    first_day = np.array([min(purchase_days[u]) for u in users], dtype=float)
    last_day = np.array([max(purchase_days[u]) for u in users], dtype=float)
    x = np.array([len(purchase_days[u]) - 1 for u in users], dtype=float)
    t_x, T = last_day - first_day, cut / DAY - first_day
    bgnbd = BgNbd.fit(*day_rows(x, t_x, T))
    print(f"  baseline, BG/NBD fitted on these customers' purchase days ({', '.join(f'{v:.3g}' for v in bgnbd)}), "
          f"P(no purchase in the 39 weeks): {ranking(churned, bgnbd.p_no_purchase(x, t_x, T, window_days))}")
    for horizon in sorted({30.0, rules.horizon_ms / DAY}):
        print(f"  baseline, the same BG/NBD, P(no purchase within {horizon:g} d): "
              f"{ranking(churned, bgnbd.p_no_purchase(x, t_x, T, horizon))}")
    # The engine's own label snapshots, outcomes at the same delay, fitted in one batch to convergence.
    log = _LabelLog(book.model.feature_names)
    inputs = [decoded[1] for decoded in (churn_record(record, cut) for record in records) if decoded and decoded[1]]
    learn_from_history(rules, log, inputs, cut - 1)  # type: ignore[arg-type]
    labelled = [(label_x, label) for _, label_x, label, _ in log.labels if label is not None]
    scorer = logistic_fit(np.array([label_x for label_x, _ in labelled]), np.array([label for _, label in labelled]))
    print(f"  baseline, batch logistic regression on the same {len(labelled):,} labels and features: "
          f"{ranking(churned, scorer(xs))}")
    # What these features can tell at all: a regression fitted on the held-out outcomes themselves.
    fold = np.arange(len(users)) % 5
    reference = np.zeros(len(users))
    for k in range(5):
        reference[fold == k] = logistic_fit(xs[fold != k], churned[fold != k])(xs[fold == k])
    print(f"  reference (not a baseline: fitted on the evaluation's own outcomes, 5-fold): {ranking(churned, reference)}")


def main(argv: list[str] | None = None) -> None:
    from shopstream.settings import parse_duration_ms

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["all", "fraud", "churn"])
    parser.add_argument("--fraud-share", type=float, default=0.01)
    parser.add_argument("--horizon", default="12h", help="fraud label horizon (any unit)")
    parser.add_argument("--block-bp", type=int, default=10)
    parser.add_argument("--kafka", action="store_true",
                        help="also replay through Kafka, the flows and Redis (own topic and key prefixes)")
    parser.add_argument("--customers-share", type=float, default=1.0,
                        help="churn: replay this share of CDNOW's customers (drawn by a hash of the id)")
    args = parser.parse_args(argv)
    if args.what in ("all", "fraud"):
        fraud(args.fraud_share, parse_duration_ms(args.horizon, "--horizon"), args.block_bp, args.kafka)
    if args.what in ("all", "churn"):
        churn(args.kafka, args.customers_share)


if __name__ == "__main__":
    main()
