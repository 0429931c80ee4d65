"""Param groups, LR scaling and schedules (DESIGN.md convention 2)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from transferkit.backbones.base import Backbone, groups_from_patterns
from transferkit.errors import UserError
from transferkit.heads.classification import ClassificationHead
from transferkit.tasks.optim import (
    OptimConfig,
    build_param_groups,
    create_optimizer,
    create_scheduler,
    layer_ids,
    resolve_optim_config,
    scaled_lr,
)


class TinyViT(Backbone):
    """A 3-block token model implementing the Backbone interface, for optimiser tests."""

    family = "test"
    num_blocks = 3

    def __init__(self) -> None:
        super().__init__(
            name="tiny",
            pretrained=False,
            embed_dim=8,
            patch_size=4,
            num_prefix_tokens=1,
            input_size=8,
            pooling="cls",
        )
        self.patch_embed = nn.Conv2d(3, 8, 4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(3))
        self.norm = nn.LayerNorm(8)

    def _forward_tokens(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1) + self.pos_embed
        for b in self.blocks:
            t = t + b(t)
        return self.norm(t)

    def layer_groups(self):
        names = [n for n, _ in self.named_parameters()]
        return groups_from_patterns(names, r"^(patch_embed|cls_token|pos_embed)", r"^blocks\.(\d+)\.", 3)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}


def _groups(layer_decay=0.5, lr_mult=None):
    bb = TinyViT()
    head = ClassificationHead(8, 3)
    return bb, build_param_groups(
        bb, head, lr=1.0, weight_decay=0.05, layer_decay=layer_decay, lr_mult=lr_mult
    )


def test_layer_decay_scales_increase_with_depth():
    _, groups = _groups(layer_decay=0.5)
    by_layer = {}
    for g in groups:
        by_layer.setdefault(g["layer_id"], set()).add(g["lr_scale"])
    # 5 backbone groups (stem, 3 blocks, final norm) + head
    assert sorted(by_layer) == [0, 1, 2, 3, 4, 5]
    scales = [by_layer[i].pop() for i in range(6)]
    assert scales == pytest.approx([0.5**4, 0.5**3, 0.5**2, 0.5, 1.0, 1.0])
    assert all(a < b for a, b in zip(scales[:5], scales[1:5]))
    for g in groups:
        assert g["lr"] == pytest.approx(g["lr_scale"])


def test_no_weight_decay_on_1d_and_declared_params():
    _, groups = _groups()
    decay = {n for g in groups if g["weight_decay"] > 0 for n in g["param_names"]}
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["param_names"]}
    assert "backbone.pos_embed" in no_decay and "backbone.cls_token" in no_decay
    assert "backbone.blocks.0.0.weight" in no_decay  # LayerNorm weight (1-D)
    assert "backbone.blocks.0.1.bias" in no_decay
    assert "head.fc.bias" in no_decay
    assert "backbone.blocks.0.1.weight" in decay and "head.fc.weight" in decay
    assert "backbone.patch_embed.weight" in decay


def test_every_trainable_param_in_exactly_one_group_and_frozen_excluded():
    bb = TinyViT()
    head = ClassificationHead(8, 3)
    bb.blocks[0].requires_grad_(False)
    groups = build_param_groups(bb, head, lr=0.1, weight_decay=0.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    expected = {id(p) for p in list(bb.parameters()) + list(head.parameters()) if p.requires_grad}
    assert set(ids) == expected


def test_component_lr_multipliers():
    _, groups = _groups(layer_decay=1.0, lr_mult={"head": 10.0, "patch_embed": 0.1})
    comp = {g["component"]: g["lr"] for g in groups}
    assert comp["head"] == pytest.approx(10.0)
    assert comp["patch_embed"] == pytest.approx(0.1)
    assert comp["backbone"] == pytest.approx(1.0)
    with pytest.raises(UserError, match="lr_mult"):
        resolve_optim_config(OptimConfig(lr_mult={"decoder": 2.0}), "finetune")


def test_injected_params_take_their_module_group():
    bb = TinyViT()
    # a parameter added after layer_groups() was defined (as LoRA injection does) inherits its block's group
    bb.blocks[1][1].register_parameter("lora_A", nn.Parameter(torch.zeros(2, 8)))
    ids, n = layer_ids(bb)
    assert n == 5
    assert ids["blocks.1.1.lora_A"] == ids["blocks.1.1.weight"] == 2


def test_lr_scaling_rule_and_defaults():
    cfg = resolve_optim_config(OptimConfig(), "finetune")
    assert cfg.name == "adamw" and cfg.weight_decay == 0.05 and cfg.layer_decay == 0.75
    assert scaled_lr(cfg, 512) == pytest.approx(1e-3 * 2)
    assert scaled_lr(OptimConfig(lr=0.3), 512) == 0.3
    lp = resolve_optim_config(OptimConfig(weight_decay=0.01), "linear_probe")
    assert lp.name == "sgd" and lp.weight_decay == 0.01  # user value wins over the paradigm default
    with pytest.raises(UserError, match="adaptation"):
        resolve_optim_config(OptimConfig(), "distill")


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_optimizers_step_and_keep_group_lrs(name):
    bb = TinyViT()
    head = ClassificationHead(8, 3)
    cfg = resolve_optim_config(OptimConfig(name=name, layer_decay=0.5), "finetune")
    groups = build_param_groups(bb, head, lr=0.01, weight_decay=0.05, layer_decay=0.5)
    opt = create_optimizer(groups, cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in groups])
    loss = head(bb(torch.rand(2, 3, 8, 8))).sum()
    loss.backward()
    before = bb.blocks[2][1].weight.detach().clone()
    opt.step()
    assert not torch.equal(before, bb.blocks[2][1].weight)
    with pytest.raises(UserError, match="unknown optimizer"):
        create_optimizer(groups, OptimConfig(name="nope"))


@pytest.mark.parametrize("min_lr", [0.0, 0.1])
def test_warmup_cosine_schedule(min_lr):
    """Linear warmup over warmup_epochs, then cosine to min_lr x peak (transformers' schedule)."""
    w = nn.Linear(2, 2)
    opt = torch.optim.SGD(w.parameters(), lr=1.0)
    cfg = resolve_optim_config(OptimConfig(warmup_epochs=1.0, min_lr=min_lr), "finetune")
    sched = create_scheduler(opt, cfg, total_steps=110, steps_per_epoch=10)
    f = []
    for _ in range(111):
        f.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert f[0] == 0.0 and f[5] == pytest.approx(0.5) and f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(min_lr + (1 - min_lr) * 0.5) and f[110] == pytest.approx(min_lr, abs=1e-9)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    const = create_scheduler(
        torch.optim.SGD(w.parameters(), lr=1.0),
        OptimConfig(scheduler="constant", warmup_epochs=0),
        total_steps=5,
        steps_per_epoch=5,
    )
    assert const.get_last_lr() == [1.0]


def test_schedule_keeps_layer_decay_ratios():
    bb, head = TinyViT(), ClassificationHead(8, 3)
    cfg = resolve_optim_config(OptimConfig(warmup_epochs=1.0), "finetune")
    groups = build_param_groups(bb, head, lr=1.0, weight_decay=0.0, layer_decay=0.5)
    opt = create_optimizer(groups, cfg)
    sched = create_scheduler(opt, cfg, total_steps=20, steps_per_epoch=10)
    for _ in range(15):
        opt.step()
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    expected = 0.5 * (1 + math.cos(math.pi * 5 / 10))
    assert [lr / g["lr_scale"] for lr, g in zip(lrs, groups)] == pytest.approx([expected] * len(lrs))
