"""Statistics of a comparison: confidence intervals, paired tests, pretraining gains, fair pairs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from transferkit.backbones.registry import split_random_suffix


def wilson_ci(correct: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy ``correct / total`` (scipy)."""
    from scipy.stats import binomtest

    if total <= 0:
        return (0.0, 1.0)
    ci = binomtest(int(correct), int(total)).proportion_ci(confidence_level=level, method="wilson")
    return (float(ci.low), float(ci.high))


def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact McNemar test (two-sided binomial test on the discordant pairs) of two classifiers evaluated on the
    same images: the probability of a difference at least this large if both were equally accurate."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)


def fair_pairs(entries: Sequence[dict[str, Any]], max_ratio: float = 4.0) -> list[dict[str, Any]]:
    """Each backbone matched with the closest-size backbone (|log param ratio|) of every other modality.

    Rows: ``backbone``, ``modality``, ``params``, ``partner``, ``partner_modality``, ``partner_params``,
    ``size_ratio`` (larger / smaller), ``size_gap`` ((params - partner) / partner), ``fair`` (ratio <=
    ``max_ratio``) and, for a fair pair only, the backbone's linear-probe and kNN test top-1 minus the partner's
    (``linear_delta``, ``knn_delta``; None when the closest partner is too far in size to compare).
    """
    rows = []
    mods = sorted({e["modality"] for e in entries})
    for e in entries:
        for m in mods:
            if m == e["modality"]:
                continue
            others = [o for o in entries if o["modality"] == m]
            o = min(others, key=lambda o: (abs(math.log(o["num_params"] / e["num_params"])), o["name"]))
            ratio = max(e["num_params"], o["num_params"]) / min(e["num_params"], o["num_params"])
            fair = ratio <= max_ratio
            rows.append(
                {
                    "backbone": e["name"],
                    "modality": e["modality"],
                    "params": e["num_params"],
                    "partner": o["name"],
                    "partner_modality": m,
                    "partner_params": o["num_params"],
                    "size_ratio": ratio,
                    "size_gap": (e["num_params"] - o["num_params"]) / o["num_params"],
                    "fair": fair,
                    "linear_delta": e["linear"]["test_acc1"] - o["linear"]["test_acc1"] if fair else None,
                    "knn_delta": e["knn"]["test_acc1"] - o["knn"]["test_acc1"] if fair else None,
                }
            )
    return rows


def pairwise_tests(
    entries: Sequence[dict[str, Any]], correct: dict[str, dict[str, np.ndarray]]
) -> list[dict[str, Any]]:
    """Every pair of backbones, per protocol (``linear``, ``knn``): test top-1 difference ``delta`` (a minus b)
    and the exact McNemar ``p`` on the same test images (uncorrected for the number of pairs)."""
    rows = []
    for i, a in enumerate(entries):
        for b in entries[i + 1 :]:
            for protocol in ("linear", "knn"):
                if a["name"] not in correct or b["name"] not in correct:
                    continue
                rows.append(
                    {
                        "a": a["name"],
                        "b": b["name"],
                        "protocol": protocol,
                        "delta": a[protocol]["test_acc1"] - b[protocol]["test_acc1"],
                        "p": mcnemar_p(correct[a["name"]][protocol], correct[b["name"]][protocol]),
                    }
                )
    return rows


def leaders(
    entries: Sequence[dict[str, Any]], pairwise: Sequence[dict[str, Any]], protocol: str, alpha: float = 0.05
) -> dict[str, Any]:
    """The backbone with the best test top-1 under ``protocol`` and those not significantly behind it
    (McNemar p >= ``alpha``): ``{"best": name, "ties": [(name, p), ...]}``."""
    best = max(entries, key=lambda e: (e[protocol]["test_acc1"], e["name"]))["name"]
    ties = []
    for r in pairwise:
        if r["protocol"] == protocol and best in (r["a"], r["b"]) and r["p"] >= alpha:
            ties.append((r["b"] if r["a"] == best else r["a"], r["p"]))
    return {"best": best, "ties": ties}


def seed_summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of one figure over seeds."""
    v = np.asarray(values, dtype=float)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "values": [float(x) for x in v],
    }


def pretraining_gains(
    entries: Sequence[dict[str, Any]], correct: dict[str, dict[str, np.ndarray]] | None = None
) -> list[dict[str, Any]]:
    """``X`` vs its random twin ``X:random`` when both were compared: test top-1 differences and, given the
    per-image test correctness ``correct[name][protocol]``, exact McNemar p-values (``linear_p``, ``knn_p``)."""
    by_name = {e["name"]: e for e in entries}
    rows = []
    for e in entries:
        base, is_random = split_random_suffix(e["name"])
        if is_random or not e["pretrained"]:
            continue
        twin = by_name.get(f"{base}:random")
        if twin is None:
            continue
        row = {
            "backbone": e["name"],
            "random_twin": twin["name"],
            "linear_pretrained": e["linear"]["test_acc1"],
            "linear_random": twin["linear"]["test_acc1"],
            "linear_gain": e["linear"]["test_acc1"] - twin["linear"]["test_acc1"],
            "knn_pretrained": e["knn"]["test_acc1"],
            "knn_random": twin["knn"]["test_acc1"],
            "knn_gain": e["knn"]["test_acc1"] - twin["knn"]["test_acc1"],
        }
        if correct and e["name"] in correct and twin["name"] in correct:
            for protocol in ("linear", "knn"):
                row[f"{protocol}_p"] = mcnemar_p(
                    correct[e["name"]][protocol], correct[twin["name"]][protocol]
                )
        if e.get("finetune") and twin.get("finetune"):
            row["finetune_gain"] = e["finetune"]["test_acc1"] - twin["finetune"]["test_acc1"]
        rows.append(row)
    return rows
