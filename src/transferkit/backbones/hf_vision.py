"""Hugging Face vision encoders (DINOv2, DINOv3 ViT / ConvNeXt, CLIP, SigLIP) behind the :class:`Backbone` seam.

Tokens are ``(B, N, D)`` with the prefix tokens first, as the HF model returns them:

- DINOv2: ``[CLS, patches]`` (``dinov2_with_registers``: ``[CLS, registers, patches]``), ``last_hidden_state``
  after the final ``layernorm`` (what ``Dinov2Model`` returns);
- DINOv3 ViT: ``[CLS, registers, patches]`` after the final ``norm``; positions are RoPE, so any input size
  divisible by the patch works;
- DINOv3 ConvNeXt: ``[pooled, patches]`` exactly as ``DINOv3ConvNextModel.last_hidden_state``: the global
  average of the last stage map is the class token (as in DINOv3's own ConvNeXt), then the flattened last
  stage map ``(H/32 * W/32)`` tokens, all through the final ``layer_norm``; ``patch_size`` is the total stride;
- CLIP: ``[CLS, patches]`` with ``post_layernorm`` applied to *every* token. ``CLIPVisionModel`` returns
  ``last_hidden_state`` before ``post_layernorm`` and applies it to the CLS token only (``pooler_output``);
  we normalise all tokens, as timm's CLIP ViTs do (their ``norm`` is CLIP's ``ln_post``), so ``cls`` pooling
  equals ``pooler_output`` and patch tokens live in the same normalised space;
- SigLIP: ``[patches]`` (no CLS) after ``post_layernorm`` (what ``SiglipVisionModel`` returns). SigLIP's
  attention-pooling head (``vision_use_head``, trained for the image-text loss) is dropped; the default
  pooling is ``mean``.

``forward_intermediates`` applies the same final norm to every selected block output (as DINOv2's
``get_intermediate_layers(norm=True)``), so the last intermediate equals ``forward_features``. For the
ConvNeXt each "block" is a stage: stage ``i`` gives ``(B, 1 + H_i W_i, C_i)`` (its average as the class
token, then its flattened map); only the last stage has a norm in the HF model.

Arbitrary input sizes work: CLIP/SigLIP get ``interpolate_pos_encoding=True``, DINOv2 interpolates its position
embeddings itself, DINOv3 uses RoPE and the ConvNeXt is fully convolutional.

Unused parameters are removed so that optimisers and DDP never wait for gradients that cannot come: the mask
tokens of DINOv2/DINOv3 (only used for masked-image pre-training) and SigLIP's pooling head.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from transferkit.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneInfo,
    check_vision_options,
    eager_attentions,
    groups_from_patterns,
)
from transferkit.backbones.registry import register_backbone
from transferkit.errors import UserError

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass(frozen=True)
class VisionSpec:
    """What the adapter needs to know about one HF vision family (names relative to the HF model)."""

    family: str
    #: transformers model class (the vision tower; it also loads full CLIP/SigLIP checkpoints).
    model_class: str
    #: Regex of the input-embedding parameters (group 0 of ``layer_groups``).
    stem: str
    #: Regex with one ``(\d+)`` group: the block index.
    block: str
    #: Attribute path of the ``ModuleList`` of blocks.
    blocks: str
    #: Attribute path of the final norm applied to tokens and intermediates.
    final_norm: str
    #: Whether ``last_hidden_state`` still needs ``final_norm`` (CLIP: yes; the others apply it themselves).
    norm_tokens: bool
    has_cls: bool
    #: Pass ``interpolate_pos_encoding=True`` (CLIP, SigLIP: they do not interpolate by default).
    interpolate: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    lora_target_modules: tuple[str, ...]
    #: Parameters (beyond 1-D ones) exempt from weight decay: position embeddings, cls/register tokens.
    no_weight_decay: tuple[str, ...]
    convnext: bool = False


_DINOV2 = VisionSpec(
    family="dinov2",
    model_class="Dinov2Model",
    stem=r"^embeddings\.",
    block=r"^encoder\.layer\.(\d+)\.",
    blocks="encoder.layer",
    final_norm="layernorm",
    norm_tokens=False,
    has_cls=True,
    interpolate=False,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    lora_target_modules=("q_proj", "v_proj"),
    no_weight_decay=("embeddings.cls_token", "embeddings.position_embeddings", "embeddings.register_tokens"),
)
_CLIP = VisionSpec(
    family="clip",
    model_class="CLIPVisionModel",
    stem=r"^embeddings\.|^pre_layrnorm\.",
    block=r"^encoder\.layers\.(\d+)\.",
    blocks="encoder.layers",
    final_norm="post_layernorm",
    norm_tokens=True,
    has_cls=True,
    interpolate=True,
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
    lora_target_modules=("q_proj", "v_proj"),
    no_weight_decay=("embeddings.class_embedding", "embeddings.position_embedding.weight"),
)
_SIGLIP = VisionSpec(
    family="siglip",
    model_class="SiglipVisionModel",
    stem=r"^embeddings\.",
    block=r"^encoder\.layers\.(\d+)\.",
    blocks="encoder.layers",
    final_norm="post_layernorm",
    norm_tokens=False,
    has_cls=False,
    interpolate=True,
    mean=SIGLIP_MEAN,
    std=SIGLIP_STD,
    lora_target_modules=("q_proj", "v_proj"),
    no_weight_decay=("embeddings.position_embedding.weight",),
)

#: ``model_type`` (config.json) -> how to adapt it. Full CLIP/SigLIP checkpoints load their vision tower.
SUPPORTED_MODEL_TYPES: dict[str, VisionSpec] = {
    "dinov2": _DINOV2,
    "dinov2_with_registers": VisionSpec(
        **{**_DINOV2.__dict__, "family": "dinov2", "model_class": "Dinov2WithRegistersModel"}
    ),
    "dinov3_vit": VisionSpec(
        family="dinov3",
        model_class="DINOv3ViTModel",
        stem=r"^embeddings\.",
        block=r"^model\.layer\.(\d+)\.",
        blocks="model.layer",
        final_norm="norm",
        norm_tokens=False,
        has_cls=True,
        interpolate=False,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        lora_target_modules=("q_proj", "v_proj"),
        no_weight_decay=("embeddings.cls_token", "embeddings.register_tokens"),
    ),
    "dinov3_convnext": VisionSpec(
        family="dinov3",
        model_class="DINOv3ConvNextModel",
        # Stage 0's downsample layers are the stem (patchify conv + norm); later downsamples belong to
        # their stage, as in timm's ConvNeXt grouping.
        stem=r"^model\.stages\.0\.downsample_layers\.",
        block=r"^model\.stages\.(?!0\.downsample_layers\.)(\d+)\.",
        blocks="model.stages",
        final_norm="layer_norm",
        norm_tokens=False,
        has_cls=True,
        interpolate=False,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        lora_target_modules=("pointwise_conv1", "pointwise_conv2"),
        no_weight_decay=(),
        convnext=True,
    ),
    "clip": _CLIP,
    "clip_vision_model": _CLIP,
    "siglip": _SIGLIP,
    "siglip_vision_model": _SIGLIP,
}


class HFVisionBackbone(Backbone):
    """A transformers vision encoder; tokens ``(B, N, D)``, prefix tokens first (see the module docstring).

    Build through :func:`build_hf_vision` or :func:`transferkit.backbones.registry.build_backbone`.
    """

    family = "hf_vision"

    def __init__(
        self,
        model: nn.Module,
        *,
        spec: VisionSpec,
        name: str,
        pretrained: bool,
        image_size: int,
        pooling: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        source: str = "",
    ) -> None:
        config = model.config
        if spec.convnext:
            embed_dim = int(config.hidden_sizes[-1])
            patch_size = 4 * 2 ** (len(config.hidden_sizes) - 1)
            num_prefix = 1
            num_blocks = len(config.hidden_sizes)
        else:
            embed_dim = int(config.hidden_size)
            patch_size = _as_int(config.patch_size)
            num_prefix = int(spec.has_cls) + int(getattr(config, "num_register_tokens", 0) or 0)
            num_blocks = int(config.num_hidden_layers)
        super().__init__(
            name=name,
            pretrained=pretrained,
            embed_dim=embed_dim,
            patch_size=patch_size,
            num_prefix_tokens=num_prefix,
            input_size=image_size,
            pooling=pooling or ("cls" if num_prefix > 0 else "mean"),
            mean=mean or spec.mean,
            std=std or spec.std,
            source=source,
        )
        self.spec = spec
        self.model_type = config.model_type
        self.num_blocks = num_blocks
        self.lora_target_modules = spec.lora_target_modules
        self.model = model
        self._grad_checkpointing = False
        self._forward_kwargs: dict[str, Any] = {"interpolate_pos_encoding": True} if spec.interpolate else {}
        self.removed_parameters.update(_drop_unused_parameters(model))
        assert len(self.blocks) == num_blocks, (len(self.blocks), num_blocks)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.get_submodule(self.spec.blocks)  # type: ignore[return-value]

    @property
    def final_norm(self) -> nn.Module:
        return self.model.get_submodule(self.spec.final_norm)

    # ------------------------------------------------------------------ forward
    def _forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.convnext:
            return self._convnext_forward(x, [])[0]
        tokens = self.model(pixel_values=x, **self._forward_kwargs).last_hidden_state
        return self.final_norm(tokens) if self.spec.norm_tokens else tokens

    def _forward_intermediates(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        """Outputs of blocks ``indices``, each through the final norm: list of (B, N, D)."""
        if self.spec.convnext:
            return self._convnext_forward(x, indices)[1]
        out = self.model(pixel_values=x, output_hidden_states=True, **self._forward_kwargs)
        hidden = out.hidden_states  # (embeddings, block_0, ..., block_{L-1})
        assert len(hidden) == self.num_blocks + 1, (len(hidden), self.num_blocks)
        return [self.final_norm(hidden[i + 1]) for i in indices]

    def _convnext_forward(
        self, x: torch.Tensor, indices: list[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """DINOv3ConvNextModel's forward, stage by stage (for intermediates and per-stage checkpointing).

        Returns tokens (B, 1 + HW, C) -- identical to ``DINOv3ConvNextModel(x).last_hidden_state`` -- and the
        selected stage outputs as (B, 1 + H_i W_i, C_i).
        """
        checkpointed = self._grad_checkpointing and self.training and torch.is_grad_enabled()
        stages = self.blocks
        intermediates = []
        for i, stage in enumerate(stages):
            x = checkpoint(stage, x, use_reentrant=False) if checkpointed else stage(x)
            if i in indices:
                stage_tokens = _pooled_and_flat(x)
                intermediates.append(self.final_norm(stage_tokens) if i == len(stages) - 1 else stage_tokens)
        return self.final_norm(_pooled_and_flat(x)), intermediates

    # ------------------------------------------------------------------ training helpers
    def layer_groups(self) -> list[list[str]]:
        """``[embeddings, block_0 .. block_{L-1}, final norm]`` (ConvNeXt: stem, stages, final norm)."""
        names = [n for n, _ in self.named_parameters()]
        stem = "|".join(f"^model\\.{p.lstrip('^')}" for p in self.spec.stem.split("|"))
        block = f"^model\\.{self.spec.block.lstrip('^')}"
        return groups_from_patterns(names, stem, block, self.num_blocks)

    def no_weight_decay(self) -> set[str]:
        """Position embeddings and CLS/register tokens (as timm's ViT ``no_weight_decay``)."""
        params = dict(self.named_parameters())
        return {f"model.{n}" for n in self.spec.no_weight_decay if f"model.{n}" in params}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute blocks in backward (non-reentrant, so frozen early layers keep gradients flowing)."""
        self._grad_checkpointing = enable
        if self.spec.convnext:  # stages are checkpointed in _convnext_forward
            return
        if enable:
            if hasattr(self.model, "activation_checkpointing_enable"):
                self.model.activation_checkpointing_enable(
                    activation_checkpointing_kwargs={"use_reentrant": False}
                )
            else:  # transformers < 5.2x
                self.model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
        elif hasattr(self.model, "activation_checkpointing_disable"):
            self.model.activation_checkpointing_disable()
        else:
            self.model.gradient_checkpointing_disable()

    def info(self) -> BackboneInfo:
        info = super().info()
        info.extra.update(model_type=self.model_type, model_family=self.spec.family)
        return info

    @property
    def wrapped(self) -> nn.Module:
        return self.model

    @property
    def modality(self) -> str:  # type: ignore[override]
        return "vision-language" if self.spec.family in ("clip", "siglip") else "vision"

    @property
    def needs_patch_multiple(self) -> bool:  # type: ignore[override]
        return not self.spec.convnext

    def attention_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """ViT encoders: one forward with ``attn_implementation="eager"`` and ``output_attentions=True`` (SDPA
        returns none); ConvNeXts have no attention."""
        if self.spec.convnext:
            return super().attention_maps(images)
        return eager_attentions(
            self.model,
            self.name,
            lambda: self.model(
                pixel_values=self.normalize(images), output_attentions=True, **self._forward_kwargs
            ),  # fmt: skip
        )


def _as_int(value: Any) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def _pooled_and_flat(fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1 + HW, C): the spatial average first, then the row-major flattened map."""
    flat = fmap.flatten(2).transpose(1, 2)
    return torch.cat([flat.mean(dim=1, keepdim=True), flat], dim=1)


def _drop_unused_parameters(model: nn.Module) -> dict[str, int]:
    """Remove parameters the encoder forward never uses (they would get no gradient); returns what was
    removed, ``'<module> (<why>)'`` -> parameters (the backbone's ``removed_parameters``).

    DINOv2/DINOv3 mask tokens replace patches only in masked-image pre-training (``bool_masked_pos``), which
    an encoder never passes; SigLIP's attention-pooling head is not part of the token encoder.
    """
    removed: dict[str, int] = {}
    embeddings = getattr(model, "embeddings", None)
    mask_token = getattr(embeddings, "mask_token", None)
    if isinstance(mask_token, nn.Parameter):
        removed["model.embeddings.mask_token (masked-image pre-training only, removed)"] = mask_token.numel()
        embeddings.mask_token = None  # type: ignore[union-attr]
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module) and hasattr(model, "use_head"):
        removed["model.head (attention-pooling head of the image-text loss, removed)"] = sum(
            p.numel() for p in head.parameters()
        )
        model.head = None
        model.use_head = False
        model.config.vision_use_head = False
    return removed


