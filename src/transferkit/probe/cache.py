"""Feature extraction with an on-disk cache: a frozen backbone runs once per image, ever.

Public API (stable; used by the probes, kNN, ``transferkit compare`` and ``transferkit rank``)::

    fs = get_features("minilm-l6", dm, "train")                 # (N, D) final-layer features, default pooling
    fs = get_features(bb, dm, "val", layers=4, pooling="mean")  # (N, 4, D): mean-pooled last 4 blocks
    fs.features, fs.labels, fs.metadata                         # float32 (memmap), int64 (N,), dict
    fs.view(pooling="cls", layers=1)                            # another view of the same cached pass

What is cached
    One *entry* per (backbone, weights, data split, transform, extraction settings) holds, for every image, a
    few **token summaries** of the last ``L`` blocks: ``summaries.npy`` of shape ``(N, L, S, D)`` (float16 by
    default, float32 or bfloat16 with ``storage``; read back as float32),
    where the ``S`` summaries are among ``cls`` (the first prefix token), ``mean`` (mean of the non-prefix
    tokens) and ``last`` (the last token). Every pooling of :mod:`transferkit.backbones.base` is a function of
    these (``cls+mean`` concatenates two), so one backbone pass serves all poolings and all "last-k blocks"
    probes asked for at extraction time (``extra_poolings`` stores more summaries in the same pass). A
    request that a stored entry covers (same key, ``L`` and summaries at least those asked) is served from
    it without running the backbone.

Cache key
    ``blake2b`` of: the backbone's name, class, pretrained flag and simple attributes (patch size,
    position-embedding handling, normalisation mean/std, input size...), a digest of its weights (every
    parameter and buffer, bytes and shapes), the datamodule's ``fingerprint(split)`` (image identities,
    labels, image size and eval transform), the split name, the compute precision, the storage format and the
    cache format version.
    Changing any of these is a miss; the key never depends on the run, the time or the batch size.

Layout and atomicity
    ``<cache_dir>/<backbone-slug>/<key>/L<L>-<summaries>/{summaries.npy, labels.npy, meta.json}``. An entry
    is written in a temporary folder next to it and renamed into place once complete, so a crash or a
    concurrent run never leaves a half-written entry (``meta.json`` is written last and read first).

Default cache dir: ``$TRANSFERKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/transferkit/features``, else
``~/.cache/transferkit/features``.

Random-init parts (a ``:random`` twin, a language model's new PatchEmbed) are built under a fixed seed
(``seed``, default 0) when :func:`get_features` builds the backbone from a name, so "the random twin" is one
reproducible model whose features are cached like any other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from transferkit.backbones import BackboneConfig, resolve_backbone
from transferkit.backbones.base import Backbone
from transferkit.errors import UserError
from transferkit.probe.distributed import extract_on_ranks, extract_sharded, launched_fabric, resolve_mode
from transferkit.probe.options import PRECISIONS, ExtractOptions  # noqa: F401  (re-exported)
from transferkit.utils.devices import (  # noqa: F401  (cpu_has_fast_bf16 re-exported)
    cpu_has_fast_bf16,
    default_device,
    resolve_device,
    resolve_precision,
)
from transferkit.utils.digest import tensors_digest
from transferkit.utils.io import atomic_write_json, file_lock

log = logging.getLogger(__name__)

CACHE_VERSION = 2
SUMMARIES = ("cls", "mean", "last")
#: summaries each pooling needs, in the order they are concatenated
POOLING_SUMMARIES: dict[str, tuple[str, ...]] = {
    "cls": ("cls",),
    "mean": ("mean",),
    "last": ("last",),
    "cls+mean": ("cls", "mean"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
assert PRECISIONS == ("auto", *DTYPES)
#: how stored summaries are kept on disk (bfloat16 as its raw 16 bits, numpy has no bfloat16)
STORAGES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
FLOAT16_MAX = 65504.0


class StorageOverflow(Exception):
    """A summary does not fit the float16 storage (|x| > 65504)."""


def to_storage(x: torch.Tensor, storage: str) -> np.ndarray:
    """Float tensor -> numpy array in the ``storage`` format (raises :class:`StorageOverflow` for float16
    values beyond its range)."""
    if storage == "float32":
        return x.float().cpu().numpy()
    if storage == "float16":
        if float(x.abs().max()) > FLOAT16_MAX:
            raise StorageOverflow(float(x.abs().max()))
        return x.to(torch.float16).cpu().numpy()
    return x.to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.uint16)


def from_storage(a: np.ndarray, storage: str) -> np.ndarray:
    """Stored array -> float32 (no copy for float32 storage)."""
    if storage == "float32":
        return a if a.dtype == np.float32 else a.astype(np.float32)
    if storage == "float16":
        return a.astype(np.float32)
    raw = torch.from_numpy(np.ascontiguousarray(a).view(np.int16))
    return raw.view(torch.bfloat16).float().numpy()


class FeatureDataModule(Protocol):
    """What :func:`get_features` needs from a datamodule (``ImageClassificationDataModule`` has it all)."""

    image_size: int

    @property
    def class_names(self) -> list[str]: ...

    def dataset(self, split: str) -> Any: ...

    def fingerprint(self, split: str) -> str: ...


# ---------------------------------------------------------------------------------------------- results
@dataclass
class FeatureSet:
    """Features of one split from one backbone: a view (pooling, last-k blocks) of the stored summaries.

    Attributes:
        labels: ``(N,)`` int64 class indices into ``metadata['class_names']``.
        metadata: backbone (name, family, pretrained, num_params, embed_dim, weights digest), data (split,
            fingerprint, image size, class names), extraction (pooling, layers, throughput in images/s,
            seconds, device, batch size, precision, storage), ``cache_hit`` and ``key``.
        path: the cache entry folder (None when extracted with ``cache=False``).

    :attr:`features` materialises the view as float32 (a read-only memmap view, no copy, for float32 storage
    and one summary); :meth:`take` and :meth:`chunks` read rows of it without holding all of it, which the
    streaming probes use so their memory does not grow with N.
    """

    labels: np.ndarray
    metadata: dict[str, Any]
    path: Path | None = None
    _summaries: np.ndarray | None = field(default=None, repr=False)  # (N, L, S, D) in the storage format
    _features: np.ndarray | None = field(default=None, repr=False)

    @property
    def storage(self) -> str:
        return str(self.metadata.get("storage", "float32"))

    @property
    def num_samples(self) -> int:
        return int(len(self.labels))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`features` (without materialising it)."""
        assert self._summaries is not None
        n, _, _, d = self._summaries.shape
        width = d * len(POOLING_SUMMARIES[self.pooling])
        return (n, width) if self.layers is None else (n, int(self.layers), width)

    @property
    def dim(self) -> int:
        return int(self.shape[-1])

    @property
    def pooling(self) -> str:
        return str(self.metadata["pooling"])

    @property
    def layers(self) -> int | None:
        return self.metadata["layers"]

    @property
    def features(self) -> np.ndarray:
        """``(N, D)`` (``layers=None``) or ``(N, L, D)`` (the last ``L`` blocks, input side first) float32."""
        if self._features is None:
            assert self._summaries is not None, "FeatureSet was not created by get_features"
            derived = _derive(self._summaries, self.metadata["stored_summaries"], self.pooling, self.layers)
            self._features = from_storage(derived, self.storage)
        return self._features

    def take(self, index: np.ndarray | slice) -> np.ndarray:
        """Rows ``index`` of :attr:`features` (float32), read from the stored summaries."""
        assert self._summaries is not None
        if self._features is not None:
            return np.asarray(self._features[index])
        rows = self._summaries[index]
        return from_storage(
            _derive(rows, self.metadata["stored_summaries"], self.pooling, self.layers), self.storage
        )

    def chunks(self, size: int = 8192) -> Iterator[np.ndarray]:
        """:attr:`features` in consecutive blocks of ``size`` rows (float32)."""
        for start in range(0, self.num_samples, size):
            yield self.take(slice(start, start + size))

    @property
    def available_poolings(self) -> list[str]:
        """Poolings :meth:`view` can derive from the stored summaries."""
        stored = set(self.metadata["stored_summaries"])
        return [p for p, need in POOLING_SUMMARIES.items() if set(need) <= stored]

    @property
    def stored_layers(self) -> int:
        return int(self.metadata["stored_layers"])

    def view(self, pooling: str | None = None, layers: int | None = None) -> FeatureSet:
        """Another pooling / number of last blocks of the same cached pass (no backbone run).

        ``layers=None`` is the final layer ``(N, D)``; ``layers=k`` the last ``k`` blocks ``(N, k, D)``.
        """
        assert self._summaries is not None, "FeatureSet was not created by get_features"
        pooling = pooling or self.metadata["default_pooling"]
        if pooling not in self.available_poolings:
            raise UserError(
                f"pooling '{pooling}' is not stored for {self.metadata['backbone']}; available: "
                f"{self.available_poolings}. Pass it to get_features(..., pooling=...) or extra_poolings"
            )
        if layers is not None and not 1 <= layers <= self.stored_layers:
            raise UserError(f"asked for the last {layers} blocks; this entry stores {self.stored_layers}")
        meta = {**self.metadata, "pooling": pooling, "layers": layers}
        return FeatureSet(self.labels, meta, self.path, self._summaries)

    def tensor(self, device: str | torch.device | None = None) -> torch.Tensor:
        """The features as a float32 torch tensor (copied into memory)."""
        return torch.from_numpy(np.ascontiguousarray(self.features, dtype=np.float32)).to(device or "cpu")

    def label_tensor(self, device: str | torch.device | None = None) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.labels, dtype=np.int64)).to(device or "cpu")


