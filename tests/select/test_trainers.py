import json

import numpy as np
import pytest

from transferkit.errors import UserError
from transferkit.select.evaluate import rank_metrics
from transferkit.select.ranker import RankerConfig, synthetic_ranking_examples
from transferkit.select.trainers import (
    AutoencoderTrainer,
    RankerTrainer,
    TrainConfig,
    get_trainer,
    list_trainers,
    predict_scores,
    rolling_mean,
)

SMALL = dict(model_dim=16, data_dim=8, d_model=32, heads=2, layers=2, encoder_layers=1)


def _taus(model, examples):
    return [
        rank_metrics(
            dict(zip(e.models, predict_scores(model, e.data_tokens, e.model_codes))),
            dict(zip(e.models, e.targets)),
        )
        for e in examples
    ]


def test_registry_lookup():
    assert get_trainer("autoencoder") is AutoencoderTrainer
    assert get_trainer("AutoencoderTrainer") is AutoencoderTrainer
    assert get_trainer("RANKER") is RankerTrainer and get_trainer("ranker_trainer") is RankerTrainer
    assert {name for name, _, _ in list_trainers()} >= {"autoencoder", "ranker"}
    with pytest.raises(UserError, match="unknown trainer 'rnaker'.*AutoencoderTrainer"):
        get_trainer("rnaker")
    with pytest.raises(UserError, match="scheduler"):
        TrainConfig(scheduler="step")


def test_ranker_overfits_a_small_synthetic_table(tmp_path):
    examples = synthetic_ranking_examples(num_datasets=4, num_models=8, seed=0)
    trainer = RankerTrainer(
        model=RankerConfig(**SMALL, dropout=0.0),
        augment=False,
        out_dir=tmp_path,
        train=TrainConfig(
            max_epochs=100, lr=3e-3, patience=0, val_fraction=0, scheduler="cosine", warmup_epochs=5
        ),
    )
    result = trainer.fit(examples)
    taus = [m["kendall_tau"] for m in _taus(result.model, examples)]
    assert np.mean(taus) > 0.9, taus
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["epochs"]) == 100 and history["best_epoch"] is not None
    lrs = [r["lr"] for r in history["epochs"]]
    assert lrs[0] < lrs[5] and lrs[-1] < 0.1 * max(lrs)  # warm-up, then cosine decay
    assert all(np.isfinite(r["grad_norm"]) for r in history["epochs"])
    assert history["epochs"][-1]["train/loss"] < 0.5 * history["epochs"][0]["train/loss"]
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000 and (tmp_path / "model.pt").is_file()


def test_ranker_beats_a_random_ranker_on_held_out_datasets():
    examples = synthetic_ranking_examples(num_datasets=20, num_models=8, interaction=0.5, seed=0)
    trainer = RankerTrainer(
        model=RankerConfig(**SMALL), train=TrainConfig(max_epochs=60, lr=3e-3, patience=20, batch_size=8)
    )
    result = trainer.fit(examples[:16])
    held = _taus(result.model, examples[16:])
    # a random order has expected tau 0 and top-1 hit 1/8
    assert np.mean([m["kendall_tau"] for m in held]) > 0.4
    assert result.history["val_datasets"] and not set(result.history["val_datasets"]) & {
        e.dataset for e in examples[16:]
    }


def test_autoencoder_trainer_early_stopping_clipping_and_plateau(tmp_path):
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(12, 3))
    vectors = (latent @ rng.normal(size=(3, 256)) + 0.01 * rng.normal(size=(12, 256))).astype(np.float32)
    trainer = AutoencoderTrainer(
        model={"hidden": [64], "code_dim": 8, "dropout": 0.0},
        out_dir=tmp_path,
        train=TrainConfig(
            max_epochs=400, lr=1e-2, patience=5, plateau_patience=2, grad_clip=0.5, min_delta=1e-3
        ),
    )
    result = trainer.fit(vectors, names=[f"m{i}" for i in range(12)])
    h = result.history
    assert h["stopped_early"] and h["epochs_run"] < 400
    assert len(h["names"]["val"]) == 2 and not set(h["names"]["val"]) & set(h["names"]["train"])
    assert min(r["lr"] for r in h["epochs"]) < 1e-2  # the plateau scheduler lowered the LR
    first, best = h["epochs"][0]["val/loss"], h["best_val_loss"]
    assert best < 0.5 * first
    assert result.model.embed(vectors).shape == (12, 8)
    assert json.loads((tmp_path / "history.json").read_text())["trainer"] == "autoencoder"


def test_trainer_input_errors():
    with pytest.raises(UserError, match="at least 2 weight vectors"):
        AutoencoderTrainer().fit(np.zeros((1, 64)))
    ex = synthetic_ranking_examples(num_datasets=1, num_models=3)[0]
    ex.targets = ex.targets[:2]
    with pytest.raises(UserError, match="one code and one target"):
        RankerTrainer().fit([ex])


def test_rolling_mean():
    np.testing.assert_allclose(rolling_mean([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])


def test_an_ensemble_averages_z_scored_members_and_round_trips(tmp_path):
    import torch

    from transferkit.select.ranker import RankingEnsemble, RankingTransformer, load_ranker

    examples = synthetic_ranking_examples(num_datasets=6, num_models=5, seed=3)
    trainer = RankerTrainer(
        model=RankerConfig(d_model=16, heads=2, layers=1, encoder_layers=0),
        train=TrainConfig(max_epochs=3, patience=0, val_fraction=0.2, seed=5),
        ensemble=2,
        out_dir=tmp_path,
    )
    result = trainer.fit(examples)
    model = result.model
    assert isinstance(model, RankingEnsemble) and len(model.members) == 2
    assert [m["seed"] for m in result.history["members"]] == [5, 6]
    for sub in ("member-0", "member-1", "."):
        assert (tmp_path / sub / "model.pt").is_file() and (tmp_path / sub / "history.json").is_file()
    ex = examples[0]
    codes = torch.as_tensor(ex.model_codes)[None]
    tokens = torch.as_tensor(ex.data_tokens)[None]
    with torch.no_grad():
        members = [m(codes, tokens)[0] for m in model.members]
        want = sum((s - s.mean()) / s.std(unbiased=False) for s in members) / 2
        np.testing.assert_allclose(model(codes, tokens)[0].numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    loaded = load_ranker(torch.load(tmp_path / "model.pt", weights_only=False))
    np.testing.assert_allclose(
        predict_scores(loaded, ex.data_tokens, ex.model_codes),
        predict_scores(model, ex.data_tokens, ex.model_codes),
        rtol=1e-6,
    )
    single = load_ranker(torch.load(tmp_path / "member-0" / "model.pt", weights_only=False))
    assert isinstance(single, RankingTransformer)
    with pytest.raises(UserError, match="ensemble must be >= 1"):
        RankerTrainer(ensemble=0)
