"""Grounding records as Qwen2.5-VL chats, tokenized with the span of the target answer tracked.

A sample becomes the conversation (ChatML, rendered by the processor's own chat template)::

    <|im_start|>system  You are a helpful assistant.<|im_end|>
    <|im_start|>user    <|vision_start|><|image_pad|>...<|vision_end|>{prompt}<|im_end|>     } 0..k demonstration
    <|im_start|>assistant [{"bbox_2d": [x1, y1, x2, y2], "desc": "..."}, ...]<|im_end|>     } turns
    <|im_start|>user    <|vision_start|><|image_pad|>...<|vision_end|>{prompt}<|im_end|>     target question
    <|im_start|>assistant [{"bbox_2d": ..., "desc": ...}, ...]<|im_end|>                    target answer

Boxes in answers are **absolute integer pixels of the image the model sees**: Qwen2.5-VL resizes every image
with ``smart_resize`` (sides multiples of ``patch_size * merge_size``, area within ``[min_pixels, max_pixels]``)
and grounds in that resized frame, so :func:`to_resized` / :func:`from_resized` convert between the original
image's pixels (the files' convention) and the resized ones, with :func:`resized_size` giving the frame.
A record with several images is grounded in its first image; the others are context.

:func:`encode_chat` returns an :class:`EncodedChat` whose ``labels`` are ``-100`` everywhere except the
target answer's tokens and its closing ``<|im_end|>`` (never the prompt, the image pads, or demonstration
answers), so the loss covers only what the model should generate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image

from transferkit.data.grounding import GroundingObject
from transferkit.errors import DatasetError

IGNORE_INDEX = -100
DEFAULT_PROMPT = (
    "Locate every object in the image and describe it. Answer with a JSON list of "
    '{"bbox_2d": [x1, y1, x2, y2], "desc": "..."} objects in pixels of the image.'
)
RESPONSE_START = "<|im_start|>assistant\n"
RESPONSE_END = "<|im_end|>"


# ---------------------------------------------------------------------------------------------- boxes
def _pixel_bounds(image_processor: Any) -> tuple[int, int]:
    size = image_processor.size
    get = size.get if isinstance(size, dict) else lambda k, d=None: getattr(size, k, d)
    lo = get("shortest_edge") or get("min_pixels") or getattr(image_processor, "min_pixels", None)
    hi = get("longest_edge") or get("max_pixels") or getattr(image_processor, "max_pixels", None)
    if lo is None or hi is None:
        raise ValueError(f"image processor size {size!r} has no min/max pixel bounds")
    return int(lo), int(hi)


def resized_size(image_processor: Any, height: int, width: int) -> tuple[int, int]:
    """``(H', W')`` of an ``height x width`` image after the Qwen2-VL image processor's ``smart_resize``."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    lo, hi = _pixel_bounds(image_processor)
    factor = int(image_processor.patch_size) * int(image_processor.merge_size)
    return smart_resize(int(height), int(width), factor=factor, min_pixels=lo, max_pixels=hi)


def to_resized(boxes: torch.Tensor, orig_hw: Sequence[int], resized_hw: Sequence[int]) -> torch.Tensor:
    """Absolute xyxy ``(N, 4)`` in the original image -> absolute xyxy in the resized image (float)."""
    sy, sx = resized_hw[0] / orig_hw[0], resized_hw[1] / orig_hw[1]
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


def from_resized(boxes: torch.Tensor, resized_hw: Sequence[int], orig_hw: Sequence[int]) -> torch.Tensor:
    """Absolute xyxy ``(N, 4)`` in the resized image (what the model answers) -> the original image's
    pixels, clamped to the image."""
    sy, sx = orig_hw[0] / resized_hw[0], orig_hw[1] / resized_hw[1]
    out = boxes * boxes.new_tensor([sx, sy, sx, sy])
    w, h = float(orig_hw[1]), float(orig_hw[0])
    return torch.stack(
        [out[:, 0].clamp(0, w), out[:, 1].clamp(0, h), out[:, 2].clamp(0, w), out[:, 3].clamp(0, h)], 1
    )


