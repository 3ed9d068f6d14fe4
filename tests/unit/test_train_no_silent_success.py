"""`fraud train` and `churn train` fail loudly and save nothing when there is nothing to
learn, and read any topic name."""

from __future__ import annotations

import orjson

from shopstream import churn_cli, fraud_cli
from shopstream.cli import main
from shopstream.settings import Settings
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import DAY
from state.kafka import InputRecord
from state.model_checkpoints import ModelStore
from state.topic_history import resolve_topic


def junk(topic="payments", n=50):
    clicks = [orjson.dumps({"event_id": f"e{i}", "ts": 1_763_683_200_000 + i, "user_id": "u", "session_id": "s",
                            "type": "page_view", "channel": "app", "region": "x", "device": "d"}) for i in range(n)]
    return [InputRecord(topic, 0, i, value, 0) for i, value in enumerate(clicks + [b"{not json"])]


def test_contract_names_get_the_prefix_and_any_other_name_is_used_as_is():
    settings = Settings.from_env({}, topic_prefix="t7.")
    assert resolve_topic(settings, "payments") == "t7.payments"
    assert resolve_topic(settings, "some.other.payments") == "some.other.payments"
    assert resolve_topic(settings, "t7.payments") == "t7.payments"


def test_fraud_train_from_a_topic_without_payments_fails_and_saves_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SHOPSTREAM_FRAUD_MODEL_DIR", str(tmp_path))
    read = []
    monkeypatch.setattr(fraud_cli, "read_to_end", lambda settings, topics: read.append(topics) or junk())
    assert main(["fraud", "train", "--from-topic", "some.other.payments"]) == 1
    assert read == [{"some.other.payments": "payments"}]
    err = capsys.readouterr().err
    assert "no usable payment events in topic some.other.payments (51 messages read" in err
    assert "nothing saved" in err and "replayed" not in err
    assert ModelStore(tmp_path).versions("fraud") == []


def test_fraud_train_reads_payments_from_any_topic_name(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SHOPSTREAM_FRAUD_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("SHOPSTREAM_FRAUD_LABEL_HORIZON_DAYS", "1")
    sim = generate(("card_testing",), seed=2, duration_ms=3 * DAY, shoppers=2000)
    payments = input_records(e for e in sim if e.topic == "payments")
    monkeypatch.setattr(fraud_cli, "read_to_end", lambda settings, topics: payments)
    assert main(["fraud", "train", "--from-topic", "archive.payments-2024"]) == 0
    assert f"replayed {len(payments):,} payment events" in capsys.readouterr().out
    assert len(ModelStore(tmp_path).versions("fraud")) == 1


def test_fraud_train_that_learns_no_label_fails_and_keeps_the_latest_model(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SHOPSTREAM_FRAUD_MODEL_DIR", str(tmp_path))
    # Two hours of payments: none is past the 30-day label horizon and no chargeback has come.
    assert main(["fraud", "train", "--simulate", "normal", "--duration", "2h", "--shoppers", "2000"]) == 1
    err = capsys.readouterr().err
    assert "learned no label" in err and "SHOPSTREAM_FRAUD_LABEL_HORIZON" in err
    assert ModelStore(tmp_path).versions("fraud") == []


def test_churn_train_without_usable_events_fails_and_saves_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SHOPSTREAM_CHURN_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("SHOPSTREAM_TOPIC_PREFIX", "p.")
    read = []
    monkeypatch.setattr(churn_cli, "read_to_end", lambda settings, topics: read.append(topics) or junk("orders"))
    assert main(["churn", "train", "--orders-topic", "archive.orders", "--clickstream-topic", "clickstream"]) == 1
    assert read == [{"archive.orders": "orders", "p.clickstream": "clickstream"}]
    err = capsys.readouterr().err
    assert "no usable order or clickstream events" in err and "nothing saved" in err
    assert ModelStore(tmp_path).versions("churn") == []


def test_churn_train_on_a_history_too_short_for_labels_fails(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SHOPSTREAM_CHURN_MODEL_DIR", str(tmp_path))
    assert main(["churn", "train", "--simulate-customers", "100", "--days", "7"]) == 1
    err = capsys.readouterr().err
    assert "taught no label" in err and "nothing saved" in err
    assert ModelStore(tmp_path).versions("churn") == []


def test_churn_train_with_a_horizon_longer_than_the_history_is_reported_not_learned(monkeypatch, tmp_path, capsys):
    """Issue 16: a horizon longer than the history resolves no label (each is learned one horizon
    after its label date); a model taught nothing, or one outcome only, must not become the latest."""
    monkeypatch.setenv("SHOPSTREAM_CHURN_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("SHOPSTREAM_CHURN_HORIZON", "250d")
    assert main(["churn", "train", "--simulate-customers", "300", "--days", "200"]) == 1
    err = capsys.readouterr().err
    assert "taught no label" in err and "SHOPSTREAM_CHURN_HORIZON (250 days)" in err and "nothing saved" in err
    assert ModelStore(tmp_path).versions("churn") == []
