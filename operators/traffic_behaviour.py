"""Behaviour sequences: what a click session did, and the reason codes of a traffic score.

A `SessionTrail` keeps a bounded summary of one session (never its clicks): how it
started, whether it searched or browsed, the SKUs it viewed (at most 4), whether it
carted or ordered, and the gaps between its first clicks (at most 8), which is what
scripted sessions give away: a script waits the same few seconds every time. It also
keeps the deepest funnel stage it reached in each KPI window (`StageMarks`, at most 32
windows), so that a flagged session can be taken out of the funnel's windows exactly as
the funnel counted it.

Scores are sums of stable reason codes (`SCORE_WEIGHTS`), capped at 1:

- `ring.member`      the account is in a ring (a cohesive group of linked accounts)
- `ring.devices`     the ring shares a device among many accounts (a phone farm)
- `path.direct`      the session went straight to the SKU: no search, at most one other product
- `sku.concentration` many accounts of the ring ordered (or viewed) the same SKU
- `quantity.low`     one unit of one SKU
- `timing.scripted`  the session's click gaps match other sessions of the ring within 15%
- `account.new`      the account was created shortly before its first order
- `refund.ring`      the ring's orders come back as refunds
- `session.no_order` a click session on the SKU that never ordered

An order or session is flagged when its account is in a ring and its score reaches the
threshold; the ring alone is not enough, and behaviour alone never is.
"""

from __future__ import annotations

from typing import Iterable

MAX_SKUS = 4
MAX_GAPS = 8
MAX_STAGE_WINDOWS = 32  # a session active in more windows than this keeps its first 32
TIMING_TOLERANCE = 0.15

SCORE_WEIGHTS: dict[str, float] = {
    "ring.member": 0.35,
    "ring.devices": 0.15,
    "path.direct": 0.15,
    "sku.concentration": 0.2,
    "quantity.low": 0.05,
    "timing.scripted": 0.1,
    "account.new": 0.1,
    "refund.ring": 0.05,
    "session.no_order": 0.05,
}


Marks = int | tuple[int, ...]  # see raise_stage
NO_MARKS = -1


def _flat(marks: Marks) -> tuple[int, ...]:
    if type(marks) is int:
        return () if marks < 0 else (0, marks)
    return marks


def raise_stage(marks: Marks, offset: int, stage: int) -> tuple[Marks, int] | None:
    """A session reached `stage` in the window `offset` windows after its first one: its new
    marks and the stage it had there before (-1: none), or None when nothing changed.

    Marks are flat, `(offset, deepest stage, offset, deepest stage, ...)`, and a session
    seen in its first window only (most are) is just its stage, an int; -1: no marks.
    Offsets and stages are Python's shared small ints, so marks cost at most one small
    tuple (every profile keeps its sessions' marks for the link horizon)."""
    if type(marks) is int and offset == 0:
        return None if stage <= marks else (stage, marks)
    flat = _flat(marks)
    for i in range(len(flat) - 2, -1, -2):  # newest last: the usual case is found first
        if flat[i] == offset:
            before = flat[i + 1]
            if stage <= before:
                return None
            return flat[:i + 1] + (stage,) + flat[i + 2:], before
    if len(flat) >= 2 * MAX_STAGE_WINDOWS:
        return None  # bounded: a session that never ends keeps its first windows
    flat += (offset, stage)
    return (stage if flat == (0, stage) else flat), -1


def stage_pairs(marks: Marks, first_ts: int, window_ms: int) -> list[tuple[int, int]]:
    """`(window start, deepest stage)` of every window a session was active in."""
    first = first_ts // window_ms
    flat = _flat(marks)
    return [((first + offset) * window_ms, stage) for offset, stage in zip(flat[0::2], flat[1::2])]


class SessionTrail:
    """A bounded summary of one click session."""

    __slots__ = ("user_id", "first_ts", "last_ts", "clicks", "searches", "skus", "carted", "ordered", "gaps",
                 "ip", "device_id", "stages", "counted")

    def __init__(self, user_id: str, ts: int):
        self.user_id = user_id
        self.first_ts = ts
        self.last_ts = ts
        self.clicks = 0
        self.searches = 0
        self.skus: list[str] = []  # distinct SKUs viewed or carted, first MAX_SKUS
        self.carted = False
        self.ordered = False
        self.gaps: list[int] = []  # ms between consecutive clicks, first MAX_GAPS
        self.ip: str | None = None
        self.device_id: str | None = None
        self.stages: Marks = NO_MARKS  # per KPI window its deepest funnel stage (`raise_stage`)
        self.counted = False  # its stages are in the flagged windows' figures

    def __setstate__(self, state) -> None:
        # Snapshots from before stages were kept: an empty record, never counted.
        slots = state[1] if isinstance(state, tuple) else state
        slots.setdefault("stages", NO_MARKS)
        slots.setdefault("counted", False)
        for name, value in slots.items():
            setattr(self, name, value)

    def add(self, ts: int, click_type: str, sku: str | None) -> None:
        if self.clicks and len(self.gaps) < MAX_GAPS:
            self.gaps.append(max(0, ts - self.last_ts))
        self.clicks += 1
        if ts > self.last_ts:
            self.last_ts = ts
        if click_type == "search":
            self.searches += 1
        elif click_type == "add_to_cart":
            self.carted = True
        if sku is not None and sku not in self.skus and len(self.skus) < MAX_SKUS:
            self.skus.append(sku)

    @property
    def direct(self) -> bool:
        """Straight to the SKU: no search and at most two products seen."""
        return self.searches == 0 and len(self.skus) <= 2

    def signature(self) -> tuple[int, ...]:
        return tuple(self.gaps)


def scripted(signature: tuple[int, ...], others: Iterable[tuple[int, ...]], needed: int = 2) -> bool:
    """At least `needed` other sessions with the same number of gaps, each within the tolerance."""
    if len(signature) < 2:
        return False
    matches = 0
    for other in others:
        if len(other) != len(signature):
            continue
        if all(abs(a - b) <= TIMING_TOLERANCE * max(a, b, 1) for a, b in zip(signature, other)):
            matches += 1
            if matches >= needed:
                return True
    return False


def score(reasons: Iterable[str]) -> float:
    return round(min(1.0, sum(SCORE_WEIGHTS[reason] for reason in reasons)), 4)
