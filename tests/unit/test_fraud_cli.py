"""`shopstream fraud train` writes a checkpoint the flow starts from; fraud settings are validated."""

import pickle

import pytest

from flows.fraud import MODEL_NAME, FraudFlowConfig, engine_for, flow_config, latest_bundle
from operators.fraud_engine import FraudConfig
from shopstream.cli import main
from shopstream.settings import ConfigError, Settings
from state.model_checkpoints import ModelStore


def test_train_from_a_simulator_run_saves_a_versioned_checkpoint_and_the_flow_starts_from_it(
        monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SHOPSTREAM_FRAUD_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("SHOPSTREAM_FRAUD_LABEL_HORIZON_DAYS", "1")
    args = ["fraud", "train", "--simulate", "card_testing", "--duration", "3d", "--shoppers", "3000",
            "--fraud-share", "0.05"]
    assert main(args) == 0
    assert main(args) == 0  # the second run continues from the first one's checkpoint
    out = capsys.readouterr().out
    assert "replayed" in out and "legitimate labels" in out
    store = ModelStore(tmp_path)
    first, second = store.versions(MODEL_NAME)
    assert second > first
    bundle = latest_bundle(store)
    assert bundle.model.legit_labels > 0
    # The checkpoint file records the model version it holds (decisions carry that version).
    assert store.load(MODEL_NAME).meta["model_version"] == bundle.model.version
    config = FraudFlowConfig(FraudConfig(), "key-for-the-test-123", 3_600_000, 86400)
    engine = engine_for(None, config, bundle, now_ms=0)
    assert engine.bundle is bundle and engine.bundle.model.model_version.startswith(f"lr-v{bundle.model.version}+")


def test_a_fresh_retrain_is_the_model_the_flow_starts_from(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SHOPSTREAM_FRAUD_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("SHOPSTREAM_FRAUD_LABEL_HORIZON_DAYS", "1")
    args = ["fraud", "train", "--simulate", "card_testing", "--duration", "2d", "--shoppers", "2000"]
    assert main(args) == 0
    once = latest_bundle(ModelStore(tmp_path)).model.legit_labels
    assert main(args) == 0  # continues: the model has learned the history twice
    assert latest_bundle(ModelStore(tmp_path)).model.legit_labels == 2 * once
    # A fresh model has a lower model version than the one before it; it is still the latest.
    assert main([*args, "--fresh"]) == 0
    assert latest_bundle(ModelStore(tmp_path)).model.legit_labels == once


def test_train_needs_one_source(capsys):
    assert main(["fraud", "train"]) == 2
    assert "--from-topic" in capsys.readouterr().err


def test_a_resumed_engine_takes_the_new_settings_and_keeps_its_state(tmp_path):
    config = FraudFlowConfig(FraudConfig(block_good_rate=0.001), "key-for-the-test-123", 3_600_000, 86400)
    engine = engine_for(None, config, None, now_ms=0)
    engine.bundle.model.fraud_labels = 7
    resumed = pickle.loads(pickle.dumps(engine))
    changed = FraudFlowConfig(FraudConfig(block_good_rate=0.002), "key-for-the-test-123", 3_600_000, 86400)
    again = engine_for(resumed, changed, None, now_ms=5)
    assert again.bundle.model.fraud_labels == 7 and again.bundle.thresholds.block_good_rate == 0.002


def test_fraud_settings_are_validated():
    with pytest.raises(ConfigError, match="SHOPSTREAM_FRAUD_REVIEW_GOOD_BP"):
        Settings.from_env({"SHOPSTREAM_FRAUD_BLOCK_GOOD_BP": "50", "SHOPSTREAM_FRAUD_REVIEW_GOOD_BP": "20"})
    with pytest.raises(ConfigError, match="SHOPSTREAM_PSEUDONYM_KEY"):
        Settings.from_env({"SHOPSTREAM_PSEUDONYM_KEY": "short"})
    with pytest.raises(ConfigError, match="SHOPSTREAM_FRAUD_LABEL_HORIZON_DAYS must be at least 1"):
        Settings.from_env({"SHOPSTREAM_FRAUD_LABEL_HORIZON_DAYS": "0"})


def test_without_a_pseudonym_key_one_is_generated_once_and_kept(tmp_path):
    settings = Settings.from_env({}, fraud_model_dir=tmp_path)
    key = flow_config(settings).pseudonym_key
    assert len(key) >= 32 and flow_config(settings).pseudonym_key == key
    assert (tmp_path / "pseudonym.key").stat().st_mode & 0o077 == 0
    assert flow_config(Settings.from_env({}, fraud_model_dir=tmp_path, pseudonym_key="x" * 20)).pseudonym_key == "x" * 20
