"""The dashboard's own settings, read from the environment (SHOPSTREAM_DASHBOARD_*)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Mapping

from shopstream.settings import ConfigError

LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class DashboardConfig:
    host: str = "127.0.0.1"
    port: int = 8050
    token: str = ""  # empty: no token; the page and acknowledging are open to whoever reaches the port
    poll_s: float = 0.25  # fast keys: KPIs, funnel, alerts, coupons, experiments
    stock_poll_s: float = 0.5  # every SKU's level (one Lua read per 1,000 SKUs)
    census_s: float = 5.0  # customers by tier and risk, fraud decisions: a full walk at most this often
    scan_calls_per_tick: int = 8  # SCAN calls (5,000 keys each) a tick may spend walking the keyspace
    stock_list_limit: int = 200  # urgent and out SKUs listed (all are counted)

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides) -> "DashboardConfig":
        def number(name: str, kind, default):
            raw = env.get(name, "")
            if raw == "":
                return default
            try:
                return kind(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a {kind.__name__}, got {raw!r}") from None

        values = {
            "host": env.get("SHOPSTREAM_DASHBOARD_HOST", "") or cls.host,
            "port": number("SHOPSTREAM_DASHBOARD_PORT", int, cls.port),
            "token": env.get("SHOPSTREAM_DASHBOARD_TOKEN", ""),
            "poll_s": number("SHOPSTREAM_DASHBOARD_POLL_S", float, cls.poll_s),
            "stock_poll_s": number("SHOPSTREAM_DASHBOARD_STOCK_POLL_S", float, cls.stock_poll_s),
            "census_s": number("SHOPSTREAM_DASHBOARD_CENSUS_S", float, cls.census_s),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        config.validate()
        return config

    @property
    def loopback(self) -> bool:
        if self.host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"SHOPSTREAM_DASHBOARD_PORT must be 0-65535, got {self.port}")
        for name, value in (("POLL_S", self.poll_s), ("STOCK_POLL_S", self.stock_poll_s), ("CENSUS_S", self.census_s)):
            if not 0.05 <= value <= 3600:
                raise ConfigError(f"SHOPSTREAM_DASHBOARD_{name} must be between 0.05 and 3600 seconds, got {value}")
        if self.token and len(self.token) < 12:
            raise ConfigError("SHOPSTREAM_DASHBOARD_TOKEN must be at least 12 characters")
        if not self.loopback and not self.token:
            # Anyone who reaches the port could acknowledge pages and read the shop's numbers.
            raise ConfigError(
                f"the dashboard binds to {self.host}, beyond loopback: set SHOPSTREAM_DASHBOARD_TOKEN first"
            )
