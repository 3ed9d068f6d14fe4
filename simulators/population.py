"""Shoppers: who visits, how often, from where, with which device and card.

The population is split into lifecycle groups (new, growing, mature, lapsing) with
their own visit rates; inside a group a heavy-tailed weight makes a few shoppers
very loyal. A lapsing group's rate halves every `lapse_half_life_days`, so over a
multi-day run recency, frequency and spend drift apart. Shoppers are materialised
lazily on their first visit (a million-shopper population costs one list of
weights per group, not a million objects).
"""

from __future__ import annotations

from bisect import bisect
from itertools import accumulate
from random import Random

from simulators.catalog import Catalog
from simulators.profile import ShopProfile
from simulators.timeline import DAY

REGIONS = (
    ("guangdong", 0.12), ("zhejiang", 0.08), ("jiangsu", 0.08), ("shandong", 0.07),
    ("shanghai", 0.06), ("beijing", 0.06), ("sichuan", 0.06), ("henan", 0.06),
    ("hubei", 0.05), ("fujian", 0.05), ("hunan", 0.04), ("hebei", 0.04), ("anhui", 0.04),
    ("shaanxi", 0.03), ("liaoning", 0.03), ("chongqing", 0.03), ("yunnan", 0.02),
    ("guangxi", 0.02), ("tianjin", 0.02), ("jiangxi", 0.02),
)
# First octets of consumer broadband and mobile ranges in China.
_CN_IP_PREFIXES = (36, 39, 42, 58, 59, 60, 61, 101, 110, 112, 113, 114, 115, 116, 117, 118,
                   119, 120, 121, 122, 123, 124, 125, 171, 175, 180, 182, 183, 202, 211, 218,
                   219, 220, 221, 222, 223)
CN_CARD_BINS = ("622848", "621700", "622588", "622202", "436742", "518710", "625907", "628288")
OVERSEAS = ("HK", "SG", "US", "JP", "GB", "AU", "MY")
_PHONE_OS = (("ios", 0.4), ("android", 0.6))
_WEB_DEVICES = (("desktop", 0.6), ("mobile_web", 0.4))

# Lifecycle group -> (account age range in days, prior orders range, days since last order range).
_HISTORY = {
    "new": ((0, 30), (0, 1), (0, 20)),
    "growing": ((30, 365), (2, 8), (1, 30)),
    "mature": ((365, 2900), (8, 80), (0, 20)),
    "lapsing": ((200, 2900), (5, 40), (40, 120)),
}
_SEGMENT_AOV = {"price_sensitive": 120.0, "quality": 500.0, "impulse": 200.0}  # PLAYBOOK: quality 500


def weighted(pairs, r: float):
    """The value at cumulative probability `r` in ((value, weight), ...)."""
    total = sum(w for _, w in pairs)
    acc = 0.0
    for value, weight in pairs:
        acc += weight / total
        if r < acc:
            return value
    return pairs[-1][0]


def random_ip(rng: Random, prefixes=_CN_IP_PREFIXES) -> str:
    return (f"{prefixes[int(rng.random() * len(prefixes))]}.{int(rng.random() * 256)}."
            f"{int(rng.random() * 256)}.{1 + int(rng.random() * 254)}")


def random_device_id(rng: Random) -> str:
    return "dev-%012x" % rng.getrandbits(48)


def random_card(rng: Random, bins=CN_CARD_BINS) -> tuple[str, str, str]:
    """(fingerprint, BIN, last 4): never a full card number."""
    return ("fp-%016x" % rng.getrandbits(64), bins[int(rng.random() * len(bins))],
            "%04d" % int(rng.random() * 10000))


class Shopper:
    __slots__ = ("user_id", "key", "group", "segment", "region", "channel", "phone_os", "web_device",
                 "ip", "device_id", "method", "card", "country", "billing_country",
                 "account_created_ts", "prior_orders", "prior_spend", "last_order_ts",
                 "affinity", "intent", "variant", "busy_until")

    def device_for(self, channel: str) -> str:
        return self.web_device if channel == "web" else self.phone_os


