"""Named trainers for the learned ranker's parts, run through one Lightning loop.

``transferkit rank train --list`` lists them; a trainer is found by name case-insensitively, with or without
the ``Trainer`` suffix (``autoencoder``, ``Autoencoder``, ``AutoencoderTrainer`` are the same).

| name | trains | data |
|---|---|---|
| ``autoencoder`` | :class:`~transferkit.select.model_embed.WeightAutoencoder` | weight-statistics vectors ``(N, dim)`` |
| ``ranker`` | :class:`~transferkit.select.ranker.RankingTransformer` | :class:`RankExample` lists |

Every trainer shares :class:`TrainConfig`: AdamW, an LR schedule (``plateau``: ReduceLROnPlateau on the
validation loss; ``cosine``: cosine decay over ``max_epochs`` after ``warmup_epochs`` of linear warm-up;
``none``), gradient-norm clipping (Lightning's ``gradient_clip_val``), early stopping on the validation loss
(Lightning's ``EarlyStopping``; the best epoch's weights are restored at the end), a JSON history (one row per
epoch: train/val loss and their parts, LR, gradient norm, seconds) and loss-curve plots (linear, log scale,
rolling mean) written to ``out_dir`` when given: ``history.json``, ``loss_curves.png``, ``model.pt``.
The validation split is a fixed (``seed``) ``val_fraction`` of the items (datasets for the ranker); with
fewer than 4 items there is no held-out split and the training loss is monitored instead.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import nn
from torch.utils.data import DataLoader, Dataset

from transferkit.errors import UserError
from transferkit.select.evaluate import rank_metrics
from transferkit.select.model_embed import AutoencoderConfig, WeightAutoencoder
from transferkit.select.options import LearnedRankerOptions, TrainConfig
from transferkit.select.ranker import (  # noqa: F401  (RankExample, predict_scores: re-exported)
    RANK_LOSSES,
    RankerConfig,
    RankExample,
    RankingEnsemble,
    RankingTransformer,
    predict_scores,
    ranking_loss,
)
from transferkit.utils.devices import intra_op_threads
from transferkit.utils.io import atomic_write_json, atomic_writer
from transferkit.utils.ranks import refuse_training_under_launcher

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a trainer returns: the trained ``model`` (best epoch's weights, eval mode), the ``history``
    dict (also written as ``history.json``) and the files written."""

    model: nn.Module
    history: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- registry
TRAINERS: dict[str, type[BaseTrainer]] = {}


def _key(name: str) -> str:
    key = name.strip().lower().replace("-", "").replace("_", "")
    return key[: -len("trainer")] if key.endswith("trainer") and key != "trainer" else key


def register_trainer(cls: type[BaseTrainer]) -> type[BaseTrainer]:
    """Class decorator: register a trainer under ``cls.name``."""
    key = _key(cls.name)
    if key in TRAINERS:
        raise RuntimeError(f"trainer '{cls.name}' registered twice")
    TRAINERS[key] = cls
    return cls


def get_trainer(name: str) -> type[BaseTrainer]:
    """The trainer class registered as ``name`` (case-insensitive; a ``Trainer`` suffix is optional)."""
    key = _key(name)
    if key not in TRAINERS:
        known = ", ".join(cls.__name__ for cls in TRAINERS.values())
        raise UserError(
            f"unknown trainer '{name}'; known: {known} ('transferkit rank train --help' says what each trains)"
        )
    return TRAINERS[key]


def list_trainers() -> list[tuple[str, str, str]]:
    """``(name, class name, description)`` of every registered trainer."""
    return [(cls.name, cls.__name__, cls.description) for cls in TRAINERS.values()]


# ---------------------------------------------------------------------------------------------- loop
class _LitModule(L.LightningModule):
    """Wraps a model and a ``loss_fn(model, batch) -> {'loss': ..., <parts>}`` for Lightning."""

    def __init__(
        self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], dict[str, torch.Tensor]], cfg: TrainConfig
    ):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.cfg = cfg
        self._grad_norms: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        out = self.loss_fn(self.model, batch)
        n = _batch_size(batch)
        for k, v in out.items():
            self.log(f"train/{k}", v.detach(), on_step=False, on_epoch=True, batch_size=n)
        return out["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        out = self.loss_fn(self.model, batch)
        n = _batch_size(batch)
        for k, v in out.items():
            self.log(f"val/{k}", v.detach(), on_step=False, on_epoch=True, batch_size=n)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # the norm before clipping (Lightning clips after this hook)
        norms = [p.grad.detach().norm() for p in self.model.parameters() if p.grad is not None]
        if norms:
            self._grad_norms.append(float(torch.linalg.vector_norm(torch.stack(norms))))

    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.scheduler == "none":
            return opt
        if cfg.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
            )
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": sched, "monitor": "val/loss", "interval": "epoch"},
            }
        from transformers import get_cosine_schedule_with_warmup

        sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_epochs, cfg.max_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values()))
    return int(first.shape[0])


