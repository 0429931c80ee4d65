"""The backbone interface: the one seam every head, probe, ranker and exporter uses.

Every adapter (HF vision, timm, language model, ...) subclasses :class:`Backbone` and implements
``_forward_tokens`` and ``_forward_intermediates``; everything else (normalisation, pooling, forward) is
shared here so callers never ask "is this a ViT or a GPT?".

Input contract: ``images`` are ``(B, 3, H, W)`` float tensors with values in ``[0, 1]`` (what
``torchvision.transforms.v2.ToDtype(float32, scale=True)`` yields). The adapter normalises them with its
own mean/std, so data pipelines never need to know which backbone they feed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transferkit.backbones.poolings import POOLINGS  # noqa: F401  (re-exported)
from transferkit.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BackboneInfo:
    """Static facts about a backbone, reported in tables and exported artifacts."""

    name: str
    family: str
    pretrained: bool
    embed_dim: int
    patch_size: int
    num_prefix_tokens: int
    pooling: str
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: parameters the image forward uses (:meth:`Backbone.num_params`)
    num_params: int
    source: str = ""
    extra: dict = field(default_factory=dict)
    #: what ``num_params`` leaves out, ``'<module> (<why>)'`` -> parameters (``Backbone.left_out_parameters``)
    left_out_params: dict[str, int] = field(default_factory=dict)


class Backbone(nn.Module):
    """Base class of all image encoders.

    Subclasses set ``embed_dim``, ``patch_size``, ``num_prefix_tokens`` and call ``super().__init__`` with
    their normalisation, input size and default pooling, then implement:

    - ``_forward_tokens(x) -> (B, N, D)`` on normalised images;
    - ``_forward_intermediates(x, indices) -> list[(B, N, D)]`` on normalised images;
    - ``layer_groups() -> list[list[str]]`` ordered parameter-name groups (input side first).
    """

    family: str = "generic"
    #: ``vision``, ``language`` or ``vision-language`` (a CLIP/SigLIP image tower)
    modality: str = "vision"
    #: the input side must be a multiple of ``patch_size`` (patch-token models); CNNs take any size >= it
    needs_patch_multiple: bool = True
    #: Module-name suffixes LoRA targets by default (peft ``target_modules``).
    lora_target_modules: Sequence[str] = ()
    #: Whether ``_forward_intermediates`` uses the last ``num_blocks`` blocks.
    num_blocks: int = 0

    def __init__(
        self,
        *,
        name: str,
        pretrained: bool,
        embed_dim: int,
        patch_size: int,
        num_prefix_tokens: int,
        input_size: int,
        pooling: str,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        source: str = "",
    ) -> None:
        super().__init__()
        self.name = name
        self.pretrained = pretrained
        self.embed_dim = int(embed_dim)
        self.patch_size = int(patch_size)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.input_size = int(input_size)
        self.source = source
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.pooling = self.check_pooling(pooling)
        #: parts of the source model the adapter removed because images never use them (a BERT pooler, a
        #: mask token): ``'<module> (<why>)'`` -> parameters; see :meth:`left_out_parameters`
        self.removed_parameters: dict[str, int] = {}

    # ------------------------------------------------------------------ subclass API
    def _forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _forward_intermediates(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        raise NotImplementedError

    def layer_groups(self) -> list[list[str]]:
        """Ordered groups of parameter names, from the input embedding to the output norm.

        Group 0 is the input embedding (patch embedding, position embeddings, prefix tokens), then one
        group per block, then whatever follows the last block (final norm, pooler). Every parameter
        appears in exactly one group. Used for layer-wise LR decay and "freeze the first N blocks".
        """
        raise NotImplementedError

    def new_parameter_names(self) -> set[str]:
        """Parameters the adapter creates fresh even when the backbone is pretrained (e.g. the PatchEmbed of a
        language model). Partial fine-tuning and LoRA keep them trainable; a linear probe freezes them too."""
        return set()

    def no_weight_decay(self) -> set[str]:
        """Names of parameters (beyond 1-D ones) that should not be weight-decayed."""
        return set()

    def unused_parameters(self) -> dict[str, str]:
        """Parameters this backbone holds that the image forward (``forward_features`` + ``pool``) never uses,
        name -> why (a language model's token-embedding table, a timm classifier-head norm). They receive no
        gradient, are frozen by the adapter, and :meth:`num_params` leaves them out."""
        return {}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory by recomputing block activations in backward."""
        raise UserError(f"backbone '{self.name}' does not support gradient checkpointing")

    @property
    def wrapped(self) -> nn.Module:
        """The model the adapter wraps (a timm model, a transformers vision model or language model)."""
        raise NotImplementedError

    def hf_config(self) -> object | None:
        """The wrapped model's transformers config (to rebuild the architecture offline), or None."""
        config = getattr(self.wrapped, "config", None)
        return config if hasattr(config, "save_pretrained") else None

    def attention_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every block, a list of ``(B, heads, N, N)`` with rows summing to 1, for
        ``images (B, 3, H, W)`` in ``[0, 1]``. A backbone without attention (a CNN) raises :class:`UserError`."""
        raise UserError(
            f"'{self.name}' is a convolutional backbone ({self.family}): it has no attention maps; use "
            "`transferkit analyze activations` for per-layer activations instead"
        )

    def source_head(self) -> object | None:
        """The pretrained classifier of the source task (LEEP/NCE's source predictions): a callable on pooled
        features ``(N, D)`` returning probabilities ``(N, C_source)`` with its ``pooling``; None when the
        backbone has none (self-supervised, language models, random inits)."""
        return None

    def check_input_size(self, size: int) -> int:
        """``size`` if square images of that side can enter; a one-line error naming the sizes that can."""
        size = int(size)
        if size < self.patch_size:
            raise UserError(
                f"image size {size} is smaller than the patch size {self.patch_size} of backbone '{self.name}'; "
                f"use at least {self.patch_size} (data.image_size)"
            )
        if self.needs_patch_multiple and size % self.patch_size:
            lo = size // self.patch_size * self.patch_size
            raise UserError(
                f"image size {size} is not a multiple of the patch size {self.patch_size} of backbone "
                f"'{self.name}'; use {lo} or {lo + self.patch_size} (data.image_size)"
            )
        return size

    def named_blocks(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of each block in ``layer_groups()`` order: the deepest module holding all of the
        block's parameters (e.g. ``model.blocks.3``, ``lm.encoder.layer.1``, a CNN stage)."""
        out = []
        for gi, names in enumerate(self.layer_groups()[1:-1]):
            if not names:
                continue
            parts = [n.split(".")[:-1] for n in names]
            common: list[str] = []
            for level in zip(*parts):
                if len(set(level)) != 1:
                    break
                common.append(level[0])
            name = ".".join(common)
            if not name:
                raise UserError(f"cannot locate block {gi} of '{self.name}' (its parameters share no module)")
            out.append((name, self.get_submodule(name)))
        return out

    # ------------------------------------------------------------------ freezing (the one rule)
    def frozen_names(self, blocks: int | None = None, *, include_new: bool = False) -> set[str]:
        """Parameter names frozen by "freeze the input embedding and the first ``blocks`` blocks" (None: the
        whole backbone). Parameters the adapter made fresh (``new_parameter_names``, e.g. a language model's
        PatchEmbed) stay trainable unless ``include_new`` (a linear probe freezes them too)."""
        groups = self.layer_groups()
        if blocks is None:
            names = {n for n, _ in self.named_parameters()}
        else:
            if not 0 <= int(blocks) <= len(groups) - 2:
                raise UserError(
                    f"freeze_blocks={blocks} but backbone '{self.name}' has {len(groups) - 2} blocks; use 0 to "
                    f"{len(groups) - 2}"
                )
            names = {n for g in groups[: int(blocks) + 1] for n in g} if blocks else set()
        return names if include_new else names - self.new_parameter_names()

    def gradient_free_names(self) -> set[str]:
        """Frozen parameters no gradient passes through: those of the layer groups before the first group
        with a trainable parameter (all of them when nothing trains). Frozen blocks after a trainable one
        (LoRA, a language model's new PatchEmbed under freeze_blocks) still pass gradients and are excluded."""
        params = dict(self.named_parameters())
        out: set[str] = set()
        for group in self.layer_groups():
            if any(params[n].requires_grad for n in group if n in params):
                return out
            out |= {n for n in group if n in params}
        return out

    def fixed_parameter_names(self) -> set[str]:
        """Parameters the adapter keeps fixed itself (unused vocabulary embeddings, unused heads): those that
        do not require grad when first asked (the builder asks right after construction)."""
        if not hasattr(self, "_fixed_names"):
            self._fixed_names = {n for n, p in self.named_parameters() if not p.requires_grad}
        return self._fixed_names

    def set_trainable(self, frozen: Iterable[str]) -> None:
        """``requires_grad`` = not in ``frozen`` and not :meth:`fixed_parameter_names`."""
        fixed, frozen = self.fixed_parameter_names(), set(frozen)
        for n, p in self.named_parameters():
            p.requires_grad_(n not in frozen and n not in fixed)

    # ------------------------------------------------------------------ shared behaviour
    @property
    def supported_poolings(self) -> tuple[str, ...]:
        return POOLINGS if self.num_prefix_tokens > 0 else ("mean", "last")

    def check_pooling(self, pooling: str) -> str:
        if pooling not in self.supported_poolings:
            raise UserError(
                f"pooling '{pooling}' is not available for backbone '{self.name}' "
                f"(it has {self.num_prefix_tokens} prefix tokens); choose one of {list(self.supported_poolings)}"
            )
        return pooling

    def reset_normalization(
        self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> None:
        """Set the normalisation statistics (default: the backbone's own ``mean``/``std``) and their buffers."""
        self.mean = tuple(float(v) for v in (mean if mean is not None else self.mean))
        self.std = tuple(float(v) for v in (std if std is not None else self.std))
        with torch.no_grad():
            device = self._mean.device if self._mean.device.type != "meta" else torch.device("cpu")
            self._mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
            self._std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> normalised with this backbone's mean/std."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise UserError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        return (images - self._mean.to(images.dtype)) / self._std.to(images.dtype)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> tokens (B, N, D), prefix tokens first."""
        return self._forward_tokens(self.normalize(images))

    def forward_intermediates(
        self, images: torch.Tensor, indices: int | Sequence[int] = 1
    ) -> list[torch.Tensor]:
        """Tokens after selected blocks: a list of (B, N, D), in block order.

        ``indices`` is either an int n (the last n blocks) or block indices (negative counts from the end).
        """
        return self._forward_intermediates(self.normalize(images), self.resolve_indices(indices))

    def resolve_indices(self, indices: int | Sequence[int]) -> list[int]:
        n = self.num_blocks
        if isinstance(indices, int):
            if not 1 <= indices <= n:
                raise UserError(f"asked for the last {indices} blocks of '{self.name}', which has {n}")
            return list(range(n - indices, n))
        out = []
        for i in indices:
            j = i + n if i < 0 else i
            if not 0 <= j < n:
                raise UserError(f"block index {i} out of range for '{self.name}' with {n} blocks")
            out.append(j)
        return sorted(set(out))

    def pool(self, tokens: torch.Tensor, pooling: str | None = None) -> torch.Tensor:
        """tokens (B, N, D) -> (B, D) (or (B, 2D) for ``cls+mean``)."""
        pooling = self.check_pooling(pooling or self.pooling)
        p = self.num_prefix_tokens
        if pooling == "cls":
            return tokens[:, 0]
        if pooling == "mean":
            return tokens[:, p:].mean(dim=1)
        if pooling == "last":
            return tokens[:, -1]
        return torch.cat([tokens[:, 0], tokens[:, p:].mean(dim=1)], dim=-1)

    def pooled_dim(self, pooling: str | None = None) -> int:
        return 2 * self.embed_dim if (pooling or self.pooling) == "cls+mean" else self.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> pooled features (B, pooled_dim)."""
        return self.pool(self.forward_features(images))

    def num_params(self, trainable_only: bool = False, *, include_unused: bool = False) -> int:
        """Parameters the image forward uses: every parameter that receives a gradient from
        ``pool(forward_features(images))``, i.e. all held parameters but :meth:`unused_parameters` (what was
        left out: :meth:`left_out_parameters`). ``trainable_only``: those with ``requires_grad``;
        ``include_unused``: every held parameter, used or not."""
        unused = set() if include_unused else set(self.unused_parameters())
        return sum(
            p.numel()
            for n, p in self.named_parameters()
            if n not in unused and (p.requires_grad or not trainable_only)
        )

    def left_out_parameters(self) -> dict[str, int]:
        """What :meth:`num_params` does not count, ``'<module> (<why>)'`` -> parameters: held parameters the
        image forward never uses (:meth:`unused_parameters`, summed per module) and parts of the source model
        the adapter removed at build (:attr:`removed_parameters`), e.g. ``{'lm.embeddings.word_embeddings
        (token-embedding table, unused by image inputs)': 11720448, 'lm.pooler (...)': 147840}``."""
        params = dict(self.named_parameters())
        out: dict[str, int] = {}
        for name, why in sorted(self.unused_parameters().items()):
            key = f"{name.rsplit('.', 1)[0]} ({why})"
            out[key] = out.get(key, 0) + params[name].numel()
        out.update(self.removed_parameters)
        return out

    def info(self) -> BackboneInfo:
        """Static facts; ``extra`` holds the modality and the adapter's own facts."""
        return BackboneInfo(
            name=self.name,
            family=self.family,
            pretrained=self.pretrained,
            embed_dim=self.embed_dim,
            patch_size=self.patch_size,
            num_prefix_tokens=self.num_prefix_tokens,
            pooling=self.pooling,
            input_size=self.input_size,
            mean=self.mean,
            std=self.std,
            num_params=self.num_params(),
            source=self.source,
            extra={"modality": self.modality},
            left_out_params=self.left_out_parameters(),
        )


def groups_from_patterns(names: Iterable[str], stem: str, block: str, num_blocks: int) -> list[list[str]]:
    """Split parameter names into ``[stem, block_0 .. block_{n-1}, rest]`` groups by regex.

    ``stem`` matches the input-embedding parameters; ``block`` must contain one ``(\\d+)`` group giving the
    block index. Everything else lands in the final group. Empty stem/rest groups are kept so that group
    ``i + 1`` is always block ``i``.
    """
    groups: list[list[str]] = [[] for _ in range(num_blocks + 2)]
    stem_re, block_re = re.compile(stem), re.compile(block)
    for n in names:
        m = block_re.search(n)
        if m:
            groups[int(m.group(1)) + 1].append(n)
        elif stem_re.search(n):
            groups[0].append(n)
        else:
            groups[-1].append(n)
    return groups


def check_vision_options(where: str, patch_size: int | None, keep_position_embeddings: bool) -> None:
    """A vision backbone has its own patch size and position embeddings: the language-model options are an
    error naming the option (not a silent "ignoring")."""
    if patch_size is not None:
        raise UserError(
            f"model.backbone.patch_size applies to language-model backbones; '{where}' is a vision backbone with "
            "its own patch size: remove patch_size (--model.backbone.patch_size null)"
        )
    if not keep_position_embeddings:
        raise UserError(
            f"model.backbone.keep_position_embeddings applies to language-model backbones; '{where}' is a vision "
            "backbone with its own positions: remove keep_position_embeddings"
        )


def eager_attentions(model: nn.Module, name: str, forward: Callable[[], Any]) -> list[torch.Tensor]:
    """Attention probabilities of a transformers model: ``forward()`` runs once with the model switched to
    ``attn_implementation="eager"`` (SDPA returns no attentions), ``output_attentions=True`` being the caller's;
    the implementation is switched back afterwards. A list of ``(B, heads, N, N)`` float tensors."""
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = forward()
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)
    if not getattr(out, "attentions", None):
        raise UserError(f"'{name}' returned no attention maps (output_attentions is not supported)")
    return [a.detach().float() for a in out.attentions]
