"""What the dashboard shows, read from Redis through the contract's keys only.

One `BoardReader` serves every open page: the server polls once and pushes what
changed, so ten pages cost what one does. A poll is split by what it costs:

- every tick (`poll_s`): the latest funnel, KPI and experiment windows (one MGET),
  the KPI history, `alerts:active` with its acknowledgements and the last entries
  of `stream:alerts`, and `stream:coupons`;
- every `stock_poll_s`: the level of every known SKU, read by a Lua script per
  1,000 SKUs that returns the counts and only the SKUs that are not safe (reading
  10,000 hashes one by one costs the client 25 times more);
- walks of the keyspace (SCAN with a pattern, at most `scan_calls_per_tick` calls per
  tick, so the cost stays bounded however large Redis grows): new SKUs and series are
  found within seconds; customers by tier and risk and the fraud decisions of the
  last 24 h (`fraud:decision:*`, immutable: each is read once) every `census_s`.

Nothing here trusts a value: a key that does not parse is skipped, never an error.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from operators.traffic_kpi import clean_funnel, clean_kpi, window_starts
from state.serde import loads

STAGES = ("visit", "product_view", "add_to_cart", "checkout", "order", "payment")
DIMENSIONS = ("channel", "region", "device")
KPI_HISTORY_WINDOWS = 60
RECENT_ALERTS = 30
ACTIVE_LISTED = 200
RECENT_COUPONS = 10
RECOVERY_WINDOWS = 24  # coupon recovery windows summed on the page (a day of the default hourly windows)
FRAUD_MINUTES = 30
LATEST_BLOCKS = 8
SCAN_COUNT = 5000  # keys Redis looks at per SCAN call (about half a millisecond of its time)
STOCK_CHUNK = 1000
_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
_LEVEL_RANK = {"out": 0, "urgent": 1}

# Levels of a chunk of SKUs: counts per level, and the fields of the SKUs that need someone.
_STOCK_LEVELS = """
local counts = {}
local rows = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'level', 'available', 'reserved', 'presale_available',
                       'velocity_per_min', 'minutes_to_stockout', 'updated_ts')
  local level = v[1]
  if level then
    counts[level] = (counts[level] or 0) + 1
    if level == 'urgent' or level == 'out' then
      rows[#rows + 1] = {i, v[1], v[2], v[3], v[4], v[5], v[6], v[7]}
    end
  end
end
local flat = {}
for level, n in pairs(counts) do
  flat[#flat + 1] = level
  flat[#flat + 1] = n
end
return {flat, rows}
"""

# Customers of a batch of churn keys counted by tier and risk, inside Redis.
_CHURN_GRID = """
local counts = {}
for _, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'tier', 'risk')
  if v[1] or v[2] then
    local cell = (v[1] or '?') .. '\\n' .. (v[2] or '?')
    counts[cell] = (counts[cell] or 0) + 1
  end
end
local flat = {}
for cell, n in pairs(counts) do
  flat[#flat + 1] = cell
  flat[#flat + 1] = n
end
return flat
"""


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _number(value: bytes | str | None) -> float | None:
    try:
        number = float(_text(value))
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _json(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return loads(raw)
    except Exception:  # noqa: BLE001 - a value we cannot read is left out, never an error
        return None


@dataclass
class _Walk:
    """One SCAN pass over the keyspace for one pattern, spread over ticks."""

    pattern: str
    interval_s: float
    on_keys: Callable[[list[bytes]], None]
    on_done: Callable[[], None]
    cursor: int = 0
    active: bool = False
    next_start: float = 0.0
    passes: int = 0


@dataclass
class _ParsedCache:
    """Parsed JSON by key, re-parsed only when the raw bytes change."""

    entries: dict[str, tuple[bytes, Any]] = field(default_factory=dict)

    def get(self, key: str, raw: bytes | None) -> Any:
        if raw is None:
            self.entries.pop(key, None)
            return None
        cached = self.entries.get(key)
        if cached is not None and cached[0] == raw:
            return cached[1]
        value = _json(raw)
        self.entries[key] = (raw, value)
        return value


class BoardReader:
    def __init__(self, client, prefix: str, config, replenish_cover_min: float = 120.0):
        self._client = client
        self._prefix = prefix
        self._config = config
        self._cover_min = replenish_cover_min
        self._stock_script = client.register_script(_STOCK_LEVELS)
        self._churn_script = client.register_script(_CHURN_GRID)
        self._cache = _ParsedCache()
        self._series: set[str] = {"funnel:all:all", "funnel:all:all:rolling", "kpi:latest", "kpi:latest:rolling"}
        self._stock_keys: list[bytes] = []
        self._found_stock: list[bytes] = []
        self._found_series: set[str] = set()
        self._churn_counts: dict[str, int] = {}
        self._fraud_seen: dict[bytes, tuple] = {}  # key -> (ts, decision, detail of a block or None)
        self._fraud_known: dict[bytes, tuple] = {}
        self._next_stock = 0.0
        self._ticks = 0
        self.sections: dict[str, Any] = {
            "stock": {"counts": {}, "skus": 0, "hot": [], "hot_total": 0},
            "churn": {"customers": 0, "grid": {}, "complete": False},
            "fraud": {"per_minute": [], "totals": {}, "latest_blocks": [], "decisions": 0, "complete": False},
        }
        p = prefix
        self._walks = [
            _Walk(f"{p}stock:*", 1.0, self._found_stock.extend, self._stock_walked),
            # A new channel, region or experiment is rare after the first windows.
            _Walk(f"{p}funnel:*", 3.0, self._add_series, lambda: None),
            _Walk(f"{p}kpi:channel:*", 3.0, self._add_series, lambda: None),
            _Walk(f"{p}experiment:*", 3.0, self._add_series, lambda: None),
            _Walk(f"{p}churn:*", config.census_s, self._count_churn, self._churn_walked),
            _Walk(f"{p}fraud:decision:*", config.census_s, self._read_decisions, self._fraud_walked),
        ]

    # -- the tick -------------------------------------------------------------------------

    def poll(self, now: float | None = None, scan_budget: int | None = None) -> dict[str, Any]:
        """One tick; returns every section (unchanged ones as they were). Raises the
        client's errors (Redis down): the caller reports them and polls again."""
        now = time.monotonic() if now is None else now
        self._walk(now, self._config.scan_calls_per_tick if scan_budget is None else scan_budget)
        self._read_fast()
        if now >= self._next_stock:
            self._next_stock = now + self._config.stock_poll_s
            self._read_stock()
        return self.sections

    def _walk(self, now: float, budget: int) -> None:
        # Each tick starts at the next walk: a walk that restarts every second must
        # not take the whole budget from the census walks behind it.
        self._ticks += 1
        first = self._ticks % len(self._walks)
        for walk in self._walks[first:] + self._walks[:first]:
            if not walk.active and now >= walk.next_start:
                walk.active, walk.cursor = True, 0
            while walk.active and budget > 0:
                cursor, keys = self._client.scan(walk.cursor, match=walk.pattern, count=SCAN_COUNT)
                budget -= 1
                if keys:
                    walk.on_keys(keys)
                walk.cursor = int(cursor)
                if walk.cursor == 0:
                    walk.active, walk.next_start = False, now + walk.interval_s
                    walk.passes += 1
                    walk.on_done()

    def _add_series(self, keys: list[bytes]) -> None:
        cut = len(self._prefix)
        for key in keys:
            name = key.decode("utf-8", "replace")[cut:]
            if name.endswith(":order") or name.endswith(":history"):
                continue  # the ordering number and history that go with a latest key
            self._found_series.add(name)
        self._series |= self._found_series

    def _stock_walked(self) -> None:
        self._stock_keys = sorted(set(self._found_stock))
        self._found_stock.clear()

    # -- fast keys --------------------------------------------------------------------------

    def _read_fast(self) -> None:
        p = self._prefix
        series = sorted(self._series)
        pipe = self._client.pipeline(transaction=False)
        pipe.mget([p + s for s in series])
        pipe.zrange(f"{p}kpi:latest:history", -KPI_HISTORY_WINDOWS, -1)
        pipe.hgetall(f"{p}alerts:active")
        pipe.xrevrange(f"{p}stream:alerts", count=RECENT_ALERTS)
        pipe.xlen(f"{p}stream:coupons")
        pipe.xrevrange(f"{p}stream:coupons", count=RECENT_COUPONS)
        pipe.zrange(f"{p}coupons:recovery:latest:history", -RECOVERY_WINDOWS, -1)
        (latest_raw, history_raw, active_raw, alert_entries, coupons_issued, coupon_entries,
         recovery_raw) = pipe.execute()
        latest = {s: self._cache.get(s, raw) for s, raw in zip(series, latest_raw)}
        latest = {s: v for s, v in latest.items() if isinstance(v, dict)}
        self.sections["kpi"], self.sections["funnel"] = self._clean(self._kpi(latest, history_raw),
                                                                    self._funnel(latest))
        self.sections["experiments"] = [latest[s] for s in series if s.startswith("experiment:") and s in latest]
        self.sections["alerts"] = self._alerts(active_raw, alert_entries, latest.get("kpi:latest"))
        self.sections["coupons"] = self._coupons(coupons_issued, coupon_entries, recovery_raw)

    def _kpi(self, latest: dict[str, Any], history_raw: list[bytes]) -> dict[str, Any]:
        history = []
        for i, raw in enumerate(history_raw):
            window = self._cache.get(f"kpi:latest:history#{i}", raw)
            if isinstance(window, dict):
                history.append({k: window.get(k) for k in (
                    "window_end", "gmv", "orders", "paid_orders", "aov", "uv", "pv", "payment_success_rate")})
        channels = [v for s, v in sorted(latest.items()) if s.startswith("kpi:channel:") and not s.endswith(":rolling")]
        return {"latest": latest.get("kpi:latest"), "rolling": latest.get("kpi:latest:rolling"),
                "channels": channels, "history": history}

    def _clean(self, kpi: dict[str, Any], funnel: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Flagged traffic (`traffic:window:*`, the traffic flow) out of the shop's KPI figures
        and the overall funnel's stages and conversion: the dashboard shows clean figures,
        with the gross and flagged ones beside them. Channel, region and device windows stay
        gross (flags are not counted per channel)."""
        latest = kpi.get("latest")
        step = None
        for window in (latest, funnel.get("overall")):
            if (step is None and isinstance(window, dict) and type(window.get("window_start")) is int
                    and type(window.get("window_end")) is int):
                step = window["window_end"] - window["window_start"]
        windows = [w for w in (latest, kpi.get("rolling"), *kpi["history"], funnel.get("overall"),
                               funnel.get("rolling")) if isinstance(w, dict)]
        if not step or step <= 0 or not windows:
            return kpi, funnel
        for window in kpi["history"]:
            if "window_start" not in window and type(window.get("window_end")) is int:
                window["window_start"] = window["window_end"] - step
        starts = sorted({s for w in windows for s in window_starts(w, step)})
        raws = self._client.mget([f"{self._prefix}traffic:window:{s}" for s in starts]) if starts else []
        flagged = {}
        for start, raw in zip(starts, raws):
            value = _json(raw) if raw is not None else None  # not cached: a new key every window
            if isinstance(value, dict):
                flagged[start] = value
        def cleaned(window, clean=clean_kpi):
            if not isinstance(window, dict):
                return window
            return clean(window, [flagged[s] for s in window_starts(window, step) if s in flagged])
        return ({**kpi, "latest": cleaned(latest), "rolling": cleaned(kpi.get("rolling")),
                 "history": [cleaned(w) for w in kpi["history"]]},
                {**funnel, "overall": cleaned(funnel.get("overall"), clean_funnel),
                 "rolling": cleaned(funnel.get("rolling"), clean_funnel)})

    def _funnel(self, latest: dict[str, Any]) -> dict[str, Any]:
        by: dict[str, list] = {d: [] for d in DIMENSIONS}
        for name, window in sorted(latest.items()):
            if not name.startswith("funnel:") or name.endswith(":rolling"):
                continue
            dimension = window.get("dimension")
            if dimension in by:
                by[dimension].append(window)
        for windows in by.values():
            windows.sort(key=lambda w: -((w.get("stages") or {}).get("visit") or 0))
        return {"stages": list(STAGES), "overall": latest.get("funnel:all:all"),
                "rolling": latest.get("funnel:all:all:rolling"), "by": by}

    def _alerts(self, active_raw: dict, entries: list, kpi: dict | None) -> dict[str, Any]:
        active = []
        for field_name, raw in active_raw.items():
            alert = self._cache.get("alerts:active#" + _text(field_name), raw)
            if isinstance(alert, dict):
                active.append(dict(alert, dedup_key=alert.get("dedup_key") or _text(field_name)))
        self._cache.entries = {
            k: v for k, v in self._cache.entries.items()
            if not k.startswith("alerts:active#") or k[len("alerts:active#"):].encode() in active_raw
        }
        if active:
            acks = self._client.mget([f"{self._prefix}alerts:ack:{a['dedup_key']}" for a in active])
            for alert, ack in zip(active, acks):
                alert["acknowledged"] = ack is not None
        recent = []
        for entry_id, fields in entries:
            alert = _json(fields.get(b"alert"))
            if isinstance(alert, dict):
                recent.append(alert)
        # Ages on event time, the shop's clock: a replayed day shows the ages it had.
        clock = max([a.get("ts") for a in active + recent if isinstance(a.get("ts"), int)]
                    + ([kpi["window_end"]] if kpi and isinstance(kpi.get("window_end"), int) else []), default=None)
        for alert in active:
            first = alert.get("first_seen_ts")
            alert["age_ms"] = clock - first if clock is not None and isinstance(first, int) else None
        active.sort(key=lambda a: (_SEVERITY_RANK.get(a.get("severity"), 3), -(a.get("age_ms") or 0), str(a["dedup_key"])))
        by_severity: dict[str, int] = {}
        for alert in active:
            by_severity[str(alert.get("severity"))] = by_severity.get(str(alert.get("severity")), 0) + 1
        # The worst ACTIVE_LISTED are sent; every alert is counted. Each change of any
        # alert sends the list to every page again, so it is kept to what a person reads.
        return {"active": active[:ACTIVE_LISTED], "active_total": len(active), "by_severity": by_severity,
                "recent": recent, "clock": clock}

    def _coupons(self, issued: int, entries: list, recovery_raw: list[bytes]) -> dict[str, Any]:
        recent = []
        for _, fields in entries:
            coupon = _json(fields.get(b"coupon"))
            if isinstance(coupon, dict):
                recent.append(coupon)
        by_reason: dict[str, int] = {}
        for coupon in recent:
            by_reason[str(coupon.get("reason"))] = by_reason.get(str(coupon.get("reason")), 0) + 1
        windows = [w for i, raw in enumerate(recovery_raw)
                   if isinstance(w := self._cache.get(f"coupons:recovery#{i}", raw), dict)]
        recovery = None
        if windows:  # the abandoned-cart coupons of the last RECOVERY_WINDOWS windows
            issued_in, redeemed = sum(w.get("issued", 0) for w in windows), sum(w.get("redeemed", 0) for w in windows)
            recovery = {"since": windows[0].get("window_start"), "until": windows[-1].get("window_end"),
                        "issued": issued_in, "redeemed": redeemed,
                        "recovered_gmv": round(sum(w.get("recovered_gmv", 0.0) for w in windows), 2),
                        "recovery_rate": round(redeemed / issued_in, 4) if issued_in else None}
        return {"issued": issued, "recent": recent, "recent_by_reason": by_reason, "recovery": recovery}

    # -- stock ------------------------------------------------------------------------------

    def _read_stock(self) -> None:
        keys = self._stock_keys
        counts: dict[str, int] = {}
        hot = []
        cut = len(self._prefix) + len("stock:")
        # One script per chunk, each its own round trip: Redis serves other clients
        # (the payment service waiting on a fraud decision) in between.
        for start in range(0, len(keys), STOCK_CHUNK):
            chunk = keys[start:start + STOCK_CHUNK]
            flat, rows = self._stock_script(keys=chunk)
            for level, n in zip(flat[::2], flat[1::2]):
                counts[_text(level)] = counts.get(_text(level), 0) + int(n)
            for index, level, available, reserved, presale, velocity, minutes, updated in rows:
                hot.append(self._stock_row(chunk[int(index) - 1][cut:], level, available, reserved, presale,
                                           velocity, minutes, updated))
        hot.sort(key=lambda r: (_LEVEL_RANK.get(r["level"], 2),
                                r["minutes_to_stockout"] if r["minutes_to_stockout"] is not None else math.inf, r["sku"]))
        limit = self._config.stock_list_limit
        self.sections["stock"] = {"counts": counts, "skus": sum(counts.values()), "hot": hot[:limit],
                                  "hot_total": len(hot), "cover_minutes": self._cover_min}

    def _stock_row(self, sku, level, available, reserved, presale, velocity, minutes, updated) -> dict[str, Any]:
        available_n, velocity_n = _number(available), _number(velocity)
        replenish = None
        if velocity_n:
            # The stock flow's suggestion covers SHOPSTREAM_STOCK_REPLENISH_COVER_MIN at the
            # current velocity (its safety stock is not in the hash, so it is left out here).
            replenish = max(0, math.ceil(velocity_n * self._cover_min) - int(available_n or 0))
        return {
            "sku": _text(sku), "level": _text(level), "available": available_n, "reserved": _number(reserved),
            "presale_available": _number(presale), "velocity_per_min": velocity_n,
            "minutes_to_stockout": _number(minutes), "updated_ts": _number(updated), "replenish": replenish,
        }

    # -- customers --------------------------------------------------------------------------

    def _count_churn(self, keys: list[bytes]) -> None:
        flat = self._churn_script(keys=keys)
        for cell, n in zip(flat[::2], flat[1::2]):
            cell = _text(cell)
            self._churn_counts[cell] = self._churn_counts.get(cell, 0) + int(n)

    def _churn_walked(self) -> None:
        grid: dict[str, dict[str, int]] = {}
        for cell, n in self._churn_counts.items():
            tier, _, risk = cell.partition("\n")
            grid.setdefault(tier, {})[risk] = n
        self.sections["churn"] = {"customers": sum(self._churn_counts.values()), "grid": grid, "complete": True}
        self._churn_counts = {}

    # -- fraud ------------------------------------------------------------------------------

    def _read_decisions(self, keys: list[bytes]) -> None:
        new = [key for key in keys if key not in self._fraud_known and key not in self._fraud_seen]
        for key in keys:
            if key in self._fraud_known:
                self._fraud_seen[key] = self._fraud_known[key]
        if not new:
            return
        for key, raw in zip(new, self._client.mget(new)):
            decision = _json(raw)
            if not isinstance(decision, dict) or not isinstance(decision.get("ts"), int):
                continue
            verdict = str(decision.get("decision"))
            block = None
            if verdict == "block":
                block = {k: decision.get(k) for k in ("payment_id", "order_id", "user_id", "ts", "score", "reasons")}
            self._fraud_seen[key] = (decision["ts"], verdict, block)

    def _fraud_walked(self) -> None:
        # Keys gone since the last walk (24 h TTL) are forgotten with it.
        self._fraud_known, self._fraud_seen = self._fraud_seen, {}
        decisions = list(self._fraud_known.values())
        totals: dict[str, int] = {}
        newest = max((ts for ts, _, _ in decisions), default=None)
        minutes: dict[int, dict[str, int]] = {}
        for ts, verdict, _ in decisions:
            totals[verdict] = totals.get(verdict, 0) + 1
            if newest is not None and ts > newest - FRAUD_MINUTES * 60_000:
                bucket = minutes.setdefault(ts - ts % 60_000, {})
                bucket[verdict] = bucket.get(verdict, 0) + 1
        blocks = sorted((b for _, _, b in decisions if b is not None), key=lambda b: -b["ts"])[:LATEST_BLOCKS]
        self.sections["fraud"] = {
            "per_minute": [{"minute": m, **minutes[m]} for m in sorted(minutes)],
            "totals": totals, "latest_blocks": blocks, "decisions": len(decisions), "complete": True,
        }
