"""Classification heads on pooled backbone features."""

from __future__ import annotations

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """(B, D) pooled features -> (B, num_classes) logits.

    With ``batchnorm=True`` this is the linear-probe head of MAE/DINOv2-style evaluation: a parameter-free
    ``BatchNorm1d(affine=False)`` that whitens each feature dimension, then a Linear layer initialised with
    ``trunc_normal(std=init_std)`` and zero bias.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        batchnorm: bool = False,
        dropout: float = 0.0,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False, eps=1e-6) if batchnorm else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=init_std)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, D) -> logits (B, num_classes)."""
        return self.fc(self.dropout(self.norm(features)))
