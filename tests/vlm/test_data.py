"""Grounding records as chats: demonstrations, label masks, length control, loaders."""

from __future__ import annotations

import json

import pytest
import torch

from transferkit.data.grounding import read_grounding_jsonl, write_grounding_jsonl
from transferkit.errors import DatasetError, UserError
from transferkit.vlm.chat import IGNORE_INDEX, resized_size
from transferkit.vlm.data import VLMGroundingDataModule
from transferkit.vlm.model import load_processor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def processor(tiny_vlm_dir):
    return load_processor(str(tiny_vlm_dir))


def make_dm(shapes, processor, **kw):
    dm = VLMGroundingDataModule(source="grounding", path=str(shapes), **kw)
    dm.setup("fit")
    dm.attach_processor(processor)
    return dm


def target_text(processor, item):
    c = item["chat"]
    return processor.tokenizer.decode(c.labels[c.labels != IGNORE_INDEX].tolist())


def test_training_chats_with_demonstrations(grounding_shapes, processor):
    dm = make_dm(grounding_shapes, processor, demo_ratio=1.0, max_demos=2, batch_size=2)
    ds = dm.dataset("train")
    torch.manual_seed(0)
    counts = []
    for i in range(len(ds)):
        item = ds[i]
        rec = ds.base.records[i]
        m = item["meta"]
        counts.append(m["num_demos"])
        assert 1 <= m["num_demos"] <= 2
        assert item["chat"].image_grid_thw.shape[0] == m["num_demos"] + 1
        # only the target answer is learned, and it is this record's objects in the resized frame
        answer = json.loads(target_text(processor, item).removesuffix("<|im_end|>"))
        assert sorted(o["desc"] for o in answer) == sorted(o.desc for o in rec.objects)
        h, w = m["orig_size"]
        assert m["resized_size"] == resized_size(processor.image_processor, h, w)
        assert torch.equal(m["boxes"], torch.tensor([o.bbox for o in rec.objects], dtype=torch.float32))
        assert (m["labels"] >= 0).all() and (m["desc_idx"] >= 0).all()
    assert set(counts) == {1, 2}
    dm0 = make_dm(grounding_shapes, processor, demo_ratio=0.0)
    assert all(dm0.dataset("train")[i]["meta"]["num_demos"] == 0 for i in range(3))


def test_demo_pool_excludes_the_sample_itself(grounding_shapes, processor, tmp_path):
    recs, _ = read_grounding_jsonl(grounding_shapes / "train.jsonl")
    for r in recs:
        r.images = [str((grounding_shapes / r.images[0]).resolve())]
    write_grounding_jsonl(tmp_path / "train.jsonl", recs[:2])
    write_grounding_jsonl(tmp_path / "val.jsonl", recs[2:3])
    dm = VLMGroundingDataModule(source="grounding", path=str(tmp_path), demo_ratio=1.0, max_demos=5)
    dm.setup("fit")
    dm.attach_processor(processor)
    ds = dm.dataset("train")
    for i in range(2):
        for _ in range(3):
            assert ds.draw_demos(i) == [1 - i]


def test_eval_demos_are_fixed_and_deterministic(grounding_shapes, processor, tmp_path):
    dm = make_dm(grounding_shapes, processor, eval_demos=1)
    val = dm.dataset("val")
    a, b = val[0], val[0]
    assert a["meta"]["num_demos"] == 1 and torch.equal(a["chat"].input_ids, b["chat"].input_ids)
    # a separate demonstration file
    recs, _ = read_grounding_jsonl(grounding_shapes / "test.jsonl")
    demo = tmp_path / "demos" / "pool.jsonl"
    for r in recs:
        r.images = [str((grounding_shapes / r.images[0]).resolve())]
    write_grounding_jsonl(demo, recs[:1])
    dm2 = make_dm(grounding_shapes, processor, eval_demos=2, demo_file=str(demo))
    item = dm2.dataset("val")[0]
    assert item["meta"]["num_demos"] == 1  # the pool holds one record
    assert recs[0].objects[0].desc in processor.tokenizer.decode(item["chat"].input_ids.tolist())


def test_max_length_drops_demonstrations_then_cuts_the_answer(grounding_shapes, processor):
    dm = make_dm(grounding_shapes, processor, demo_ratio=1.0, max_demos=2)
    full = dm.dataset("train")
    torch.manual_seed(0)
    item = full[0]
    alone = make_dm(grounding_shapes, processor, demo_ratio=0.0).dataset("train")[0]
    assert len(item["chat"]) > len(alone["chat"])
    dm_short = make_dm(
        grounding_shapes, processor, demo_ratio=1.0, max_demos=2, max_length=len(alone["chat"])
    )
    torch.manual_seed(0)
    short = dm_short.dataset("train")[0]
    assert short["meta"]["num_demos"] == 0 and torch.equal(short["chat"].input_ids, alone["chat"].input_ids)
    cut = len(alone["chat"]) - 5
    cut_item = make_dm(grounding_shapes, processor, demo_ratio=0.0, max_length=cut).dataset("train")[0]
    assert len(cut_item["chat"]) == cut and (cut_item["chat"].labels != IGNORE_INDEX).sum() > 0
    with pytest.raises(DatasetError, match="max_length"):
        make_dm(grounding_shapes, processor, demo_ratio=0.0, max_length=16).dataset("train")[0]


def test_pixel_bounds_override(grounding_shapes, processor):
    import copy

    default = make_dm(grounding_shapes, processor, demo_ratio=0.0).dataset("train")[0]["meta"]["resized_size"]
    assert default[0] * default[1] < 112 * 112  # 32-48 px images stay small by default
    proc = copy.deepcopy(processor)
    dm = make_dm(grounding_shapes, proc, demo_ratio=0.0, min_pixels=112 * 112, max_pixels=160 * 160)
    item = dm.dataset("train")[0]
    h, w = item["meta"]["resized_size"]
    assert h * w >= 112 * 112 and h % 28 == 0 and w % 28 == 0
    assert (h, w) == resized_size(proc.image_processor, *item["meta"]["orig_size"])
    assert item["chat"].image_grid_thw[0].tolist() == [1, h // 14, w // 14]


def test_loaders_and_errors(grounding_shapes, processor):
    dm = VLMGroundingDataModule(source="grounding", path=str(grounding_shapes), batch_size=3)
    dm.setup("fit")
    with pytest.raises(UserError, match="no processor"):
        dm.train_dataloader()
    dm.attach_processor(processor)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 3 and not batch["packed"]
    packed = make_dm(grounding_shapes, processor, batch_size=3, packing=True)
    b = next(iter(packed.train_dataloader()))
    assert b["packed"] and b["input_ids"].shape[0] == 1 and len(b["meta"]) == 3
    assert not next(iter(packed.val_dataloader()))["packed"]
    pred = next(iter(dm.predict_dataloader()))
    assert (pred["labels"] == IGNORE_INDEX).all()
    assert dm.describe()["splits"]["train"]["images"] == 6
    with pytest.raises(UserError, match="demo_ratio"):
        VLMGroundingDataModule(path=str(grounding_shapes), demo_ratio=1.5)
    with pytest.raises(UserError, match="pack_length"):
        VLMGroundingDataModule(path=str(grounding_shapes), packing=True, pack_length=64, max_length=128)
