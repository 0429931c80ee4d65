"""The learned ranker: a cross-attention transformer that scores candidate models for a dataset.

Inputs for one dataset (batched with padding masks, ``True`` = padding):

- ``data_tokens (B, T, D_data)`` / ``data_mask (B, T)``: the dataset's token set
  (:mod:`transferkit.select.dataset_embed`), the *memory*;
- ``model_codes (B, M, D_model)`` / ``model_mask (B, M)``: one embedding per candidate model
  (:mod:`transferkit.select.model_embed`), the *queries*.

Architecture (``torch.nn.TransformerDecoder``, pre-norm): dataset tokens are projected to ``d_model`` and
refined by ``encoder_layers`` self-attention layers; each candidate model becomes one query token (an MLP of
its code); ``layers`` decoder layers let the model queries attend to each other (the list is ranked jointly)
and cross-attend to the dataset tokens; a linear head gives one score per model, ``(B, M)``. No positional
encodings: the output is equivariant to the order of the candidates and invariant to the order of the
dataset tokens.

Losses (``scores``, ``targets`` ``(B, M)``, ``mask`` ``(B, M)`` ``True`` = padding), both
listwise-by-dataset:

- :func:`listmle_loss`: ListMLE (Xia et al., ICML 2008), the negative Plackett-Luce log-likelihood of the
  true order: ``-sum_i [s_{pi(i)} - log sum_{j >= i} exp s_{pi(j)}]``, averaged over datasets;
- :func:`pairwise_loss`: RankNet (Burges et al., ICML 2005), logistic loss on every pair with different
  targets, ``log(1 + exp(-(s_i - s_j)))`` for ``t_i > t_j``, weighted by ``|t_i - t_j|`` when
  ``weighted``.

Both are written here: neither torch nor a maintained library we depend on ships them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.errors import UserError
from transferkit.select.options import RANK_LOSSES, RankerConfig


class RankingTransformer(nn.Module):
    """Scores ``(B, M)`` of candidate models (queries) for datasets (memory); see the module docstring."""

    def __init__(self, config: RankerConfig | None = None, **kwargs: Any):
        super().__init__()
        self.config = c = config or RankerConfig(**kwargs)
        if c.model_dim is None or c.data_dim is None:
            raise UserError(
                "RankerConfig.model_dim/data_dim are unknown: set them, or train with RankerTrainer"
            )
        self.data_proj = nn.Sequential(nn.LayerNorm(c.data_dim), nn.Linear(c.data_dim, c.d_model))
        self.model_proj = nn.Sequential(
            nn.LayerNorm(c.model_dim),
            nn.Linear(c.model_dim, c.d_model),
            nn.GELU(),
            nn.Linear(c.d_model, c.d_model),
        )
        ff = c.ff_mult * c.d_model
        self.data_encoder = (
            nn.TransformerEncoder(
                nn.TransformerEncoderLayer(
                    c.d_model, c.heads, ff, c.dropout, batch_first=True, norm_first=True
                ),
                c.encoder_layers,
                enable_nested_tensor=False,
            )
            if c.encoder_layers
            else None
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(c.d_model, c.heads, ff, c.dropout, batch_first=True, norm_first=True),
            c.layers,
        )
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, 1)
        if c.offset_column is not None:
            if not -c.model_dim <= c.offset_column < c.model_dim:
                raise UserError(
                    f"offset_column {c.offset_column} is not a column of {c.model_dim}-wide model codes"
                )
            nn.init.zeros_(self.head.weight)  # the ranker starts as the offset's ranking
            nn.init.zeros_(self.head.bias)
            self.offset_scale = nn.Parameter(torch.ones(()))

    def forward(
        self,
        model_codes: torch.Tensor,
        data_tokens: torch.Tensor,
        model_mask: torch.Tensor | None = None,
        data_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``model_codes (B, M, model_dim)``, ``data_tokens (B, T, data_dim)`` -> scores ``(B, M)``."""
        c = self.config
        if model_codes.ndim != 3 or model_codes.shape[-1] != c.model_dim:
            raise UserError(f"model_codes must be (B, M, {c.model_dim}), got {tuple(model_codes.shape)}")
        if data_tokens.ndim != 3 or data_tokens.shape[-1] != c.data_dim:
            raise UserError(f"data_tokens must be (B, T, {c.data_dim}), got {tuple(data_tokens.shape)}")
        if model_codes.shape[0] != data_tokens.shape[0]:
            raise UserError(
                f"{model_codes.shape[0]} model lists but {data_tokens.shape[0]} datasets; one list per dataset"
            )
        memory = self.data_proj(data_tokens)
        if self.data_encoder is not None:
            memory = self.data_encoder(memory, src_key_padding_mask=data_mask)
        queries = self.model_proj(model_codes)
        out = self.decoder(
            queries, memory, tgt_key_padding_mask=model_mask, memory_key_padding_mask=data_mask
        )
        scores = self.head(self.norm(out)).squeeze(-1)
        if c.offset_column is not None:
            scores = scores + self.offset_scale * model_codes[..., c.offset_column]
        if model_mask is not None:
            scores = scores.masked_fill(model_mask, 0.0)
        return scores

    def checkpoint(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> RankingTransformer:
        model = cls(RankerConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()


class RankingEnsemble(nn.Module):
    """Members trained alike from different seeds; the score of a model is the mean over members of their
    scores z-scored within the list (a deep ensemble: with a handful of training lists, one member's ranking
    varies with its seed). Same interface as :class:`RankingTransformer`."""

    def __init__(self, members: Sequence[RankingTransformer]):
        super().__init__()
        if not members:
            raise UserError("an ensemble needs at least one ranker")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    def forward(
        self,
        model_codes: torch.Tensor,
        data_tokens: torch.Tensor,
        model_mask: torch.Tensor | None = None,
        data_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``model_codes (B, M, model_dim)``, ``data_tokens (B, T, data_dim)`` -> scores ``(B, M)``."""
        valid = torch.ones(model_codes.shape[:2], dtype=torch.bool) if model_mask is None else ~model_mask
        n = valid.sum(-1, keepdim=True).clamp_min(1)
        out = torch.zeros(model_codes.shape[:2])
        for member in self.members:
            s = member(model_codes, data_tokens, model_mask, data_mask).masked_fill(~valid, 0.0)
            mean = s.sum(-1, keepdim=True) / n
            std = (((s - mean) ** 2).masked_fill(~valid, 0.0).sum(-1, keepdim=True) / n).sqrt()
            out = out + ((s - mean) / std.clamp_min(1e-6)).masked_fill(~valid, 0.0)
        return out / len(self.members)

    def checkpoint(self) -> dict[str, Any]:
        return {"members": [m.checkpoint() for m in self.members]}


def load_ranker(ckpt: dict[str, Any]) -> RankingTransformer | RankingEnsemble:
    """A ranker (or an ensemble of them) from its ``checkpoint()``."""
    if "members" in ckpt:
        return RankingEnsemble([RankingTransformer.from_checkpoint(c) for c in ckpt["members"]]).eval()
    return RankingTransformer.from_checkpoint(ckpt)


# ---------------------------------------------------------------------------------------------- losses
def _valid(targets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(targets, dtype=torch.bool) if mask is None else ~mask


def listmle_loss(
    scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """ListMLE: mean over datasets of ``-log P_PL(true order | scores)``; padding (``mask`` True) ignored."""
    valid = _valid(targets, mask)
    order = torch.argsort(targets.masked_fill(~valid, float("-inf")), dim=1, descending=True)
    s = torch.gather(scores, 1, order)
    v = torch.gather(valid, 1, order)  # valid entries come first in each row
    # padding gets a large finite negative (not -inf: -inf - -inf would give NaN gradients)
    s = s.masked_fill(~v, -1e9)
    # log sum_{j >= i} exp s_j via a reversed cumulative logsumexp
    tail = torch.logcumsumexp(s.flip(1), dim=1).flip(1)
    terms = torch.where(v, tail - s, torch.zeros_like(s))
    per_list = terms.sum(dim=1) / v.sum(dim=1).clamp_min(1)
    return per_list.mean()


def pairwise_loss(
    scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None, weighted: bool = True
) -> torch.Tensor:
    """RankNet logistic loss over ordered pairs ``t_i > t_j`` of each list (weighted by ``|t_i - t_j|``)."""
    valid = _valid(targets, mask)
    diff_t = targets[:, :, None] - targets[:, None, :]
    pair = (diff_t > 0) & valid[:, :, None] & valid[:, None, :]
    diff_s = scores[:, :, None] - scores[:, None, :]
    loss = nn.functional.softplus(-diff_s)
    w = diff_t.abs() if weighted else torch.ones_like(diff_t)
    w = w * pair
    return (loss * w).sum() / w.sum().clamp_min(1e-12)


def ranking_loss(
    name: str, scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Dispatch to :func:`listmle_loss` or :func:`pairwise_loss` by ``name``."""
    key = name.lower()
    if key == "listmle":
        return listmle_loss(scores, targets, mask)
    if key == "pairwise":
        return pairwise_loss(scores, targets, mask)
    raise UserError(f"unknown ranking loss '{name}'; choose one of {list(RANK_LOSSES)}")


# ---------------------------------------------------------------------------------------------- data
@dataclass
class RankExample:
    """One dataset's training list: ``data_tokens (T, D_data)``, ``model_codes (M, D_model)``, ``targets (M,)``
    (accuracies; higher = better) and the model names."""

    dataset: str
    data_tokens: np.ndarray
    model_codes: np.ndarray
    targets: np.ndarray
    models: list[str]


@torch.no_grad()
def predict_scores(model: nn.Module, data_tokens: np.ndarray, model_codes: np.ndarray) -> np.ndarray:
    """Ranker scores ``(M,)`` of ``model_codes (M, D_model)`` for one dataset ``data_tokens (T, D_data)``."""
    model.eval()
    tokens = torch.as_tensor(np.asarray(data_tokens, dtype=np.float32))[None]
    codes = torch.as_tensor(np.asarray(model_codes, dtype=np.float32))[None]
    return model(codes, tokens).squeeze(0).numpy()


# ---------------------------------------------------------------------------------------------- synthetic
def synthetic_ranking_examples(
    num_datasets: int = 12,
    num_models: int = 8,
    model_dim: int = 16,
    data_dim: int = 8,
    tokens: int = 16,
    latent: int = 3,
    interaction: float = 1.0,
    noise: float = 0.05,
    seed: int = 0,
) -> list[RankExample]:
    """A synthetic performance table as :class:`~transferkit.select.ranker.RankExample` lists.

    Model ``m`` has latent quality ``q_m`` and factors ``u_m``; dataset ``d`` has factors ``v_d``. Codes are
    ``[q_m, u_m] A + noise`` (``model_dim``), dataset tokens ``v_d B + N(0, 0.3)`` (``tokens`` of them,
    ``data_dim``), and accuracy ``sigmoid(q_m + interaction * u_m . v_d)``.
    """
    rng = np.random.default_rng(seed)
    q = rng.normal(0, 1, num_models)
    u = rng.normal(0, 1, (num_models, latent))
    v = rng.normal(0, 1, (num_datasets, latent))
    a = rng.normal(0, 1, (latent + 1, model_dim))
    b = rng.normal(0, 1, (latent, data_dim))
    codes = np.concatenate([q[:, None], u], axis=1) @ a + noise * rng.normal(size=(num_models, model_dim))
    names = [f"model-{i}" for i in range(num_models)]
    examples = []
    for d in range(num_datasets):
        toks = v[d] @ b + 0.3 * rng.normal(size=(tokens, data_dim))
        acc = 1 / (1 + np.exp(-(q + interaction * u @ v[d])))
        examples.append(
            RankExample(f"synthetic-{d}", toks.astype(np.float32), codes.astype(np.float32), acc, names)
        )
    return examples
