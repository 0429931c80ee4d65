"""timm image models behind the :class:`Backbone` seam.

Tokens come from timm's ``forward_features``:

- ViT-like models (3-D features): ``(B, N, D)`` with the model's ``num_prefix_tokens`` (CLS, distillation,
  register tokens) first, after the final norm;
- CNNs and hierarchical models (4-D feature maps): ``(B, C, H, W)`` (or NHWC for Swin-like models) flattened
  row-major to ``(B, HW, C)``, no prefix tokens, default pooling ``mean``; ``patch_size`` is the total stride.

Layer groups follow timm's own ``group_matcher(coarse=True)`` (what timm uses for layer-wise LR decay): the
stem, one group per block (ViT) or stage (CNN), then the trailing params (final norm), which timm folds into
the last block. ``forward_intermediates`` selects the same blocks/stages through timm's
``forward_intermediates(norm=True)``, so the last intermediate equals ``forward_features``. Models whose timm
``forward_intermediates`` takes ``extra_blocks`` (EfficientNet, MobileNetV3: 7 block stages but 5
``feature_info`` features) give every block stage's output, and the last block's is timm's final output, after
the head conv that ``forward_features`` adds (EfficientNet's ``conv_head`` + ``bn2``). In other models a block
without a timm feature has no intermediate.

Parameters that ``forward_features`` never reaches (classifier-head norms such as ConvNeXt's ``head.norm``,
ViT ``fc_norm``/``attn_pool`` used only on pooled features) are frozen, listed in ``unused_parameter_names``
and left out of ``num_params``: they could never receive a gradient. They are found with autograd on one
dummy image at build time.

``pretrained_input_size`` is the side the weights were trained at (timm's ``pretrained_cfg['input_size']``,
e.g. 260 for EfficientNet-Lite2); ``input_size`` is the side the backbone was built for.

ViT-like models are created with ``img_size=image_size`` and ``dynamic_img_size=True``, so pretrained position
embeddings are resampled to the requested size at load and other input sizes still work.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneInfo,
    check_vision_options,
)
from transferkit.backbones.registry import register_backbone
from transferkit.errors import UnknownBackboneError, UserError

log = logging.getLogger(__name__)

# timm's marker (timm.models._manipulate.MATCH_PREV_GROUP) for params folded into the previous group.
_MATCH_PREV_GROUP = 99999


class TimmBackbone(Backbone):
    """A timm model used through ``forward_features``; tokens ``(B, N, D)`` (see the module docstring).

    Build through :func:`build_timm` or :func:`transferkit.backbones.registry.build_backbone`.
    """

    family = "timm"

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        pretrained: bool,
        image_size: int,
        pooling: str | None = None,
        source: str = "",
    ) -> None:
        feature_shape, unused = _probe(model, image_size)
        feature_ndim = len(feature_shape)
        channels_last = False
        if feature_ndim == 3:
            embed_dim = feature_shape[-1]
            num_prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
            patch_embed = getattr(model, "patch_embed", None)
            patch_size = _as_int(patch_embed.patch_size) if patch_embed is not None else _reduction(model)
        elif feature_ndim == 4:
            channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"
            embed_dim = feature_shape[-1] if channels_last else feature_shape[1]
            num_prefix = 0
            patch_size = _reduction(model)
        else:
            raise UserError(
                f"timm model '{name}' returns features of shape {tuple(feature_shape)} from forward_features; "
                "only (B, N, D) tokens and (B, C, H, W) maps can serve as an image encoder"
            )
        cfg = getattr(model, "pretrained_cfg", None) or {}
        super().__init__(
            name=name,
            pretrained=pretrained,
            embed_dim=embed_dim,
            patch_size=patch_size,
            num_prefix_tokens=num_prefix,
            input_size=image_size,
            pooling=pooling or ("cls" if num_prefix > 0 else "mean"),
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
            source=source,
        )
        self.model = model
        self.feature_ndim = feature_ndim
        #: forward_features returns NHWC maps (Swin-like models) rather than NCHW.
        self.channels_last = channels_last
        self.architecture = cfg.get("architecture", name)
        self.unused_parameter_names = sorted(f"model.{n}" for n in unused)
        for n, p in model.named_parameters():
            if n in unused:
                p.requires_grad_(False)
        if unused:
            log.info(
                "timm model '%s': froze %d parameters forward_features never uses (%s)",
                name,
                len(unused),
                ", ".join(sorted(unused)[:4]),
            )
        cfg_size = cfg.get("input_size")
        #: the side the pretrained weights were trained at (timm's ``pretrained_cfg``), None when not declared
        self.pretrained_input_size: int | None = int(cfg_size[-1]) if cfg_size else None
        #: builds the checkpoint's full classifier offline for :meth:`source_head` (None: timm's hub weights)
        self.source_model: Callable[[], nn.Module] | None = None
        self._groups = _timm_layer_groups(model)
        self.num_blocks = len(self._groups) - 2
        self._extra_blocks = _every_block_is_a_feature(model, self._groups)
        self._feature_index = (
            {b: b + 1 for b in range(self.num_blocks)}
            if self._extra_blocks
            else _feature_index(model, self._groups)
        )
        modules = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        if self.feature_ndim == 3 and "qkv" in modules:
            self.lora_target_modules = ("qkv",)
        elif self.feature_ndim == 3 and {"q_proj", "v_proj"} <= modules:
            self.lora_target_modules = ("q_proj", "v_proj")
        else:
            self.lora_target_modules = ()

    # ------------------------------------------------------------------ forward
    def _to_tokens(self, features: torch.Tensor, channels_last: bool) -> torch.Tensor:
        if features.ndim == 3:
            return features
        return features.flatten(1, 2) if channels_last else features.flatten(2).transpose(1, 2)

    def _forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self._to_tokens(self.model.forward_features(x), self.channels_last)

    def _forward_intermediates(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        """timm ``forward_intermediates(norm=True)`` of blocks/stages ``indices``: list of (B, N_i, D_i)."""
        fn = getattr(self.model, "forward_intermediates", None)
        missing = [i for i in indices if i not in self._feature_index]
        if fn is None or missing:
            raise UserError(
                f"timm model '{self.name}' has no intermediate feature after block(s) {missing}; "
                f"blocks with one: {sorted(self._feature_index)}"
            )
        params = inspect.signature(fn).parameters
        kwargs: dict[str, Any] = {"intermediates_only": True}
        if "norm" in params:
            kwargs["norm"] = True
        with_prefix = self.num_prefix_tokens > 0 and "return_prefix_tokens" in params
        if with_prefix:
            kwargs["return_prefix_tokens"] = True
        nlc = self.feature_ndim == 3 and "output_fmt" in params
        if nlc:
            kwargs["output_fmt"] = "NLC"
        take = [self._feature_index[i] for i in indices]
        if self._extra_blocks:  # every block stage; the last one is the final output (after the head conv)
            final, outs = fn(x, indices=take, extra_blocks=True, intermediates_only=False)
            if indices and indices[-1] == self.num_blocks - 1:
                outs = [*outs[:-1], final]
        else:
            outs = fn(x, indices=take, **kwargs)
        result = []
        for out in outs:
            prefix = None
            if isinstance(out, tuple):
                out, prefix = out
            tokens = self._to_tokens(out, channels_last=False)  # timm intermediates are NCHW unless NLC
            if prefix is not None:
                tokens = torch.cat([prefix, tokens], dim=1)
            result.append(tokens)
        return result

    # ------------------------------------------------------------------ training helpers
    def layer_groups(self) -> list[list[str]]:
        """``[stem, block_0 .. block_{n-1}, rest]`` from timm's coarse ``group_matcher``."""
        return [list(g) for g in self._groups]

    def no_weight_decay(self) -> set[str]:
        """The model's own ``no_weight_decay()`` names (position embeddings, cls/register tokens...)."""
        fn = getattr(self.model, "no_weight_decay", None)
        if fn is None:
            return set()
        keys = set(fn())
        return {
            f"model.{n}"
            for n, _ in self.model.named_parameters()
            if n in keys or n.rsplit(".", 1)[-1] in keys
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's ``set_grad_checkpointing`` (recomputes blocks/stages in backward)."""
        try:
            self.model.set_grad_checkpointing(enable)
        except (AssertionError, NotImplementedError, AttributeError):
            raise UserError(f"timm model '{self.name}' does not support gradient checkpointing") from None

    def unused_parameters(self) -> dict[str, str]:
        """Parameters ``forward_features`` never reaches (found with autograd at build time)."""
        return {
            n: "classifier-head part, never reached by forward_features" for n in self.unused_parameter_names
        }

    def info(self) -> BackboneInfo:
        info = super().info()
        info.extra.update(
            architecture=self.architecture,
            unused_parameters=len(self.unused_parameter_names),
            pretrained_input_size=self.pretrained_input_size,
        )
        return info

    @property
    def wrapped(self) -> nn.Module:
        return self.model

    @property
    def needs_patch_multiple(self) -> bool:  # type: ignore[override]
        return self.feature_ndim == 3  # ViT-like token models; CNN feature maps take any size

    def attention_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """timm ViTs: the attention modules switch from fused SDPA to their explicit path for one forward
        (``fused_attn = False``) and a hook on ``attn_drop`` reads its input, the post-softmax attention."""
        modules = [
            m
            for m in self.model.modules()
            if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Dropout)
        ]
        if self.feature_ndim != 3 or not modules:
            return super().attention_maps(images)
        captured: list[torch.Tensor] = []
        saved = [m.fused_attn for m in modules]
        hooks = [
            m.attn_drop.register_forward_hook(
                lambda mod, args, out: captured.append(args[0].detach().float())
            )
            for m in modules
        ]
        try:
            for m in modules:
                m.fused_attn = False
            with torch.no_grad():
                self.forward_features(images)
        finally:
            for m, f in zip(modules, saved):
                m.fused_attn = f
            for h in hooks:
                h.remove()
        return captured

    def source_head(self) -> TimmSourceHead | None:
        """The checkpoint's own classifier (the backbone itself is built headless, ``num_classes=0``): the same
        pretrained model is built once more with its head; None when random-init, headless, or the weights are
        not available (LEEP/NCE then use pseudo labels)."""
        if not self.pretrained:
            return None
        if self.source_model is not None:
            return timm_source_head(self.source_model(), self.feature_ndim, self.channels_last)
        import timm

        cfg = getattr(self.model, "pretrained_cfg", {}) or {}
        arch = str(cfg.get("architecture") or self.architecture)
        tag = str(cfg.get("tag") or "")
        kwargs: dict[str, Any] = (
            {"img_size": self.input_size, "dynamic_img_size": True} if self.feature_ndim == 3 else {}
        )
        try:
            model = timm.create_model(f"{arch}.{tag}" if tag else arch, pretrained=True, **kwargs)
        except Exception as e:  # offline, no such tag, a model without dynamic size...: pseudo labels instead
            log.warning(
                "no source head for '%s' (%s: %s); LEEP/NCE use GMM pseudo labels",
                self.name,
                type(e).__name__,
                e,
            )
            return None
        return timm_source_head(model, self.feature_ndim, self.channels_last)