class _History(Callback):
    """Collects one row per epoch and keeps the best weights in memory: the lowest ``val/loss``, or with
    ``select`` the highest ``select(model)`` (the earliest epoch on ties)."""

    def __init__(self, select: Callable[[nn.Module], float] | None = None) -> None:
        self.rows: list[dict[str, float]] = []
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self._start = 0.0
        self.select = select

    def consider(self, model: nn.Module, epoch: int, val_loss: float | None = None) -> float | None:
        """Keep ``model``'s weights when they beat the best so far; returns the selection value (lower wins)."""
        if self.select is not None:
            was = model.training
            model.eval()
            value = -float(self.select(model))
            model.train(was)
        else:
            value = val_loss
        if value is not None and math.isfinite(value) and (self.best is None or value < self.best[0]):
            self.best = (value, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        return value

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        pl_module._grad_norms = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))
        }
        row: dict[str, float] = {"epoch": trainer.current_epoch, **metrics}
        row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        norms = pl_module._grad_norms
        row["grad_norm"] = float(np.mean(norms)) if norms else float("nan")
        row["seconds"] = time.perf_counter() - self._start
        value = self.consider(pl_module.model, trainer.current_epoch, metrics.get("val/loss"))
        if self.select is not None and value is not None:
            row["val/selection"] = -value
        self.rows.append(row)


def fit_model(
    trainer_name: str,
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], dict[str, torch.Tensor]],
    train_data: Dataset,
    val_data: Dataset,
    cfg: TrainConfig,
    collate: Callable | None = None,
    out_dir: str | Path | None = None,
    extra: dict[str, Any] | None = None,
    select: Callable[[nn.Module], float] | None = None,
    keep_initial: bool = False,
) -> TrainResult:
    """The shared loop: Lightning fit with early stopping on ``val/loss``, LR scheduling, grad clipping; the
    best epoch's weights restored (lowest ``val/loss``, or with ``select`` the highest ``select(model)`` on the
    validation items, the earliest epoch on ties; ``keep_initial``: the untrained weights compete as epoch -1);
    history JSON + plots + ``model.pt`` written to ``out_dir``."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    lit = _LitModule(model, loss_fn, cfg)
    history_cb = _History(select)
    if select is not None and keep_initial:  # the untrained weights compete as epoch -1
        history_cb.consider(model, -1)
    callbacks: list[Callback] = [history_cb]
    early = None
    if cfg.patience:
        early = EarlyStopping(monitor="val/loss", patience=cfg.patience, min_delta=cfg.min_delta, mode="min")
        callbacks.append(early)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        train_data, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, generator=generator
    )
    val_loader = DataLoader(val_data, batch_size=max(cfg.batch_size, 64), shuffle=False, collate_fn=collate)
    refuse_training_under_launcher("training the ranker's networks")
    quiet = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [q.level for q in quiet]
    start = time.perf_counter()
    try:
        for q in quiet:  # "GPU available: False..." once per fit is noise in leave-one-out loops
            q.setLevel(logging.WARNING)
        # These models are tiny (steps of a few ms): intra-op threads only add synchronisation. Measured on
        # 2 shared cores, a ranker step took 35 ms on one thread and 270-1300 ms on two.
        with intra_op_threads(1):
            trainer = L.Trainer(
                max_epochs=cfg.max_epochs,
                accelerator="cpu",
                devices=1,
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=cfg.progress,
                gradient_clip_val=cfg.grad_clip or None,
                callbacks=callbacks,
                num_sanity_val_steps=0,
                log_every_n_steps=1,
                deterministic=True,
            )
            with warnings.catch_warnings():
                # tiny in-memory loaders: Lightning's worker/batch-count advice is moot; the treespec warning is
                # lightning 2.6's own use of a torch deprecation
                warnings.filterwarnings("ignore", ".*does not have many workers.*")
                warnings.filterwarnings("ignore", ".*number of training batches.*")
                warnings.filterwarnings("ignore", ".*treespec.*")
                trainer.fit(lit, train_loader, val_loader)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    best_epoch, best_val = None, None
    if history_cb.best is not None:
        best_val, best_epoch, state = history_cb.best
        model.load_state_dict(state)
    model.eval()
    rows = history_cb.rows
    history = {
        "trainer": trainer_name,
        "config": asdict(cfg),
        "epochs": rows,
        "best_epoch": best_epoch,
        "best_val_loss": best_val,
        "epochs_run": len(rows),
        "stopped_early": bool(early is not None and early.stopped_epoch > 0),
        "seconds": time.perf_counter() - start,
        **(extra or {}),
    }
    files = write_run_files(out_dir, history, model) if out_dir is not None else {}
    return TrainResult(model, history, files)


def write_run_files(out_dir: str | Path, history: dict[str, Any], model: nn.Module) -> dict[str, Path]:
    """``history.json``, ``loss_curves.png`` and ``model.pt`` (its ``checkpoint()``, else its state dict) in
    ``out_dir``, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "history": atomic_write_json(out / "history.json", history),
        "plot": plot_history(history, out / "loss_curves.png"),
    }
    with atomic_writer(out / "model.pt") as f:
        torch.save(model.checkpoint() if hasattr(model, "checkpoint") else model.state_dict(), f)
    files["model"] = out / "model.pt"
    return files


