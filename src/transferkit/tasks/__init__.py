"""Lightning task modules (one training loop for every paradigm)."""

from transferkit.tasks.classification import ImageClassifier

__all__ = ["ImageClassifier"]
