"""Explicit rules, for what rules do best, and the stable reason codes.

Card testing is a burst: one bot device or IP pushing many small payments
through many cards within minutes, most of them declined. A model that learns
from chargebacks days later sees few of those labels (small charges are rarely
disputed), while a velocity rule stops the burst from its fifth card on.

Reason codes are a public contract (docs/contract.md `reasons`): never rename one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

# Stable reason codes.
VELOCITY_CARD = "velocity.card"
VELOCITY_DEVICE = "velocity.device"
VELOCITY_IP = "velocity.ip"
VELOCITY_USER = "velocity.user"
CARDS_PER_DEVICE = "cards.device"
CARDS_PER_IP = "cards.ip"
FAILED_ATTEMPTS = "failures.recent"
AMOUNT_OUTLIER = "amount.outlier"
NEW_ACCOUNT = "new_account"
NEW_DEVICE = "new_device"
GEO_MISMATCH = "geo.mismatch"
SIGNAL_RISK = "signal.risk"
MODEL_SCORE = "model.score"

DECISION_RANK = {"approve": 0, "review": 1, "block": 2}


@dataclass(frozen=True)
class FraudRules:
    card_test_cards: int = 5  # distinct cards on one device (or IP) within 10 minutes: block
    card_test_attempts: int = 10  # attempts from one device (or IP) within 10 minutes: block
    card_velocity: int = 4  # attempts with one card within 10 minutes: review
    user_velocity: int = 6  # attempts by one user within 10 minutes: review
    recent_failures: int = 3  # declines on the device or card within the hour: review
    amount_outlier_z: float = 3.0
    risky_signal: float = 0.7  # upstream device/IP risk at or above this is worth naming

    def judge(self, x: Mapping[str, float]) -> tuple[str, list[str]]:
        """The decision the rules force (at least), with their reasons."""
        reasons: list[str] = []
        decision = "approve"
        # Counts describe the past, so "the Nth card" means N-1 seen before plus this one.
        if x["device_cards_10m"] + 1 >= self.card_test_cards:
            reasons.append(CARDS_PER_DEVICE)
        if x["ip_cards_10m"] + 1 >= self.card_test_cards:
            reasons.append(CARDS_PER_IP)
        if x["device_attempts_10m"] + 1 >= self.card_test_attempts:
            reasons.append(VELOCITY_DEVICE)
        if x["ip_attempts_10m"] + 1 >= self.card_test_attempts:
            reasons.append(VELOCITY_IP)
        if reasons:
            decision = "block"
        if x["card_attempts_10m"] + 1 >= self.card_velocity:
            reasons.append(VELOCITY_CARD)
        if x["user_attempts_10m"] + 1 >= self.user_velocity:
            reasons.append(VELOCITY_USER)
        if max(x["device_failures_1h"], x["card_failures_1h"]) >= self.recent_failures:
            reasons.append(FAILED_ATTEMPTS)
        if decision == "approve" and reasons:
            decision = "review"
        return decision, reasons

    def explain(self, x: Mapping[str, float]) -> list[str]:
        """Why a model score may be high: the notable features, as reason codes."""
        reasons = []
        if x["amount_zscore"] >= self.amount_outlier_z or x["amount_over_max"] >= 1.0:
            reasons.append(AMOUNT_OUTLIER)
        if x["new_account"]:
            reasons.append(NEW_ACCOUNT)
        if x["new_device"]:
            reasons.append(NEW_DEVICE)
        if x["geo_mismatch"] or x["country_changed"]:
            reasons.append(GEO_MISMATCH)
        if max(x.get("signal.device_risk", 0.0), x.get("signal.ip_risk", 0.0)) >= self.risky_signal:
            reasons.append(SIGNAL_RISK)
        return reasons


def stricter(a: str, b: str) -> str:
    return a if DECISION_RANK[a] >= DECISION_RANK[b] else b
