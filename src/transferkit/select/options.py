"""Options of the learned ranker (``--ranker.*`` of ``transferkit rank train`` / ``rank evaluate``): plain data,
shared by the trainers (:mod:`transferkit.select.trainers`) and the commands."""

from __future__ import annotations

from dataclasses import dataclass, field

from transferkit.errors import UserError
from transferkit.select.model_embed import AutoencoderConfig
from transferkit.select.pipeline import RANKER_FEATURES, EmbeddingSettings
from transferkit.select.ranker import RANK_LOSSES, RankerConfig

SCHEDULERS = ("plateau", "cosine", "none")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every trainer.

    Args:
        max_epochs: upper bound on epochs.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: items per step (vectors for the autoencoder, datasets for the ranker).
        scheduler: ``plateau``, ``cosine`` or ``none``.
        warmup_epochs: linear warm-up epochs (``cosine`` only).
        plateau_factor: LR multiplier when the validation loss plateaus (``plateau``).
        plateau_patience: epochs without improvement before the LR drops (``plateau``).
        grad_clip: max gradient norm (0 = no clipping).
        patience: early-stopping patience in epochs (0 = train all ``max_epochs``).
        min_delta: improvement below this does not reset the early-stopping counter.
        val_fraction: fraction of items held out for validation (at least 1 when there are >= 4 items).
        seed: seed of the split, the initialisation and the data order.
        progress: show Lightning's progress bar.
    """

    max_epochs: int = 300
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 16
    scheduler: str = "plateau"
    warmup_epochs: int = 0
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    grad_clip: float = 1.0
    patience: int = 40
    min_delta: float = 0.0
    val_fraction: float = 0.2
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        self.scheduler = self.scheduler.lower()
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"unknown scheduler '{self.scheduler}'; choose one of {list(SCHEDULERS)}")
        if self.max_epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UserError("max_epochs and batch_size must be >= 1 and lr > 0")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.grad_clip < 0 or self.patience < 0:
            raise UserError("grad_clip and patience must be >= 0")


@dataclass
class LearnedRankerOptions:
    """How the learned ranker is built and trained.

    Args:
        embedding: how models and datasets are embedded.
        autoencoder: the weight autoencoder's shape (``input_dim`` comes from ``embedding.stats_dim``).
        autoencoder_train: its optimisation.
        model: the ranking transformer's shape (``model_dim``/``data_dim`` come from the embeddings).
        loss: ranking loss, ``listmle`` or ``pairwise``.
        train: the ranker's optimisation.
        features: per (model, dataset) inputs next to the model embedding: ``scores`` (the table's
            training-free scores, z-scored within each dataset's list), ``prior`` (the mean-rank prior over the
            training datasets); ``[]``: the embeddings alone.
    """

    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    autoencoder_train: TrainConfig = field(default_factory=lambda: TrainConfig(max_epochs=300))
    model: RankerConfig = field(default_factory=RankerConfig)
    loss: str = "listmle"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_epochs=200))
    features: list[str] = field(default_factory=lambda: ["scores", "prior"])

    def __post_init__(self) -> None:
        self.loss = self.loss.lower()
        if self.loss not in RANK_LOSSES:
            raise UserError(f"unknown ranking loss '{self.loss}'; choose one of {list(RANK_LOSSES)}")
        self.features = [f.strip().lower() for f in self.features]
        bad = [f for f in self.features if f not in RANKER_FEATURES]
        if bad or len(set(self.features)) != len(self.features):
            raise UserError(
                f"--ranker.features {self.features}: each of {list(RANKER_FEATURES)} at most once (or [] for none)"
            )
