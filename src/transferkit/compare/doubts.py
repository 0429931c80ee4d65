"""What to doubt in a compare run's answer, by named rules, and which linear protocol its claims rest on.

- :func:`strongest_linear`: the linear protocol (grid or logistic regression) the headline's claims use;
- :func:`lr_edge`: whether a learning rate sits on the edge of its grid;
- :func:`finetune_convergence`: whether a fine-tune had converged, from its per-epoch history;
- :func:`find_doubts`: every doubt of a run (``results.json``'s ``doubts``, the report's and the console's).

The rules are stated once, in :data:`DOUBT_RULES` and :data:`STRONGEST_LINEAR_RULE`; the report prints them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from transferkit.compare.results import (
    LINEAR_PROTOCOLS,
    BackboneResult,
    CompareResults,
    Doubt,
    EpochRecord,
    StrongestLinear,
)
from transferkit.report import percent

#: the grid and the logistic regression disagree on a backbone when their test top-1 differ by more than this
DISAGREEMENT_POINTS = 2.0
#: a fine-tune has not converged when its last epoch raised val top-1 by more than this many points ...
FINETUNE_VAL_RISE_POINTS = 1.0
#: ... or lowered the mean train loss by more than this fraction of the previous epoch's
FINETUNE_LOSS_DROP = 0.05

STRONGEST_LINEAR_RULE = (
    "the linear protocol (the SGD grid or the logistic regression) with the higher mean val top-1 over the "
    "backbones; a tie goes to the grid"
)
#: doubt kind -> its rule
DOUBT_RULES = {
    "lr_edge": "the grid's chosen head has the lowest or the highest learning rate of the (final) grid: a better "
    "one may lie beyond it",
    "protocol_disagreement": "the grid and the logistic regression differ by more than "
    f"{DISAGREEMENT_POINTS:g} points of test top-1 on a backbone, or rank two backbones in opposite order",
    "finetune_unconverged": "the fine-tune's last epoch still raised val top-1 by more than "
    f"{FINETUNE_VAL_RISE_POINTS:g} point or lowered the mean train loss by more than "
    f"{100 * FINETUNE_LOSS_DROP:g}% of the previous epoch's (one epoch cannot show convergence)",
    "finetune_below_probe": "the fine-tune's test top-1 is below the backbone's best linear probe (its linear "
    "protocol better on val)",
}


def strongest_linear(backbones: Sequence[BackboneResult]) -> StrongestLinear:
    """The linear protocol the run's claims rest on, by :data:`STRONGEST_LINEAR_RULE` (over the backbones that
    ran both)."""
    both = [b for b in backbones if all(p in b.protocols for p in LINEAR_PROTOCOLS)]
    if not both:
        return StrongestLinear("linear", STRONGEST_LINEAR_RULE)
    means = {p: sum(b.protocols[p].val_acc1 for b in both) / len(both) for p in LINEAR_PROTOCOLS}
    best = max(LINEAR_PROTOCOLS, key=lambda p: (means[p], p == "linear"))
    return StrongestLinear(best, STRONGEST_LINEAR_RULE, means)


def lr_edge(lr: float, learning_rates: Sequence[float]) -> str | None:
    """``'low'`` / ``'high'`` when ``lr`` is the lowest / highest of a grid of at least two learning rates."""
    lrs = sorted({float(x) for x in learning_rates})
    if len(lrs) < 2:
        return None
    if lr <= lrs[0] or math.isclose(lr, lrs[0], rel_tol=1e-9):
        return "low"
    if lr >= lrs[-1] or math.isclose(lr, lrs[-1], rel_tol=1e-9):
        return "high"
    return None


def finetune_convergence(history: Sequence[EpochRecord]) -> tuple[bool | None, str]:
    """``(converged, reason)`` of a fine-tune by :data:`DOUBT_RULES` ``['finetune_unconverged']``; ``converged``
    is None when there is no per-epoch history to judge."""
    epochs = [h for h in history if h.train_loss is not None or h.val_acc1 is not None]
    if not epochs:
        return None, "no per-epoch history in the fit run's logs"
    if len(epochs) == 1:
        return False, "one epoch cannot show convergence"
    prev, last = epochs[-2], epochs[-1]
    still = []
    if prev.val_acc1 is not None and last.val_acc1 is not None:
        rise = 100 * (last.val_acc1 - prev.val_acc1)
        if rise > FINETUNE_VAL_RISE_POINTS:
            still.append(f"val top-1 still rose {rise:+.2f} points in the last epoch")
    if prev.train_loss is not None and last.train_loss is not None and prev.train_loss > 0:
        drop = (prev.train_loss - last.train_loss) / prev.train_loss
        if drop > FINETUNE_LOSS_DROP:
            still.append(
                f"train loss still fell {100 * drop:.0f}% in the last epoch "
                f"({prev.train_loss:.3g} -> {last.train_loss:.3g})"
            )
    if still:
        return False, "; ".join(still)
    return True, "val top-1 and train loss had levelled off in the last epoch"


def find_doubts(results: CompareResults) -> list[Doubt]:
    """Every doubt of a run, by :data:`DOUBT_RULES`: per backbone first (in run order), then the run's."""
    doubts: list[Doubt] = []
    for b in results.backbones:
        doubts += _backbone_doubts(b)
    doubts += _order_doubts(results.backbones)
    return doubts


