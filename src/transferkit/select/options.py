"""Options of the learned ranker (``--ranker.*`` of ``transferkit rank train`` / ``rank evaluate``): plain data,
shared by the trainers (:mod:`transferkit.select.trainers`) and the commands, in a module that imports neither
torch nor lightning (so ``--help`` comes back before they load)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from transferkit.errors import UserError

SCHEDULERS = ("plateau", "cosine", "none")
#: activations of the weight autoencoder (:data:`transferkit.select.model_embed.ACTIVATIONS` maps them to modules)
ACTIVATION_NAMES = ("gelu", "relu", "leakyrelu")
#: reconstruction losses of the weight autoencoder
LOSSES = ("mse", "smoothl1")
#: the ranker's list losses
RANK_LOSSES = ("listmle", "pairwise")


#: per (model, dataset) inputs the ranker can take (:class:`transferkit.select.pipeline.PairFeatures`)
RANKER_FEATURES = ("scores", "prior")


@dataclass
class AutoencoderConfig:
    """Shape and loss of :class:`WeightAutoencoder`.

    Args:
        input_dim: length of the weight-statistics vectors (None: taken from the data when training).
        hidden: widths of the encoder's hidden layers (the decoder mirrors them).
        code_dim: length of the code (the model embedding).
        activation: ``gelu``, ``relu`` or ``leakyrelu``.
        dropout: dropout after each hidden activation.
        loss: reconstruction loss, ``mse`` or ``smoothl1``.
        l1_code: weight of an L1 penalty on the code (0 = none).
    """

    input_dim: int | None = None
    hidden: list[int] = field(default_factory=lambda: [1024])
    code_dim: int = 512
    activation: str = "gelu"
    dropout: float = 0.1
    loss: str = "mse"
    l1_code: float = 0.0

    def __post_init__(self) -> None:
        self.activation = self.activation.lower().replace("_", "")
        if self.activation not in ACTIVATION_NAMES:
            raise UserError(f"unknown activation '{self.activation}'; choose one of {list(ACTIVATION_NAMES)}")
        self.loss = self.loss.lower().replace("_", "")
        if self.loss not in LOSSES:
            raise UserError(f"unknown loss '{self.loss}'; choose one of {list(LOSSES)}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.l1_code < 0:
            raise UserError(f"l1_code must be >= 0, got {self.l1_code}")
        self.hidden = [int(h) for h in self.hidden]
        if any(h < 1 for h in [*self.hidden, self.code_dim, self.input_dim or 1]):
            raise UserError("autoencoder widths must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EmbeddingSettings:
    """How models and datasets are embedded (stored with a trained ranker, reused at inference).

    Args:
        encoder: dataset encoder backbone (``auto``: CLIP/SigLIP when cached locally, else ``minilm-l6``).
        max_samples: images per dataset token set (class-balanced).
        stats_dim: weight-statistics vector length.
        stats_slots: depth slots of the weight statistics.
        seed: seed of the class-balanced sample.
    """

    encoder: str = "auto"
    max_samples: int = 128
    stats_dim: int = 8192
    stats_slots: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        per_slot = self.stats_dim // max(1, self.stats_slots)
        if self.stats_slots < 1 or self.stats_dim % self.stats_slots or per_slot % 2 or per_slot // 2 <= 8:
            raise UserError(
                f"stats_dim ({self.stats_dim}) must be stats_slots ({self.stats_slots}) x an even per-slot width "
                "> 16 (e.g. 8192 = 64 x 128, 1024 = 16 x 64)"
            )
        if self.max_samples < 2:
            raise UserError(f"max_samples must be >= 2, got {self.max_samples}")


@dataclass
class RankerConfig:
    """Shape of :class:`RankingTransformer`.

    Args:
        model_dim: length of a model embedding (the autoencoder's code; None: taken from the data).
        data_dim: width of a dataset token (the encoder's embedding; None: taken from the data).
        d_model: transformer width.
        heads: attention heads.
        layers: decoder layers (model queries: self-attention + cross-attention to the dataset).
        encoder_layers: self-attention layers over the dataset tokens before they serve as memory.
        ff_mult: feed-forward width as a multiple of ``d_model``.
        dropout: dropout in attention and feed-forward blocks.
        offset_column: a column of the model codes (negative: counted from the end, where the per-pair features
            sit) added to the scores with a learned scale that starts at 1, the output head starting at zero:
            the ranker starts as that column's ranking and learns a correction to it (an init score, as
            gradient boosting starts from a base model); None: no offset.
    """

    model_dim: int | None = None
    data_dim: int | None = None
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    encoder_layers: int = 1
    ff_mult: int = 2
    dropout: float = 0.1
    offset_column: int | None = None

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise UserError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if min(self.model_dim or 1, self.data_dim or 1, self.d_model, self.layers, self.ff_mult) < 1:
            raise UserError("ranker widths, layers and ff_mult must be positive")
        if self.encoder_layers < 0 or not 0 <= self.dropout < 1:
            raise UserError("encoder_layers must be >= 0 and dropout in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        loss: ranking loss, ``pairwise`` (RankNet weighted by each pair's accuracy gap: swapping two models whose
            accuracies differ by a test image or two costs little) or ``listmle`` (the likelihood of the whole
            measured order, near-ties included).
        train: the ranker's optimisation.
        features: per (model, dataset) inputs next to the model embedding: ``scores`` (the table's
            training-free scores, z-scored within each dataset's list), ``prior`` (the mean-rank prior over the
            training datasets); ``[]``: the embeddings alone.
        offset: what the ranker starts from and corrects (``RankerConfig.offset_column``): ``best`` (the per-pair
            feature with the highest mean weighted tau on the training lists, chosen again in every
            leave-one-dataset-out fold from the training lists alone), a feature's name (``prior: mean rank``,
            ``score:logme``...), or ``none`` (the network's output alone). With an offset, the epoch kept is the
            one (or the untrained start) whose rankings of the validation lists have the best weighted tau.
        ensemble: rankers trained alike with seeds ``train.seed``, ``+1``, ...; a model's score is their mean
            score z-scored within the list (a deep ensemble: with a handful of training lists one ranker's
            ranking varies with its seed).
    """

    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    autoencoder_train: TrainConfig = field(default_factory=lambda: TrainConfig(max_epochs=300))
    model: RankerConfig = field(default_factory=RankerConfig)
    loss: str = "pairwise"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_epochs=200))
    features: list[str] = field(default_factory=lambda: ["scores", "prior"])
    offset: str = "none"
    ensemble: int = 3

    def __post_init__(self) -> None:
        if self.ensemble < 1:
            raise UserError(f"--ranker.ensemble must be >= 1, got {self.ensemble}")
        self.offset = self.offset.strip()
        if self.offset != "none" and not self.features:
            raise UserError(
                f"--ranker.offset {self.offset} needs per-pair features (--ranker.features); or none"
            )
        self.loss = self.loss.lower()
        if self.loss not in RANK_LOSSES:
            raise UserError(f"unknown ranking loss '{self.loss}'; choose one of {list(RANK_LOSSES)}")
        self.features = [f.strip().lower() for f in self.features]
        bad = [f for f in self.features if f not in RANKER_FEATURES]
        if bad or len(set(self.features)) != len(self.features):
            raise UserError(
                f"--ranker.features {self.features}: each of {list(RANKER_FEATURES)} at most once (or [] for none)"
            )
