import itertools
import math

import pytest
import torch

from transferkit.errors import UserError
from transferkit.select.ranker import (
    RankerConfig,
    RankingTransformer,
    listmle_loss,
    pairwise_loss,
    ranking_loss,
)


def _model(**kw):
    torch.manual_seed(0)
    return RankingTransformer(
        RankerConfig(model_dim=12, data_dim=6, d_model=16, heads=2, layers=2, dropout=0.0, **kw)
    ).eval()


def test_scores_shape_equivariance_and_padding():
    m = _model()
    codes, data = torch.randn(2, 5, 12), torch.randn(2, 7, 6)
    scores = m(codes, data)
    assert scores.shape == (2, 5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(m(codes[:, perm], data), scores[:, perm], atol=1e-5, rtol=1e-5)
    # dataset tokens are a set: their order does not matter
    torch.testing.assert_close(m(codes, data[:, torch.randperm(7)]), scores, atol=1e-5, rtol=1e-5)
    # padded models and padded tokens do not change the real ones' scores
    pad_codes = torch.cat([codes, torch.randn(2, 3, 12) * 100], dim=1)
    model_mask = torch.zeros(2, 8, dtype=torch.bool)
    model_mask[:, 5:] = True
    pad_data = torch.cat([data, torch.randn(2, 4, 6) * 100], dim=1)
    data_mask = torch.zeros(2, 11, dtype=torch.bool)
    data_mask[:, 7:] = True
    padded = m(pad_codes, pad_data, model_mask, data_mask)
    torch.testing.assert_close(padded[:, :5], scores, atol=1e-5, rtol=1e-5)
    assert torch.all(padded[:, 5:] == 0)


def test_shape_errors():
    m = _model()
    with pytest.raises(UserError, match=r"\(B, M, 12\)"):
        m(torch.randn(2, 5, 10), torch.randn(2, 7, 6))
    with pytest.raises(UserError, match="one list per dataset"):
        m(torch.randn(3, 5, 12), torch.randn(2, 7, 6))
    with pytest.raises(UserError, match="divisible"):
        RankerConfig(d_model=10, heads=4)


def _plackett_luce_nll(scores, targets):
    order = sorted(range(len(targets)), key=lambda i: -targets[i])
    total = 0.0
    for i in range(len(order)):
        total += math.log(sum(math.exp(scores[order[j]]) for j in range(i, len(order)))) - scores[order[i]]
    return total / len(order)


def test_listmle_equals_plackett_luce_brute_force_and_ignores_padding():
    torch.manual_seed(1)
    s = torch.randn(2, 4, requires_grad=True)
    t = torch.tensor([[0.3, 0.9, 0.1, 0.5], [0.2, 0.4, 0.0, 0.0]])
    mask = torch.tensor([[False] * 4, [False, False, True, True]])
    loss = listmle_loss(s, t, mask)
    expected = (
        _plackett_luce_nll(s[0].tolist(), t[0].tolist())
        + _plackett_luce_nll(s[1, :2].tolist(), t[1, :2].tolist())
    ) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(s.grad).all() and torch.all(s.grad[1, 2:] == 0)
    # the true order has the lowest loss among all orders
    losses = {
        p: listmle_loss(torch.tensor([list(p)], dtype=torch.float) * 3, t[:1]).item()
        for p in itertools.permutations(range(4))
    }
    best = min(losses, key=losses.get)
    assert [t[0].tolist()[i] for i in sorted(range(4), key=lambda i: -best[i])] == sorted(
        t[0].tolist(), reverse=True
    )


def test_pairwise_loss():
    t = torch.tensor([[1.0, 0.5, 0.0]])
    good = pairwise_loss(torch.tensor([[3.0, 2.0, 1.0]]), t)
    bad = pairwise_loss(torch.tensor([[1.0, 2.0, 3.0]]), t)
    assert good < bad
    # weighted RankNet by hand: pairs (0,1) w .5, (0,2) w 1, (1,2) w .5, score gaps 1, 2, 1
    sp = torch.nn.functional.softplus
    expected = (0.5 * sp(torch.tensor(-1.0)) + sp(torch.tensor(-2.0)) + 0.5 * sp(torch.tensor(-1.0))) / 2.0
    assert good.item() == pytest.approx(expected.item(), rel=1e-6)
    assert ranking_loss("PAIRWISE", torch.zeros(1, 3), t, None).item() == pytest.approx(math.log(2), rel=1e-6)
    with pytest.raises(UserError, match="unknown ranking loss"):
        ranking_loss("lambdarank", torch.zeros(1, 3), t, None)
