"""Fraud features computed on the payment stream, in event time, with bounded state.

`FeatureState.features(payment)` describes a `requested` payment against what came
before it (velocity per card, device, IP and user over several windows, distinct
cards and accounts per device, failed attempts, the amount against the user's
history, account age, country mismatch, first use of a device) and then records
it. `record_failure` counts a declined attempt on the entities of the payment it
belongs to. Every entry expires by event time: velocity after the longest window,
user histories after `history_ms` without a payment.

No card number, name or address is kept: a card is known only by its fingerprint.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from operators.events import PaymentEvent

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

# Velocity windows: a burst (1 min), a session (10 min), an hour.
WINDOWS_MS = (("1m", MINUTE_MS), ("10m", 10 * MINUTE_MS), ("1h", HOUR_MS))
LONGEST_WINDOW_MS = HOUR_MS
# A busy entity drops its past beyond the longest window once it is this old: trimming
# in steps keeps the work per payment constant (and out-of-order events still count).
TRIM_AFTER_MS = LONGEST_WINDOW_MS + 10 * MINUTE_MS
NEW_ACCOUNT_MS = DAY_MS
MAX_DEVICES_PER_USER = 16  # a user's known devices, most recent kept

V = TypeVar("V")


def _names(entity: str, cards: bool, users: bool) -> tuple:
    """Feature names of one entity, built once: (attempts per window, failures, cards, users)."""
    return (
        tuple(f"{entity}_attempts_{label}" for label, _ in WINDOWS_MS),
        f"{entity}_failures_1h",
        (f"{entity}_cards_10m", f"{entity}_cards_1h") if cards else (),
        f"{entity}_users_1h" if users else None,
    )


# In the order of FeatureState._entities: card, device, IP, user.
_FEATURE_NAMES = (
    _names("card", cards=False, users=False),
    _names("device", cards=True, users=True),
    _names("ip", cards=True, users=True),
    _names("user", cards=True, users=False),
)


class _ExpiringMap(Generic[V]):
    """key -> value, iterated oldest-touched first, so expiry pops from the front."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[int, V]] = OrderedDict()

    def get(self, key: str) -> V | None:
        entry = self.entries.get(key)
        return None if entry is None else entry[1]

    def touch(self, key: str, ts: int, value: V) -> None:
        entries = self.entries
        previous = entries.get(key)
        # Events may arrive slightly out of order: a key's age is its newest event.
        entries[key] = (ts if previous is None else max(ts, previous[0]), value)
        entries.move_to_end(key)

    def expire(self, before_ts: int) -> int:
        """Drop entries last touched before `before_ts`; returns how many went."""
        entries, dropped = self.entries, 0
        while entries:
            key, (touched, _) = next(iter(entries.items()))
            if touched >= before_ts:
                break
            del entries[key]
            dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(slots=True)
class _Activity:
    """One entity's recent attempts (event times, sorted) and what they used."""

    attempts: list[int] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    cards: list[tuple[int, str]] = field(default_factory=list)  # (ts, card fingerprint)
    users: list[tuple[int, str]] = field(default_factory=list)  # (ts, user id)

    def __reduce__(self):  # fast snapshots (see fraud_model.Pending)
        return _Activity, (self.attempts, self.failures, self.cards, self.users)

    def trim(self, before_ts: int) -> None:
        for name in ("attempts", "failures"):
            times = getattr(self, name)
            cut = bisect_left(times, before_ts)
            if cut:
                del times[:cut]
        for name in ("cards", "users"):
            pairs = getattr(self, name)
            keep = [pair for pair in pairs if pair[0] >= before_ts]
            if len(keep) != len(pairs):
                setattr(self, name, keep)


def _insort(times: list[int], ts: int) -> None:
    if not times or times[-1] <= ts:
        times.append(ts)
    else:
        times.insert(bisect_left(times, ts), ts)


