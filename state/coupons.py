"""Issuing coupons: the guardrails every coupon flow shares, and exactly-once output.

One Lua script per coupon decides and writes atomically, so two flows (abandoned
cart, churn win-back) issuing to the same shopper, or a replay after a crash, can
never slip past the per-shopper cap or push the same coupon twice:

- `coupon:{coupon_id}` already exists: the coupon was issued before (a replay);
  nothing changes in Redis and the outcome is `duplicate`.
- `fraud:flagged:{user_id}` exists (set by the fraud flow): `flagged`, not issued.
- the shopper's last coupon (`coupons:last:{user_id}`) is another coupon less than
  the cap period away in event time: `capped`, not issued.
- otherwise: the coupon hash, the shopper's last coupon and one `stream:coupons`
  entry are written together: `issued`.

The `coupons` topic gets every `issued` and `duplicate` coupon: after a crash
between Redis and Kafka the replay still reaches Kafka, with the same `coupon_id`
for consumers to dedupe on.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from operators.coupons import Coupon
from shopstream.settings import Settings
from state.kafka import CheckedProducer
from state.outages import OutageGuard, is_redis_transient
from state.redis_store import connect, redis_guard
from state.serde import dumps

log = logging.getLogger(__name__)

TOPIC = "coupons"
STREAM_KEY = "stream:coupons"

ISSUED, DUPLICATE, CAPPED, FLAGGED = "issued", "duplicate", "capped", "flagged"

# KEYS: coupon hash, shopper's last coupon, stream, fraud flag.
# ARGV: coupon_id, ts, cap_ms, ttl_s, stream max length, coupon JSON, user_id, hash fields...
_ISSUE_COUPON = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 'duplicate'
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return 'flagged'
end
local ts = tonumber(ARGV[2])
local last = redis.call('HMGET', KEYS[2], 'coupon_id', 'ts')
if last[1] and last[1] ~= ARGV[1] and math.abs(ts - tonumber(last[2])) < tonumber(ARGV[3]) then
  return 'capped'
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('EXPIRE', KEYS[1], ARGV[4])
if not last[2] or ts >= tonumber(last[2]) then
  redis.call('HSET', KEYS[2], 'coupon_id', ARGV[1], 'ts', ARGV[2])
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*',
  'coupon_id', ARGV[1], 'user_id', ARGV[7], 'coupon', ARGV[6])
return 'issued'
"""


@dataclass(frozen=True)
class CouponRules:
    cap_ms: int  # at most one coupon per shopper within this much event time, across reasons
    ttl_s: int  # how long issued coupons and caps stay in Redis: must outlive the longest replay
    stream_max_len: int = 100_000

    @classmethod
    def from_settings(cls, settings: Settings) -> "CouponRules":
        return cls(
            cap_ms=settings.coupon_cap_s * 1000,
            ttl_s=max(settings.coupon_dedupe_ttl_s, settings.coupon_cap_s),
        )


def _hash_fields(coupon: Coupon) -> list[str]:
    """`coupon:{id}` as flat field/value strings (optional fields only when set)."""
    flat: list[str] = []
    for name, value in coupon.to_dict().items():
        flat += [name, str(value)]
    return flat


class CouponIssuer:
    """Applies the shared guardrails and writes coupons: one pipeline per batch."""

    def __init__(self, client: redis.Redis, prefix: str, rules: CouponRules, guard: OutageGuard | None = None):
        self._client = client
        self._prefix = prefix
        self._rules = rules
        self._script = client.register_script(_ISSUE_COUPON)
        self._guard = guard  # waits out Redis outages; None: the first error raises

    def issue(self, coupons: Iterable[Coupon]) -> list[str]:
        """The outcome for each coupon, in order: issued, duplicate, capped or flagged.

        Retrying a batch cut off by an outage is safe: a coupon the first attempt issued
        comes back `duplicate`, which is published to Kafka exactly like `issued`."""
        coupons = list(coupons)
        if self._guard is None:
            return self._issue(coupons)
        return self._guard.call(lambda: self._issue(coupons), is_redis_transient)

    def _issue(self, coupons: list[Coupon]) -> list[str]:
        if not coupons:
            return []
        prefix, rules = self._prefix, self._rules
        pipe = self._client.pipeline(transaction=False)
        for coupon in coupons:
            coupon_id = coupon.coupon_id
            self._script(
                keys=[
                    f"{prefix}coupon:{coupon_id}",
                    f"{prefix}coupons:last:{coupon.user_id}",
                    f"{prefix}{STREAM_KEY}",
                    f"{prefix}fraud:flagged:{coupon.user_id}",
                ],
                args=[
                    coupon_id,
                    coupon.ts,
                    rules.cap_ms,
                    rules.ttl_s,
                    rules.stream_max_len,
                    dumps(coupon.to_dict()),
                    coupon.user_id,
                    *_hash_fields(coupon),
                ],
                client=pipe,
            )
        return [outcome.decode() if isinstance(outcome, bytes) else outcome for outcome in pipe.execute()]


class _CouponPartition(StatelessSinkPartition[Coupon]):
    def __init__(self, settings: Settings, rules: CouponRules):
        self._client = connect(settings)
        self._issuer = CouponIssuer(self._client, settings.redis_prefix, rules, redis_guard(settings))
        self._producer = CheckedProducer(settings)
        self.outcomes: Counter[str] = Counter()

    def write_batch(self, items: list[Coupon]) -> None:
        outcomes = self._issuer.issue(items)
        for coupon, outcome in zip(items, outcomes):
            self.outcomes[outcome] += 1
            if outcome in (ISSUED, DUPLICATE):
                self._producer.produce(TOPIC, coupon.coupon_id.encode(), dumps(coupon.to_dict()))
            else:
                log.debug("coupon %s for %s not issued: %s", coupon.coupon_id, coupon.reason, outcome)
        # Bytewax may close the epoch once this returns: Kafka must have it all.
        self._producer.flush()

    def close(self) -> None:
        self._producer.flush()
        self._client.close()


class CouponSink(DynamicSink[Coupon]):
    """Issues `Coupon`s through the shared guardrails to Redis, then to the `coupons` topic."""

    def __init__(self, settings: Settings, rules: CouponRules | None = None):
        self._settings = settings
        self._rules = rules or CouponRules.from_settings(settings)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CouponPartition:
        return _CouponPartition(self._settings, self._rules)
