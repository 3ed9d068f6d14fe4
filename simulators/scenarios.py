"""Scenarios: what makes a day unusual, planned up front and recorded as incidents.

Every scenario is a modifier on the normal shop; `normal` alone modifies nothing,
and any mix works (`double11,payment_outage`). Each scenario draws its timing from
its own seeded stream, so adding one does not move another's window. Windows are
placed inside the run (roughly its middle third) and clamped to its length.

- `double11`: traffic ramps from 1x at the start to 10x at the first local midnight
  in the run (or its middle), spikes to 30x there and settles back to 10x within ~20 min.
- `flash_sale`: a few hot SKUs at half price with a small allocation (a `set`), and a
  crowd of shoppers arriving at the start; the allocation runs out within minutes.
- `card_testing`: bursts of small payments from one device and IP across many cards.
- `payment_outage`: the payment failure rate jumps for a few minutes.
- `traffic_drop`: one channel goes dark (no clicks at all) for 10-20 minutes.
- `brushing`: rings of 20-200 accounts place scripted fake orders for a few SKUs
  (`simulators.traffic_fraud`), among ordinary crowds behind shared NAT addresses.
- `click_farm`: farm accounts open scripted sessions on a campaign's SKUs without ordering,
  among the same shared-address crowds.
- `price_war`: the `prices` topic beside the shop: our prices and rivals' crawled prices for
  the best sellers, with undercuts at known times, a promotion wave and crawler noise
  (`simulators.prices`, on a random stream of its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from random import Random

from simulators.catalog import Catalog, Sku
from simulators.draws import poisson
from simulators.population import random_card, random_device_id, random_ip
from simulators.profile import ShopProfile
from simulators.timeline import DAY, MINUTE, SECOND, DailyCurve
from simulators.traffic_fraud import Ring, SharedAddresses, plan_rings, shared_addresses, shared_addresses_incident
from simulators.truth import Incident

SCENARIOS = ("normal", "double11", "flash_sale", "card_testing", "payment_outage", "traffic_drop", "brushing",
             "click_farm", "price_war")
TRAFFIC_FRAUD = frozenset({"brushing", "click_farm"})

DOUBLE11_PLATEAU = 10.0  # PLAYBOOK: plan for 5x-10x normal traffic
DOUBLE11_SPIKE = 2.0  # the midnight rush on top of the plateau: 30x at 00:00
DOUBLE11_SPIKE_DECAY_MS = 8 * MINUTE
FLASH_CROWD_DECAY_MS = 4 * MINUTE
# First octets of hosting ranges: where card-testing bots and proxies live.
DATACENTER_IP_PREFIXES = (5, 23, 45, 64, 103, 104, 107, 139, 154, 185, 193, 194)
FOREIGN_CARD_BINS = ("414720", "426684", "532610", "545454", "601100", "371449", "400022", "510510")
FOREIGN_COUNTRIES = ("US", "GB", "BR", "NG", "RU", "ID", "VN", "UA", "PH")


class UnknownScenario(ValueError):
    pass


@dataclass(frozen=True)
class FlashSale:
    start: int
    end: int
    skus: tuple[Sku, ...]
    prices: tuple[float, ...]
    allocations: tuple[int, ...]
    cum_weights: tuple[float, ...]
    peak_visits_per_min: float

    def visits_per_min(self, ts: int) -> float:
        if not self.start <= ts < self.end:
            return 0.0
        return self.peak_visits_per_min * math.exp(-(ts - self.start) / FLASH_CROWD_DECAY_MS)


@dataclass(frozen=True)
class Burst:
    """One card-testing run: one bot (device + IP) trying many cards, seconds apart."""

    burst_id: str
    start: int
    attempt_ts: tuple[int, ...]
    device_id: str
    ip: str
    country: str
    card_bins: tuple[str, ...]
    accounts: int
    cards: tuple[tuple[str, str, str], ...]  # one (fingerprint, BIN, last4) per attempt

    @property
    def end(self) -> int:
        """After the last attempt's payment has been answered."""
        return self.attempt_ts[-1] + 5 * SECOND


