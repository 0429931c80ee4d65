"""Grounding JSONL: the record format of vision-language detection data, and the box conventions.

One record per line::

    {"images": ["img/0001.png"], "width": 96, "height": 80,
     "objects": [{"bbox_2d": [12, 30, 40, 61], "desc": "red circle/large/occluded"}]}

or the distillation form, whose ``student`` part is the target (the rest is kept verbatim)::

    {"teachers": [{...}, ...], "student": {"images": [...], "objects": [...]}}

Box conventions (shared by every reader, writer, model and exporter in transferkit):

- **files** (``bbox_2d``, COCO ``bbox``, predictions): absolute pixel coordinates of the *original* image,
  x to the right, y down, origin at the top-left corner of the top-left pixel. ``bbox_2d`` is
  ``[x1, y1, x2, y2]`` (corners, ``x2 >= x1``, ``y2 >= y1``); COCO's ``bbox`` is ``[x, y, w, h]``.
- **inside the model**: normalised ``(cx, cy, w, h)`` in ``[0, 1]`` relative to the image the model sees.
  Because the normalisation is relative, a box keeps its normalised value through any resize of the whole
  image; :func:`boxes_to_model` / :func:`boxes_from_model` convert with an image size ``(H, W)``.

Keys other than ``images``, ``width``, ``height`` and ``objects`` (record) or ``bbox_2d`` and ``desc``
(object) are kept verbatim in ``extra`` and written back, so reading and writing a file loses nothing.
Optional keys transferkit itself uses: ``category`` (an object's class; default: the part of ``desc`` before
the first ``/``), ``score`` (predictions), ``width``/``height`` (original image size in pixels).

Malformed lines never cost the rest of the file: :func:`read_grounding_jsonl` collects one
:class:`RecordError` per bad line (with its 1-based line number) and returns every good record, or raises
at the first bad line with ``strict=True``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import box_convert

from transferkit.errors import DatasetError
from transferkit.utils.io import atomic_write_text

log = logging.getLogger(__name__)

RECORD_KEYS = ("images", "width", "height", "objects")
OBJECT_KEYS = ("bbox_2d", "desc")


@dataclass
class GroundingObject:
    """One object: ``bbox`` absolute pixel ``(x1, y1, x2, y2)`` in the original image, ``desc`` its text."""

    bbox: tuple[float, float, float, float]
    desc: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def category(self) -> str:
        """The object's class: its ``category`` key, else ``desc`` up to the first ``/``."""
        cat = self.extra.get("category")
        return str(cat) if cat is not None else desc_head(self.desc)

    def to_dict(self) -> dict[str, Any]:
        return {"bbox_2d": list(self.bbox), "desc": self.desc, **self.extra}


@dataclass
class GroundingRecord:
    """One line: image path(s), optional original size, objects; ``envelope`` holds the outer keys of the
    ``{"teachers": [...], "student": {...}}`` form (None for the plain form); ``line`` is the 1-based line
    number in the file it came from."""

    images: list[str]
    objects: list[GroundingObject] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    envelope: dict[str, Any] | None = None
    line: int | None = None

    @property
    def image(self) -> str:
        """The first (for detection: the only) image path."""
        return self.images[0]

    @property
    def size(self) -> tuple[int, int] | None:
        """``(H, W)`` when both are known."""
        if self.width is None or self.height is None:
            return None
        return int(self.height), int(self.width)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this record, in the form it was read in."""
        inner: dict[str, Any] = {"images": list(self.images)}
        if self.width is not None:
            inner["width"] = self.width
        if self.height is not None:
            inner["height"] = self.height
        inner["objects"] = [o.to_dict() for o in self.objects]
        inner.update(self.extra)
        if self.envelope is None:
            return inner
        return {**self.envelope, "student": inner}


@dataclass
class RecordError:
    """A record that could not be read: where (``line`` in JSONL, or an index path in COCO) and why."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


def desc_head(desc: str) -> str:
    """``'red circle/large/occluded'`` -> ``'red circle'`` (the class part of a compositional description)."""
    return desc.split("/", 1)[0].strip()


