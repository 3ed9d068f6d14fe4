"""Redis output: typed, idempotent writes applied in one pipeline per batch.

Everything written to Redis may be written again after a crash (Bytewax replays
the resumed epoch), so every write here is safe to repeat: absolute values, a
sorted-set history keyed by window, "newer wins" for latest views, and "dedupe
key + effect" done atomically in one Lua script for anything that must happen once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from shopstream.settings import Settings
from state.outages import OutageGuard, is_redis_transient

# SET the JSON value only if its ordering number is not older than the stored one.
_SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1] .. ':order')
if current and tonumber(current) > tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[1] .. ':order', ARGV[1])
return 1
"""

# A JSON value replaced only by one with a later `ts` (ties: the smaller value), so two
# flows writing the same key leave the same value whichever of them wrote last.
_SET_IF_LATER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, held = pcall(cjson.decode, current)
  if ok and type(held) == 'table' and tonumber(held['ts']) then
    local held_ts, new_ts = tonumber(held['ts']), tonumber(ARGV[2])
    if held_ts > new_ts or (held_ts == new_ts and current <= ARGV[1]) then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""

# One member per window start: a window re-emitted after a replay replaces its
# earlier result instead of adding a second one; then keep only the newest.
_SET_IN_HISTORY = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
return 1
"""

# Claim the dedupe key and append to the stream in one step, so a replay can
# neither add the entry twice nor claim without adding.
_STREAM_ADD_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
  return 1
end
return 0
"""


# Delete a key holding a JSON object unless it names a newer ordering value in
# `field` (an acknowledgement given for a later alert episode survives a replayed resolve).
_DELETE_UNLESS_NEWER = """
local current = redis.call('GET', KEYS[1])
if not current then
  return 0
end
local ok, obj = pcall(cjson.decode, current)
if ok and type(obj) == 'table' and tonumber(obj[ARGV[1]]) and tonumber(obj[ARGV[1]]) > tonumber(ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
"""

# Replace a whole hash in one step: readers never see a mix of old and new fields,
# and fields the new value leaves out (optional ones) do not linger.
_REPLACE_HASH = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


# A fraud decision is given once: the decision key is its own dedupe key. Only the
# call that creates it pushes to the ready list, so a replay after a crash neither
# changes a decision already given nor wakes a waiting payment service twice.
# One call decides a whole batch: KEYS are (decision key, ready list) pairs, ARGV
# the two TTLs and then one value per pair.
_DECIDE_ONCE = """
local written = 0
for i = 1, #KEYS / 2 do
  local value = ARGV[i + 2]
  if redis.call('SET', KEYS[2 * i - 1], value, 'NX', 'EX', ARGV[1]) then
    redis.call('RPUSH', KEYS[2 * i], value)
    redis.call('EXPIRE', KEYS[2 * i], ARGV[2])
    written = written + 1
  end
end
return written
"""


class _Scripts:
    def __init__(self, client: redis.Redis):
        self.decide_once = client.register_script(_DECIDE_ONCE)
        self.delete_unless_newer = client.register_script(_DELETE_UNLESS_NEWER)
        self.set_if_newer = client.register_script(_SET_IF_NEWER)
        self.set_if_later = client.register_script(_SET_IF_LATER)
        self.stream_add_once = client.register_script(_STREAM_ADD_ONCE)
        self.set_in_history = client.register_script(_SET_IN_HISTORY)
        self.replace_hash = client.register_script(_REPLACE_HASH)


class RedisWrite(Protocol):
    def apply(self, pipe: redis.client.Pipeline, prefix: str, scripts: _Scripts) -> None: ...


@dataclass(frozen=True, slots=True)
class SetLatest:
    """`key` holds the JSON with the highest `order` seen (e.g. window end)."""

    key: str
    order: int
    value: bytes

    def apply(self, pipe, prefix, scripts) -> None:
        scripts.set_if_newer(keys=[prefix + self.key], args=[self.order, self.value], client=pipe)


@dataclass(frozen=True, slots=True)
class AddToHistory:
    """Sorted set of window results scored by window start (one per window), newest `keep` kept."""

    key: str
    score: int
    member: bytes
    keep: int

    def apply(self, pipe, prefix, scripts) -> None:
        scripts.set_in_history(
            keys=[prefix + self.key], args=[self.score, self.member, self.keep], client=pipe
        )


@dataclass(frozen=True, slots=True)
class SetHash:
    """Absolute field values of a hash, with an optional TTL."""

    key: str
    fields: Mapping[str, str | int | float]
    ttl_s: int | None = None

    def apply(self, pipe, prefix, scripts) -> None:
        key = prefix + self.key
        pipe.hset(key, mapping=dict(self.fields))
        if self.ttl_s:
            pipe.expire(key, self.ttl_s)


@dataclass(frozen=True, slots=True)
class ReplaceHash:
    """The hash becomes exactly `fields` (absolute values; fields left out are removed)."""

    key: str
    fields: Mapping[str, str | int | float]

    def apply(self, pipe, prefix, scripts) -> None:
        flat = [part for pair in self.fields.items() for part in pair]
        scripts.replace_hash(keys=[prefix + self.key], args=flat, client=pipe)


