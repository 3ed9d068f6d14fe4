"""Benchmark of `shopstream dashboard` during a double11 simulation (issue 18's numbers).

    python -m shopstream.benchmarks.dashboard [--pages 10] [--skus 10000] [--alerts 500]
                                              [--rate 300] [--seconds 60] [--probes 20]

Every flow runs as `shopstream run` runs it (short windows, as in the demo) on
double11 traffic produced live by `shopstream simulate`, so KPIs, funnel, fraud,
coupons and customers change all the time. On top, `--skus` SKU hashes and
`--alerts` active alerts are written the way the stock and alerts flows write them.
The dashboard runs as its own process; `--pages` pages are open in Debian's chromium.

Measured:
- first render: navigation start -> every section rendered from the first snapshot,
  per page (the page's own `performance.now()`);
- update latency: a probe written to Redis (an alert's summary in `alerts:active`, a
  SKU's level and count in `stock:{sku}`) -> the page's DOM showing it, seen by a
  MutationObserver in every page, on the machine's one clock;
- server CPU: the dashboard process's user + system CPU time over the measured
  `--seconds`, as a share of one core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from shopstream import services
from shopstream.dashboard.sample import StockView, Writer
from shopstream.demo import reset_namespace, shop_evening_start
from shopstream.runner import free_ports, preflight, resolve_flows, start_flows, stop_all
from shopstream.settings import Settings
from state.redis_store import connect

PROBE_SKU = "bench-probe"
PROBE_RULE = "bench.probe"
OLD_MS = 1_700_000_000_000  # the probe alert's first_seen: the oldest critical, listed first

# Installed in every page: when a probe's text first appears, note the wall time.
_OBSERVER = """() => {
  window.__seen = {};
  const look = () => {
    const now = Date.now();
    for (const el of document.querySelectorAll('#alerts-active .alert-summary')) {
      const m = /latency probe (\\d+)/.exec(el.textContent);
      if (m && !(('a' + m[1]) in window.__seen)) window.__seen['a' + m[1]] = now;
    }
    const row = document.querySelector("#stock-hot tr[data-sku='bench-probe']");
    if (row) {
      const n = row.children[2].textContent.replace(/,/g, '');
      if (!(('s' + n) in window.__seen)) window.__seen['s' + n] = now;
    }
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def bench_settings(settings: Settings, scratch: Path) -> Settings:
    """Its own topics, keys and recovery store; windows of 5 s so results change often."""
    return replace(
        settings, topic_prefix=f"{settings.topic_prefix}benchdash.", redis_prefix=f"{settings.redis_prefix}benchdash:",
        recovery_dir=scratch / "recovery", input_window_s=5, allowed_lateness_s=2, funnel_window_s=5,
        funnel_rolling_s=75, coupon_abandon_after_s=20,
    )


def seed(client, prefix: str, skus: int, alerts: int, now_ms: int) -> None:
    writer = Writer(client, prefix)
    levels = ["safe"] * 85 + ["warning"] * 8 + ["urgent"] * 5 + ["out"] * 2
    views = []
    for i in range(skus):
        level = levels[(i * 37) % len(levels)]
        urgent = level in ("urgent", "out")
        views.append(StockView(f"bench-sku-{i:05d}", 0 if level == "out" else 20 + i % 500, i % 7, 0, level, now_ms,
                               velocity_per_min=1.0 + i % 5 if urgent else None,
                               minutes_to_stockout=float(5 + i % 25) if level == "urgent" else None))
        if len(views) == 1000:
            writer.stock(views)
            views = []
    writer.stock(views)
    severities = ["warning"] * 6 + ["critical"] * 1 + ["info"] * 3
    for i in range(alerts):
        writer.alert("bench.seed", f"key-{i:04d}", severities[i % len(severities)],
                     f"seeded alert {i}: bench-sku-{i:05d} below its safety stock", ts=now_ms,
                     first_seen_ts=now_ms - 60_000 * (i % 90), count=1 + i % 4)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_for_http(url: str, timeout_s: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run(settings: Settings, pages: int, skus: int, alerts: int, rate: float, seconds: float, probes: int,
        warmup_s: float, chromium: str) -> dict:
    from playwright.sync_api import sync_playwright

    scratch = Path(tempfile.mkdtemp(prefix="benchdash-"))
    settings = bench_settings(settings, scratch)
    already_running = all(s.answering for s in services.status(settings).values())
    services.up(settings)
    reset_namespace(settings)
    preflight(settings)
    log_dir = scratch / "logs"
    log_dir.mkdir()
    client = connect(settings)
    flows, simulator, dashboard = [], None, None
    try:
        flows = start_flows(settings, resolve_flows(None), log_dir)
        preroll_ms = 2 * 60_000
        simulator = subprocess.Popen(
            [sys.executable, "-m", "shopstream.cli", "simulate", "--scenario", "double11",
             "--start", str(shop_evening_start(time.time()) - preroll_ms), "--preroll", "2m", "--speed", "1",
             "--rate", str(rate), "--duration", f"{int(preroll_ms / 1000 + warmup_s + seconds + 300)}s",
             "--shoppers", "4000000", "--seed", "18"],
            env={**os.environ, **settings.to_env()}, stdout=open(log_dir / "simulator.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        seed(client, settings.redis_prefix, skus, alerts, int(time.time() * 1000))
        port = free_ports(1)[0]
        url = f"http://127.0.0.1:{port}/"
        dashboard = subprocess.Popen(
            [sys.executable, "-m", "shopstream.cli", "dashboard", "--port", str(port)],
            env={**os.environ, **settings.to_env()}, stdout=open(log_dir / "dashboard.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        _wait_for_http(url)
        print(f"flows, double11 traffic at {rate:g} events/s and the dashboard running; warming up {warmup_s:g}s",
              flush=True)
        time.sleep(warmup_s)
        writer = Writer(client, settings.redis_prefix)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            first_render = []
            open_pages = []
            for _ in range(pages):
                # One context each: ten people's browsers (one browser holds at most six
                # connections to a server, and each page keeps one open for its stream).
                page = browser.new_context(viewport={"width": 1400, "height": 1400}).new_page()
                page.goto(url)
                page.wait_for_selector("body[data-ready='1']", timeout=30_000)
                first_render.append(page.evaluate("window.dashboard.readyAt"))
                page.evaluate(_OBSERVER)
                open_pages.append(page)
            cpu_start, wall_start = _cpu_seconds(dashboard.pid), time.monotonic()
            written: dict[str, float] = {}
            gap = seconds / (2 * probes + 1)
            for n in range(1, probes + 1):
                written[f"a{n}"] = time.time() * 1000
                writer.alert(PROBE_RULE, "p", "critical", f"latency probe {n}", ts=int(written[f"a{n}"]),
                             first_seen_ts=OLD_MS, count=n)
                open_pages[0].wait_for_timeout(gap * 1000)
                written[f"s{n}"] = time.time() * 1000
                writer.stock([StockView(PROBE_SKU, n, 0, 0, "out", int(written[f"s{n}"]))])
                open_pages[0].wait_for_timeout(gap * 1000)
            remaining = seconds - (time.monotonic() - wall_start)
            if remaining > 0:
                open_pages[0].wait_for_timeout(remaining * 1000)
            cpu = (_cpu_seconds(dashboard.pid) - cpu_start) / (time.monotonic() - wall_start)
            seen = [page.evaluate("window.__seen") for page in open_pages]
            open_pages[0].screenshot(path=str(scratch / "dashboard-bench.png"))
            browser.close()
        latencies = {"alert": [], "stock": []}
        missed = 0
        for probe, at in written.items():
            kind = "alert" if probe.startswith("a") else "stock"
            for page_seen in seen:
                if probe in page_seen:
                    latencies[kind].append(page_seen[probe] - at)
                else:
                    missed += 1
        flows_alive = all(p.popen.poll() is None for p in flows)
        return {
            "pages": pages, "skus": skus, "alerts": alerts, "rate": rate, "seconds": seconds,
            "first_render_ms": first_render, "latency_ms": latencies, "missed": missed,
            "server_cpu_share": cpu, "flows_alive": flows_alive, "screenshot": str(scratch / "dashboard-bench.png"),
            "stock_keys_read": int(client.dbsize()),
        }
    finally:
        for process in (dashboard, simulator):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
        stop_all(flows)
        client.close()
        services.delete_topics(settings)
        if not already_running:  # services someone started before are theirs to stop
            services.down(settings)


def format_report(r: dict) -> str:
    lines = [f"dashboard: {r['pages']} pages, {r['skus']:,} SKUs, {r['alerts']} seeded alerts, double11 at "
             f"{r['rate']:g} events/s, {r['seconds']:g} s measured (Redis keys: {r['stock_keys_read']:,})"]
    fr = r["first_render_ms"]
    lines.append(f"  first render     median {statistics.median(fr):7.0f} ms   max {max(fr):7.0f} ms   (n={len(fr)})")
    for kind, values in r["latency_ms"].items():
        if values:
            lines.append(f"  update ({kind:<5})   median {statistics.median(values):7.0f} ms   p95 "
                         f"{_percentile(values, 0.95):7.0f} ms   max {max(values):7.0f} ms   (n={len(values)})")
    lines.append(f"  probes not seen  {r['missed']}")
    lines.append(f"  server CPU       {100 * r['server_cpu_share']:.1f}% of one core")
    lines.append(f"  flows all running at the end: {r['flows_alive']}; screenshot {r['screenshot']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shopstream.benchmarks.dashboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--skus", type=int, default=10_000)
    parser.add_argument("--alerts", type=int, default=500)
    parser.add_argument("--rate", type=float, default=300, help="double11 events per second, live")
    parser.add_argument("--seconds", type=float, default=60, help="measured time with every page open")
    parser.add_argument("--probes", type=int, default=20, help="alert probes and stock probes, each")
    parser.add_argument("--warmup", type=float, default=30, help="seconds of traffic before the pages open")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    report = run(Settings.from_env(), args.pages, args.skus, args.alerts, args.rate, args.seconds, args.probes,
                 args.warmup, args.chromium)
    print(format_report(report))


if __name__ == "__main__":
    main()
