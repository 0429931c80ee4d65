"""Evaluation of classification runs: metrics (torchmetrics), curves and calibration, robustness to common
corruptions, and the run report. Entry point: :func:`evaluate_run` (``transferkit evaluate --run runs/<name>``)."""

from transferkit.evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from transferkit.evaluation.evaluate import evaluate_run
from transferkit.evaluation.metrics import classification_metrics, confusion_matrix, per_class_metrics
from transferkit.evaluation.run import load_classifier, predict_split

__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "classification_metrics",
    "confusion_matrix",
    "corrupt",
    "evaluate_run",
    "per_class_metrics",
    "predict_split",
    "load_classifier",
]
