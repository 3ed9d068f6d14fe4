"""Alert candidates: what a detector says about a condition, before the alert router.

Detectors in every flow publish a candidate when a condition starts holding or
stops holding (`active`), on the internal `alert-candidates` topic keyed by
`dedup_key`. The alert router (the on-call pipeline) owns the contract's `alerts`
topic: it dedupes, counts, reminds, escalates and resolves. A detector never
pages anyone itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True, slots=True)
class AlertCandidate:
    ts: int  # event time at which the detector saw the condition start or stop
    rule: str  # e.g. "stock.low", "payment.failure_rate"
    key: str  # the entity: a sku, a channel, a topic
    active: bool  # True: the condition holds; False: it has cleared
    severity: str
    summary: str  # one line a tired person understands
    value: float | None = None
    threshold: float | None = None
    runbook: str | None = None
    detail: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        if self.detail is not None and not isinstance(self.detail, MappingProxyType):
            object.__setattr__(self, "detail", MappingProxyType(dict(self.detail)))

    @property
    def dedup_key(self) -> str:
        return f"{self.rule}:{self.key}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ts": self.ts,
            "dedup_key": self.dedup_key,
            "rule": self.rule,
            "key": self.key,
            "active": self.active,
            "severity": self.severity,
            "summary": self.summary,
        }
        for name in ("value", "threshold", "runbook"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.detail is not None:
            out["detail"] = dict(self.detail)
        return out

    def __reduce__(self):
        # A mappingproxy cannot be pickled or deep-copied, and the alert router's hold keeps
        # candidates in its snapshot: rebuild from a plain dict.
        detail = None if self.detail is None else dict(self.detail)
        return (type(self), (self.ts, self.rule, self.key, self.active, self.severity, self.summary,
                             self.value, self.threshold, self.runbook, detail))

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "AlertCandidate":
        return cls(
            ts=int(obj["ts"]),
            rule=str(obj["rule"]),
            key=str(obj["key"]),
            active=bool(obj["active"]),
            severity=str(obj["severity"]),
            summary=str(obj["summary"]),
            value=obj.get("value"),
            threshold=obj.get("threshold"),
            runbook=obj.get("runbook"),
            detail=obj.get("detail"),
        )
