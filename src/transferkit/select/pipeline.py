"""The learned-ranker pipeline: performance table -> model and dataset embeddings -> trained ranker bundle;
its predictions for new (dataset, backbones); leave-one-dataset-out evaluation.

Datasets are :class:`~transferkit.data.spec.DataSpec` objects: every results-table row carries its dataset's
spec (``dataset.spec``) and key (``dataset.key``), so the images of any row can be found and summarised.

:class:`EmbeddingStore` caches weight-statistics vectors (per backbone and image size) and dataset token sets
(per dataset key, encoder, sample size and seed) as ``.npy`` files, so re-training or evaluating never
rebuilds a backbone or re-reads images it has already summarised.

A trained :class:`LearnedRanker` is a folder: ``ranker.json`` (settings, datasets and models it was
trained on), ``autoencoder/`` and ``ranker/`` (each ``model.pt``, ``history.json``, ``loss_curves.png``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.data.spec import DataSpec
from transferkit.errors import UserError
from transferkit.results import ResultRow, values_by_dataset
from transferkit.select.dataset_embed import class_balanced_indices, resolve_encoder
from transferkit.select.evaluate import LodoResult, leave_one_dataset_out, mean_rank_prior, rank_metrics
from transferkit.select.model_embed import WeightAutoencoder, weight_statistics
from transferkit.select.options import RANKER_FEATURES, EmbeddingSettings
from transferkit.select.ranker import RankExample, RankingTransformer, load_ranker, predict_scores
from transferkit.utils.io import atomic_write_json, atomic_writer

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- store
class EmbeddingStore:
    """Weight vectors and dataset token sets, computed once and cached under ``root`` (None: in memory)."""

    def __init__(self, settings: EmbeddingSettings, root: str | Path | None = None, cache_dir: Any = None):
        self.settings = settings
        self.root = Path(root) if root is not None else None
        self.cache_dir = cache_dir
        self._memory: dict[str, np.ndarray] = {}
        self._encoders: dict[int, Any] = {}

    def _file(self, kind: str, key: str) -> Path | None:
        if self.root is None:
            return None
        digest = hashlib.blake2b(key.encode(), digest_size=10).hexdigest()
        return self.root / kind / f"{digest}.npy"

    def _get(self, kind: str, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        mem_key = f"{kind}/{key}"
        if mem_key in self._memory:
            return self._memory[mem_key]
        path = self._file(kind, key)
        if path is not None and path.is_file():
            arr = np.load(path)
        else:
            arr = compute()
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.stem}.tmp.npy")
                np.save(tmp, arr)
                tmp.replace(path)
        self._memory[mem_key] = arr
        return arr

    def model_vector(self, name: str, image_size: int = 224, backbone: Any = None) -> np.ndarray:
        """Weight-statistics vector of backbone ``name`` built at ``image_size`` (or of ``backbone``)."""
        s = self.settings

        def compute() -> np.ndarray:
            from transferkit.backbones import resolve_backbone

            bb = backbone if backbone is not None else resolve_backbone(name, image_size, seed=0)
            return weight_statistics(bb, dim=s.stats_dim, slots=s.stats_slots)

        return self._get("models", f"{name}|{image_size}|{s.stats_dim}|{s.stats_slots}", compute)

    def encoder(self, image_size: int) -> Any:
        if image_size not in self._encoders:
            name, bb = resolve_encoder(self.settings.encoder, image_size)
            self.settings.encoder = name  # pin 'auto' to what was used
            self._encoders[image_size] = bb
        return self._encoders[image_size]

    def dataset_tokens(self, spec: DataSpec, split: str = "train") -> np.ndarray:
        """``(n, D)`` token set of ``split`` of the dataset ``spec`` describes."""
        from transferkit.probe.cache import get_features
        from transferkit.select.dataset_embed import _SubsetData

        s = self.settings
        image_size = spec.image_size

        def compute() -> np.ndarray:
            dm = spec.build()
            idx = spec.subset_indices(split, dm)
            targets = np.asarray(dm.dataset(split).targets)[idx]
            pick = idx[class_balanced_indices(targets, s.max_samples, s.seed)]
            fs = get_features(
                self.encoder(image_size),
                _SubsetData(dm, split, pick),
                split,
                cache_dir=self.cache_dir,
                progress=False,
            )
            return torch.nn.functional.normalize(
                torch.from_numpy(np.array(fs.features, dtype=np.float32)), dim=1
            ).numpy()

        if s.encoder == "auto":
            self.encoder(image_size)  # resolve 'auto' first: the encoder is part of the key
        key = f"{spec.key()}|{split}|{s.encoder}|{s.max_samples}|{s.seed}"
        return self._get("datasets", key, compute)


# ---------------------------------------------------------------------------------------------- pair features
#: what :class:`PairFeatures` can put next to a model's embedding
def standardized_columns(columns: Sequence[Mapping[str, float]], models: Sequence[str]) -> np.ndarray:
    """``(M, F)``: column ``f`` holds ``columns[f][model]`` z-scored over the list's models that have a finite
    value (a constant column gives 0); a model without a value gets 0, the list's mean."""
    out = np.zeros((len(models), len(columns)), dtype=np.float32)
    for j, col in enumerate(columns):
        v = np.array([col.get(m, np.nan) for m in models], dtype=np.float64)
        ok = np.isfinite(v)
        if ok.sum() >= 2 and np.std(v[ok]) > 0:
            out[ok, j] = (v[ok] - v[ok].mean()) / v[ok].std()
    return out