def _count_since(times: list[int], since_ts: int) -> int:
    return len(times) - bisect_left(times, since_ts)


def _distinct_since(pairs: list[tuple[int, str]], since_ts: int) -> int:
    return len({value for ts, value in pairs if ts >= since_ts})


@dataclass(slots=True)
class UserHistory:
    """What a user's past payments say: amounts (log scale, Welford) and devices."""

    first_seen_ts: int
    payments: int = 0
    mean_log_amount: float = 0.0
    m2_log_amount: float = 0.0
    max_amount: float = 0.0
    devices: dict[str, int] = field(default_factory=dict)  # device id -> last seen ts
    country: str | None = None

    def __reduce__(self):  # fast snapshots (see fraud_model.Pending)
        return UserHistory, (self.first_seen_ts, self.payments, self.mean_log_amount, self.m2_log_amount,
                             self.max_amount, self.devices, self.country)

    def add(self, ts: int, amount: float, device_id: str | None, country: str | None) -> None:
        self.payments += 1
        value = math.log1p(amount)
        delta = value - self.mean_log_amount
        self.mean_log_amount += delta / self.payments
        self.m2_log_amount += delta * (value - self.mean_log_amount)
        self.max_amount = max(self.max_amount, amount)
        if device_id is not None:
            self.devices[device_id] = ts
            if len(self.devices) > MAX_DEVICES_PER_USER:
                oldest = min(self.devices, key=self.devices.__getitem__)
                del self.devices[oldest]
        if country is not None:
            self.country = country

    def amount_zscore(self, amount: float) -> float:
        """How unusual the amount is for this user (0 until there are 2 payments)."""
        if self.payments < 2:
            return 0.0
        std = math.sqrt(self.m2_log_amount / (self.payments - 1))
        return (math.log1p(amount) - self.mean_log_amount) / max(std, 0.25)


