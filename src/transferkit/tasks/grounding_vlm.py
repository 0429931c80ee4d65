"""Fine-tuning a vision-language model (Qwen2.5-VL) to detect and describe objects as JSON.

The model (transformers' ``Qwen2_5_VLForConditionalGeneration`` + its processor, :mod:`transferkit.vlm.model`)
reads chats built by :class:`~transferkit.vlm.data.VLMGroundingDataModule` and learns to answer
``[{"bbox_2d": [x1, y1, x2, y2], "desc": "..."}, ...]`` with boxes in the pixels of its resized image.

Training: next-token cross-entropy over the target answer's tokens only (labels -100 elsewhere), averaged
over those tokens in the batch; logits are computed only at labelled positions (the LM head never runs over
prompt and image tokens, which saves its ``(tokens x vocab)`` activation). Padded and packed batches give the
same loss. Optional DETR-style head (``det_head``, :class:`~transferkit.tasks.options.DetHeadOptions`): a
:class:`~transferkit.heads.detr.DetrHead` reads the LLM's last hidden states at the target image's visual tokens
(their merged patch grid) and is trained with :class:`~transferkit.heads.criterion.SetCriterion` and the
injected matcher (total loss = LM loss + ``det_head.loss_weight`` x set loss).

Components: ``vision`` (ViT), ``merger`` (vision-language merger), ``llm`` (language model + LM head) and
``det_head``; ``freeze`` lists the frozen ones, ``optimizer.lr_mult`` sets each one's LR multiplier, and
the LR is ``optimizer.blr * effective_batch / 256`` unless ``optimizer.lr`` is set. ``lora`` puts peft LoRA
adapters on the LLM's linear layers (the LLM's own weights then stay frozen).

Evaluation (validation with ``generate_on_val``, test, predict): greedy generation from the prompt, the
answer parsed by :func:`~transferkit.vlm.parse.parse_response` (fences stripped, truncated lists repaired,
malformed objects dropped), boxes mapped back to the original image (:func:`~transferkit.vlm.chat.from_resized`).
Metrics (``metrics.json``) come from the shared :class:`~transferkit.tasks.evaluation.DetectionEvaluator`:
COCO ``map``/``map_50``/``map_75``/``mar_*`` (every generated object scores 1.0 — the model states no
confidence — ties broken by answer order), ``desc_acc`` (exact description match among predictions matched to a
ground-truth box at IoU >= 0.5),
``parse_failure_rate`` (answers with no JSON at all), ``repaired_rate``, ``dropped_objects``, the answer
loss, and the detection head's own mAP when it is on. ``predict`` writes ``<run>/predictions.jsonl``
(grounding records with the raw ``response``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.aggregation import SumMetric

from transferkit.data.detection.datamodule import object_label
from transferkit.data.grounding import boxes_to_model
from transferkit.errors import UserError
from transferkit.heads.criterion import DEFAULT_WEIGHTS, SetCriterion
from transferkit.heads.detr import DetrHead, postprocess
from transferkit.tasks.evaluation import MAP_KEYS, DetectionEvaluator
from transferkit.tasks.frozen import FrozenWeightsCheckpoint
from transferkit.tasks.modes import apply_train_modes, fitting, note_frozen_eval_modes, release_eval_warning
from transferkit.tasks.optim import (
    OptimConfig,
    effective_batch_size,
    lightning_optimizers,
    param_groups,
    scaled_lr,
)
from transferkit.tasks.options import DetHeadOptions, LoraOptions, as_dataclass, plain
from transferkit.vlm.chat import IGNORE_INDEX, from_resized
from transferkit.vlm.collate import left_pad_prompts, packed_position_ids
from transferkit.vlm.model import (
    VLM_COMPONENTS,
    component_of,
    load_processor,
    load_vlm,
    lora_target_regex,
)
from transferkit.vlm.parse import parse_response

log = logging.getLogger(__name__)

COMPONENTS = (*VLM_COMPONENTS, "det_head")
#: full fine-tuning recipe: AdamW, no weight decay, blr 5e-5 (2.5e-5 at an effective batch of 128)
VLM_OPTIM_DEFAULTS: dict[str, Any] = dict(name="adamw", blr=5e-5, weight_decay=0.0, warmup_epochs=0.1)
#: LoRA trains few parameters from zero: a 40x larger base LR
LORA_BLR = 2e-3
#: the vision encoder moves 10x slower than the rest (Qwen2.5-VL fine-tuning practice), the fresh head 10x faster
VLM_LR_MULT = {"vision": 0.1, "merger": 1.0, "llm": 1.0, "det_head": 10.0}
#: LoRA on the LLM's attention and MLP projections unless ``lora.target_modules`` names others
LLM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class GenerationOptions:
    """Decoding for evaluation and prediction.

    Args:
        max_new_tokens: longest answer; a longer one is cut (and its complete objects kept by the parser).
        num_beams: beam search width (1 = greedy).
        repetition_penalty: transformers' repetition penalty (1.0 = off).
    """

    max_new_tokens: int = 512
    num_beams: int = 1
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise UserError("model.generation.max_new_tokens and num_beams must be >= 1")
        if not self.repetition_penalty > 0:
            raise UserError(f"model.generation.repetition_penalty must be > 0, got {self.repetition_penalty}")


def vlm_param_groups(
    named: list[tuple[str, torch.nn.Parameter, str]],
    *,
    lr: float,
    weight_decay: float,
    lr_mult: dict[str, float],
) -> list[dict]:
    """:func:`~transferkit.tasks.optim.param_groups` over ``(name, param, component)`` triples: one group per
    (component, decay/no-decay) at ``lr * lr_mult[component]``, components in :data:`COMPONENTS` order."""
    order = {c: i for i, c in enumerate(COMPONENTS)}
    entries = [(n, p, c, order[c], float(lr_mult.get(c, 1.0))) for n, p, c in named]
    return param_groups(entries, lr=lr, weight_decay=weight_decay)


class GroundingVLMTask(FrozenWeightsCheckpoint, L.LightningModule):
    """Qwen2.5-VL fine-tuned to answer grounding JSON (module docstring).

    Batches come from :class:`~transferkit.vlm.data.VLMGroundingDataModule` (see
    :mod:`transferkit.vlm.collate` for their keys).
    """

    export_task = None  # a generative model: ship it with transformers' own tools, not transferkit export

    def __init__(
        self,
        model_path: str = "qwen2.5-vl-tiny",
        dtype: Literal["float32", "bfloat16", "auto"] = "float32",
        attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa",
        freeze: list[str] = ["vision"],  # noqa: B006 (jsonargparse reads the default from the signature)
        lora: LoraOptions | None = None,
        det_head: DetHeadOptions | None = None,
        optimizer: OptimConfig = OptimConfig(),
        gradient_checkpointing: bool = False,
        generation: GenerationOptions = GenerationOptions(),
        generate_on_val: bool = True,
        save_frozen_weights: bool = True,
        num_preview_images: int = 8,
        class_names: list[str] | None = None,
        desc_vocab: list[str] | None = None,
        label_from: Literal["category", "desc", "object"] = "category",
    ) -> None:
        """
        Args:
            model_path: Hub id (``Qwen/Qwen2.5-VL-3B-Instruct``, online), local ``save_pretrained`` directory,
                or ``qwen2.5-vl-tiny`` (tiny random-init model built offline on first use).
            dtype: Weights dtype when loading: ``float32`` (with ``32-true`` or ``bf16-mixed`` precision),
                ``bfloat16`` (with ``bf16-true``) or ``auto`` (the checkpoint's).
            attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2`` (GPU; packed rows become varlen).
            freeze: Components kept fixed: any of ``vision``, ``merger``, ``llm``, ``det_head``.
            lora: LoRA adapters on the LLM (None: none; empty ``target_modules``: its attention and MLP
                projections).
            det_head: An optional DETR-style head on the LLM's hidden states (None: none).
            optimizer: Optimiser and schedule; None fields take AdamW, blr 5e-5 (2e-3 with LoRA), weight decay 0,
                warmup 0.1 epoch; ``lr_mult`` per component (default vision 0.1, merger 1, llm 1, det_head 10).
            gradient_checkpointing: Recompute activations in the backward pass (ViT blocks and LLM layers).
            generation: Decoding options for evaluation and prediction.
            generate_on_val: Generate and score answers on validation (checkpoints by ``val/map_50``);
                False: validation computes only the answer loss (checkpoints by ``val/loss``).
            save_frozen_weights: Keep frozen parameters in checkpoints; False drops them (they are reloaded
                from ``model_path``), e.g. a LoRA checkpoint holds only the adapters.
            num_preview_images: Test images drawn with boxes into ``<run>/predictions/``.
            class_names: Class names for mAP and the detection head (linked from the datamodule by the CLI).
            desc_vocab: Description vocabulary of the detection head (linked from the datamodule).
            label_from: How an answered object's class is read for mAP, as the data reads it (linked).
        """
        super().__init__()
        self.lora_cfg = as_dataclass(LoraOptions, lora) if lora is not None else None
        self.det_cfg = as_dataclass(DetHeadOptions, det_head) if det_head is not None else None
        self.gen_cfg = as_dataclass(GenerationOptions, generation)
        opt = as_dataclass(OptimConfig, optimizer)
        self.save_hyperparameters()
        for key, value in (
            ("lora", self.lora_cfg),
            ("det_head", self.det_cfg),
            ("generation", self.gen_cfg),
            ("optimizer", opt),
        ):
            self.hparams[key] = plain(value)
        unknown = set(freeze) - set(COMPONENTS)
        if unknown:
            raise UserError(
                f"unknown component(s) {sorted(unknown)} in freeze; choose from {list(COMPONENTS)}"
            )
        unknown = set(opt.lr_mult) - set(COMPONENTS)
        if unknown:
            raise UserError(f"unknown lr_mult component(s) {sorted(unknown)}; use {list(COMPONENTS)}")
        if opt.layer_decay not in (None, 1.0):
            raise UserError(
                "layer_decay is not supported for vision-language models; use optimizer.lr_mult per component"
            )
        if self.lora_cfg is not None and "llm" in freeze:
            raise UserError("model.lora trains adapters inside the LLM; remove 'llm' from model.freeze")
        if "det_head" in freeze and self.det_cfg is None:
            raise UserError("model.freeze lists det_head, but there is no model.det_head")
        if num_preview_images < 0:
            raise UserError(f"model.num_preview_images must be >= 0, got {num_preview_images}")
        defaults = {
            **VLM_OPTIM_DEFAULTS,
            "blr": LORA_BLR if self.lora_cfg is not None else VLM_OPTIM_DEFAULTS["blr"],
        }
        filled = {k: (getattr(opt, k) if getattr(opt, k) is not None else v) for k, v in defaults.items()}
        self.optim_cfg = OptimConfig(
            **{**opt.__dict__, **filled, "layer_decay": 1.0, "lr_mult": {**VLM_LR_MULT, **opt.lr_mult}}
        )
        self.checkpoint_monitor = ("val/map_50", "max") if generate_on_val else ("val/loss", "min")
        self.processor: Any = None
        self.vlm: torch.nn.Module | None = None
        self.det_head: DetrHead | None = None
        self.criterion: SetCriterion | None = None
        self.final_metrics: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ construction
    def _ensure_processor(self) -> Any:
        if self.processor is None:
            self.processor = load_processor(self.hparams.model_path)
        return self.processor

    def configure_model(self) -> None:
        """Load the model and processor, apply LoRA / freezing / checkpointing, build the optional head; in a
        fit, set the train/eval modes before Lightning's model summary and eval-mode check read them."""
        if self.vlm is None:
            self._build()
        if fitting(self):
            self.set_train_modes()

    def _build(self) -> None:
        hp = self.hparams
        self._ensure_processor()
        self.vlm = load_vlm(hp.model_path, dtype=hp.dtype, attn_implementation=hp.attn_implementation)
        self.vlm.config.use_cache = False  # training never needs the KV cache; generate() turns it on
        if self.lora_cfg is not None:
            self._inject_lora()
        self._apply_freeze()
        if hp.gradient_checkpointing:
            self.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.det_cfg is not None:
            self._build_det_head()
        self.end_token_ids = self._end_tokens()
        names = list(hp.class_names or [])
        self.evaluator = DetectionEvaluator(names, num_previews=hp.num_preview_images)
        if self.det_head is not None:
            self.head_evaluator = DetectionEvaluator(names, num_previews=0)
        self.counts = torch.nn.ModuleDict(
            {
                f"{s}_{k}": SumMetric()
                for s in ("val", "test")
                for k in ("answers", "failed", "repaired", "dropped", "objects", "nll", "tokens")
            }
        )
        counts = self.component_counts()
        log.info(
            "grounding VLM %s: %s",
            hp.model_path,
            ", ".join(
                f"{c} {v['params'] / 1e6:.2f}M ({v['trainable'] / 1e6:.2f}M trainable)"
                for c, v in counts.items()
            ),
        )

    def _inject_lora(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        o = self.lora_cfg
        targets = list(o.target_modules) or list(LLM_LORA_TARGETS)
        config = LoraConfig(
            r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout, target_modules=lora_target_regex(targets)
        )
        try:
            inject_adapter_in_model(config, self.vlm)
        except ValueError as e:
            raise UserError(f"LoRA could not adapt the LLM with target_modules={targets}: {e}") from None

    def _apply_freeze(self) -> None:
        frozen = set(self.hparams.freeze)
        for n, p in self.vlm.named_parameters():
            comp = component_of(n)
            if comp in frozen:
                p.requires_grad_(False)
            elif comp == "llm" and self.lora_cfg is not None:
                p.requires_grad_("lora_" in n)
            else:
                p.requires_grad_(True)

    def _build_det_head(self) -> None:
        hp, d = self.hparams, self.det_cfg
        if not hp.class_names:
            raise UserError(
                "model.det_head needs class_names: train with a datamodule or set model.class_names"
            )
        num_descs = len(hp.desc_vocab or []) if d.loss.description else 0
        width = self.vlm.config.text_config.hidden_size
        self.det_head = d.decoder.build([width], len(hp.class_names), num_descs)
        self.criterion = d.loss.build(len(hp.class_names), d.matcher, num_descs)
        if "det_head" in hp.freeze:
            self.det_head.requires_grad_(False)

    def _end_tokens(self) -> list[int]:
        tok = self.processor.tokenizer
        ids = {tok.convert_tokens_to_ids("<|im_end|>")}
        eos = self.vlm.generation_config.eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return sorted(i for i in ids if isinstance(i, int) and i >= 0)

    def named_components(self) -> list[tuple[str, torch.nn.Parameter, str]]:
        """``(name, parameter, component)`` of every parameter (the LM's and the head's)."""
        out = [(f"vlm.{n}", p, component_of(n)) for n, p in self.vlm.named_parameters()]
        if self.det_head is not None:
            out += [(f"det_head.{n}", p, "det_head") for n, p in self.det_head.named_parameters()]
        return out

    def component_counts(self) -> dict[str, dict[str, int]]:
        """Parameters and trainable parameters per component."""
        counts = {
            c: {"params": 0, "trainable": 0}
            for c in COMPONENTS
            if c != "det_head" or self.det_head is not None
        }
        for _, p, c in self.named_components():
            counts[c]["params"] += p.numel()
            counts[c]["trainable"] += p.numel() if p.requires_grad else 0
        return counts

    # ------------------------------------------------------------------ forward
    def _pixel_dtype(self) -> torch.dtype:
        return next(self.vlm.model.visual.parameters()).dtype

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """The LLM's last hidden states ``(R, L, D)`` for a padded or packed batch."""
        inner = self.vlm.model
        kwargs: dict[str, Any] = dict(
            input_ids=batch["input_ids"],
            pixel_values=batch["pixel_values"].to(self._pixel_dtype()),
            image_grid_thw=batch["image_grid_thw"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            use_cache=False,
        )
        if batch["packed"]:
            kwargs["position_ids"] = packed_position_ids(batch, inner.get_rope_index)
        else:
            kwargs["attention_mask"] = batch["attention_mask"]
        return inner(**kwargs).last_hidden_state

    def answer_nll(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token NLL over labelled positions and their count. ``hidden`` ``(R, L, D)``, ``labels``
        ``(R, L)``: position t predicts ``labels[t + 1]``; logits only where that label is not -100."""
        target = labels[:, 1:]
        keep = target != IGNORE_INDEX
        logits = self.vlm.lm_head(hidden[:, :-1][keep])
        nll = F.cross_entropy(logits.float(), target[keep], reduction="sum")
        return nll, keep.sum()

    def det_outputs(self, hidden: torch.Tensor, batch: dict[str, Any]) -> dict[str, Any]:
        """The detection head on each sample's target-image tokens (own grid per sample), outputs stacked."""
        assert self.det_head is not None
        dtype = self.det_head.query_embed.weight.dtype
        outs = [
            self.det_head([hidden[row : row + 1, s:e].to(dtype)], [grid])
            for (row, s, e), grid in zip(batch["target_spans"], batch["target_grids"])
        ]

        def stack(items: list[dict]) -> dict:
            return {k: torch.cat([o[k] for o in items]) for k in items[0] if k != "aux_outputs"}

        merged = stack(outs)
        if "aux_outputs" in outs[0]:
            merged["aux_outputs"] = [
                stack([o["aux_outputs"][i] for o in outs]) for i in range(len(outs[0]["aux_outputs"]))
            ]
        return merged

    def det_targets(self, batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Set-criterion targets: normalised cxcywh boxes, class and description indices."""
        return [
            {
                "boxes": boxes_to_model(m["boxes"].float(), m["orig_size"]).clamp(0, 1).to(self.device),
                "labels": m["labels"].clamp(min=0).to(self.device),
                "desc": m["desc_idx"].to(self.device),
            }
            for m in batch["meta"]
        ]

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``loss`` (what is optimised), ``lm_loss``, ``nll_sum``, ``tokens``; with the detection head also
        ``det_loss``, its unweighted terms ``det_loss_*`` and its raw ``det_outputs``."""
        hidden = self(batch)
        nll, count = self.answer_nll(hidden, batch["labels"])
        lm_loss = nll / count.clamp(min=1)
        out = {"loss": lm_loss, "lm_loss": lm_loss.detach(), "nll_sum": nll.detach(), "tokens": count}
        if self.det_head is not None:
            det_out = self.det_outputs(hidden, batch)
            out["det_outputs"] = det_out
            terms = self.criterion(det_out, self.det_targets(batch))
            det = self.criterion.total(terms)
            out["loss"] = lm_loss + self.det_cfg.loss_weight * det
            out["det_loss"] = det.detach()
            out.update({f"det_{k}": v.detach() for k, v in terms.items() if k in DEFAULT_WEIGHTS})
        return out

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.compute_loss(batch)
        bs = len(batch["meta"])
        self.log("train/loss", out["loss"], prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log("train/lm_loss", out["lm_loss"], on_step=False, on_epoch=True, batch_size=bs)
        self.log(
            "train/answer_tokens",
            out["tokens"].float(),
            on_step=False,
            on_epoch=True,
            batch_size=bs,
            reduce_fx="sum",
        )
        for k, v in out.items():
            if k.startswith("det_loss"):
                self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=bs)
        return out["loss"]

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_answers(self, batch: dict[str, Any]) -> list[str]:
        """Greedy (or beam) answers to each sample's prompt, decoded without special tokens."""
        tok = self.processor.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.end_token_ids[0]
        prompts = left_pad_prompts(batch, pad)
        g = self.gen_cfg
        out = self.vlm.generate(
            **prompts,
            pixel_values=batch["pixel_values"].to(self._pixel_dtype()),
            image_grid_thw=batch["image_grid_thw"],
            max_new_tokens=g.max_new_tokens,
            num_beams=g.num_beams,
            repetition_penalty=g.repetition_penalty,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad,
            eos_token_id=self.end_token_ids,
        )
        new = out[:, prompts["input_ids"].shape[1] :]
        return tok.batch_decode(new, skip_special_tokens=True)

    def answers_to_detections(self, texts: list[str], batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Parse answers and map their boxes to the original images: per sample ``boxes`` ``(n, 4)`` xyxy
        pixels, ``scores`` (1.0, ties broken by answer order), ``labels`` (class index; unknown classes get
        ``len(class_names)``), ``desc`` (strings), ``parsed`` (:class:`~transferkit.vlm.parse.ParsedResponse`)."""
        names = list(self.hparams.class_names or [])
        index = {n: i for i, n in enumerate(names)}
        label_from = self.hparams.label_from
        dets = []
        for text, meta in zip(texts, batch["meta"]):
            parsed = parse_response(text, warn=False)  # counted in the metrics / written per record
            objs = parsed.objects
            boxes = torch.tensor([o.bbox for o in objs], dtype=torch.float32).reshape(-1, 4)
            boxes = from_resized(boxes, meta["resized_size"], meta["orig_size"])
            n = len(objs)
            dets.append(
                {
                    "boxes": boxes,
                    "scores": 1.0 - 1e-6 * torch.arange(n, dtype=torch.float32),
                    "labels": torch.tensor(
                        [index.get(object_label(o, label_from), len(names)) for o in objs], dtype=torch.int64
                    ),
                    "desc": [o.desc for o in objs],
                    "parsed": parsed,
                }
            )
        return dets

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        out = self.compute_loss(batch)
        bs = len(batch["meta"])
        self.log(f"{split}/loss", out["lm_loss"], prog_bar=split == "val", batch_size=bs, sync_dist=True)
        c = self.counts
        c[f"{split}_nll"].update(out["nll_sum"].float())
        c[f"{split}_tokens"].update(out["tokens"].float())
        gts = [{"boxes": m["boxes"], "labels": m["labels"], "desc": m["desc"]} for m in batch["meta"]]
        if self.det_head is not None:
            self.log(f"{split}/det_loss", out["det_loss"], batch_size=bs, sync_dist=True)
            sizes = torch.tensor([list(m["orig_size"]) for m in batch["meta"]], device=self.device)
            self.head_evaluator.update(split, postprocess(out["det_outputs"], sizes), gts)
        if split == "val" and not self.hparams.generate_on_val:
            return
        texts = self.generate_answers(batch)
        dets = self.answers_to_detections(texts, batch)
        self.evaluator.update(split, dets, gts)
        dev = self.device
        for key, value in (
            ("answers", len(dets)),
            ("failed", sum(d["parsed"].failed for d in dets)),
            ("repaired", sum(d["parsed"].repaired for d in dets)),
            ("dropped", sum(d["parsed"].dropped for d in dets)),
            ("objects", sum(len(d["desc"]) for d in dets)),
        ):
            c[f"{split}_{key}"].update(torch.tensor(float(value), device=dev))
        if split == "test" and len(self.evaluator.previews) < self.evaluator.num_previews:
            from torchvision.transforms.v2.functional import pil_to_tensor

            from transferkit.data.sources import load_rgb

            for text, d, m in zip(texts, dets, batch["meta"]):
                image = pil_to_tensor(load_rgb(m["image"]))
                self.evaluator.keep_preview(
                    image, m["boxes"], d["boxes"], list(d["desc"]), note=f"{m['image']}\n{text}"
                )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _count(self, split: str, key: str) -> float:
        metric = self.counts[f"{split}_{key}"]
        value = float(metric.compute())
        metric.reset()
        return value

    def _eval_epoch_end(self, split: str) -> None:
        nll, tokens = self._count(split, "nll"), self._count(split, "tokens")
        result: dict[str, Any] = {"loss": nll / tokens if tokens else None, "answer_tokens": int(tokens)}
        generated = split != "val" or self.hparams.generate_on_val
        answers = self._count(split, "answers")
        parse = {k: self._count(split, k) for k in ("failed", "repaired", "dropped", "objects")}
        if generated:
            result.update(self.evaluator.compute(split))
            result.update(
                parse_failure_rate=parse["failed"] / answers if answers else 0.0,
                repaired_rate=parse["repaired"] / answers if answers else 0.0,
                dropped_objects=int(parse["dropped"]),
                objects_per_answer=parse["objects"] / answers if answers else 0.0,
                answers=int(answers),
            )
            for k in (*MAP_KEYS, "desc_acc", "parse_failure_rate"):
                self.log(f"{split}/{k}", float(result[k]), prog_bar=k in ("map_50", "parse_failure_rate"))
        if self.det_head is not None:
            head = self.head_evaluator.compute(split, with_descriptions=False)
            result["det_head"] = {k: head[k] for k in MAP_KEYS}
            self.log(f"{split}/head_map_50", result["det_head"]["map_50"])
        self.final_metrics[split] = result

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self.evaluator.start_test()

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
        self.evaluator.end_test(self.trainer)

    # ------------------------------------------------------------------ prediction
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Grounding records (dicts) with the parsed objects in original-image pixels and the raw answer."""
        texts = self.generate_answers(batch)
        dets = self.answers_to_detections(texts, batch)
        names = list(self.hparams.class_names or [])
        records = []
        for text, d, meta in zip(texts, dets, batch["meta"]):
            h, w = meta["orig_size"]
            objects = []
            for box, desc, label in zip(d["boxes"].tolist(), d["desc"], d["labels"].tolist()):
                obj = {"bbox_2d": [round(v, 2) for v in box], "desc": desc}
                if label < len(names):
                    obj["category"] = names[label]
                objects.append(obj)
            p = d["parsed"]
            records.append(
                {
                    "images": [str(Path(meta["image"]).resolve())],
                    "width": int(w),
                    "height": int(h),
                    "objects": objects,
                    "response": text,
                    "parse_failed": p.failed,
                    "repaired": p.repaired,
                    "dropped_objects": p.dropped,
                }
            )
        return records

    def configure_callbacks(self) -> list:
        """A :class:`~transferkit.tasks.writers.GroundingPredictionWriter` (every answered object kept: they carry
        no score) unless the trainer has a writer."""
        from transferkit.tasks.writers import GroundingPredictionWriter, PredictionWriter

        if self._trainer is not None and any(isinstance(c, PredictionWriter) for c in self.trainer.callbacks):
            return []
        return [GroundingPredictionWriter(score_threshold=0.0)]

    def image_backbone(self) -> None:
        return None  # a vision-language model, not an image backbone (components: describe())

    def set_train_modes(self) -> None:
        """Frozen components (a frozen vision tower before a trained LLM) in eval mode, the rest in train mode."""
        apply_train_modes(self)

    def on_fit_start(self) -> None:
        note_frozen_eval_modes(self)

    def on_train_start(self) -> None:
        release_eval_warning()

    def on_train_epoch_start(self) -> None:
        self.set_train_modes()

    # ------------------------------------------------------------------ dry run (--validate_only)
    def dry_run_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One forward pass on a training batch: its shape, the answer loss, and the first target answer as
        the model is asked to produce it (decoded from the label mask)."""
        out = self.compute_loss(batch)
        labels = batch["labels"][batch["segments"][0][0]]
        target = self.processor.tokenizer.decode(labels[labels != IGNORE_INDEX].tolist())
        return {
            "batch": f"{len(batch['meta'])} samples in {tuple(batch['input_ids'].shape)} tokens "
            f"({'packed' if batch['packed'] else 'padded'}), {int(batch['image_grid_thw'].shape[0])} images",
            "answer_tokens": int(out["tokens"]),
            "loss": round(float(out["loss"]), 4),
            "first_target": target[:300],
            "components": self.component_counts(),
        }

    # ------------------------------------------------------------------ checkpoints (FrozenWeightsCheckpoint)
    def frozen_weight_names(self) -> list[str]:
        # the model's frozen weights come back from model_path; a frozen detection head is a random init
        # that nothing rebuilds, so it stays in the checkpoint
        return [f"vlm.{n}" for n, p in self.vlm.named_parameters() if not p.requires_grad]

    def frozen_weight_source(self) -> str:
        return f"model.model_path ({self.hparams.model_path})"

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict:
        cfg = self.optim_cfg
        lr = scaled_lr(cfg, effective_batch_size(self.trainer))
        groups = vlm_param_groups(
            self.named_components(), lr=lr, weight_decay=cfg.weight_decay, lr_mult=cfg.lr_mult
        )
        optimizers = lightning_optimizers(groups, cfg, self.trainer)
        log.info(
            "optimizer %s, base lr %.3g, per component %s",
            cfg.name,
            lr,
            {g["component"]: f"{g['lr']:.3g}" for g in groups},
        )
        return optimizers

    def describe(self) -> dict[str, Any]:
        """Run facts for metrics.json / reports."""
        hp = self.hparams
        return {
            "model_path": hp.model_path,
            "dtype": hp.dtype,
            "attn_implementation": hp.attn_implementation,
            "freeze": list(hp.freeze),
            "components": self.component_counts() if self.vlm is not None else None,
            "lora": plain(self.lora_cfg),
            "det_head": plain(self.det_cfg),
            "generation": asdict(self.gen_cfg),
            "optimizer": asdict(self.optim_cfg),
            "num_classes": len(hp.class_names or []),
        }
