"""Fine-tuning a vision-language model (Qwen2.5-VL) to detect and describe objects as JSON.

The model (transformers' ``Qwen2_5_VLForConditionalGeneration`` + its processor, :mod:`transferkit.backbones.vlm`)
reads chats built by :class:`~transferkit.vlm.data.VLMGroundingDataModule` and learns to answer
``[{"bbox_2d": [x1, y1, x2, y2], "desc": "..."}, ...]`` with boxes in the pixels of its resized image.

Training: next-token cross-entropy over the target answer's tokens only (labels -100 elsewhere), averaged
over those tokens in the batch; logits are computed only at labelled positions (the LM head never runs over
prompt and image tokens, which saves its ``(tokens x vocab)`` activation). Padded and packed batches give the
same loss. Optional DETR-style head (``det_head.enabled``): a :class:`~transferkit.heads.detr.DetrHead` reads
the LLM's last hidden states at the target image's visual tokens (their merged patch grid) and is trained with
:class:`~transferkit.heads.criterion.SetCriterion` + :class:`~transferkit.heads.matcher.HungarianMatcher`
(total loss = LM loss + ``det_head.loss_weight`` x set loss).

Components: ``vision`` (ViT), ``merger`` (vision-language merger), ``llm`` (language model + LM head) and
``det_head``; ``freeze`` lists the frozen ones, ``optimizer.lr_mult`` sets each one's LR multiplier, and
the LR is ``optimizer.blr * effective_batch / 256`` unless ``optimizer.lr`` is set. ``lora.enabled`` puts
peft LoRA adapters on the LLM's linear layers (the LLM's own weights then stay frozen).

Evaluation (validation with ``generate_on_val``, test, predict): greedy generation from the prompt, the
answer parsed by :func:`~transferkit.vlm.parse.parse_response` (fences stripped, truncated lists repaired,
malformed objects dropped), boxes mapped back to the original image (:func:`~transferkit.vlm.chat.from_resized`).
Metrics (``metrics.json``): COCO ``map``/``map_50``/``map_75``/``mar_*`` (torchmetrics, faster-coco-eval
backend; every generated object scores 1.0 — the model states no confidence — ties broken by answer order),
``desc_acc`` (exact description match among predictions matched to a ground-truth box at IoU >= 0.5),
``parse_failure_rate`` (answers with no JSON at all), ``repaired_rate``, ``dropped_objects``, the answer
loss, and the detection head's own mAP when it is on. ``predict`` writes ``<run>/predictions.jsonl``
(grounding records with the raw ``response``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.aggregation import SumMetric
from torchmetrics.detection import MeanAveragePrecision

from transferkit.backbones.vlm import (
    VLM_COMPONENTS,
    component_of,
    load_processor,
    load_vlm,
    lora_target_regex,
)
from transferkit.data.detection.datamodule import object_label
from transferkit.data.grounding import boxes_to_model
from transferkit.errors import UserError
from transferkit.heads.criterion import DEFAULT_WEIGHTS, LOSSES, SetCriterion
from transferkit.heads.detr import DetrHead, postprocess
from transferkit.heads.matcher import HungarianMatcher
from transferkit.tasks.classification import as_dataclass
from transferkit.tasks.common import hparams_from_checkpoint, set_hparam
from transferkit.tasks.detection import GroundingPredictionWriter, match_for_description
from transferkit.tasks.optim import OptimConfig, effective_batch_size, lightning_optimizers, scaled_lr
from transferkit.vlm.chat import IGNORE_INDEX, from_resized
from transferkit.vlm.collate import left_pad_prompts, packed_position_ids
from transferkit.vlm.parse import parse_response

log = logging.getLogger(__name__)

COMPONENTS = (*VLM_COMPONENTS, "det_head")
#: full fine-tuning recipe: AdamW, no weight decay, blr 5e-5 (2.5e-5 at an effective batch of 128)
VLM_OPTIM_DEFAULTS: dict[str, Any] = dict(name="adamw", blr=5e-5, weight_decay=0.0, warmup_epochs=0.1)
#: LoRA trains few parameters from zero: a 40x larger base LR
LORA_BLR = 2e-3
#: the vision encoder moves 10x slower than the rest (Qwen2.5-VL fine-tuning practice), the fresh head 10x faster
VLM_LR_MULT = {"vision": 0.1, "merger": 1.0, "llm": 1.0, "det_head": 10.0}
MAP_KEYS = ("map", "map_50", "map_75", "mar_1", "mar_10", "mar_100")


@dataclass
class LoraOptions:
    """LoRA adapters (peft) on the LLM's linear layers.

    Args:
        enabled: inject LoRA; the LLM's own weights freeze, the adapters train (unless ``llm`` is frozen).
        r: rank of the update matrices.
        alpha: scaling numerator (update scaled by alpha / r).
        dropout: dropout on the LoRA input.
        target_modules: LLM linear layers to adapt (attention and MLP projections by default).
    """

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class DetHeadOptions:
    """A DETR-style detection head on the LLM's hidden states at the target image's tokens.

    Args:
        enabled: add the head and its set loss.
        loss_weight: weight of the set loss next to the LM loss.
        hidden_dim: decoder width (multiple of 4 and of nhead).
        num_queries: object queries = the most detections per image.
        num_layers: decoder layers.
        nhead: attention heads.
        dim_feedforward: decoder MLP width.
        dropout: decoder dropout.
        aux_loss: losses on every decoder layer's predictions.
        cost_class: matching weight of the class probability.
        cost_bbox: matching weight of the L1 box distance.
        cost_giou: matching weight of the GIoU.
        weights: set-criterion term weights (``loss_ce``, ``loss_bbox``, ``loss_giou``, ``loss_obj``, ``loss_desc``).
        eos_coef: class weight of "no object".
        description: also classify each object's description over the training descriptions.
    """

    enabled: bool = False
    loss_weight: float = 1.0
    hidden_dim: int = 256
    num_queries: int = 50
    num_layers: int = 3
    nhead: int = 8
    dim_feedforward: int = 1024
    dropout: float = 0.1
    aux_loss: bool = True
    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    weights: dict[str, float] = field(default_factory=dict)
    eos_coef: float = 0.1
    description: bool = True


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


def vlm_param_groups(
    named: list[tuple[str, torch.nn.Parameter, str]],
    *,
    lr: float,
    weight_decay: float,
    lr_mult: dict[str, float],
) -> list[dict]:
    """Optimizer param groups per (component, decay/no-decay) over ``(name, param, component)`` triples with
    ``requires_grad``; 1-D parameters (norms, biases) get no weight decay. Each group carries ``lr``
    (``lr * lr_mult[component]``), ``weight_decay``, ``lr_scale``, ``component``, ``name``, ``param_names``."""
    buckets: dict[tuple[str, bool], dict] = {}
    for name, p, comp in named:
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1
        key = (comp, no_decay)
        if key not in buckets:
            scale = float(lr_mult.get(comp, 1.0))
            buckets[key] = {
                "params": [],
                "param_names": [],
                "lr": lr * scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": scale,
                "component": comp,
                "name": f"{comp}/{'no_decay' if no_decay else 'decay'}",
            }
        buckets[key]["params"].append(p)
        buckets[key]["param_names"].append(name)
    if not buckets:
        raise UserError("nothing to train: every component is frozen (see model.freeze)")
    order = {c: i for i, c in enumerate(COMPONENTS)}
    return sorted(buckets.values(), key=lambda g: (order[g["component"]], g["name"]))


class VLMPredictionWriter(GroundingPredictionWriter):
    """Writes ``predict`` answers as grounding JSONL (``<run>/predictions.jsonl`` by default), one record per
    image::

        {"images": ["/abs/img.png"], "width": W, "height": H, "objects": [{"bbox_2d": [x1, y1, x2, y2],
         "desc": "red circle/large/visible", "category": "red circle"}], "response": "<the raw answer>",
         "parse_failed": false, "repaired": false, "dropped_objects": 0}

    Boxes are absolute pixels of the original image. The file appears atomically when prediction ends.

    Args:
        output: where to write; default ``<trainer.default_root_dir>/predictions.jsonl``.
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(output=output)

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for record in prediction:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.count += 1
            self.failed += int(record["parse_failed"])

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self.failed = 0

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_predict_end(trainer, pl_module)
        if self.count:
            log.info("%d of %d answers held no parseable JSON (parse_failed)", self.failed, self.count)