# ---------------------------------------------------------------------- building
def _hub_error(path_or_id: str, e: Exception) -> UserError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return UserError(
        f"could not load '{path_or_id}' ({type(e).__name__}: {first}); check the hub id or path; without "
        "internet, download it where you have one (hf download <id>, then copy the Hugging Face cache) or "
        "pass a local directory written by save_pretrained, or use an offline backbone such as "
        "'dinov2-tiny' or 'vit-tiny:random'"
    )


def read_vision_config(path_or_id: str) -> Any:
    """The transformers config of a hub id or local dir, with a clear error when it cannot be read."""
    from transformers import AutoConfig

    local = Path(path_or_id).expanduser()
    if local.is_dir() and not (local / "config.json").is_file():
        raise UserError(
            f"directory '{path_or_id}' has no config.json; point at a folder written by save_pretrained "
            "(or a hub id such as facebook/dinov2-small)"
        )
    if path_or_id.startswith(("/", ".", "~")) and not local.is_dir():
        raise UserError(
            f"no such directory '{path_or_id}'; pass a folder written by save_pretrained or a hub id"
        )
    try:
        return AutoConfig.from_pretrained(path_or_id)
    except (OSError, ValueError, KeyError) as e:
        raise _hub_error(path_or_id, e) from None


def _spec_for(model_type: str, where: str) -> VisionSpec:
    spec = SUPPORTED_MODEL_TYPES.get(model_type)
    if spec is None:
        raise UserError(
            f"'{where}' is a '{model_type}' model, not a supported vision encoder; supported types: "
            f"{sorted(SUPPORTED_MODEL_TYPES)}"
        )
    return spec