def rolling_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing rolling mean (the first ``window - 1`` points average what is available)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_history(history: dict[str, Any], path: str | Path, window: int | None = None) -> Path:
    """Loss curves of ``history['epochs']`` as one PNG with three panels: linear, log scale, rolling mean."""
    from transferkit.report.plots import new_figure, save_figure

    rows = history["epochs"]
    epochs = [r["epoch"] for r in rows]
    series = {k: [r.get(k, float("nan")) for r in rows] for k in ("train/loss", "val/loss")}
    window = window or max(3, len(rows) // 20)
    fig = new_figure(14, 3.8)
    axes = fig.subplots(1, 3)
    for ax, title in zip(axes, ("linear", "log scale", f"rolling mean (window {window})")):
        for name, vals in series.items():
            if all(not math.isfinite(v) for v in vals):
                continue
            y = rolling_mean(vals, window) if ax is axes[2] else vals
            ax.plot(epochs, y, label=name)
        if ax is axes[1]:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    if history.get("best_epoch") is not None:
        for ax in axes:
            ax.axvline(history["best_epoch"], color="gray", linestyle=":", linewidth=1)
    axes[0].legend()
    fig.suptitle(f"{history.get('trainer', '')}: best epoch {history.get('best_epoch')}")
    return save_figure(fig, path)


def split_items(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` indices; with fewer than 4 items (or ``val_fraction == 0``) validation = training."""
    idx = np.random.default_rng(seed).permutation(n)
    if n < 4 or val_fraction == 0:
        return np.sort(idx), np.sort(idx)
    n_val = max(1, int(round(val_fraction * n)))
    return np.sort(idx[n_val:]), np.sort(idx[:n_val])


# ---------------------------------------------------------------------------------------------- trainers
class BaseTrainer:
    """A named recipe: builds its model from options, trains it with :func:`fit_model`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(
        self, train: TrainConfig | None = None, out_dir: str | Path | None = None, **train_options: Any
    ):
        self.train_config = train or TrainConfig(**train_options)
        self.out_dir = out_dir

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(TrainConfig)]


@register_trainer
class AutoencoderTrainer(BaseTrainer):
    """Weight-statistics autoencoder (model embeddings)."""

    name = "autoencoder"
    description = "compress weight-statistics vectors (e.g. 8192-d) into model embeddings (e.g. 512-d)"

    def __init__(self, model: AutoencoderConfig | Mapping[str, Any] | None = None, **kwargs: Any):
        """``model``: an :class:`AutoencoderConfig`, or its options without ``input_dim`` (taken from the
        data), or None for the defaults."""
        super().__init__(**kwargs)
        self.model_config = model

    def fit(self, vectors: np.ndarray, names: Sequence[str] | None = None) -> TrainResult:
        """Train on ``vectors`` ``(N, input_dim)`` (one per backbone)."""
        x = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        if x.ndim != 2 or len(x) < 2:
            raise UserError(f"the autoencoder needs at least 2 weight vectors (N, dim), got {tuple(x.shape)}")
        if isinstance(self.model_config, AutoencoderConfig):
            cfg = copy.deepcopy(self.model_config)
        else:
            cfg = AutoencoderConfig(**dict(self.model_config or {}))
        if cfg.input_dim is None:
            cfg.input_dim = int(x.shape[1])
        if cfg.input_dim != x.shape[1]:
            raise UserError(f"autoencoder input_dim {cfg.input_dim} != weight-vector length {x.shape[1]}")
        tr, va = split_items(len(x), self.train_config.val_fraction, self.train_config.seed)
        torch.manual_seed(self.train_config.seed)
        model = WeightAutoencoder(cfg)
        model.set_normalization(x[tr])
        extra = {"model_config": cfg.to_dict(), "train_items": len(tr), "val_items": len(va)}
        if names is not None:
            extra["names"] = {"train": [names[i] for i in tr], "val": [names[i] for i in va]}
        return fit_model(
            self.name,
            model,
            lambda m, batch: m.loss(batch[0]),
            torch.utils.data.TensorDataset(x[tr]),
            torch.utils.data.TensorDataset(x[va]),
            self.train_config,
            out_dir=self.out_dir,
            extra=extra,
        )


class _ListDataset(Dataset):
    """Ranking lists; in training mode each item is a random sub-list (>= 2 models) and a random subset of
    at least half the dataset tokens (augmentation for small performance tables)."""

    def __init__(self, examples: Sequence[RankExample], augment: bool):
        self.examples = list(examples)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ex = self.examples[i]
        tokens = torch.as_tensor(np.asarray(ex.data_tokens, dtype=np.float32))
        codes = torch.as_tensor(np.asarray(ex.model_codes, dtype=np.float32))
        targets = torch.as_tensor(np.asarray(ex.targets, dtype=np.float32))
        if self.augment:
            m = len(codes)
            if m > 2:
                k = int(torch.randint(2, m + 1, ()).item())
                pick = torch.randperm(m)[:k]
                codes, targets = codes[pick], targets[pick]
            t = len(tokens)
            if t > 2:
                k = int(torch.randint((t + 1) // 2, t + 1, ()).item())
                tokens = tokens[torch.randperm(t)[:k]]
        return tokens, codes, targets


def collate_lists(
    items: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Pad ``(tokens, codes, targets)`` items into a batch dict with ``*_mask`` (True = padding)."""
    from transferkit.select.dataset_embed import pad_token_sets

    data, data_mask = pad_token_sets([t for t, _, _ in items])
    codes, model_mask = pad_token_sets([c for _, c, _ in items])
    targets = torch.zeros(model_mask.shape)
    for i, (_, _, t) in enumerate(items):
        targets[i, : len(t)] = t
    return {
        "data": data,
        "data_mask": data_mask,
        "codes": codes,
        "model_mask": model_mask,
        "targets": targets,
    }


@register_trainer
class RankerTrainer(BaseTrainer):
    """Cross-attention ranking transformer on a performance table."""

    name = "ranker"
    description = (
        "cross-attention ranking transformer (dataset tokens x model embeddings), pairwise or ListMLE loss"
    )

    def __init__(
        self,
        model: RankerConfig | Mapping[str, Any] | None = None,
        loss: str = "pairwise",
        augment: bool = True,
        ensemble: int = 1,
        **kwargs: Any,
    ):
        """``model``: a :class:`RankerConfig`, or its options without ``model_dim``/``data_dim`` (taken from
        the data), or None for the defaults; ``ensemble``: members trained with seeds ``seed``, ``seed + 1``...
        (:class:`~transferkit.select.ranker.RankingEnsemble`; each writes its files to ``out_dir/member-<k>``)."""
        super().__init__(**kwargs)
        if ensemble < 1:
            raise UserError(f"ensemble must be >= 1, got {ensemble}")
        self.ensemble = int(ensemble)
        if loss.lower() not in RANK_LOSSES:
            raise UserError(f"unknown ranking loss '{loss}'; choose one of {list(RANK_LOSSES)}")
        self.model_config = model
        self.loss = loss.lower()
        self.augment = augment

    def fit(self, examples: Sequence[RankExample], offset_column: int | None = None) -> TrainResult:
        """Train on one :class:`RankExample` per dataset (validation: held-out datasets); ``offset_column``
        overrides the config's (:func:`~transferkit.select.pipeline.PairFeatures.offset_column` chooses it).
        With ``ensemble`` > 1 the model is a :class:`~transferkit.select.ranker.RankingEnsemble` and the
        history lists its members'."""
        if self.ensemble == 1:
            return self._fit_one(examples, offset_column, self.train_config, self.out_dir)
        results = []
        for k in range(self.ensemble):
            cfg = dataclasses.replace(self.train_config, seed=self.train_config.seed + k)
            out = None if self.out_dir is None else Path(self.out_dir) / f"member-{k}"
            results.append(self._fit_one(examples, offset_column, cfg, out))
        model = RankingEnsemble([r.model for r in results]).eval()
        history = {
            **results[0].history,
            "ensemble": self.ensemble,
            "members": [
                {
                    key: r.history.get(key)
                    for key in ("seed", "best_epoch", "best_val_loss", "epochs_run", "seconds")
                }
                | {"seed": self.train_config.seed + k}
                for k, r in enumerate(results)
            ],
        }
        # the curves plotted are member 0's
        files = write_run_files(self.out_dir, history, model) if self.out_dir is not None else {}
        return TrainResult(model, history, files)

    def _fit_one(
        self,
        examples: Sequence[RankExample],
        offset_column: int | None,
        train_config: TrainConfig,
        out_dir: str | Path | None,
    ) -> TrainResult:
        examples = list(examples)
        if not examples:
            raise UserError("the ranker needs at least one dataset with ranked models")
        for ex in examples:
            if (
                len(ex.models) != len(ex.targets)
                or len(ex.model_codes) != len(ex.targets)
                or len(ex.targets) < 2
            ):
                raise UserError(f"dataset '{ex.dataset}': need >= 2 models with one code and one target each")
        model_dim = examples[0].model_codes.shape[1]
        data_dim = examples[0].data_tokens.shape[1]
        if isinstance(self.model_config, RankerConfig):
            cfg = copy.deepcopy(self.model_config)
        else:
            cfg = RankerConfig(**dict(self.model_config or {}))
        cfg.model_dim = int(model_dim) if cfg.model_dim is None else cfg.model_dim
        cfg.data_dim = int(data_dim) if cfg.data_dim is None else cfg.data_dim
        if offset_column is not None:
            cfg.offset_column = int(offset_column)
        if (cfg.model_dim, cfg.data_dim) != (model_dim, data_dim):
            raise UserError(
                f"ranker expects model_dim={cfg.model_dim}, data_dim={cfg.data_dim}; the data has "
                f"{model_dim} and {data_dim}"
            )
        tr, va = split_items(len(examples), train_config.val_fraction, train_config.seed)
        torch.manual_seed(train_config.seed)
        model = RankingTransformer(cfg)
        loss_name = self.loss

        def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            scores = m(batch["codes"], batch["data"], batch["model_mask"], batch["data_mask"])
            return {"loss": ranking_loss(loss_name, scores, batch["targets"], batch["model_mask"])}

        val_lists = [examples[i] for i in va]

        def val_weighted_tau(m: nn.Module) -> float:
            """Mean weighted tau of ``m``'s rankings of the validation lists (what the ranker is judged by;
            either ranking loss also falls by merely sharpening a ranking)."""
            taus = []
            for ex in val_lists:
                pred = dict(zip(ex.models, map(float, predict_scores(m, ex.data_tokens, ex.model_codes))))
                tau = rank_metrics(pred, dict(zip(ex.models, map(float, ex.targets))))["weighted_tau"]
                if math.isfinite(tau):
                    taus.append(tau)
            return float(np.mean(taus)) if taus else float("nan")

        extra = {
            "model_config": cfg.to_dict(),
            "loss": loss_name,
            "selection": "val weighted tau" if val_lists and cfg.offset_column is not None else "val loss",
            "train_datasets": [examples[i].dataset for i in tr],
            "val_datasets": [examples[i].dataset for i in va],
        }
        return fit_model(
            self.name,
            model,
            loss_fn,
            _ListDataset([examples[i] for i in tr], augment=self.augment),
            _ListDataset([examples[i] for i in va], augment=False),
            train_config,
            collate=collate_lists,
            out_dir=out_dir,
            extra=extra,
            # with an offset the untrained ranker already ranks well, and a ranking loss falls by sharpening a
            # ranking alone: keep the epoch (or the start) whose rankings of the val lists are best instead
            select=val_weighted_tau if val_lists and cfg.offset_column is not None else None,
            keep_initial=cfg.offset_column is not None,
        )


def trainers_from(options: LearnedRankerOptions) -> tuple[AutoencoderTrainer, Callable[[], RankerTrainer]]:
    """The autoencoder trainer and a factory of fresh ranker trainers (one per leave-one-dataset-out fold)."""
    ae = AutoencoderTrainer(model=options.autoencoder, train=options.autoencoder_train)

    def make_ranker() -> RankerTrainer:
        return RankerTrainer(
            model=options.model, loss=options.loss, train=options.train, ensemble=options.ensemble
        )

    return ae, make_ranker
