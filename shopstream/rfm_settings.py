"""The RFM rules from the settings, apart from the churn flow: the churn flow scores with
them and the coupons flow tiers abandoned carts with them, and importing the churn flow
would load its model libraries (river, pandas) into the coupons process."""

from __future__ import annotations

from operators.rfm import DAY_MS, RfmRules
from shopstream.settings import ConfigError, Settings


def number_list(env: str, text: str, kind: type, count: int | None = None) -> tuple:
    """A comma-separated setting as numbers of `kind` (exactly `count` of them when given)."""
    try:
        values = tuple(kind(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{env} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if count is not None and len(values) != count:
        raise ConfigError(f"{env} needs {count} values, got {text!r}")
    if any(value < 0 for value in values):
        raise ConfigError(f"{env} values must not be negative, got {text!r}")
    return values


def rfm_rules_from_settings(s: Settings) -> RfmRules:
    """RFM horizons and value-tier thresholds; the churn flow scores with them and the
    coupons flow tiers abandoned carts with them, so both give a shopper the same tier."""
    horizons = number_list("SHOPSTREAM_CHURN_RFM_HORIZONS_DAYS", s.churn_rfm_horizons_days, int)
    monetary = number_list("SHOPSTREAM_CHURN_TIER_MONETARY", s.churn_tier_monetary, float, 3)
    orders = number_list("SHOPSTREAM_CHURN_TIER_ORDERS", s.churn_tier_orders, int, 3)
    if list(horizons) != sorted(set(horizons)) or horizons[0] < s.churn_slot_days:
        raise ConfigError("SHOPSTREAM_CHURN_RFM_HORIZONS_DAYS must be distinct ascending days, each at least "
                          f"SHOPSTREAM_CHURN_SLOT_DAYS ({s.churn_slot_days}), got {s.churn_rfm_horizons_days!r}")
    if s.churn_activity_days < s.churn_slot_days:
        raise ConfigError(f"SHOPSTREAM_CHURN_ACTIVITY_DAYS must be at least SHOPSTREAM_CHURN_SLOT_DAYS, "
                          f"got {s.churn_activity_days}")
    if list(monetary) != sorted(monetary, reverse=True):
        raise ConfigError(f"SHOPSTREAM_CHURN_TIER_MONETARY must not increase from diamond to silver, "
                          f"got {s.churn_tier_monetary!r}")
    if list(orders) != sorted(orders, reverse=True):
        raise ConfigError(f"SHOPSTREAM_CHURN_TIER_ORDERS must not increase from diamond to silver, "
                          f"got {s.churn_tier_orders!r}")
    return RfmRules(
        horizons_ms=tuple(days * DAY_MS for days in horizons),
        slot_ms=s.churn_slot_days * DAY_MS,
        activity_ms=s.churn_activity_days * DAY_MS,
        tier_monetary=monetary,
        tier_orders=orders,
    )