def parse_scenarios(specs) -> tuple[str, ...]:
    """`["double11", "flash_sale,card_testing"]` -> sorted unique names; unknown names raise.
    `normal` is what every scenario builds on, so it is dropped from a mix."""
    names: set[str] = set()
    for spec in specs or ("normal",):
        for name in str(spec).split(","):
            name = name.strip().lower().replace("-", "_")
            if not name:
                continue
            if name not in SCENARIOS:
                raise UnknownScenario(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
            names.add(name)
    if len(names) > 1:
        names.discard("normal")
    return tuple(sorted(names or {"normal"}))


class ScenarioPlan:
    def __init__(self, names: tuple[str, ...], *, seed: int | str, start: int, end: int, tag: str,
                 profile: ShopProfile, catalog: Catalog, curve: DailyCurve, visits_per_min_at):
        """`visits_per_min_at(ts)`: normal traffic, for sizing flash crowds to the shop."""
        self.names = names
        self.start, self.end = start, end
        span = end - start
        self.incidents: list[Incident] = []
        self.flash_sales: list[FlashSale] = []
        self.bursts: list[Burst] = []
        self._outages: list[tuple[int, int]] = []
        self._outage_rate = profile.outage_failure_rate
        self._base_failure_rate = profile.payment_failure_rate
        self._dark: dict[str, list[tuple[int, int]]] = {}
        self._peak: int | None = None
        # Traffic fraud: rings and farms, and ordinary crowds behind shared addresses.
        self.rings: list[Ring] = []
        self.addresses: SharedAddresses | None = None

        def rng_for(name: str) -> Random:
            return Random(f"{seed}:scenario:{name}")

        def window(rng: Random, lo: float, hi: float, length_ms: int, max_share: float) -> tuple[int, int]:
            length = min(length_ms, int(span * max_share))
            first = start + int(span * (lo + rng.random() * (hi - lo)))
            first = max(start, first - first % SECOND)  # on a whole second, inside the run
            return first, min(end, first + max(SECOND, length))

        if "double11" in names:
            midnight = curve.next_local_midnight(start - 1)  # a run starting at midnight peaks at once
            self._peak = midnight if midnight < end else start + span // 2
            self.incidents.append(Incident(
                ts=self._peak, name="double11", start_ts=self._peak,
                end_ts=min(end, self._peak + 30 * MINUTE),
                detail={"ramp_start_ts": start, "plateau_multiplier": DOUBLE11_PLATEAU,
                        "peak_multiplier": DOUBLE11_PLATEAU * (1 + DOUBLE11_SPIKE)},
            ))
        if "payment_outage" in names:
            rng = rng_for("payment_outage")
            first, last = window(rng, 0.25, 0.6, int((5 + rng.random() * 5) * MINUTE), 0.2)
            self._outages.append((first, last))
            self.incidents.append(Incident(ts=first, name="payment_outage", start_ts=first, end_ts=last,
                                           detail={"failure_rate": profile.outage_failure_rate}))
        if "traffic_drop" in names:
            rng = rng_for("traffic_drop")
            first, last = window(rng, 0.25, 0.6, int((10 + rng.random() * 10) * MINUTE), 0.25)
            channels = [c for c, _ in profile.channel_mix]
            weights = [w for _, w in profile.channel_mix]
            channel = rng.choices(channels, weights)[0]
            self._dark.setdefault(channel, []).append((first, last))
            self.incidents.append(Incident(ts=first, name="traffic_drop", start_ts=first, end_ts=last,
                                           detail={"channel": channel}))
        if "flash_sale" in names:
            rng = rng_for("flash_sale")
            first, last = window(rng, 0.25, 0.6, 15 * MINUTE, 0.25)
            first = max(start, first - first % MINUTE)
            last = max(last, first + MINUTE)
            self.flash_sales.append(self._flash_sale(rng, first, min(end, last), catalog, visits_per_min_at))
            sale = self.flash_sales[-1]
            self.incidents.append(Incident(
                ts=first, name="flash_sale", start_ts=first, end_ts=sale.end,
                detail={"skus": [s.id for s in sale.skus], "allocations": list(sale.allocations),
                        "prices": list(sale.prices)},
            ))
        if "card_testing" in names:
            rng = rng_for("card_testing")
            first, _ = window(rng, 0.2, 0.5, 0, 0.0)
            count = 3 + int(rng.random() * 4)
            spread = min(20 * MINUTE, span // 4)
            starts = sorted(first + int(rng.random() * spread) for _ in range(count))
            bursts = [self._burst(rng, f"{tag}-ct{i}", ts, end) for i, ts in enumerate(starts)]
            bursts = [b for b in bursts if b.attempt_ts]
            self.bursts.extend(bursts)
            if bursts:
                self.incidents.append(Incident(
                    ts=bursts[0].start, name="card_testing", start_ts=bursts[0].start,
                    end_ts=min(end, max(b.end for b in bursts)),
                    detail={"bursts": [{"burst_id": b.burst_id, "device_id": b.device_id, "ip": b.ip,
                                        "start_ts": b.start, "end_ts": b.end, "attempts": len(b.attempt_ts)}
                                       for b in bursts]},
                ))
        if TRAFFIC_FRAUD & set(names):
            rng = rng_for("traffic_fraud")
            self.addresses = shared_addresses(rng, tag)
            self.incidents.append(shared_addresses_incident(start, end, self.addresses))
            self.rings = plan_rings(rng, names, start, end, tag, catalog, self.addresses)
            for ring in self.rings:
                self.incidents.append(Incident(
                    ts=ring.start, name=ring.kind, start_ts=ring.start, end_ts=ring.end,
                    detail={"ring_id": ring.ring_id, "size": ring.size, "skus": [s.id for s in ring.skus],
                            "devices": len(ring.devices), "ips": list(ring.ips)},
                ))
        self.has_dark_channels = bool(self._dark)
        # Card testing also happens on ordinary days, now and then (not an incident).
        rng = rng_for("background")
        expected = profile.card_testing_bursts_per_day * span / DAY
        background = poisson(rng, expected)
        for i in range(background):
            ts = start + int(rng.random() * span)
            burst = self._burst(rng, f"{tag}-bg{i}", ts, end)
            if burst.attempt_ts:
                self.bursts.append(burst)
        self.bursts.sort(key=lambda b: b.start)

    # -- what the generators ask ----------------------------------------------------
    def traffic_multiplier(self, ts: int) -> float:
        if self._peak is None:
            return 1.0
        if ts < self._peak:
            progress = (ts - self.start) / (self._peak - self.start)
            return 1.0 + (DOUBLE11_PLATEAU - 1.0) * progress * progress
        return DOUBLE11_PLATEAU * (1.0 + DOUBLE11_SPIKE * math.exp(-(ts - self._peak) / DOUBLE11_SPIKE_DECAY_MS))

    def in_outage(self, ts: int) -> bool:
        return any(first <= ts < last for first, last in self._outages)

    def failure_rate(self, ts: int) -> float:
        return self._outage_rate if self._outages and self.in_outage(ts) else self._base_failure_rate

    def is_dark(self, channel: str, ts: int) -> bool:
        windows = self._dark.get(channel)
        return bool(windows) and any(first <= ts < last for first, last in windows)

    def stop_for(self, channel: str, ts: int) -> int:
        """When a visit on `channel` starting at `ts` must stop: the end, or the channel going dark."""
        stop = self.end
        for first, _ in self._dark.get(channel) or ():
            if ts < first < stop:
                stop = first
        return stop

    # -- planning helpers ---------------------------------------------------------------
    def _flash_sale(self, rng: Random, first: int, last: int, catalog: Catalog, visits_per_min_at) -> FlashSale:
        count = 3 + int(rng.random() * 3)
        skus = tuple(catalog.hot[:count])
        weights = [1.0 / (i + 1) for i in range(len(skus))]
        total = sum(weights)
        # A crowd of 10x the normal rate of the moment (at least 30 visits a minute).
        peak = max(30.0, 10.0 * visits_per_min_at(first))
        minutes = max(1, (last - first) // MINUTE)
        visits = sum(peak * math.exp(-m * MINUTE / FLASH_CROWD_DECAY_MS) for m in range(minutes))
        units = visits * 0.55 * 1.2  # buyers per visit x units per buyer (flash carts are small)
        allocations = tuple(max(3, round(units * w / total * (0.3 + 0.2 * rng.random()))) for w in weights)
        prices = tuple(round(max(0.9, round(s.price * 0.5) - 0.1), 2) for s in skus)
        cum, acc = [], 0.0
        for w in weights:
            acc += w / total
            cum.append(acc)
        return FlashSale(first, last, skus, prices, allocations, tuple(cum), peak)

    def _burst(self, rng: Random, burst_id: str, first: int, end: int) -> Burst:
        attempts = 20 + int(rng.random() * 61)
        times, ts = [], first
        for _ in range(attempts):
            if ts >= end:
                break
            times.append(ts)
            ts += int((2 + rng.random() * 13) * SECOND)
        bins = tuple(FOREIGN_CARD_BINS[int(rng.random() * len(FOREIGN_CARD_BINS))] for _ in range(2))
        return Burst(
            burst_id=burst_id, start=first, attempt_ts=tuple(times),
            device_id=random_device_id(rng), ip=random_ip(rng, DATACENTER_IP_PREFIXES),
            country=FOREIGN_COUNTRIES[int(rng.random() * len(FOREIGN_COUNTRIES))],
            card_bins=bins, accounts=1 + int(rng.random() * 3),
            cards=tuple(random_card(rng, bins) for _ in times),
        )

