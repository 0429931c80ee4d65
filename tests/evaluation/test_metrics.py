"""Metric values against scikit-learn (and a direct numpy ECE) on fixed predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from transferkit.errors import UserError
from transferkit.evaluation.calibration import reliability_bins
from transferkit.evaluation.metrics import classification_metrics, confusion_matrix, per_class_metrics


@pytest.fixture(scope="module")
def predictions():
    g = torch.Generator().manual_seed(0)
    n, c = 600, 7
    labels = torch.arange(n) % c
    logits = torch.randn(n, c, generator=g) * 2.0
    logits[torch.arange(n), labels] += torch.rand(n, generator=g) * 3.0  # informative, imperfect
    return logits, labels


def numpy_ece(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    conf, pred = p.max(1), p.argmax(1)
    ece = 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return ece


def test_summary_metrics_match_sklearn(predictions):
    logits, labels = predictions
    m = classification_metrics(logits, labels)
    p = logits.softmax(-1).numpy()
    y, pred = labels.numpy(), p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-6)
    for avg in ("macro", "micro"):
        assert m[f"precision_{avg}"] == pytest.approx(skm.precision_score(y, pred, average=avg), abs=1e-6)
        assert m[f"recall_{avg}"] == pytest.approx(skm.recall_score(y, pred, average=avg), abs=1e-6)
        assert m[f"f1_{avg}"] == pytest.approx(skm.f1_score(y, pred, average=avg), abs=1e-6)
    assert m["roc_auc_ovr_macro"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-5
    )
    onehot = np.eye(p.shape[1])[y]
    assert m["average_precision_macro"] == pytest.approx(
        skm.average_precision_score(onehot, p, average="macro"), abs=1e-5
    )
    assert m["top5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, p, k=5), abs=1e-6)
    assert m["nll"] == pytest.approx(skm.log_loss(y, p), abs=1e-5)
    assert m["brier"] == pytest.approx(((p - onehot) ** 2).sum(1).mean(), abs=1e-6)
    assert m["ece"] == pytest.approx(numpy_ece(p, y, 15), abs=1e-5)
    assert (
        0.3 < m["accuracy"] < 0.95
    )  # the fixture is informative but imperfect: a real test of every formula


def test_per_class_and_confusion_match_sklearn(predictions):
    logits, labels = predictions
    names = [f"c{i}" for i in range(7)]
    rows = per_class_metrics(logits, labels, names)
    p = logits.softmax(-1).numpy()
    y, pred = labels.numpy(), p.argmax(1)
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, pred, labels=list(range(7)))
    for i, r in enumerate(rows):
        assert r["class"] == names[i]
        assert r["precision"] == pytest.approx(prec[i], abs=1e-6)
        assert r["recall"] == pytest.approx(rec[i], abs=1e-6)
        assert r["f1"] == pytest.approx(f1[i], abs=1e-6)
        assert r["support"] == support[i]
        assert r["roc_auc"] == pytest.approx(skm.roc_auc_score(y == i, p[:, i]), abs=1e-5)
    np.testing.assert_array_equal(confusion_matrix(logits, labels).numpy(), skm.confusion_matrix(y, pred))


def test_the_reliability_plot_and_the_metric_are_one_ece_even_on_bin_edges(predictions):
    logits, labels = predictions
    bins = reliability_bins(logits.softmax(-1), labels, n_bins=10)
    m = classification_metrics(logits, labels, n_bins=10)
    assert bins["ece"] == m["ece"] and bins["mce"] == m["mce"] and sum(bins["count"]) == len(labels)
    # confidences exactly on bin edges, where (lo, hi] and [lo, hi) disagree
    p = torch.tensor([[0.5, 0.5], [0.6, 0.4], [0.6, 0.4], [1.0, 0.0], [0.8, 0.2]], dtype=torch.float32)
    y = torch.tensor([0, 1, 0, 0, 1])
    edge = classification_metrics(p, y, probs=True, n_bins=5)
    assert edge["ece"] == reliability_bins(p, y, n_bins=5)["ece"]
    assert edge["ece"] == pytest.approx(numpy_ece(p.numpy(), y.numpy(), 5), abs=1e-7)  # Guo et al.: (lo, hi]


def test_macro_averages_count_every_class_and_nll_does_not_saturate():
    # class 3 has no sample and no prediction: the unweighted mean over all 4 classes counts it as 0
    logits = torch.tensor(
        [[3.0, 0.0, 0.0, -1.0], [0.0, 3.0, 0.0, -1.0], [0.0, 0.0, 3.0, -1.0], [3.0, 0.0, 0.0, -1.0]]
    )
    labels = torch.tensor([0, 1, 2, 2])
    m = classification_metrics(logits, labels)
    pred = logits.argmax(1).numpy()
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        want = fn(labels.numpy(), pred, labels=[0, 1, 2, 3], average="macro", zero_division=0)
        assert m[f"{name}_macro"] == pytest.approx(want, abs=1e-6), name
    # a saturated wrong prediction: log-softmax gives its true cost (clamping at 1e-12 capped it at 27.6 nats)
    wrong = torch.tensor([[60.0, 0.0], [0.0, 5.0]])
    nll = classification_metrics(wrong, torch.tensor([1, 1]))["nll"]
    assert nll == pytest.approx(
        float(torch.nn.functional.cross_entropy(wrong.double(), torch.tensor([1, 1])))
    )
    assert nll > 27.6 / 2


def test_absent_class_has_no_auroc_and_bad_input_is_a_user_error():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.5, 0.0], [0.2, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 1])  # class 2 never occurs
    rows = per_class_metrics(logits, labels, ["a", "b", "c"])
    assert rows[2]["roc_auc"] is None and rows[2]["support"] == 0
    m = classification_metrics(logits, labels)
    assert m["classes_without_samples"] == 1
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, logits.argmax(1)))
    with pytest.raises(UserError, match="labels must lie"):
        classification_metrics(logits, torch.tensor([0, 1, 5, 1]))
