"""The classification task: every adaptation paradigm is an option of one module."""

from __future__ import annotations

import pytest
import torch

from transferkit.backbones import BackboneConfig
from transferkit.errors import UserError
from transferkit.tasks.classification import ImageClassifier, LoraOptions, RegularizationOptions


def make(adaptation="finetune", name="vit-micro", **kw) -> ImageClassifier:
    m = ImageClassifier(
        backbone=BackboneConfig(name=name), adaptation=adaptation, num_classes=4, image_size=32, **kw
    )
    m.configure_model()
    return m


def trainable(m: ImageClassifier) -> set[str]:
    return {n for n, p in m.backbone.named_parameters() if p.requires_grad}


def test_linear_probe_freezes_backbone_and_uses_bn_head():
    m = make("linear_probe")
    assert trainable(m) == set() and m.backbone_frozen
    assert isinstance(m.head.norm, torch.nn.BatchNorm1d) and not m.head.norm.affine
    assert m.head.fc.weight.std().item() == pytest.approx(0.01, rel=0.3)
    x = torch.rand(3, 3, 32, 32)
    m.train()
    m.on_train_epoch_start()
    assert not m.backbone.training and m.head.training
    logits = m(x)
    assert logits.shape == (3, 4) and logits.requires_grad
    assert m.optim_cfg.name == "sgd" and m.optim_cfg.weight_decay == 0.0


def test_finetune_trains_everything_and_freeze_blocks_freezes_prefix():
    full = make("finetune")
    groups = full.backbone.layer_groups()
    all_names = {n for g in groups for n in g}
    assert trainable(full) == {n for n, p in full.backbone.named_parameters() if p.requires_grad}
    assert trainable(full) and not isinstance(full.head.norm, torch.nn.BatchNorm1d)
    part = make("finetune", freeze_blocks=1)
    frozen = all_names - trainable(part)
    assert frozen == set(groups[0]) | set(groups[1])
    with pytest.raises(UserError, match="freeze_blocks"):
        make("finetune", freeze_blocks=99)


def test_lora_trains_only_adapters_and_head():
    m = make("lora", lora=LoraOptions(r=2, alpha=4))
    names = trainable(m)
    assert names and all("lora_" in n for n in names)
    before = m.backbone.num_params()
    assert m.backbone.num_params(trainable_only=True) < 0.2 * before
    loss = m(torch.rand(2, 3, 32, 32)).sum()
    loss.backward()
    assert all(p.grad is not None for n, p in m.backbone.named_parameters() if p.requires_grad)


def test_lora_on_language_model_trains_new_patch_embed():
    m = make("lora", name="gpt2-tiny")
    names = trainable(m)
    assert any(n.startswith("patch_embed") for n in names)
    assert any("lora_" in n for n in names)
    assert not any(n.startswith("lm.") and "lora_" not in n for n in names)


def test_finetune_never_unfreezes_what_the_adapter_froze():
    m = make("finetune", name="gpt2-tiny")
    frozen_by_adapter = {n for n, p in m.backbone.named_parameters() if not p.requires_grad}
    assert any("wte" in n for n in frozen_by_adapter)  # the LM's vocabulary is never used by images


def test_mixup_training_step_and_param_groups():
    m = make("finetune", regularization=RegularizationOptions(mixup=0.8, cutmix=1.0, label_smoothing=0.1))
    assert m.mixup_fn is not None
    x, y = torch.rand(5, 3, 32, 32), torch.randint(0, 4, (5,))  # odd batch: timm's Mixup needs even
    loss = m.training_step((x, y), 0)
    assert torch.isfinite(loss) and loss.requires_grad
    assert m.training_step(None, 0) is None  # a batch whose images were all skipped as corrupt


def test_hparams_are_plain_and_reload():
    m = make("linear_probe")
    assert isinstance(m.hparams["backbone"], dict) and m.hparams["backbone"]["name"] == "vit-micro"
    again = ImageClassifier(**dict(m.hparams))
    assert again.backbone_cfg == m.backbone_cfg and again.optim_cfg == m.optim_cfg
