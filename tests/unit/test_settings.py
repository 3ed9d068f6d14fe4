from pathlib import Path

import pytest

from shopstream.settings import ConfigError, Settings


def test_defaults_match_the_contract():
    settings = Settings.from_env({})
    assert settings.kafka_bootstrap_servers == "localhost:9092"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.topic("orders") == "orders"
    assert settings.redis_key("kpi:latest") == "shopstream:kpi:latest"


def test_prefix_renames_every_topic():
    settings = Settings.from_env({"SHOPSTREAM_TOPIC_PREFIX": "staging."})
    assert settings.topic("dead-letters") == "staging.dead-letters"


def test_partitions_never_fewer_than_workers():
    settings = Settings.from_env({"SHOPSTREAM_PROCESSES": "3", "SHOPSTREAM_WORKERS_PER_PROCESS": "2"})
    assert settings.topic_partitions == 6


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SHOPSTREAM_PROCESSES": "two"}, "SHOPSTREAM_PROCESSES must be an integer, got 'two'"),
        ({"SHOPSTREAM_PROCESSES": "0"}, "SHOPSTREAM_PROCESSES must be at least 1"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "localhost"}, "KAFKA_BOOTSTRAP_SERVERS must be a comma-separated list of host:port"),
        ({"REDIS_URL": "http://localhost:6379"}, "REDIS_URL must start with redis://"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_kafka_security_settings_pass_through():
    settings = Settings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISMS": "PLAIN",
            "KAFKA_SASL_USERNAME": "shop",
            "KAFKA_SSL_CA_LOCATION": "/etc/ca.pem",
            "KAFKA_HEAP_OPTS": "-Xmx1g",  # not a client setting: must not leak into librdkafka
        }
    )
    assert settings.kafka_config() == {
        "bootstrap.servers": "localhost:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": "shop",
        "ssl.ca.location": "/etc/ca.pem",
    }


def test_to_env_reproduces_the_settings():
    settings = Settings.from_env(
        {"SHOPSTREAM_PROCESSES": "2", "SHOPSTREAM_RECOVERY_DIR": "/tmp/rec", "KAFKA_SASL_USERNAME": "u"}
    )
    assert Settings.from_env(settings.to_env()) == settings
    assert settings.recovery_dir == Path("/tmp/rec")


def test_alert_producers_are_named_flows_and_shopstream_run_fills_them_in():
    from shopstream.runner import with_alert_producers

    assert Settings.from_env({"SHOPSTREAM_ALERT_PRODUCERS": " stock,fraud ,stock"}).alert_producer_names == (
        "fraud", "stock")
    with pytest.raises(ConfigError, match="SHOPSTREAM_ALERT_PRODUCERS"):
        Settings.from_env({"SHOPSTREAM_ALERT_PRODUCERS": "stock,churn"})
    plain = Settings.from_env({})
    assert with_alert_producers(plain, ["alerts", "stock", "churn", "intake"]).alert_producer_names == (
        "intake", "stock")
    assert with_alert_producers(plain, ["stock", "funnel"]).alert_producers == ""  # no router to hold
    assert with_alert_producers(plain, ["alerts"]).alert_producers == ""  # alone: no hold
    chosen = Settings.from_env({"SHOPSTREAM_ALERT_PRODUCERS": "fraud"})
    assert with_alert_producers(chosen, ["alerts", "stock"]).alert_producer_names == ("fraud",)
