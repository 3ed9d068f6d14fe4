"""`shopstream demo`: the whole system on one screen.

Starts Kafka and Redis, runs every flow with recovery, produces live shop traffic
(with a sprinkle of malformed events), and prints a live summary read back from
Redis: input per topic and channel, dead letters, flow health, and the price watch
(the traffic includes a `price_war`: rivals undercutting our best sellers). Stops cleanly at
the end or on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace


from operators.traffic_kpi import clean_funnel, clean_kpi
from shopstream import services
from shopstream.runner import FlowProcess, preflight, resolve_flows, start_flows, stop_all
from shopstream.settings import INPUT_TOPICS, Settings
from state.redis_store import connect
from state.serde import loads

# Short windows so results show up within seconds, not after a minute.
DEMO_WINDOW_S = 5
DEMO_LATENESS_S = 2
DEMO_COUPON_ABANDON_S = 20  # carts abandoned after 20 s, not 30 min: coupons show up during the demo
DEMO_RATE = 300  # events per second of live traffic
# The six minutes before 20:00 go out flat out first: shoppers are mid-session when the
# live part starts, so orders, payments and GMV show from the first windows (a shop that
# opened at the demo's start would take minutes to see its first payment).
DEMO_PREROLL_MS = 6 * 60_000
DEMO_BAD_RATE = 0.005  # share of deliberately malformed events
REFRESH_S = 3.0


def shop_evening_start(now_s: float) -> int:
    """Event time for the demo traffic: the latest 20:00 in China (UTC+8), the evening
    peak of a real shop, so the demo is lively at any hour. Milliseconds."""
    china_offset_s = 8 * 3600
    local_s = now_s + china_offset_s
    evening_s = local_s - local_s % 86400 + 20 * 3600
    if evening_s > local_s:
        evening_s -= 86400
    return int((evening_s - china_offset_s) * 1000)


def _simulator_command(duration_s: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shopstream.cli",
        "simulate",
        "--scenario",
        "normal,card_testing,brushing,price_war",
        "--start",
        str(shop_evening_start(time.time()) - DEMO_PREROLL_MS),
        "--preroll",
        f"{DEMO_PREROLL_MS // 1000}s",
        "--speed",
        "1",
        "--rate",
        str(DEMO_RATE),
        "--duration",
        f"{DEMO_PREROLL_MS // 1000 + int(duration_s) + 60}s",
        "--bad-rate",
        str(DEMO_BAD_RATE),
        "--seed",
        "11",
        # Sessions per day scale with the population: four million shoppers give about 300
        # events per second at 20:00 once sessions are in flight; the rate cap keeps it there.
        "--shoppers",
        "4000000",
    ]


def start_dashboard(settings: Settings, log_dir) -> tuple[subprocess.Popen | None, str]:
    """`shopstream dashboard` over the demo's keys; its configured port, or a free one if taken."""
    import socket

    from shopstream.dashboard.config import DashboardConfig
    from shopstream.settings import ConfigError

    try:
        config = DashboardConfig.from_env(os.environ)
    except ConfigError as err:
        return None, f"not started: {err}"
    port = config.port
    with socket.socket() as probe:
        if probe.connect_ex((config.host if config.host != "0.0.0.0" else "127.0.0.1", port)) == 0:
            with socket.socket() as free:
                free.bind(("127.0.0.1", 0))
                port = free.getsockname()[1]
    with open(log_dir / "dashboard.log", "ab") as dashboard_log:
        process = subprocess.Popen(
            [sys.executable, "-m", "shopstream.cli", "dashboard", "--port", str(port)],
            env={**os.environ, **settings.to_env()},
            stdout=dashboard_log,
            stderr=subprocess.STDOUT,
        )
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    url = f"http://{host}:{port}/"
    return process, url + (" (add ?token=$SHOPSTREAM_DASHBOARD_TOKEN once)" if config.token else "")


def _window_history(client, settings: Settings, series: str) -> list[dict]:
    members = client.zrange(settings.redis_key(f"{series}:history"), 0, -1)
    return [loads(member) for member in members]