@dataclass
class PairFeatures:
    """Per (model, dataset) inputs of the ranker, concatenated to each model's embedding (``kinds``):

    - ``scores``: every training-free score of the table (``scores[score][dataset][model]``, ``score_names``),
      z-scored within the dataset's list of models;
    - ``prior``: the data-free mean-rank prior over the accuracies of ``truth``, leaving out the datasets in
      ``exclude`` (the held-out dataset and the example's own dataset, so no list sees its own accuracies).
    """

    kinds: Sequence[str]
    truth: Mapping[str, Mapping[str, float]]
    scores: Mapping[str, Mapping[str, Mapping[str, float]]]
    score_names: Sequence[str]
    #: what the ranker starts from (``LearnedRankerOptions.offset``): ``best``, a feature name, or ``none``
    offset: str = "none"

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in RANKER_FEATURES]
        if bad:
            raise UserError(f"unknown ranker feature(s) {bad}; choose from {list(RANKER_FEATURES)}")
        self.score_names = sorted(self.score_names) if "scores" in self.kinds else []
        if self.offset not in ("none", "best", *self.names):
            raise UserError(
                f"unknown --ranker.offset '{self.offset}'; choose none, best or one of {self.names}"
            )

    @property
    def names(self) -> list[str]:
        return [
            *(f"score:{s}" for s in self.score_names),
            *(["prior: mean rank"] if "prior" in self.kinds else []),
        ]

    def columns(self, dataset: str, models: Sequence[str], exclude: set[str]) -> list[dict[str, float]]:
        cols = [dict(self.scores.get(s, {}).get(dataset, {})) for s in self.score_names]
        if "prior" in self.kinds:
            seen = {d: v for d, v in self.truth.items() if d not in exclude}
            cols.append(mean_rank_prior(seen, None, models) if seen else {})
        return cols

    def offset_column(self, examples: Sequence[RankExample]) -> tuple[int | None, str | None]:
        """The model-code column (negative index) and name of the feature the ranker starts from, for training
        lists ``examples`` with the features attached: ``best`` is the feature with the highest mean weighted
        tau against the lists' own accuracies (ties: the first), so it is chosen from training data alone."""
        names = self.names
        if self.offset == "none" or not names:
            return None, None
        if self.offset != "best":
            j = names.index(self.offset)
            return j - len(names), self.offset
        means = []
        for j in range(len(names)):
            col = j - len(names)
            taus = []
            for ex in examples:
                codes = np.asarray(ex.model_codes)
                values = dict(zip(ex.models, map(float, codes[:, col])))
                tau = rank_metrics(values, dict(zip(ex.models, map(float, ex.targets))))["weighted_tau"]
                if np.isfinite(tau):
                    taus.append(tau)
            means.append(float(np.mean(taus)) if taus else float("-inf"))
        j = int(np.argmax(means))
        return j - len(names), names[j]

    def attach(self, ex: RankExample, exclude: set[str]) -> RankExample:
        """``ex`` with its model codes extended by the features, ``(M, D_model + F)``."""
        if not self.kinds:
            return ex
        feats = standardized_columns(self.columns(ex.dataset, ex.models, exclude), ex.models)
        codes = np.concatenate([np.asarray(ex.model_codes, dtype=np.float32), feats], axis=1)
        return RankExample(ex.dataset, ex.data_tokens, codes, ex.targets, ex.models)


