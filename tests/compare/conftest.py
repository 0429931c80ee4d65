"""Compare results built from fixed numbers, without running a backbone: each backbone's protocol results and the
per-image test correctness they come from."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from transferkit.compare.results import BackboneResult, GridResult, KnnResult, LogisticResult

N_TEST = 200


def correct_of(acc: float, n: int = N_TEST) -> np.ndarray:
    """``n`` test images of which the first ``acc * n`` are right: two of these differ only one way, so a gap of
    a few percent is significant (McNemar) and a gap of one image is not."""
    return np.arange(n) < round(acc * n)


def make_backbone(
    name: str,
    *,
    linear: tuple[float, float],
    logreg: tuple[float, float] | None = None,
    knn: tuple[float, float] = (0.5, 0.5),
    lr: float = 0.1,
    learning_rates: tuple[float, ...] = (0.01, 0.1, 1.0),
    lr_edge: str | None = None,
    modality: str = "vision",
    num_params: int = 1_000_000,
    pretrained: bool | None = None,
) -> tuple[BackboneResult, dict[str, np.ndarray]]:
    """A backbone's results from ``(val top-1, test top-1)`` per protocol, and its per-image test correctness."""
    speed = 100.0 + 10 * len(name) + ord(name[0])  # images/s: apart on a log axis
    head = {"name": f"mean/last1_lr{lr:g}", "variant": "mean/last1", "lr": lr, "weight_decay": 0.0}
    protocols = {
        "linear": GridResult(
            val_acc1=linear[0],
            test_acc1=linear[1],
            test_ci95=(linear[1] - 0.05, linear[1] + 0.05),
            per_class_acc=[linear[1], linear[1]],
            best_head={**head, "val_acc1": linear[0]},
            poolings=["mean"],
            layers=[1],
            num_heads=len(learning_rates),
            epochs=10,
            seconds=0.1,
            learning_rates=list(learning_rates),
            lr_edge=lr_edge,
            grid=[
                {**head, "name": f"mean/last1_lr{x:g}", "lr": x, "val_acc1": linear[0] if x == lr else 0.1}
                for x in learning_rates
            ],
        ),
        "knn": KnnResult(
            val_acc1=knn[0],
            test_acc1=knn[1],
            test_ci95=(knn[1] - 0.05, knn[1] + 0.05),
            per_class_acc=[knn[1], knn[1]],
            pooling="mean",
            temperature=0.07,
            best_k=10,
            acc1={"val": {"10": knn[0]}, "test": {"10": knn[1]}},
        ),
    }
    if logreg is not None:
        protocols["logreg"] = LogisticResult(
            val_acc1=logreg[0],
            test_acc1=logreg[1],
            test_ci95=(logreg[1] - 0.05, logreg[1] + 0.05),
            per_class_acc=[logreg[1], logreg[1]],
            variant="mean/last1",
            c=1.0,
            seconds=0.1,
        )
    result = BackboneResult(
        name=name,
        pretrained=not name.endswith(":random") if pretrained is None else pretrained,
        family="vit",
        modality=modality,
        num_params=num_params,
        embed_dim=64,
        num_blocks=2,
        default_pooling="cls",
        weights_digest="0" * 16,
        throughput={"images_per_s": speed, "images_per_s_range": [speed - 10, speed + 10]},
        protocols=dict(sorted(protocols.items(), key=lambda kv: ["linear", "logreg", "knn"].index(kv[0]))),
    )
    correct = {p: correct_of(r.test_acc1) for p, r in result.protocols.items()}
    return result, correct


def fixed_dataset() -> dict:
    """A ``DataSpec.describe()``-like dataset entry of 2 classes and 200 test images."""
    return {
        "key": "f" * 40,
        "name": "fixed",
        "spec": {"init_args": {"source": "digits"}, "classes": None},
        "source": "digits",
        "num_classes": 2,
        "class_names": ["0", "1"],
        "counts": {"train": 400, "val": 200, "test": N_TEST},
        "image_size": 32,
    }


FIXED_PROTOCOL = {
    "probe": {"learning_rates": [0.01, 0.1, 1.0], "weight_decays": [0.0], "layers": [1], "epochs": 10,
              "batch_size": 256, "precision": "float32"},
    "knn": {"ks": [10], "temperature": 0.07, "pooling": None},
    "finetune": None,
    "seed": 0,
    "seeds": 1,
    "fair_max_ratio": 4.0,
    "device": "cpu",
}  # fmt: skip


@pytest.fixture
def fixed() -> SimpleNamespace:
    """``backbone(...)`` (:func:`make_backbone`), ``correct_of(acc)``, a ``dataset`` entry and the ``protocol``
    settings of a run made of fixed numbers."""
    return SimpleNamespace(
        backbone=make_backbone,
        correct_of=correct_of,
        dataset=fixed_dataset(),
        protocol=dict(FIXED_PROTOCOL),
        n_test=N_TEST,
    )
