"""Batching tokenized chats: padded, packed, and left-padded generation prompts.

Every collator takes items ``{"chat": EncodedChat, "meta": dict}`` and returns a dict with

- ``input_ids``, ``labels``, ``mm_token_type_ids``: ``(R, L)`` int64 (R rows of L tokens);
- ``pixel_values`` ``(sum P_i, D)`` and ``image_grid_thw`` ``(sum n_i, 3)``: every image of every sample, in
  sample order (the order of their ``<|image_pad|>`` runs in the rows, row-major);
- ``segments``: per sample ``(row, start, end, n_images)``, its tokens ``[start, end)`` in ``row``;
- ``target_spans``: per sample ``(row, start, end)`` of its target image's tokens; ``target_grids``: their
  ``(h, w)`` LLM-token grids;
- ``prompt_lengths``: per sample, its tokens before the target answer;
- ``meta``: the items' metadata; ``packed``: whether rows hold several samples.

:func:`pad_collate` gives one sample per row, padded (``attention_mask`` ``(R, L)``; right padding for
training, left for generation). :func:`pack_collate` concatenates samples into rows of at most
``max_tokens`` tokens with no ``attention_mask``: the model separates them through ``position_ids``
``(4, R, L)`` (:func:`packed_position_ids`), whose first plane is the text position restarting at 0 in every
sample — transformers turns that into a block-diagonal causal mask for eager/SDPA attention and into varlen
``cu_seqlens`` for FlashAttention-2 — and whose other three planes are each sample's own 3-D mRoPE positions
from the model's ``get_rope_index``. A sample's first label is always ``-100`` (its system turn), so the
shifted next-token loss never reaches across a sample boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from transferkit.vlm.chat import IGNORE_INDEX, EncodedChat


def _images(chats: Sequence[EncodedChat]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([c.pixel_values for c in chats]), torch.cat([c.image_grid_thw for c in chats])


def _common(items: Sequence[dict[str, Any]], merge_size: int) -> tuple[list[EncodedChat], dict[str, Any]]:
    chats = [it["chat"] for it in items]
    pixel_values, grid = _images(chats)
    return chats, {
        "pixel_values": pixel_values,
        "image_grid_thw": grid,
        "meta": [it.get("meta", {}) for it in items],
        "prompt_lengths": [c.prompt_length for c in chats],
        "target_grids": [
            (
                int(c.image_grid_thw[c.target_image, 1]) // merge_size,
                int(c.image_grid_thw[c.target_image, 2]) // merge_size,
            )
            for c in chats
        ],
    }


def pad_collate(
    items: Sequence[dict[str, Any]],
    pad_token_id: int,
    *,
    padding_side: str = "right",
    prompt_only: bool = False,
    merge_size: int = 2,
) -> dict[str, Any]:
    """One sample per row, padded to the longest (see module docstring).

    ``prompt_only``: keep each sample's generation prompt (``input_ids[:prompt_length]``), labels all -100;
    with ``padding_side='left'`` it is what ``generate`` takes.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    chats, out = _common(items, merge_size)
    lengths = [c.prompt_length if prompt_only else len(c) for c in chats]
    n, L = len(chats), max(lengths)
    input_ids = torch.full((n, L), pad_token_id, dtype=torch.long)
    labels = torch.full((n, L), IGNORE_INDEX, dtype=torch.long)
    mm = torch.zeros((n, L), dtype=torch.long)
    attention = torch.zeros((n, L), dtype=torch.long)
    segments, spans = [], []
    for i, (c, length) in enumerate(zip(chats, lengths)):
        s = L - length if padding_side == "left" else 0
        input_ids[i, s : s + length] = c.input_ids[:length]
        mm[i, s : s + length] = c.mm_token_type_ids[:length]
        attention[i, s : s + length] = 1
        if not prompt_only:
            labels[i, s : s + length] = c.labels[:length]
        segments.append((i, s, s + length, int(c.image_grid_thw.shape[0])))
        spans.append((i, s + c.target_span[0], s + c.target_span[1]))
    out.update(
        input_ids=input_ids,
        labels=labels,
        mm_token_type_ids=mm,
        attention_mask=attention,
        segments=segments,
        target_spans=spans,
        packed=False,
    )
    return out


