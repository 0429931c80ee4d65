"""A built-in synthetic detection set with descriptions: coloured geometric shapes on noisy backgrounds.

``make_shapes(OUT, n)`` writes ``OUT/images/*.png`` (sizes drawn from ``[min_size, max_size]`` per side, so
loaders must rescale boxes), ``OUT/{train,val,test}.jsonl`` in the grounding format (absolute pixel
``bbox_2d``) and ``OUT/shapes.json`` (the generator's parameters and counts).

Each image holds 1..``max_objects`` shapes (circle, square, triangle) in one of four colours, small or
large, drawn in order so later shapes may cover earlier ones. An object's description is compositional:
``"<colour> <shape>/<size>/<visibility>"``, e.g. ``"red circle/large/occluded"`` (``occluded``: more than
10% of the shape is hidden; no shape is more than 60% hidden). Its class is the part before the first
``/`` (``"red circle"``: 12 classes); its box is the whole shape's extent, hidden parts included.
Generation is a pure function of the parameters (``seed`` included).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from transferkit.data.grounding import GroundingObject, GroundingRecord, write_grounding_jsonl
from transferkit.errors import UserError
from transferkit.utils.io import atomic_write_json

log = logging.getLogger(__name__)

GENERATOR = "transferkit-shapes-v1"
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 210, 40),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (0.14, 0.22), "large": (0.30, 0.45)}  # side as a fraction of min(W, H)
OCCLUDED_ABOVE = 0.10
MAX_HIDDEN = 0.60


@dataclass
class ShapesConfig:
    """Parameters of the synthetic shapes set.

    Args:
        n: number of images.
        min_size: smallest image side in pixels.
        max_size: largest image side in pixels.
        max_objects: at most this many shapes per image (at least one).
        val_fraction: fraction of images in the validation split.
        test_fraction: fraction of images in the test split.
        seed: random seed; the set is a pure function of these parameters.
    """

    n: int = 2000
    min_size: int = 64
    max_size: int = 96
    max_objects: int = 4
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0

    def check(self) -> None:
        if self.n < 3:
            raise UserError(f"shapes n must be >= 3 (one image per split), got {self.n}")
        if not 16 <= self.min_size <= self.max_size:
            raise UserError(
                f"shapes sizes need 16 <= min_size <= max_size, got {self.min_size}, {self.max_size}"
            )
        if self.max_objects < 1:
            raise UserError(f"shapes max_objects must be >= 1, got {self.max_objects}")
        if not (
            0 < self.val_fraction and 0 < self.test_fraction and self.val_fraction + self.test_fraction < 1
        ):
            raise UserError("shapes val_fraction and test_fraction must be > 0 and sum to < 1")


def _draw(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, s: int, fill: Any) -> None:
    # PIL includes the end pixel: a shape covering columns x..x+s-1 has the continuous extent [x, x+s]
    box = (x, y, x + s - 1, y + s - 1)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x, y + s - 1), (x + s - 1, y + s - 1), (x + (s - 1) / 2, y)], fill=fill)


def make_image(rng: np.random.Generator, cfg: ShapesConfig) -> tuple[Image.Image, list[GroundingObject]]:
    """One image and its objects (absolute pixel boxes, descriptions)."""
    w, h = (int(v) for v in rng.integers(cfg.min_size, cfg.max_size + 1, size=2))
    level = int(rng.integers(90, 171))
    pixels = np.clip(rng.normal(level, 8.0, size=(h, w, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    count = int(rng.integers(1, cfg.max_objects + 1))
    objects: list[dict[str, Any]] = []
    visible = np.zeros((0, h, w), dtype=bool)
    for _ in range(count):
        for _attempt in range(20):
            colour = str(rng.choice(list(COLOURS)))
            shape = str(rng.choice(SHAPES))
            size = str(rng.choice(list(SIZES)))
            lo, hi = SIZES[size]
            s = max(4, int(round(rng.uniform(lo, hi) * min(w, h))))
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            mask_img = Image.new("1", (w, h), 0)
            _draw(ImageDraw.Draw(mask_img), shape, x, y, s, 1)
            mask = np.array(mask_img, dtype=bool)
            # accept only if no earlier shape becomes more than MAX_HIDDEN hidden
            after = visible & ~mask
            full = np.array([o["area"] for o in objects])
            if len(objects) and np.any(after.reshape(len(objects), -1).sum(1) < (1 - MAX_HIDDEN) * full):
                continue
            visible = np.concatenate([after, mask[None]], axis=0)
            objects.append(
                dict(colour=colour, shape=shape, size=size, box=(x, y, x + s, y + s), area=int(mask.sum()))
            )
            _draw(ImageDraw.Draw(image), shape, x, y, s, COLOURS[colour])
            break
    result = []
    for o, vis in zip(objects, visible):
        hidden = 1.0 - vis.sum() / max(1, o["area"])
        state = "occluded" if hidden > OCCLUDED_ABOVE else "visible"
        result.append(GroundingObject(o["box"], f"{o['colour']} {o['shape']}/{o['size']}/{state}"))
    return image, result


def make_shapes(out: str | os.PathLike, cfg: ShapesConfig | None = None) -> dict[str, Any]:
    """Write the shapes set to ``out`` (see module docstring); returns the summary also in ``shapes.json``."""
    cfg = cfg or ShapesConfig()
    cfg.check()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    n_val = max(1, int(round(cfg.n * cfg.val_fraction)))
    n_test = max(1, int(round(cfg.n * cfg.test_fraction)))
    n_train = cfg.n - n_val - n_test
    split_of = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    records: dict[str, list[GroundingRecord]] = {"train": [], "val": [], "test": []}
    digits = max(6, len(str(cfg.n)))
    for i, split in enumerate(split_of):
        image, objects = make_image(rng, cfg)
        name = f"images/{i:0{digits}d}.png"
        image.save(out / name)
        records[split].append(GroundingRecord([name], objects, image.width, image.height))
    for split, recs in records.items():
        write_grounding_jsonl(out / f"{split}.jsonl", recs)
    descs = sorted({o.desc for recs in records.values() for r in recs for o in r.objects})
    summary = {
        "generator": GENERATOR,
        "config": asdict(cfg),
        "splits": {
            s: {"images": len(r), "objects": sum(len(x.objects) for x in r)} for s, r in records.items()
        },
        "classes": sorted({d.split("/")[0] for d in descs}),
        "descriptions": len(descs),
    }
    atomic_write_json(out / "shapes.json", summary)
    log.info("wrote %d shapes images to %s", cfg.n, out)
    return summary


def ensure_shapes(out: str | os.PathLike, cfg: ShapesConfig) -> Path:
    """``out`` holding the shapes set of ``cfg``: generated if missing, reused if it matches, an error if
    the folder holds something else."""
    out = Path(out)
    meta = out / "shapes.json"
    if meta.is_file():
        try:
            existing = json.loads(meta.read_text())
        except ValueError:
            existing = {}
        if existing.get("generator") == GENERATOR and existing.get("config") == asdict(cfg):
            return out
        raise UserError(
            f"'{out}' holds a shapes set made with other parameters ({existing.get('config')}); "
            "delete it or point data.path at another folder"
        )
    if out.exists() and any(out.iterdir()):
        raise UserError(f"'{out}' is not empty and holds no shapes set; point data.path at an empty folder")
    make_shapes(out, cfg)
    return out