def render_summary(client, settings: Settings, processes: list[FlowProcess], started: float) -> str:
    lines = [
        f"shopstream demo: {time.monotonic() - started:5.0f}s  "
        f"(shop time from 20:00 China time, windows of {settings.input_window_s}s, times in UTC)"
    ]
    lines.append(f"  {'topic':<12} {'last window':>12} {'events':>8} {'dead letters':>13} {'total':>9}")
    for topic in INPUT_TOPICS:
        history = _window_history(client, settings, f"input:{topic}")
        total = sum(w["events"] for w in history)
        dead = sum(w["dead_letters"] for w in history)
        last = history[-1] if history else None
        window = time.strftime("%H:%M:%S", time.gmtime(last["window_start"] / 1000)) if last else "-"
        lines.append(
            f"  {topic:<12} {window:>12} {last['events'] if last else 0:>8} {dead:>13} {total:>9}"
        )
    channels = []
    for key in client.scan_iter(settings.redis_key("input:clickstream:channel:*:history")):
        channel = key.decode().split(":channel:")[1].rsplit(":", 1)[0]
        history = _window_history(client, settings, f"input:clickstream:channel:{channel}")
        if history:
            channels.append(f"{channel}={history[-1]['events']}")
    lines.append("  clickstream by channel (last window): " + (", ".join(sorted(channels)) or "-"))
    lines.append("  " + _funnel_line(client, settings))
    lines.append("  " + _stock_line(client, settings))
    lines.extend("  " + line for line in _alert_lines(client, settings))
    lines.append("  " + _coupon_line(client, settings))
    lines.append("  " + _fraud_line(client, settings))
    lines.append("  " + _churn_line(client, settings))
    lines.append("  " + _traffic_line(client, settings))
    lines.append("  " + _pricing_line(client, settings))
    health = ", ".join(
        f"{p.flow_name}#{p.process_id} {'running' if p.popen.poll() is None else f'exited {p.popen.returncode}'}"
        for p in processes
    )
    lines.append(f"  flows: {health}")
    return "\n".join(lines)


def _funnel_line(client, settings: Settings) -> str:
    """The last funnel window: sessions per stage, and its KPIs."""
    funnel, kpi = (client.get(settings.redis_key(key)) for key in ("funnel:all:all", "kpi:latest"))
    if funnel is None or kpi is None:
        return "funnel: no window closed yet"
    funnel, kpi = loads(funnel), loads(kpi)
    # Clean figures: the traffic flow's flagged orders and sessions of the window taken out.
    flagged = client.get(settings.redis_key(f"traffic:window:{kpi.get('window_start')}"))
    flagged = [loads(flagged)] if flagged is not None else []
    kpi = clean_kpi(kpi, flagged)
    funnel = clean_funnel(funnel, [w for w in flagged if w.get("window_start") == funnel.get("window_start")])
    stages = " > ".join(f"{name} {count}" for name, count in funnel["stages"].items())
    conversion = funnel.get("overall_conversion")
    conversion = "-" if conversion is None else f"{conversion:.2%}"
    if (funnel.get("flagged_stages") or {}).get("visit"):
        gross = funnel.get("overall_conversion_gross")
        conversion += f" (gross {'-' if gross is None else f'{gross:.2%}'})"
    success = kpi["payment_success_rate"]
    apart = (f" ({kpi['flagged_orders']} flagged orders, {kpi['flagged_gmv']:,.0f} GMV, left out)"
             if kpi["flagged_orders"] else "")
    return (f"funnel (last window): {stages}; conversion {conversion}; GMV {kpi['gmv']:,.0f}, "
            f"{kpi['orders']} orders{apart}, {kpi['uv']} visitors, "
            f"payments {'-' if success is None else f'{success:.0%} ok'}")