def _derive(summaries: np.ndarray, stored: Sequence[str], pooling: str, layers: int | None) -> np.ndarray:
    """(N, L, S, D) summaries -> (N, D) or (N, layers, D') features for ``pooling``."""
    idx = [list(stored).index(s) for s in POOLING_SUMMARIES[pooling]]
    lsel = slice(-1, None) if layers is None else slice(-layers, None)
    if len(idx) == 1:
        out = summaries[:, lsel, idx[0], :]
    else:
        out = np.concatenate([summaries[:, lsel, i, :] for i in idx], axis=-1)
    return out[:, 0] if layers is None else out


# ---------------------------------------------------------------------------------------------- keys
def default_cache_dir() -> Path:
    """``$TRANSFERKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/transferkit/features``, else
    ``~/.cache/transferkit/features``."""
    env = os.environ.get("TRANSFERKIT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "transferkit" / "features"


def weights_digest(module: torch.nn.Module) -> str:
    """:func:`~transferkit.utils.digest.tensors_digest` of every parameter and buffer of ``module``."""
    return tensors_digest([*module.named_parameters(), *module.named_buffers()])


def backbone_signature(backbone: Backbone) -> dict[str, Any]:
    """The backbone's identity apart from its weights: name, class and every simple attribute (patch size,
    pooling default, position-embedding handling, mean/std, input size...)."""
    simple = (bool, int, float, str, type(None))
    attrs = {}
    for k, v in sorted(vars(backbone).items()):
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, simple) or (isinstance(v, tuple) and all(isinstance(x, simple) for x in v)):
            attrs[k] = list(v) if isinstance(v, tuple) else v
    return {"class": f"{type(backbone).__module__}.{type(backbone).__qualname__}", "attrs": attrs}