def pack_collate(
    items: Sequence[dict[str, Any]], pad_token_id: int, *, max_tokens: int | None = None, merge_size: int = 2
) -> dict[str, Any]:
    """Samples concatenated into rows of at most ``max_tokens`` tokens (default: all in one row), filled in
    order; rows shorter than the longest end in padding (labels -100, its own position segment)."""
    chats, out = _common(items, merge_size)
    cap = max_tokens or sum(len(c) for c in chats)
    rows: list[list[int]] = [[]]
    used = [0]
    for i, c in enumerate(chats):
        if len(c) > cap:
            raise ValueError(
                f"a sample of {len(c)} tokens does not fit a packed row of {cap}; raise pack_length"
            )
        if used[-1] + len(c) > cap:
            rows.append([])
            used.append(0)
        rows[-1].append(i)
        used[-1] += len(c)
    L = max(used)
    R = len(rows)
    input_ids = torch.full((R, L), pad_token_id, dtype=torch.long)
    labels = torch.full((R, L), IGNORE_INDEX, dtype=torch.long)
    mm = torch.zeros((R, L), dtype=torch.long)
    segments: list[tuple[int, int, int, int]] = [None] * len(chats)  # type: ignore[list-item]
    spans: list[tuple[int, int, int]] = [None] * len(chats)  # type: ignore[list-item]
    for r, members in enumerate(rows):
        s = 0
        for i in members:
            c = chats[i]
            e = s + len(c)
            input_ids[r, s:e] = c.input_ids
            labels[r, s:e] = c.labels
            mm[r, s:e] = c.mm_token_type_ids
            segments[i] = (r, s, e, int(c.image_grid_thw.shape[0]))
            spans[i] = (r, s + c.target_span[0], s + c.target_span[1])
            s = e
    # pixel values stay in sample order; rows are filled in sample order, so image runs match row-major order
    out.update(
        input_ids=input_ids,
        labels=labels,
        mm_token_type_ids=mm,
        segments=segments,
        target_spans=spans,
        packed=True,
        row_lengths=used,
    )
    return out


RopeIndexFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def packed_position_ids(batch: dict[str, Any], get_rope_index: RopeIndexFn) -> torch.Tensor:
    """``(4, R, L)`` position ids of a packed batch: plane 0 the text positions (0.. per sample, and per
    trailing padding), planes 1-3 each sample's 3-D mRoPE positions from ``get_rope_index`` (the model's
    ``model.get_rope_index``), computed on the sample alone exactly as for an unpacked sequence."""
    ids, mm, grids = batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"]
    R, L = ids.shape
    pos = torch.zeros((4, R, L), dtype=torch.long, device=ids.device)
    filled = [0] * R
    g = 0
    for row, s, e, n_img in batch["segments"]:
        seg_grids = grids[g : g + n_img] if n_img else None
        g += n_img
        p3, _ = get_rope_index(
            ids[row : row + 1, s:e], mm_token_type_ids=mm[row : row + 1, s:e], image_grid_thw=seg_grids
        )
        pos[1:, row, s:e] = p3[:, 0].to(pos)
        pos[0, row, s:e] = torch.arange(e - s, device=ids.device)
        filled[row] = max(filled[row], e)
    for row, f in enumerate(filled):
        if f < L:  # trailing padding: a segment of its own
            pos[:, row, f:] = torch.arange(L - f, device=ids.device)
    return pos


def left_pad_prompts(batch: dict[str, Any], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Each sample's generation prompt (its tokens before the target answer) from a padded or packed batch,
    left-padded for ``generate``: ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` ``(B, P)``. Image
    tokens all sit in the prompts, so the batch's ``pixel_values``/``image_grid_thw`` go with them as they are."""
    ids, mm = batch["input_ids"], batch["mm_token_type_ids"]
    lengths = batch["prompt_lengths"]
    n, P = len(lengths), max(lengths)
    out_ids = torch.full((n, P), pad_token_id, dtype=ids.dtype, device=ids.device)
    out_mm = torch.zeros((n, P), dtype=mm.dtype, device=ids.device)
    attention = torch.zeros((n, P), dtype=torch.long, device=ids.device)
    for i, ((row, s, _e, _n), length) in enumerate(zip(batch["segments"], lengths)):
        out_ids[i, P - length :] = ids[row, s : s + length]
        out_mm[i, P - length :] = mm[row, s : s + length]
        attention[i, P - length :] = 1
    return {"input_ids": out_ids, "attention_mask": attention, "mm_token_type_ids": out_mm}
