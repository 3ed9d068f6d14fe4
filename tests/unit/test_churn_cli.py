"""`shopstream churn train`: replays a history and saves the next checkpoint version."""

from shopstream.cli import main
from state.model_checkpoints import ModelStore


def test_train_saves_versions_and_continue_builds_on_the_latest(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SHOPSTREAM_CHURN_MODEL_DIR", str(tmp_path))
    assert main(["churn", "train", "--simulate-customers", "150", "--days", "200", "--seed", "3"]) == 0
    first = ModelStore(tmp_path).load("churn")
    assert first.version == 1 and first.meta["labels"] == first.model.labels_learned > 0
    assert "churn model v1 saved" in capsys.readouterr().out
    assert main(["churn", "train", "--simulate-customers", "150", "--days", "200", "--seed", "4",
                 "--continue"]) == 0
    second = ModelStore(tmp_path).load("churn")
    assert second.version == 2 and second.model.labels_learned > first.model.labels_learned


def test_bad_configuration_is_reported_not_raised(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SHOPSTREAM_CHURN_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("SHOPSTREAM_CHURN_RISK_BANDS", "0.9,0.1")
    assert main(["churn", "train", "--simulate-customers", "10"]) == 2
    assert "SHOPSTREAM_CHURN_RISK_BANDS" in capsys.readouterr().err
