import numpy as np
import pytest

from transferkit.errors import UserError
from transferkit.select.options import LearnedRankerOptions
from transferkit.select.pipeline import PairFeatures, evaluate_lodo, standardized_columns
from transferkit.select.ranker import RankerConfig, RankExample
from transferkit.select.trainers import RankerTrainer, TrainConfig


def test_standardized_columns():
    out = standardized_columns([{"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 2.0, "c": 2.0}, {}], ["a", "b", "c"])
    np.testing.assert_allclose(out[:, 0], [-1, 1, 0])  # z-scored over a, b; c missing -> the mean (0)
    assert not out[:, 1:].any()  # a constant column and an empty one carry nothing


def _signal_in_scores(num_datasets=8, num_models=6, seed=0):
    """Model codes and dataset tokens carry nothing: accuracies are drawn afresh per dataset, and one
    training-free score is the accuracy plus a little noise."""
    rng = np.random.default_rng(seed)
    codes = rng.normal(size=(num_models, 8)).astype(np.float32)
    models = [f"m{i}" for i in range(num_models)]
    examples, scores = [], {"oracle": {}}
    for d in range(num_datasets):
        acc = rng.uniform(0.5, 0.9, num_models)
        key = f"d{d}"
        scores["oracle"][key] = dict(zip(models, acc + rng.normal(0, 0.01, num_models)))
        tokens = rng.normal(size=(4, 3)).astype(np.float32)
        examples.append(RankExample(key, tokens, codes, acc, models))
    truth = {e.dataset: dict(zip(e.models, e.targets)) for e in examples}
    return examples, truth, scores


def _trainer():
    return RankerTrainer(
        model=RankerConfig(d_model=16, heads=2, layers=1, encoder_layers=0, dropout=0.0),
        train=TrainConfig(max_epochs=120, lr=3e-3, patience=0, val_fraction=0, scheduler="none"),
    )


def test_score_features_carry_the_signal_the_embeddings_do_not():
    examples, truth, scores = _signal_in_scores()
    without = evaluate_lodo(examples, _trainer).summary()["ranker"]["kendall_tau"]
    features = PairFeatures(["scores"], truth, scores, ["oracle"])
    with_scores = evaluate_lodo(examples, _trainer, features=features).summary()["ranker"]["kendall_tau"]
    assert with_scores > 0.7 and with_scores > without + 0.5, (with_scores, without)


def test_the_prior_feature_never_sees_the_held_out_dataset():
    examples, truth, scores = _signal_in_scores(num_datasets=4)
    features = PairFeatures(["prior", "scores"], truth, scores, ["oracle"])
    assert features.names == ["score:oracle", "prior: mean rank"]
    ex = examples[0]
    a = features.attach(ex, {"d0", "d1"})
    changed = PairFeatures(["prior", "scores"], {**truth, "d0": {m: -v for m, v in truth["d0"].items()},
                                                  "d1": {m: -v for m, v in truth["d1"].items()}}, scores, ["oracle"])  # fmt: skip
    np.testing.assert_array_equal(changed.attach(ex, {"d0", "d1"}).model_codes, a.model_codes)
    assert a.model_codes.shape == (6, 8 + 2)
    # including d1 changes the prior column: it is computed from the accuracies it is given
    assert not np.array_equal(features.attach(ex, {"d0"}).model_codes[:, -1], a.model_codes[:, -1])


@pytest.mark.parametrize("features", [["logme"], ["prior", "prior"]])
def test_unknown_or_repeated_features_are_refused(features):
    with pytest.raises(UserError, match="features"):
        LearnedRankerOptions(features=features)
