"""Image-classification data sources: where images and labels come from, split into train/val/test.

Every source gives, per split, a :class:`ClassificationDataset` whose items are ``(image, label)`` with
``image`` a ``(3, H, W)`` float tensor in ``[0, 1]`` (after the split's transform) and ``label`` an int
index into ``class_names``. Class names are known right after the source is built (no image is read), so
``num_classes`` can be wired into a model before any data is loaded.

Sources:

- ``digits``: sklearn's 1797 real 8x8 handwritten digits, upscaled to ``image_size``; offline, fixed
  stratified 60/20/20 split that never depends on the run's seed.
- ``shapes`` / ``textures``: generated sets (6 classes x 200 images: geometric shapes, periodic and random
  patterns; :mod:`transferkit.data.synthetic`), offline, deterministic, the digits' fixed split.
- ``imagefolder``: ``root/{train,val[,test]}/<class>/<image>`` (torchvision's folder scanning).
- ``csv``: a CSV with header ``path,label[,split]``; paths relative to the CSV's folder.
- ``cifar10`` / ``cifar100``: torchvision's on-disk format (``cifar-10-batches-py`` / ``cifar-100-python``).

Every split taken out of another one (``val_fraction``, the CSV 60/20/20 split) is stratified with a fixed
``random_state=0``: the split is a property of the data, not of the run.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from transferkit.data.options import ON_CORRUPT, SOURCES, SPLITS
from transferkit.errors import DatasetError, UserError

logger = logging.getLogger(__name__)

SPLIT_SEED = 0

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# CIFAR-100 fine labels in label-index order (torchvision reads the same list from the archive's ``meta``);
# kept here so ``num_classes``/``class_names`` are known before the archive is downloaded.
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
    "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
    "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
    "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
    "worm"
).split()


# ---------------------------------------------------------------------------------------------- images
def is_image_file(path: str | os.PathLike) -> bool:
    """Whether a file name has one of torchvision's image extensions (case-insensitive)."""
    return str(path).lower().endswith(IMG_EXTENSIONS)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: grayscale is replicated, alpha dropped, palettes expanded.

    16-bit grayscale (``I;16``, or ``I`` with values above 255) is rescaled to 8 bits first; PIL's own
    ``convert`` would clip it to 255.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        arr = np.asarray(image, dtype=np.float64)
        if image.mode != "I" or arr.max() > 255:
            arr = arr / 257.0
        image = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when going P -> RGB with a transparency key
    return image.convert("RGB")


_WARNED_LARGE: set[str] = set()


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file as RGB (raises whatever PIL raises on a bad file).

    An image above PIL's decompression-bomb threshold (``Image.MAX_IMAGE_PIXELS``, 89M pixels) is loaded with
    one warning of ours per file instead of PIL's raw ``DecompressionBombWarning``; above twice the threshold
    PIL refuses it (``DecompressionBombError``, reported as unreadable)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.load()
            rgb = to_rgb(image)
    if (
        any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)
        and str(path) not in _WARNED_LARGE
    ):
        _WARNED_LARGE.add(str(path))
        logger.warning(
            "image %s is %dx%d (%.0fM pixels, over the %.0fM of PIL's decompression-bomb check): decoding it takes "
            "about %.1f GB; it is loaded, then resized to the model's input",
            path, rgb.width, rgb.height, rgb.width * rgb.height / 1e6, (Image.MAX_IMAGE_PIXELS or 0) / 1e6,
            rgb.width * rgb.height * 3 / 1e9,
        )  # fmt: skip
    for w in caught:  # other warnings are not ours to swallow
        if not issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return rgb


_TO_TENSOR = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