# ---------------------------------------------------------------------------------------------- parsing
def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def parse_object(obj: Any, where: str = "object") -> GroundingObject:
    """One ``{"bbox_2d": [x1, y1, x2, y2], "desc": "..."}`` mapping -> :class:`GroundingObject`.

    Raises ``ValueError`` naming the problem (the readers turn it into a :class:`RecordError`).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(obj).__name__}")
    if "bbox_2d" not in obj:
        raise ValueError(f"{where} has no 'bbox_2d'")
    box = obj["bbox_2d"]
    if not isinstance(box, list | tuple) or len(box) != 4 or not all(_number(v) for v in box):
        raise ValueError(f"{where} 'bbox_2d' must be 4 finite numbers [x1, y1, x2, y2], got {box!r}")
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{where} 'bbox_2d' {list(box)} has x2 < x1 or y2 < y1 (expected [x1, y1, x2, y2])")
    desc = obj.get("desc")
    if not isinstance(desc, str):
        raise ValueError(f"{where} needs a string 'desc', got {desc!r}")
    extra = {k: v for k, v in obj.items() if k not in OBJECT_KEYS}
    return GroundingObject((x1, y1, x2, y2), desc, extra)


def parse_record(data: Any, line: int | None = None) -> GroundingRecord:
    """A decoded JSON line (plain or teachers/student form) -> :class:`GroundingRecord`; ``ValueError``
    naming the problem when it is not one."""
    if not isinstance(data, dict):
        raise ValueError(f"a record must be a JSON object, got {type(data).__name__}")
    envelope = None
    if "student" in data:
        envelope = {k: v for k, v in data.items() if k != "student"}
        data = data["student"]
        if not isinstance(data, dict):
            raise ValueError("'student' must be a JSON object with 'images' and 'objects'")
    images = data.get("images")
    if isinstance(images, str):
        raise ValueError("'images' must be a list of paths, e.g. [\"img/1.png\"], not a string")
    if not isinstance(images, list) or not images or not all(isinstance(i, str) and i for i in images):
        raise ValueError(f"'images' must be a non-empty list of image paths, got {images!r}")
    objects = data.get("objects")
    if not isinstance(objects, list):
        raise ValueError(f"'objects' must be a list (possibly empty), got {objects!r}")
    parsed = [parse_object(o, f"objects[{i}]") for i, o in enumerate(objects)]
    size = {}
    for key in ("width", "height"):
        v = data.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"'{key}' must be a positive integer number of pixels, got {v!r}")
        size[key] = v
    extra = {k: v for k, v in data.items() if k not in RECORD_KEYS}
    return GroundingRecord(list(images), parsed, size["width"], size["height"], extra, envelope, line)


def read_grounding_jsonl(
    path: str | os.PathLike, *, strict: bool = False
) -> tuple[list[GroundingRecord], list[RecordError]]:
    """Read a grounding JSONL file: ``(records, errors)``.

    Blank lines are skipped. A malformed line (not UTF-8, bad JSON, missing/ill-typed keys, an inverted box)
    becomes a :class:`RecordError` with its 1-based line number and every other record is returned; with
    ``strict=True`` the first one raises :class:`DatasetError` instead. The caller reports the errors
    (``transferkit.data.detection.read_annotations`` logs them with :func:`report_record_problems`).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"grounding JSONL file '{path}' does not exist")
    records: list[GroundingRecord] = []
    errors: list[RecordError] = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
                if not text.strip():
                    continue
                records.append(parse_record(json.loads(text), lineno))
            except UnicodeDecodeError as e:
                err = RecordError(
                    str(path), lineno, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                )
                if strict:
                    raise DatasetError(f"{err} (strict mode; without it the line would be skipped)") from None
                errors.append(err)
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                err = RecordError(str(path), lineno, str(e))
                if strict:
                    raise DatasetError(f"{err} (strict mode; without it the line would be skipped)") from None
                errors.append(err)
    return records, errors


@dataclass
class RecordCheck:
    """What :func:`check_records` did: the records kept (boxes fixed), the records skipped (errors) and the
    fixes made (warnings: a box clamped into its image, a zero-area box dropped)."""

    records: list[GroundingRecord]
    skipped: list[RecordError]
    fixed: list[RecordError]


def _where(rec: GroundingRecord, index: int) -> str:
    return f"line {rec.line}" if rec.line is not None else f"record {index}"


