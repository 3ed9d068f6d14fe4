"""Event-time helpers: units, parsing `2h`/`1d`/ISO times, and the daily traffic curve."""

from __future__ import annotations

import re
from datetime import datetime, timezone

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

_UNITS = {"ms": 1, "s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY, "w": 7 * DAY}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> int:
    """`30m`, `2h`, `1d12h`, `90s`, or plain seconds -> milliseconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return int(float(text) * SECOND)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 2h, 1d, 1d12h)")
    total = sum(int(float(n) * _UNITS[u]) for n, u in parts)
    if total <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return total


def parse_start(text: str) -> int | None:
    """ISO 8601 time (UTC when no offset is given) or epoch ms -> ms; `now` -> None."""
    text = text.strip()
    if text.lower() == "now":
        return None
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a start time: {text!r} (use ISO 8601, e.g. 2024-11-10T20:00+08:00, or now)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


# Relative activity per local hour. The evening (18-24h) is scaled to the
# profile's evening share; the shape inside each part follows a typical
# Chinese shopping day (lunch bump, late-night tail, 3-5 a.m. trough).
_DAY_SHAPE = (5.0, 2.5, 1.2, 0.8, 0.7, 0.9, 1.8, 3.0, 3.8, 4.2, 4.5, 4.8,
              5.5, 5.0, 4.4, 4.3, 4.5, 5.0)  # 00:00-17:59
_EVENING_SHAPE = (8.0, 10.0, 12.0, 13.0, 12.0, 9.0)  # 18:00-23:59


class DailyCurve:
    """Traffic weight per local minute of the day, mean 1 over a day."""

    def __init__(self, evening_share: float, utc_offset_h: int):
        day_total, evening_total = sum(_DAY_SHAPE), sum(_EVENING_SHAPE)
        hourly = [v * (1 - evening_share) / day_total for v in _DAY_SHAPE]
        hourly += [v * evening_share / evening_total for v in _EVENING_SHAPE]
        # Interpolate between hour midpoints so traffic has no hourly steps.
        minutes = []
        for minute in range(1440):
            position = minute / 60 - 0.5
            low = int(position // 1)
            frac = position - low
            minutes.append(hourly[low % 24] * (1 - frac) + hourly[(low + 1) % 24] * frac)
        # Interpolation leaks a little across 18:00 and midnight: restore the shares.
        evening = sum(minutes[18 * 60 :])
        day = sum(minutes[: 18 * 60])
        for minute in range(1440):
            part = evening_share / evening if minute >= 18 * 60 else (1 - evening_share) / day
            minutes[minute] *= part * 1440
        self._weights = minutes
        self._offset_ms = utc_offset_h * HOUR

    def weight(self, ts: int) -> float:
        return self._weights[((ts + self._offset_ms) % DAY) // MINUTE]

    def next_local_midnight(self, ts: int) -> int:
        local = ts + self._offset_ms
        return local - local % DAY + DAY - self._offset_ms
