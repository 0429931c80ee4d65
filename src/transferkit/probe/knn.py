"""Weighted k-nearest-neighbour classification on (cached) features, as in DINO / DINOv2's kNN eval.

Features are L2-normalised, similarities are cosine (one matmul per chunk of queries against all training
features), the top ``max(ks)`` neighbours vote for their class with weight ``exp(sim / T)`` (DINOv2 applies
a softmax over the top neighbours; it only rescales each query's votes, so the prediction is the same) and
``T = 0.07``. All values of ``k`` are scored from one top-``max(k)`` search.

scikit-learn's ``KNeighborsClassifier(metric='cosine', weights=lambda d: exp((1 - d) / T))`` makes the
same predictions (tested); this module exists because it batches queries as chunked matrix products (GPU
or CPU), scores several ``k`` from one search and keeps the class scores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.errors import UserError
from transferkit.probe.options import DEFAULT_KS, DEFAULT_TEMPERATURE  # noqa: F401  (re-exported)
from transferkit.probe.rows import FeatureRows

log = logging.getLogger(__name__)


def _as_tensor(x: Any, device: torch.device) -> torch.Tensor:  # labels
    if isinstance(x, torch.Tensor):
        return x.to(device)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


@torch.no_grad()
def knn_neighbors(
    train_features: Any,
    query_features: Any,
    k: int,
    *,
    chunk_size: int = 1024,
    train_chunk_mb: float = 256.0,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` cosine neighbours of every query among the training features.

    The training features are read in blocks whose rows, and whose similarities to a chunk of ``chunk_size``
    queries, take at most ``train_chunk_mb`` MiB (float32); each query chunk's running top-``k`` is merged block
    by block, so memory does not grow with N (the result is the top-``k`` of all of them: the same neighbours as
    one search over everything, ties aside).

    Args:
        train_features: ``(N, D)`` (array, tensor or memory-mapped FeatureSet; ``(N, L, D)`` is flattened).
        query_features: ``(Q, D)``.
        k: neighbours per query (at most N).
    Returns:
        ``(similarities (Q, k), indices (Q, k))``, most similar first.
    """
    device = torch.device(device)
    train, query = FeatureRows(train_features), FeatureRows(query_features)
    if train.shape[1] != query.shape[1]:
        raise UserError(f"train features are {train.shape[1]}-d but query features {query.shape[1]}-d")
    if not 1 <= k <= len(train):
        raise UserError(f"k must be between 1 and the number of training samples ({len(train)}), got {k}")
    # a block's rows and its (queries x rows) similarities both stay within train_chunk_mb
    block = max(1, int(train_chunk_mb * 2**20 // (4 * max(train.shape[1], min(chunk_size, len(query))))))
    blocks = (
        [(0, F.normalize(train.load().to(device), dim=1).T.contiguous())] if block >= len(train) else None
    )  # one block: normalised once for every query chunk
    sims, idx = [], []
    for _, q in query.chunks(chunk_size):
        q = F.normalize(q.to(device), dim=1)
        best_s: torch.Tensor | None = None
        best_i: torch.Tensor | None = None
        parts = blocks or ((start, F.normalize(t.to(device), dim=1).T) for start, t in train.chunks(block))
        for start, t in parts:
            s, j = (q @ t).topk(min(k, t.shape[1]), dim=1, largest=True, sorted=True)
            j = j + start
            if best_s is None:
                best_s, best_i = s, j
            else:  # merge this block's candidates with the best so far
                both = torch.cat([best_s, s], 1)
                s, pos = both.topk(min(k, both.shape[1]), dim=1, largest=True, sorted=True)
                best_i = torch.cat([best_i, j], 1).gather(1, pos)
                best_s = s
        sims.append(best_s)
        idx.append(best_i)
    return torch.cat(sims), torch.cat(idx)


@torch.no_grad()
def knn_scores(
    train_features: Any,
    train_labels: Any,
    query_features: Any,
    num_classes: int,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int = 1024,
    train_chunk_mb: float = 256.0,
    device: str | torch.device = "cpu",
) -> dict[int, torch.Tensor]:
    """Class scores ``{k: (Q, C)}``: the sum of ``exp(sim / T)`` over the top-``k`` neighbours of each class.

    ``k`` values above the number of training samples are clipped to it (and deduplicated).
    """
    if temperature <= 0:
        raise UserError(f"the kNN temperature must be > 0, got {temperature}")
    device = torch.device(device)
    labels = _as_tensor(train_labels, device).long()
    n_train = len(labels)
    ks = sorted({min(int(k), n_train) for k in ks})
    if not ks or ks[0] < 1:
        raise UserError(f"k values must be >= 1, got {list(ks)}")
    sims, idx = knn_neighbors(
        train_features,
        query_features,
        ks[-1],
        chunk_size=chunk_size,
        train_chunk_mb=train_chunk_mb,
        device=device,
    )
    # exp((s - 1) / T): the same ratios as exp(s / T) without overflow for small T
    weights = torch.exp((sims - 1.0) / temperature)
    neighbor_labels = labels[idx]  # (Q, max_k)
    out = {}
    for k in ks:
        scores = torch.zeros(len(idx), num_classes, device=device, dtype=weights.dtype)
        scores.scatter_add_(1, neighbor_labels[:, :k], weights[:, :k])
        out[k] = scores
    return out


def knn_evaluate(
    train_features: Any,
    train_labels: Any,
    eval_sets: dict[str, tuple[Any, Any]],
    num_classes: int,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    select_on: str | None = "val",
    chunk_size: int = 1024,
    train_chunk_mb: float = 256.0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Top-1 accuracy of the weighted kNN for every ``k`` on each eval split; pick ``k`` on ``select_on``.

    Args:
        eval_sets: ``{'val': (features, labels), 'test': (features, labels)}``.
        select_on: split whose top-1 chooses ``k`` (ties: the smaller k); None: no selection.
    Returns:
        ``{'ks': [...], 'temperature': T, 'acc1': {split: {k: acc}}, 'best_k': k, 'val_acc1': ...,
        'test_acc1': ..., 'per_class_acc': {split: [...]}, 'predictions': {split: (N,) int64 array}}`` (the
        last four for ``best_k``).
    """
    result: dict[str, Any] = {
        "temperature": float(temperature),
        "acc1": {},
        "per_class_acc": {},
        "predictions": {},
    }
    preds: dict[str, dict[int, torch.Tensor]] = {}
    ys: dict[str, torch.Tensor] = {}
    for split, (feats, labels) in eval_sets.items():
        scores = knn_scores(
            train_features,
            train_labels,
            feats,
            num_classes,
            ks=ks,
            temperature=temperature,
            chunk_size=chunk_size,
            train_chunk_mb=train_chunk_mb,
            device=device,
        )
        y = _as_tensor(labels, torch.device(device)).long()
        ys[split] = y
        preds[split] = {k: s.argmax(1) for k, s in scores.items()}
        result["acc1"][split] = {k: float((p == y).float().mean()) for k, p in preds[split].items()}
        result["ks"] = sorted(scores)
    if select_on is not None and select_on in result["acc1"]:
        accs = result["acc1"][select_on]
        best_k = max(sorted(accs), key=lambda k: (accs[k], -k))
        result["best_k"] = best_k
        for split in result["acc1"]:
            result[f"{split}_acc1"] = result["acc1"][split][best_k]
            y, p = ys[split], preds[split][best_k]
            result["predictions"][split] = p.cpu().numpy()
            result["per_class_acc"][split] = [
                float((p[y == c] == c).float().mean()) if (y == c).any() else float("nan")
                for c in range(num_classes)
            ]
    return result