def _traffic_line(client, settings: Settings) -> str:
    """Brushing rings and click farms found (the traffic flow's `ring:*` hashes)."""
    rings = orders = sessions = 0
    gmv = 0.0
    for key in client.scan_iter(match=settings.redis_key("ring:*"), count=1000):
        fields = client.hmget(key, "flagged_orders", "flagged_gmv", "flagged_sessions")
        try:
            orders += int(fields[0] or 0)
            gmv += float(fields[1] or 0)
            sessions += int(fields[2] or 0)
        except ValueError:
            continue
        rings += 1
    if not rings:
        return "traffic: no ring found"
    return f"traffic: {rings} rings, {orders} fake orders ({gmv:,.0f} GMV) and {sessions} farm sessions flagged"


def _pricing_line(client, settings: Settings) -> str:
    """SKUs watched against rivals, their suggestions by rule, and the widest undercut."""
    prefix = settings.redis_key("price:")
    keys = sorted(client.scan_iter(match=f"{prefix}*", count=1000))
    if not keys:
        return "prices: no SKU of ours priced yet"
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    views = [{k.decode(): v.decode() for k, v in fields.items()} for fields in pipe.execute()]
    rules = Counter(view["suggestion_rule"] for view in views if "suggestion_rule" in view)
    undercut = [(float(view["gap_pct"]), key.decode()[len(prefix):], view)
                for key, view in zip(keys, views) if "gap_since_ts" in view]
    text = (f"prices: {len(views)} SKUs watched, {len(undercut)} undercut; suggestions "
            + (", ".join(f"{rule} {count}" for rule, count in sorted(rules.items())) or "none"))
    if undercut:
        gap, sku, view = max(undercut)
        text += (f"  (widest: {sku} {view['lowest_rival']} {float(view['lowest_rival_price']):g} vs our "
                 f"{float(view['own_price']):g}, -{gap:.1f}%: suggest {float(view['suggested_price']):g} "
                 f"by {view['suggestion_rule']})")
    return text


def _stock_line(client, settings: Settings) -> str:
    """SKUs per stock level, and the ones that need someone now."""
    levels: dict[str, list[str]] = {}
    prefix = settings.redis_key("stock:")
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "level")
    for key, level in zip(keys, pipe.execute()):
        levels.setdefault((level or b"?").decode(), []).append(key.decode()[len(prefix):])
    counts = ", ".join(f"{level} {len(levels.get(level, []))}" for level in ("safe", "warning", "urgent", "out"))
    hot = sorted(levels.get("out", []) + levels.get("urgent", []))[:5]
    return f"stock: {counts}" + (f"  (urgent/out: {', '.join(hot)})" if hot else "")


def _coupon_line(client, settings: Settings) -> str:
    """Coupons pushed so far, and the latest one."""
    pushed = client.xlen(settings.redis_key("stream:coupons"))
    notes = client.xlen(settings.redis_key("stream:cart_notes"))
    latest = client.xrevrange(settings.redis_key("stream:coupons"), count=1)
    text = f"coupons: {pushed} pushed, {notes} back-in-stock notes"
    if latest:
        coupon = loads(latest[0][1][b"coupon"])
        text += f"  (latest: {coupon['user_id']} {coupon['kind']} {coupon['value']:g}, tier {coupon.get('tier', '-')})"
    return text