class GroundingVLMTask(L.LightningModule):
    """Qwen2.5-VL fine-tuned to answer grounding JSON (module docstring).

    Batches come from :class:`~transferkit.vlm.data.VLMGroundingDataModule` (see
    :mod:`transferkit.vlm.collate` for their keys).
    """

    def __init__(
        self,
        model_path: str = "qwen2.5-vl-tiny",
        dtype: Literal["float32", "bfloat16", "auto"] = "float32",
        attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa",
        freeze: list[str] = ["vision"],  # noqa: B006 (jsonargparse reads the default from the signature)
        lora: LoraOptions = LoraOptions(),
        det_head: DetHeadOptions = DetHeadOptions(),
        optimizer: OptimConfig = OptimConfig(),
        gradient_checkpointing: bool = False,
        generation: GenerationOptions = GenerationOptions(),
        generate_on_val: bool = True,
        save_frozen_weights: bool = True,
        num_preview_images: int = 8,
        class_names: list[str] | None = None,
        desc_vocab: list[str] | None = None,
    ) -> None:
        """
        Args:
            model_path: Hub id (``Qwen/Qwen2.5-VL-3B-Instruct``, online), local ``save_pretrained`` directory,
                or ``qwen2.5-vl-tiny`` (tiny random-init model built offline on first use).
            dtype: Weights dtype when loading: ``float32`` (with ``32-true`` or ``bf16-mixed`` precision),
                ``bfloat16`` (with ``bf16-true``) or ``auto`` (the checkpoint's).
            attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2`` (GPU; packed rows become varlen).
            freeze: Components kept fixed: any of ``vision``, ``merger``, ``llm``, ``det_head``.
            lora: LoRA adapters on the LLM.
            det_head: Optional DETR-style head on the LLM's hidden states.
            optimizer: Optimiser and schedule; None fields take AdamW, blr 5e-5 (2e-3 with LoRA), weight decay 0,
                warmup 0.1 epoch; ``lr_mult`` per component (default vision 0.1, merger 1, llm 1, det_head 10).
            gradient_checkpointing: Recompute activations in the backward pass (ViT blocks and LLM layers).
            generation: Decoding options for evaluation and prediction.
            generate_on_val: Generate and score answers on validation (checkpoints by ``val/map_50``);
                False: validation computes only the answer loss (checkpoints by ``val/loss``).
            save_frozen_weights: Keep frozen parameters in checkpoints; False drops them (they are reloaded
                from ``model_path``), e.g. a LoRA checkpoint holds only the adapters.
            num_preview_images: Test images drawn with boxes into ``<run>/predictions/``.
            class_names: Class names for mAP and the detection head (default: the datamodule's).
            desc_vocab: Description vocabulary of the detection head (default: the datamodule's).
        """
        super().__init__()
        self.lora_cfg = as_dataclass(LoraOptions, lora)
        self.det_cfg = as_dataclass(DetHeadOptions, det_head)
        self.gen_cfg = as_dataclass(GenerationOptions, generation)
        opt = as_dataclass(OptimConfig, optimizer)
        self.save_hyperparameters()
        for key, value in (
            ("lora", self.lora_cfg),
            ("det_head", self.det_cfg),
            ("generation", self.gen_cfg),
            ("optimizer", opt),
        ):
            self.hparams[key] = asdict(value)
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
        if opt.scheduler not in ("cosine", "constant"):
            raise UserError(f"unknown scheduler '{opt.scheduler}'; use 'cosine' or 'constant'")
        if self.lora_cfg.enabled and "llm" in freeze:
            raise UserError("lora.enabled trains adapters inside the LLM; remove 'llm' from model.freeze")
        if self.det_cfg.enabled and (self.det_cfg.num_queries < 1 or self.det_cfg.num_layers < 1):
            raise UserError("det_head.num_queries and det_head.num_layers must be >= 1")
        unknown = set(self.det_cfg.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise UserError(f"unknown det_head weight(s) {sorted(unknown)}; known: {list(DEFAULT_WEIGHTS)}")
        if self.gen_cfg.max_new_tokens < 1 or self.gen_cfg.num_beams < 1:
            raise UserError("generation.max_new_tokens and generation.num_beams must be >= 1")
        defaults = {
            **VLM_OPTIM_DEFAULTS,
            "blr": LORA_BLR if self.lora_cfg.enabled else VLM_OPTIM_DEFAULTS["blr"],
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
        self._previews: list[tuple[str, dict, dict]] = []
        if class_names is not None:
            self.configure_model()

    # ------------------------------------------------------------------ construction
    def _ensure_processor(self) -> Any:
        if self.processor is None:
            self.processor = load_processor(self.hparams.model_path)
        return self.processor

    def bind_datamodule(self, dm: Any) -> None:
        """Give ``dm`` the model's processor; take ``class_names``/``desc_vocab`` from it where not given."""
        if hasattr(dm, "attach_processor"):
            dm.attach_processor(self._ensure_processor())
        for key in ("class_names", "desc_vocab"):
            if self.hparams.get(key) is None and hasattr(dm, key):
                set_hparam(self, key, list(getattr(dm, key)))

    def configure_model(self) -> None:
        """Load the model and processor, apply LoRA / freezing / checkpointing, build the optional head."""
        if self._trainer is not None and getattr(self._trainer, "datamodule", None) is not None:
            if self.vlm is None:
                hparams_from_checkpoint(self, ("class_names", "desc_vocab"))
            self.bind_datamodule(self._trainer.datamodule)  # every run: a new datamodule needs the processor
        if self.vlm is not None:
            return
        hp = self.hparams
        self._ensure_processor()
        self.vlm = load_vlm(hp.model_path, dtype=hp.dtype, attn_implementation=hp.attn_implementation)
        self.vlm.config.use_cache = False  # training never needs the KV cache; generate() turns it on
        self.vlm.train()  # from_pretrained returns eval mode; Lightning switches modes per loop from here
        if self.lora_cfg.enabled:
            self._inject_lora()
        self._apply_freeze()
        if hp.gradient_checkpointing:
            self.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.det_cfg.enabled:
            self._build_det_head()
        self.end_token_ids = self._end_tokens()
        kw = dict(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval", class_metrics=True)
        self.map_metrics = torch.nn.ModuleDict({s: MeanAveragePrecision(**kw) for s in ("val", "test")})
        self.counts = torch.nn.ModuleDict(
            {
                f"{s}_{k}": SumMetric()
                for s in ("val", "test")
                for k in (
                    "answers",
                    "failed",
                    "repaired",
                    "dropped",
                    "objects",
                    "correct",
                    "matched",
                    "nll",
                    "tokens",
                )
            }
        )
        if self.det_head is not None:
            self.head_map = torch.nn.ModuleDict({s: MeanAveragePrecision(**kw) for s in ("val", "test")})
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
        config = LoraConfig(
            r=o.r,
            lora_alpha=o.alpha,
            lora_dropout=o.dropout,
            target_modules=lora_target_regex(o.target_modules),
        )
        try:
            inject_adapter_in_model(config, self.vlm)
        except ValueError as e:
            raise UserError(
                f"LoRA could not adapt the LLM with target_modules={o.target_modules}: {e}"
            ) from None

    def _apply_freeze(self) -> None:
        frozen = set(self.hparams.freeze)
        for n, p in self.vlm.named_parameters():
            comp = component_of(n)
            if comp in frozen:
                p.requires_grad_(False)
            elif comp == "llm" and self.lora_cfg.enabled:
                p.requires_grad_("lora_" in n)
            else:
                p.requires_grad_(True)

    def _build_det_head(self) -> None:
        hp, d = self.hparams, self.det_cfg
        if not hp.class_names:
            raise UserError("det_head needs class_names: train with a datamodule or set model.class_names")
        num_descs = len(hp.desc_vocab or []) if d.description else 0
        width = self.vlm.config.text_config.hidden_size
        self.det_head = DetrHead(
            [width],
            len(hp.class_names),
            num_descs,
            hidden_dim=d.hidden_dim,
            num_queries=d.num_queries,
            num_layers=d.num_layers,
            nhead=d.nhead,
            dim_feedforward=d.dim_feedforward,
            dropout=d.dropout,
            aux_loss=d.aux_loss,
        )
        self.criterion = SetCriterion(
            len(hp.class_names),
            HungarianMatcher(d.cost_class, d.cost_bbox, d.cost_giou),
            weight_dict=d.weights,
            eos_coef=d.eos_coef,
            losses=tuple(x for x in LOSSES if x != "desc" or num_descs > 0),
        )
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
        label_from = getattr(getattr(self._trainer, "datamodule", None), "hparams", {}).get(
            "label_from", "category"
        )
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
        if self.det_head is not None:
            self.log(f"{split}/det_loss", out["det_loss"], batch_size=bs, sync_dist=True)
            self._head_eval(out["det_outputs"], batch, split)
        if split == "val" and not self.hparams.generate_on_val:
            return
        texts = self.generate_answers(batch)
        dets = self.answers_to_detections(texts, batch)
        preds = [
            {
                "boxes": d["boxes"].to(self.device),
                "scores": d["scores"].to(self.device),
                "labels": d["labels"].to(self.device),
            }
            for d in dets
        ]
        gts = [
            {"boxes": m["boxes"].to(self.device), "labels": m["labels"].to(self.device)}
            for m in batch["meta"]
        ]
        self.map_metrics[split].update(preds, gts)
        correct = matched = 0
        for d, m in zip(dets, batch["meta"]):
            pairs = match_for_description(d["boxes"], d["scores"], m["boxes"])
            matched += len(pairs)
            correct += sum(int(d["desc"][p] == m["desc"][q]) for p, q in pairs)
        dev = self.device
        for key, value in (
            ("answers", len(dets)),
            ("failed", sum(d["parsed"].failed for d in dets)),
            ("repaired", sum(d["parsed"].repaired for d in dets)),
            ("dropped", sum(d["parsed"].dropped for d in dets)),
            ("objects", sum(len(d["desc"]) for d in dets)),
            ("correct", correct),
            ("matched", matched),
        ):
            c[f"{split}_{key}"].update(torch.tensor(float(value), device=dev))
        if split == "test" and len(self._previews) < self.hparams.num_preview_images:
            for text, d, m in zip(texts, dets, batch["meta"]):
                if len(self._previews) < self.hparams.num_preview_images:
                    self._previews.append((text, {k: v for k, v in d.items() if k != "parsed"}, m))

    def _head_eval(self, outputs: dict[str, Any], batch: dict[str, Any], split: str) -> None:
        sizes = torch.tensor([list(m["orig_size"]) for m in batch["meta"]], device=self.device)
        dets = postprocess(outputs, sizes)
        gts = [
            {"boxes": m["boxes"].to(self.device), "labels": m["labels"].to(self.device)}
            for m in batch["meta"]
        ]
        self.head_map[split].update([{k: d[k] for k in ("boxes", "scores", "labels")} for d in dets], gts)

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
        if generated:
            metric = self.map_metrics[split]
            m = metric.compute()
            metric.reset()
            answers = self._count(split, "answers")
            matched, correct = self._count(split, "matched"), self._count(split, "correct")
            scalars = {k: float(m[k]) for k in MAP_KEYS}
            names = list(self.hparams.class_names or [])
            classes = m["classes"].flatten().tolist()
            per_class = m["map_per_class"].flatten().tolist()
            result.update(
                scalars,
                desc_acc=correct / matched if matched else 0.0,
                desc_matched=int(matched),
                parse_failure_rate=self._count(split, "failed") / answers if answers else 0.0,
                repaired_rate=self._count(split, "repaired") / answers if answers else 0.0,
                dropped_objects=int(self._count(split, "dropped")),
                objects_per_answer=self._count(split, "objects") / answers if answers else 0.0,
                answers=int(answers),
                per_class_ap={names[c]: float(a) for c, a in zip(classes, per_class) if 0 <= c < len(names)},
            )
            for k in (*MAP_KEYS, "desc_acc", "parse_failure_rate"):
                self.log(f"{split}/{k}", float(result[k]), prog_bar=k in ("map_50", "parse_failure_rate"))
        else:
            for k in ("answers", "failed", "repaired", "dropped", "objects", "correct", "matched"):
                self.counts[f"{split}_{k}"].reset()
        if self.det_head is not None:
            hm = self.head_map[split].compute()
            self.head_map[split].reset()
            result["det_head"] = {k: float(hm[k]) for k in MAP_KEYS}
            self.log(f"{split}/head_map_50", result["det_head"]["map_50"])
        self.final_metrics[split] = result

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._previews = []

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
        if self._previews and self.trainer.is_global_zero and self.trainer.default_root_dir:
            self.save_previews(Path(self.trainer.default_root_dir) / "predictions")
        self._previews = []

    def save_previews(self, out_dir: Path, scale: int = 4) -> list[Path]:
        """Draw the kept test images (upscaled ``scale`` x) with ground truth (green) and parsed answers (red,
        labelled with their description) into ``out_dir/test_*.png``; the raw answers go to ``answers.txt``."""
        from torchvision.io import write_png
        from torchvision.transforms.v2.functional import pil_to_tensor
        from torchvision.utils import draw_bounding_boxes

        from transferkit.data.sources import load_rgb

        out_dir.mkdir(parents=True, exist_ok=True)
        paths, lines = [], []
        for i, (text, det, meta) in enumerate(self._previews):
            img = pil_to_tensor(load_rgb(meta["image"]))
            big = torch.nn.functional.interpolate(img[None].float(), scale_factor=scale, mode="nearest")[0]
            canvas = big.clamp(0, 255).to(torch.uint8)
            if len(meta["boxes"]):
                canvas = draw_bounding_boxes(canvas, meta["boxes"] * scale, colors="lime", width=1)
            if len(det["boxes"]):
                canvas = draw_bounding_boxes(
                    canvas, det["boxes"] * scale, labels=det["desc"], colors="red", width=2
                )
            path = out_dir / f"test_{i:02d}.png"
            write_png(canvas, str(path))
            paths.append(path)
            lines.append(f"test_{i:02d} {meta['image']}\n{text}\n")
        (out_dir / "answers.txt").write_text("\n".join(lines), encoding="utf-8")
        log.info("drew %d test images with boxes into %s", len(paths), out_dir)
        return paths

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
        """A :class:`VLMPredictionWriter` unless the trainer already has one."""
        trainer_cbs = self.trainer.callbacks if self._trainer is not None else []
        if any(isinstance(c, GroundingPredictionWriter) for c in trainer_cbs):
            return []
        return [VLMPredictionWriter()]

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

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.save_frozen_weights:
            return
        frozen = {f"vlm.{n}" for n, p in self.vlm.named_parameters() if not p.requires_grad}
        if self.det_head is not None:
            frozen |= {f"det_head.{n}" for n, p in self.det_head.named_parameters() if not p.requires_grad}
        state = checkpoint["state_dict"]
        omitted = sorted(k for k in state if k in frozen)
        for k in omitted:
            del state[k]
        checkpoint["frozen_weights_omitted"] = omitted

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        omitted = checkpoint.get("frozen_weights_omitted") or []
        if omitted:
            current = self.state_dict()
            missing = [k for k in omitted if k not in current]
            if missing:
                raise UserError(f"checkpoint omits frozen weights this model lacks: {missing[:5]}")
            # frozen weights come from model_path, as they did when the checkpoint was written
            checkpoint["state_dict"].update({k: current[k] for k in omitted})

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
            "lora": asdict(self.lora_cfg),
            "det_head": asdict(self.det_cfg),
            "generation": asdict(self.gen_cfg),
            "optimizer": asdict(self.optim_cfg),
            "num_classes": len(hp.class_names or []),
        }
