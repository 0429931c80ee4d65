"""Self-supervised continuation of any registry backbone with DINO self-distillation (Caron et al. 2021).

A student (backbone + :class:`DINOHead`) learns to match an EMA teacher across multi-crop views: the teacher
sees the two global crops, the student every crop, and the loss is the cross-entropy between the centred,
sharpened teacher distribution of one global view and the student distribution of every *other* view.
Everything follows the reference implementation (facebookresearch/dino, ``main_dino.py``: ``DINOLoss``,
``DINOHead``, ``MultiCropWrapper``, ``train_one_epoch``; ``utils.cosine_scheduler``):

- teacher temperature: linear warmup ``warmup_teacher_temp -> teacher_temp`` over
  ``warmup_teacher_temp_epochs`` epochs, then constant; student temperature fixed;
- centring: ``center <- m * center + (1 - m) * mean(teacher outputs)`` (all-reduced under DDP), kept as a
  buffer so a resumed run continues with it;
- teacher momentum: cosine from ``momentum_teacher`` to ``momentum_teacher_end`` over all steps;
- LR: ``blr * batch / 256`` with linear warmup and cosine decay (``tasks/optim.py``), weight decay: cosine
  from ``optimizer.weight_decay`` to ``weight_decay_end``, both per step; the last head layer is frozen for
  the first ``freeze_last_layer`` epochs.

Differences from the reference, each deliberate: the teacher runs with dropout and drop-path off (the
reference's ViTs have none; HF language models do) while its BatchNorm layers use batch statistics as in the
reference (running statistics of a fresh EMA teacher would make its outputs image-independent and collapse
training); gradient clipping is Lightning's total-norm clipping (``trainer.gradient_clip_val``) rather than
per-parameter clipping.

Batches come from :class:`transferkit.data.unlabeled.UnlabeledImageDataModule`: ``(crops, _)`` with ``crops``
a list of ``(B, 3, S_i, S_i)`` tensors in [0, 1], the two global crops first.

At the end of ``fit`` the teacher's (or student's, ``save_weights``) backbone is written to
``<run>/backbone/`` (:mod:`transferkit.backbones.saved`), which every backbone name field accepts
(``--model.backbone.name runs/<name>/backbone``), so ``transferkit compare`` and the classification configs
can evaluate the continued backbone against its starting point.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from transferkit.backbones import BackboneConfig, build_backbone_from_config
from transferkit.backbones.base import Backbone
from transferkit.errors import UserError
from transferkit.tasks.modes import apply_train_modes, fitting, note_frozen_eval_modes, release_eval_warning
from transferkit.tasks.optim import (
    OptimConfig,
    backbone_head_param_groups,
    create_optimizer,
    create_scheduler,
    effective_batch_size,
    resolve_optim_config,
    scaled_lr,
    training_steps,
)
from transferkit.tasks.options import as_dataclass

log = logging.getLogger(__name__)

#: DINO's ViT-S/16 recipe (main_dino.py defaults): AdamW, lr 5e-4 per 256 images, wd 0.04 -> 0.4,
#: 10 warmup epochs (its min lr 1e-6 is ~0: ``optimizer.min_lr`` 0.0).
DINO_OPTIM_DEFAULTS: dict[str, Any] = dict(
    name="adamw", blr=5e-4, weight_decay=0.04, layer_decay=1.0, warmup_epochs=10.0
)


@dataclass
class DinoHeadOptions:
    """The DINO projection head (``DINOHead``): MLP -> L2-normalised bottleneck -> weight-normed prototypes.

    Args:
        out_dim: number of prototypes K (DINO: 65536 for ImageNet; a few thousand suffice for small data).
        hidden_dim: width of the hidden MLP layers.
        bottleneck_dim: width of the L2-normalised bottleneck.
        nlayers: number of MLP layers (>= 1).
        use_bn: BatchNorm in the MLP (DINO: off for ViTs).
        norm_last_layer: fix the norm of the prototypes to 1 (DINO's default; more stable).
    """

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    use_bn: bool = False
    norm_last_layer: bool = True

    def __post_init__(self) -> None:
        if self.out_dim < 2:
            raise UserError(f"model.head.out_dim must be >= 2, got {self.out_dim}")
        for name in ("hidden_dim", "bottleneck_dim", "nlayers"):
            if getattr(self, name) < 1:
                raise UserError(f"model.head.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class DinoLossOptions:
    """Temperatures and centring of the DINO loss.

    Args:
        student_temp: student softmax temperature.
        teacher_temp: teacher temperature after warmup (DINO: 0.04-0.07).
        warmup_teacher_temp: teacher temperature at epoch 0.
        warmup_teacher_temp_epochs: epochs of the linear teacher-temperature warmup (0 = none).
        center_momentum: momentum of the teacher-output centre.
    """

    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9

    def __post_init__(self) -> None:
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            if not getattr(self, name) > 0:
                raise UserError(f"model.loss.{name} must be > 0, got {getattr(self, name)}")
        if self.warmup_teacher_temp_epochs < 0:
            raise UserError(
                f"model.loss.warmup_teacher_temp_epochs must be >= 0, got {self.warmup_teacher_temp_epochs}"
            )
        if not 0 <= self.center_momentum < 1:
            raise UserError(f"model.loss.center_momentum must be in [0, 1), got {self.center_momentum}")


# ---------------------------------------------------------------------- pieces of the reference code
def cosine_schedule(
    step: float, total_steps: int, base: float, final: float, warmup_steps: int = 0, warmup_start: float = 0.0
) -> float:
    """Value at ``step`` of DINO's ``utils.cosine_scheduler``: linear warmup from ``warmup_start`` to ``base``
    over ``warmup_steps``, then half-cosine from ``base`` to ``final`` at ``total_steps``.

    Written out because the reference's array version needs the total up front and timm/torch schedulers only
    drive optimiser LRs, not momentum or temperature values.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start + (base - warmup_start) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * progress))


