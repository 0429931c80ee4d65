"""The grounding VLM task on a tiny random-init Qwen2.5-VL: target-span loss, packing, components, evaluation."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from transferkit.errors import UserError
from transferkit.tasks.grounding_vlm import GroundingVLMTask, vlm_param_groups
from transferkit.vlm.chat import IGNORE_INDEX
from transferkit.vlm.collate import pack_collate, pad_collate
from transferkit.vlm.data import VLMGroundingDataModule

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tiny_vlm_dir):
    return str(tiny_vlm_dir)


def build(tiny_dir, shapes, dm_kw=None, **kw):
    # what the CLI links: the task's model_path -> the data's processor; the data's vocabularies -> the task
    dm = VLMGroundingDataModule(
        source="grounding", path=str(shapes), processor_path=tiny_dir, **(dm_kw or {})
    )
    dm.setup("fit")
    vocab = dict(class_names=dm.class_names, desc_vocab=dm.desc_vocab, label_from=dm.label_from)
    task = GroundingVLMTask(model_path=tiny_dir, **vocab, **kw)
    task.configure_model()
    return task, dm


def items(dm, split="train", n=3, seed=0):
    ds = dm.dataset(split)
    torch.manual_seed(seed)
    return [ds[i] for i in range(n)]


def test_packed_and_padded_batches_give_the_same_loss(tiny_dir, grounding_shapes):
    task, dm = build(tiny_dir, grounding_shapes, dm_kw=dict(demo_ratio=1.0, max_demos=2), freeze=[])
    task.eval()
    batch_items = items(dm)
    assert sum(it["meta"]["num_demos"] for it in batch_items) > 0  # multi-image chats in the batch
    pad = task.processor.tokenizer.pad_token_id
    with torch.no_grad():
        padded = task.compute_loss(pad_collate(batch_items, pad))
        packed = task.compute_loss(pack_collate(batch_items, pad))
        two_rows = task.compute_loss(
            pack_collate(batch_items, pad, max_tokens=max(len(it["chat"]) for it in batch_items))
        )
        # each sample alone: the sum of per-token losses is additive over samples
        alone = [task.compute_loss(pad_collate([it], pad)) for it in batch_items]
    targets = sum(int((it["chat"].labels != IGNORE_INDEX).sum()) - 0 for it in batch_items)
    assert int(padded["tokens"]) == int(packed["tokens"]) == targets
    assert torch.allclose(padded["nll_sum"], packed["nll_sum"], rtol=1e-5)
    assert torch.allclose(two_rows["nll_sum"], packed["nll_sum"], rtol=1e-5)
    assert torch.allclose(sum(a["nll_sum"] for a in alone), padded["nll_sum"], rtol=1e-5)
    assert torch.allclose(padded["loss"], packed["loss"], rtol=1e-5)


def test_training_steps_learn_the_target_answer_only(tiny_dir, grounding_shapes):
    task, dm = build(tiny_dir, grounding_shapes, dm_kw=dict(demo_ratio=1.0, max_demos=1), freeze=["vision"])
    pad = task.processor.tokenizer.pad_token_id
    batch = pack_collate(items(dm), pad)
    # the label mask is exactly the target answers
    for (row, s, e, _), it in zip(batch["segments"], items(dm)):
        labels = batch["labels"][row, s:e]
        text = task.processor.tokenizer.decode(labels[labels != IGNORE_INDEX].tolist())
        answer = json.loads(text.removesuffix("<|im_end|>"))
        assert sorted(o["desc"] for o in answer) == sorted(it["meta"]["desc"]) and text.endswith(
            "]<|im_end|>"
        )
    vision_before = {n: p.detach().clone() for n, p in task.vlm.model.visual.named_parameters()}
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-2)
    task.train()
    losses = []
    for _ in range(6):
        loss = task.compute_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    for n, p in task.vlm.model.visual.named_parameters():
        if ".merger." in f".{n}":
            continue
        assert torch.equal(p, vision_before[n]), n  # the frozen vision encoder did not move
    assert any(
        not torch.equal(p, vision_before[n])
        for n, p in task.vlm.model.visual.named_parameters()
        if "merger" in n
    )


def test_components_param_groups_and_lr_scaling(tiny_dir, grounding_shapes):
    import lightning as L

    task, dm = build(
        tiny_dir,
        grounding_shapes,
        dm_kw=dict(batch_size=2, demo_ratio=0.0),
        freeze=["vision"],
        optimizer=dict(
            blr=0.256, lr_mult={"merger": 2.0, "llm": 0.5}, warmup_epochs=0.0, scheduler="constant"
        ),
        generate_on_val=False,
    )
    counts = task.component_counts()
    assert counts["vision"]["trainable"] == 0 and counts["vision"]["params"] > 0
    assert counts["merger"]["trainable"] == counts["merger"]["params"] > 0
    trainer = L.Trainer(
        max_steps=1, accumulate_grad_batches=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(task, datamodule=dm)
    lrs: dict[str, list[float]] = {}
    for g in trainer.optimizers[0].param_groups:
        lrs.setdefault(g["component"], []).append(g["lr"])
    base = 0.256 * 2 * 2 / 256  # blr * batch * accumulation / 256
    assert lrs["merger"] == pytest.approx([2.0 * base] * len(lrs["merger"]))
    assert lrs["llm"] == pytest.approx([0.5 * base] * len(lrs["llm"]))
    assert "vision" not in lrs


def test_param_groups_reject_all_frozen():
    p = torch.nn.Parameter(torch.zeros(2, 2), requires_grad=False)
    with pytest.raises(UserError, match="nothing to train"):
        vlm_param_groups([("a", p, "llm")], lr=1.0, weight_decay=0.0, lr_mult={})


def test_lora_trains_adapters_in_the_llm_only(tiny_dir, grounding_shapes):
    task, dm = build(
        tiny_dir,
        grounding_shapes,
        dm_kw=dict(demo_ratio=0.0),
        freeze=["vision"],
        lora=dict(r=4, alpha=8),
    )
    trainable = [n for n, p in task.vlm.named_parameters() if p.requires_grad]
    llm = [n for n in trainable if ".language_model." in n or n.startswith("lm_head")]
    assert llm and all("lora_" in n for n in llm)
    assert not any("lora_" in n for n, _ in task.vlm.model.visual.named_parameters())
    assert any(".merger." in n for n in trainable)
    assert task.optim_cfg.blr == pytest.approx(2e-3)  # LoRA's default base LR
    batch = pad_collate(items(dm, n=2), task.processor.tokenizer.pad_token_id)
    task.compute_loss(batch)["loss"].backward()
    assert all(p.grad is not None for n, p in task.vlm.named_parameters() if p.requires_grad)


def test_detection_head_on_llm_hidden_states(tiny_dir, grounding_shapes):
    task, dm = build(
        tiny_dir,
        grounding_shapes,
        dm_kw=dict(demo_ratio=1.0, max_demos=1),
        freeze=["vision"],
        det_head=dict(decoder=dict(hidden_dim=32, num_queries=5, num_layers=2, nhead=4, dim_feedforward=64)),
    )
    assert task.component_counts()["det_head"]["trainable"] > 0
    batch = pack_collate(items(dm), task.processor.tokenizer.pad_token_id)
    out = task.compute_loss(batch)
    assert {"det_loss", "det_loss_ce", "det_loss_bbox", "det_loss_giou"} <= set(out)
    assert out["det_outputs"]["pred_boxes"].shape == (3, 5, 4)
    assert torch.allclose(out["loss"], out["lm_loss"] + out["det_loss"])
    out["loss"].backward()
    assert task.det_head.query_embed.weight.grad is not None
    # the set loss reaches the LLM through its hidden states at the target image's tokens
    assert task.vlm.model.language_model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_evaluation_scores_parsed_answers(tiny_dir, grounding_shapes, monkeypatch):
    task, dm = build(tiny_dir, grounding_shapes, dm_kw=dict(demo_ratio=0.0))
    task.eval()
    batch_items = items(dm, split="val", n=3)
    batch = pad_collate(batch_items, task.processor.tokenizer.pad_token_id)
    tok = task.processor.tokenizer
    perfect = []
    for it in batch_items:
        c = it["chat"]
        perfect.append(
            "```json\n"
            + tok.decode(c.labels[c.labels != IGNORE_INDEX].tolist(), skip_special_tokens=True)
            + "\n```"
        )
    monkeypatch.setattr(task, "generate_answers", lambda b: perfect)
    with torch.no_grad():
        task._eval_step(batch, "test")
    task._eval_epoch_end("test")
    m = task.final_metrics["test"]
    # the answers are the ground truth in the resized frame: mapped back they match at IoU >= 0.5
    assert m["map_50"] == pytest.approx(1.0) and m["desc_acc"] == 1.0 and m["parse_failure_rate"] == 0.0
    assert m["desc_matched"] == sum(len(it["meta"]["desc"]) for it in batch_items)
    monkeypatch.setattr(task, "generate_answers", lambda b: ["no idea", perfect[1], '[{"bbox_2d": [1, 2'])
    with torch.no_grad():
        task._eval_step(batch, "test")
    task._eval_epoch_end("test")
    m = task.final_metrics["test"]
    assert m["parse_failure_rate"] == pytest.approx(1 / 3) and m["repaired_rate"] == pytest.approx(1 / 3)
    assert m["map_50"] < 1.0


def test_generation_is_batch_invariant(tiny_dir, grounding_shapes):
    task, dm = build(tiny_dir, grounding_shapes, dm_kw=dict(eval_demos=1), generation=dict(max_new_tokens=6))
    task.eval()
    batch_items = items(dm, split="val", n=3)
    pad = task.processor.tokenizer.pad_token_id
    together = task.generate_answers(pad_collate(batch_items, pad))
    alone = [task.generate_answers(pad_collate([it], pad))[0] for it in batch_items]
    assert together == alone and all(isinstance(t, str) for t in together)


def test_checkpoints_can_omit_frozen_weights(tiny_dir, grounding_shapes):
    task, _ = build(tiny_dir, grounding_shapes, freeze=["vision"], save_frozen_weights=False)
    ckpt = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(ckpt)
    omitted = ckpt["frozen_weights"]["omitted"]
    assert omitted and all(k.startswith("vlm.model.visual.") for k in omitted)
    assert not any(k in ckpt["state_dict"] for k in omitted)
    assert any(k.startswith("vlm.model.visual.merger.") for k in ckpt["state_dict"])
    fresh, _ = build(tiny_dir, grounding_shapes, freeze=["vision"], save_frozen_weights=False)
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"], strict=True)


def test_option_errors():
    with pytest.raises(UserError, match="freeze"):
        GroundingVLMTask(freeze=["vit"])
    with pytest.raises(UserError, match="lr_mult"):
        GroundingVLMTask(optimizer=dict(lr_mult={"backbone": 0.1}))
    with pytest.raises(UserError, match="layer_decay"):
        GroundingVLMTask(optimizer=dict(layer_decay=0.75))
    with pytest.raises(UserError, match="lora"):
        GroundingVLMTask(freeze=["llm"], lora=dict())
    with pytest.raises(UserError, match="det_head"):
        GroundingVLMTask(freeze=["det_head"])
    with pytest.raises(UserError, match="decoder.hidden_dim"):
        GroundingVLMTask(det_head=dict(decoder=dict(hidden_dim=30)))


# ---------------------------------------------------------------------------------------------- CLI
CONFIG = str(
    __import__("pathlib").Path(__file__).resolve().parents[2] / "configs" / "grounding" / "qwen2_5_vl.yaml"
)
CLI_TINY = [
    "--data.source", "grounding",
    "--data.batch_size", "3",
    "--data.eval_batch_size", "3",
    "--model.generation.max_new_tokens", "12",
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1",
    "--trainer.limit_predict_batches", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


@pytest.mark.slow
def test_cli_fit_test_predict_on_shapes(tmp_path, grounding_shapes, tiny_dir, monkeypatch):
    from transferkit.cli import main

    monkeypatch.setenv("TRANSFERKIT_MODELS_DIR", str(__import__("pathlib").Path(tiny_dir).parent))
    runs = tmp_path / "runs"
    common = ["--data.path", str(grounding_shapes), "--runs_dir", str(runs), *CLI_TINY]
    assert main(["fit", "--config", CONFIG, "--name", "vlm", "--data.packing", "true", *common]) == 0
    run = runs / "vlm"
    for f in (
        "config.yaml",
        "metrics.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "predictions/test_00.png",
    ):
        assert (run / f).is_file(), f
    m = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        for key in ("map", "map_50", "desc_acc", "parse_failure_rate", "repaired_rate", "loss", "answers"):
            assert key in m[split], (split, key)
        assert 0.0 <= m[split]["parse_failure_rate"] <= 1.0 and m[split]["answers"] == 3
    assert m["components"]["vision"]["trainable"] == 0 and m["components"]["llm"]["trainable"] > 0
    assert m["global_step"] == 2
    ckpt = str(run / "checkpoints" / "best.ckpt")
    assert main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", ckpt, *CLI_TINY[-4:]]) == 0
    lines = (run / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 3
    rec = json.loads(lines[0])
    assert {"images", "width", "height", "objects", "response", "parse_failed"} <= set(rec)


@pytest.mark.slow
def test_cli_validate_only_and_print_config(tmp_path, grounding_shapes, tiny_dir, monkeypatch, capsys):
    from transferkit.cli import main

    monkeypatch.setenv("TRANSFERKIT_MODELS_DIR", str(__import__("pathlib").Path(tiny_dir).parent))
    args = [
        "fit",
        "--config",
        CONFIG,
        "--data.path",
        str(grounding_shapes),
        "--runs_dir",
        str(tmp_path / "runs"),
        *CLI_TINY,
    ]
    assert main([*args, "--validate_only", "true"]) == 0
    out = capsys.readouterr().out
    assert "config is valid" in out and "answer_tokens" in out and "<|im_end|>" in out
    assert not (tmp_path / "runs").exists()
    assert main([*args, "--model.lora.r", "4", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["lora"]["r"] == 4
    assert main([*args, "--model.freeze", "[vit]", "--validate_only", "true"]) == 2