# ---------------------------------------------------------------------------------------------- bundle
@dataclass
class LearnedRanker:
    """A trained autoencoder + ranking transformer + the settings that embed new models and datasets."""

    autoencoder: WeightAutoencoder
    ranker: RankingTransformer | Any  # or a RankingEnsemble
    settings: EmbeddingSettings
    meta: dict[str, Any]

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        for sub, model in (("autoencoder", self.autoencoder), ("ranker", self.ranker)):
            with atomic_writer(out / sub / "model.pt") as f:
                torch.save(model.checkpoint(), f)
        return atomic_write_json(out / "ranker.json", {"settings": asdict(self.settings), **self.meta})

    @classmethod
    def load(cls, path: str | Path) -> LearnedRanker:
        root = Path(path)
        if not (root / "ranker.json").is_file():
            raise UserError(
                f"{root} is not a trained ranker folder (no ranker.json); train one with 'transferkit rank train ranker'"
            )
        meta = json.loads((root / "ranker.json").read_text())
        settings = EmbeddingSettings(**meta.pop("settings"))
        ae = WeightAutoencoder.from_checkpoint(
            torch.load(root / "autoencoder" / "model.pt", weights_only=False)
        )
        rk = load_ranker(torch.load(root / "ranker" / "model.pt", weights_only=False))
        return cls(ae, rk, settings, meta)

    @property
    def feature_names(self) -> list[str]:
        """The per-pair inputs it was trained with (``score:<name>``, ``prior: mean rank``)."""
        return list(self.meta.get("features", []))

    @torch.no_grad()
    def score(
        self,
        tokens: np.ndarray,
        vectors: np.ndarray,
        models: Sequence[str] = (),
        scores: Mapping[str, Mapping[str, float]] | None = None,
    ) -> np.ndarray:
        """Scores ``(M,)`` (higher = better) of one list of models, weight vectors ``(M, dim)``, for a token
        set; ``models`` and their training-free ``scores[score][model]`` feed the per-pair features it was
        trained with (a missing score counts as the list's mean; the prior comes from its training table)."""
        codes = self.autoencoder.embed(vectors)
        if self.feature_names:
            if len(models) != len(codes):
                raise UserError("this ranker was trained with per-pair features: pass the models' names")
            cols = []
            for f in self.feature_names:
                if f.startswith("score:"):
                    cols.append(dict((scores or {}).get(f.removeprefix("score:"), {})))
                else:
                    cols.append(dict(self.meta.get("prior", {})))
            codes = np.concatenate([codes, standardized_columns(cols, list(models))], axis=1)
        return predict_scores(self.ranker, tokens, codes)


def resolve_specs(rows: Sequence[ResultRow]) -> dict[str, DataSpec]:
    """``{dataset key: spec}`` of every dataset of ``rows`` (each row carries its dataset's spec)."""
    out: dict[str, DataSpec] = {}
    for r in rows:
        if r.dataset_key not in out:
            spec = r.dataset.get("spec")
            if not isinstance(spec, dict):
                raise UserError(
                    f"dataset '{r.dataset_name}' of the results table records no spec, so its images cannot be "
                    "found; re-run the command that measured it"
                )
            out[r.dataset_key] = DataSpec.from_dict(spec)
    return out


def build_examples(
    rows: Sequence[ResultRow],
    store: EmbeddingStore,
    codes: Mapping[str, np.ndarray],
    progress: Callable[[str], None] | None = None,
) -> list[RankExample]:
    """One :class:`RankExample` per dataset of ``rows`` (one target) with at least 2 models (``codes[model]``)."""
    truth = values_by_dataset(rows)
    specs = resolve_specs(rows)
    examples = []
    for key, accs in truth.items():
        models = sorted(m for m in accs if m in codes)
        if len(models) < 2:
            log.info("dataset %s: fewer than 2 models with embeddings; skipped", key)
            continue
        if progress is not None:
            progress(key)
        tokens = store.dataset_tokens(specs[key])
        examples.append(
            RankExample(
                key, tokens, np.stack([codes[m] for m in models]), np.array([accs[m] for m in models]), models
            )
        )
    return examples