@dataclass(frozen=True, slots=True)
class StreamAddOnce:
    """Append `fields` to a stream once per `dedupe_key`, even across replays."""

    dedupe_key: str
    stream: str
    fields: Mapping[str, str]
    dedupe_ttl_s: int
    max_len: int = 100_000

    def apply(self, pipe, prefix, scripts) -> None:
        flat = [part for pair in self.fields.items() for part in pair]
        scripts.stream_add_once(
            keys=[prefix + self.dedupe_key, prefix + self.stream],
            args=[self.dedupe_ttl_s, self.max_len, *flat],
            client=pipe,
        )


@dataclass(frozen=True, slots=True)
class DecideOnce:
    """For each (decision key, ready list, value): set the key unless a decision is
    there already, and only then push the value to the list. A batch is one script
    call (per-call overhead in the client was most of the cost of a decision)."""

    entries: tuple[tuple[str, str, bytes], ...]
    decision_ttl_s: int
    ready_ttl_s: int

    def apply(self, pipe, prefix, scripts) -> None:
        if not self.entries:
            return
        keys = [prefix + key for decision_key, ready_list, _ in self.entries for key in (decision_key, ready_list)]
        args = [self.decision_ttl_s, self.ready_ttl_s, *(value for _, _, value in self.entries)]
        scripts.decide_once(keys=keys, args=args, client=pipe)


@dataclass(frozen=True, slots=True)
class SetValue:
    """`key` = `value` (absolute), with a TTL."""

    key: str
    value: bytes | str
    ttl_s: int

    def apply(self, pipe, prefix, scripts) -> None:
        pipe.set(prefix + self.key, self.value, ex=self.ttl_s)


@dataclass(frozen=True, slots=True)
class SetIfLater:
    """`key` = a JSON object with a `ts`, unless the one there has a later `ts`; with a TTL.

    For a key more than one flow writes (`fraud:flagged:{user_id}`): the result does not
    depend on which flow got there last on the wall clock."""

    key: str
    value: bytes
    ts: int
    ttl_s: int

    def apply(self, pipe, prefix, scripts) -> None:
        scripts.set_if_later(keys=[prefix + self.key], args=[self.value, self.ts, self.ttl_s], client=pipe)


@dataclass(frozen=True, slots=True)
class SetHashField:
    """One field of a hash set to an absolute value (e.g. `alerts:active` dedup_key -> JSON)."""

    key: str
    field: str
    value: bytes | str

    def apply(self, pipe, prefix, scripts) -> None:
        pipe.hset(prefix + self.key, self.field, self.value)


@dataclass(frozen=True, slots=True)
class DeleteHashField:
    """One field removed from a hash; removing it again is a no-op."""

    key: str
    field: str

    def apply(self, pipe, prefix, scripts) -> None:
        pipe.hdel(prefix + self.key, self.field)


@dataclass(frozen=True, slots=True)
class DeleteUnlessNewer:
    """Delete `key` (a JSON object) unless its `field` is greater than `order`.

    Keys without that field, or not JSON at all, are deleted."""

    key: str
    field: str
    order: int

    def apply(self, pipe, prefix, scripts) -> None:
        scripts.delete_unless_newer(keys=[prefix + self.key], args=[self.field, self.order], client=pipe)


class KeyReader:
    """Batched reads for a flow step: one MGET per call, connected on first use."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._client: redis.Redis | None = None
        self._guard: OutageGuard | None = None

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        if self._client is None:
            self._client = connect(self._settings)
            self._guard = redis_guard(self._settings)
        prefix = self._settings.redis_prefix
        # A read during an outage waits like a write: the step holds its input.
        return self._guard.call(lambda: self._client.mget([prefix + key for key in keys]), is_redis_transient)

    def __getstate__(self) -> dict:
        return {"_settings": self._settings, "_client": None, "_guard": None}  # never pickle a connection


def connect(settings: Settings) -> redis.Redis:
    """A client from REDIS_URL (credentials and TLS ride in the URL: rediss://user:pass@...)."""
    return redis.Redis.from_url(settings.redis_url)


def redis_guard(settings: Settings) -> OutageGuard:
    """Waits out Redis outages up to SHOPSTREAM_OUTAGE_LIMIT_S (named by address, never by URL:
    the URL may carry a password)."""
    host, port = settings.redis_host_port
    return OutageGuard(f"Redis at {host}:{port}", settings.outage_limit_s)


class _RedisPartition(StatelessSinkPartition[RedisWrite]):
    def __init__(self, settings: Settings):
        self._client = connect(settings)
        self._prefix = settings.redis_prefix
        self._scripts = _Scripts(self._client)
        self._guard = redis_guard(settings)

    def write_batch(self, items: list[RedisWrite]) -> None:
        # During an outage this does not return (Bytewax holds the input). A batch cut
        # off half-way is applied again in full: every RedisWrite is idempotent, and
        # re-applying a whole sequence leaves each key as its last write in the batch.
        self._guard.call(lambda: self._apply(items), is_redis_transient)

    def _apply(self, items: list[RedisWrite]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for write in items:
            write.apply(pipe, self._prefix, self._scripts)
        pipe.execute()

    def close(self) -> None:
        self._client.close()


class RedisSink(DynamicSink[RedisWrite]):
    """Applies `RedisWrite`s; one connection and one pipeline per batch per worker."""

    def __init__(self, settings: Settings):
        self._settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(self._settings)
