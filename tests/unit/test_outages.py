"""Short outages are waited out with bounded backoff; only a long one stops the flow (issue 15)."""

from __future__ import annotations

import logging

import pytest
import redis
from confluent_kafka import KafkaError

from shopstream.settings import ConfigError, Settings
from state.kafka import CheckedProducer, DeliveryError
from state.outages import OutageError, OutageGuard, backoff_delays, is_redis_transient
from state.redis_store import SetValue, _RedisPartition


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times: int, error: Exception, clock: FakeClock | None = None, cost_s: float = 0.0):
    """An attempt that raises `error` `times` times (each costing `cost_s`), then returns 'ok'."""
    calls = {"n": 0}

    def attempt():
        calls["n"] += 1
        if clock is not None:
            clock.now += cost_s
        if calls["n"] <= times:
            raise error
        return "ok"

    attempt.calls = calls
    return attempt


def guard(clock: FakeClock, limit_s: float = 60, logger=None) -> OutageGuard:
    return OutageGuard("Redis at h:1", limit_s, first_delay_s=0.1, max_delay_s=2.0, clock=clock,
                       sleep=clock.sleep, **({"logger": logger} if logger else {}))


def test_backoff_doubles_up_to_its_cap():
    delays = backoff_delays(0.1, 1.0)
    assert [round(next(delays), 3) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_a_short_outage_is_retried_until_the_write_goes_through():
    clock = FakeClock()
    g = guard(clock)
    attempt = failing(5, redis.exceptions.TimeoutError("Timeout reading from socket"))
    assert g.call(attempt, is_redis_transient) == "ok"
    assert attempt.calls["n"] == 6
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert g.outages == 1 and g.last_outage_s == pytest.approx(3.1)
    assert g.outage_started is None


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(caplog):
    clock = FakeClock()
    g = guard(clock, logger=logging.getLogger("test.outages"))
    with caplog.at_level(logging.WARNING, logger="test.outages"):
        g.call(failing(20, redis.exceptions.ConnectionError("refused"), clock, cost_s=1.0), is_redis_transient)
        g.call(lambda: "ok", is_redis_transient)  # healthy calls log nothing
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages
    assert "unreachable" in messages[0] and "ConnectionError" in messages[0]
    assert "reachable again after an outage of" in messages[1]
    # 20 failed attempts and the successful one, 1 s each, plus the backoff between them.
    assert g.last_outage_s == pytest.approx(21 + sum(clock.sleeps))


def test_the_outage_begins_when_the_first_failing_attempt_began():
    clock = FakeClock()
    g = guard(clock)
    # Each attempt blocks 5 s (a socket timeout) before failing.
    g.call(failing(1, redis.exceptions.TimeoutError("t"), clock, cost_s=5.0), is_redis_transient)
    assert g.last_outage_s == pytest.approx(5.0 + 0.1 + 5.0)


def test_an_outage_longer_than_the_limit_stops_the_flow():
    clock = FakeClock()
    g = guard(clock, limit_s=30)
    attempt = failing(10**6, redis.exceptions.TimeoutError("still paused"), clock, cost_s=0.5)
    with pytest.raises(OutageError, match=r"unreachable for 3\d s .*SHOPSTREAM_OUTAGE_LIMIT_S.*still paused"):
        g.call(attempt, is_redis_transient)
    assert 30 <= clock.now - 1000.0 < 33  # gave up at the limit, not long after
    assert max(clock.sleeps) <= 2.0


def test_errors_that_waiting_cannot_fix_raise_at_once():
    clock = FakeClock()
    g = guard(clock)
    for error in (redis.exceptions.ResponseError("WRONGTYPE"), redis.exceptions.AuthenticationError("bad pw"),
                  ValueError("bug")):
        with pytest.raises(type(error)):
            g.call(failing(1, error), is_redis_transient)
    assert clock.sleeps == [] and g.outage_started is None


def test_busy_loading_redis_is_waited_out():
    assert is_redis_transient(redis.exceptions.BusyLoadingError("loading the dataset"))


def test_outage_limit_setting_is_validated():
    assert Settings.from_env({}).outage_limit_s == 180
    with pytest.raises(ConfigError, match="SHOPSTREAM_OUTAGE_LIMIT_S must be at least 1"):
        Settings.from_env({"SHOPSTREAM_OUTAGE_LIMIT_S": "0"})
    with pytest.raises(ConfigError, match="SHOPSTREAM_RESTART_BACKOFF_MAX_S must be at least"):
        Settings.from_env({"SHOPSTREAM_RESTART_BACKOFF_S": "30", "SHOPSTREAM_RESTART_BACKOFF_MAX_S": "10"})


# -- the Redis sink ------------------------------------------------------------------------------


class FakePipeline:
    def __init__(self, server: "FakeRedis"):
        self.server = server
        self.commands: list[tuple] = []

    def set(self, key, value, ex=None):
        self.commands.append((key, value))

    def execute(self):
        self.server.attempts += 1
        if self.server.down_for:
            self.server.down_for -= 1
            # Half the batch reached Redis before the connection broke.
            for key, value in self.commands[: len(self.commands) // 2]:
                self.server.data[key] = value
                self.server.writes += 1
            raise redis.exceptions.ConnectionError("Connection reset by peer")
        for key, value in self.commands:
            self.server.data[key] = value
            self.server.writes += 1
        return [True] * len(self.commands)


class FakeRedis:
    def __init__(self, down_for: int):
        self.down_for = down_for
        self.attempts = 0
        self.writes = 0
        self.data: dict = {}

    def pipeline(self, transaction=False):
        return FakePipeline(self)


def test_the_redis_sink_applies_a_batch_cut_off_by_an_outage_again_in_full():
    clock = FakeClock()
    partition = _RedisPartition.__new__(_RedisPartition)
    partition._client = FakeRedis(down_for=3)
    partition._prefix = "p:"
    partition._scripts = None
    partition._guard = guard(clock)
    batch = [SetValue(f"k{n}", f"v{n}", ttl_s=60) for n in range(4)] + [SetValue("k0", "last", ttl_s=60)]
    partition.write_batch(batch)
    assert partition._client.attempts == 4
    assert partition._client.data == {"p:k0": "last", "p:k1": "v1", "p:k2": "v2", "p:k3": "v3"}
    assert partition._guard.outages == 1


# -- the Kafka producer --------------------------------------------------------------------------


class FakeMessage:
    def __init__(self, topic, key, value):
        self._topic, self._key, self._value = topic, key, value

    def topic(self):
        return self._topic

    def key(self):
        return self._key

    def value(self):
        return self._value


class FakeProducer:
    """Delivers on flush; the first `fail_rounds` flushes fail every queued message with `error`."""

    def __init__(self, fail_rounds: int, error: int):
        self.fail_rounds = fail_rounds
        self.error = error
        self.queue: list = []
        self.delivered: list[tuple] = []
        self.produced = 0

    def produce(self, topic, value=None, key=None, on_delivery=None):
        self.produced += 1
        self.queue.append((topic, key, value, on_delivery))

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        queue, self.queue = self.queue, []
        failing = self.fail_rounds > 0
        self.fail_rounds -= 1 if failing else 0
        for topic, key, value, callback in queue:
            if failing:
                callback(KafkaError(self.error), FakeMessage(topic, key, value))
            else:
                self.delivered.append((topic, key, value))
        return 0

    def __len__(self):
        return len(self.queue)


def producer_with(fake: FakeProducer, clock: FakeClock) -> CheckedProducer:
    producer = CheckedProducer(Settings.from_env({}, topic_prefix="x."))
    producer._producer = fake
    producer._guard = OutageGuard("Kafka", 60, clock=clock, sleep=clock.sleep)
    return producer


def test_messages_whose_delivery_timed_out_are_produced_again():
    clock = FakeClock()
    fake = FakeProducer(fail_rounds=2, error=KafkaError._MSG_TIMED_OUT)
    producer = producer_with(fake, clock)
    for n in range(3):
        producer.produce("metrics", b"k", b"%d" % n)
    producer.flush()
    assert fake.delivered == [("x.metrics", b"k", b"0"), ("x.metrics", b"k", b"1"), ("x.metrics", b"k", b"2")]
    assert fake.produced == 9  # three attempts of three messages; the consumers dedupe on ids
    assert producer._guard.outages == 1


@pytest.mark.parametrize("code", [KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._QUEUE_FULL])
def test_other_transient_delivery_failures_are_waited_out(code):
    clock = FakeClock()
    fake = FakeProducer(fail_rounds=1, error=code)
    producer = producer_with(fake, clock)
    producer.produce("alerts", b"k", b"v")
    producer.flush()
    assert fake.delivered == [("x.alerts", b"k", b"v")]


def test_a_message_kafka_refuses_still_fails_loudly():
    clock = FakeClock()
    producer = producer_with(FakeProducer(fail_rounds=1, error=KafkaError.MSG_SIZE_TOO_LARGE), clock)
    producer.produce("alerts", b"k", b"v" * 10)
    with pytest.raises(DeliveryError, match="rejected 1 message"):
        producer.flush()
    assert clock.sleeps == []


def test_kafka_unreachable_beyond_the_limit_stops_the_flow():
    clock = FakeClock()
    fake = FakeProducer(fail_rounds=10**6, error=KafkaError._MSG_TIMED_OUT)
    producer = producer_with(fake, clock)
    producer.produce("alerts", b"k", b"v")
    real_flush = fake.flush

    def slow_flush(timeout=None):  # librdkafka reports a timeout after message.timeout.ms
        clock.now += 30
        return real_flush(timeout)

    fake.flush = slow_flush
    with pytest.raises(OutageError, match="Kafka unreachable"):
        producer.flush()
    assert fake.delivered == []