def feature_key(
    backbone: Backbone, fingerprint: str, split: str, precision: str, digest: str | None = None,
    storage: str = "float32",
) -> str:  # fmt: skip
    """The cache key (hex) of ``backbone``'s features on the split with ``fingerprint``."""
    payload = {
        "version": CACHE_VERSION,
        "backbone": backbone_signature(backbone),
        "weights": digest or weights_digest(backbone),
        "data": fingerprint,
        "split": split,
        "precision": precision,
        "storage": storage,
    }
    return hashlib.blake2b(json.dumps(payload, sort_keys=True).encode(), digest_size=16).hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80] or "backbone"


# ---------------------------------------------------------------------------------------------- building
def _summaries_for(backbone: Backbone, poolings: Sequence[str]) -> list[str]:
    need: set[str] = set()
    for p in poolings:
        backbone.check_pooling(p)
        need |= set(POOLING_SUMMARIES[p])
    return [s for s in SUMMARIES if s in need]


def _summarize(backbone: Backbone, tokens: torch.Tensor, summaries: Sequence[str]) -> torch.Tensor:
    """tokens (B, N, D) -> (B, S, D): each summary is the backbone's own pooling of that name."""
    return torch.stack([backbone.pool(tokens, s) for s in summaries], dim=1)


# ---------------------------------------------------------------------------------------------- cache io
def _entry_name(layers: int | None, summaries: Sequence[str]) -> str:
    """``final-cls+mean`` (the final output) or ``L4-cls+mean`` (the last 4 blocks)."""
    return f"{'final' if layers is None else f'L{layers}'}-{'+'.join(summaries)}"


def _parse_entry_name(name: str) -> tuple[int | None, list[str]] | None:
    m = re.fullmatch(r"(final|L(\d+))-([a-z+]+)", name)
    if not m:
        return None
    return (None if m.group(1) == "final" else int(m.group(2))), m.group(3).split("+")


