"""Vision-language grounding: chats with target spans (:mod:`.chat`), padded/packed collators
(:mod:`.collate`), the answer parser (:mod:`.parse`) and the offline tiny Qwen2.5-VL (:mod:`.tiny`).
The model loader is :mod:`transferkit.vlm.model`, the task :mod:`transferkit.tasks.grounding_vlm`, the
DataModule :mod:`transferkit.vlm.data`."""

from transferkit.vlm.chat import (
    DEFAULT_PROMPT,
    EncodedChat,
    Turn,
    encode_chat,
    format_answer,
    from_resized,
    resized_size,
    to_resized,
)
from transferkit.vlm.collate import left_pad_prompts, pack_collate, packed_position_ids, pad_collate
from transferkit.vlm.parse import ParsedResponse, parse_response
from transferkit.vlm.tiny import TINY_NAME, ensure_tiny_qwen2_5_vl, make_tiny_qwen2_5_vl

__all__ = [
    "DEFAULT_PROMPT",
    "EncodedChat",
    "ParsedResponse",
    "TINY_NAME",
    "Turn",
    "encode_chat",
    "ensure_tiny_qwen2_5_vl",
    "format_answer",
    "from_resized",
    "left_pad_prompts",
    "make_tiny_qwen2_5_vl",
    "pack_collate",
    "packed_position_ids",
    "pad_collate",
    "parse_response",
    "resized_size",
    "to_resized",
]
