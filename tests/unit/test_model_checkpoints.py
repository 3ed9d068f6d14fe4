"""Versioned model checkpoints: next version, latest pointer, rollback, pruning, a river model round trip."""

from operators.churn_model import ChurnModel, ModelRules
from operators.rfm import RfmRules
from state.model_checkpoints import ModelStore


def test_versions_grow_and_latest_follows(tmp_path):
    store = ModelStore(tmp_path, keep=3)
    assert store.load("m") is None and store.versions("m") == []
    assert store.save("m", {"w": 1}, {"labels": 10}) == 1
    assert store.save("m", {"w": 2}, {"labels": 20}) == 2
    latest = store.load("m")
    assert (latest.version, latest.model, latest.meta) == (2, {"w": 2}, {"labels": 20})
    assert store.load("m", version=1).model == {"w": 1}  # roll back to an earlier version
    for w in range(3, 7):
        store.save("m", {"w": w})
    assert store.versions("m") == [4, 5, 6]
    assert not list(tmp_path.glob("m/.*"))  # no temporary files left behind


def test_a_river_model_round_trips_with_its_predictions_and_waiting_labels(tmp_path):
    names = RfmRules().feature_names
    model = ChurnModel(names, ModelRules(batch_size=2, min_labels_per_class=1))
    cold = model.score(tuple(0.0 for _ in names))
    x = tuple(float(i % 5) for i in range(len(names)))
    for label in (True, False, True, True, False):
        model.learn(x, label, now=0)
    store = ModelStore(tmp_path)
    store.save("churn", model)
    restored = store.load("churn").model
    assert restored.score(x) == model.score(x) != cold and restored.labels_learned == 5
    restored.learn_waiting()  # the fifth label was waiting for its batch, and kept it across the save
    assert restored.batches_learned == model.batches_learned + 1
    assert restored.compatible_with(names) and not restored.compatible_with(names[:-1])
