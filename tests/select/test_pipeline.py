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


def test_offset_best_is_chosen_from_the_training_lists_and_the_untrained_ranker_is_its_ranking():
    examples, truth, scores = _signal_in_scores(num_datasets=5)
    rng = np.random.default_rng(1)
    scores["noise"] = {
        d: dict(zip(ex.models, rng.normal(size=len(ex.models)))) for d, ex in zip(truth, examples)
    }
    features = PairFeatures(["scores", "prior"], truth, scores, ["noise", "oracle"], offset="best")
    lists = [features.attach(ex, {"d0", ex.dataset}) for ex in examples[1:]]
    column, name = features.offset_column(lists)
    assert name == "score:oracle" and column == -2  # names: score:noise, score:oracle, prior: mean rank
    # the held-out dataset's accuracies play no part: flipping them changes neither the lists nor the choice
    flipped = PairFeatures(["scores", "prior"], {**truth, "d0": {m: -v for m, v in truth["d0"].items()}}, scores,
                           ["noise", "oracle"], offset="best")  # fmt: skip
    again = [flipped.attach(ex, {"d0", ex.dataset}) for ex in examples[1:]]
    assert flipped.offset_column(again) == (column, name)
    named = PairFeatures(["scores", "prior"], truth, scores, ["noise", "oracle"], offset="prior: mean rank")
    assert named.offset_column(lists) == (-1, "prior: mean rank")
    # untrained, the ranker with an offset ranks exactly as that column does (its head starts at zero)
    from transferkit.select.ranker import RankingTransformer, predict_scores

    ex = lists[0]
    model = RankingTransformer(RankerConfig(model_dim=ex.model_codes.shape[1], data_dim=3, d_model=16, heads=2,
                                            offset_column=column))  # fmt: skip
    np.testing.assert_allclose(
        predict_scores(model, ex.data_tokens, ex.model_codes), ex.model_codes[:, column]
    )


def test_an_offset_ranker_keeps_its_start_when_training_cannot_help():
    """Nothing to learn beyond the oracle score: the trained ranker keeps (or improves on) the offset's
    weighted tau, and the epoch kept is chosen on the validation lists' rankings."""
    examples, truth, scores = _signal_in_scores(num_datasets=8)
    features = PairFeatures(["scores"], truth, scores, ["oracle"], offset="best")
    result = evaluate_lodo(
        examples,
        lambda: RankerTrainer(
            model=RankerConfig(d_model=16, heads=2, layers=1, encoder_layers=0, dropout=0.0),
            train=TrainConfig(max_epochs=30, lr=3e-3, patience=0, val_fraction=0.25, scheduler="none"),
        ),
        baselines={"oracle": scores["oracle"]},
        features=features,
    )
    summary = result.summary()
    assert set(result.details["ranker_offsets"].values()) == {"score:oracle"}
    assert summary["ranker"]["weighted_tau"] >= summary["oracle"]["weighted_tau"] - 0.02, summary


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(features=[], offset="best"), "needs per-pair features"),
    ],
)
def test_offset_options_are_checked(options, message):
    with pytest.raises(UserError, match=message):
        LearnedRankerOptions(**options)
    with pytest.raises(UserError, match="unknown --ranker.offset 'score:logme'"):
        PairFeatures(["prior"], {}, {}, [], offset="score:logme")
