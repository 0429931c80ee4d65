"""Dataset representations: image embeddings of a class-balanced sample, as a variable-length token set.

A dataset becomes ``tokens (n, D)``: the L2-normalised pooled embeddings of ``n <= max_samples`` of its
images from one *encoder* backbone, sampled class-balanced (round-robin over classes in a fixed shuffled
order, so every class is represented as evenly as its size allows). Sets of different sizes are batched with
:func:`pad_token_sets` (zero padding + a boolean mask, ``True`` = padding, the
``key_padding_mask`` convention of ``torch.nn`` attention).

Encoder: a CLIP or SigLIP image tower when one is available (``auto`` takes ``clip-vit-b16`` or else
``siglip-b16`` when its weights are in the local Hugging Face cache -- no network probing), otherwise any
registry backbone (``auto`` falls back to ``minilm-l6``, which ships with transferkit). The encoder's name is stored with the ranker, which embeds new
datasets with the same encoder. Only the sampled images go through the encoder, through the feature cache of
:mod:`transferkit.probe.cache` (keyed by the sample's indices), so a dataset is embedded once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from transferkit.errors import UserError

log = logging.getLogger(__name__)

#: ``auto`` encoder candidates: (registered name, hub id whose weights must be in the local HF cache)
AUTO_ENCODERS: tuple[tuple[str, str | None], ...] = (
    ("clip-vit-b16", "openai/clip-vit-base-patch16"),
    ("siglip-b16", "google/siglip-base-patch16-224"),
    ("minilm-l6", None),
)


def class_balanced_indices(labels: Sequence[int] | np.ndarray, max_samples: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_samples`` items, as balanced over classes as possible (sorted).

    Each class's items are shuffled with ``seed``; classes then contribute one item per round until
    ``max_samples`` are chosen or all items are used.
    """
    y = np.asarray(labels, dtype=np.int64)
    if y.ndim != 1 or len(y) == 0:
        raise UserError("class-balanced sampling needs a non-empty 1-D label array")
    if max_samples < 1:
        raise UserError(f"max_samples must be >= 1, got {max_samples}")
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(max_samples, len(y)):
        for items in per_class:
            if depth < len(items) and len(chosen) < max_samples:
                chosen.append(int(items[depth]))
        depth += 1
    return np.sort(np.asarray(chosen, dtype=np.int64))


class _SubsetData:
    """A datamodule view serving ``indices`` of one split (for the feature cache: its fingerprint is the
    split's fingerprint plus the indices)."""

    def __init__(self, datamodule: Any, split: str, indices: np.ndarray):
        self._dm = datamodule
        self._split = split
        self._indices = indices
        self.image_size = datamodule.image_size
        self.eval_batch_size = getattr(datamodule, "eval_batch_size", 128)
        self.num_workers = getattr(datamodule, "num_workers", 0)

    @property
    def class_names(self) -> list[str]:
        return list(self._dm.class_names)

    def dataset(self, split: str) -> Any:
        assert split == self._split
        return self._dm.dataset(split).subset(self._indices)

    def fingerprint(self, split: str) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(self._dm.fingerprint(split).encode())
        h.update(self._indices.tobytes())
        return h.hexdigest()


@dataclass
class DatasetTokens:
    """``tokens`` ``(n, D)`` float32 (L2-normalised), ``labels`` ``(n,)`` of the sampled images."""

    tokens: np.ndarray
    labels: np.ndarray
    encoder: str
    meta: dict[str, Any] = field(default_factory=dict)


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an old/odd hub client: treat as not cached
        return False


def resolve_encoder(name: str = "auto", image_size: int = 224) -> tuple[str, Any]:
    """``(name, built backbone)`` of the dataset encoder; ``auto`` = the first of :data:`AUTO_ENCODERS`
    whose weights are available locally."""
    from transferkit.backbones import resolve_backbone

    if name != "auto":
        return name, resolve_backbone(name, image_size, seed=0)
    for cand, hub_id in AUTO_ENCODERS:
        if hub_id is not None and not _in_hf_cache(hub_id):
            continue
        try:
            return cand, resolve_backbone(cand, image_size, seed=0)
        except Exception as e:  # a cached but unloadable encoder: try the next one
            log.info("dataset encoder '%s' unavailable (%s); trying the next", cand, type(e).__name__)
    raise UserError("no dataset encoder could be built; pass --encoder NAME")


def embed_dataset(
    datamodule: Any,
    encoder: Any,
    *,
    split: str = "train",
    max_samples: int = 256,
    seed: int = 0,
    cache_dir: Any = None,
    progress: bool = False,
) -> DatasetTokens:
    """Token set of ``datamodule``'s ``split``: encoder embeddings of a class-balanced sample.

    ``encoder`` is a built backbone or a name (``'auto'`` resolves as :func:`resolve_encoder`).
    """
    from transferkit.probe.cache import get_features

    if isinstance(encoder, str):
        encoder = resolve_encoder(encoder, datamodule.image_size)[1]
    targets = np.asarray(datamodule.dataset(split).targets, dtype=np.int64)
    idx = class_balanced_indices(targets, max_samples, seed)
    fs = get_features(
        encoder, _SubsetData(datamodule, split, idx), split, cache_dir=cache_dir, progress=progress
    )
    tokens = torch.nn.functional.normalize(
        torch.from_numpy(np.array(fs.features, dtype=np.float32)), dim=1
    ).numpy()
    return DatasetTokens(
        tokens,
        np.asarray(fs.labels),
        str(encoder.name),
        {"split": split, "num_samples": len(idx), "fingerprint": datamodule.fingerprint(split), "seed": seed},
    )


def pad_token_sets(sets: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch variable-length sets ``[(n_i, D)]`` into ``tokens (B, max n, D)`` and ``mask (B, max n)``
    (``True`` = padding)."""
    if not sets:
        raise UserError("no token sets to batch")
    dims = {int(s.shape[-1]) for s in sets}
    if len(dims) != 1 or any(s.ndim != 2 or s.shape[0] == 0 for s in sets):
        raise UserError(f"token sets must be non-empty (n, D) arrays with one D, got dims {sorted(dims)}")
    length = max(int(s.shape[0]) for s in sets)
    out = torch.zeros(len(sets), length, dims.pop())
    mask = torch.ones(len(sets), length, dtype=torch.bool)
    for i, s in enumerate(sets):
        t = torch.as_tensor(np.asarray(s, dtype=np.float32))
        out[i, : len(t)] = t
        mask[i, : len(t)] = False
    return out, mask