def read_mean_std(path_or_id: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``image_mean``/``image_std`` from the checkpoint's ``preprocessor_config.json``; None if it has none.

    A local directory is read directly; a hub id goes through ``AutoImageProcessor`` (cached after the first
    download).
    """
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        file = local / "preprocessor_config.json"
        if not file.is_file():
            return None
        try:
            cfg = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"'{file}' is not valid JSON ({e}); fix or delete it") from None
        mean, std = cfg.get("image_mean"), cfg.get("image_std")
    else:
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(path_or_id)
        except (OSError, ValueError, KeyError, ImportError) as e:
            log.info("no image processor for '%s' (%s); using the family's mean/std", path_or_id, e)
            return None
        mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is None or std is None:
        return None
    mean = (float(mean),) * 3 if isinstance(mean, (int, float)) else tuple(float(m) for m in mean)
    std = (float(std),) * 3 if isinstance(std, (int, float)) else tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UserError(
            f"preprocessor config of '{path_or_id}' has image_mean={mean}, image_std={std}; expected 3 values "
            "each (and positive std)"
        )
    return mean, std


@contextlib.contextmanager
def _quiet_load_report() -> Iterator[None]:
    """Silence transformers' load-report table; :func:`_log_loading_info` logs a short summary instead."""
    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _log_loading_info(path_or_id: str, info: dict[str, Any]) -> None:
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    if missing:
        log.warning(
            "'%s': %d weights of the vision encoder are not in the checkpoint and stay randomly initialised: %s",
            path_or_id,
            len(missing),
            ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""),
        )
    if unexpected:
        log.info(
            "'%s': ignored %d checkpoint tensors the vision encoder does not use (text tower, heads, mask "
            "tokens), e.g. %s",
            path_or_id,
            len(unexpected),
            unexpected[0],
        )


