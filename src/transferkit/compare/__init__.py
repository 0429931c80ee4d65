"""Fair comparison of backbones on one dataset: the same data, the same frozen-feature protocols, one report.

- :mod:`~transferkit.compare.runner`: :func:`run_compare` (features once, linear-probe grid, logistic
  regression, kNN, optional fine-tune through ``transferkit fit``), ``metrics.json`` and results-table rows;
- :mod:`~transferkit.compare.results`: the typed results (:class:`CompareResults`, :class:`BackboneResult`,
  :class:`ProtocolResult` and its kinds), dicts only at the ``results.json`` edge;
- :mod:`~transferkit.compare.stats`: Wilson intervals, exact McNemar tests, pretraining gains, fair pairs;
- :mod:`~transferkit.compare.doubts`: the strongest linear protocol and the doubts, by named rules;
- :mod:`~transferkit.compare.report`: the tables, plots and report of a run;
- :mod:`~transferkit.compare.options`: the ``--probe``, ``--knn`` and ``--finetune`` option groups.

The command is ``transferkit compare`` (:mod:`transferkit.commands.compare`); see docs/compare.md.
"""

from transferkit.utils.lazy import lazy_exports

#: public names and their modules, imported on first use (``transferkit.compare.options`` stays torch-free)
_LAZY = {
    **{n: "options" for n in ("FinetuneOptions", "KnnOptions", "ProbeOptions")},
    **{n: "options" for n in ("DEFAULT_BACKBONES", "parse_backbones")},
    **{n: "runner" for n in ("result_rows", "run_compare")},
    **{n: "results" for n in ("BackboneResult", "CompareResults", "Doubt", "ProtocolResult")},
    **{n: "stats" for n in ("fair_pairs", "mcnemar_p", "pretraining_gains", "wilson_ci")},
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "DEFAULT_BACKBONES",
    "BackboneResult",
    "CompareResults",
    "Doubt",
    "FinetuneOptions",
    "KnnOptions",
    "ProbeOptions",
    "ProtocolResult",
    "fair_pairs",
    "mcnemar_p",
    "parse_backbones",
    "pretraining_gains",
    "result_rows",
    "run_compare",
    "wilson_ci",
]
