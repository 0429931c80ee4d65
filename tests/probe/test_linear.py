"""The one-pass linear-probe grid (selection on val, exact per-head SGD, feature variants) and the L-BFGS
logistic-regression protocol against scikit-learn."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transferkit.errors import UserError
from transferkit.probe.linear import (
    LinearGridConfig,
    LogRegConfig,
    Variant,
    train_linear_grid,
    train_logistic_regression,
)


def blobs(n: int, dim: int, classes: int, separation: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * separation
    y = torch.arange(n) % classes
    return centers[y] + torch.randn(n, dim, generator=g), y


def splits(dim: int, separation: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    feats, labels = {}, {}
    for i, (split, n) in enumerate({"train": 200, "val": 100, "test": 100}.items()):
        feats[split], labels[split] = blobs(n, dim, 4, separation, seed=i)
    return feats, labels


def test_grid_picks_the_best_head_on_val_and_reports_it_on_test():
    signal, labels = splits(16, separation=1.0)
    noise = {
        s: torch.randn(len(x), 16, generator=torch.Generator().manual_seed(7)) for s, x in signal.items()
    }
    variants = [Variant("noise", noise, {"pooling": "mean"}), Variant("signal", signal, {"pooling": "cls"})]
    cfg = LinearGridConfig(learning_rates=(1e-7, 0.1), weight_decays=(0.0,), epochs=30, batch_size=50)
    res = train_linear_grid(variants, labels, 4, cfg)

    assert len(res.heads) == 4 and res.steps == 30 * 4
    val_accs = [h["val_acc1"] for h in res.heads]
    assert res.best["val_acc1"] == max(val_accs)
    assert res.best["variant"] == "signal" and res.best["lr"] == 0.1 and res.best["pooling"] == "cls"
    assert res.val["acc1"] == pytest.approx(res.best["val_acc1"])
    # the informative head learns, the noise heads stay near chance, a 1e-7 LR does not move off init
    assert res.best["val_acc1"] > 0.9
    assert all(h["val_acc1"] < 0.45 for h in res.heads if h["variant"] == "noise")
    tiny = next(h for h in res.heads if h["variant"] == "signal" and h["lr"] == 1e-7)
    assert tiny["val_acc1"] < res.best["val_acc1"] - 0.2
    # test numbers are the chosen head's: its predictions give the reported accuracy
    assert res.test["acc1"] == pytest.approx(
        float((torch.from_numpy(res.test_pred) == labels["test"]).float().mean())
    )
    assert len(res.test["per_class_acc"]) == 4 and res.test["acc5"] == 1.0  # 4 classes: top-5 is everything
    assert set(res.to_dict()) == {"heads", "best", "val", "test", "config", "seconds", "steps"}


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_grid_equals_independent_heads_trained_with_torch_sgd(precision):
    """Per-head LRs via gradient scaling == one torch SGD param group per head (DINOv2's setup), in float32 and
    with bfloat16 matmuls (the reference heads then cast as autocast would)."""
    feats, labels = splits(8, separation=0.5)
    lrs, wds, batch, epochs, classes = (0.05, 0.5), (0.0, 1e-2), 64, 3, 4
    cfg = LinearGridConfig(
        learning_rates=lrs,
        epochs=epochs,
        batch_size=batch,
        weight_decays=wds,
        normalize=False,
        seed=3,
        precision=precision,
    )
    res = train_linear_grid([Variant("v", feats)], labels, classes, cfg)
    assert res.config["precision"] == precision
    dt = getattr(torch, precision)
    pairs = [(lr, wd) for wd in wds for lr in lrs]  # the grid's head order
    assert [(h["lr"], h["weight_decay"]) for h in res.heads] == pairs

    # reference: the same initial weights and batch order, independent nn.Linear heads, param groups
    gen = torch.Generator().manual_seed(3)
    init = torch.empty(len(pairs) * classes, 8).normal_(0.0, 0.01, generator=gen)
    heads = [torch.nn.Linear(8, classes) for _ in pairs]
    for i, h in enumerate(heads):
        with torch.no_grad():
            h.weight.copy_(init[i * classes : (i + 1) * classes])
            h.bias.zero_()
    scale = batch / 256
    groups = [
        {"params": [h.weight], "lr": lr * scale, "weight_decay": wd} for h, (lr, wd) in zip(heads, pairs)
    ]
    groups += [
        {"params": [h.bias], "lr": lr * scale, "weight_decay": 0.0} for h, (lr, _) in zip(heads, pairs)
    ]
    opt = torch.optim.SGD(groups, momentum=0.9)  # no weight decay on biases (1-D parameters)
    steps = math.ceil(200 / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    x, y = feats["train"], labels["train"]
    for _ in range(epochs):
        perm = torch.randperm(200, generator=gen)
        for i in range(steps):
            idx = perm[i * batch : (i + 1) * batch]
            loss = sum(
                F.cross_entropy(F.linear(x[idx].to(dt), h.weight.to(dt), h.bias.to(dt)).float(), y[idx])
                for h in heads
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    w = res.model.weights[0].detach().view(len(pairs), classes, 8)
    b = res.model.biases[0].detach().view(len(pairs), classes)
    for i, h in enumerate(heads):
        torch.testing.assert_close(w[i], h.weight.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b[i], h.bias.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(w[0], init[:classes])  # the heads did train
    if precision == "bfloat16":  # the matmuls did run in bfloat16: float32 training gives other weights
        full = train_linear_grid([Variant("v", feats)], labels, classes, replace(cfg, precision="float32"))
        assert not torch.allclose(full.model.weights[0], res.model.weights[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(full.model.weights[0], res.model.weights[0], rtol=0.05, atol=2e-3)


def test_standardisation_makes_the_grid_scale_free():
    feats, labels = splits(16, separation=1.0)
    scaled = {s: x * 1e4 + 50.0 for s, x in feats.items()}  # a language model's huge activations
    cfg = LinearGridConfig(learning_rates=(0.01, 0.1), epochs=10, batch_size=50)
    a = train_linear_grid([Variant("v", feats)], labels, 4, cfg)
    b = train_linear_grid([Variant("v", scaled)], labels, 4, cfg)
    assert b.val["acc1"] == pytest.approx(a.val["acc1"], abs=0.02)
    assert b.stats["v"][1].mean() > 1e3  # the std it divided by


def test_grid_rejects_bad_input():
    feats, labels = splits(4, separation=1.0)
    with pytest.raises(UserError, match="learning_rates"):
        train_linear_grid([Variant("v", feats)], labels, 4, LinearGridConfig(learning_rates=(0.0,)))
    with pytest.raises(UserError, match="labels"):
        train_linear_grid([Variant("v", feats)], {"train": labels["train"]}, 4, LinearGridConfig(epochs=1))
    short = {**feats, "val": feats["val"][:10]}
    with pytest.raises(UserError, match="10 val features"):
        train_linear_grid([Variant("v", short)], labels, 4, LinearGridConfig(epochs=1))
    assert np.isfinite(
        train_linear_grid([Variant("v", feats)], labels, 4, LinearGridConfig(epochs=1)).val["loss"]
    )


def test_a_streaming_grid_equals_the_in_memory_grid_on_memory_mapped_features(digits_folder, tmp_path):
    from transferkit.backbones import resolve_backbone
    from transferkit.data import ImageClassificationDataModule
    from transferkit.probe.cache import get_features
    from transferkit.probe.linear import feature_variants

    dm = ImageClassificationDataModule(source="imagefolder", path=str(digits_folder), image_size=32)
    bb = resolve_backbone("vit-micro", 32)
    fs = {s: get_features(bb, dm, s, layers=2, pooling="cls", extra_poolings=["mean"], cache_dir=tmp_path,
                          progress=False) for s in ("train", "val", "test")}  # fmt: skip
    variants = feature_variants(
        fs["train"], fs["val"], fs["test"], poolings=["cls", "cls+mean"], layers=[1, 2]
    )
    assert all(fs_._features is None for v in variants for fs_ in v.features.values())  # nothing materialised
    labels = {s: f.label_tensor() for s, f in fs.items()}
    base = dict(learning_rates=(0.01, 0.1, 1.0), epochs=6, batch_size=16)
    memory = train_linear_grid(variants, labels, 10, LinearGridConfig(**base))
    stream = train_linear_grid(variants, labels, 10, LinearGridConfig(**base, max_in_memory_mb=0))
    assert stream.best["name"] == memory.best["name"]
    assert [h["val_acc1"] for h in stream.heads] == [h["val_acc1"] for h in memory.heads]
    assert stream.test["acc1"] == memory.test["acc1"] and np.array_equal(stream.test_pred, memory.test_pred)
    for a, b in zip(stream.model.parameters(), memory.model.parameters()):
        assert torch.equal(a, b)  # the same heads, bit for bit


# ---------------------------------------------------------------------------------------------- logistic regression
def _sklearn_logreg(x_train, y_train, c):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, tol=1e-10, max_iter=20000).fit(x_train.numpy(), y_train.numpy())


def test_logistic_regression_solves_scikit_learns_objective_and_picks_the_best_c_on_val():
    """Each C's fit is scikit-learn's converged optimum of the same objective (standardised features, unpenalised
    bias); the chosen C has the best val top-1, a tie going to the lower val loss; test reports that fit."""
    feats, labels = splits(4, separation=0.7)
    powers = (-2.0, -1.0, 0.0, 1.0, 2.0)
    res = train_logistic_regression(feats, labels, 4, LogRegConfig(c_powers=powers, tol=1e-9))
    assert [row["c"] for row in res.sweep] == pytest.approx([10.0**p for p in powers])
    best = max(row["val_acc1"] for row in res.sweep)
    tied = [row for row in res.sweep if row["val_acc1"] == best]
    # this set ties C = 0.01 with larger Cs of lower val loss: the loss breaks the tie, not the order
    assert len(tied) > 1 and min(tied, key=lambda row: row["val_loss"])["c"] != tied[0]["c"]
    assert res.c == min(tied, key=lambda row: row["val_loss"])["c"]
    # DINOv2's rule keeps the smallest C of the same tie
    cfg = LogRegConfig(c_powers=powers, tol=1e-9, ties="smallest_c")
    assert train_logistic_regression(feats, labels, 4, cfg).c == tied[0]["c"]

    mean, std = feats["train"].double().mean(0), feats["train"].double().std(0, unbiased=False)
    x = {s: (v.double() - mean) / std for s, v in feats.items()}
    for row in res.sweep:
        ref = _sklearn_logreg(x["train"], labels["train"], row["c"])
        val_logp = torch.from_numpy(ref.predict_log_proba(x["val"].numpy()))
        assert row["val_loss"] == pytest.approx(float(F.nll_loss(val_logp, labels["val"])), abs=1e-6)
        assert row["val_acc1"] == pytest.approx(ref.score(x["val"].numpy(), labels["val"].numpy()))
    ref = _sklearn_logreg(x["train"], labels["train"], res.c)
    assert np.array_equal(res.test_pred, ref.predict(x["test"].numpy()))
    assert res.test["acc1"] == pytest.approx(ref.score(x["test"].numpy(), labels["test"].numpy()))


def test_logistic_regression_refit_trains_the_chosen_c_on_train_and_val():
    feats, labels = splits(6, separation=0.4)
    cfg = LogRegConfig(c_powers=(-1.0, 0.0), tol=1e-9)
    plain = train_logistic_regression(feats, labels, 4, cfg)
    refit = train_logistic_regression(feats, labels, 4, replace(cfg, refit=True))
    assert refit.c == plain.c and refit.val == plain.val  # the choice is made before the refit
    mean, std = feats["train"].double().mean(0), feats["train"].double().std(0, unbiased=False)
    x = {s: (v.double() - mean) / std for s, v in feats.items()}  # standardised with the train statistics
    ref = _sklearn_logreg(
        torch.cat([x["train"], x["val"]]), torch.cat([labels["train"], labels["val"]]), refit.c
    )
    assert np.array_equal(refit.test_pred, ref.predict(x["test"].numpy()))
    assert refit.test["loss"] == pytest.approx(
        float(F.nll_loss(torch.from_numpy(ref.predict_log_proba(x["test"].numpy())), labels["test"])),
        abs=1e-5,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config": LogRegConfig(c_powers=())}, "at least one C"),
        ({"config": LogRegConfig(max_iter=0)}, "max_iter must be >= 1"),
        ({"config": LogRegConfig(ties="largest_c")}, "ties must be one of 'val_loss', 'smallest_c'"),
        ({"features": "no val"}, "needs 'val' features and labels"),
    ],
)
def test_logistic_regression_rejects_bad_input(change, message):
    feats, labels = splits(4, separation=1.0)
    if change.get("features") == "no val":
        feats = {k: v for k, v in feats.items() if k != "val"}
    with pytest.raises(UserError, match=message):
        train_logistic_regression(feats, labels, 4, change.get("config"))
