"""Config mistakes of ``transferkit fit``: each is exit code 2 and one line naming the key, at ``--validate_only``
time (before any data is read or any weights load), never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from transferkit.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LP = str(CONFIGS / "classification" / "linear_probe.yaml")
FT = str(CONFIGS / "classification" / "finetune.yaml")
LORA = str(CONFIGS / "classification" / "lora.yaml")
DET = str(CONFIGS / "detection" / "detr_shapes.yaml")
VLM = str(CONFIGS / "grounding" / "qwen2_5_vl.yaml")
DINO = str(CONFIGS / "ssl" / "dino_continue.yaml")
VIT = ["--model.backbone.name", "vit-micro"]
ZERO_COSTS = [f"--model.matcher.init_args.cost_{c}={0}" for c in ("class", "bbox", "giou")]

# (config, arguments, what the one line must say); "GROUNDING" is replaced by a tiny grounding set
MISTAKES = {
    "decoder width not a multiple of 4": (DET, ["--model.decoder.hidden_dim", "30"], "decoder.hidden_dim"),
    "decoder without queries": (DET, ["--model.decoder.num_queries", "0"], "decoder.num_queries must be >= 1"),
    "all matcher costs zero": (DET, ZERO_COSTS, "matcher costs are all 0"),
    "negative matcher cost": (DET, ["--model.matcher.cost_bbox", "-1"], "matcher costs must be >= 0"),
    "no-object weight zero": (DET, ["--model.loss.eos_coef", "0"], "loss.eos_coef must be in (0, 1]"),
    "unknown loss weight": (DET, ["--model.loss.weights", "{loss_mask: 1}"], "unknown loss weight"),
    "feature layer out of range": (DET, ["--model.feature_layers", "[7]"], "model.feature_layers"),
    "negative preview count": (DET, ["--model.num_preview_images", "-1"], "model.num_preview_images"),
    "zero lr_mult": (DET, ["--model.optimizer.lr_mult", "{backbone: 0}"], "model.optimizer.lr_mult"),
    "negative lr": (LP, [*VIT, "--model.optimizer.lr", "-0.1"], "model.optimizer.lr must be > 0"),
    "negative blr": (FT, [*VIT, "--model.optimizer.blr", "-1"], "model.optimizer.blr must be > 0"),
    "layer decay above 1": (FT, [*VIT, "--model.optimizer.layer_decay", "1.5"], "model.optimizer.layer_decay"),
    "negative warmup": (LP, [*VIT, "--model.optimizer.warmup_epochs", "-1"], "model.optimizer.warmup_epochs"),
    "image size not a patch multiple": (
        LP, ["--model.backbone.name", "vit-tiny:random", "--data.image_size", "50"], "50px"
    ),
    "drop path above 1": (FT, [*VIT, "--model.backbone.drop_path_rate", "1.5"], "model.backbone.drop_path_rate"),
    "patch size on a ViT": (LP, [*VIT, "--model.backbone.patch_size", "8"], "model.backbone.patch_size"),
    "lora options outside lora": (FT, [*VIT, "--model.lora.r", "4"], "model.lora applies to adaptation: lora"),
    "lora rank zero": (LORA, [*VIT, "--model.lora.r", "0"], "lora.r must be >= 1"),
    "freeze_blocks under a linear probe": (LP, [*VIT, "--model.freeze_blocks", "2"], "model.freeze_blocks"),
    "freeze more blocks than there are": (FT, [*VIT, "--model.freeze_blocks", "99"], "freeze_blocks=99"),
    "train_also not a regex": (FT, [*VIT, "--model.train_also", "['(']"], "model.train_also"),
    "negative mixup": (FT, [*VIT, "--model.regularization.mixup", "-1"], "model.regularization.mixup"),
    "label smoothing 1.5": (FT, [*VIT, "--model.regularization.label_smoothing", "1.5"], "label_smoothing"),
    "max_epochs -2": (LP, [*VIT, "--trainer.max_epochs", "-2"], "trainer.max_epochs must be an integer >= -1"),
    "accumulate 0 batches": (LP, [*VIT, "--trainer.accumulate_grad_batches", "0"], "trainer.accumulate_grad"),
    "negative gradient clip": (LP, [*VIT, "--trainer.gradient_clip_val", "-1"], "trainer.gradient_clip_val"),
    "zero devices": (LP, [*VIT, "--trainer.devices", "0"], "trainer:"),
    "unknown precision": (LP, [*VIT, "--trainer.precision", "17"], "--trainer.precision"),
    "zero batch size": (LP, [*VIT, "--data.batch_size", "0"], "data.batch_size must be >= 1"),
    "val fraction above 1": (LP, [*VIT, "--data.val_fraction", "1.5"], "data.val_fraction"),
    "dino head without outputs": (DINO, [*VIT, "--model.head.out_dim", "0"], "model.head.out_dim"),
    "dino momentum above 1": (DINO, [*VIT, "--model.momentum_teacher", "1.5"], "model.momentum_teacher"),
    "dino negative temperature": (DINO, [*VIT, "--model.loss.teacher_temp", "-1"], "model.loss.teacher_temp"),
    "vlm lora with a frozen llm": (
        VLM, ["GROUNDING", "--model.freeze", "[llm]", "--model.lora.r", "4"], "remove 'llm' from model.freeze"
    ),
    "vlm det head decoder": (VLM, ["GROUNDING", "--model.det_head.decoder.nhead", "0"], "decoder.nhead"),
    "vlm no new tokens": (VLM, ["GROUNDING", "--model.generation.max_new_tokens", "0"], "max_new_tokens"),
}  # fmt: skip


@pytest.fixture(scope="module")
def grounding_dir(grounding_shapes) -> list[str]:
    return ["--data.source", "grounding", "--data.path", str(grounding_shapes)]


@pytest.mark.parametrize("mistake", list(MISTAKES), ids=list(MISTAKES))
def test_a_config_mistake_is_one_line_naming_the_key(mistake, grounding_dir, tmp_path, capsys):
    config, args, says = MISTAKES[mistake]
    args = [a for x in args for a in (grounding_dir if x == "GROUNDING" else [x])]
    for extra in (["--validate_only"], []):  # the same line at --validate_only time and at the start of a run
        code = main(["fit", "--config", config, *args, *extra, "--runs_dir", str(tmp_path / "runs")])
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.startswith("error:")]
        assert code == 2 and "Traceback" not in err, err
        assert len(lines) == 1 and says in lines[0], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run folder left
