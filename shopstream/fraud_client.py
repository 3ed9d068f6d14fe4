"""The payment service's side of the fraud check: publish, wait, fall back.

    client = FraudClient(settings)
    verdict = client.check(payment)   # payment: the `requested` event as a dict (docs/contract.md)
    if verdict.decision == "approve": authorise()

`check` produces the `requested` payment to the `payments` topic (key `user_id`),
then waits on Redis with BLPOP on `fraud:ready:{payment_id}` and reads
`fraud:decision:{payment_id}` if the list entry was taken by another waiter.

Fallback policy, when no decision arrives within the timeout
(SHOPSTREAM_FRAUD_CLIENT_TIMEOUT_MS) or Kafka/Redis cannot be reached:
fail open below SHOPSTREAM_FRAUD_FAIL_OPEN_AMOUNT (`approve`: a small charge is a
small risk, and a stalled checkout loses the sale) and `review` at or above it
(the payment is held for a person, never authorised blindly). A fallback verdict
says so: `source="fallback"` and the reason `engine.timeout` or
`engine.unavailable`. A decision that lands after the timeout is still stored by
the engine; the payment service may reconcile with `decision_for`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping

import orjson
import redis
from confluent_kafka import KafkaException

from shopstream.settings import Settings
from state.kafka import CheckedProducer, DeliveryError

log = logging.getLogger(__name__)

TIMEOUT_REASON = "engine.timeout"
UNAVAILABLE_REASON = "engine.unavailable"


@dataclass(frozen=True, slots=True)
class Verdict:
    payment_id: str
    decision: str  # approve | review | block
    source: str  # "engine" | "fallback"
    reasons: tuple[str, ...]
    score: float | None = None
    model_version: str | None = None
    waited_ms: float = 0.0


def fallback_decision(amount: float, fail_open_amount: float) -> str:
    """Below the amount: approve (fail open); at or above it: review."""
    return "approve" if amount < fail_open_amount else "review"


class FraudClient:
    def __init__(self, settings: Settings, timeout_ms: int | None = None,
                 redis_client: redis.Redis | None = None, producer: CheckedProducer | None = None):
        self._settings = settings
        self.timeout_s = (settings.fraud_client_timeout_ms if timeout_ms is None else timeout_ms) / 1000
        self.fail_open_amount = float(settings.fraud_fail_open_amount)
        self._redis = redis_client or redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=max(self.timeout_s, 0.05),
            socket_timeout=self.timeout_s + 1.0,
        )
        self._producer = producer

    def _fallback(self, payment_id: str, amount: float, reason: str, started: float) -> Verdict:
        decision = fallback_decision(amount, self.fail_open_amount)
        log.warning("fraud decision for payment %s: fallback %s (%s)", payment_id, decision, reason)
        return Verdict(payment_id, decision, "fallback", (reason,), waited_ms=(time.monotonic() - started) * 1000)

    def publish(self, payment: Mapping[str, Any]) -> None:
        """Produce the `requested` payment and send it at once, without waiting for the
        broker's acknowledgement: the decision itself is the acknowledgement, and if it
        does not come, the fallback applies. A delivery failure reported meanwhile
        raises DeliveryError on the next publish."""
        if self._producer is None:
            self._producer = CheckedProducer(self._settings, {"linger.ms": 0})
        self._producer.raise_failures()
        self._producer.produce("payments", str(payment["user_id"]).encode(), orjson.dumps(dict(payment)))
        self._producer.poll()

    def check(self, payment: Mapping[str, Any]) -> Verdict:
        """Publish and wait; never raises for an engine or broker problem, falls back instead."""
        started = time.monotonic()
        try:
            self.publish(payment)
        except (DeliveryError, KafkaException, BufferError) as err:
            log.warning("could not publish payment %s: %s", payment.get("payment_id"), err)
            return self._fallback(str(payment["payment_id"]), float(payment["amount"]), UNAVAILABLE_REASON, started)
        remaining = self.timeout_s - (time.monotonic() - started)
        return self.wait(str(payment["payment_id"]), float(payment["amount"]), remaining, started)

    def wait(self, payment_id: str, amount: float, timeout_s: float | None = None,
             started: float | None = None) -> Verdict:
        """The engine's decision within the timeout, else the fallback."""
        started = time.monotonic() if started is None else started
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        prefix = self._settings.redis_prefix
        try:
            value = None
            if timeout_s > 0:
                # BLPOP's timeout is in seconds; below a millisecond it would mean "forever".
                popped = self._redis.blpop([f"{prefix}fraud:ready:{payment_id}"], timeout=max(timeout_s, 0.001))
                value = None if popped is None else popped[1]
            if value is None:  # the entry may have gone to another waiter, or expired
                value = self._redis.get(f"{prefix}fraud:decision:{payment_id}")
        except redis.RedisError as err:
            log.warning("Redis unavailable while waiting for payment %s: %s", payment_id, err)
            return self._fallback(payment_id, amount, UNAVAILABLE_REASON, started)
        if value is None:
            return self._fallback(payment_id, amount, TIMEOUT_REASON, started)
        return self._verdict(value, started)

    def decision_for(self, payment_id: str) -> Verdict | None:
        """The engine's stored decision (for reconciling a fallback), None if there is none."""
        value = self._redis.get(f"{self._settings.redis_prefix}fraud:decision:{payment_id}")
        return None if value is None else self._verdict(value, time.monotonic())

    @staticmethod
    def _verdict(value: bytes, started: float) -> Verdict:
        obj = orjson.loads(value)
        return Verdict(obj["payment_id"], obj["decision"], "engine", tuple(obj.get("reasons", ())),
                       obj.get("score"), obj.get("model_version"), (time.monotonic() - started) * 1000)

    def close(self) -> None:
        self._redis.close()
        if self._producer is not None:
            self._producer.flush()