# ---------------------------------------------------------------------------------------------- datasets
class ClassificationDataset(Dataset):
    """Items ``(image (3, H, W) float32 in [0, 1], label int)``; ``None`` for a skipped unreadable image.

    ``transform`` maps a PIL RGB image to the tensor (default: no resizing, just to float in [0, 1]).
    Subclasses implement ``load(index) -> PIL RGB image | None`` and ``content_digest()``.
    """

    def __init__(self, targets: Sequence[int], class_names: Sequence[str], transform: Callable | None = None):
        self.targets = [int(t) for t in targets]
        self.class_names = list(class_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> Image.Image | None:
        raise NotImplementedError

    def content_digest(self) -> str:
        """Hash of what the images are (bytes or file identities) and their labels."""
        raise NotImplementedError

    def _subset(self, indices: np.ndarray) -> ClassificationDataset:
        raise NotImplementedError

    def subset(self, indices: Sequence[int] | np.ndarray) -> ClassificationDataset:
        """A dataset of the given items, same classes and transform."""
        return self._subset(np.asarray(indices, dtype=np.int64))

    def with_transform(self, transform: Callable | None) -> ClassificationDataset:
        """The same items with another transform (a shallow copy; the data is shared)."""
        out = copy.copy(self)
        out.transform = transform
        return out

    def class_counts(self) -> list[int]:
        """Number of items per class, in ``class_names`` order."""
        return np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=len(self.class_names)).tolist()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        image = self.load(index)
        if image is None:
            return None
        x = (self.transform or _TO_TENSOR)(image)
        return x, self.targets[index]


class ArrayImageDataset(ClassificationDataset):
    """Images held in memory as a uint8 array ``(N, H, W, 3)`` (digits, CIFAR)."""

    def __init__(
        self,
        images: np.ndarray,
        targets: Sequence[int],
        class_names: Sequence[str],
        transform: Callable | None = None,
    ):
        super().__init__(targets, class_names, transform)
        assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3, images.shape
        assert len(images) == len(self.targets)
        self.images = np.ascontiguousarray(images)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])

    def content_digest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(str(self.images.shape).encode())
        h.update(self.images.tobytes())
        h.update(np.asarray(self.targets, dtype=np.int64).tobytes())
        return h.hexdigest()

    def _subset(self, indices: np.ndarray) -> ArrayImageDataset:
        return ArrayImageDataset(
            self.images[indices], [self.targets[i] for i in indices], self.class_names, self.transform
        )