def check_records(
    records: Sequence[GroundingRecord], root: str | os.PathLike, source: str, *, open_images: bool = False,
    strict: bool = False,
) -> RecordCheck:  # fmt: skip
    """Check records against their images before anything trains or is written.

    Skipped (an error; the first one raises :class:`DatasetError` with ``strict``): an image path that leaves
    ``root`` (``../../etc/passwd``), a missing image file and, with ``open_images``, a file PIL cannot identify
    as an image (a text file named ``.png``). Fixed (a warning): a box outside the image (or with negative
    coordinates) is clamped into it, a box of zero area after that is dropped. With ``open_images`` a missing
    ``width``/``height`` is read from the file (and a given one that differs from it is reported and
    corrected)."""
    from PIL import Image

    root = Path(root)
    root_real = root.resolve()
    kept: list[GroundingRecord] = []
    skipped: list[RecordError] = []
    fixed: list[RecordError] = []

    def skip(rec: GroundingRecord, i: int, message: str) -> None:
        err = RecordError(
            source, rec.line, message if rec.line is not None else f"{_where(rec, i)}: {message}"
        )
        if strict:
            raise DatasetError(f"{err} (strict mode; without it the record would be skipped)")
        skipped.append(err)

    def fix(rec: GroundingRecord, i: int, message: str) -> None:
        fixed.append(
            RecordError(source, rec.line, message if rec.line is not None else f"{_where(rec, i)}: {message}")
        )

    for i, rec in enumerate(records):
        rel = Path(rec.image)
        path = rel if rel.is_absolute() else root / rel
        if not rel.is_absolute() and not path.resolve().is_relative_to(root_real):
            skip(rec, i, f"image path '{rec.image}' leaves the dataset folder {root}; give paths inside it")
            continue
        if not path.is_file():
            skip(rec, i, f"image file '{path}' does not exist")
            continue
        if open_images:
            try:
                with Image.open(path) as im:
                    w, h = im.size
            except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... on a bad file
                skip(rec, i, f"'{path}' is not a readable image ({type(e).__name__})")
                continue
            if rec.size is not None and (rec.width, rec.height) != (w, h):
                fix(
                    rec,
                    i,
                    f"width/height {rec.width}x{rec.height} differ from the image's {w}x{h}: using the image's",
                )
            rec.width, rec.height = w, h
        if rec.size is not None:
            h, w = rec.size
            objects = []
            for j, o in enumerate(rec.objects):
                x1, y1, x2, y2 = o.bbox
                c = (min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h))
                if c[2] <= c[0] or c[3] <= c[1]:
                    fix(
                        rec,
                        i,
                        f"objects[{j}] box {list(o.bbox)} has no area inside the {w}x{h} image: dropped",
                    )
                    continue
                if c != tuple(o.bbox):
                    fix(
                        rec,
                        i,
                        f"objects[{j}] box {list(o.bbox)} is outside the {w}x{h} image: clamped to {list(c)}",
                    )
                    o.bbox = c
                objects.append(o)
            rec.objects = objects
        else:
            for j, o in enumerate(rec.objects):
                if min(o.bbox) < 0:
                    c = tuple(max(v, 0) for v in o.bbox)
                    fix(
                        rec,
                        i,
                        f"objects[{j}] box {list(o.bbox)} has negative coordinates: clamped to {list(c)}",
                    )
                    o.bbox = c
            zero = [j for j, o in enumerate(rec.objects) if o.bbox[2] <= o.bbox[0] or o.bbox[3] <= o.bbox[1]]
            for j in zero:
                fix(rec, i, f"objects[{j}] box {list(rec.objects[j].bbox)} has zero area: dropped")
            rec.objects = [o for j, o in enumerate(rec.objects) if j not in zero]
        kept.append(rec)
    return RecordCheck(kept, skipped, fixed)


def report_record_problems(
    source: str | os.PathLike, check: RecordCheck, errors: Sequence[RecordError] = ()
) -> None:
    """One warning per kind: records skipped (malformed or failing :func:`check_records`) and boxes fixed, each
    with the first few listed."""
    skipped = [*errors, *check.skipped]
    if skipped:
        log.warning("%s: skipped %d record(s): %s", source, len(skipped), "; ".join(str(e) for e in skipped[:5])
                    + (f"; ... ({len(skipped) - 5} more)" if len(skipped) > 5 else ""))  # fmt: skip
    if check.fixed:
        log.warning("%s: fixed %d box(es): %s", source, len(check.fixed), "; ".join(str(e) for e in check.fixed[:5])
                    + (f"; ... ({len(check.fixed) - 5} more)" if len(check.fixed) > 5 else ""))  # fmt: skip


def write_grounding_jsonl(path: str | os.PathLike, records: Iterable[GroundingRecord | dict]) -> Path:
    """Write records (or plain dicts) one JSON object per line, atomically."""
    lines = [
        json.dumps(r.to_dict() if isinstance(r, GroundingRecord) else r, ensure_ascii=False) for r in records
    ]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


# ---------------------------------------------------------------------------------------------- boxes
def boxes_to_model(boxes_xyxy: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Absolute pixel ``(N, 4)`` xyxy in an image of ``size = (H, W)`` -> normalised ``(N, 4)`` cxcywh."""
    h, w = float(size[0]), float(size[1])
    scale = boxes_xyxy.new_tensor([w, h, w, h])
    return box_convert(boxes_xyxy / scale, "xyxy", "cxcywh")


def boxes_from_model(boxes_cxcywh: torch.Tensor, size: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Normalised ``(..., 4)`` cxcywh -> absolute pixel xyxy in an image of ``size = (H, W)``.

    ``size`` may also be a ``(B, 2)`` tensor with ``boxes`` ``(B, Q, 4)`` (one size per image).
    """
    xyxy = box_convert(boxes_cxcywh, "cxcywh", "xyxy")
    if isinstance(size, torch.Tensor) and size.ndim == 2:
        h, w = size[:, 0:1].to(xyxy), size[:, 1:2].to(xyxy)
        scale = torch.stack([w, h, w, h], dim=-1)  # (B, 1, 4)
        return xyxy * scale
    h, w = float(size[0]), float(size[1])
    return xyxy * xyxy.new_tensor([w, h, w, h])


def rescale_boxes(boxes_xyxy: torch.Tensor, from_size: Sequence[int], to_size: Sequence[int]) -> torch.Tensor:
    """Absolute xyxy boxes of an ``(H, W) = from_size`` image -> the same boxes after resizing the whole
    image to ``to_size``."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return boxes_xyxy * boxes_xyxy.new_tensor([sx, sy, sx, sy])