def _backbone_doubts(b: BackboneResult) -> list[Doubt]:
    out = []
    grid = b.linear
    if grid.lr_edge is not None:
        lr = grid.best_head["lr"]
        lrs = grid.learning_rates or sorted({h["lr"] for h in grid.grid})
        where = "lowest" if grid.lr_edge == "low" else "highest"
        extended = f", after {grid.extensions} automatic extension(s)" if grid.extensions else ""
        out.append(
            Doubt(
                "lr_edge",
                b.name,
                f"{b.name}: the grid's best learning rate, {lr:g}, is the {where} of the grid "
                f"({min(lrs):g}..{max(lrs):g}{extended}); a {'lower' if grid.lr_edge == 'low' else 'higher'} "
                "one may do better (--probe.learning_rates)",
            )
        )
    logreg = b.logreg
    if logreg is not None:
        gap = 100 * (logreg.test_acc1 - grid.test_acc1)
        if abs(gap) > DISAGREEMENT_POINTS:
            out.append(
                Doubt(
                    "protocol_disagreement",
                    b.name,
                    f"{b.name}: the linear protocols disagree by {abs(gap):.2f} points (grid {percent(grid.test_acc1)}%, "
                    f"logistic regression {percent(logreg.test_acc1)}% test top-1; more than "
                    f"{DISAGREEMENT_POINTS:g})",
                )
            )
    ft = b.finetune
    if ft is not None:
        if not ft.converged:
            out.append(
                Doubt(
                    "finetune_unconverged",
                    b.name,
                    f"{b.name}: the fine-tune ({ft.epochs} epoch{'s' if ft.epochs != 1 else ''}) "
                    + ("may not have converged" if ft.converged is None else "had not converged")
                    + f": {ft.convergence}; its {percent(ft.test_acc1)}% may rise with more epochs "
                    "(--finetune.epochs)",
                )
            )
        probe = b.best_linear()
        if ft.test_acc1 < probe.test_acc1:
            out.append(
                Doubt(
                    "finetune_below_probe",
                    b.name,
                    f"{b.name}: the fine-tune ({percent(ft.test_acc1)}%) is below its {probe.label} "
                    f"({percent(probe.test_acc1)}% test top-1)",
                )
            )
    return out


def _order_doubts(backbones: Sequence[BackboneResult]) -> list[Doubt]:
    """The grid and the logistic regression ranking two backbones in opposite order (strictly, on test)."""
    both = [b for b in backbones if b.logreg is not None]
    flipped = []
    for i, a in enumerate(both):
        for c in both[i + 1 :]:
            d_grid = a.linear.test_acc1 - c.linear.test_acc1
            d_logreg = a.protocols["logreg"].test_acc1 - c.protocols["logreg"].test_acc1
            if d_grid * d_logreg < 0:
                up, down = (a, c) if d_grid > 0 else (c, a)
                flipped.append(f"the grid ranks {up.name} above {down.name}, the logistic regression below")
    if not flipped:
        return []
    shown = "; ".join(flipped[:3]) + (f"; and {len(flipped) - 3} more pairs" if len(flipped) > 3 else "")
    return [
        Doubt(
            "protocol_disagreement",
            None,
            f"the linear protocols order the backbones differently: {shown} (test top-1)",
        )
    ]
