"""Filter-normalised directions (Li et al. 2018)."""

from __future__ import annotations

import torch
from torch import nn

from transferkit.analysis.landscape import filter_normalized_direction, select_params


def test_every_filter_gets_the_norm_of_the_weight_filter_and_biases_stay():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    params = {n: p.detach() for n, p in model.named_parameters()}
    d = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    for name, w in params.items():
        if w.ndim == 1:
            assert torch.all(d[name] == 0)
        else:
            torch.testing.assert_close(d[name].flatten(1).norm(dim=1), w.flatten(1).norm(dim=1))
    d2 = filter_normalized_direction(params, torch.Generator().manual_seed(1))
    assert not torch.allclose(d["0.weight"], d2["0.weight"])
    assert set(select_params(model, "all")) == set(params)
