"""Statistics of a comparison: confidence intervals, paired tests, pretraining gains, fair pairs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transferkit.backbones.registry import split_random_suffix
from transferkit.compare.results import (
    PROTOCOL_LABELS,
    BackboneResult,
    FairPair,
    PairwiseTest,
    PretrainingGain,
    ProtocolGain,
)


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


def fair_pairs(entries: Sequence[BackboneResult], max_ratio: float = 4.0) -> list[FairPair]:
    """Each backbone matched with the closest-size backbone (|log param ratio|) of every other modality.

    ``size_ratio`` is larger / smaller, ``size_gap`` (params - partner) / partner, ``fair`` ratio <= ``max_ratio``;
    for a fair pair only, ``deltas[protocol]`` is the backbone's test top-1 minus the partner's under every
    protocol both ran (None when the closest partner is too far in size to compare).
    """
    rows = []
    mods = sorted({e.modality for e in entries})
    for e in entries:
        for m in mods:
            if m == e.modality:
                continue
            others = [o for o in entries if o.modality == m]
            o = min(others, key=lambda o: (abs(math.log(o.num_params / e.num_params)), o.name))
            ratio = max(e.num_params, o.num_params) / min(e.num_params, o.num_params)
            fair = ratio <= max_ratio
            shared = [p for p in e.protocols if p in o.protocols]
            rows.append(
                FairPair(
                    backbone=e.name,
                    modality=e.modality,
                    params=e.num_params,
                    partner=o.name,
                    partner_modality=m,
                    partner_params=o.num_params,
                    size_ratio=ratio,
                    size_gap=(e.num_params - o.num_params) / o.num_params,
                    fair=fair,
                    deltas={
                        p: e.protocols[p].test_acc1 - o.protocols[p].test_acc1 if fair else None
                        for p in shared
                    },
                )
            )
    return rows


def pairwise_tests(
    entries: Sequence[BackboneResult], correct: Mapping[str, Mapping[str, np.ndarray]]
) -> list[PairwiseTest]:
    """Every pair of backbones, per protocol both ran with per-image test results in ``correct[name][protocol]``:
    test top-1 difference ``delta`` (a minus b) and the exact McNemar ``p`` on the same test images (uncorrected
    for the number of pairs)."""
    rows = []
    for i, a in enumerate(entries):
        for b in entries[i + 1 :]:
            for protocol in PROTOCOL_LABELS:
                ca, cb = correct.get(a.name, {}).get(protocol), correct.get(b.name, {}).get(protocol)
                if ca is None or cb is None or protocol not in a.protocols or protocol not in b.protocols:
                    continue
                delta = a.protocols[protocol].test_acc1 - b.protocols[protocol].test_acc1
                rows.append(PairwiseTest(a.name, b.name, protocol, delta, mcnemar_p(ca, cb)))
    return rows


@dataclass
class Leaders:
    """Under one protocol: the backbone with the best test top-1, those not significantly behind it
    (``(name, McNemar p)``), ``worst_p`` (the largest p of the best against the others) and ``untested`` (the
    others without a McNemar test against it: per-image results missing)."""

    best: str
    ties: list[tuple[str, float]]
    worst_p: float | None
    untested: list[str]


def leaders(
    entries: Sequence[BackboneResult], pairwise: Sequence[PairwiseTest], protocol: str, alpha: float = 0.05
) -> Leaders:
    """The backbone with the best test top-1 under ``protocol`` (among those that ran it) and those not
    significantly behind it (McNemar p >= ``alpha``)."""
    ran = [e for e in entries if protocol in e.protocols]
    best = max(ran, key=lambda e: (e.protocols[protocol].test_acc1, e.name)).name
    tests = [r for r in pairwise if r.protocol == protocol and best in (r.a, r.b)]
    ties = [(r.b if r.a == best else r.a, r.p) for r in tests if r.p >= alpha]
    tested = {r.a for r in tests} | {r.b for r in tests}
    untested = [e.name for e in ran if e.name != best and e.name not in tested]
    return Leaders(best, ties, max((r.p for r in tests), default=None), untested)


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
    entries: Sequence[BackboneResult], correct: Mapping[str, Mapping[str, np.ndarray]] | None = None
) -> list[PretrainingGain]:
    """``X`` vs its random twin ``X:random`` when both were compared, under every protocol both ran: test top-1
    and its difference and, given the per-image test correctness ``correct[name][protocol]``, the exact McNemar
    p."""
    by_name = {e.name: e for e in entries}
    rows = []
    for e in entries:
        base, is_random = split_random_suffix(e.name)
        if is_random or not e.pretrained:
            continue
        twin = by_name.get(f"{base}:random")
        if twin is None:
            continue
        gains = {}
        for protocol in PROTOCOL_LABELS:
            if protocol not in e.protocols or protocol not in twin.protocols:
                continue
            ours, theirs = e.protocols[protocol].test_acc1, twin.protocols[protocol].test_acc1
            ca = (correct or {}).get(e.name, {}).get(protocol)
            cb = (correct or {}).get(twin.name, {}).get(protocol)
            p = mcnemar_p(ca, cb) if ca is not None and cb is not None else None
            gains[protocol] = ProtocolGain(ours, theirs, ours - theirs, p)
        rows.append(PretrainingGain(e.name, twin.name, gains))
    return rows