class ImageFileDataset(ClassificationDataset):
    """Images read from files ``samples = [(path, label), ...]``, converted to RGB on load.

    ``on_corrupt='error'`` raises :class:`DatasetError` naming an unreadable file; ``'skip'`` makes the item
    ``None`` (dropped by :func:`collate_drop_none`) and logs one warning per file.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        class_names: Sequence[str],
        transform: Callable | None = None,
        on_corrupt: str = "error",
        check_hint: str = "",
    ):
        super().__init__([s[1] for s in samples], class_names, transform)
        if on_corrupt not in ON_CORRUPT:
            raise UserError(f"data.on_corrupt must be one of {list(ON_CORRUPT)}, got '{on_corrupt}'")
        self.paths = [str(s[0]) for s in samples]
        self.on_corrupt = on_corrupt
        self.check_hint = check_hint
        self._warned: set[str] = set()

    @property
    def samples(self) -> list[tuple[str, int]]:
        return list(zip(self.paths, self.targets))

    def load(self, index: int) -> Image.Image | None:
        path = self.paths[index]
        try:
            return load_rgb(path)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on bad files
            reason = _unreadable_reason(path, e)
            if self.on_corrupt == "error":
                target = self.check_hint or os.path.dirname(path)
                raise DatasetError(
                    f"cannot read image {path}: {reason}. Remove or replace the file, set on_corrupt=skip to "
                    f"skip unreadable images, or run `transferkit data check {target}` to list every problem"
                ) from None
            if path not in self._warned:
                self._warned.add(path)
                logger.warning("skipping unreadable image %s: %s", path, reason)
            return None

    def content_digest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for path, label in zip(self.paths, self.targets):
            try:
                st = os.stat(path)
                ident = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                ident = "missing"
            h.update(f"{path}\0{label}\0{ident}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def _subset(self, indices: np.ndarray) -> ImageFileDataset:
        return ImageFileDataset(
            [(self.paths[i], self.targets[i]) for i in indices],
            self.class_names,
            self.transform,
            self.on_corrupt,
            self.check_hint,
        )


def _unreadable_reason(path: str, error: Exception) -> str:
    try:
        if os.path.getsize(path) == 0:
            return "the file is empty (0 bytes)"
    except OSError:
        return "the file does not exist or cannot be accessed"
    if isinstance(error, Image.DecompressionBombError):
        return (
            f"it has more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f}M pixels, more than PIL decodes "
            "(a decompression bomb, or an image to downscale before training)"
        )
    return f"{type(error).__name__}: {error}"


@dataclass
class FolderWalk:
    """What :func:`walk_folder` found: image files, other files, and link problems ``(kind, path, message)``:
    ``link-loop`` and ``link-repeat`` (errors: images would be counted twice, under another label),
    ``link-outside`` and ``link-broken`` (warnings)."""

    images: list[Path] = field(default_factory=list)
    others: list[Path] = field(default_factory=list)
    problems: list[tuple[str, Path, str]] = field(default_factory=list)

    def errors(self) -> list[tuple[str, Path, str]]:
        return [p for p in self.problems if p[0] in ("link-loop", "link-repeat")]


def walk_folder(
    folder: str | Path, root: str | Path | None = None, seen: dict[Path, Path] | None = None
) -> FolderWalk:
    """Every file under ``folder`` (any depth, name order; hidden files and folders skipped), following
    symbolic links to folders once: a link back to a folder that contains it (a loop), or to a folder the walk
    reached already (``seen``, shared across the class folders of one dataset), is reported instead of
    followed, and so is a link leaving ``root`` (default ``folder``). The one walker of the datamodules and of
    ``transferkit data check``."""
    folder = Path(folder)
    root_real = Path(root if root is not None else folder).resolve()
    seen = {} if seen is None else seen
    out = FolderWalk()

    def visit(d: Path, ancestors: tuple[Path, ...]) -> None:
        real = d.resolve()
        if real in ancestors:
            out.problems.append(("link-loop", d, (
                f"symbolic link loop: {d} points to {real}, a folder that contains it, so its images would be "
                "counted again; remove the link")))  # fmt: skip
            return
        if real in seen:
            first = seen[real]
            # name the way in that goes through a link (the other one is the folder itself)
            link, other = (d, first) if Path(os.path.abspath(d)) != real else (first, d)
            out.problems.append(("link-repeat", link, (
                f"{link} leads to {real}, which is also part of the dataset as {other}: its images would be "
                "counted twice, possibly under another label; remove the link or copy the images")))  # fmt: skip
            return
        seen[real] = d
        if d.is_symlink() and not real.is_relative_to(root_real):
            out.problems.append(
                ("link-outside", d, f"{d} is a symbolic link leaving the dataset folder (to {real})")
            )
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            raise DatasetError(f"cannot list {d}: {e.strerror}; check its permissions") from None
        for e in entries:
            if e.name.startswith("."):
                continue
            path = Path(e.path)
            if e.is_dir():  # follows links
                visit(path, (*ancestors, real))
            elif e.is_file():
                (out.images if is_image_file(e.name) else out.others).append(path)
            elif e.is_symlink():
                out.problems.append(
                    ("link-broken", path, f"{path} is a broken symbolic link (to {os.readlink(path)})")
                )

    visit(folder, ())
    return out


def images_under(
    folder: str | Path, root: str | Path | None = None, seen: dict[Path, Path] | None = None
) -> list[Path]:
    """:func:`walk_folder`'s images, a link loop or repeat raised as a :class:`DatasetError` naming the link,
    the other link problems logged once each."""
    walk = walk_folder(folder, root, seen)
    errors = walk.errors()
    if errors:
        more = f" ({len(errors) - 1} more link problems)" if len(errors) > 1 else ""
        raise DatasetError(errors[0][2] + more)
    for _, _, message in walk.problems:
        logger.warning("%s", message)
    return walk.images


def scan_images(root: str | Path) -> list[str]:
    """Every image file under ``root`` (any depth, :func:`images_under`), as strings; raises
    :class:`DatasetError` when there is none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"'{root}' is not a folder; point data.path (or data.predict_path) at a folder of images"
        )
    files = [str(p) for p in images_under(root)]
    if not files:
        raise DatasetError(
            f"no image files under '{root}' (looked for .jpg/.png/... at any depth); point data.path (or "
            "data.predict_path) at a folder of images"
        )
    return files


