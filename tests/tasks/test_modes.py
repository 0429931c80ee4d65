"""Train and eval modes during training, per paradigm: what trains is in train mode (dropout on), every frozen
part in eval mode. The pretrained MiniLM comes from ``from_pretrained`` in eval mode, the case that used to
fine-tune with its dropout off."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferkit.tasks.classification import ImageClassifier
from transferkit.tasks.detection import DetectionTask
from transferkit.tasks.modes import frozen_parts
from transferkit.tasks.ssl_dino import DinoContinuation


def training_flags(module: nn.Module) -> dict[str, bool]:
    return {n: m.training for n, m in module.named_modules() if n}


def classifier(adaptation: str, **kw) -> ImageClassifier:
    m = ImageClassifier(
        backbone={"name": "minilm-l6"}, adaptation=adaptation, num_classes=3, image_size=32, **kw
    )
    m.configure_model()
    m.eval()  # whatever mode the modules were left in, the epoch start decides
    m.on_train_epoch_start()
    return m


def dropout_changes_the_output(m: ImageClassifier) -> bool:
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        return not torch.equal(m.backbone(x), m.backbone(x))


def test_finetune_trains_every_module_with_dropout_on():
    m = classifier("finetune")
    assert all(training_flags(m).values())
    assert sum(isinstance(x, nn.Dropout) for x in m.modules()) >= 13 and dropout_changes_the_output(m)


def test_freeze_blocks_puts_the_frozen_prefix_of_a_vit_in_eval_mode():
    m = ImageClassifier(
        backbone={"name": "vit-micro", "pretrained": False, "drop_path_rate": 0.2},
        adaptation="finetune", freeze_blocks=2, num_classes=3, image_size=32,
    )  # fmt: skip
    m.configure_model()
    m.on_train_epoch_start()
    for i, (_, block) in enumerate(m.backbone.named_blocks()):
        assert all(x.training == (i >= 2) for x in block.modules()), i
    assert m.head.training and m.backbone.wrapped.patch_embed.training is False
    parts = [x for part in frozen_parts(m) for x in part.parameters()]
    in_parts = {n for n, p in m.backbone.named_parameters() if any(p is q for q in parts)}
    groups = m.backbone.layer_groups()
    prefix = set(groups[0]) | set(groups[1]) | set(groups[2])  # the embedding and the first 2 blocks
    assert in_parts == {n for n in prefix if n.count(".") > 1}  # (cls_token, pos_embed: no module, no mode)


def test_frozen_blocks_a_trained_patch_embed_learns_through_keep_train_mode():
    m = classifier("finetune", freeze_blocks=4)  # MiniLM's new PatchEmbed trains through the frozen blocks
    assert not m.backbone.named_blocks()[0][1].parameters().__next__().requires_grad
    assert all(training_flags(m).values()) and dropout_changes_the_output(m)


def test_lora_keeps_the_adapted_backbone_in_train_mode():
    m = classifier("lora", lora={"r": 2, "alpha": 4, "dropout": 0.1})
    assert all(training_flags(m).values()) and dropout_changes_the_output(m)  # as peft trains it
    assert any(n.endswith("lora_dropout.default") for n, _ in m.backbone.named_modules())


def test_linear_probe_keeps_the_whole_backbone_in_eval_mode():
    m = classifier("linear_probe")
    assert not any(training_flags(m.backbone).values()) and not m.backbone.training
    assert m.head.training and not dropout_changes_the_output(m)


def test_frozen_detection_backbone_is_in_eval_mode():
    task = DetectionTask(
        backbone={"name": "vit-micro", "pretrained": False, "drop_path_rate": 0.1},
        adaptation="frozen",
        decoder={"hidden_dim": 32, "num_queries": 4, "num_layers": 1, "nhead": 4, "dim_feedforward": 64},
        class_names=["a", "b"],
        image_size=32,
    )
    task.configure_model()
    task.on_train_epoch_start()
    assert not any(training_flags(task.backbone).values()) and all(training_flags(task.head).values())


@pytest.mark.parametrize("name", ["vit-micro", "minilm-l6"])
def test_dino_student_trains_and_teacher_stays_in_eval(name):
    model = DinoContinuation(
        backbone={
            "name": name,
            "pretrained": name == "minilm-l6",
            "drop_path_rate": 0.1 if name == "vit-micro" else 0.0,
        },
        head={"out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 8, "use_bn": True},
        image_size=32,
        crop_sizes=[32, 32],
    )
    model.configure_model()
    model.eval()
    model.on_train_epoch_start()
    student, teacher = training_flags(model.student), training_flags(model.teacher)
    assert all(student.values())
    bn = {n for n, x in model.teacher.named_modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)}
    assert bn and all(teacher[n] for n in bn)  # the teacher's BatchNorm normalises with batch statistics
    assert not any(
        v for n, v in teacher.items() if n not in bn and not any(n.startswith(f"{b}.") for b in bn)
    )