def _values_of(client, pattern: str, field: str | None = None) -> list[bytes]:
    """Every value (or hash field) under a key pattern: fine at demo scale, not in production."""
    keys = list(client.scan_iter(match=pattern, count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        if field is None:
            pipe.get(key)
        else:
            pipe.hget(key, field)
    return [value for value in pipe.execute() if value is not None]


def _fraud_line(client, settings: Settings) -> str:
    """Decisions given so far by verdict (the demo traffic mixes in card-testing bursts)."""
    verdicts = Counter(loads(value)["decision"] for value in _values_of(client, settings.redis_key("fraud:decision:*")))
    if not verdicts:
        return "fraud: no payment decided yet"
    return "fraud decisions: " + ", ".join(f"{name} {verdicts[name]}" for name in ("approve", "review", "block"))


def _churn_line(client, settings: Settings) -> str:
    """Customers scored so far, per value tier."""
    tiers = Counter(value.decode() for value in _values_of(client, settings.redis_key("churn:*"), "tier"))
    if not tiers:
        return "churn: no customer scored yet"
    return "customers by tier: " + ", ".join(f"{tier} {count}" for tier, count in tiers.most_common())


def _alert_lines(client, settings: Settings) -> list[str]:
    active = [loads(value) for value in client.hvals(settings.redis_key("alerts:active"))]
    if not active:
        return ["alerts: nothing firing"]
    rank = {"critical": 0, "warning": 1, "info": 2}
    active.sort(key=lambda a: (rank.get(a["severity"], 3), a["dedup_key"]))
    lines = [f"alerts: {len(active)} active"]
    for alert in active[:5]:
        lines.append(f"  {alert['severity']:<8} {alert['status']:<9} {alert['summary']}")
    return lines


def demo_settings(settings: Settings) -> Settings:
    """The demo's own namespace: topics, Redis keys and recovery store of its own."""
    return replace(
        settings,
        topic_prefix=f"{settings.topic_prefix}demo.",
        redis_prefix=f"{settings.redis_prefix}demo:",
        recovery_dir=settings.services_dir / "demo-recovery",
        input_window_s=DEMO_WINDOW_S,
        allowed_lateness_s=DEMO_LATENESS_S,
        coupon_abandon_after_s=DEMO_COUPON_ABANDON_S,
        funnel_window_s=DEMO_WINDOW_S,
        funnel_rolling_s=15 * DEMO_WINDOW_S,
    )


def reset_namespace(settings: Settings) -> None:
    """Every demo starts from nothing: no topics, keys or recovered state of an earlier one."""
    services.delete_topics(settings)
    shutil.rmtree(settings.recovery_dir, ignore_errors=True)
    client = connect(settings)
    try:
        for key in client.scan_iter(match=f"{settings.redis_prefix}*", count=1000):
            client.unlink(key)
    finally:
        client.close()
    services.create_topics(settings)


def run_demo(settings: Settings, duration_s: float, keep_services: bool) -> int:
    settings = demo_settings(settings)
    already_running = all(s.answering for s in services.status(settings).values())
    print("starting Kafka and Redis (the first run fetches Kafka from Maven Central)...", flush=True)
    services.up(settings)
    reset_namespace(settings)
    preflight(settings)
    log_dir = settings.services_dir / "logs"
    processes: list[FlowProcess] = []
    simulator = None
    dashboard = None
    client = connect(settings)
    try:
        processes = start_flows(settings, resolve_flows(None), log_dir)
        with open(log_dir / "simulator.log", "ab") as simulator_log:
            simulator = subprocess.Popen(
                _simulator_command(duration_s),
                env={**os.environ, **settings.to_env()},
                stdout=simulator_log,
                stderr=subprocess.STDOUT,
            )
        dashboard, dashboard_url = start_dashboard(settings, log_dir)
        print(f"flows and simulator running; logs in {log_dir}; Ctrl-C stops", flush=True)
        print(f"live dashboard: {dashboard_url}", flush=True)
        started = time.monotonic()
        while time.monotonic() - started < duration_s:
            time.sleep(REFRESH_S)
            print(render_summary(client, settings, processes, started), flush=True)
            print(f"  dashboard: {dashboard_url}", flush=True)
            failed = [p for p in processes if p.popen.poll() is not None]
            if failed:
                print(f"a flow stopped; see {log_dir}", file=sys.stderr)
                return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping...", flush=True)
        if simulator is not None and simulator.poll() is None:
            simulator.terminate()
            try:
                simulator.wait(10)
            except subprocess.TimeoutExpired:
                simulator.kill()
                simulator.wait()
        if dashboard is not None and dashboard.poll() is None:
            dashboard.terminate()
            try:
                dashboard.wait(10)
            except subprocess.TimeoutExpired:
                dashboard.kill()
                dashboard.wait()
        stop_all(processes)
        client.close()
        # Services someone started before the demo are theirs to stop.
        if not keep_services and not already_running:
            services.down(settings)
        print("demo stopped", flush=True)
