"""Grounding data for vision-language models: records -> chats with in-context demonstrations -> batches.

Files and splits are read exactly as :class:`~transferkit.data.detection.DetectionDataModule` reads them
(grounding JSONL, COCO json or the built-in shapes set; ``class_names`` and ``desc_vocab`` likewise). Each
sample becomes a chat (:mod:`transferkit.vlm.chat`) tokenized by the model's processor, loaded from
``processor_path`` (linked by the CLI from the task's ``model_path``) or attached
(:meth:`VLMGroundingDataModule.attach_processor`) before loaders are built.

In-context demonstrations: for a training sample, with probability ``demo_ratio`` the chat is preceded by
1..``max_demos`` (uniform) demonstration turns — image(s) + answer — drawn without replacement from the
demonstration pool (``demo_file``, else the training split minus the sample itself). Evaluation and
prediction prepend exactly ``eval_demos`` demonstrations, drawn deterministically per sample. Only the
target answer is learned. A chat longer than ``max_length`` tokens loses demonstrations first, then the
end of its answer.

Items are ``{"chat": EncodedChat, "meta": {...}}`` with meta keys ``image`` (path), ``orig_size`` (H, W),
``resized_size`` (H', W') of the target image as the model sees it, ``boxes`` ``(n, 4)`` float32 absolute
xyxy in the original image, ``labels`` ``(n,)`` int64 class indices (``-1``: unknown class), ``desc``
(strings), ``desc_idx`` ``(n,)`` (``-100``: not in the training vocabulary), ``num_demos`` and ``index``.
Training batches are padded (:func:`~transferkit.vlm.collate.pad_collate`) or packed
(:func:`~transferkit.vlm.collate.pack_collate`, ``packing: true``); evaluation batches are always padded.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from transferkit.data.datamodule import shuffling_sampler
from transferkit.data.detection.datamodule import (
    DetectionDataModule,
    DetectionDataset,
    object_indices,
    read_annotations,
)
from transferkit.data.detection.shapes import ShapesConfig
from transferkit.data.grounding import GroundingRecord
from transferkit.data.sources import load_rgb
from transferkit.errors import DatasetError, UserError
from transferkit.vlm.chat import (
    DEFAULT_PROMPT,
    EncodedChat,
    Turn,
    encode_chat,
    format_answer,
    grid_resized_size,
    resized_size,
)
from transferkit.vlm.collate import pack_collate, pad_collate

log = logging.getLogger(__name__)


class DemoPool:
    """Demonstration records and the folder their image paths are relative to."""

    def __init__(self, records: list[GroundingRecord], root: Path) -> None:
        self.records = records
        self.root = Path(root)

    def __len__(self) -> int:
        return len(self.records)

    def images(self, index: int) -> list:
        rec = self.records[index]
        return [_load(self.root, p, rec) for p in rec.images]


def _load(root: Path, path: str, rec: GroundingRecord) -> Any:
    p = Path(path)
    p = p if p.is_absolute() else root / p
    try:
        return load_rgb(p)
    except (OSError, ValueError) as e:
        where = f" (line {rec.line})" if rec.line else ""
        raise DatasetError(f"cannot read image '{p}'{where}: {e}") from None


class VLMGroundingDataset(Dataset):
    """Grounding records as tokenized chats (module docstring)."""

    def __init__(
        self,
        base: DetectionDataset,
        processor: Any,
        *,
        prompt: str,
        pool: DemoPool | None,
        pool_is_self: bool,
        demo_ratio: float,
        max_demos: int,
        fixed_demos: int | None,
        max_length: int,
        object_order: str,
        with_answer: bool,
        class_index: dict[str, int],
        desc_index: dict[str, int],
        label_from: str,
        seed: int = 0,
    ) -> None:
        self.base = base
        self.processor = processor
        self.prompt = prompt
        self.pool = pool
        self.pool_is_self = pool_is_self
        self.demo_ratio = demo_ratio
        self.max_demos = max_demos
        self.fixed_demos = fixed_demos
        self.max_length = max_length
        self.object_order = object_order
        self.with_answer = with_answer
        self.class_index = class_index
        self.desc_index = desc_index
        self.label_from = label_from
        self.seed = seed
        self._warned_truncation = False

    def __len__(self) -> int:
        return len(self.base)

    # ------------------------------------------------------------------ demonstrations
    def draw_demos(self, index: int) -> list[int]:
        """Pool indices of this sample's demonstrations: random for training (``demo_ratio``, 1..k), a fixed
        number drawn deterministically per sample otherwise."""
        if self.pool is None or len(self.pool) == 0:
            return []
        candidates = len(self.pool) - (1 if self.pool_is_self else 0)
        if self.fixed_demos is not None:
            k = min(self.fixed_demos, candidates)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        else:
            gen = None  # the global torch RNG: seeded by Lightning, per worker by the DataLoader
            if self.max_demos < 1 or float(torch.rand((), generator=gen)) >= self.demo_ratio:
                return []
            k = min(int(torch.randint(1, self.max_demos + 1, (), generator=gen)), candidates)
        if k <= 0:
            return []
        order = torch.randperm(candidates, generator=gen)[:k].tolist()
        if self.pool_is_self:  # skip the sample itself
            order = [i + 1 if i >= index else i for i in order]
        return order

    def _answer(self, rec: GroundingRecord, image: Any) -> str:
        hw = (image.height, image.width)
        return format_answer(
            rec.objects, hw, resized_size(self.processor.image_processor, *hw), self.object_order
        )

    # ------------------------------------------------------------------ items
    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.base.records[index]
        root = self.base.root
        images = [_load(root, p, rec) for p in rec.images]
        target = Turn(images, self._answer(rec, images[0]) if self.with_answer else None)
        demos = []
        for j in self.draw_demos(index):
            demo_images = self.pool.images(j)
            demos.append(Turn(demo_images, self._answer(self.pool.records[j], demo_images[0])))
        chat = encode_chat(self.processor, [*demos, target], self.prompt)
        while len(chat) > self.max_length and demos:
            demos.pop()
            chat = encode_chat(self.processor, [*demos, target], self.prompt)
        chat = self._fit(chat, index)
        h, w = images[0].height, images[0].width
        patch = int(self.processor.image_processor.patch_size)
        objs = rec.objects
        labels, desc_idx = object_indices(objs, self.class_index, self.desc_index, self.label_from)
        meta = {
            "image": str(self.base.image_path(index)),
            "orig_size": (h, w),
            "resized_size": grid_resized_size(chat.image_grid_thw[chat.target_image], patch),
            "boxes": torch.tensor([o.bbox for o in objs], dtype=torch.float32).reshape(-1, 4),
            "labels": labels,
            "desc": [o.desc for o in objs],
            "desc_idx": desc_idx,
            "num_demos": len(demos),
            "index": index,
        }
        return {"chat": chat, "meta": meta}

    def _fit(self, chat: EncodedChat, index: int) -> EncodedChat:
        if len(chat) <= self.max_length:
            return chat
        if chat.prompt_length >= self.max_length:
            raise DatasetError(
                f"sample {index}: its prompt alone is {chat.prompt_length} tokens, over max_length={self.max_length}; "
                "raise data.max_length or lower data.max_pixels (fewer visual tokens per image)"
            )
        if not self._warned_truncation:
            log.warning(
                "sample %d: %d tokens > max_length=%d; its answer is cut (further cuts are not reported)",
                index,
                len(chat),
                self.max_length,
            )
            self._warned_truncation = True
        n = self.max_length
        return EncodedChat(
            chat.input_ids[:n],
            chat.labels[:n],
            chat.mm_token_type_ids[:n],
            chat.pixel_values,
            chat.image_grid_thw,
            chat.prompt_length,
            chat.target_image,
            chat.target_span,
        )


class VLMGroundingDataModule(L.LightningDataModule):
    """Grounding data as chats for a Qwen2.5-VL-style model (module docstring)."""

    def __init__(
        self,
        source: Literal["auto", "grounding", "coco", "shapes"] = "auto",
        path: str | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        image_root: str | None = None,
        predict_path: str | None = None,
        demo_file: str | None = None,
        demo_image_root: str | None = None,
        demo_ratio: float = 0.7,
        max_demos: int = 2,
        eval_demos: int = 0,
        prompt: str = DEFAULT_PROMPT,
        object_order: Literal["position", "file"] = "position",
        max_length: int = 4096,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        packing: bool = False,
        pack_length: int | None = None,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        label_from: Literal["category", "desc", "object"] = "category",
        val_fraction: float = 0.1,
        on_corrupt: Literal["error", "skip"] = "skip",
        shapes: ShapesConfig = ShapesConfig(),
        seed: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        processor_path: str | None = None,
    ) -> None:
        """
        Args:
            source: ``shapes`` (the built-in synthetic set, generated into ``path`` on first use),
                ``grounding`` (``{split}.jsonl``), ``coco`` (``{split}.json``) or ``auto``.
            path: Dataset folder holding the split files (shapes: where the set is written).
            train_file: Training annotations (.jsonl or .json), overriding ``path``'s.
            val_file: Validation annotations; default ``path``'s, else ``val_fraction`` of train.
            test_file: Test annotations; default ``path``'s, else the validation split.
            image_root: Folder image paths are relative to (default: each annotation file's folder).
            predict_path: What ``predict`` runs on: an annotation file or a folder of images (default: test).
            demo_file: Grounding JSONL of demonstrations (default: the training split).
            demo_image_root: Folder the demonstration image paths are relative to (default: its file's folder).
            demo_ratio: Probability that a training sample gets demonstrations.
            max_demos: Most demonstrations per training sample (1..max_demos, uniform).
            eval_demos: Demonstrations before every validation/test/predict sample (deterministic per sample).
            prompt: The user's instruction after the image(s).
            object_order: Order of objects in answers: ``position`` (top-to-bottom, left-to-right) or ``file``.
            max_length: Most tokens per chat; longer ones drop demonstrations, then the end of the answer.
            min_pixels: Override of the image processor's smallest image area (pixels) after resizing.
            max_pixels: Override of its largest image area; fewer pixels = fewer visual tokens.
            packing: Pack training samples into shared rows (position-id separated) instead of padding.
            pack_length: Tokens per packed row (default: the whole batch in one row).
            batch_size: Training samples per step (per device).
            eval_batch_size: Validation/test/predict batch size; defaults to ``batch_size``.
            num_workers: DataLoader worker processes.
            label_from: An object's class for mAP: ``category`` (its ``category`` key, else ``desc`` up to the
                first ``/``), ``desc`` (the whole description) or ``object`` (class-agnostic).
            val_fraction: Share of train held out as validation when there is no validation file.
            on_corrupt: A malformed record or one whose image is missing or unreadable: ``skip`` it with a
                warning listing them, or ``error`` (stop at the first).
            shapes: Parameters of the synthetic set (``source: shapes``).
            seed: Seed of the training order, the validation hold-out and the evaluation demonstrations.
            pin_memory: Pin host memory; default: when CUDA is available.
            persistent_workers: Keep loader workers alive between epochs (with ``num_workers > 0``).
            processor_path: The model whose processor tokenizes the chats (the CLI links it from
                ``model.model_path``); or call :meth:`attach_processor`.
        """
        super().__init__()
        self.save_hyperparameters()
        if not 0.0 <= demo_ratio <= 1.0:
            raise UserError(f"demo_ratio is a probability in [0, 1], got {demo_ratio}")
        if max_demos < 0 or eval_demos < 0:
            raise UserError("max_demos and eval_demos must be >= 0")
        if max_length < 16 or batch_size < 1 or num_workers < 0:
            raise UserError("max_length must be >= 16, batch_size >= 1 and num_workers >= 0")
        if pack_length is not None and pack_length < max_length:
            raise UserError(
                f"pack_length ({pack_length}) must be >= max_length ({max_length}) so any sample fits"
            )
        if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
            raise UserError(f"min_pixels ({min_pixels}) must be <= max_pixels ({max_pixels})")
        self.records = DetectionDataModule(
            source=source,
            path=path,
            train_file=train_file,
            val_file=val_file,
            test_file=test_file,
            image_root=image_root,
            predict_path=predict_path,
            batch_size=batch_size,
            label_from=label_from,
            val_fraction=val_fraction,
            on_corrupt=on_corrupt,
            shapes=shapes,
            seed=seed,
        )
        self.hparams["shapes"] = dict(self.records.hparams["shapes"])  # plain data for weights_only loading
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.processor: Any = None
        self._pool: DemoPool | None = None

    # ------------------------------------------------------------------ vocabularies (from the records)
    @property
    def class_names(self) -> list[str]:
        return self.records.class_names

    @property
    def desc_vocab(self) -> list[str]:
        return self.records.desc_vocab

    @property
    def label_from(self) -> str:
        """How an object's class is read (``category``, ``desc`` or ``object``)."""
        return self.records.label_from

    # ------------------------------------------------------------------ processor
    def attach_processor(self, processor: Any) -> None:
        """Use ``processor`` (the model's) to tokenize; applies ``min_pixels``/``max_pixels`` to its image
        processor."""
        hp = self.hparams
        if hp.min_pixels is not None or hp.max_pixels is not None:
            from transformers.image_utils import SizeDict

            ip = processor.image_processor
            size = ip.size
            lo = hp.min_pixels if hp.min_pixels is not None else size.shortest_edge
            hi = hp.max_pixels if hp.max_pixels is not None else size.longest_edge
            if lo > hi:
                raise UserError(f"min_pixels ({lo}) exceeds max_pixels ({hi}) of the processor")
            ip.size = SizeDict(shortest_edge=int(lo), longest_edge=int(hi))
        self.processor = processor

    def _require_processor(self) -> Any:
        if self.processor is None and self.hparams.processor_path:
            from transferkit.vlm.model import load_processor

            self.attach_processor(load_processor(self.hparams.processor_path))
        if self.processor is None:
            raise UserError(
                "VLMGroundingDataModule has no processor: give data.processor_path (the CLI links it from "
                "model.model_path of a grounding task) or call attach_processor"
            )
        return self.processor

    # ------------------------------------------------------------------ datasets
    def prepare_data(self) -> None:
        self.records.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.records.setup(stage)

    def demo_pool(self) -> DemoPool:
        if self._pool is None:
            hp = self.hparams
            if hp.demo_file:
                f = Path(hp.demo_file)
                root = Path(hp.demo_image_root) if hp.demo_image_root else f.parent
                records, _ = read_annotations(f, root, strict=hp.on_corrupt == "error")
                if not records:
                    raise DatasetError(f"demo_file '{f}' holds no usable record")
                self._pool = DemoPool(records, root)
            else:
                train = self.records.dataset("train")
                self._pool = DemoPool(train.records, train.root)
        return self._pool

    def _wrap(self, base: DetectionDataset, split: str, *, with_answer: bool = True) -> VLMGroundingDataset:
        hp = self.hparams
        training = split == "train"
        wants_demos = (hp.max_demos > 0 and hp.demo_ratio > 0) if training else hp.eval_demos > 0
        pool = self.demo_pool() if wants_demos else None
        return VLMGroundingDataset(
            base,
            self._require_processor(),
            prompt=hp.prompt,
            pool=pool,
            pool_is_self=training and not hp.demo_file,
            demo_ratio=hp.demo_ratio,
            max_demos=hp.max_demos,
            fixed_demos=None if training else hp.eval_demos,
            max_length=hp.max_length,
            object_order=hp.object_order,
            with_answer=with_answer,
            class_index={n: i for i, n in enumerate(self.class_names)},
            desc_index={d: i for i, d in enumerate(self.desc_vocab)},
            label_from=hp.label_from,
            seed=self.seed,
        )

    def dataset(self, split: str) -> VLMGroundingDataset:
        """The ``split`` (train/val/test) as chats with answers."""
        return self._wrap(self.records.dataset(split), split)

    def predict_dataset(self) -> VLMGroundingDataset:
        """``predict_path`` (annotation file or image folder) or the test split, as generation prompts."""
        return self._wrap(self.records.predict_dataset(), "predict", with_answer=False)

    # ------------------------------------------------------------------ loaders
    def collate(self, train: bool) -> Any:
        """The collate function: packed or padded for training, padded (right) for evaluation."""
        processor = self._require_processor()
        pad_id = processor.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = processor.tokenizer.eos_token_id
        merge = int(processor.image_processor.merge_size)
        if train and self.hparams.packing:
            return functools.partial(
                pack_collate, pad_token_id=pad_id, max_tokens=self.hparams.pack_length, merge_size=merge
            )
        return functools.partial(pad_collate, pad_token_id=pad_id, merge_size=merge)

    def _loader(self, ds: Dataset, batch_size: int, train: bool, **kwargs: Any) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            num_workers=self.num_workers,
            collate_fn=self.collate(train),
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        sampler = shuffling_sampler(ds, getattr(self, "trainer", None), self.seed)
        return self._loader(ds, self.batch_size, True, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size, False, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size, False, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset(), self.eval_batch_size, False, shuffle=False)

    def describe(self) -> dict[str, Any]:
        """The records' description plus the chat settings."""
        hp = self.hparams
        info = self.records.describe()
        info.pop("image_size", None)
        info.update(
            demo_file=hp.demo_file,
            demo_ratio=hp.demo_ratio,
            max_demos=hp.max_demos,
            eval_demos=hp.eval_demos,
            packing=hp.packing,
            max_length=hp.max_length,
            min_pixels=hp.min_pixels,
            max_pixels=hp.max_pixels,
        )
        return info
