"""The churn model's direct score equals river's pipeline output bit for bit."""

import pickle
import random

from operators.churn_model import ChurnModel
from operators.rfm import RfmRules


def feature_vector(rng: random.Random, width: int) -> list[float]:
    # zeros, small and large values: every recency/pace/orders cell and unseen cells get hit
    return [rng.choice([0.0, rng.random(), rng.random() * 6]) for _ in range(width)]


def test_the_direct_score_is_exactly_the_pipeline_probability_while_it_learns():
    names = RfmRules().feature_names
    model = ChurnModel(names)
    rng = random.Random(3)
    checked = 0
    for step in range(1500):
        for _ in range(3):
            x = feature_vector(rng, len(names))
            assert model.score(x) == model.pipeline.predict_proba_one(model._as_dict(x)).get(True, 0.0)
            checked += 1
        model.learn(feature_vector(rng, len(names)), rng.random() < 0.4)
        if step == 700:  # a restored model (recovery, checkpoint) scores the same way
            model = pickle.loads(pickle.dumps(model))
    assert checked == 4500 and model.labels_learned == 1500
