"""Dataset checks: find every problem in an image-classification dataset before training on it.

:func:`check_dataset` inspects an ``imagefolder`` tree (``root/{train,val,test}/<class>/<image>``) or a
``path,label[,split]`` CSV and returns a :class:`DatasetReport`: layout, classes, counts and balance per
split, and a list of :class:`Issue` (``error`` = the data cannot be used correctly as given; ``warning`` =
usable, but look). With ``deep=True`` every image is read once: the bytes are hashed (exact duplicates)
and decoded with PIL (corrupt / truncated / unreadable files, non-RGB modes).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from transferkit.data.sources import (
    SPLITS,
    fixed_split_60_20_20,
    is_image_file,
    list_class_dirs,
    read_csv_rows,
    walk_folder,
)
from transferkit.errors import DatasetError, UserError

CHECK_SOURCES = ("auto", "imagefolder", "csv")
# Modes that need a conversion to RGB, with the words the report uses for them.
_MODE_WORDS = {
    "1": "black-and-white (1-bit)",
    "L": "grayscale (L)",
    "LA": "grayscale with alpha (LA)",
    "I": "32-bit grayscale (I)",
    "I;16": "16-bit grayscale (I;16)",
    "F": "float grayscale (F)",
    "P": "palette (P)",
    "PA": "palette with alpha (PA)",
    "RGBA": "RGBA (alpha dropped)",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
}


@dataclass
class Issue:
    """One finding. ``kind`` is a stable code (``corrupt``, ``zero-byte``, ``duplicate``, ...)."""

    severity: str  # 'error' | 'warning'
    kind: str
    message: str
    path: str | None = None


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found. ``counts[split][class]`` counts image files per class."""

    path: str
    source: str
    layout: str
    class_names: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    files_checked: int = 0
    deep: bool = True

    @property
    def ok(self) -> bool:
        """False iff any issue is an error."""
        return not self.errors

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def splits(self) -> list[str]:
        return list(self.counts)

    def imbalance(self, split: str) -> float:
        """Largest over smallest class count in ``split`` (``inf`` if a class has none, ``nan`` if empty)."""
        values = list(self.counts.get(split, {}).values())
        if not values or max(values) == 0:
            return float("nan")
        return float("inf") if min(values) == 0 else max(values) / min(values)

    def add(self, severity: str, kind: str, message: str, path: str | os.PathLike | None = None) -> None:
        assert severity in ("error", "warning"), severity
        self.issues.append(Issue(severity, kind, message, None if path is None else str(path)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``imbalance`` per split; ``inf``/``nan`` become ``None``)."""
        out = asdict(self)
        out["ok"] = self.ok
        out["imbalance"] = {s: (r if np.isfinite(r := self.imbalance(s)) else None) for s in self.counts}
        return out


@dataclass
class _FileResult:
    size: int
    digest: str | None = None
    mode: str | None = None
    error: str | None = None


def _inspect(path: Path, deep: bool) -> _FileResult:
    """One read per file: size; with ``deep`` the content hash, and a full PIL decode from those bytes."""
    try:
        size = path.stat().st_size
    except OSError as e:
        return _FileResult(0, error=f"cannot access the file ({e})")
    if size == 0 or not deep:
        return _FileResult(size)
    try:
        data = path.read_bytes()
    except OSError as e:
        return _FileResult(size, error=f"cannot read the file ({e})")
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decode every pixel: catches truncated files that open() alone accepts
            mode = im.mode
    except UnidentifiedImageError:  # its message names the BytesIO, not the file
        return _FileResult(size, digest, error="not an image format PIL can identify")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, DecompressionBomb...
        return _FileResult(size, digest, error=f"{type(e).__name__}: {e}")
    return _FileResult(size, digest, mode)


@contextmanager
def _progress(enabled: bool, total: int, description: str) -> Iterator[Any]:
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def _resolve_source(path: Path, source: str) -> str:
    if source not in CHECK_SOURCES:
        raise UserError(f"unknown source '{source}' for data check; choose one of {list(CHECK_SOURCES)}")
    if not path.exists():
        raise DatasetError(f"{path} does not exist; pass a dataset folder (train/<class>/...) or a CSV file")
    if source != "auto":
        return source
    if path.is_dir():
        return "imagefolder"
    if path.suffix.lower() == ".csv":
        return "csv"
    raise DatasetError(f"cannot tell what {path} is: pass a dataset folder or a .csv file (or --source)")


def check_dataset(
    path: str | os.PathLike,
    source: str = "auto",
    deep: bool = True,
    *,
    progress: bool = False,
    workers: int | None = None,
    imbalance_warning: float = 10.0,
) -> DatasetReport:
    """Check an ``imagefolder`` tree or a ``path,label[,split]`` CSV; never raises for a bad dataset.

    Args:
        path: Dataset folder (``train/``, ``val/``, ``test/`` with one folder per class) or CSV file.
        source: ``auto`` (folder -> imagefolder, ``.csv`` -> csv), ``imagefolder`` or ``csv``.
        deep: Read every image once (hash + full decode). ``False`` checks layout, counts and sizes only.
        progress: Show a rich progress bar on stderr while reading images.
        workers: Threads reading/decoding images (PIL releases the GIL); default ``min(8, cpu count)``.
        imbalance_warning: Warn when a split's largest/smallest class ratio exceeds this.

    Raises:
        DatasetError: ``path`` does not exist or is neither a folder nor a CSV file.
    """
    path = Path(path).expanduser()
    source = _resolve_source(path, source)
    if source == "imagefolder":
        report, files = _scan_imagefolder(path)
    else:
        report, files = _scan_csv(path)
    report.deep = deep
    _check_files(report, files, deep, progress, workers)
    for split in report.counts:
        ratio = report.imbalance(split)
        if np.isfinite(ratio) and ratio > imbalance_warning:
            report.add(
                "warning",
                "imbalance",
                f"{split}: classes are imbalanced (largest/smallest = {ratio:.1f}); consider balanced "
                "accuracy/macro-F1, class weights or resampling",
            )
    return report


# (split, class name, file path) for every image file the loaders would read
_Files = list[tuple[str, str, Path]]


def _scan_imagefolder(root: Path) -> tuple[DatasetReport, _Files]:
    report = DatasetReport(str(root), "imagefolder", "")
    if not root.is_dir():
        report.add("error", "layout", f"{root} is not a folder", root)
        return report, []
    present = [s for s in SPLITS if (root / s).is_dir()]
    report.layout = "imagefolder: " + (", ".join(f"{s}/<class>/" for s in present) or "no split folders")
    if "train" not in present:
        here = list_class_dirs(root)
        hint = (
            f"; it has folders {here[:5]} directly: if these are classes, move them into {root / 'train'}/"
            if here
            else ""
        )
        report.add(
            "error",
            "missing-split",
            f"no train/ folder in {root} (expected train/<class>/<image>){hint}",
            root,
        )
    if "val" not in present:
        report.add(
            "warning",
            "missing-split",
            f"no val/ folder: create {root / 'val'}/<class>/ or train with val_fraction (e.g. 0.1)",
            root / "val",
        )
    if "test" not in present:
        report.add(
            "warning", "missing-split", "no test/ folder: the test split will be the val split", root / "test"
        )

    class_sets: dict[str, list[str]] = {}
    files: _Files = []
    seen: dict[Path, Path] = {}  # the loader's rule: a folder reached twice (through a link) is an error
    for split in present:
        split_dir = root / split
        classes = list_class_dirs(split_dir)
        class_sets[split] = classes
        for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
            if entry.is_file() and not entry.name.startswith("."):
                report.add(
                    "warning",
                    "stray-file",
                    f"file outside any class folder is ignored: move it into {split}/<class>/",
                    entry.path,
                )
        if not classes:
            report.add(
                "error",
                "no-classes",
                f"{split}/ has no class folders: put images in {split}/<class>/",
                split_dir,
            )
        for cls in classes:
            walk = walk_folder(split_dir / cls, root, seen)
            for p in walk.images:
                files.append((split, cls, p))
            n_images = len(walk.images)
            for p in walk.others:
                report.add(
                    "warning", "non-image", "not an image file (by extension): ignored by the loader", p
                )
            for kind, link, message in walk.problems:
                report.add(
                    "error" if kind in ("link-loop", "link-repeat") else "warning", kind, message, link
                )
            if n_images == 0:
                report.add(
                    "error",
                    "empty-class",
                    f"class folder {split}/{cls} has no images: add images or delete it from every split",
                    split_dir / cls,
                )

    all_classes = sorted(set().union(*class_sets.values())) if class_sets else []
    for split, classes in class_sets.items():
        lacks = sorted(set(all_classes) - set(classes))
        if lacks and classes:
            report.add(
                "error",
                "class-mismatch",
                f"{split}/ lacks class folders {lacks} that other splits have; every split needs the same "
                "classes",
                root / split,
            )
    report.class_names = all_classes
    report.counts = {s: {c: 0 for c in all_classes} for s in present}
    for split, cls, _ in files:
        report.counts[split][cls] += 1
    return report, files


def _scan_csv(csv_path: Path) -> tuple[DatasetReport, _Files]:
    report = DatasetReport(str(csv_path), "csv", "")
    try:
        rows, problems = read_csv_rows(csv_path, check_files=False)
    except DatasetError as e:
        report.add("error", "bad-header", str(e), csv_path)
        return report, []
    for message in problems:
        report.add("error", "bad-row", f"{csv_path.name} {message}", csv_path)
    kept = []
    for row in rows:
        if row.path.is_file():
            kept.append(row)
        else:
            report.add("error", "missing-file", f"{csv_path.name} line {row.line}: file not found", row.path)
    for row in kept:
        if not is_image_file(row.path):
            report.add(
                "warning",
                "non-image",
                f"line {row.line}: not an image extension; the loader will try it",
                row.path,
            )
    classes = sorted({r.label for r in kept})
    report.class_names = classes
    has_split = bool(rows) and rows[0].split is not None
    if has_split:
        report.layout = "csv: path,label,split"
        split_of = [r.split for r in kept]
    else:
        report.layout = "csv: path,label (fixed stratified 60/20/20 split)"
        split_of = ["train"] * len(kept)
        if kept:
            idx = {c: i for i, c in enumerate(classes)}
            try:
                parts = fixed_split_60_20_20([idx[r.label] for r in kept], str(csv_path))
            except DatasetError as e:
                report.add("error", "split", str(e), csv_path)
            else:
                for split, indices in parts.items():
                    for i in indices:
                        split_of[i] = split
    present = [s for s in SPLITS if s in set(split_of)]
    if not kept:
        report.add("error", "no-rows", f"{csv_path.name} lists no usable image", csv_path)
    elif has_split:
        if "train" not in present:
            report.add("error", "missing-split", "no rows with split=train", csv_path)
        if "val" not in present:
            report.add(
                "warning",
                "missing-split",
                "no rows with split=val: train with val_fraction (e.g. 0.1)",
                csv_path,
            )
        if "test" not in present:
            report.add(
                "warning", "missing-split", "no rows with split=test: the test split will be val", csv_path
            )
    report.counts = {s: {c: 0 for c in classes} for s in present}
    for row, split in zip(kept, split_of):
        report.counts[split][row.label] += 1
    for split in present:
        lacks = [c for c, n in report.counts[split].items() if n == 0]
        if lacks:
            report.add("error", "class-mismatch", f"split {split} has no rows for classes {lacks}", csv_path)
    return report, [(s, r.label, r.path) for r, s in zip(kept, split_of)]


def _check_files(
    report: DatasetReport, files: _Files, deep: bool, progress: bool, workers: int | None
) -> None:
    unique = list(dict.fromkeys(p for _, _, p in files))  # a CSV may list one file twice: read it once
    workers = workers or min(8, os.cpu_count() or 1)
    results: dict[Path, _FileResult] = {}
    with _progress(progress, len(unique), "checking images") as advance:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for p, res in zip(unique, pool.map(lambda q: _inspect(q, deep), unique)):
                results[p] = res
                advance()
    report.files_checked = len(unique)

    modes: dict[tuple[str, str], list[Path]] = defaultdict(list)
    by_digest: dict[str, list[tuple[str, str, Path]]] = defaultdict(list)
    reported: set[Path] = set()
    for split, cls, p in files:
        res = results[p]
        if p not in reported:
            if res.size == 0 and res.error is None:
                report.add(
                    "error", "zero-byte", "empty file (0 bytes): remove it or replace it with the image", p
                )
            elif res.error is not None:
                report.add(
                    "error",
                    "corrupt",
                    f"unreadable image ({res.error}): remove or replace it, or train with on_corrupt=skip",
                    p,
                )
            reported.add(p)
        if res.mode is not None and res.mode != "RGB":
            modes[(split, res.mode)].append(p)
        if res.digest is not None:
            by_digest[res.digest].append((split, cls, p))

    for (split, mode), paths in sorted(modes.items()):
        word = _MODE_WORDS.get(mode, mode)
        report.add(
            "warning",
            "converted",
            f"{split}: {len(paths)} image(s) are {word}; they are converted to RGB when loaded "
            f"(e.g. {paths[0]})",
            paths[0],
        )

    for group in by_digest.values():
        if len(group) < 2:  # a CSV listing one file twice gives a group of one path, two entries
            continue
        splits = sorted({s for s, _, _ in group}, key=SPLITS.index)
        classes = sorted({c for _, c, _ in group})
        where = ", ".join(f"{s}/{c}: {p}" for s, c, p in group[:4]) + (" ..." if len(group) > 4 else "")
        if len(splits) > 1:
            report.add(
                "error",
                "duplicate",
                f"identical image in {' and '.join(splits)} ({where}): evaluation leaks training data; "
                "keep one copy",
                group[0][2],
            )
        elif len(classes) > 1:
            report.add(
                "error",
                "duplicate",
                f"identical image with different labels {classes} in {splits[0]} ({where}); keep the right "
                "one",
                group[0][2],
            )
        else:
            report.add(
                "warning", "duplicate", f"identical image repeated in {splits[0]} ({where})", group[0][2]
            )
