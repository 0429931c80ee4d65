"""Feature space of a run's backbone: PCA and t-SNE scatter coloured by class, and how separable it is.

Pooled features ``(N, D)`` (the backbone's pooling, what the head sees) of a class-stratified sample of a
split are extracted once and cached (``analysis/features/features_<split>.npz``, keyed by checkpoint and
data). Numbers (scikit-learn):

- ``linear_separability``: 5-fold stratified cross-validated accuracy of a logistic regression on the
  standardised features (held-out folds);
- ``knn_accuracy``: 5-fold cross-validated 10-NN accuracy (cosine distance), the DINO kNN monitor;
- ``silhouette``: silhouette score of the classes (cosine), in [-1, 1];
- ``pca_explained_variance``: variance fraction of the first 10 principal components.

With a reference backbone (the run's pretrained start, or ``--reference``) the same numbers are computed for
its features, so a fine-tune shows what it changed.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.analysis.common import (
    batched,
    finish,
    load_images,
    model_device,
    output_dir,
    reference_backbone,
)
from transferkit.report.plots import class_colors, new_figure, save_figure
from transferkit.report.tables import markdown_table
from transferkit.runs import LoadedRun
from transferkit.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)


@torch.inference_mode()
def pooled_features(backbone: torch.nn.Module, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """(N, 3, S, S) in [0, 1] -> pooled features (N, D) float32 on the CPU."""
    device = model_device(backbone)
    return batched(lambda x: backbone(x.to(device)).float().cpu(), images, batch_size)


def separability(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float | None]:
    """Cross-validated logistic-regression and kNN accuracy, silhouette score and PCA spectrum."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels)
    folds = int(min(5, counts[counts > 0].min()))
    out: dict[str, float | None] = {"linear_separability": None, "knn_accuracy": None}
    if folds >= 2:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        out["linear_separability"] = float(cross_val_score(lr, features, labels, cv=cv).mean())
        knn = KNeighborsClassifier(n_neighbors=min(10, len(labels) // folds), metric="cosine")
        out["knn_accuracy"] = float(cross_val_score(knn, features, labels, cv=cv).mean())
    out["cv_folds"] = folds
    out["silhouette"] = (
        float(silhouette_score(features, labels, metric="cosine")) if len(np.unique(labels)) > 1 else None
    )
    k = min(10, features.shape[0], features.shape[1])
    out["pca_explained_variance"] = PCA(k).fit(features).explained_variance_ratio_.tolist()
    return out


def embed_2d(features: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """PCA and t-SNE 2-D embeddings of standardised features (N, D) -> each (N, 2)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(features)
    pca = PCA(2, random_state=seed).fit_transform(z)
    perplexity = float(max(2.0, min(30.0, (len(z) - 1) / 3)))
    pre = PCA(min(50, z.shape[1], len(z)), random_state=seed).fit_transform(z)
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(pre)
    return {"pca": pca, "tsne": tsne}


def plot_embeddings(
    panels: list[tuple[str, np.ndarray]], labels: np.ndarray, class_names: list[str], path: Path
) -> Path:
    fig = new_figure(4.6 * len(panels), 4.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = class_colors(len(class_names))
    for ax, (title, xy) in zip(axes, panels):
        for c, name in enumerate(class_names):
            m = labels == c
            if m.any():
                ax.scatter(xy[m, 0], xy[m, 1], s=6, color=colors[c], label=name, alpha=0.8, linewidths=0)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(class_names) <= 20:
        axes[-1].legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return save_figure(fig, path)


def cached_features(
    run: LoadedRun, split: str, images: torch.Tensor, max_images: int | None, seed: int
) -> torch.Tensor:
    path = output_dir(run, "features") / f"features_{split}.npz"
    key = run.cache_key(split, extra=f"features:{max_images}:{seed}:{run.model.backbone.pooling}")
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return torch.from_numpy(z["features"])
    feats = pooled_features(run.model.backbone, images)
    buf = io.BytesIO()
    np.savez(buf, features=feats.numpy(), key=np.array(key))
    atomic_write_bytes(path, buf.getvalue())
    return feats


def analyze_features(
    run: LoadedRun,
    *,
    split: str = "test",
    max_images: int | None = 1000,
    reference: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Feature-space analysis of ``run`` on ``split`` (see the module docstring)."""
    images, labels = load_images(run, split, max_images, seed)
    feats = cached_features(run, split, images, max_images, seed).numpy()
    y = labels.numpy()
    names = run.class_names
    out = output_dir(run, "features")
    emb = embed_2d(feats, seed)
    data: dict[str, Any] = {"split": split, "num_images": int(len(y)), "dim": int(feats.shape[1])}
    data["trained"] = separability(feats, y, seed)
    panels = [("trained: PCA", emb["pca"]), ("trained: t-SNE", emb["tsne"])]
    ref_bb, ref_note = reference_backbone(run, reference)
    data["reference"] = ref_note
    if ref_bb is not None:
        ref_bb.to(model_device(run.model.backbone))
        ref_feats = pooled_features(ref_bb, images).numpy()
        if np.allclose(ref_feats, feats, atol=1e-5):
            data["reference_features"] = "identical to the trained backbone's (frozen backbone)"
        else:
            data["reference_separability"] = separability(ref_feats, y, seed)
            ref_emb = embed_2d(ref_feats, seed)
            panels += [("reference: PCA", ref_emb["pca"]), ("reference: t-SNE", ref_emb["tsne"])]
    files = {"embeddings": plot_embeddings(panels, y, names, out / "embeddings.png")}
    rows = [["trained", *_row(data["trained"])]]
    if "reference_separability" in data:
        rows.append(["reference", *_row(data["reference_separability"])])
    section = (
        f"Pooled features ({data['dim']}-d) of {data['num_images']} {split} images. Reference: {ref_note}"
        + (f" — {data['reference_features']}." if "reference_features" in data else ".")
        + "\n\n"
        + markdown_table(
            [
                "backbone",
                "linear separability (LogReg, CV)",
                "kNN accuracy (CV)",
                "silhouette",
                "PC1 variance",
            ],
            rows,
        )
    )
    return finish(run, "features", data, files, section)


def _row(s: dict[str, Any]) -> list[Any]:
    return [s["linear_separability"], s["knn_accuracy"], s["silhouette"], s["pca_explained_variance"][0]]
