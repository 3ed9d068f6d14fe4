"""`services up/down` against the real Kafka broker and redis-server, on free loopback ports."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from shopstream import services
from shopstream.settings import ALL_TOPICS, Settings
from tests.integration.ports import free_port

pytestmark = pytest.mark.integration

SURVIVOR_TOPIC = "survivor"


@pytest.fixture
def settings(tmp_path):
    # The default cache_dir, so the Kafka jars resolved once are reused.
    settings = Settings.from_env(
        {},
        kafka_bootstrap_servers=f"127.0.0.1:{free_port(span=2)}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        services_dir=tmp_path / "services",
        topic_prefix="it.",
        partitions=3,
    )
    yield settings
    services.down(settings, wipe=True)


def partition_counts(settings: Settings) -> dict[str, int]:
    metadata = AdminClient(settings.kafka_config()).list_topics(timeout=10)
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def accepts_connections(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


def produce_one(settings: Settings, topic: str) -> None:
    producer = Producer(settings.kafka_config())
    producer.produce(topic, key=b"k", value=b"still here")
    assert producer.flush(10) == 0


def message_count(settings: Settings, topic: str) -> int:
    consumer = Consumer({**settings.kafka_config(), "group.id": "test-services"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()
    return high - low


def test_up_starts_kafka_and_redis_with_every_contract_topic(settings):
    services.up(settings)

    assert redis.Redis.from_url(settings.redis_url).ping()
    counts = partition_counts(settings)
    for name in ALL_TOPICS:
        assert counts.get(settings.topic(name)) == 3, name
    statuses = services.status(settings)
    assert all(entry.running and entry.answering for entry in statuses.values())


def test_up_again_is_a_no_op(settings):
    services.up(settings)
    pids = {name: entry.pid for name, entry in services.status(settings).items()}

    services.up(settings)

    assert {name: entry.pid for name, entry in services.status(settings).items()} == pids


def test_create_topics_adds_partitions_to_a_topic_that_has_too_few(settings):
    services.up(settings)
    widened = replace(settings, partitions=5)

    services.create_topics(widened)

    assert partition_counts(settings)[settings.topic("orders")] == 5


def test_down_stops_both_and_up_restarts_on_the_same_data(settings):
    services.up(settings)
    admin = AdminClient(settings.kafka_config())
    admin.create_topics([NewTopic(SURVIVOR_TOPIC, num_partitions=1)])[SURVIVOR_TOPIC].result(10)
    produce_one(settings, SURVIVOR_TOPIC)

    services.down(settings)

    assert not accepts_connections(settings.kafka_host_port)
    assert not accepts_connections(settings.redis_host_port)
    assert not any(entry.running or entry.answering for entry in services.status(settings).values())

    services.up(settings)

    assert SURVIVOR_TOPIC in partition_counts(settings)
    assert message_count(settings, SURVIVOR_TOPIC) == 1
    assert redis.Redis.from_url(settings.redis_url).ping()