class TimmSourceHead:
    """A timm classifier's head applied to pooled features ``(N, D)`` -> probabilities ``(N, C_s)``.

    timm's ``forward_head`` pools the token map itself; it is fed a map whose pooling *is* the cached pooled
    feature (every token equal to it), so the exact head of the checkpoint runs: norms, pre-logits and
    classifier. ``pooling`` names the cached summary that matches timm's pooling (``cls`` for a ViT with
    ``global_pool='token'``, else ``mean``).
    """

    def __init__(self, model: nn.Module, feature_ndim: int, channels_last: bool = False):
        self.model = model.eval()
        self.feature_ndim = feature_ndim
        self.channels_last = channels_last
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.num_classes = int(getattr(model, "num_classes", 0) or 0)
        pool = str(getattr(model, "global_pool", "avg") or "")
        self.pooling = "cls" if feature_ndim == 3 and pool == "token" else "mean"

    @torch.inference_mode()
    def __call__(self, pooled: Any, batch_size: int = 4096) -> np.ndarray:
        x = torch.as_tensor(np.asarray(pooled, dtype=np.float32))
        out = []
        for start in range(0, len(x), batch_size):
            p = x[start : start + batch_size]
            if self.feature_ndim == 3:
                tokens = p[:, None, :].expand(-1, self.num_prefix_tokens + 1, -1)
            elif self.channels_last:
                tokens = p[:, None, None, :]
            else:
                tokens = p[:, :, None, None]
            out.append(torch.softmax(self.model.forward_head(tokens).float(), dim=1))
        return torch.cat(out).numpy().astype(np.float64)


