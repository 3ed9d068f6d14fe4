"""`fraud train --from-topic` and `churn train` on the real broker: any topic name is read,
and a topic with nothing usable (or no topic at all) fails with a message, saving nothing."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from shopstream.cli import main
from simulators import generate
from simulators.histories import generate_history
from simulators.timeline import DAY
from state.model_checkpoints import ModelStore
from tests.integration.kafka_helpers import produce

pytestmark = pytest.mark.integration


@pytest.fixture
def env(settings, tmp_path, monkeypatch):
    for name, value in replace(settings, fraud_model_dir=tmp_path / "models",
                               churn_model_dir=tmp_path / "models").to_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SHOPSTREAM_FRAUD_LABEL_HORIZON_DAYS", "1")
    return ModelStore(tmp_path / "models")


def create_topic(settings, name):
    admin = AdminClient(settings.kafka_config())
    for future in admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)]).values():
        future.result(30)


def produce_literal(settings, topic, messages):
    """Produce to a topic by its real name (no prefix)."""
    return produce(replace(settings, topic_prefix=""), topic, messages)


def clicks(n):
    return [(b"u", orjson.dumps({"event_id": f"e{i}", "ts": 1_763_683_200_000 + i, "user_id": "u", "session_id": "s",
                                 "type": "page_view", "channel": "app", "region": "x", "device": "d"}))
            for i in range(n)] + [(b"u", b"\xff not json")]


def test_fraud_train_reads_any_topic_and_fails_on_one_without_payments(settings, env, capsys):
    wrong = f"{settings.topic_prefix}some.other.payments"
    create_topic(settings, wrong)
    produce_literal(settings, wrong, clicks(200))
    assert main(["fraud", "train", "--from-topic", wrong]) == 1
    err = capsys.readouterr().err
    assert f"no usable payment events in topic {wrong} (201 messages read" in err and "nothing saved" in err
    assert env.versions("fraud") == []

    assert main(["fraud", "train", "--from-topic", f"{settings.topic_prefix}no.such.topic"]) == 1
    assert "does not exist" in capsys.readouterr().err

    archive = f"{settings.topic_prefix}archive.payments"
    create_topic(settings, archive)
    sim = generate(("card_testing",), seed=4, duration_ms=3 * DAY, shoppers=2000)
    payments = [(e.key, e.value) for e in sim if e.topic == "payments"]
    produce_literal(settings, archive, payments)
    assert main(["fraud", "train", "--from-topic", archive]) == 0
    assert f"replayed {len(payments):,} payment events" in capsys.readouterr().out
    assert len(env.versions("fraud")) == 1
    # The contract name still means the prefixed topic, which is empty here.
    assert main(["fraud", "train", "--from-topic", "payments"]) == 1
    assert f"no usable payment events in topic {settings.topic('payments')} (0 messages read)" in capsys.readouterr().err
    assert len(env.versions("fraud")) == 1


def test_churn_train_reads_any_topics_and_fails_on_empty_ones(settings, env, capsys):
    assert main(["churn", "train"]) == 1  # the contract topics exist but are empty
    assert "no usable order or clickstream events" in capsys.readouterr().err
    assert env.versions("churn") == []

    orders = f"{settings.topic_prefix}archive.orders"
    create_topic(settings, orders)
    history = generate_history(150, seed=3, duration_ms=200 * DAY)
    produce_literal(settings, orders, [(e.key, e.value) for e in history if e.topic == "orders"])
    assert main(["churn", "train", "--orders-topic", orders]) == 0
    assert "churn model v1 saved" in capsys.readouterr().out
    assert ModelStore(env.root).load("churn").model.labels_learned > 0
