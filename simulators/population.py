"""Shoppers: who visits, how often, from where, with which device and card.

The population is split into lifecycle groups (new, growing, mature, lapsing) with
their own visit rates; inside a group a heavy-tailed weight makes a few shoppers
very loyal. A lapsing group's rate halves every `lapse_half_life_days`, so over a
multi-day run recency, frequency and spend drift apart. Shoppers are materialised
lazily on their first visit, and their payment account on their first payment, so
a million-shopper population costs nothing until people show up.
"""

from __future__ import annotations

import math
from random import Random

from simulators.catalog import Catalog
from simulators.draws import Choice
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


def random_ip(rng: Random, prefixes=_CN_IP_PREFIXES) -> str:
    bits = rng.getrandbits(24)
    return f"{prefixes[int(rng.random() * len(prefixes))]}.{bits >> 16}.{(bits >> 8) & 255}.{(bits & 255) or 1}"


def random_device_id(rng: Random) -> str:
    return "dev-%012x" % rng.getrandbits(48)


def random_card(rng: Random, bins=CN_CARD_BINS) -> tuple[str, str, str]:
    """(fingerprint, BIN, last 4): never a full card number."""
    return ("fp-%016x" % rng.getrandbits(64), bins[int(rng.random() * len(bins))],
            "%04d" % int(rng.random() * 10000))


class Account:
    """How a shopper pays and their history; drawn on first need (few visits reach payment)."""

    __slots__ = ("device_id", "method", "card", "country", "billing_country", "created_ts",
                 "prior_orders", "prior_spend", "last_order_ts")


class Shopper:
    __slots__ = ("index", "user_id", "key", "group", "segment", "region", "channel", "phone_os",
                 "web_device", "ip", "affinity", "intent", "variant", "busy_until", "account")

    def device_for(self, channel: str) -> str:
        return self.web_device if channel == "web" else self.phone_os


# Visit weight inside a group: a capped Pareto (alpha 2) over the members, so the
# most loyal shopper visits ~10x as often as the average one.
_WEIGHT_CAP = 20.0
_WEIGHT_MASS = 2.0 - 1.0 / _WEIGHT_CAP


def _loyalty_position(u: float) -> float:
    """Inverse CDF of the weight min(cap, x^-1/2) over x in [0, 1): where draw `u` lands."""
    m = u * _WEIGHT_MASS
    if m < 1.0 / _WEIGHT_CAP:
        return m / _WEIGHT_CAP
    root = (m + 1.0 / _WEIGHT_CAP) / 2.0
    return root * root


