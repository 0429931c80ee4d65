"""Padded and packed batches: layout, 3-D position ids per packed sample, left-padded generation prompts."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from transferkit.vlm.chat import IGNORE_INDEX, Turn, encode_chat
from transferkit.vlm.collate import left_pad_prompts, pack_collate, packed_position_ids, pad_collate
from transferkit.vlm.model import load_vlm


@pytest.fixture(scope="module")
def items(tiny_processor):
    def chat(sizes, answer):
        turns = [Turn([Image.new("RGB", wh, (i * 40, 90, 200))], answer) for i, wh in enumerate(sizes)]
        return {"chat": encode_chat(tiny_processor, turns), "meta": {"n": len(sizes)}}

    return [
        chat([(40, 30)], '[{"bbox_2d": [1, 2, 3, 4], "desc": "a"}]'),
        chat([(64, 64), (50, 90)], "[]"),  # one demonstration + the target
        chat([(90, 50)], '[{"bbox_2d": [5, 6, 70, 40], "desc": "a long description of b"}]'),
    ]


def test_pad_collate(items, tiny_processor):
    pad = tiny_processor.tokenizer.pad_token_id
    b = pad_collate(items, pad)
    lengths = [len(it["chat"]) for it in items]
    assert b["input_ids"].shape == (3, max(lengths)) and not b["packed"]
    assert b["attention_mask"].sum(1).tolist() == lengths
    assert b["image_grid_thw"].shape == (4, 3)
    assert b["pixel_values"].shape[0] == int(b["image_grid_thw"].prod(-1).sum())
    for i, it in enumerate(items):
        c = it["chat"]
        assert torch.equal(b["labels"][i, : len(c)], c.labels)
        assert (b["labels"][i, len(c) :] == IGNORE_INDEX).all() and (b["input_ids"][i, len(c) :] == pad).all()
        row, s, e = b["target_spans"][i]
        assert (row, s, e) == (i, *c.target_span)
    assert b["meta"] == [{"n": 1}, {"n": 2}, {"n": 1}]


def test_pack_collate_rows_and_capacity(items, tiny_processor):
    pad = tiny_processor.tokenizer.pad_token_id
    lengths = [len(it["chat"]) for it in items]
    one = pack_collate(items, pad)
    assert one["input_ids"].shape == (1, sum(lengths)) and one["packed"] and "attention_mask" not in one
    starts = [0, lengths[0], lengths[0] + lengths[1]]
    assert [s for _, s, _, _ in one["segments"]] == starts
    for i, it in enumerate(items):
        s = starts[i]
        assert torch.equal(one["input_ids"][0, s : s + lengths[i]], it["chat"].input_ids)
        assert (
            one["labels"][0, s] == IGNORE_INDEX
        )  # a sample never learns its first token: no cross-sample target
    cap = max(lengths[0] + lengths[1], lengths[2])
    two = pack_collate(items, pad, max_tokens=cap)
    assert two["input_ids"].shape[0] == 2
    assert [r for r, *_ in two["segments"]] == [0, 0, 1]
    assert two["row_lengths"] == [lengths[0] + lengths[1], lengths[2]]
    with pytest.raises(ValueError, match="pack_length"):
        pack_collate(items, pad, max_tokens=min(lengths) - 1)


def test_packed_position_ids_are_each_samples_own(items, tiny_vlm_dir, tiny_processor):
    model = load_vlm(str(tiny_vlm_dir))
    rope = model.model.get_rope_index
    pad = tiny_processor.tokenizer.pad_token_id
    lengths = [len(it["chat"]) for it in items]
    b = pack_collate(items, pad, max_tokens=max(lengths[0] + lengths[1], lengths[2]))
    pos = packed_position_ids(b, rope)
    assert pos.shape == (4, 2, b["input_ids"].shape[1])
    for (row, s, e, _), it in zip(b["segments"], items):
        c = it["chat"]
        alone, _ = rope(
            c.input_ids[None], mm_token_type_ids=c.mm_token_type_ids[None], image_grid_thw=c.image_grid_thw
        )
        assert torch.equal(pos[1:, row, s:e], alone[:, 0])
        assert torch.equal(pos[0, row, s:e], torch.arange(e - s))
    # the shorter row's padding is a segment of its own
    r1 = b["row_lengths"][1]
    assert torch.equal(pos[0, 1, r1:], torch.arange(b["input_ids"].shape[1] - r1))
    # what the attention mask is built from: one segment per sample (+ the padding)
    from transformers.masking_utils import find_packed_sequence_indices

    seg = find_packed_sequence_indices(pos[0])
    assert seg[0].unique().numel() == 2 and seg[1].unique().numel() == 2


@pytest.mark.parametrize("packed", [False, True])
def test_left_padded_prompts(items, tiny_processor, packed):
    pad = tiny_processor.tokenizer.pad_token_id
    b = pack_collate(items, pad) if packed else pad_collate(items, pad)
    p = left_pad_prompts(b, pad)
    plen = [it["chat"].prompt_length for it in items]
    assert p["input_ids"].shape == (3, max(plen))
    for i, it in enumerate(items):
        c = it["chat"]
        assert torch.equal(p["input_ids"][i, -plen[i] :], c.input_ids[: plen[i]])
        assert (
            p["attention_mask"][i].sum() == plen[i]
            and (p["input_ids"][i, : max(plen) - plen[i]] == pad).all()
        )
        assert torch.equal(p["mm_token_type_ids"][i, -plen[i] :], c.mm_token_type_ids[: plen[i]])
