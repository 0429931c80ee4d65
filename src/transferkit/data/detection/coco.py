"""COCO detection json <-> grounding records, without losing information either way.

A COCO file maps to one :class:`~transferkit.data.grounding.GroundingRecord` per image (images with no
annotation included) and one object per annotation:

- ``bbox [x, y, w, h]`` <-> ``bbox_2d [x, y, x + w, y + h]`` (absolute pixels both sides);
- ``desc``: the annotation's ``desc`` key, else its category name;
- the category name goes to the object's ``category`` key only when it differs from ``desc`` up to the first
  ``/`` (the default class of a grounding object), so a description-only JSONL stays description-only;
- ids, ``area`` and ``iscrowd`` are written only where they differ from what the reverse conversion would
  produce by default (image ids ``1..N`` and annotation ids ``1..M`` in file order, category ids ``1..K`` in
  order of first appearance, ``area = w * h``, ``iscrowd = 0``); category ``supercategory`` rides on the
  object; every other image / annotation key is kept as a record / object key.

So JSONL -> COCO -> JSONL and COCO -> JSONL -> COCO both return the input (records must carry
``width``/``height``, or the images must be readable to find them). What JSONL cannot hold is reported, not
silently dropped: COCO's ``info``/``licenses`` headers and categories no annotation uses.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transferkit.data.grounding import GroundingObject, GroundingRecord, RecordError, desc_head, parse_object
from transferkit.errors import DatasetError
from transferkit.utils.io import atomic_write_json

log = logging.getLogger(__name__)

IMAGE_KEYS = ("id", "file_name", "width", "height")
ANN_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd", "desc")
ENVELOPE_KEY = "grounding_envelope"


def _default_category_ids(names: Sequence[str]) -> dict[str, int]:
    """Category ids ``1..K`` in order of first appearance."""
    ids: dict[str, int] = {}
    for n in names:
        ids.setdefault(n, len(ids) + 1)
    return ids


def read_coco(
    path: str | os.PathLike, *, strict: bool = False
) -> tuple[list[GroundingRecord], list[RecordError], list[str]]:
    """Read a COCO detection json: ``(records, errors, notes)`` (see :func:`coco_to_records`)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"COCO file '{path}' does not exist")
    try:
        coco = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"'{path}' is not UTF-8 text (byte at offset {e.start}); COCO files are UTF-8 JSON"
        ) from None
    except ValueError as e:
        raise DatasetError(f"'{path}' is not valid JSON ({e}); expected a COCO detection file") from None
    return coco_to_records(coco, str(path), strict=strict)