@dataclass
class FeatureState:
    """Everything the features need from the past, bounded by event time."""

    history_ms: int = 90 * DAY_MS
    cards: _ExpiringMap[_Activity] = field(default_factory=_ExpiringMap)
    devices: _ExpiringMap[_Activity] = field(default_factory=_ExpiringMap)
    ips: _ExpiringMap[_Activity] = field(default_factory=_ExpiringMap)
    users: _ExpiringMap[_Activity] = field(default_factory=_ExpiringMap)
    histories: _ExpiringMap[UserHistory] = field(default_factory=_ExpiringMap)

    def _entities(self, payment: PaymentEvent) -> tuple[tuple[_ExpiringMap[_Activity], str | None], ...]:
        return (
            (self.cards, payment.card_fingerprint),
            (self.devices, payment.device_id),
            (self.ips, payment.ip),
            (self.users, payment.user_id),
        )

    def _activities(self, payment: PaymentEvent) -> list[tuple[str, _ExpiringMap[_Activity], str | None]]:
        return [
            ("card", self.cards, payment.card_fingerprint),
            ("device", self.devices, payment.device_id),
            ("ip", self.ips, payment.ip),
            ("user", self.users, payment.user_id),
        ]

    def features(self, payment: PaymentEvent) -> dict[str, float]:
        """The payment's features from the state before it; then the payment is recorded."""
        ts = payment.ts
        x: dict[str, float] = {}
        since = [ts - width for _, width in WINDOWS_MS]
        since_10m, since_1h = ts - 10 * MINUTE_MS, ts - HOUR_MS
        for (table, key), names in zip(self._entities(payment), _FEATURE_NAMES):
            activity = None if key is None else table.get(key)
            attempt_names, failures_name, cards_names, users_name = names
            if activity is None:
                for name in attempt_names:
                    x[name] = 0.0
                x[failures_name] = 0.0
                if cards_names:
                    x[cards_names[0]] = x[cards_names[1]] = 0.0
                if users_name:
                    x[users_name] = 0.0
                continue
            attempts = activity.attempts
            count = len(attempts)
            for name, start_ts in zip(attempt_names, since):
                x[name] = float(count - bisect_left(attempts, start_ts))
            x[failures_name] = float(_count_since(activity.failures, since_1h))
            if cards_names:
                x[cards_names[0]] = float(_distinct_since(activity.cards, since_10m))
                x[cards_names[1]] = float(_distinct_since(activity.cards, since_1h))
            if users_name:
                x[users_name] = float(_distinct_since(activity.users, since_1h))

        history = self.histories.get(payment.user_id)
        x["amount_log"] = math.log1p(payment.amount)
        x["known_user"] = 0.0 if history is None else 1.0
        x["user_payments_log"] = 0.0 if history is None else math.log1p(history.payments)
        x["amount_zscore"] = 0.0 if history is None else history.amount_zscore(payment.amount)
        x["amount_over_max"] = (
            0.0 if history is None or history.max_amount <= 0
            else math.log(max(payment.amount, 0.01) / history.max_amount)
        )
        x["new_device"] = float(
            history is not None and payment.device_id is not None and payment.device_id not in history.devices
        )
        x["country_changed"] = float(
            history is not None and history.country is not None and payment.country is not None
            and payment.country != history.country
        )
        if payment.account_created_ts is None:
            x["account_age_known"] = 0.0
            x["account_age_log_h"] = 0.0
            x["new_account"] = 0.0
        else:
            age_ms = max(0, ts - payment.account_created_ts)
            x["account_age_known"] = 1.0
            x["account_age_log_h"] = math.log1p(age_ms / HOUR_MS)
            x["new_account"] = float(age_ms < NEW_ACCOUNT_MS)
        x["geo_mismatch"] = float(
            payment.billing_country is not None and payment.country is not None
            and payment.billing_country != payment.country
        )
        x["foreign_country"] = float(payment.country is not None and payment.country != "CN")
        x["method_card"] = float(payment.method == "card")
        if payment.signals:
            for name, value in payment.signals.items():
                x[f"signal.{name}"] = value
        self._record(payment)
        return x

    def _record(self, payment: PaymentEvent) -> None:
        ts = payment.ts
        card = payment.card_fingerprint
        for name, table, key in self._activities(payment):
            if key is None:
                continue
            activity = table.get(key)
            if activity is None:
                activity = _Activity()
            elif activity.attempts[0] < ts - TRIM_AFTER_MS:
                activity.trim(ts - LONGEST_WINDOW_MS)
            _insort(activity.attempts, ts)
            if card is not None and name != "card":
                activity.cards.append((ts, card))
            if name in ("device", "ip"):
                activity.users.append((ts, payment.user_id))
            table.touch(key, ts, activity)
        history = self.histories.get(payment.user_id)
        if history is None:
            history = UserHistory(first_seen_ts=ts)
        history.add(ts, payment.amount, payment.device_id, payment.country)
        self.histories.touch(payment.user_id, ts, history)

    def record_failure(self, ts: int, card: str | None, device: str | None, ip: str | None, user: str) -> None:
        """A declined attempt, counted on every entity of the payment it declined."""
        for table, key in ((self.cards, card), (self.devices, device), (self.ips, ip), (self.users, user)):
            if key is None:
                continue
            activity = table.get(key)
            if activity is not None:
                _insort(activity.failures, ts)
                table.touch(key, ts, activity)

    def expire(self, now_ts: int) -> None:
        """Forget entities quiet for the longest window and users quiet for `history_ms`.
        (Entities still active trim their own past as they go, in `_record`.)"""
        before = now_ts - LONGEST_WINDOW_MS
        for table in (self.cards, self.devices, self.ips, self.users):
            table.expire(before)
        self.histories.expire(now_ts - self.history_ms)

    def size(self) -> int:
        return len(self.cards) + len(self.devices) + len(self.ips) + len(self.users) + len(self.histories)