def teacher_temperature(epoch: int, opts: DinoLossOptions) -> float:
    """DINO's ``teacher_temp_schedule[epoch]``: ``linspace(warmup, final, warmup_epochs)`` then constant."""
    n = int(opts.warmup_teacher_temp_epochs)
    if epoch >= n:
        return float(opts.teacher_temp)
    if n == 1:
        return float(opts.warmup_teacher_temp)
    return float(opts.warmup_teacher_temp + (opts.teacher_temp - opts.warmup_teacher_temp) * epoch / (n - 1))


class DINOHead(nn.Module):
    """(B, in_dim) -> (B, out_dim) prototype logits: MLP, L2 normalisation, weight-normalised linear layer.

    As the reference ``DINOHead``; the weight norm is ``torch.nn.utils.parametrizations.weight_norm`` (the
    maintained form of ``nn.utils.weight_norm``): ``last_layer.parametrizations.weight.original0`` is the
    norm g (fixed to 1 when ``norm_last_layer``), ``original1`` the direction v.
    """

    def __init__(self, in_dim: int, opts: DinoHeadOptions) -> None:
        super().__init__()
        nlayers = max(int(opts.nlayers), 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, opts.bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, opts.hidden_dim)]
            if opts.use_bn:
                layers.append(nn.BatchNorm1d(opts.hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(opts.hidden_dim, opts.hidden_dim))
                if opts.use_bn:
                    layers.append(nn.BatchNorm1d(opts.hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(opts.hidden_dim, opts.bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        from torch.nn.utils.parametrizations import weight_norm

        self.last_layer = weight_norm(nn.Linear(opts.bottleneck_dim, opts.out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        if opts.norm_last_layer:
            g.requires_grad_(False)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student over all view pairs but equal ones.

    ``forward(student_out (n_crops * B, K), teacher_out (2 * B, K), teacher_temp) -> loss`` with crops
    stacked crop-major (crop 0 of every image, then crop 1, ...), as the multi-crop wrapper produces them; it
    also updates ``center`` (1, K) from the teacher outputs (all-reduced across processes).
    """

    def __init__(self, out_dim: int, n_crops: int, opts: DinoLossOptions) -> None:
        super().__init__()
        if n_crops < 2:
            raise UserError(f"DINO needs at least the 2 global crops, got {n_crops} crops per image")
        self.n_crops = int(n_crops)
        self.student_temp = float(opts.student_temp)
        self.center_momentum = float(opts.center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        student = (student_out.float() / self.student_temp).chunk(self.n_crops)
        teacher = F.softmax((teacher_out.float() - self.center) / teacher_temp, dim=-1).detach().chunk(2)
        total, n_terms = student_out.new_zeros((), dtype=torch.float32), 0
        for iq, q in enumerate(teacher):
            for v, s in enumerate(student):
                if v == iq:
                    continue  # the student and the teacher saw the same view
                total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                n_terms += 1
        self.update_center(teacher_out)
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_center = teacher_out.float().sum(dim=0, keepdim=True)
        count = torch.tensor(float(teacher_out.shape[0]), device=teacher_out.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            dist.all_reduce(count)
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))


class MultiCropWrapper(nn.Module):
    """Backbone + head over a list of crops: one backbone pass per run of equal-resolution crops.

    ``forward(crops: list[(B, 3, S_i, S_i)]) -> (sum_i B, K)``, crop-major (reference ``MultiCropWrapper``).
    """

    def __init__(self, backbone: Backbone, head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        feats, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            feats.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        pooled = torch.cat(feats)
        return self.head(pooled.float() if pooled.dtype != torch.float32 else pooled)


def set_teacher_mode(teacher: nn.Module) -> None:
    """Eval mode (no dropout / drop-path) except BatchNorm layers, which normalise with batch statistics."""
    teacher.eval()
    for m in teacher.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()


# ---------------------------------------------------------------------- the task
#: a teacher whose per-image output entropy exceeds this fraction of log K is close to uniform (collapse)
UNIFORM_COLLAPSE = 0.85
#: a teacher whose batch-mean output has less than this fraction of log K puts every image on few prototypes
ONE_PROTOTYPE_COLLAPSE = 0.1


def collapse_check(entropies: list[tuple[float, float]], out_dim: int) -> dict[str, Any]:
    """The two DINO collapse modes from one epoch's ``(per-image entropy, entropy of the batch-mean)`` of the
    centred, sharpened teacher (nats), as fractions of ``log(out_dim)``: per-image entropy near 1 is a uniform
    output for every image, batch-mean entropy near 0 is one prototype for all. ``warning`` says which, or None."""
    log_k = math.log(out_dim)
    if not entropies:
        return {"teacher_entropy": None, "teacher_mean_entropy": None, "log_k": log_k, "warning": None}
    per_image = sum(e for e, _ in entropies) / len(entropies)
    batch_mean = sum(m for _, m in entropies) / len(entropies)
    warning = None
    if per_image >= UNIFORM_COLLAPSE * log_k:
        warning = (
            f"the teacher's per-image entropy is {per_image:.2f} of at most log K = {log_k:.2f} nats: its outputs "
            "approach uniform, DINO is collapsing; lower model.loss.teacher_temp (or its warm-up), raise "
            "model.momentum_teacher, or lower the learning rate"
        )
    elif batch_mean <= ONE_PROTOTYPE_COLLAPSE * log_k:
        warning = (
            f"the teacher's batch-mean entropy is {batch_mean:.2f} of log K = {log_k:.2f} nats: every image goes "
            "to the same few prototypes, DINO is collapsing; raise model.loss.center_momentum or lower the "
            "learning rate"
        )
    return {
        "teacher_entropy": per_image,
        "teacher_mean_entropy": batch_mean,
        "log_k": log_k,
        "warning": warning,
    }


class DinoContinuation(L.LightningModule):
    """DINO self-distillation of a registry backbone on unlabeled multi-crop batches (module docstring)."""

    #: no validation metric: self-supervised runs keep the latest weights, so best.ckpt is the last epoch
    #: (monitoring the epoch counter; two unmonitored ModelCheckpoints cannot coexist in one Trainer)
    checkpoint_monitor = ("train/epoch", "max")
    #: the continued backbone is the product (``<run>/backbone``); fit a probe on it to export a classifier
    export_task = None

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        head: DinoHeadOptions = DinoHeadOptions(),
        loss: DinoLossOptions = DinoLossOptions(),
        optimizer: OptimConfig = OptimConfig(),
        momentum_teacher: float = 0.996,
        momentum_teacher_end: float = 1.0,
        weight_decay_end: float = 0.4,
        freeze_last_layer: int = 1,
        freeze_blocks: int = 0,
        save_weights: Literal["teacher", "student"] = "teacher",
        image_size: int | None = None,
        crop_sizes: list[int] | None = None,
    ) -> None:
        """
        Args:
            backbone: which backbone to continue (name, pretrained, pooling, drop-path...); its pooled output
                feeds the DINO head (``cls`` for ViTs, as in DINO).
            head: DINO projection head.
            loss: temperatures and centring.
            optimizer: optimiser and LR schedule; None fields take DINO's defaults (AdamW, blr 5e-4,
                wd 0.04, 10 warmup epochs). ``lr_mult.backbone`` < 1 keeps a pretrained
                backbone closer to its start while the fresh head learns.
            momentum_teacher: teacher EMA momentum at step 0 (cosine schedule to ``momentum_teacher_end``).
            momentum_teacher_end: teacher EMA momentum at the last step.
            weight_decay_end: weight decay at the last step (cosine from ``optimizer.weight_decay``).
            freeze_last_layer: epochs during which the head's last layer gets no update.
            freeze_blocks: keep the input embedding and the first N blocks of the backbone frozen.
            save_weights: backbone written to ``<run>/backbone`` at the end: ``teacher`` (DINO evaluates the
                teacher) or ``student``.
            image_size: size the backbone is built at (linked from the datamodule's global crop size).
            crop_sizes: side length of each crop in a batch (linked from the datamodule; each checked against
                the backbone's input sizes).
        """
        super().__init__()
        self.backbone_cfg = as_dataclass(BackboneConfig, backbone)
        self.head_cfg = as_dataclass(DinoHeadOptions, head)
        self.loss_cfg = as_dataclass(DinoLossOptions, loss)
        raw_optim = as_dataclass(OptimConfig, optimizer)
        filled = {
            k: v if getattr(raw_optim, k) is None else getattr(raw_optim, k)
            for k, v in DINO_OPTIM_DEFAULTS.items()
        }
        self.optim_cfg = resolve_optim_config(OptimConfig(**{**raw_optim.__dict__, **filled}), "finetune")
        self.save_hyperparameters()
        for key, value in (
            ("backbone", self.backbone_cfg),
            ("head", self.head_cfg),
            ("loss", self.loss_cfg),
            ("optimizer", raw_optim),
        ):
            self.hparams[key] = asdict(value)
        if not 0.0 <= momentum_teacher <= momentum_teacher_end <= 1.0:
            raise UserError(
                f"model.momentum_teacher and momentum_teacher_end need 0 <= start <= end <= 1, got {momentum_teacher}, "
                f"{momentum_teacher_end}"
            )
        if freeze_blocks < 0 or freeze_last_layer < 0:
            raise UserError("freeze_blocks and freeze_last_layer must be >= 0")
        if save_weights not in ("teacher", "student"):
            raise UserError(f"model.save_weights must be 'teacher' or 'student', got '{save_weights}'")
        if not weight_decay_end >= 0:
            raise UserError(f"model.weight_decay_end must be >= 0, got {weight_decay_end}")
        self.student: MultiCropWrapper | None = None
        self.teacher: MultiCropWrapper | None = None
        self.dino_loss: DINOLoss | None = None
        self.final_metrics: dict[str, dict[str, Any]] = {}
        self.saved_backbone_dir: str | None = None
        self._total_steps = 1
        self._steps_per_epoch = 1
        self._last_ema_step = -1
        self._epoch_losses: list[float] = []
        self._first_epoch_loss: float | None = None
        self._epoch_entropy: list[tuple[float, float]] = []
        self._warned_collapse: str | None = None

    # ------------------------------------------------------------------ construction
    def configure_model(self) -> None:
        """Build student, teacher and loss; in a fit, set the train/eval modes before Lightning's model summary
        and eval-mode check read them."""
        if self.student is None:
            self._build()
        if fitting(self):
            self.set_train_modes()

    def _build(self) -> None:
        hp = self.hparams
        image_size = int(hp.image_size or 224)
        crop_sizes = list(hp.crop_sizes or [image_size, image_size])
        backbone = build_backbone_from_config(self.backbone_cfg, image_size=image_size)
        for size in sorted(
            set(crop_sizes)
        ):  # the global and the local crops (data.image_size/local_crop_size)
            backbone.check_input_size(size)
        if hp.freeze_blocks:
            backbone.set_trainable(backbone.frozen_names(hp.freeze_blocks))
        head = DINOHead(backbone.pooled_dim(), self.head_cfg)
        self.student = MultiCropWrapper(backbone, head)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        set_teacher_mode(self.teacher)
        self.dino_loss = DINOLoss(self.head_cfg.out_dim, len(crop_sizes), self.loss_cfg)
        trainable = sum(p.numel() for p in self.student.parameters() if p.requires_grad)
        log.info(
            "DINO continuation of %s (%s, %.2fM params, pretrained=%s): %d crops %s, %.2fM trainable params",
            backbone.name,
            backbone.family,
            backbone.num_params() / 1e6,
            backbone.pretrained,
            len(crop_sizes),
            crop_sizes,
            trainable / 1e6,
        )

    # ------------------------------------------------------------------ forward
    def forward(self, crops: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Student projections: crops (list of (B, 3, S, S) in [0, 1]) -> (n_crops * B, out_dim) logits."""
        return self.student(crops)

    def dry_run_step(self, batch: Any) -> dict[str, Any]:
        """``--validate_only``: one student and teacher forward on a multi-crop batch."""
        crops = list(batch[0])
        return {
            "batch_crops": [list(c.shape) for c in crops],
            "student_output": list(self.student(crops).shape),
            "teacher_output": list(self.teacher(crops[:2]).shape),
        }

    def _teacher_batchnorm(self) -> list[nn.Module]:
        return [m for m in self.teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def set_train_modes(self) -> None:
        """The student trains with its dropout / drop-path (frozen blocks excepted); the teacher, frozen, has
        them off but normalises with batch statistics, as in the reference."""
        apply_train_modes(self, keep_train=self._teacher_batchnorm())

    def on_fit_start(self) -> None:
        note_frozen_eval_modes(self, keep_train=self._teacher_batchnorm())

    def on_train_start(self) -> None:
        release_eval_warning()

    def on_train_epoch_start(self) -> None:
        self.set_train_modes()
        self._epoch_losses = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every image of the batch was unreadable and skipped
            return None
        crops = batch[0] if isinstance(batch, list | tuple) and isinstance(batch[0], list | tuple) else batch
        if len(crops) != self.dino_loss.n_crops:
            raise UserError(
                f"batches have {len(crops)} crops but the model was built for {self.dino_loss.n_crops}; keep "
                "model.crop_sizes unset so it follows the datamodule"
            )
        temp = teacher_temperature(self.current_epoch, self.loss_cfg)
        with torch.no_grad():
            teacher_out = self.teacher(list(crops[:2]))
        student_out = self.student(list(crops))
        loss = self.dino_loss(student_out, teacher_out, temp)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"DINO loss is {loss.item()} at step {self.global_step}; lower the learning rate "
                "(model.optimizer.blr) or enable gradient clipping (trainer.gradient_clip_val)"
            )
        b = crops[0].shape[0]
        with torch.no_grad():
            probs = F.softmax((teacher_out.float() - self.dino_loss.center) / temp, dim=-1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
            mean_p = probs.mean(0)
            mean_entropy = -(mean_p * mean_p.clamp_min(1e-12).log()).sum()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=b)
        self.log_dict(
            {
                "train/teacher_temp": temp,
                "train/teacher_entropy": entropy,
                "train/teacher_mean_entropy": mean_entropy,
                "train/lr": self.optimizers().param_groups[0]["lr"] if self._trainer is not None else 0.0,
                "train/momentum": self._momentum(self.global_step),
            },
            on_step=True,
            on_epoch=False,
            batch_size=b,
        )
        self._epoch_losses.append(float(loss.detach()))
        self._epoch_entropy.append((float(entropy), float(mean_entropy)))
        return loss

    def on_after_backward(self) -> None:
        if self.current_epoch < self.hparams.freeze_last_layer:
            for p in self.student.head.last_layer.parameters():
                p.grad = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        wd = self._weight_decay(self.global_step)
        for g in self.optimizers().param_groups:
            if g.get("name", "").endswith("/decay"):
                g["weight_decay"] = wd

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.global_step
        if step != self._last_ema_step and step > 0:  # an optimiser step happened
            self._last_ema_step = step
            self.update_teacher(self._momentum(step - 1))

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- m * teacher + (1 - m) * student over the parameters (buffers, i.e. BatchNorm running
        statistics, are the teacher's own, as in the reference)."""
        t_params = list(self.teacher.parameters())
        s_params = [p.detach() for p in self.student.parameters()]
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1 - momentum)

    def _momentum(self, step: int) -> float:
        hp = self.hparams
        return cosine_schedule(step, self._total_steps, hp.momentum_teacher, hp.momentum_teacher_end)

    def _weight_decay(self, step: int) -> float:
        return cosine_schedule(
            step, self._total_steps, self.optim_cfg.weight_decay, self.hparams.weight_decay_end
        )

    def on_train_epoch_end(self) -> None:
        self.log("train/epoch", float(self.current_epoch))
        if not self._epoch_losses:
            return
        mean = sum(self._epoch_losses) / len(self._epoch_losses)
        if self._first_epoch_loss is None:
            self._first_epoch_loss = mean
        health = collapse_check(self._epoch_entropy, self.head_cfg.out_dim)
        self._epoch_entropy = []
        if health["warning"] and health["warning"] != self._warned_collapse:
            log.warning("DINO epoch %d: %s", self.current_epoch, health["warning"])
            self._warned_collapse = health["warning"]
        self.final_metrics["train"] = {
            "loss": mean,
            "first_epoch_loss": self._first_epoch_loss,
            "teacher_temp": teacher_temperature(self.current_epoch, self.loss_cfg),
            "momentum": self._momentum(self.global_step),
            **{k: v for k, v in health.items() if k != "warning"},
            "collapse_warning": health["warning"],
        }

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict:
        cfg = self.optim_cfg
        # an absolute lr needs no batch size: the batch then only shows in the log line
        effective = effective_batch_size(self.trainer, fallback=None if cfg.lr is None else 1)
        lr = scaled_lr(cfg, effective)
        groups = backbone_head_param_groups(self.student.backbone, self.student.head, cfg, lr=lr)
        optimizer = create_optimizer(groups, cfg)
        self._total_steps, self._steps_per_epoch = training_steps(self.trainer)
        epochs = max(1, self.trainer.max_epochs or 1)
        if (cfg.warmup_epochs or 0) >= epochs:
            log.warning(
                "warmup_epochs=%s >= max_epochs=%s: the LR never reaches its peak; lower "
                "model.optimizer.warmup_epochs",
                cfg.warmup_epochs,
                epochs,
            )
        scheduler = create_scheduler(
            optimizer, cfg, total_steps=self._total_steps, steps_per_epoch=self._steps_per_epoch
        )
        log.info(
            "DINO: %s, peak lr %.3g (batch %d), wd %.3g -> %.3g, teacher momentum %.4f -> %.4f, %d steps",
            cfg.name,
            lr,
            effective,
            cfg.weight_decay,
            self.hparams.weight_decay_end,
            self.hparams.momentum_teacher,
            self.hparams.momentum_teacher_end,
            self._total_steps,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ results
    def on_fit_end(self) -> None:
        """Write the continued backbone to ``<run>/backbone`` (rank zero)."""
        if not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return
        from transferkit.backbones import save_backbone

        which = self.hparams.save_weights
        backbone = (self.teacher if which == "teacher" else self.student).backbone
        cfg = BackboneConfig(**asdict(self.backbone_cfg))
        local = Path(cfg.name.removesuffix(":random")).expanduser()
        if local.is_dir():  # a saved or save_pretrained folder: store it absolute so the save loads anywhere
            cfg.name = str(local.resolve())
        out = Path(self.trainer.default_root_dir) / "backbone"
        save_backbone(
            backbone,
            cfg,
            out,
            image_size=int(self.hparams.image_size or 224),
            source={
                "method": "dino",
                "weights": which,
                "epochs": self.current_epoch + 1,
                "steps": self.global_step,
                "start": self.backbone_cfg.name,
                "start_pretrained": self.backbone_cfg.pretrained,
            },
        )
        self.saved_backbone_dir = str(out)
        log.info(
            "wrote the continued %s backbone to %s (use it as --model.backbone.name %s)", which, out, out
        )

    def image_backbone(self) -> Backbone | None:
        return self.student.backbone if self.student is not None else None

    def describe(self) -> dict[str, Any]:
        """Run facts for metrics.json."""
        bb = self.student.backbone
        info = asdict(bb.info())
        info["trainable_params"] = sum(p.numel() for p in self.student.parameters() if p.requires_grad)
        return {
            "backbone": info,
            "ssl": {
                "method": "dino",
                "head": asdict(self.head_cfg),
                "loss": asdict(self.loss_cfg),
                "momentum_teacher": self.hparams.momentum_teacher,
                "crop_sizes": list(self.hparams.crop_sizes or []),
                "save_weights": self.hparams.save_weights,
            },
            "optimizer": asdict(self.optim_cfg),
            "saved_backbone": self.saved_backbone_dir,
        }
