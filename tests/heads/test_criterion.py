import pytest
import torch

from transferkit.heads.criterion import DEFAULT_WEIGHTS, SetCriterion
from transferkit.heads.matcher import HungarianMatcher


def make_outputs(b=2, q=4, c=3, v=5, aux=2, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)

    def one():
        return {
            "pred_logits": torch.randn(b, q, c + 1, generator=g).requires_grad_(requires_grad),
            "pred_boxes": (torch.rand(b, q, 4, generator=g) * 0.3 + 0.2).requires_grad_(requires_grad),
            "pred_objectness": torch.randn(b, q, generator=g).requires_grad_(requires_grad),
            "pred_desc_logits": torch.randn(b, q, v, generator=g).requires_grad_(requires_grad),
        }

    out = one()
    out["aux_outputs"] = [one() for _ in range(aux)]
    return out


TARGETS = [
    {
        "labels": torch.tensor([0, 2]),
        "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.1, 0.3]]),
        "desc": torch.tensor([1, -100]),
    },
    {
        "labels": torch.zeros(0, dtype=torch.int64),
        "boxes": torch.zeros(0, 4),
        "desc": torch.zeros(0, dtype=torch.int64),
    },
]


def test_named_terms_aux_terms_and_weighted_total():
    crit = SetCriterion(3, HungarianMatcher(), weight_dict={"loss_desc": 0.5})
    out = make_outputs()
    terms = crit(out, TARGETS)
    base = ["loss_ce", "loss_bbox", "loss_giou", "loss_obj", "loss_desc"]
    for k in base:
        assert k in terms and f"{k}_0" in terms and f"{k}_1" in terms
    assert "class_error" in terms and "cardinality_error" in terms and "class_error_0" not in terms
    assert crit.weight_of("loss_bbox_1") == 5.0 and crit.weight_of("loss_desc") == 0.5
    assert crit.weight_of("class_error") == 0.0
    expected = sum(crit.weight_of(k) * v for k, v in terms.items())
    torch.testing.assert_close(crit.total(terms), expected)
    assert DEFAULT_WEIGHTS["loss_ce"] == 1 and DEFAULT_WEIGHTS["loss_giou"] == 2


def test_terms_match_hand_computation():
    crit = SetCriterion(3, HungarianMatcher(), eos_coef=0.1)
    out = make_outputs(aux=0)
    terms = crit(out, TARGETS)
    (rows, cols), _ = crit.matcher(out, TARGETS)
    # L1 and GIoU normalised by the number of target boxes (2)
    src = out["pred_boxes"][0, rows]
    tgt = TARGETS[0]["boxes"][cols]
    torch.testing.assert_close(terms["loss_bbox"], (src - tgt).abs().sum() / 2)
    # CE: matched queries to their class, all others (both images) to no-object with weight 0.1
    target_classes = torch.full((2, 4), 3)
    target_classes[0, rows] = TARGETS[0]["labels"][cols]
    weight = torch.tensor([1.0, 1.0, 1.0, 0.1])
    ce = torch.nn.functional.cross_entropy(out["pred_logits"].transpose(1, 2), target_classes, weight)
    torch.testing.assert_close(terms["loss_ce"], ce)
    # description: only the matched object with a known description counts
    known = cols == 0
    desc = torch.nn.functional.cross_entropy(
        out["pred_desc_logits"][0, rows[known]], TARGETS[0]["desc"][cols[known]]
    )
    torch.testing.assert_close(terms["loss_desc"], desc)
    obj_target = torch.zeros(2, 4)
    obj_target[0, rows] = 1
    torch.testing.assert_close(
        terms["loss_obj"],
        torch.nn.functional.binary_cross_entropy_with_logits(out["pred_objectness"], obj_target),
    )


def test_gradients_reach_every_output_and_empty_batches_work():
    crit = SetCriterion(3)
    out = make_outputs(aux=1, requires_grad=True)
    crit.total(crit(out, TARGETS)).backward()
    for k in ("pred_logits", "pred_boxes", "pred_objectness", "pred_desc_logits"):
        assert out[k].grad is not None and out[k].grad.abs().sum() > 0, k
    empty = [TARGETS[1], TARGETS[1]]
    terms = crit(make_outputs(aux=0), empty)
    assert terms["loss_bbox"].item() == 0 and terms["loss_ce"].item() > 0


def test_unknown_loss_group_rejected():
    with pytest.raises(ValueError, match="unknown loss"):
        SetCriterion(3, losses=("labels", "masks"))


def test_query_groups_are_matched_separately_and_averaged():
    crit = SetCriterion(3)
    single = make_outputs(aux=1, seed=3)
    doubled = {k: torch.cat([v, v], dim=1) for k, v in single.items() if k.startswith("pred_")}
    doubled["aux_outputs"] = [
        {k: torch.cat([v, v], dim=1) for k, v in a.items()} for a in single["aux_outputs"]
    ]
    doubled["query_groups"] = 2
    a, b = crit(single, TARGETS), crit(doubled, TARGETS)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    # without groups the same 8 queries compete for the 2 objects: a different (lower) box loss
    flat = crit({k: v for k, v in doubled.items() if k != "query_groups"}, TARGETS)
    assert not torch.allclose(flat["loss_ce"], a["loss_ce"])
