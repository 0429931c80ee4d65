"""Content digests of tensors: the identity of weights (feature-cache keys, checkpoints without frozen weights)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch


def tensors_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """blake2b (128 bit, hex) of ``(name, tensor)`` pairs in name order: names, dtypes, shapes and bytes."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(named, key=lambda kv: kv[0]):
        t = t.detach()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        if t.numel():
            flat = t.to("cpu").contiguous().reshape(-1).view(torch.uint8)
            h.update(flat.numpy().data)
    return h.hexdigest()
