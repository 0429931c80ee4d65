"""Classification metrics from logits (torchmetrics), checked against scikit-learn in the tests.

Input contract: ``logits`` ``(N, C)`` float (or probabilities, ``probs=True``), ``labels`` ``(N,)`` int64 in
``[0, C)``. Averages follow scikit-learn's definitions with ``labels=range(C)`` and ``zero_division=0``:
*micro* pools every decision (for single-label data micro precision = recall = F1 = accuracy), *macro* is the
unweighted mean over all C classes (a class with no sample and no prediction counts as 0, as scikit-learn counts
it), *balanced accuracy* the mean recall over the classes present in ``labels`` (scikit-learn's
``balanced_accuracy_score``). ROC-AUC and average precision are one-vs-rest, macro-averaged over the classes
present in ``labels`` (a class without positives has no ROC curve; it is reported as None). NLL is computed from
the logits (``log_softmax``, no clamping); ECE/MCE use the reliability diagram's bins
(:func:`~transferkit.evaluation.calibration.reliability_bins`), so the plot and the metric are one number.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_average_precision,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from transferkit.errors import UserError
from transferkit.evaluation.calibration import reliability_bins


def _check(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    scores = torch.as_tensor(scores).float()
    labels = torch.as_tensor(labels).long()
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise UserError(
            f"expected scores (N, C) and labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    c = scores.shape[1]
    if labels.numel() == 0:
        raise UserError("no predictions to evaluate (the split is empty)")
    if labels.min() < 0 or labels.max() >= c:
        raise UserError(f"labels must lie in [0, {c}), got [{int(labels.min())}, {int(labels.max())}]")
    return scores, labels, c


def to_probs(scores: torch.Tensor, probs: bool = False) -> torch.Tensor:
    """Logits (N, C) -> softmax probabilities (float32); probabilities pass through."""
    scores = torch.as_tensor(scores).float()
    return scores if probs else scores.softmax(-1)


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def classification_metrics(
    scores: torch.Tensor, labels: torch.Tensor, *, probs: bool = False, n_bins: int = 15
) -> dict[str, Any]:
    """Summary metrics of one split: accuracy, top-5, balanced accuracy, macro/micro precision/recall/F1,
    ROC-AUC and average precision (OvR, macro), NLL, Brier score, ECE and MCE (``n_bins`` equal-width bins)."""
    scores, labels, c = _check(scores, labels)
    p = to_probs(scores, probs)
    preds = p.argmax(-1)
    present = torch.bincount(labels, minlength=c) > 0
    out: dict[str, Any] = {
        "num_samples": int(labels.numel()),
        "num_classes": c,
        "accuracy": float(multiclass_accuracy(preds, labels, c, average="micro")),
        "top5_accuracy": float(multiclass_accuracy(p, labels, c, top_k=min(5, c), average="micro")),
        "balanced_accuracy": float(multiclass_recall(preds, labels, c, average=None)[present].mean()),
    }
    for name, fn in (
        ("precision", multiclass_precision),
        ("recall", multiclass_recall),
        ("f1", multiclass_f1_score),
    ):
        # macro over every one of the C classes (torchmetrics' own macro leaves out classes never seen)
        out[f"{name}_macro"] = float(fn(preds, labels, c, average=None).mean())
        out[f"{name}_micro"] = float(fn(preds, labels, c, average="micro"))
    auroc = per_class_auroc(p, labels)
    ap = multiclass_average_precision(p, labels, c, average=None)
    valid = [a for a in auroc if a is not None]
    out["roc_auc_ovr_macro"] = float(sum(valid) / len(valid)) if valid else None
    out["average_precision_macro"] = float(ap[present].mean()) if present.any() else None
    if probs:  # probabilities given: their logarithm (a probability of exactly 0 costs infinity)
        out["nll"] = float(F.nll_loss(scores.double().log(), labels))
    else:
        out["nll"] = float(F.cross_entropy(scores.double(), labels))
    out["brier"] = float(((p - F.one_hot(labels, c).float()) ** 2).sum(-1).mean())
    bins = reliability_bins(p, labels, n_bins)
    out["ece"], out["mce"] = bins["ece"], bins["mce"]
    out["classes_without_samples"] = int((~present).sum())
    return out


def per_class_auroc(p: torch.Tensor, labels: torch.Tensor) -> list[float | None]:
    """One-vs-rest ROC-AUC of each class (None where the class has no positive or no negative sample)."""
    c = p.shape[1]
    counts = torch.bincount(labels, minlength=c)
    with warnings.catch_warnings():  # a class without positives has no curve: reported as None below
        warnings.filterwarnings("ignore", message=".*(positive|negative) samples in targets.*")
        values = multiclass_auroc(p, labels, c, average=None, thresholds=None)
    return [
        float(v) if 0 < int(n) < labels.numel() else None for v, n in zip(values.tolist(), counts.tolist())
    ]


def per_class_metrics(
    scores: torch.Tensor, labels: torch.Tensor, class_names: list[str], *, probs: bool = False
) -> list[dict[str, Any]]:
    """One row per class: precision, recall (= per-class accuracy), F1, ROC-AUC (OvR), AP, support."""
    scores, labels, c = _check(scores, labels)
    if len(class_names) != c:
        raise UserError(f"{len(class_names)} class names for {c} score columns")
    p = to_probs(scores, probs)
    preds = p.argmax(-1)
    prec = multiclass_precision(preds, labels, c, average=None).tolist()
    rec = multiclass_recall(preds, labels, c, average=None).tolist()
    f1 = multiclass_f1_score(preds, labels, c, average=None).tolist()
    ap = multiclass_average_precision(p, labels, c, average=None).tolist()
    auroc = per_class_auroc(p, labels)
    support = torch.bincount(labels, minlength=c).tolist()
    predicted = torch.bincount(preds, minlength=c).tolist()
    return [
        {
            "class": class_names[i],
            "precision": prec[i],
            "recall": rec[i],
            "f1": f1[i],
            "roc_auc": auroc[i],
            "average_precision": _none_if_nan(ap[i]) if support[i] > 0 else None,
            "support": support[i],
            "predicted": predicted[i],
        }
        for i in range(c)
    ]


def confusion_matrix(scores: torch.Tensor, labels: torch.Tensor, *, probs: bool = False) -> torch.Tensor:
    """(C, C) int64 counts, rows = true class, columns = predicted class (scikit-learn's layout)."""
    scores, labels, c = _check(scores, labels)
    return multiclass_confusion_matrix(scores.argmax(-1), labels, c)
