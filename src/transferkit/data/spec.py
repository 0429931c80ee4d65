"""``DataSpec``: the one identity of an image-classification dataset across compare, rank, the ranker, the
benchmark and the results table.

A spec is the :class:`~transferkit.data.ImageClassificationDataModule` init arguments (``init_args``) plus an
optional subset of its classes. ``build()`` makes the datamodule; ``key()`` is a content hash (the hash of the
train/val/test fingerprints and the class subset, so the same images at the same size give the same key
whatever the run); ``name()`` is readable (``digits``, ``imagefolder:flowers``, ``digits[0,3,5]``). Rows of the
results table carry all three, so any command can find, rebuild and recognise a dataset it reads about.

On the command line a spec is ``--data.<option>`` (every datamodule option) and ``--data.classes``, or the
shorthand ``--data X`` (:func:`expand_data_shorthand`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.data.options import SOURCES, SPLITS, DataOptions
from transferkit.errors import UserError

#: shorthand sources of ``--data X``
DATA_SOURCES = SOURCES


@dataclass
class DataSpec:
    """A dataset transferkit can rebuild and recognise.

    Args:
        init_args: keyword arguments of ``ImageClassificationDataModule`` (``source``, ``path``, ``image_size``...).
        classes: keep only these class names (a class-subset task); None = every class.
    """

    init_args: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        self.init_args = dict(self.init_args)
        unknown = sorted(set(self.init_args) - set(DataOptions.__dataclass_fields__))
        if unknown:
            raise UserError(
                f"unknown data option(s) {unknown}; the options are {list(DataOptions.__dataclass_fields__)}"
            )
        DataOptions(**self.init_args).check()  # bad values fail here, before torch loads
        if self.classes is not None:
            self.classes = [str(c) for c in self.classes]
            if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
                raise UserError(f"data.classes must name at least 2 distinct classes, got {self.classes}")
        self._datamodule: Any = None
        self._key: str | None = None

    # ------------------------------------------------------------------ building
    def build(self) -> Any:
        """The datamodule (built once per spec object; ``setup`` done)."""
        if self._datamodule is None:
            from transferkit.data.datamodule import ImageClassificationDataModule

            dm = ImageClassificationDataModule(**self.init_args)
            dm.prepare_data()
            dm.setup("fit")
            if self.classes is not None:
                missing = [c for c in self.classes if c not in dm.class_names]
                if missing:
                    raise UserError(
                        f"data.classes {missing} are not classes of the dataset; it has "
                        f"{dm.class_names[:20]}{'...' if len(dm.class_names) > 20 else ''}"
                    )
            self._datamodule = dm
        return self._datamodule

    @property
    def image_size(self) -> int:
        return int(self.init_args.get("image_size") or DataOptions.image_size)

    @property
    def source(self) -> str:
        return str(self.init_args.get("source") or DataOptions.source)

    def subset_indices(self, split: str, datamodule: Any = None) -> np.ndarray:
        """Indices of ``split`` items whose class is in ``classes`` (all items when there is no subset)."""
        dm = datamodule if datamodule is not None else self.build()
        targets = np.asarray(dm.dataset(split).targets, dtype=np.int64)
        if self.classes is None:
            return np.arange(len(targets))
        keep = [list(dm.class_names).index(c) for c in self.classes]
        return np.flatnonzero(np.isin(targets, keep))

    def class_indices(self, datamodule: Any = None) -> list[int]:
        """Indices (into the dataset's class names) of the classes this spec keeps."""
        dm = datamodule if datamodule is not None else self.build()
        names = list(dm.class_names)
        return list(range(len(names))) if self.classes is None else [names.index(c) for c in self.classes]

    def with_classes(self, classes: Sequence[str] | None) -> DataSpec:
        """The same data restricted to ``classes`` (sharing the built datamodule)."""
        spec = DataSpec(dict(self.init_args), None if classes is None else list(classes))
        spec._datamodule = self._datamodule
        return spec

    # ------------------------------------------------------------------ identity
    def key(self) -> str:
        """Content hash: blake2b of the train/val/test fingerprints (image identities, labels, image size, eval
        transform) and the class subset."""
        if self._key is None:
            dm = self.build()
            fps = {s: dm.fingerprint(s) for s in SPLITS}
            payload: dict[str, Any] = {"splits": fps}
            if self.classes is not None:
                payload["classes"] = list(self.classes)
            blob = json.dumps(payload, sort_keys=True).encode()
            self._key = hashlib.blake2b(blob, digest_size=16).hexdigest()
        return self._key

    def name(self) -> str:
        """Readable name: the source (and folder name for folder/file sources), then the class subset."""
        path = self.init_args.get("path")
        name = self.source if not path else f"{self.source}:{Path(str(path)).name}"
        if self.classes is not None:
            name += "[" + ",".join(self.classes) + "]"
        return name

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``from_dict`` reads it back)."""
        out: dict[str, Any] = {"init_args": _jsonable(self.init_args)}
        if self.classes is not None:
            out["classes"] = list(self.classes)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        if not isinstance(d, dict) or not isinstance(d.get("init_args"), dict):
            raise UserError(
                f"not a dataset spec (expected {{'init_args': {{...}}, 'classes': [...]}}): {d!r}"
            )
        return cls(dict(d["init_args"]), d.get("classes"))

    def describe(self) -> dict[str, Any]:
        """Identity and facts of the dataset for results and reports (builds the datamodule)."""
        dm = self.build()
        counts = {s: int(len(self.subset_indices(s, dm))) for s in SPLITS}
        classes = list(self.classes) if self.classes is not None else list(dm.class_names)
        return {
            "key": self.key(),
            "name": self.name(),
            "spec": self.to_dict(),
            "source": self.source,
            "path": self.init_args.get("path"),
            "image_size": int(dm.image_size),
            "num_classes": len(classes),
            "class_names": classes,
            "counts": counts,
            "test_is_val": dm.data_source.splits()["test"] is dm.data_source.splits()["val"],
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def expand_data_shorthand(argv: list[str]) -> list[str]:
    """``--data X`` as a shorthand for the data section, the same on every command that takes ``--data``:

    - a source name (``digits``, ``cifar10``...) -> ``--data.source X``;
    - ``SOURCE:PATH`` (``cifar10:~/data/cifar``) -> ``--data.source SOURCE --data.path PATH``;
    - an existing folder -> an ImageFolder; a ``.csv`` file -> a CSV dataset;
    - a YAML/JSON file or an inline mapping -> the whole data section (jsonargparse).
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg == "--data" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--data="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        source, _, rest = value.partition(":")
        if value in DATA_SOURCES:
            out += ["--data.source", value]
        elif source in DATA_SOURCES and rest:
            out += ["--data.source", source, "--data.path", rest]
        elif value.lstrip().startswith("{") or value.lower().endswith((".yaml", ".yml", ".json")):
            out += ["--data", value]
        elif value.lower().endswith(".csv"):
            out += ["--data.source", "csv", "--data.path", value]
        elif Path(value).expanduser().is_dir():
            out += ["--data.source", "imagefolder", "--data.path", value]
        else:
            raise UserError(
                f"--data '{value}' is neither a data source ({', '.join(DATA_SOURCES)}), SOURCE:PATH, an existing "
                "image folder nor a .csv file; check the path, or use --data.source/--data.path"
            )
    return out
