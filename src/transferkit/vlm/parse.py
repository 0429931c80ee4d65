"""Robust parsing of a vision-language model's grounding answer into objects.

Models answer with a JSON list of ``{"bbox_2d": [x1, y1, x2, y2], "desc": "..."}`` objects, but real outputs
come wrapped in Markdown code fences, cut off by ``max_new_tokens``, or with a broken object in the middle.
:func:`parse_response`:

1. takes the content of the first ```` ``` ```` fence when there is one (a fence left open counts too);
2. finds the JSON list (or a single object, taken as a one-object list) and decodes it element by element
   with ``json.JSONDecoder.raw_decode`` — no library repairs partial JSON into exactly the objects that were
   complete, so this is written here: a list cut off mid-object keeps every complete object before the cut
   (``repaired``), a syntactically broken element is skipped up to the next ``{`` (``dropped``);
3. validates each object with :func:`transferkit.data.grounding.parse_object` (4 finite numbers with
   ``x2 >= x1``, ``y2 >= y1``, a string ``desc``; Qwen's zero-shot ``label`` key is accepted for ``desc``),
   dropping malformed ones with a warning.

``failed`` is True when no list or object could be found at all (the answer is unusable); an empty list
``[]`` is a valid answer with no objects.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

from transferkit.data.grounding import GroundingObject, parse_object

log = logging.getLogger(__name__)

_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)", re.S)
_DECODER = json.JSONDecoder()


@dataclass
class ParsedResponse:
    """What :func:`parse_response` recovered.

    Attributes:
        objects: the valid objects, boxes as written by the model (the resized image's pixels).
        failed: no JSON list or object was found at all.
        repaired: the list was cut off (no closing ``]``) and its complete objects were kept.
        dropped: elements dropped as malformed (broken JSON or invalid object).
        errors: why each dropped element or the failure happened.
    """

    objects: list[GroundingObject] = field(default_factory=list)
    failed: bool = False
    repaired: bool = False
    dropped: int = 0
    errors: list[str] = field(default_factory=list)


def strip_fences(text: str) -> str:
    """The content of the first Markdown code fence (``` or ```json, closed or not), else ``text``."""
    m = _FENCE.search(text)
    return m.group(1) if m else text


def _to_object(value: object, where: str) -> GroundingObject:
    if isinstance(value, dict) and "desc" not in value and isinstance(value.get("label"), str):
        value = {**value, "desc": value["label"]}
        value.pop("label")
    return parse_object(value, where)


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def parse_response(text: str, *, warn: bool = True) -> ParsedResponse:
    """Parse a model answer (module docstring). Never raises on bad input."""
    out = ParsedResponse()
    body = strip_fences(text)
    start_list, start_obj = body.find("["), body.find("{")
    if start_list < 0 and start_obj < 0:
        out.failed = True
        out.errors.append("no JSON list or object in the response")
        return out
    bare = start_list < 0 or 0 <= start_obj < start_list
    if bare:  # objects without the enclosing list (e.g. one object): read them as a list
        body = "[" + body[start_obj:]
        start_list = 0
    i = start_list + 1
    closed = False
    index = 0
    while True:
        i = _skip_ws(body, i)
        if i >= len(body):
            break
        ch = body[i]
        if ch == "]":
            closed = True
            break
        if ch == ",":
            i += 1
            continue
        try:
            value, end = _DECODER.raw_decode(body, i)
        except json.JSONDecodeError as e:
            nxt = body.find("{", i + 1)
            if nxt < 0:
                # nothing decodable follows: the list was cut off inside this element
                out.repaired = True
                out.errors.append(f"element {index}: incomplete ({e.msg})")
                break
            out.dropped += 1
            out.errors.append(f"element {index}: invalid JSON ({e.msg})")
            index += 1
            i = nxt
            continue
        try:
            out.objects.append(_to_object(value, f"element {index}"))
        except ValueError as e:
            out.dropped += 1
            out.errors.append(str(e))
        index += 1
        i = end
    if not closed and not bare:
        out.repaired = True
    if warn and (out.dropped or out.repaired):
        log.warning(
            "model answer: %s%d object(s) kept, %d dropped%s",
            "cut off, " if out.repaired else "",
            len(out.objects),
            out.dropped,
            f" ({out.errors[0]})" if out.errors else "",
        )
    return out