def _check_options(
    where: str,
    patch_size: int | None,
    keep_position_embeddings: bool,
    drop_path_rate: float,
    config: Any,
    options: dict[str, Any],
) -> str | None:
    """Validate the build options; returns the attention implementation (None = transformers' default)."""
    unknown = set(options) - {"attn_implementation"}
    if unknown:
        raise UserError(
            f"unknown option(s) {sorted(unknown)} for the vision backbone '{where}'; "
            f"known: attn_implementation {ATTN_IMPLEMENTATIONS}"
        )
    attn = options.get("attn_implementation")
    if attn is not None and attn not in ATTN_IMPLEMENTATIONS:
        raise UserError(
            f"attn_implementation '{attn}' is not supported; choose one of {ATTN_IMPLEMENTATIONS}"
        )
    check_vision_options(where, patch_size, keep_position_embeddings)
    if drop_path_rate:
        if not hasattr(config, "drop_path_rate"):
            raise UserError(
                f"'{where}' ({config.model_type}) has no stochastic depth: remove model.backbone.drop_path_rate"
            )
        config.drop_path_rate = float(drop_path_rate)
    return attn


def build_hf_vision(
    path_or_id: str,
    pretrained: bool = True,
    *,
    image_size: int = 224,
    pooling: str | None = None,
    patch_size: int | None = None,
    drop_path_rate: float = 0.0,
    keep_position_embeddings: bool = True,
    **options: Any,
) -> Backbone:
    """HF vision backbone from a hub id or a local ``save_pretrained`` directory.

    ``pretrained=True`` loads the weights with ``from_pretrained`` (a full CLIP/SigLIP checkpoint gives its
    vision tower); ``pretrained=False`` builds the same architecture from the config with random init (the
    control). Mean/std come from the checkpoint's ``preprocessor_config.json`` when it has one, else the
    family's defaults. ``options``: ``attn_implementation`` (``'sdpa'`` | ``'eager'``; eager returns attention
    maps). ``patch_size`` and ``keep_position_embeddings`` are language-model options: giving them is an error.
    """
    import transformers

    config = read_vision_config(path_or_id)
    spec = _spec_for(config.model_type, path_or_id)
    model_cls = getattr(transformers, spec.model_class)
    if type(config) is not model_cls.config_class:  # full CLIP/SigLIP checkpoint: its vision config
        try:
            config = model_cls.config_class.from_pretrained(path_or_id)
        except (OSError, ValueError, KeyError) as e:
            raise _hub_error(path_or_id, e) from None
    attn = _check_options(path_or_id, patch_size, keep_position_embeddings, drop_path_rate, config, options)
    _disable_unused_config_parts(config)
    kwargs = {"attn_implementation": attn} if attn else {}
    try:
        if pretrained:
            with _quiet_load_report():
                model, info = model_cls.from_pretrained(
                    path_or_id, config=config, output_loading_info=True, **kwargs
                )
            _log_loading_info(path_or_id, info)
        else:
            model = model_cls._from_config(config, **kwargs)
    except (OSError, ValueError) as e:
        raise _hub_error(path_or_id, e) from None
    except RuntimeError as e:  # size mismatches between config and weights
        raise UserError(
            f"the weights in '{path_or_id}' do not fit its config: {str(e).splitlines()[0]}"
        ) from None
    mean_std = read_mean_std(path_or_id)
    mean, std = mean_std if mean_std else (spec.mean, spec.std)
    return HFVisionBackbone(
        model.float(),
        spec=spec,
        name=path_or_id,
        pretrained=pretrained,
        image_size=image_size,
        pooling=pooling,
        mean=mean,
        std=std,
        source=path_or_id,
    )


