"""`shopstream alerts tail` and `shopstream alerts ack DEDUP_KEY`: the on-call view.

`tail` prints what is firing now (from `alerts:active`), then follows the `alerts`
topic live, one colour-coded line per state change (ids seen twice after a replay
are shown once). `ack` sets `alerts:ack:{dedup_key}` for the open episode, which
stops its escalation and reminders; the router clears it when the alert resolves.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
import uuid
from datetime import datetime
from typing import Any, Iterable, TextIO

from shopstream.settings import Settings

ACTIVE_KEY = "alerts:active"
ACK_TTL_S = 7 * 24 * 3600  # outlives any episode on-call would ack; the router deletes it on resolve

_RESET = "\033[0m"
_COLOURS = {
    "critical": "\033[1;31m",  # bold red
    "warning": "\033[33m",  # yellow
    "info": "\033[36m",  # cyan
    "resolved": "\033[32m",  # green
    "escalated": "\033[1;35m",  # bold magenta
    "dim": "\033[2m",
}
_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def add_arguments(subparsers) -> None:
    alerts = subparsers.add_parser("alerts", help="the on-call view: tail the alerts, acknowledge one")
    actions = alerts.add_subparsers(dest="alerts_action", required=True)
    tail = actions.add_parser("tail", help="what is firing now, then every alert as it happens")
    tail.add_argument("--from-beginning", action="store_true", help="replay the whole alerts topic first")
    tail.add_argument("--once", action="store_true", help="print what is firing now and exit")
    tail.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    tail.set_defaults(handler=cmd_tail)
    ack = actions.add_parser("ack", help="acknowledge an alert: stops its escalation and reminders")
    ack.add_argument("dedup_key", metavar="DEDUP_KEY", help="rule:key, as `alerts tail` shows it")
    ack.add_argument("--note", default="", help="why, for the next person")
    ack.set_defaults(handler=cmd_ack)
    forward = actions.add_parser(
        "forward", help="forward the alerts topic to Alertmanager (SHOPSTREAM_ALERTMANAGER_URL) and/or "
        "PagerDuty Events v2 (SHOPSTREAM_PAGERDUTY_ROUTING_KEY); runs until stopped")
    forward.set_defaults(handler=cmd_forward)


def cmd_forward(args: argparse.Namespace, settings: Settings) -> int:
    from shopstream.forwarder import run_forwarder

    return run_forwarder(settings)


# -- formatting ---------------------------------------------------------------------------------


class Painter:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, style: str, text: str) -> str:
        return f"{_COLOURS[style]}{text}{_RESET}" if self.enabled and style in _COLOURS else text


def use_colour(choice: str, stream: TextIO) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return stream.isatty()


def clock(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000).strftime("%m-%d %H:%M:%S")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1 else f"{value:,.1f}".rstrip("0").rstrip(".")
    return f"{value:,}" if isinstance(value, int) else str(value)


def format_alert(alert: dict, paint: Painter) -> str:
    """One line per state change: when, severity, status, what, the numbers, the runbook."""
    status = alert.get("status", "?")
    severity = alert.get("severity", "info")
    if status == "resolved":
        badge = paint("resolved", "RESOLVED ")
    elif status == "escalated":
        badge = paint("escalated", "ESCALATED")
    else:
        badge = paint(severity, "FIRING   ")
    if alert.get("reminder"):
        badge += paint("dim", " (reminder)")
    numbers = []
    if "value" in alert:
        numbers.append(f"value {_number(alert['value'])}")
    if "threshold" in alert:
        numbers.append(f"threshold {_number(alert['threshold'])}")
    numbers.append(f"x{alert.get('count', 1)}")
    numbers.append(f"since {clock(alert.get('first_seen_ts', alert.get('ts', 0)))}")
    line = (
        f"{paint('dim', clock(alert.get('ts', 0)))} {paint(severity, f'{severity.upper():<8}')} {badge} "
        f"{alert.get('dedup_key', '?')}  {alert.get('summary', '')}  {paint('dim', '(' + ', '.join(numbers) + ')')}"
    )
    if alert.get("runbook") and status != "resolved":
        line += "\n" + paint("dim", f"    runbook: {alert['runbook']}")
    return line


def format_board(active: Iterable[dict], acked: set[str], paint: Painter) -> str:
    """What is firing now, worst first."""
    alerts = sorted(active, key=lambda a: (_SEVERITY_ORDER.get(a.get("severity"), 3), a.get("first_seen_ts", 0)))
    if not alerts:
        return paint("resolved", "nothing firing")
    counts: dict[str, int] = {}
    for alert in alerts:
        counts[alert.get("severity", "info")] = counts.get(alert.get("severity", "info"), 0) + 1
    head = ", ".join(paint(s, f"{n} {s}") for s, n in sorted(counts.items(), key=lambda kv: _SEVERITY_ORDER.get(kv[0], 3)))
    lines = [f"firing now: {head}"]
    for alert in alerts:
        ack = paint("dim", "  [acknowledged]") if alert.get("dedup_key") in acked or alert.get("acknowledged") else ""
        first, _, rest = format_alert(alert, paint).partition("\n")
        lines.append("  " + first + ack + ("\n  " + rest if rest else ""))
    return "\n".join(lines)


# -- Redis and Kafka ----------------------------------------------------------------------------


def read_board(settings: Settings, client) -> tuple[list[dict], set[str]]:
    from state.serde import loads

    raw = client.hgetall(settings.redis_key(ACTIVE_KEY))
    active = [loads(value) for value in raw.values()]
    keys = [a["dedup_key"] for a in active]
    acked = set()
    if keys:
        values = client.mget([settings.redis_key(f"alerts:ack:{k}") for k in keys])
        acked = {k for k, v in zip(keys, values) if v is not None}
    return active, acked


def cmd_tail(args: argparse.Namespace, settings: Settings, out: TextIO | None = None) -> int:
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

    from state.redis_store import connect
    from state.serde import loads

    out = out or sys.stdout
    paint = Painter(use_colour(args.color, out))
    client = connect(settings)
    try:
        active, acked = read_board(settings, client)
        print(format_board(active, acked, paint), file=out, flush=True)
        if args.once:
            return 0
        topic = settings.topic("alerts")
        consumer = Consumer(
            {**settings.kafka_config(), "group.id": f"shopstream-tail-{uuid.uuid4()}", "enable.auto.commit": False}
        )
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in partitions])
        print(paint("dim", f"following {topic} (Ctrl-C to stop)"), file=out, flush=True)
        seen: set[str] = set()
        firing = {a["dedup_key"]: a for a in active}
        try:
            while True:
                msg = consumer.poll(1.0)
                if msg is None or msg.error():
                    continue
                try:
                    alert = loads(msg.value())
                except Exception:  # noqa: BLE001 - not ours to judge; show nothing
                    continue
                alert_id = alert.get("alert_id")
                if alert_id in seen:
                    continue  # re-sent after a replay: same id, already shown
                seen.add(alert_id)
                if alert.get("status") == "resolved":
                    firing.pop(alert.get("dedup_key"), None)
                else:
                    firing[alert.get("dedup_key")] = alert
                print(format_alert(alert, paint), file=out, flush=True)
                print(paint("dim", f"    now firing: {len(firing)}"), file=out, flush=True)
        except KeyboardInterrupt:
            return 0
        finally:
            consumer.close()
    finally:
        client.close()


def cmd_ack(args: argparse.Namespace, settings: Settings) -> int:
    from state.redis_store import connect
    from state.serde import dumps, loads

    client = connect(settings)
    try:
        raw = client.hget(settings.redis_key(ACTIVE_KEY), args.dedup_key)
        if raw is None:
            print(f"no active alert {args.dedup_key!r}; `shopstream alerts tail --once` lists them", file=sys.stderr)
            return 1
        alert = loads(raw)
        try:
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name in some containers
            user = "unknown"
        ack = {"first_seen_ts": alert["first_seen_ts"], "ts": int(time.time() * 1000), "by": user}
        if args.note:
            ack["note"] = args.note
        client.set(settings.redis_key(f"alerts:ack:{args.dedup_key}"), dumps(ack), ex=ACK_TTL_S)
        print(f"acknowledged {args.dedup_key} (firing since {clock(alert['first_seen_ts'])}): "
              "no more escalation or reminders for this episode")
        return 0
    finally:
        client.close()