def timm_source_head(
    model: nn.Module, feature_ndim: int, channels_last: bool = False
) -> TimmSourceHead | None:
    """A :class:`TimmSourceHead` for a timm model with a classifier, or None when it has none or pools in a
    way that is not a function of the cached summaries (attention pooling ``map``)."""
    if not hasattr(model, "forward_head") or int(getattr(model, "num_classes", 0) or 0) < 2:
        return None
    pool = str(getattr(model, "global_pool", "avg") or "")
    if feature_ndim == 3 and pool not in ("token", "avg", "max", "avgmax"):
        return None
    return TimmSourceHead(model, feature_ndim, channels_last)


def _as_int(value: Any) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def _reduction(model: nn.Module) -> int:
    feature_info = getattr(model, "feature_info", None)
    if isinstance(feature_info, list) and feature_info:
        return int(feature_info[-1]["reduction"])
    return 32


def _probe(model: nn.Module, image_size: int) -> tuple[torch.Size, set[str]]:
    """Run ``forward_features`` on one blank image: its output shape, and the trainable parameters that
    receive no gradient from it (autograd's exact answer to "which parameters does it use")."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            try:
                out = model.forward_features(torch.zeros(1, 3, image_size, image_size))
            except (AssertionError, RuntimeError) as e:  # timm asserts sizes (a ViT's patch multiple)
                raise UserError(
                    f"timm model '{type(model).__name__}' cannot take {image_size}px images "
                    f"({str(e).splitlines()[0]}); change data.image_size"
                ) from None
            if not isinstance(out, torch.Tensor):
                raise UserError(
                    f"timm model '{type(model).__name__}' returns {type(out).__name__} from forward_features, "
                    "not a tensor; it cannot serve as an image encoder"
                )
            if not named or not out.requires_grad:  # nothing trainable: nothing to find
                return out.shape, set()
            grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
    finally:
        model.train(was_training)
    return out.shape, {n for (n, _), g in zip(named, grads) if g is None}


def _every_block_is_a_feature(model: nn.Module, groups: list[list[str]]) -> bool:
    """Whether timm's ``forward_intermediates(extra_blocks=True)`` gives one output per block group: the model
    takes ``extra_blocks`` and the block groups are its ``blocks`` stages, in order."""
    fn = getattr(model, "forward_intermediates", None)
    stages = getattr(model, "blocks", None)
    if fn is None or "extra_blocks" not in inspect.signature(fn).parameters or stages is None:
        return False
    blocks = groups[1:-1]
    return len(blocks) == len(stages) and all(
        g and all(n.startswith(f"model.blocks.{i}.") for n in g) for i, g in enumerate(blocks)
    )


def _feature_index(model: nn.Module, groups: list[list[str]]) -> dict[int, int]:
    """Block index -> index of timm's ``feature_info`` entry taken at the end of that block.

    Features of parameter-free modules (ResNet's stem ``act1``) match no block; a block with no feature
    (EfficientNet-B0 has 7 block stages, 5 features) has no intermediate. A feature taken after the blocks
    (NFNet's ``final_conv``, which timm folds into the last block) is the last block's, and so is a
    parameter-free final feature when the last block has none.
    """
    feature_info = getattr(model, "feature_info", None)
    index: dict[int, int] = {}
    if not isinstance(feature_info, list):
        return index
    num_blocks = len(groups) - 2
    matched = set()
    for f, info in enumerate(feature_info):
        prefix = f"model.{info.get('module', '')}."
        for b, group in enumerate(groups[1:]):
            if any(n.startswith(prefix) for n in group):
                index[min(b, num_blocks - 1)] = f
                matched.add(f)
    last = len(feature_info) - 1
    if feature_info and last not in matched and num_blocks - 1 not in index and num_blocks > 0:
        index[num_blocks - 1] = last  # a parameter-free final feature (e.g. an Identity final_conv)
    return index


def _timm_layer_groups(model: nn.Module) -> list[list[str]]:
    """timm's coarse grouping turned into ``[stem, block_0 .. block_{n-1}, rest]``.

    ``timm.models.group_parameters`` gives the groups; names matched by the ``stem`` spec form group 0, names
    timm folds into the previous group (``MATCH_PREV_GROUP``, e.g. the final ``norm``) or matches nowhere
    (neck, head) form the trailing group, and the remaining groups are the blocks in timm's order.
    """
    from timm.models import group_parameters

    names = [n for n, _ in model.named_parameters()]
    matcher_fn = getattr(model, "group_matcher", None)
    if matcher_fn is None:
        return [[], [f"model.{n}" for n in names], []]  # no grouping declared: the whole model is one block
    matcher = matcher_fn(coarse=True)
    specs: list[tuple[re.Pattern[str], str]] = []  # (regex, kind) in timm's matching order
    for key, spec in matcher.items():
        entries = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        for entry in entries:
            regex, suffix = entry if isinstance(entry, (list, tuple)) else (entry, None)
            kind = "stem" if key == "stem" else ("rest" if suffix == (_MATCH_PREV_GROUP,) else "block")
            specs.append((re.compile(regex), kind))

    def kind_of(name: str) -> str:
        for regex, kind in specs:
            if regex.match(name):
                return kind
        return "rest"

    kinds = {n: kind_of(n) for n in names}
    grouped = group_parameters(model, matcher)
    blocks = [[n for n in grouped[k] if kinds[n] == "block"] for k in sorted(grouped)]
    blocks = [g for g in blocks if g]
    stem = [n for n in names if kinds[n] == "stem"]
    rest = [n for n in names if kinds[n] == "rest"]
    groups = [stem, *blocks, rest]
    return [[f"model.{n}" for n in g] for g in groups]


# ---------------------------------------------------------------------- building
def _unknown_model(name: str) -> UnknownBackboneError:
    import timm

    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return UnknownBackboneError(
        f"unknown timm model '{name}'{hint}; list models with timm.list_models('*vit*') "
        "(python -c \"import timm; print(timm.list_models('*resnet*'))\")"
    )


def _load_error(name: str, e: Exception) -> UserError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return UserError(
        f"could not load pretrained weights for timm model '{name}' ({type(e).__name__}: {first}); without "
        "internet, download them where you have one (copy the Hugging Face cache) or pass "
        "options={'pretrained_file': '/path/to/weights.safetensors'}, or build the random-init twin "
        "(append ':random' to the backbone name, or pretrained=False)"
    )


def build_timm(
    name: str,
    pretrained: bool = True,
    *,
    image_size: int = 224,
    pooling: str | None = None,
    patch_size: int | None = None,
    drop_path_rate: float = 0.0,
    keep_position_embeddings: bool = True,
    pretrained_file: str | None = None,
    **model_kwargs: Any,
) -> Backbone:
    """timm backbone ``timm.create_model(name, pretrained, num_classes=0, ...)``.

    ``name`` may carry a pretrained tag (``vit_small_patch16_224.augreg_in21k``). ``pretrained=True`` uses
    timm's own weight loading (Hugging Face hub); ``pretrained_file`` loads a local checkpoint instead (timm's
    ``pretrained_cfg_overlay=dict(file=...)``, with the same key/position-embedding adaptation). Further
    ``model_kwargs`` go to the timm model constructor. ``patch_size`` and ``keep_position_embeddings`` are
    language-model options: giving them is an error.
    """
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise _unknown_model(name)
    check_vision_options(name, patch_size, keep_position_embeddings)
    kwargs: dict[str, Any] = dict(num_classes=0, **model_kwargs)
    if drop_path_rate:
        kwargs["drop_path_rate"] = float(drop_path_rate)
    if pretrained_file is not None:
        if not Path(pretrained_file).expanduser().is_file():
            raise UserError(
                f"pretrained_file '{pretrained_file}' does not exist; pass a timm/PyTorch checkpoint"
            )
        if not pretrained:
            raise UserError("pretrained_file was given with pretrained=False; drop one of them")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(Path(pretrained_file).expanduser()))
    # ViT-like models take img_size / dynamic_img_size; CNNs reject them (TypeError before any download).
    size_options = [dict(img_size=image_size, dynamic_img_size=True), dict(img_size=image_size), {}]
    model = None
    for size_kwargs in size_options:
        try:
            model = timm.create_model(name, pretrained=pretrained, **kwargs, **size_kwargs)
            break
        except TypeError as e:
            if "unexpected keyword argument" not in str(e):
                raise UserError(f"cannot build timm model '{name}' with {kwargs}: {e}") from None
            bad = str(e).rsplit("argument", 1)[-1].strip(" '\"")
            if bad not in ("img_size", "dynamic_img_size"):
                raise UserError(f"timm model '{name}' does not accept the option '{bad}'") from None
        except (OSError, RuntimeError, ValueError) as e:
            if not pretrained:
                raise UserError(f"cannot build timm model '{name}': {str(e).splitlines()[0]}") from None
            raise _load_error(name, e) from None
    assert model is not None
    return TimmBackbone(
        model,
        name=name,
        pretrained=pretrained,
        image_size=image_size,
        pooling=pooling,
        source=f"timm:{name}" + (f" ({pretrained_file})" if pretrained_file else ""),
    )


# ---------------------------------------------------------------------- registered names
@register_backbone(
    "vit-tiny",
    family="timm",
    offline=False,
    description="timm vit_tiny_patch16_224 (ViT-Ti/16, 5.7M params, AugReg IN-21k -> IN-1k); "
    "pretrained weights from the hub, 'vit-tiny:random' builds offline",
)
def vit_tiny(pretrained: bool = True, **kw: Any) -> Backbone:
    """ViT-Ti/16. Pretrained weights need the hub (or ``pretrained_file``); the random twin builds offline."""
    return build_timm("vit_tiny_patch16_224", pretrained, **kw)


def _register_micro(name: str, arch: str, description: str) -> None:
    @register_backbone(name, family="timm", offline=True, description=description)
    def factory(pretrained: bool = False, *, pretrained_file: str | None = None, **kw: Any) -> Backbone:
        # Random init unless weights are given as a local file (the hub weights are not used: offline entry).
        if pretrained and pretrained_file is None:
            log.debug("'%s' is a random-init test architecture; building it without pretrained weights", name)
        return build_timm(
            arch, pretrained and pretrained_file is not None, pretrained_file=pretrained_file, **kw
        )


_register_micro(
    "vit-micro", "test_vit", "timm test_vit (ViT, width 64, 6 blocks, 0.3M params), random init; for tests"
)
_register_micro(
    "convnet-micro", "test_resnet", "timm test_resnet (ResNet, 4 stages, 0.4M params), random init; for tests"
)


__all__: Sequence[str] = ("TimmBackbone", "TimmSourceHead", "build_timm", "timm_source_head")
