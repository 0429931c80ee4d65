"""Option groups shared by the tasks, each validated when built (a wrong value is one line naming the key).

A group can sit at different depths (``model.decoder`` of the detection task, ``model.det_head.decoder`` of the
VLM), so its messages name keys from the group down (``decoder.hidden_dim``).

- :class:`LoraOptions`: peft LoRA adapters (classification ``adaptation: lora``; the VLM's LLM);
- :class:`DecoderOptions`, :class:`LossOptions`: the DETR-style head and its set criterion (the detection task;
  the VLM's optional detection head, :class:`DetHeadOptions`); the matcher is an injectable class
  (:class:`~transferkit.heads.matcher.Matcher`, ``class_path``/``init_args``);
- :func:`as_dataclass` / :func:`plain`: the conversions between option objects and the plain dicts that
  checkpoints store (so they load with ``weights_only=True``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from jsonargparse import lazy_instance
from torch import nn

from transferkit.errors import UserError
from transferkit.heads.criterion import DEFAULT_WEIGHTS, LOSSES, SetCriterion
from transferkit.heads.detr import DetrHead
from transferkit.heads.matcher import HungarianMatcher, Matcher


def as_dataclass(cls: type, value: Any) -> Any:
    """``value`` as an instance of dataclass ``cls`` (accepts an instance, a dict or None); a ``class_path``
    dict inside (a module option stored by a checkpoint) is instantiated."""
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if isinstance(value, dict):
        kwargs = {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for k, v in value.items():
            if isinstance(v, dict) and "class_path" in v:
                v = module_from_config(v)
            elif isinstance(v, dict) and isinstance(types.get(k), str) and types[k] in _NESTED:
                v = as_dataclass(_NESTED[types[k]], v)
            kwargs[k] = v
        return cls(**kwargs)
    raise UserError(f"expected a {cls.__name__} or a mapping, got {type(value).__name__}")


def module_config(module: nn.Module) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of an injectable module that records its init arguments."""
    cls = type(module)
    init = getattr(module, "init_args", None)
    if init is None:
        raise UserError(f"{cls.__name__} does not record its init arguments (init_args); it cannot be saved")
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(init)}


def concrete(module: Any) -> Any:
    """An injectable module option as a fresh, built instance: a ``class_path`` dict is instantiated, a
    jsonargparse ``lazy_instance`` (a signature default, shared by every call) is built anew."""
    if isinstance(module, dict):
        return module_from_config(module)
    if hasattr(module, "lazy_get_init_args"):
        return module._lazy_class_type(**module._lazy_kwargs)
    return module


def module_from_config(config: dict[str, Any]) -> nn.Module:
    """The module a ``{"class_path", "init_args"}`` dict describes (LightningCLI's ``instantiate_class``)."""
    from lightning.pytorch.cli import instantiate_class

    return instantiate_class((), config)