def build_hf_vision_from_config(
    config: Any,
    *,
    name: str,
    image_size: int = 224,
    pooling: str | None = None,
    patch_size: int | None = None,
    drop_path_rate: float = 0.0,
    keep_position_embeddings: bool = True,
    **options: Any,
) -> Backbone:
    """Random-init HF vision backbone from an in-memory config (the tiny offline variants)."""
    import transformers

    spec = _spec_for(config.model_type, name)
    attn = _check_options(name, patch_size, keep_position_embeddings, drop_path_rate, config, options)
    _disable_unused_config_parts(config)
    model_cls = getattr(transformers, spec.model_class)
    model = model_cls._from_config(config, **({"attn_implementation": attn} if attn else {}))
    return HFVisionBackbone(
        model,
        spec=spec,
        name=name,
        pretrained=False,
        image_size=image_size,
        pooling=pooling,
        source=f"random-init {config.model_type} config",
    )


def _disable_unused_config_parts(config: Any) -> None:
    # Built without them, so neither the parameters nor a load-time warning about them appear.
    if hasattr(config, "use_mask_token"):
        config.use_mask_token = False
    if hasattr(config, "vision_use_head"):
        config.vision_use_head = False


# ---------------------------------------------------------------------- tiny configs (offline, random init)
def tiny_config(model_type: str, image_size: int = 32) -> Any:
    """A tiny config of ``model_type`` (2 blocks, width 32, patch 8) with the family's structure."""
    import transformers as T

    vit = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=image_size
    )
    if model_type == "dinov2":
        return T.Dinov2Config(mlp_ratio=2, **vit)
    if model_type == "dinov2_with_registers":
        return T.Dinov2WithRegistersConfig(mlp_ratio=2, num_register_tokens=2, **vit)
    if model_type == "dinov3_vit":
        return T.DINOv3ViTConfig(intermediate_size=64, num_register_tokens=2, **vit)
    if model_type == "dinov3_convnext":
        return T.DINOv3ConvNextConfig(hidden_sizes=[16, 32, 32], depths=[1, 1, 1], image_size=image_size)
    if model_type in ("clip", "clip_vision_model"):
        return T.CLIPVisionConfig(intermediate_size=64, projection_dim=32, **vit)
    if model_type in ("siglip", "siglip_vision_model"):
        return T.SiglipVisionConfig(intermediate_size=64, **vit)
    raise UserError(f"no tiny config for '{model_type}'; choose one of {sorted(SUPPORTED_MODEL_TYPES)}")