def coco_to_records(
    coco: dict[str, Any], source: str = "<coco>", *, strict: bool = False
) -> tuple[list[GroundingRecord], list[RecordError], list[str]]:
    """COCO dict -> ``(records, errors, notes)``: one record per image in ``images`` order; a bad image or
    annotation becomes a :class:`RecordError` (``where`` = e.g. ``annotations[12]``) and the rest is kept;
    ``notes`` name what JSONL cannot hold (headers, unused categories)."""
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise DatasetError(
            f"{source}: not a COCO detection file (needs 'images', 'annotations', 'categories')"
        )
    if not isinstance(coco.get("categories"), list):
        raise DatasetError(
            f'{source}: a COCO detection file needs a \'categories\' list ([{{"id": 1, "name": "cat"}}, ...]); '
            "without it no annotation has a class"
        )
    errors: list[RecordError] = []

    def fail(where: str, message: str) -> None:
        err = RecordError(source, None, f"{where}: {message}")
        if strict:
            raise DatasetError(f"{err} (strict mode)")
        errors.append(err)

    categories: dict[int, dict[str, Any]] = {}
    for i, cat in enumerate(coco.get("categories") or []):
        if (
            not isinstance(cat, dict)
            or not isinstance(cat.get("id"), int)
            or not isinstance(cat.get("name"), str)
        ):
            fail(f"categories[{i}]", f"needs an integer 'id' and a string 'name', got {cat!r}")
            continue
        categories[cat["id"]] = cat
    records: list[GroundingRecord] = []
    by_image: dict[Any, GroundingRecord] = {}
    for i, img in enumerate(coco["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            fail(f"images[{i}]", f"needs 'id' and a string 'file_name', got {img!r}")
            continue
        if img["id"] in by_image:
            fail(f"images[{i}]", f"duplicate image id {img['id']!r}")
            continue
        extra = {k: v for k, v in img.items() if k not in IMAGE_KEYS}
        envelope = extra.pop(ENVELOPE_KEY, None)
        if img["id"] != len(records) + 1:
            extra["image_id"] = img["id"]
        w, h = img.get("width"), img.get("height")
        rec = GroundingRecord([img["file_name"]], [], w, h, extra, envelope)
        by_image[img["id"]] = rec
        records.append(rec)

    anns: dict[int, list[tuple[dict[str, Any], GroundingObject]]] = {id(r): [] for r in records}
    used: set[int] = set()
    for i, ann in enumerate(coco.get("annotations") or []):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            fail(where, f"must be an object, got {ann!r}")
            continue
        rec = by_image.get(ann.get("image_id"))
        if rec is None:
            fail(where, f"image_id {ann.get('image_id')!r} is not in 'images'")
            continue
        cat = categories.get(ann.get("category_id"))
        if cat is None:
            fail(where, f"category_id {ann.get('category_id')!r} is not in 'categories'")
            continue
        box = ann.get("bbox")
        if not isinstance(box, list) or len(box) != 4:
            fail(where, f"'bbox' must be [x, y, w, h], got {box!r}")
            continue
        x, y, w, h = box
        try:
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box) or w < 0 or h < 0:
                raise ValueError(f"'bbox' must be 4 numbers [x, y, w, h] with w, h >= 0, got {box!r}")
            obj = parse_object({"bbox_2d": [x, y, x + w, y + h], "desc": ann.get("desc", cat["name"])}, where)
        except ValueError as e:
            fail(where, str(e).removeprefix(f"{where} "))
            continue
        extra = {k: v for k, v in ann.items() if k not in ANN_KEYS}
        if cat["name"] != desc_head(obj.desc):
            extra["category"] = cat["name"]
        if "supercategory" in cat:
            extra["supercategory"] = cat["supercategory"]
        if "area" in ann and not math.isclose(ann["area"], w * h, rel_tol=1e-9, abs_tol=1e-9):
            extra["area"] = ann["area"]
        if ann.get("iscrowd", 0) != 0:
            extra["iscrowd"] = ann["iscrowd"]
        obj.extra = extra
        used.add(cat["id"])
        anns[id(rec)].append((ann, obj))

    # ids that differ from the defaults of records_to_coco are written explicitly
    ordered = [(ann, obj) for rec in records for ann, obj in anns[id(rec)]]
    default_cat = _default_category_ids([categories[ann["category_id"]]["name"] for ann, _ in ordered])
    for n, (ann, obj) in enumerate(ordered, start=1):
        if ann.get("id") is not None and ann["id"] != n:
            obj.extra["id"] = ann["id"]
        name = categories[ann["category_id"]]["name"]
        if default_cat[name] != ann["category_id"]:
            obj.extra["category_id"] = ann["category_id"]
    for rec in records:
        rec.objects = [obj for _, obj in anns[id(rec)]]

    notes = []
    for key in ("info", "licenses"):
        if coco.get(key):
            notes.append(f"COCO '{key}' has no place in grounding JSONL and was not carried over")
    unused = sorted(c["name"] for cid, c in categories.items() if cid not in used)
    if unused:
        notes.append(f"{len(unused)} categories with no annotation cannot be written to JSONL: {unused[:10]}")
    dropped = sorted({k for c in categories.values() for k in c if k not in ("id", "name", "supercategory")})
    if dropped:
        notes.append(f"category keys {dropped} are not carried over to JSONL")
    return records, errors, notes


def records_to_coco(
    records: Sequence[GroundingRecord],
    *,
    size_of: Callable[[GroundingRecord], tuple[int, int]] | None = None,
    strict: bool = False,
    source: str = "<records>",
) -> tuple[dict[str, Any], list[RecordError]]:
    """Grounding records -> ``(coco dict, errors)``.

    Records without ``width``/``height`` get them from ``size_of(record) -> (H, W)`` (e.g. reading the image
    header); a record that cannot be converted (no size, several images) is reported and skipped.
    """
    errors: list[RecordError] = []

    def fail(rec: GroundingRecord, message: str) -> None:
        err = RecordError(source, rec.line, message)
        if strict:
            raise DatasetError(f"{err} (strict mode)")
        errors.append(err)

    images, kept = [], []
    seen_ids: set[Any] = set()
    for index, rec in enumerate(records, start=1):
        if len(rec.images) != 1:
            fail(rec, f"a COCO image holds one file; this record has {len(rec.images)} images")
            continue
        w, h = rec.width, rec.height
        if w is None or h is None:
            if size_of is None:
                fail(rec, "no 'width'/'height' and no way to read the image size")
                continue
            try:
                h, w = size_of(rec)
            except (OSError, ValueError) as e:
                fail(rec, f"no 'width'/'height' and the image could not be read ({e})")
                continue
        extra = dict(rec.extra)
        image_id = extra.pop("image_id", index)
        if image_id in seen_ids:
            fail(rec, f"duplicate image id {image_id!r}")
            continue
        seen_ids.add(image_id)
        image = {"id": image_id, "file_name": rec.image, "width": w, "height": h, **extra}
        if rec.envelope is not None:
            image[ENVELOPE_KEY] = rec.envelope
        images.append(image)
        kept.append((image_id, rec))

    objects = [(image_id, obj) for image_id, rec in kept for obj in rec.objects]
    cat_ids: dict[str, int] = {}
    for _, obj in objects:
        if "category_id" in obj.extra:
            name = obj.category
            if cat_ids.setdefault(name, obj.extra["category_id"]) != obj.extra["category_id"]:
                raise DatasetError(f"{source}: category '{name}' has two category ids")
    default = _default_category_ids([obj.category for _, obj in objects])
    for name, cid in default.items():
        cat_ids.setdefault(name, cid)
    if len(set(cat_ids.values())) != len(cat_ids):
        raise DatasetError(f"{source}: two categories share an id ({cat_ids}); fix the 'category_id' keys")
    categories: dict[str, dict[str, Any]] = {}
    annotations = []
    for n, (image_id, obj) in enumerate(objects, start=1):
        extra = dict(obj.extra)
        name = obj.category
        extra.pop("category", None)
        extra.pop("category_id", None)
        cat = categories.setdefault(name, {"id": cat_ids[name], "name": name})
        if "supercategory" in extra:
            cat.setdefault("supercategory", extra.pop("supercategory"))
        x1, y1, x2, y2 = obj.bbox
        w, h = x2 - x1, y2 - y1
        ann = {
            "id": extra.pop("id", n),
            "image_id": image_id,
            "category_id": cat_ids[name],
            "bbox": [x1, y1, w, h],
            "area": extra.pop("area", w * h),
            "iscrowd": extra.pop("iscrowd", 0),
        }
        if obj.desc != name:
            ann["desc"] = obj.desc
        ann.update(extra)
        annotations.append(ann)
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": sorted(categories.values(), key=lambda c: c["id"]),
    }
    return coco, errors


def write_coco(path: str | os.PathLike, coco: dict[str, Any]) -> Path:
    """Write a COCO dict as json, atomically."""
    return atomic_write_json(path, coco)