def plain(value: Any) -> Any:
    """An option object as plain data: dataclasses as dicts, injectable modules as their ``class_path`` dict."""
    if isinstance(value, nn.Module):
        return module_config(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    return value


def compile_patterns(patterns: list[str], key: str) -> list[re.Pattern]:
    """``patterns`` compiled; one that is no regular expression is a one-line error naming ``key``."""
    out = []
    for pattern in patterns:
        try:
            out.append(re.compile(pattern))
        except re.error as e:
            raise UserError(f"{key}: '{pattern}' is not a regular expression ({e})") from None
    return out


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


@dataclass
class LoraOptions:
    """LoRA adapters (peft).

    Args:
        r: rank of the update matrices.
        alpha: scaling numerator (update scaled by alpha / r).
        dropout: dropout on the LoRA input.
        target_modules: module-name suffixes to adapt; empty = the model's defaults (a backbone's attention
            projections; a VLM's LLM attention and MLP projections).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(self.r >= 1, f"lora.r must be >= 1, got {self.r}")
        _check(self.alpha > 0, f"lora.alpha must be > 0, got {self.alpha}")
        _check(0 <= self.dropout < 1, f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DecoderOptions:
    """The DETR decoder.

    Args:
        hidden_dim: decoder width (multiple of 4 and of nhead).
        num_queries: object queries = the most detections per image.
        num_layers: decoder layers.
        nhead: attention heads.
        dim_feedforward: decoder MLP width.
        dropout: decoder dropout.
        aux_loss: losses on every decoder layer's predictions, not only the last.
        query_groups: training-only query groups, each matched one-to-one on its own (Group DETR: faster
            convergence at no inference cost); 1 = plain DETR.
        pos_temperature: sine position embedding temperature (DETR 10000; ~20 for grids of a few tokens).
        pos_gain: factor on the position embedding added to the tokens (DETR 1; ~2 localises sooner on small
            grids).
    """

    hidden_dim: int = 256
    num_queries: int = 100
    num_layers: int = 6
    nhead: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    aux_loss: bool = True
    query_groups: int = 1
    pos_temperature: float = 10000.0
    pos_gain: float = 1.0

    def __post_init__(self) -> None:
        k = "decoder"  # under model. (detection) or model.det_head. (the VLM)
        _check(self.nhead >= 1, f"{k}.nhead must be >= 1, got {self.nhead}")
        _check(
            self.hidden_dim >= 4 and self.hidden_dim % 4 == 0 and self.hidden_dim % self.nhead == 0,
            f"{k}.hidden_dim must be a positive multiple of 4 and of nhead ({self.nhead}), got {self.hidden_dim}",
        )
        for name in ("num_queries", "num_layers", "dim_feedforward", "query_groups"):
            _check(getattr(self, name) >= 1, f"{k}.{name} must be >= 1, got {getattr(self, name)}")
        _check(0 <= self.dropout < 1, f"{k}.dropout must be in [0, 1), got {self.dropout}")
        _check(self.pos_temperature > 0, f"{k}.pos_temperature must be > 0, got {self.pos_temperature}")
        _check(self.pos_gain > 0, f"{k}.pos_gain must be > 0, got {self.pos_gain}")

    def build(self, in_dims: list[int], num_classes: int, num_descs: int) -> DetrHead:
        """The :class:`~transferkit.heads.detr.DetrHead` over token levels of widths ``in_dims``."""
        return DetrHead(in_dims, num_classes, num_descs, **dataclasses.asdict(self))


@dataclass
class LossOptions:
    """Set-criterion terms and weights.

    Args:
        weights: weight per term: ``loss_ce`` (1), ``loss_bbox`` (5), ``loss_giou`` (2), ``loss_obj`` (1),
            ``loss_desc`` (1); auxiliary layers use the same weights.
        eos_coef: class weight of "no object" (DETR: 0.1).
        description: train the description head (classification over the training descriptions).
    """

    weights: dict[str, float] = field(default_factory=dict)
    eos_coef: float = 0.1
    description: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        _check(
            not unknown,
            f"unknown loss weight(s) {sorted(unknown)} in loss.weights; known: {list(DEFAULT_WEIGHTS)}",
        )
        bad = {k: v for k, v in self.weights.items() if not v >= 0}
        _check(not bad, f"loss.weights must be >= 0, got {bad}")
        _check(0 < self.eos_coef <= 1, f"loss.eos_coef must be in (0, 1], got {self.eos_coef}")

    def build(self, num_classes: int, matcher: Matcher, num_descs: int) -> SetCriterion:
        """The :class:`~transferkit.heads.criterion.SetCriterion` (the description term only with descriptions)."""
        return SetCriterion(
            num_classes,
            matcher,
            weight_dict=self.weights,
            eos_coef=self.eos_coef,
            losses=tuple(x for x in LOSSES if x != "desc" or num_descs > 0),
        )


@dataclass
class DetHeadOptions:
    """A DETR-style detection head on a vision-language model's hidden states at the target image's tokens.

    Args:
        loss_weight: weight of the set loss next to the LM loss.
        decoder: the decoder (default: 50 queries, 3 layers, feed-forward 1024).
        matcher: the query-to-object matcher (``class_path``/``init_args``; Hungarian by default).
        loss: set-criterion weights and the description head.
    """

    loss_weight: float = 1.0
    decoder: DecoderOptions = field(
        default_factory=lambda: DecoderOptions(num_queries=50, num_layers=3, dim_feedforward=1024)
    )
    matcher: Matcher = field(default_factory=lambda: lazy_instance(HungarianMatcher))
    loss: LossOptions = field(default_factory=LossOptions)

    def __post_init__(self) -> None:
        _check(self.loss_weight > 0, f"model.det_head.loss_weight must be > 0, got {self.loss_weight}")
        self.decoder = as_dataclass(DecoderOptions, self.decoder)
        self.loss = as_dataclass(LossOptions, self.loss)
        self.matcher = concrete(self.matcher)


#: string annotations (``from __future__ import annotations``) of nested option fields -> their classes
_NESTED: dict[str, type] = {"DecoderOptions": DecoderOptions, "LossOptions": LossOptions}
