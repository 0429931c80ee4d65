"""The one-pass linear-probe grid: selection on val, exact per-head SGD, feature variants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transferkit.errors import UserError
from transferkit.probe.linear import LinearGridConfig, Variant, train_linear_grid


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


def test_grid_equals_independent_heads_trained_with_torch_sgd():
    """Per-head LRs via gradient scaling == one torch SGD param group per head (DINOv2's setup)."""
    feats, labels = splits(8, separation=0.5)
    lrs, wds, batch, epochs, classes = (0.05, 0.5), (0.0, 1e-2), 64, 3, 4
    cfg = LinearGridConfig(
        learning_rates=lrs, epochs=epochs, batch_size=batch, weight_decays=wds, normalize=False, seed=3
    )
    res = train_linear_grid([Variant("v", feats)], labels, classes, cfg)
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
            loss = sum(F.cross_entropy(h(x[idx]), y[idx]) for h in heads)
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