def format_answer(
    objects: Sequence[GroundingObject],
    orig_hw: Sequence[int],
    resized_hw: Sequence[int],
    order: Literal["position", "file"] = "position",
) -> str:
    """The assistant's answer: a JSON list of ``{"bbox_2d": [x1, y1, x2, y2], "desc": ...}`` with integer
    boxes in the resized image; ``order='position'`` sorts objects top-to-bottom, then left-to-right."""
    if not objects:
        return "[]"
    boxes = to_resized(torch.tensor([o.bbox for o in objects], dtype=torch.float64), orig_hw, resized_hw)
    h, w = resized_hw
    items = []
    for o, b in zip(objects, boxes.tolist()):
        x1, y1, x2, y2 = (round(v) for v in b)
        box = [min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)]
        items.append({"bbox_2d": box, "desc": o.desc})
    if order == "position":
        items.sort(key=lambda d: (d["bbox_2d"][1], d["bbox_2d"][0], d["desc"]))
    return json.dumps(items, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------- chats
@dataclass
class Turn:
    """One question/answer exchange: the images of the question and the answer (None: to be generated)."""

    images: list[Image.Image]
    answer: str | None


def build_messages(turns: Sequence[Turn], prompt: str = DEFAULT_PROMPT) -> list[dict[str, Any]]:
    """Chat-template messages for ``turns`` (the last one is the target); images become ``{"type": "image"}``
    placeholders that the processor expands, in order, into ``<|image_pad|>`` runs."""
    messages: list[dict[str, Any]] = []
    for t in turns:
        content = [{"type": "image"} for _ in t.images] + [{"type": "text", "text": prompt}]
        messages.append({"role": "user", "content": content})
        if t.answer is not None:
            messages.append({"role": "assistant", "content": t.answer})
    return messages


@dataclass
class EncodedChat:
    """One tokenized conversation (all tensors on CPU).

    Attributes:
        input_ids: ``(L,)`` int64.
        labels: ``(L,)`` int64, ``-100`` except the target answer and its ``<|im_end|>``.
        mm_token_type_ids: ``(L,)`` int64 (0 text, 1 image token), what ``get_rope_index`` groups by.
        pixel_values: ``(P, C * T * p * p)`` patches of every image, in order.
        image_grid_thw: ``(n_images, 3)`` patch grid (t, h, w) of every image.
        prompt_length: tokens before the target answer (the generation prompt is ``input_ids[:prompt_length]``).
        target_image: index of the image the target's boxes refer to (its first image).
        target_span: ``(start, end)`` token positions of that image's ``<|image_pad|>`` run.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    mm_token_type_ids: torch.Tensor
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    prompt_length: int
    target_image: int
    target_span: tuple[int, int]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def _find_all(seq: list[int], pattern: list[int]) -> list[int]:
    n = len(pattern)
    return [i for i in range(len(seq) - n + 1) if seq[i : i + n] == pattern]


def _image_runs(ids: torch.Tensor, image_token_id: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each maximal run of image tokens."""
    is_img = (ids == image_token_id).tolist()
    runs, start = [], None
    for i, v in enumerate(is_img + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i))
            start = None
    return runs


def encode_chat(processor: Any, turns: Sequence[Turn], prompt: str = DEFAULT_PROMPT) -> EncodedChat:
    """Render ``turns`` with the processor's chat template, tokenize (images expanded to their patch-token
    runs) and mask labels to the last turn's answer. With ``turns[-1].answer is None`` the result is the
    generation prompt (ending in ``<|im_start|>assistant\\n``) and every label is ``-100``."""
    tokenizer = processor.tokenizer
    target = turns[-1]
    generate = target.answer is None
    if any(t.answer is None for t in turns[:-1]):
        raise ValueError("only the last turn may lack an answer")
    text = processor.apply_chat_template(
        build_messages(turns, prompt), tokenize=False, add_generation_prompt=generate
    )
    images = [im for t in turns for im in t.images]
    enc = processor(text=[text], images=images or None, return_tensors="pt")
    ids = enc["input_ids"][0]
    ids_list = ids.tolist()
    start_ids = tokenizer(RESPONSE_START, add_special_tokens=False)["input_ids"]
    end_id = tokenizer.convert_tokens_to_ids(RESPONSE_END)
    starts = _find_all(ids_list, start_ids)
    expected = sum(t.answer is not None for t in turns) + int(generate)
    if len(starts) != expected:
        raise DatasetError(
            f"found {len(starts)} assistant turns in the rendered chat, expected {expected}; the prompt or an "
            f"answer must not contain '{RESPONSE_START.strip()}'"
        )
    answer_start = starts[-1] + len(start_ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    if not generate:
        try:
            answer_end = ids_list.index(end_id, answer_start) + 1  # the closing <|im_end|> is learned too
        except ValueError:
            raise DatasetError("the target answer has no closing <|im_end|> in the rendered chat") from None
        labels[answer_start:answer_end] = ids[answer_start:answer_end]
    image_token_id = processor.image_token_id
    runs = _image_runs(ids, image_token_id)
    target_image = sum(len(t.images) for t in turns[:-1])
    if len(runs) != len(images) or target_image >= len(runs):
        raise DatasetError(
            f"{len(images)} image(s) gave {len(runs)} image-token run(s); every turn of a grounding chat needs "
            "an image, and the prompt must not contain image tokens"
        )
    mm = enc.get("mm_token_type_ids")
    mm = mm[0].long() if mm is not None else (ids == image_token_id).long()
    return EncodedChat(
        input_ids=ids,
        labels=labels,
        mm_token_type_ids=mm,
        pixel_values=enc["pixel_values"],
        image_grid_thw=enc["image_grid_thw"].long(),
        prompt_length=answer_start,
        target_image=target_image,
        target_span=runs[target_image],
    )


def target_grid(chat: EncodedChat, merge_size: int) -> tuple[int, int]:
    """``(h, w)`` grid of the target image's LLM tokens (patch grid / merge size)."""
    _, gh, gw = chat.image_grid_thw[chat.target_image].tolist()
    return gh // merge_size, gw // merge_size


def grid_resized_size(image_grid_thw: torch.Tensor, patch_size: int) -> tuple[int, int]:
    """``(H', W')`` in pixels of an image from its ``(t, h, w)`` patch grid."""
    return int(image_grid_thw[1]) * patch_size, int(image_grid_thw[2]) * patch_size
