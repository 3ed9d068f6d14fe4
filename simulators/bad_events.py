"""Malformed messages, injected on purpose to test the dead-letter path.

A bad message is an extra copy of a real event (with its own `event_id`), broken
one way; the good event it copies is still sent, so the valid stream stays whole.
Every defect makes `operators.events.parse_event` (or JSON decoding) reject it.
"""

from __future__ import annotations

import copy
from random import Random

from state.serde import dumps

DEFECTS = ("bad_json", "missing_field", "wrong_type", "unknown_value", "negative_quantity")

_REQUIRED = {
    "clickstream": ("user_id", "session_id", "type", "channel", "ts"),
    "orders": ("order_id", "status", "items", "amount", "user_id"),
    "payments": ("payment_id", "status", "amount", "method", "order_id"),
    "inventory": ("sku", "kind", "quantity", "ts"),
}
_ENUM_FIELD = {"clickstream": "type", "orders": "status", "payments": "status", "inventory": "kind"}
_UNKNOWN_VALUES = ("teleport", "pending_review", "UNKNOWN", "shrinkage")


def corrupt(rng: Random, topic: str, event: dict, event_id: str) -> tuple[str, bytes]:
    """A broken copy of `event` under a new id: (defect name, raw message bytes)."""
    broken = copy.deepcopy(event)
    broken["event_id"] = event_id
    defect = DEFECTS[int(rng.random() * len(DEFECTS))]
    if defect == "bad_json":
        raw = dumps(broken)
        # Cut inside the object (never at its end) and keep the bytes valid UTF-8.
        cut = raw[: max(1, int(len(raw) * (0.3 + 0.5 * rng.random())))]
        return defect, cut.decode("utf-8", errors="ignore").encode("utf-8")
    if defect == "missing_field":
        fields = _REQUIRED[topic]
        del broken[fields[int(rng.random() * len(fields))]]
    elif defect == "wrong_type":
        if topic in ("orders", "payments") and rng.random() < 0.5:
            broken["amount"] = str(broken["amount"])
        else:
            broken["ts"] = str(broken["ts"])
    elif defect == "unknown_value":
        broken[_ENUM_FIELD[topic]] = _UNKNOWN_VALUES[int(rng.random() * len(_UNKNOWN_VALUES))]
    else:  # negative_quantity (payments have no quantity: a negative amount)
        negative = -1 - int(rng.random() * 5)
        if topic == "clickstream":
            broken["quantity"] = negative
        elif topic == "orders":
            broken["items"][0]["quantity"] = negative
        elif topic == "payments":
            broken["amount"] = float(negative)
        else:
            broken["kind"] = "restock"
            broken["quantity"] = negative
    return defect, dumps(broken)