def collate_drop_none(batch: list[Any]) -> Any:
    """``default_collate`` after dropping ``None`` items (images skipped with ``on_corrupt='skip'``).

    Returns ``(images (B, 3, H, W), labels (B,))`` with ``B`` the number of readable items, or ``None`` when
    every item of the batch was skipped (a ``training_step`` returning ``None`` skips that step).
    """
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    return default_collate(kept)


# ---------------------------------------------------------------------------------------------- splits
def stratified_split(
    targets: Sequence[int], fraction: float, seed: int = SPLIT_SEED, what: str = "the data"
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..N-1`` into ``(keep, held_out)`` with ``fraction`` held out, stratified by label.

    Both index arrays are sorted, so the order of items within a split follows the original order.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise UserError(f"split fraction must be in (0, 1), got {fraction}")
    idx = np.arange(len(targets))
    try:
        keep, held = train_test_split(idx, test_size=fraction, stratify=list(targets), random_state=seed)
    except ValueError as e:
        counts = np.bincount(np.asarray(targets, dtype=np.int64))
        raise DatasetError(
            f"cannot hold out {fraction:.0%} of {what} stratified by class ({e}); it has {len(idx)} images, "
            f"the smallest class {int(counts[counts > 0].min()) if len(idx) else 0}: add images, or provide "
            "the split explicitly"
        ) from None
    return np.sort(keep), np.sort(held)


def fixed_split_60_20_20(targets: Sequence[int], what: str) -> dict[str, np.ndarray]:
    """Fixed stratified 60/20/20 train/val/test indices (``random_state=0``, whatever the run's seed)."""
    rest, test = stratified_split(targets, 0.2, what=what)
    train, val = stratified_split([targets[i] for i in rest], 0.25, what=what)
    return {"train": rest[train], "val": rest[val], "test": test}


# ---------------------------------------------------------------------------------------------- sources
class ClassificationSource:
    """A resolved data source: ``class_names`` right away, per-split datasets on demand (cached)."""

    name: str = ""

    def __init__(self, path: str | os.PathLike | None, class_names: Sequence[str]):
        self.path = Path(path).expanduser().resolve() if path is not None else None
        self.class_names = list(class_names)
        self._splits: dict[str, ClassificationDataset] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def prepare(self) -> None:
        """Download what is needed (called once, on one process); a no-op for local sources."""

    def _load(self) -> dict[str, ClassificationDataset]:
        raise NotImplementedError

    def splits(self) -> dict[str, ClassificationDataset]:
        """``{'train': ..., 'val': ..., 'test': ...}`` datasets without transforms (loaded once)."""
        if self._splits is None:
            splits = self._load()
            assert set(splits) == set(SPLITS), splits.keys()
            for split, ds in splits.items():
                assert ds.class_names == self.class_names, (split, ds.class_names, self.class_names)
            self._splits = splits
        return self._splits


class DigitsSource(ClassificationSource):
    """sklearn's handwritten digits (1797 real 8x8 images, values 0..16) as RGB ``image_size`` images."""

    name = "digits"

    def __init__(self, image_size: int = 64):
        super().__init__(None, [str(i) for i in range(10)])
        self.image_size = int(image_size)

    def _load(self) -> dict[str, ClassificationDataset]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        gray = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # (N, 8, 8)
        size = (self.image_size, self.image_size)
        up = np.stack([np.asarray(Image.fromarray(g).resize(size, Image.Resampling.BILINEAR)) for g in gray])
        images = np.repeat(up[..., None], 3, axis=-1)  # (N, S, S, 3) uint8
        full = ArrayImageDataset(images, digits.target.tolist(), self.class_names)
        return {k: full.subset(v) for k, v in fixed_split_60_20_20(full.targets, "the digits").items()}


class SyntheticSource(ClassificationSource):
    """A generated set of :mod:`transferkit.data.synthetic` (``shapes``, ``textures``) at ``image_size``."""

    def __init__(self, kind: str, image_size: int = 64):
        from transferkit.data.synthetic import GENERATORS

        super().__init__(None, GENERATORS[kind][0])
        self.name = kind
        self.image_size = int(image_size)

    def _load(self) -> dict[str, ClassificationDataset]:
        from transferkit.data.synthetic import synthetic_images

        images, labels, names = synthetic_images(self.name, self.image_size)
        full = ArrayImageDataset(images, labels, names)
        return {k: full.subset(v) for k, v in fixed_split_60_20_20(full.targets, f"the {self.name}").items()}


def printable_name(name: str) -> str:
    """A file name as text any output can carry: bytes that are not UTF-8 (held as surrogates by ``os``)
    become ``\\xNN``; a UTF-8 name is returned unchanged."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def list_class_dirs(split_dir: Path) -> list[str]:
    """Sorted class folder names under ``split_dir``.

    Hidden folders (``.ipynb_checkpoints``, ``.git``) are skipped; torchvision's ``find_classes`` would
    count them as classes.
    """
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _fmt_classes(names: Sequence[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


class ImageFolderSource(ClassificationSource):
    """``root/train/<class>/*``, ``root/val/<class>/*`` and optionally ``root/test/<class>/*``.

    Without ``test/`` the test split is the val split (a warning says so). Without ``val/``,
    ``val_fraction`` of train is held out (stratified, fixed seed); without either it is an error.
    The layout is checked when the source is built (file names only; no image is opened).
    """

    name = "imagefolder"

    def __init__(self, root: str | os.PathLike, val_fraction: float | None = None, on_corrupt: str = "error"):
        root = Path(root).expanduser()
        expected = f"expected {root}/train/<class>/<image>, {root}/val/<class>/<image> and optionally test/"
        if not root.exists():
            raise DatasetError(f"dataset folder {root} does not exist ({expected})")
        if not root.is_dir():
            hint = " (for a CSV file use source=csv)" if root.suffix.lower() == ".csv" else ""
            raise DatasetError(f"{root} is not a folder{hint}; {expected}")
        present = [s for s in SPLITS if (root / s).is_dir()]
        if "train" not in present:
            here = list_class_dirs(root)
            hint = (
                f". It has folders {_fmt_classes(here)} directly: if these are the classes, move them into "
                f"{root / 'train'}/ and put held-out images in {root / 'val'}/<class>/"
                if here
                else ""
            )
            raise DatasetError(f"no train/ folder in {root}: {expected}{hint}")
        if "val" not in present and val_fraction is None:
            raise DatasetError(
                f"no val/ folder in {root}: create {root / 'val'}/<class>/ with held-out images, or pass "
                "val_fraction (e.g. 0.1) to hold out part of train/ (stratified by class, fixed seed)"
            )
        if "val" in present and val_fraction is not None:
            logger.warning("%s has a val/ folder; val_fraction=%s is ignored", root, val_fraction)
        if "test" not in present:
            logger.warning(
                "no test/ folder in %s: the test split is the val split (test metrics are not held out)", root
            )

        class_sets: dict[str, list[str]] = {}
        for split in present:
            classes = list_class_dirs(root / split)
            if not classes:
                raise DatasetError(
                    f"{root / split} has no class folders: put each class's images in "
                    f"{root / split}/<class_name>/"
                )
            class_sets[split] = classes
        classes = class_sets["train"]
        for split in present[1:]:
            lacks = sorted(set(classes) - set(class_sets[split]))
            extra = sorted(set(class_sets[split]) - set(classes))
            if lacks or extra:
                parts = [f"{split}/ lacks {lacks}"] if lacks else []
                parts += [f"train/ lacks {extra}"] if extra else []
                raise DatasetError(
                    f"class folders differ between train/ and {split}/ in {root}: {'; '.join(parts)}. Every "
                    "split needs the same class folders: add the missing ones or remove the extra ones"
                )

        self.samples: dict[str, list[tuple[str, int]]] = {}
        seen: dict[
            Path, Path
        ] = {}  # every folder reached, across splits and classes: a link cannot repeat one
        for split in present:
            samples = [
                (str(p), i) for i, c in enumerate(classes) for p in images_under(root / split / c, root, seen)
            ]
            counts = np.bincount([t for _, t in samples], minlength=len(classes))
            empty = [classes[i] for i in np.flatnonzero(counts == 0)]
            if empty:
                folder = root / split / empty[0]
                more = (
                    f" (and {len(empty) - 1} more empty class folders in {split}/)" if len(empty) > 1 else ""
                )
                raise DatasetError(
                    f"class folder {folder} has no images{more}; image extensions are "
                    f"{', '.join(IMG_EXTENSIONS)}. Add images, or delete the class folder from every split"
                )
            self.samples[split] = samples
        # a folder name that is not UTF-8 is still a class: its undecodable bytes are shown as \xNN (reports,
        # plots, JSON), while the files are read through the names the file system gave
        super().__init__(root, [printable_name(c) for c in classes])
        self.val_fraction = val_fraction
        self.on_corrupt = on_corrupt

    def _load(self) -> dict[str, ClassificationDataset]:
        def ds(samples: list[tuple[str, int]]) -> ImageFileDataset:
            return ImageFileDataset(samples, self.class_names, None, self.on_corrupt, str(self.path))

        train = ds(self.samples["train"])
        if "val" in self.samples:
            val = ds(self.samples["val"])
        else:
            keep, held = stratified_split(train.targets, self.val_fraction, what=f"{self.path}/train")
            train, val = train.subset(keep), train.subset(held)
        test = ds(self.samples["test"]) if "test" in self.samples else val
        return {"train": train, "val": val, "test": test}


@dataclass
class CsvRow:
    """One data row of a classification CSV (``line`` is the 1-based line number in the file)."""

    line: int
    path: Path
    label: str
    split: str | None


def read_csv_rows(csv_path: str | os.PathLike, check_files: bool = True) -> tuple[list[CsvRow], list[str]]:
    """Parse a ``path,label[,split]`` CSV: ``(rows, problems)``.

    A header without ``path``/``label`` raises :class:`DatasetError`. Row problems (empty values, unknown
    split, missing files when ``check_files``) do not raise; they come back as ``"line N: ..."`` messages
    and the row is left out. Paths are relative to the CSV's folder unless absolute.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DatasetError(f"CSV file {csv_path} does not exist; pass a CSV with header path,label[,split]")
    base = csv_path.parent
    rows: list[CsvRow] = []
    problems: list[str] = []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in ("path", "label") if c not in header]
        if missing:
            raise DatasetError(
                f"{csv_path} line 1: the header needs columns path,label[,split] (missing {missing}; found "
                f"{reader.fieldnames or 'an empty file'})"
            )
        reader.fieldnames = header
        has_split = "split" in header
        for record in reader:
            line = reader.line_num
            path = (record.get("path") or "").strip()
            label = (record.get("label") or "").strip()
            split = (record.get("split") or "").strip().lower() if has_split else None
            if None in record:
                problems.append(f"line {line}: more values than header columns")
                continue
            if not path or not label:
                problems.append(f"line {line}: empty {'path' if not path else 'label'}")
                continue
            if has_split and split not in SPLITS:
                problems.append(f"line {line}: split must be one of {list(SPLITS)}, got '{split}'")
                continue
            full = Path(path).expanduser()
            full = full if full.is_absolute() else base / full
            if check_files and not full.is_file():
                problems.append(f"line {line}: file not found: {full}")
                continue
            rows.append(CsvRow(line, full, label, split))
    return rows, problems


class CsvSource(ClassificationSource):
    """A CSV with header ``path,label[,split]`` (paths relative to the CSV's folder).

    Class names are the sorted distinct labels. Without a ``split`` column: fixed stratified 60/20/20. With
    one: no ``test`` rows -> test = val (warning); no ``val`` rows -> ``val_fraction`` of train or an error.
    """

    name = "csv"

    def __init__(
        self, csv_path: str | os.PathLike, val_fraction: float | None = None, on_corrupt: str = "error"
    ):
        rows, problems = read_csv_rows(csv_path)
        csv_path = Path(csv_path).expanduser()
        if problems:
            more = (
                f" ({len(problems) - 5} more problems; `transferkit data check {csv_path}` lists them all)"
                if len(problems) > 5
                else ""
            )
            raise DatasetError(
                f"{csv_path}: " + "; ".join(problems[:5]) + more + ". Fix or remove these rows"
            )
        if not rows:
            raise DatasetError(
                f"{csv_path} has a header but no rows; add one row per image: path,label[,split]"
            )
        classes = sorted({r.label for r in rows})
        super().__init__(csv_path, classes)
        self.has_split = rows[0].split is not None
        self.val_fraction = val_fraction
        self.on_corrupt = on_corrupt
        idx = {c: i for i, c in enumerate(classes)}
        self.rows = rows
        self._samples = [(str(r.path), idx[r.label]) for r in rows]
        if self.has_split:
            present = {r.split for r in rows}
            if "train" not in present:
                raise DatasetError(
                    f"{csv_path} has a split column but no 'train' rows; mark training rows train"
                )
            if "val" not in present and val_fraction is None:
                raise DatasetError(
                    f"{csv_path} has no 'val' rows: mark held-out rows with split=val, or pass val_fraction "
                    "(e.g. 0.1) to hold out part of train (stratified by class, fixed seed)"
                )
            if "test" not in present:
                logger.warning("%s has no 'test' rows: the test split is the val split", csv_path)
            for split in sorted(present - {"train"}):
                labels = {r.label for r in rows if r.split == split}
                train_labels = {r.label for r in rows if r.split == "train"}
                if labels != train_labels:
                    raise DatasetError(
                        f"{csv_path}: classes differ between train and {split} rows ({split} lacks "
                        f"{sorted(train_labels - labels)}, train lacks {sorted(labels - train_labels)}); "
                        "every split needs every class"
                    )
        elif val_fraction is not None:
            logger.warning(
                "%s has no split column: using the fixed 60/20/20 split; val_fraction ignored", csv_path
            )

    def _load(self) -> dict[str, ClassificationDataset]:
        full = ImageFileDataset(self._samples, self.class_names, None, self.on_corrupt, str(self.path))
        if not self.has_split:
            return {k: full.subset(v) for k, v in fixed_split_60_20_20(full.targets, str(self.path)).items()}
        by_split = {s: [i for i, r in enumerate(self.rows) if r.split == s] for s in SPLITS}
        train = full.subset(by_split["train"])
        if by_split["val"]:
            val = full.subset(by_split["val"])
        else:
            keep, held = stratified_split(train.targets, self.val_fraction, what=f"train rows of {self.path}")
            train, val = train.subset(keep), train.subset(held)
        test = full.subset(by_split["test"]) if by_split["test"] else val
        return {"train": train, "val": val, "test": test}


class CifarSource(ClassificationSource):
    """CIFAR-10/100 from torchvision's on-disk format under ``path`` (downloaded there if ``download``).

    Train/val = the official training set split ``1 - val_fraction`` / ``val_fraction`` (stratified, fixed
    seed); test = the official test set. Images stay 32x32 in memory; the transform resizes them.
    """

    def __init__(self, name: str, path: str | os.PathLike | None, val_fraction: float | None, download: bool):
        from torchvision.datasets import CIFAR10, CIFAR100

        self.name = name
        self.tv_class = CIFAR10 if name == "cifar10" else CIFAR100
        if path is None:
            raise DatasetError(
                f"source {name} needs path: the folder holding {self.tv_class.base_folder}/ (or where to "
                "download it with download=true)"
            )
        root = Path(path).expanduser()
        if root.name == self.tv_class.base_folder:  # the user pointed at the extracted folder itself
            root = root.parent
        super().__init__(root, CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES)
        self.val_fraction = 0.1 if val_fraction is None else val_fraction
        self.download = download
        if not download and not (self.path / self.tv_class.base_folder).is_dir():
            raise DatasetError(self._missing_message())

    def _missing_message(self, detail: str = "") -> str:
        archive = self.tv_class.filename
        return (
            f"{self.name} files not found{detail}: place the extracted {archive} "
            f"({self.tv_class.base_folder}/) under {self.path}, or pass download=true (needs internet)"
        )

    def _build(self, train: bool, download: bool = False) -> Any:
        try:
            return self.tv_class(str(self.path), train=train, download=download)
        except (RuntimeError, OSError) as e:  # missing/corrupt files, or no network while downloading
            raise DatasetError(self._missing_message(f" or unusable ({e})")) from None

    def prepare(self) -> None:
        if self.download:
            self._build(train=True, download=True)  # one archive holds both the train and test sets

    def _load(self) -> dict[str, ClassificationDataset]:
        train_tv, test_tv = self._build(train=True), self._build(train=False)
        if list(train_tv.classes) != self.class_names:
            raise DatasetError(
                f"{self.path}/{self.tv_class.base_folder} does not hold {self.name} (its classes differ)"
            )
        full = ArrayImageDataset(train_tv.data, train_tv.targets, self.class_names)
        keep, held = stratified_split(full.targets, self.val_fraction, what=f"the {self.name} training set")
        test = ArrayImageDataset(test_tv.data, test_tv.targets, self.class_names)
        return {"train": full.subset(keep), "val": full.subset(held), "test": test}


def build_source(
    source: str,
    path: str | os.PathLike | None = None,
    *,
    image_size: int = 64,
    val_fraction: float | None = None,
    on_corrupt: str = "error",
    download: bool = False,
) -> ClassificationSource:
    """Resolve a data source by name; raises :class:`UserError` on an unknown name or a bad layout."""
    if source not in SOURCES:
        raise UserError(f"unknown data.source '{source}'; choose one of {list(SOURCES)}")
    if on_corrupt not in ON_CORRUPT:
        raise UserError(f"data.on_corrupt must be one of {list(ON_CORRUPT)}, got '{on_corrupt}'")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise UserError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if source == "digits":
        if path is not None:
            logger.warning("source digits is built in; path=%s is ignored", path)
        if val_fraction is not None:
            logger.warning("source digits has a fixed 60/20/20 split; val_fraction is ignored")
        return DigitsSource(image_size)
    if source in ("shapes", "textures"):
        if path is not None:
            logger.warning("source %s is built in; path=%s is ignored", source, path)
        if val_fraction is not None:
            logger.warning("source %s has a fixed 60/20/20 split; val_fraction is ignored", source)
        return SyntheticSource(source, image_size)
    if source in ("cifar10", "cifar100"):
        return CifarSource(source, path, val_fraction, download)
    if path is None:
        layout = "a folder with train/<class>/ and val/<class>/" if source == "imagefolder" else "a CSV file"
        raise UserError(f"source {source} needs path ({layout})")
    if source == "imagefolder":
        return ImageFolderSource(path, val_fraction, on_corrupt)
    return CsvSource(path, val_fraction, on_corrupt)