class Population:
    def __init__(self, size: int, profile: ShopProfile, rng: Random, catalog: Catalog,
                 start_ms: int, run_tag: str):
        """`rng` draws the population's fixed layout and, later, accounts as they are needed."""
        self._profile = profile
        self._catalog = catalog
        self._start_ms = start_ms
        self._run_tag = run_tag
        self._rng = rng
        self._registered = 0
        self._shoppers: dict[int, Shopper] = {}
        # Lapsing shoppers seen for the first time, for ground truth; the caller drains it.
        self.newly_seen_lapsing: list[Shopper] = []
        rates = {"new": profile.visits_per_day_new, "growing": profile.visits_per_day_growing,
                 "mature": profile.visits_per_day_mature, "lapsing": profile.visits_per_day_lapsing}
        intents = {"new": profile.intent_new, "growing": profile.intent_growing,
                   "mature": profile.intent_mature, "lapsing": profile.intent_lapsing}
        self.groups: list[str] = []
        self._first_index: list[int] = []
        self._sizes: list[int] = []
        self._strides: list[int] = []  # spreads loyalty ranks over user ids
        self._visits_per_day: list[float] = []  # group total at the start
        self._decays: list[bool] = []
        first = 0
        total_share = sum(share for _, share in profile.lifecycle_mix)
        for position, (group, share) in enumerate(profile.lifecycle_mix):
            last = position == len(profile.lifecycle_mix) - 1
            count = size - first if last else round(size * share / total_share)
            if count <= 0:
                continue
            stride = 1_000_003 + int(rng.random() * 1000)
            while math.gcd(stride, count) != 1:
                stride += 1
            self.groups.append(group)
            self._first_index.append(first)
            self._sizes.append(count)
            self._strides.append(stride)
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
        self._segment = Choice(profile.segment_mix)
        self._region = Choice(REGIONS)
        self._channel = Choice(profile.channel_mix)
        self._phone_os = Choice(_PHONE_OS)
        self._web_device = Choice(_WEB_DEVICES)
        self._method = Choice(profile.method_mix)

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
            count = self._sizes[group]
            index = self._first_index[group] + int(_loyalty_position(rng.random()) * count) \
                * self._strides[group] % count
            shopper = self._shoppers.get(index)
            if shopper is None:
                shopper = self._shoppers[index] = self._materialise(rng, index, self.groups[group])
            if shopper.busy_until <= ts:
                return shopper
        return None

    def pick_mature(self, rng: Random, ts: int) -> Shopper | None:
        """A known customer with history: the kind whose account gets taken over."""
        if "mature" not in self.groups:
            return None
        group = self.groups.index("mature")
        count = self._sizes[group]
        index = self._first_index[group] + int(rng.random() * count)
        shopper = self._shoppers.get(index)
        if shopper is None:
            shopper = self._shoppers[index] = self._materialise(rng, index, "mature")
        return shopper if shopper.busy_until <= ts else None

    # -- shoppers ------------------------------------------------------------------
    def register(self, rng: Random, ts: int) -> Shopper:
        """A brand-new account, created minutes before this visit."""
        self._registered += 1
        shopper = self._materialise(rng, -1, "new", user_id=f"u{self._run_tag}-{self._registered}")
        account = self.account(shopper)
        account.created_ts = max(0, ts - int((2 + rng.random() * 60) * 60_000))
        account.prior_orders, account.prior_spend, account.last_order_ts = 0, 0.0, None
        return shopper

    def _materialise(self, rng: Random, index: int, group: str, user_id: str | None = None) -> Shopper:
        p = self._profile
        r = rng.random
        s = Shopper()
        s.index = index
        s.user_id = user_id or f"u{index:07d}"
        s.key = s.user_id.encode()
        s.group = group
        s.segment = self._segment(r())
        s.region = self._region(r())
        s.channel = self._channel(r())
        s.phone_os = self._phone_os(r())
        s.web_device = self._web_device(r())
        s.ip = random_ip(rng)
        pick_category = self._catalog.pick_category
        s.affinity = (pick_category(s.segment, r()), pick_category(s.segment, r()))
        s.intent = self._intent[group]
        s.variant = None
        if r() < p.experiment_share:
            s.variant = "treatment" if r() < 0.5 else "control"
        s.busy_until = 0
        s.account = None
        if group == "lapsing":
            self.newly_seen_lapsing.append(s)
        return s

    def account(self, shopper: Shopper) -> Account:
        """The shopper's payment identity and purchase history, drawn the first time it is needed."""
        account = shopper.account
        if account is not None:
            return account
        p, rng = self._profile, self._rng
        r = rng.random
        a = shopper.account = Account()
        a.device_id = random_device_id(rng)
        a.method = self._method(r())
        a.card = random_card(rng) if a.method == "card" else None
        if r() < p.overseas_shopper_share:
            a.country = OVERSEAS[int(r() * len(OVERSEAS))]
            a.billing_country = "CN" if r() < 0.5 else a.country
        else:
            a.country = a.billing_country = "CN"
        (age_lo, age_hi), (orders_lo, orders_hi), (since_lo, since_hi) = _HISTORY[shopper.group]
        a.created_ts = max(0, self._start_ms - int((age_lo + r() * (age_hi - age_lo)) * DAY))
        a.prior_orders = orders_lo + int(r() * (orders_hi - orders_lo + 1))
        a.prior_spend = round(a.prior_orders * _SEGMENT_AOV[shopper.segment] * (0.5 + r()), 2)
        since = since_lo + r() * (since_hi - since_lo)
        a.last_order_ts = max(a.created_ts, self._start_ms - int(since * DAY)) if a.prior_orders else None
        return a