def _load_entry(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """(summaries memmap, labels, meta) of a complete entry, or None when missing/unreadable."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        summaries = np.load(path / "summaries.npy", mmap_mode="r")
        labels = np.load(path / "labels.npy")
    except (OSError, ValueError) as e:
        if path.exists():
            log.warning("ignoring unreadable feature-cache entry %s (%s)", path, e)
        return None
    if summaries.ndim != 4 or len(labels) != summaries.shape[0] or meta.get("version") != CACHE_VERSION:
        log.warning("ignoring inconsistent feature-cache entry %s", path)
        return None
    return summaries, labels, meta


LOCK_FILE = ".lock"


def _remove_orphans(key_dir: Path) -> None:
    """Temporary entry folders under ``key_dir`` left by a killed extraction (called with the key's lock held,
    so no live writer owns one)."""
    for child in key_dir.iterdir():
        if child.is_dir() and child.name.startswith(".") and child.name.endswith(".tmp"):
            log.info("removing %s, left by an extraction that did not finish", child)
            shutil.rmtree(child, ignore_errors=True)


def _find_entry(
    key_dir: Path, layers: int | None, summaries: Sequence[str], *, blocks_for_final: bool = False
) -> Path | None:
    """The smallest complete entry under ``key_dir`` that stores ``summaries`` for the final output
    (``layers=None``: ``final-*`` entries, or with ``blocks_for_final`` only ``L*`` entries, whose last block
    stands for it) or for at least the last ``layers`` blocks (``L*`` entries)."""
    if not key_dir.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for child in key_dir.iterdir():
        parsed = _parse_entry_name(child.name)
        if parsed is None or not (child / "meta.json").is_file():
            continue
        n, stored = parsed
        if not set(summaries) <= set(stored):
            continue
        if layers is None and blocks_for_final:
            if n is None:
                continue
        elif (layers is None) != (n is None) or (layers is not None and n < layers):
            continue
        size = (n or 1) * len(stored)
        if best is None or size < best[0]:
            best = (size, child)
    return best[1] if best else None


def _progress(total: int, description: str, enabled: bool) -> Any:
    """A rich progress bar on stderr, only when stderr is a terminal (logs and CI output stay clean)."""
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        return nullcontext(None)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


# ---------------------------------------------------------------------------------------------- extraction
@torch.inference_mode()
def extract_summaries(
    backbone: Backbone,
    dataset: Any,
    *,
    layers: int | None,
    summaries: Sequence[str],
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "float32",
    storage: str = "float32",
    allocate: Callable[[tuple[int, ...], Any], np.ndarray] | None = None,
    progress: bool = True,
    description: str = "extract",
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Run ``backbone`` once over ``dataset`` (no augmentation, ``inference_mode``, batched).

    Returns ``(summaries (N, L, S, D) in the ``storage`` format, labels (N,) int64, timing)`` where
    ``L = layers or 1`` and
    ``timing`` has ``seconds`` (wall time of the whole pass, data loading included) and ``images_per_s``
    (steady state: images after the first batch over the time after it, data loading included).
    ``layers=None`` uses ``forward_features`` (the final output); ``layers=k`` the last k blocks from
    ``forward_intermediates``; ``precision`` is the autocast dtype (``float32``: none). ``allocate(shape,
    dtype)`` may return the ``(len(dataset), L, S, D)`` array to write into (a memmap: nothing proportional
    to N is held in memory; called once the width is known from the first batch). Images skipped as
    unreadable (``on_corrupt='skip'``) are dropped, so ``N`` can be smaller than ``len(dataset)``. A value
    beyond float16's range raises :class:`StorageOverflow` (the caller stores that entry in float32).
    """
    if precision not in DTYPES:
        raise UserError(f"unknown precision '{precision}'; choose one of {list(DTYPES)}")
    if storage not in STORAGES:
        raise UserError(f"unknown storage '{storage}'; choose one of {list(STORAGES)}")
    device = torch.device(device)
    was_training = backbone.training
    backbone.eval().to(device)
    try:
        return _extract_loop(
            backbone,
            dataset,
            layers,
            summaries,
            batch_size,
            num_workers,
            device,
            precision,
            storage,
            allocate,
            progress,
            description,
        )
    finally:
        backbone.train(was_training)


def _extract_loop(
    backbone: Backbone,
    dataset: Any,
    layers: int | None,
    summaries: Sequence[str],
    batch_size: int,
    num_workers: int,
    device: torch.device,
    precision: str,
    storage: str,
    allocate: Callable[[tuple[int, ...], Any], np.ndarray] | None,
    progress: bool,
    description: str,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    from transferkit.data.sources import collate_drop_none

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_drop_none,
        pin_memory=device.type == "cuda",
    )
    n_total = len(dataset)
    n_layers = layers or 1
    autocast = (
        torch.autocast(device.type, dtype=DTYPES[precision]) if precision != "float32" else nullcontext()
    )
    labels = np.empty(n_total, dtype=np.int64)
    out: np.ndarray | None = None
    filled = 0
    warm: tuple[float, int] | None = None
    start = time.perf_counter()
    with _progress(n_total, description, progress) as bar:
        task = bar.add_task(description, total=n_total, rate="") if bar is not None else None
        for batch in loader:
            if batch is None:
                continue
            images, targets = batch
            images = images.to(device, non_blocking=True)
            with autocast:
                if layers is None:
                    token_list = [backbone.forward_features(images)]
                else:
                    token_list = backbone.forward_intermediates(images, layers)
            dims = {t.shape[-1] for t in token_list}
            if len(dims) != 1:
                raise UserError(
                    f"the last {layers} blocks of '{backbone.name}' have different widths {sorted(dims)} "
                    "(a hierarchical model); ask for fewer layers (layers=None or 1)"
                )
            batch_out = torch.stack(
                [_summarize(backbone, t, summaries) for t in token_list], dim=1
            )  # (B, L, S, D)
            b = batch_out.shape[0]
            if out is None:
                shape = (n_total, n_layers, len(summaries), int(batch_out.shape[-1]))
                dt = STORAGES[storage]
                out = allocate(shape, dt) if allocate is not None else np.empty(shape, dtype=dt)
            out[filled : filled + b] = to_storage(batch_out, storage)
            labels[filled : filled + b] = targets.numpy()
            filled += b
            if warm is None:  # steady-state throughput excludes the first batch (allocation, lazy init)
                warm = (time.perf_counter(), filled)
            if bar is not None:
                rate = filled / max(time.perf_counter() - start, 1e-9)
                bar.update(task, advance=len(targets), rate=f"{rate:,.0f} img/s")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if out is None:
        raise UserError(f"no readable image in the dataset given to '{description}'")
    end = start + seconds
    if warm is not None and filled > warm[1] and end > warm[0]:
        rate = (filled - warm[1]) / (end - warm[0])
    else:
        rate = filled / max(seconds, 1e-9)
    timing = {"seconds": seconds, "images_per_s": rate, "num_images": filled}
    return out[:filled], labels[:filled], timing


def timing_batch(
    backbone: Backbone,
    datamodule: FeatureDataModule,
    split: str,
    batch_size: int,
    device: str | torch.device | None,
    precision: str,
) -> tuple[torch.Tensor, torch.device, str, Any]:
    """What a timed section runs on: the first ``batch_size`` readable images of ``split`` ``(B, 3, H, W)`` on the
    device, the device, the resolved precision and its autocast context (``backbone`` moved there, eval mode)."""
    dev = resolve_device(str(device) if device is not None else "auto")
    ds = datamodule.dataset(split)
    items = (ds[i] for i in range(min(batch_size, len(ds))))
    images = torch.stack([it[0] for it in items if it is not None]).to(dev)  # None: an unreadable image
    backbone.to(dev).eval()
    precision = resolve_precision(precision, dev)
    autocast = torch.autocast(dev.type, dtype=DTYPES[precision]) if precision != "float32" else nullcontext()
    return images, dev, precision, autocast


def measure_throughput(
    backbone: Backbone,
    datamodule: FeatureDataModule,
    *,
    split: str = "test",
    batch_size: int = 32,
    device: str | torch.device | None = None,
    precision: str = "float32",
    warmup: int = 2,
    repeats: int = 5,
) -> dict[str, Any]:
    """Forward throughput of ``backbone`` (``forward_features`` under ``inference_mode``, ``precision`` autocast) on
    one batch of ``split``'s real images, timed as its own section of this run: ``warmup`` calls, then the
    median of ``repeats`` (never a figure from a cached extraction). Returns ``images_per_s`` (median),
    ``images_per_s_range`` (slowest, fastest call), ``batch_size``, ``device``, ``precision`` and the machine's
    threads and load average."""
    from transferkit.utils.timing import time_calls

    images, dev, precision, autocast = timing_batch(
        backbone, datamodule, split, batch_size, device, precision
    )

    def step() -> None:
        with torch.inference_mode(), autocast:
            backbone.forward_features(images)

    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None
    t = time_calls(step, warmup=warmup, repeats=repeats, sync=sync)
    n = int(images.shape[0])
    return {
        "images_per_s": n / t["median_s"],
        "images_per_s_range": [n / t["max_s"], n / t["min_s"]],
        "batch_size": n,
        "device": str(dev),
        "precision": precision,
        **{k: t[k] for k in ("repeats", "threads", "cpus", "load_avg_1m")},
    }


def last_block_is_final(backbone: Backbone, dataset: Any, num_images: int = 2) -> bool:
    """Whether ``forward_features`` equals the last block of ``forward_intermediates`` (both ``(B, N, D)``)
    on the first ``num_images`` readable images of ``dataset``: true when the adapter passes intermediates
    through the final norm (Hugging Face and timm ViTs, language models), false for e.g. a pooler on top."""
    images = []
    for i in range(len(dataset)):
        try:
            item = dataset[i]
        except Exception:  # an unreadable image: try the next one
            continue
        if item is not None:
            images.append(item[0])
        if len(images) == num_images:
            break
    if not images:
        return False
    x = torch.stack(images).to(next(backbone.parameters()).device)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode():
            final = backbone.forward_features(x)
            last = backbone.forward_intermediates(x, 1)[-1]
    except Exception as e:  # no per-block features (some timm models): only a final entry will do
        log.debug("no block features to compare for %s: %s", backbone.name, e)
        return False
    finally:
        backbone.train(was_training)
    return final.shape == last.shape and torch.allclose(final.float(), last.float(), rtol=1e-4, atol=1e-5)


def get_features(
    backbone: str | BackboneConfig | Backbone,
    datamodule: FeatureDataModule,
    split: str,
    *,
    layers: int | None = None,
    pooling: str | None = None,
    extra_poolings: Sequence[str] = (),
    cache_dir: str | os.PathLike | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    storage: str = "float16",
    cache: bool = True,
    refresh: bool = False,
    seed: int | None = 0,
    progress: bool = True,
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str = "auto",
    **backbone_options: Any,
) -> FeatureSet:
    """Features of ``split`` of ``datamodule`` from a frozen ``backbone``, from the cache when possible.

    Args:
        backbone: a name (``'minilm-l6'``, ``'vit-tiny:random'``, ``'facebook/dinov2-small'``...), a
            :class:`BackboneConfig` or a built :class:`Backbone` (its current weights are what is hashed).
        datamodule: an ``ImageClassificationDataModule`` (or anything with ``dataset(split)``,
            ``fingerprint(split)``, ``class_names`` and ``image_size``); its eval transform is used.
        split: ``train``, ``val`` or ``test``.
        layers: None: the final layer, features ``(N, D)``; k: the last k blocks, ``(N, k, D)``.
        pooling: ``cls``, ``mean``, ``last`` or ``cls+mean``; None = the backbone's default.
        extra_poolings: more poolings to store in the same pass (read them later with
            :meth:`FeatureSet.view` or another ``get_features`` call, both cache hits).
        cache_dir: cache root (default :func:`default_cache_dir`).
        batch_size: extraction batch size (default: the datamodule's ``eval_batch_size``, else 128).
        num_workers: DataLoader workers (default: the datamodule's).
        device: where the backbone runs (default: CUDA when available).
        precision: compute precision (``auto``: :func:`resolve_precision`; ``float32``, ``bfloat16``,
            ``float16`` autocast); the resolved one is part of the key.
        storage: on-disk format of the features (``float16``, ``bfloat16``, ``float32``); part of the key. A
            float16 entry whose values exceed its range is stored in float32 (``metadata['storage']`` says).
        cache: False extracts in memory without reading or writing the cache.
        refresh: ignore (and overwrite) a cached entry.
        seed: seed of the random-init parts when the backbone is built here from a name/config.
        progress: show a progress bar.
        devices, num_nodes, strategy, accelerator: extract with ``devices`` processes per node through
            Lightning Fabric (:mod:`transferkit.probe.distributed`): started here (``ddp_spawn``) or by a
            launcher on ``num_nodes`` machines (``ddp``; every rank calls this function, rank 0 commits the
            entry, all return it); the entry is the same as with one process.
        backbone_options: :class:`BackboneConfig` fields when ``backbone`` is a name (e.g. ``patch_size``).

    Returns:
        A :class:`FeatureSet`; ``metadata['cache_hit']`` says whether the backbone ran.
    """
    bb = resolve_backbone(backbone, datamodule.image_size, seed=seed, **backbone_options)
    pooling = bb.check_pooling(pooling or bb.pooling)
    if layers is not None and not 1 <= int(layers) <= max(1, bb.num_blocks):
        raise UserError(f"layers must be between 1 and {bb.num_blocks} for '{bb.name}', got {layers}")
    summaries = _summaries_for(bb, [pooling, *extra_poolings])
    layers = None if layers is None else int(layers)
    fingerprint = datamodule.fingerprint(split)
    digest = weights_digest(bb)
    mode = resolve_mode(devices, num_nodes, strategy)
    fabric = launched_fabric(accelerator, devices, num_nodes) if mode == "launched" else None
    rank0 = fabric is None or fabric.global_rank == 0
    # under a launcher this rank's device is Fabric's: the precision (and the key) are resolved for it
    device = fabric.device if fabric is not None else device or default_device()
    precision = resolve_precision(precision, device)
    if storage not in STORAGES:
        raise UserError(f"unknown storage '{storage}'; choose one of {list(STORAGES)}")
    key = feature_key(bb, fingerprint, split, precision, digest, storage)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key_dir = root / _slug(bb.name) / key
    info = bb.info()
    base_meta: dict[str, Any] = {
        "version": CACHE_VERSION,
        "key": key,
        "backbone": bb.name,
        "family": bb.family,
        "modality": bb.modality,
        "pretrained": bool(bb.pretrained),
        "num_params": int(info.num_params),
        "embed_dim": int(bb.embed_dim),
        "num_blocks": int(bb.num_blocks),
        "default_pooling": bb.pooling,
        "weights_digest": digest,
        "split": split,
        "fingerprint": fingerprint,
        "image_size": int(datamodule.image_size),
        "class_names": list(datamodule.class_names),
        "precision": precision,
        "storage": storage,
    }

    def cached() -> FeatureSet | None:
        found = _find_entry(key_dir, layers, summaries)
        if found is None and layers is None:
            # an entry of the last k blocks (compare's probes store one) serves the final output when the
            # backbone's last block output *is* its final output; checked on two images, not assumed
            found = _find_entry(key_dir, None, summaries, blocks_for_final=True)
            if found is not None and not last_block_is_final(bb, datamodule.dataset(split)):
                found = None
        loaded = _load_entry(found) if found is not None else None
        if loaded is None:
            return None
        arr, labels, meta = loaded
        log.info("feature cache hit: %s %s (%s)", bb.name, split, found)
        return FeatureSet(labels, {**meta, "cache_hit": True}, found, arr).view(pooling, layers)

    if fabric is not None and not cache:
        raise UserError(
            "a launcher-started extraction needs the feature cache (in a folder every node sees): drop cache=False"
        )
    if cache and not refresh and fabric is None:  # under a launcher rank 0 alone decides (below)
        hit = cached()
        if hit is not None:
            return hit

    batch_size = int(batch_size or getattr(datamodule, "eval_batch_size", None) or 128)
    workers = int(num_workers if num_workers is not None else getattr(datamodule, "num_workers", 0))
    dataset = datamodule.dataset(split)
    common: dict[str, Any] = dict(
        layers=layers,
        summaries=summaries,
        batch_size=batch_size,
        num_workers=workers,
        device=device,
        precision=precision,
        progress=progress,
        description=f"{bb.name} {split}",
    )

    def one_pass(
        fmt: str, shard_dir: Path | None, **kw: Any
    ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        opts = {k: v for k, v in common.items() if k != "device"}
        if mode == "launched":
            return extract_on_ranks(fabric, extract_summaries, bb, dataset, shard_dir, storage=fmt,
                                    overflow=StorageOverflow, **opts)  # fmt: skip
        if mode == "spawn":
            return extract_sharded(extract_summaries, bb, dataset, shard_dir, devices=devices,
                                   accelerator=accelerator, storage=fmt, overflow=StorageOverflow, **opts)  # fmt: skip
        return extract_summaries(bb, dataset, storage=fmt, **common, **kw)

    def extract(
        shard_dir: Path | None = None, **kw: Any
    ) -> tuple[np.ndarray, np.ndarray, dict[str, float], str]:
        """One pass in ``storage``; a float16 overflow does the pass again in float32 (rare: said once)."""
        try:
            return (*one_pass(storage, shard_dir, **kw), storage)
        except StorageOverflow:
            if rank0:
                log.warning(
                    "%s %s: a value is beyond float16's range; storing this entry in float32", bb.name, split
                )
            return (*one_pass("float32", shard_dir, **kw), "float32")

    if not cache:
        with tempfile.TemporaryDirectory() as shards:
            arr, labels, timing, stored = extract(Path(shards))
            arr = np.array(arr)  # in memory: the shard folder goes
        meta = _extraction_meta({**base_meta, "storage": stored}, layers, summaries, timing, batch_size, device,
                                cached=False)  # fmt: skip
        return FeatureSet(labels, meta, None, arr).view(pooling, layers)

    entry_name = _entry_name(layers, summaries)
    final = key_dir / entry_name
    # one writer per key at a time: a second run of the same backbone on the same data waits here, then
    # reads the first one's entry instead of extracting again (under a launcher: rank 0 holds the lock, says
    # whether the entry is there, and every rank writes its shard into the folder it names)
    with contextlib.ExitStack() as locked:
        tmp: Path | None = None
        hit = None
        if rank0:
            locked.enter_context(file_lock(key_dir / LOCK_FILE))
            _remove_orphans(key_dir)
            hit = None if refresh else cached()
            if hit is None:
                tmp = Path(tempfile.mkdtemp(prefix=f".{entry_name}.", suffix=".tmp", dir=key_dir))
        if fabric is not None:
            shared = fabric.broadcast(None if tmp is None else str(tmp))
            tmp = None if shared is None else Path(shared)
            if tmp is None and not rank0:
                hit = cached()
        if hit is not None or tmp is None:
            if hit is None:
                raise UserError(f"the cache entry {final} that rank 0 found cannot be read on this node")
            return hit
        try:

            def allocate(shape: tuple[int, ...], dt: Any) -> np.ndarray:
                return np.lib.format.open_memmap(tmp / "summaries.npy", mode="w+", dtype=dt, shape=shape)

            if mode != "single":  # the ranks' shards are assembled into tmp/summaries.npy
                arr, labels, timing, stored = extract(tmp)
            else:
                arr, labels, timing, stored = extract(allocate=allocate)
            meta = _extraction_meta({**base_meta, "storage": stored}, layers, summaries, timing, batch_size, device,
                                    cached=True)  # fmt: skip
            if rank0:
                if isinstance(arr, np.memmap) and arr.shape[0] == len(dataset):
                    arr.flush()
                    del arr
                else:  # unreadable images were skipped: store only the kept rows
                    kept = np.array(arr)
                    del arr  # close the memmap before overwriting its file
                    np.save(tmp / "summaries.npy", kept)
                _commit(tmp, final, labels, meta)
        except BaseException:
            if rank0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    if fabric is not None:
        fabric.barrier()  # rank 0 has committed the entry
    loaded = _load_entry(final)
    assert loaded is not None, final
    arr, labels, stored_meta = loaded
    log.info(
        "extracted %s %s: %d images in %.1fs (%.0f img/s) -> %s",
        bb.name,
        split,
        len(labels),
        timing["seconds"],
        timing["images_per_s"],
        final,
    )
    # report the timing of *this* pass (a concurrent writer's entry may carry its own)
    meta = {
        **stored_meta,
        "throughput_img_s": meta["throughput_img_s"],
        "extract_seconds": meta["extract_seconds"],
    }
    return FeatureSet(labels, {**meta, "cache_hit": False}, final, arr).view(pooling, layers)


def _commit(tmp: Path, final: Path, labels: np.ndarray, meta: dict[str, Any]) -> None:
    """Complete the entry in ``tmp`` (its summaries are written: labels, then ``meta.json``, whose presence marks
    a complete entry) and move it to ``final`` (the caller holds the key's lock)."""
    np.save(tmp / "labels.npy", labels)
    atomic_write_json(tmp / "meta.json", meta)
    if final.exists():  # refresh, or an unreadable entry: replace it (no other writer: we hold the lock)
        shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _extraction_meta(
    base: dict[str, Any],
    layers: int | None,
    summaries: Sequence[str],
    timing: dict[str, float],
    batch_size: int,
    device: Any,
    cached: bool,
) -> dict[str, Any]:
    return {
        **base,
        "stored_layers": layers or 1,
        "stored_final": layers is None,
        "stored_summaries": list(summaries),
        "num_images": int(timing["num_images"]),
        "throughput_img_s": round(float(timing["images_per_s"]), 2),
        "extract_seconds": round(float(timing["seconds"]), 3),
        "batch_size": int(batch_size),
        "device": str(device),
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cache_hit": False,
        "cached": cached,
    }
