import itertools

import pytest
import torch

from transferkit.heads.matcher import HungarianMatcher


def random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    """n valid normalised cxcywh boxes."""
    c = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    return torch.cat([c, wh], dim=1)


def random_case(q: int, counts: list[int], num_classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(len(counts), q, num_classes + 1, generator=g),
        "pred_boxes": torch.stack([random_boxes(q, g) for _ in counts]),
    }
    targets = [
        {"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": random_boxes(n, g)}
        for n in counts
    ]
    return outputs, targets


def brute_force(cost: torch.Tensor) -> float:
    """Minimum total cost of assigning every target (column) to a distinct query (row)."""
    q, t = cost.shape
    return min(
        sum(cost[r, c].item() for c, r in enumerate(rows)) for rows in itertools.permutations(range(q), t)
    )


@pytest.mark.parametrize("seed", range(6))
def test_matcher_equals_brute_force(seed):
    matcher = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
    q, n = 5, 1 + seed % 4
    outputs, targets = random_case(q, [n], seed=seed)
    ((rows, cols),) = matcher(outputs, targets)
    assert len(rows) == len(cols) == n and len(set(rows.tolist())) == n
    assert sorted(cols.tolist()) == list(range(n)) and rows.tolist() == sorted(rows.tolist())
    cost = matcher.cost_matrix(
        outputs["pred_logits"][0], outputs["pred_boxes"][0], targets[0]["labels"], targets[0]["boxes"]
    )
    found = cost[rows, cols].sum().item()
    assert found == pytest.approx(brute_force(cost), abs=1e-5)


def test_cost_matrix_terms():
    matcher = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]])
    logits = torch.tensor([[10.0, -10.0, -10.0], [-10.0, 10.0, -10.0]])  # 2 classes + no-object
    cost = matcher.cost_matrix(logits, boxes, torch.tensor([0]), boxes[:1])
    # identical box (L1 0, GIoU 1) and certain class: -1 - 2; the other query pays L1 and GIoU
    assert cost[0, 0].item() == pytest.approx(-3.0, abs=1e-4)
    assert cost[1, 0].item() > 0


def test_images_without_objects_and_batched_vs_single_agree():
    matcher = HungarianMatcher()
    outputs, targets = random_case(6, [3, 0, 6, 1], seed=7)
    batched = matcher(outputs, targets)
    assert batched[1][0].numel() == batched[1][1].numel() == 0
    assert len(batched[2][0]) == 6  # as many targets as queries: every query matched
    for i, t in enumerate(targets):
        single = matcher({k: v[i : i + 1] for k, v in outputs.items()}, [t])[0]
        assert torch.equal(single[0], batched[i][0]) and torch.equal(single[1], batched[i][1])
    nothing = matcher(
        outputs, [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 4
    )
    assert all(r.numel() == 0 and c.numel() == 0 for r, c in nothing)


def test_all_zero_costs_rejected():
    with pytest.raises(ValueError):
        HungarianMatcher(0, 0, 0)
