import math

import pytest
import torch

from transferkit.heads.detr import DetrHead, PositionEmbeddingSine, infer_grid, postprocess


def test_position_embedding_matches_detr_formula():
    pe = PositionEmbeddingSine(8)
    emb = pe(3, 4)
    assert emb.shape == (12, 16)
    # token (row 1, col 2): y = 2/3 * 2pi, x = 3/4 * 2pi; feature 0 is sin(y / 10000^0), feature 8 sin(x)
    y, x = 2 / (3 + 1e-6) * 2 * math.pi, 3 / (4 + 1e-6) * 2 * math.pi
    tok = emb[1 * 4 + 2]
    assert tok[0].item() == pytest.approx(math.sin(y), abs=1e-5)
    assert tok[1].item() == pytest.approx(math.cos(y), abs=1e-5)
    assert tok[8].item() == pytest.approx(math.sin(x), abs=1e-5)
    assert tok[10].item() == pytest.approx(math.sin(x / 10000 ** (2 / 8)), abs=1e-5)
    assert len({tuple(r.tolist()) for r in emb}) == 12  # every grid position distinct


def test_infer_grid():
    assert infer_grid(64, 64, 64) == (8, 8)
    assert infer_grid(24, 48, 64) == (4, 6)
    with pytest.raises(ValueError):
        infer_grid(7, 64, 64)


@pytest.mark.parametrize("aux", [True, False])
def test_head_outputs_and_aux_layers(aux):
    torch.manual_seed(0)
    head = DetrHead(
        [48, 96],
        num_classes=5,
        num_descs=7,
        hidden_dim=32,
        num_queries=6,
        num_layers=3,
        nhead=4,
        dim_feedforward=64,
        dropout=0.0,
        aux_loss=aux,
    )
    levels = [torch.randn(2, 16, 48), torch.randn(2, 4, 96)]
    out = head(levels, [(4, 4), (2, 2)])
    assert out["pred_logits"].shape == (2, 6, 6)
    assert (
        out["pred_boxes"].shape == (2, 6, 4) and 0 < out["pred_boxes"].min() and out["pred_boxes"].max() < 1
    )
    assert out["pred_objectness"].shape == (2, 6) and out["pred_desc_logits"].shape == (2, 6, 7)
    assert len(out.get("aux_outputs", [])) == (2 if aux else 0)
    # the layer-by-layer path and TransformerDecoder's own forward give the same final predictions
    head.eval()
    a = head(levels, [(4, 4), (2, 2)])
    head.aux_loss = not aux
    b = head(levels, [(4, 4), (2, 2)])
    torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"])


def test_postprocess_scales_boxes_and_sorts():
    logits = torch.tensor([[[0.0, 5.0, -5.0], [3.0, 0.0, 0.0]]])  # 2 classes + no-object
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.1, 0.1]]])
    outputs = {"pred_logits": logits, "pred_boxes": boxes, "pred_objectness": torch.tensor([[0.0, 2.0]])}
    (det,) = postprocess(outputs, torch.tensor([[100, 200]]))  # H=100, W=200
    assert det["labels"].tolist() == [1, 0]  # query 0 (class 1, p ~ 0.99) before query 1 (class 0, p ~ 0.9)
    torch.testing.assert_close(det["boxes"][0], torch.tensor([50.0, 25.0, 150.0, 75.0]))
    torch.testing.assert_close(det["boxes"][1], torch.tensor([40.0, 20.0, 60.0, 30.0]))
    (by_obj,) = postprocess(outputs, torch.tensor([[100, 200]]), score="objectness")
    assert by_obj["labels"].tolist() == [0, 1] and by_obj["scores"][0].item() == pytest.approx(
        1 / (1 + math.exp(-2))
    )


def test_query_groups_train_only_and_isolated():
    torch.manual_seed(0)
    head = DetrHead(
        [16],
        num_classes=2,
        hidden_dim=32,
        num_queries=3,
        num_layers=2,
        nhead=4,
        dim_feedforward=64,
        dropout=0.0,
        query_groups=2,
    )
    levels = [torch.randn(1, 4, 16)]
    out = head(levels, [(2, 2)])
    assert out["query_groups"] == 2 and out["pred_boxes"].shape == (1, 6, 4)
    assert out["aux_outputs"][0]["pred_logits"].shape == (1, 6, 3)
    # groups do not see each other: the first group's predictions equal the inference-time ones
    head.eval()
    inference = head(levels, [(2, 2)])
    assert "query_groups" not in inference and inference["pred_boxes"].shape == (1, 3, 4)
    torch.testing.assert_close(inference["pred_boxes"], out["pred_boxes"][:, :3])