class Population:
    def __init__(self, size: int, profile: ShopProfile, rng: Random, catalog: Catalog,
                 start_ms: int, run_tag: str):
        self._profile = profile
        self._catalog = catalog
        self._start_ms = start_ms
        self._run_tag = run_tag
        self._registered = 0
        self._shoppers: dict[int, Shopper] = {}
        rates = {"new": profile.visits_per_day_new, "growing": profile.visits_per_day_growing,
                 "mature": profile.visits_per_day_mature, "lapsing": profile.visits_per_day_lapsing}
        intents = {"new": profile.intent_new, "growing": profile.intent_growing,
                   "mature": profile.intent_mature, "lapsing": profile.intent_lapsing}
        self.groups: list[str] = []
        self._first_index: list[int] = []
        self._cum_weights: list[list[float]] = []
        self._visits_per_day: list[float] = []  # group total at the start
        self._decays: list[bool] = []
        first = 0
        total_share = sum(share for _, share in profile.lifecycle_mix)
        for position, (group, share) in enumerate(profile.lifecycle_mix):
            last = position == len(profile.lifecycle_mix) - 1
            count = size - first if last else round(size * share / total_share)
            # Heavy tail (Pareto, alpha 2, capped): a few shoppers visit far more often.
            weights = [min(20.0, (1.0 - rng.random()) ** -0.5) / 2.0 for _ in range(count)]
            if count == 0:
                continue
            self.groups.append(group)
            self._first_index.append(first)
            self._cum_weights.append(list(accumulate(weights)))
            self._visits_per_day.append(rates[group] * count)
            self._decays.append(group == "lapsing")
            first += count
        self.size = size
        visits = sum(self._visits_per_day)
        # Normalise intent so an average visit has intent 1 and conversion stays on profile.
        mean_intent = sum(
            intents[g] * v for g, v in zip(self.groups, self._visits_per_day)
        ) / visits if visits else 1.0
        self._intent = {g: intents[g] / mean_intent for g in intents}
        self._lapse_per_ms = 0.5 ** (1.0 / (profile.lapse_half_life_days * DAY))

    # -- traffic -----------------------------------------------------------------
    def visits_per_day(self, ts: int) -> list[float]:
        decay = self._lapse_per_ms ** max(0, ts - self._start_ms)
        return [v * decay if d else v for v, d in zip(self._visits_per_day, self._decays)]

    def sessions_per_day(self, ts: int) -> float:
        return sum(self.visits_per_day(ts))

    def pick(self, rng: Random, ts: int, group_rates: list[float], total: float) -> Shopper | None:
        """A shopper who is not in another session right now, or None if the draws were busy."""
        for _ in range(4):
            r = rng.random() * total
            group = 0
            while group < len(group_rates) - 1 and r >= group_rates[group]:
                r -= group_rates[group]
                group += 1
            cum = self._cum_weights[group]
            index = self._first_index[group] + min(bisect(cum, rng.random() * cum[-1]), len(cum) - 1)
            shopper = self._shoppers.get(index)
            if shopper is None:
                shopper = self._shoppers[index] = self._materialise(rng, index, self.groups[group], ts)
            if shopper.busy_until <= ts:
                return shopper
        return None

    def pick_mature(self, rng: Random, ts: int) -> Shopper | None:
        """A known customer with history: the kind whose account gets taken over."""
        if "mature" not in self.groups:
            return None
        group = self.groups.index("mature")
        cum = self._cum_weights[group]
        index = self._first_index[group] + int(rng.random() * len(cum))
        shopper = self._shoppers.get(index)
        if shopper is None:
            shopper = self._shoppers[index] = self._materialise(rng, index, "mature", ts)
        return shopper if shopper.busy_until <= ts else None

    def is_new(self, shopper: Shopper) -> bool:
        """True the first time a lapsing shopper is seen: when truth records them."""
        return shopper.busy_until == 0

    # -- shoppers ------------------------------------------------------------------
    def register(self, rng: Random, ts: int) -> Shopper:
        """A brand-new account, created minutes before this visit."""
        self._registered += 1
        shopper = self._materialise(rng, -1, "new", ts, user_id=f"u{self._run_tag}-{self._registered}")
        shopper.account_created_ts = ts - int((2 + rng.random() * 60) * 60_000)
        shopper.prior_orders, shopper.prior_spend, shopper.last_order_ts = 0, 0.0, None
        return shopper

    def _materialise(self, rng: Random, index: int, group: str, ts: int, user_id: str | None = None) -> Shopper:
        p = self._profile
        s = Shopper()
        s.user_id = user_id or f"u{index:07d}"
        s.key = s.user_id.encode()
        s.group = group
        s.segment = weighted(p.segment_mix, rng.random())
        s.region = weighted(REGIONS, rng.random())
        s.channel = weighted(p.channel_mix, rng.random())
        s.phone_os = weighted(_PHONE_OS, rng.random())
        s.web_device = weighted(_WEB_DEVICES, rng.random())
        s.ip = random_ip(rng)
        s.device_id = random_device_id(rng)
        s.method = weighted(p.method_mix, rng.random())
        s.card = random_card(rng) if s.method == "card" else None
        if rng.random() < p.overseas_shopper_share:
            s.country = OVERSEAS[int(rng.random() * len(OVERSEAS))]
            s.billing_country = "CN" if rng.random() < 0.5 else s.country
        else:
            s.country = s.billing_country = "CN"
        (age_lo, age_hi), (orders_lo, orders_hi), (since_lo, since_hi) = _HISTORY[group]
        s.account_created_ts = self._start_ms - int((age_lo + rng.random() * (age_hi - age_lo)) * DAY)
        s.prior_orders = orders_lo + int(rng.random() * (orders_hi - orders_lo + 1))
        s.prior_spend = round(s.prior_orders * _SEGMENT_AOV[s.segment] * (0.5 + rng.random()), 2)
        since = since_lo + rng.random() * (since_hi - since_lo)
        s.last_order_ts = self._start_ms - int(since * DAY) if s.prior_orders else None
        s.affinity = (self._catalog.pick_category(s.segment, rng.random()),
                      self._catalog.pick_category(s.segment, rng.random()))
        s.intent = self._intent[group]
        s.variant = None
        if rng.random() < p.experiment_share:
            s.variant = "treatment" if rng.random() < 0.5 else "control"
        s.busy_until = 0
        return s

    @property
    def lapse_half_life_days(self) -> float:
        return self._profile.lapse_half_life_days