# ---------------------------------------------------------------------- registered names
_TINY = {
    "dinov2-tiny": ("dinov2", "DINOv2 ViT"),
    "dinov3-vit-tiny": ("dinov3_vit", "DINOv3 ViT (RoPE, 2 registers)"),
    "dinov3-convnext-tiny": ("dinov3_convnext", "DINOv3 ConvNeXt (3 stages)"),
    "clip-vit-tiny": ("clip_vision_model", "CLIP vision tower"),
    "siglip-tiny": ("siglip_vision_model", "SigLIP vision tower"),
}


def _register_tiny(name: str, model_type: str, what: str) -> None:
    @register_backbone(
        name, family="hf_vision", offline=True, description=f"tiny random-init {what} (width 32); for tests"
    )
    def factory(pretrained: bool = False, *, image_size: int = 224, **kw: Any) -> Backbone:
        if pretrained:
            log.debug("'%s' has no pretrained weights; building it with random init", name)
        return build_hf_vision_from_config(
            tiny_config(model_type, image_size), name=name, image_size=image_size, **kw
        )


for _name, (_type, _what) in _TINY.items():
    _register_tiny(_name, _type, _what)


_HUB_ALIASES = {
    "dinov2-small": ("facebook/dinov2-small", "DINOv2 ViT-S/14 (22M)"),
    "dinov2-base": ("facebook/dinov2-base", "DINOv2 ViT-B/14 (86M)"),
    "dinov2-large": ("facebook/dinov2-large", "DINOv2 ViT-L/14 (300M)"),
    "dinov2-small-reg": ("facebook/dinov2-with-registers-small", "DINOv2 ViT-S/14 with 4 registers"),
    "dinov3-vits16": ("facebook/dinov3-vits16-pretrain-lvd1689m", "DINOv3 ViT-S/16 (21M), LVD-1689M"),
    "dinov3-convnext-tiny-hub": (
        "facebook/dinov3-convnext-tiny-pretrain-lvd1689m",
        "DINOv3 ConvNeXt-T (29M), LVD-1689M",
    ),
    "clip-vit-b16": ("openai/clip-vit-base-patch16", "CLIP ViT-B/16 vision tower (86M)"),
    "siglip-b16": ("google/siglip-base-patch16-224", "SigLIP ViT-B/16 vision tower (93M), 224px"),
}


def _register_hub_alias(name: str, hub_id: str, description: str) -> None:
    @register_backbone(name, family="hf_vision", offline=False, description=f"{description} [{hub_id}]")
    def factory(pretrained: bool = True, **kw: Any) -> Backbone:
        return build_hf_vision(hub_id, pretrained, **kw)


for _name, (_hub_id, _desc) in _HUB_ALIASES.items():
    _register_hub_alias(_name, _hub_id, _desc)


def hub_alias_ids() -> dict[str, str]:
    """Registered hub aliases -> hub ids."""
    return {k: v[0] for k, v in _HUB_ALIASES.items()}


__all__: Sequence[str] = (
    "SUPPORTED_MODEL_TYPES",
    "HFVisionBackbone",
    "VisionSpec",
    "build_hf_vision",
    "build_hf_vision_from_config",
    "hub_alias_ids",
    "read_mean_std",
    "read_vision_config",
    "tiny_config",
)