def model_image_sizes(rows: Sequence[ResultRow]) -> dict[str, int]:
    """The image size each model's weight vector is computed at: that of its first row (default 224)."""
    out: dict[str, int] = {}
    for r in rows:
        out.setdefault(r.backbone, int(r.dataset.get("image_size") or 224))
    return out


def embed_examples(
    rows: Sequence[ResultRow],
    store: EmbeddingStore,
    autoencoder_trainer: Any,
    progress: Callable[[str], None] | None = None,
) -> tuple[Any, list[RankExample], list[str]]:
    """Embed every model (weights -> autoencoder, trained here) and dataset (encoder tokens) of ``rows`` (one
    target). Returns the autoencoder's result, one :class:`RankExample` per dataset and the model names."""
    sizes = model_image_sizes(rows)
    names = sorted(sizes)
    if len(names) < 2:
        raise UserError("the performance table needs at least 2 models")
    vectors = []
    for n in names:
        if progress is not None:
            progress(f"weights of {n}")
        vectors.append(store.model_vector(n, sizes[n]))
    ae_result = autoencoder_trainer.fit(np.stack(vectors), names)
    codes = dict(zip(names, ae_result.model.embed(np.stack(vectors))))
    examples = build_examples(
        rows,
        store,
        codes,
        progress=(lambda k: progress(f"tokens of {k}")) if progress else None,
    )
    if not examples:
        raise UserError("no dataset in the performance table has at least 2 models")
    return ae_result, examples, names


def train_learned_ranker(
    rows: Sequence[ResultRow],
    store: EmbeddingStore,
    autoencoder_trainer: Any,
    ranker_trainer: Any,
    out_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    features: PairFeatures | None = None,
) -> tuple[LearnedRanker, list[RankExample], dict[str, Any]]:
    """:func:`embed_examples`, then the ranker trained on them, with ``features`` next to the model codes (each
    list's prior leaves its own dataset out). Returns the bundle (saved to ``out_dir`` when given), the examples
    (without the features) and both results."""
    if out_dir is not None:
        autoencoder_trainer.out_dir = Path(out_dir) / "autoencoder"
        ranker_trainer.out_dir = Path(out_dir) / "ranker"
    ae_result, examples, names = embed_examples(rows, store, autoencoder_trainer, progress)
    with_features = [features.attach(e, {e.dataset}) for e in examples] if features else examples
    column, offset = features.offset_column(with_features) if features else (None, None)
    rk_result = ranker_trainer.fit(with_features, offset_column=column)
    meta: dict[str, Any] = {
        "datasets": [e.dataset for e in examples],
        "models": names,
        "target": sorted({r.target for r in rows}),
        "features": features.names if features else [],
        "offset": offset,
    }
    if features is not None and "prior" in features.kinds:
        meta["prior"] = mean_rank_prior(features.truth, None)
    bundle = LearnedRanker(ae_result.model, rk_result.model, store.settings, meta)
    if out_dir is not None:
        bundle.save(out_dir)
    return bundle, examples, {"autoencoder": ae_result, "ranker": rk_result}


def evaluate_lodo(
    examples: Sequence[RankExample],
    make_trainer: Callable[[], Any],
    baselines: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    progress: Callable[[str], None] | None = None,
    features: PairFeatures | None = None,
) -> LodoResult:
    """Leave-one-dataset-out: a fresh ranker from ``make_trainer()`` per held-out dataset; with ``features``,
    each fold rebuilds them so that no prior (of a training list or of the held-out one) sees the held-out
    dataset's accuracies."""
    by_key = {e.dataset: e for e in examples}
    truth = {e.dataset: dict(zip(e.models, map(float, e.targets))) for e in examples}
    offsets: dict[str, str | None] = {}  # the feature each fold's ranker started from

    def train_and_predict(train: list[str], held: str) -> dict[str, float]:
        def prepared(key: str) -> RankExample:
            return features.attach(by_key[key], {held, key}) if features else by_key[key]

        lists = [prepared(k) for k in train]
        column, offset = features.offset_column(lists) if features else (None, None)
        offsets[held] = offset
        result = make_trainer().fit(lists, offset_column=column)
        ex = prepared(held)
        return dict(zip(ex.models, map(float, predict_scores(result.model, ex.data_tokens, ex.model_codes))))

    result = leave_one_dataset_out(list(by_key), truth, train_and_predict, baselines, progress)
    result.details["ranker_offsets"] = offsets
    return result
