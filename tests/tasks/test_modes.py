"""Train and eval modes during training, per paradigm: what trains is in train mode (dropout on), every frozen
part in eval mode. The pretrained MiniLM comes from ``from_pretrained`` in eval mode, the case that used to
fine-tune with its dropout off. In a fit the modes are set where Lightning reads them: its model summary and its
warning of modules in eval mode at the start of training, which only a module in eval mode by accident gives."""

from __future__ import annotations

import logging
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.model_summary import summarize
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferkit.tasks.classification import ImageClassifier
from transferkit.tasks.detection import DetectionTask
from transferkit.tasks.modes import frozen_parts, note_frozen_eval_modes, release_eval_warning
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


# ---------------------------------------------------------------------- modes where Lightning reads them
class RandomImages(L.LightningDataModule):
    batch_size = 4

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        images, labels = torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 3, (8,), generator=g)
        return DataLoader(TensorDataset(images, labels), batch_size=self.batch_size)


class ModeRecorder(L.Callback):
    """The modes Lightning's model summary counts (it runs in a callback's ``on_fit_start``) and the modes of
    every training step."""

    def __init__(self) -> None:
        self.summary: dict[str, int] = {}
        self.steps: list[dict[str, bool]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.summary = summarize(pl_module, max_depth=-1).total_training_modes

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self.steps.append(training_flags(pl_module))


class HeadInEval(L.Callback):
    """A module put in eval mode that transferkit did not decide on (callbacks start before the module)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.head.eval()


@pytest.fixture(scope="module")
def tiny_pretrained_bert(tmp_path_factory) -> str:
    """A tiny random BERT written by ``save_pretrained``: built from it, a backbone comes from ``from_pretrained``
    and so in eval mode, as MiniLM does."""
    from transformers import AutoModel

    from transferkit.backbones.language import tiny_config

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-bert")
    AutoModel.from_config(tiny_config("bert")).save_pretrained(out)
    return str(out)


def fit(model: ImageClassifier, *callbacks: L.Callback) -> tuple[list[str], bool]:
    """One epoch of two steps; the warnings it gave, and whether a warning filter of
    :func:`note_frozen_eval_modes` outlived the start of training."""
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, callbacks=list(callbacks),
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=RandomImages())
        left = any(f[1] is not None and "eval mode" in f[1].pattern for f in warnings.filters)
    return [str(w.message) for w in caught], left


def tiny_classifier(path: str, adaptation: str) -> ImageClassifier:
    return ImageClassifier(
        backbone={"name": path, "pretrained": True}, adaptation=adaptation, num_classes=3, image_size=32
    )


def test_a_built_hugging_face_backbone_starts_in_eval_mode(tiny_pretrained_bert):
    m = tiny_classifier(tiny_pretrained_bert, "finetune")
    m.configure_model()  # outside a fit: the modes are left as built
    assert not m.backbone.lm.training and m.head.training


def test_finetune_fit_starts_in_train_mode_without_lightnings_eval_warning(tiny_pretrained_bert, one_thread):
    m, rec = tiny_classifier(tiny_pretrained_bert, "finetune"), ModeRecorder()
    caught, left = fit(m, rec)
    assert not [w for w in caught if "eval mode" in w], caught
    n_modules = sum(1 for _ in m.modules()) - 1  # the summary leaves out the root
    assert rec.summary == {"train": n_modules, "eval": 0}
    assert len(rec.steps) == 2 and all(all(flags.values()) for flags in rec.steps)
    assert sum(isinstance(x, nn.Dropout) for x in m.backbone.modules()) >= 5 and not left


def test_linear_probe_fit_keeps_the_frozen_backbone_in_eval_mode_and_says_so(
    tiny_pretrained_bert, one_thread, caplog
):
    m, rec = tiny_classifier(tiny_pretrained_bert, "linear_probe"), ModeRecorder()
    with caplog.at_level(logging.INFO, logger="transferkit.tasks.modes"):
        caught, left = fit(m, rec)
    n_backbone = sum(1 for _ in m.backbone.modules())
    assert (
        rec.summary["eval"] == n_backbone
        and rec.summary["train"] == sum(1 for _ in m.modules()) - 1 - n_backbone
    )
    for flags in rec.steps:
        assert not any(v for n, v in flags.items() if n == "backbone" or n.startswith("backbone."))
        assert all(v for n, v in flags.items() if not (n == "backbone" or n.startswith("backbone.")))
    assert len(rec.steps) == 2 and not left
    assert not [w for w in caught if "eval mode" in w], caught  # intended: one line of transferkit instead
    assert (
        f"{n_backbone} modules are in eval mode by design" in caplog.text
        and "part(s) backbone" in caplog.text
    )


def test_a_module_in_eval_mode_by_accident_keeps_lightnings_warning(tiny_pretrained_bert, one_thread):
    m = tiny_classifier(tiny_pretrained_bert, "linear_probe")
    caught, left = fit(m, HeadInEval())
    n_eval = sum(1 for _ in m.backbone.modules()) + sum(1 for _ in m.head.modules())
    assert [w for w in caught if f"Found {n_eval} module(s) in eval mode" in w], caught
    assert not left


def test_dino_teacher_is_the_intended_eval_part_batchnorm_excepted():
    model = DinoContinuation(
        backbone={"name": "vit-micro", "pretrained": False, "drop_path_rate": 0.1},
        head={"out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 8, "use_bn": True},
        image_size=32,
        crop_sizes=[32, 32],
    )
    model.configure_model()
    model.set_train_modes()
    bn = [x for x in model.teacher.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
    before = list(warnings.filters)
    try:
        assert note_frozen_eval_modes(model, keep_train=bn)
        assert len(warnings.filters) == len(before) + 1
    finally:
        release_eval_warning()
    assert warnings.filters == before
    assert not note_frozen_eval_modes(model)  # the teacher's BatchNorm layers train: not all of it is eval
    model.student.head.eval()
    assert not note_frozen_eval_modes(model, keep_train=bn)
