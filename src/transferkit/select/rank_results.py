"""Typed results of ``transferkit rank``: :class:`RankResults` holds one :class:`CandidateResult` per backbone
(scores, ensemble rank, :class:`CandidateCost` with the timings' spread, budget verdict, Pareto membership), the
:class:`MeasuredAccuracy` and the :class:`Recommendation`; they become a dict only at the JSON edge
(``RankResults.to_dict()`` is ``results.json``, ``RankResults.from_dict`` reads it back)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from transferkit.select.cost import Budget

#: fewer models than this make a rank correlation uninformative (two models: tau is +-1 by construction)
MIN_INFORMATIVE = 3


def _split(
    cls: type, d: Mapping[str, Any], skip: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``d`` cut into the init fields of ``cls`` and the rest (``extra``)."""
    names = {f.name for f in fields(cls) if f.init} - {"extra", *skip}
    return {k: v for k, v in d.items() if k in names}, {k: v for k, v in d.items() if k not in names}


def _pair(value: Sequence[float] | None) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


@dataclass
class Spread:
    """A quantity timed over rounds (:func:`~transferkit.select.cost.spread`): the median, its interquartile
    range and range (None: a single point was recorded) and the per-round values. In ``results.json`` it is
    ``<key>``, ``<key>_iqr``, ``<key>_range`` and ``<key>_rounds``."""

    median: float
    iqr: tuple[float, float] | None = None
    range: tuple[float, float] | None = None
    rounds: list[float] = field(default_factory=list)

    @property
    def interval(self) -> tuple[float, float]:
        """The interquartile range, or the median as a point when none was recorded."""
        return self.iqr if self.iqr is not None else (self.median, self.median)

    def format(self, fmt: str) -> str:
        """``median (q25-q75)``, or the median alone when no spread was recorded."""
        mid = format(self.median, fmt)
        return f"{mid} ({format(self.iqr[0], fmt)}-{format(self.iqr[1], fmt)})" if self.iqr else mid

    def to_dict(self, key: str) -> dict[str, Any]:
        d: dict[str, Any] = {key: self.median}
        if self.iqr is not None:
            d[f"{key}_iqr"] = list(self.iqr)
        if self.range is not None:
            d[f"{key}_range"] = list(self.range)
        if self.rounds:
            d[f"{key}_rounds"] = list(self.rounds)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str) -> Spread:
        return cls(
            float(d[key]),
            _pair(d.get(f"{key}_iqr")),
            _pair(d.get(f"{key}_range")),
            [float(x) for x in d.get(f"{key}_rounds") or []],
        )

    @staticmethod
    def keys(key: str) -> tuple[str, ...]:
        return key, f"{key}_iqr", f"{key}_range", f"{key}_rounds"


@dataclass(kw_only=True)
class CostSetup:
    """What every candidate's cost was measured under: device, precision, batch size, the machine's threads and
    load, and the timing protocol (``timing``: rounds, warmup, seed, interleaved_with, spread). In
    ``results.json`` it is repeated in every candidate's ``cost`` entry, as :func:`measure_costs` gives it."""

    batch_size: int
    device: str
    precision: str
    threads: int | None = None
    cpus: int | None = None
    load_avg_1m: float | None = None
    timing: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "timing": dict(self.timing),
            "device": self.device,
            "precision": self.precision,
            "threads": self.threads,
            "cpus": self.cpus,
            "load_avg_1m": self.load_avg_1m,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CostSetup:
        known, _ = _split(cls, d)
        return cls(**{**known, "timing": dict(known.get("timing") or {})})


@dataclass(kw_only=True)
class CandidateCost:
    """What one candidate costs on this machine: throughput at the batch size and batch-1 latency with their
    spread over the interleaved rounds, peak memory of a forward at the batch size, FLOPs per image, parameters."""

    images_per_s: Spread
    latency_ms: Spread
    peak_memory_mb: float
    gflops: float
    params: int
    #: keys of the cost entry this version does not type (kept as read)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self, setup: CostSetup | None) -> dict[str, Any]:
        """The candidate's entry of ``results.json``'s ``cost``: :func:`measure_costs`' shape, which the
        functions of :mod:`transferkit.select.cost` read."""
        return {
            **self.images_per_s.to_dict("images_per_s"),
            **self.latency_ms.to_dict("latency_ms"),
            **(setup.to_dict() if setup is not None else {}),
            "peak_memory_mb": self.peak_memory_mb,
            "gflops": self.gflops,
            "params": self.params,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CandidateCost:
        """A :func:`measure_costs` entry (the setup's keys are read by :meth:`CostSetup.from_dict`)."""
        known = {
            *Spread.keys("images_per_s"),
            *Spread.keys("latency_ms"),
            "peak_memory_mb",
            "gflops",
            "params",
        }
        known |= {f.name for f in fields(CostSetup)}
        return cls(
            images_per_s=Spread.from_dict(d, "images_per_s"),
            latency_ms=Spread.from_dict(d, "latency_ms"),
            peak_memory_mb=float(d["peak_memory_mb"]),
            gflops=float(d["gflops"]),
            params=int(d["params"]),
            extra={k: v for k, v in d.items() if k not in known},
        )


@dataclass(kw_only=True)
class CandidateResult:
    """One candidate backbone: its features, every score (``learned`` among them with a learned ranker) and the
    seconds it took, its ensemble mean rank, and, when costs were measured, its cost, what it breaks of the
    budget, the ties that kept it within, and whether it is on the Pareto set."""

    name: str
    num_samples: int
    dim: int
    num_params: int
    cache_hit: bool
    extract_seconds: float
    build_seconds: float
    #: where LEEP/NCE's source predictions came from (``head``, ``gmm``, ...); None without LEEP/NCE
    source_predictions: str | None = None
    #: score name -> value (higher is better)
    scores: dict[str, float] = field(default_factory=dict)
    #: score name -> seconds (LEEP/NCE: including the source predictions)
    score_seconds: dict[str, float] = field(default_factory=dict)
    #: mean rank over the training-free scores (1 = best); None when no score was finite for every candidate
    ensemble_rank: float | None = None
    cost: CandidateCost | None = None
    #: what the candidate breaks of the budget on its own (empty: within it)
    over_budget: list[str] = field(default_factory=list)
    #: the timed limits it passes only because its interval overlaps that of a candidate within the budget
    budget_ties: list[str] = field(default_factory=list)
    pareto: bool = False
    #: keys of the candidate's ``backbones`` entry this version does not type (kept as read)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def predicted(self, by: str) -> float:
        """The prediction the recommendation uses (higher is better): the ``learned`` score, or minus the
        ensemble mean rank (NaN when there is none)."""
        if by == "learned":
            return self.scores.get("learned", float("nan"))
        return -self.ensemble_rank if self.ensemble_rank is not None else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """The candidate's entry of ``results.json``'s ``backbones`` (its scores and cost are in their own
        sections, keyed by score or by backbone; a learned score is repeated here as ``learned``)."""
        d = {
            "num_samples": self.num_samples,
            "dim": self.dim,
            "num_params": self.num_params,
            "cache_hit": self.cache_hit,
            "extract_seconds": self.extract_seconds,
            "build_seconds": self.build_seconds,
            "source_predictions": self.source_predictions,
        }
        if "learned" in self.scores:
            d["learned"] = self.scores["learned"]
        return {**d, **self.extra}


#: the candidate's fields that ``results.json`` keeps in their own sections, not in its ``backbones`` entry
_CANDIDATE_SECTIONS = (
    "name", "scores", "score_seconds", "ensemble_rank", "cost", "over_budget", "budget_ties", "pareto",
)  # fmt: skip


@dataclass
class Agreement:
    """A score's agreement with the measured accuracies over the ``n`` candidates measured
    (:func:`~transferkit.select.evaluate.rank_metrics`); taus are NaN with fewer than 2 or constant values."""

    n: int
    kendall_tau: float
    weighted_tau: float
    top1_hit: float
    top1_regret: float

    @property
    def informative(self) -> bool:
        return self.n >= MIN_INFORMATIVE

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "kendall_tau": self.kendall_tau,
            "weighted_tau": self.weighted_tau,
            "top1_hit": self.top1_hit,
            "top1_regret": self.top1_regret,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Agreement:
        return cls(
            int(d["n"]),
            float(d["kendall_tau"]),
            float(d["weighted_tau"]),
            float(d["top1_hit"]),
            float(d["top1_regret"]),
        )


@dataclass(kw_only=True)
class MeasuredAccuracy:
    """The results table's measured accuracies of this dataset (``target``: their ``protocol/metric``) and each
    score's agreement with them (none with fewer than 2 candidates measured)."""

    target: str
    #: the same dataset key; False: rows of the same dataset name at another image size
    exact_match: bool
    #: backbone -> accuracy, for every backbone measured on the dataset (candidates or not)
    values: dict[str, float]
    #: score name (and ``ensemble``) -> agreement
    agreement: dict[str, Agreement] = field(default_factory=dict)


@dataclass(kw_only=True)
class Recommendation:
    """The best-predicted candidate within the budget (None: every one is over it), predicted ``by`` the learned
    ranker's score (``learned``) or the ensemble's mean rank (``ensemble``); the candidates' verdicts and
    Pareto membership are on :class:`CandidateResult`."""

    by: str
    recommended: str | None
    budget: Budget = field(default_factory=Budget)
    #: what the latency's interval is: ``iqr`` or ``point``
    latency_interval: str = "iqr"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(kw_only=True)
class RankProtocol:
    """The settings of a rank run (the split is ``results.json``'s top-level ``split``)."""

    split: str
    max_samples: int | None = None
    seed: int = 0
    patch_size: int | None = None
    learned_ranker: str | None = None
    #: timed rounds of the cost measurement; None: costs not measured
    cost_rounds: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("split", "extra")}
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, split: str, d: Mapping[str, Any]) -> RankProtocol:
        known, extra = _split(cls, d, skip=("split",))
        return cls(split=split, **known, extra=extra)


@dataclass(kw_only=True)
class RankResults:
    """Everything a rank run measured (``results.json``, and ``metrics.json`` with ``command``).

    ``to_dict`` keeps the JSON layout readers use: ``dataset``, ``split``, ``backbones`` (per-candidate
    facts), ``scores`` and ``score_seconds`` (``{score: {backbone: value}}``), ``ensemble_rank``, ``ranking``
    (per score, best first), ``accuracy``, ``accuracy_target``, ``accuracy_exact_match``, ``correlations``
    (``{score: agreement}``), with costs ``cost`` (``{backbone: measure_costs entry}``) and ``recommendation``
    (``recommended``, ``over_budget``, ``budget_ties``, ``pareto``, ``latency_interval``, ``by``, ``budget``),
    then ``protocol`` and ``wall_time_s``.
    """

    #: :meth:`transferkit.data.spec.DataSpec.describe`: key, name, spec, counts, class names, image size, ...
    dataset: dict[str, Any]
    protocol: RankProtocol
    #: the scores computed, in order (``learned`` last with a learned ranker)
    methods: list[str]
    candidates: list[CandidateResult]
    accuracy: MeasuredAccuracy | None = None
    #: with costs: what they were measured under, and the recommendation
    cost_setup: CostSetup | None = None
    recommendation: Recommendation | None = None
    wall_time_s: float = 0.0
    #: top-level keys of ``results.json`` this version does not type (e.g. metrics.json's ``command``)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def split(self) -> str:
        return self.protocol.split

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.candidates]

    def candidate(self, name: str) -> CandidateResult:
        return next(c for c in self.candidates if c.name == name)

    @property
    def predicted_by(self) -> str:
        """``learned`` with a learned ranker's score, else ``ensemble``."""
        return "learned" if "learned" in self.methods else "ensemble"

    @property
    def predicted(self) -> dict[str, float]:
        """The prediction the recommendation ranks by (higher is better), in the order it saw the candidates
        (the learned ranker's: the candidates'; the ensemble's: by name, as
        :func:`~transferkit.select.scores.ensemble_ranks` gives it; a tie goes to the first)."""
        by = self.predicted_by
        if by == "learned":
            return {c.name: c.predicted(by) for c in self.candidates if "learned" in c.scores}
        ranked = sorted((c for c in self.candidates if c.ensemble_rank is not None), key=lambda c: c.name)
        return {c.name: c.predicted(by) for c in ranked}

    def ranking(self, method: str) -> list[str]:
        """The candidates with a ``method`` score, best first (NaN last)."""
        have = [c for c in self.candidates if method in c.scores]
        return [c.name for c in sorted(have, key=lambda c: -np.nan_to_num(c.scores[method], nan=-np.inf))]

    @property
    def pareto(self) -> list[str]:
        """The Pareto set of the prediction against the latency interval, in ascending median latency
        (:func:`~transferkit.select.cost.pareto_front`)."""
        members = [n for n in self.predicted if self.candidate(n).pareto]
        return sorted(members, key=lambda n: self._latency(n))

    def _latency(self, name: str) -> float:
        cost = self.candidate(name).cost
        return cost.latency_ms.median if cost is not None else float("nan")

    @property
    def over_budget(self) -> dict[str, list[str]]:
        """Candidate -> what it breaks of the budget, for the candidates over it."""
        return {c.name: c.over_budget for c in self.candidates if c.over_budget}

    @property
    def budget_ties(self) -> dict[str, list[str]]:
        return {c.name: c.budget_ties for c in self.candidates if c.budget_ties}

    def accuracy_of(self, name: str) -> float | None:
        """The measured accuracy of ``name`` (None: not measured)."""
        return self.accuracy.values.get(name) if self.accuracy is not None else None

    def costs(self) -> dict[str, dict[str, Any]]:
        """``results.json``'s ``cost``: per candidate with a cost, :func:`measure_costs`' entry (what the
        functions of :mod:`transferkit.select.cost` take)."""
        return {c.name: c.cost.to_dict(self.cost_setup) for c in self.candidates if c.cost is not None}

    def to_dict(self) -> dict[str, Any]:
        """``results.json``."""
        acc = self.accuracy
        d: dict[str, Any] = {
            "dataset": self.dataset,
            "split": self.split,
            "backbones": {c.name: c.to_dict() for c in self.candidates},
            "scores": {
                m: {c.name: c.scores[m] for c in self.candidates if m in c.scores} for m in self.methods
            },
            "score_seconds": {
                m: {c.name: c.score_seconds[m] for c in self.candidates if m in c.score_seconds}
                for m in self.methods
            },
            "ensemble_rank": {
                c.name: c.ensemble_rank
                for c in sorted(self.candidates, key=lambda c: c.name)
                if c.ensemble_rank is not None
            },
            "ranking": {m: self.ranking(m) for m in self.methods},
            "accuracy": dict(acc.values) if acc else {},
            "accuracy_target": acc.target if acc else None,
            "accuracy_exact_match": acc.exact_match if acc else None,
            "correlations": {s: a.to_dict() for s, a in acc.agreement.items()} if acc else {},
        }
        rec = self.recommendation
        if rec is not None:
            d["cost"] = self.costs()
            d["recommendation"] = {
                "recommended": rec.recommended,
                "over_budget": self.over_budget,
                "budget_ties": self.budget_ties,
                "pareto": self.pareto,
                "latency_interval": rec.latency_interval,
                "by": rec.by,
                "budget": asdict(rec.budget),
                **rec.extra,
            }
        d["protocol"] = self.protocol.to_dict()
        d["wall_time_s"] = self.wall_time_s
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankResults:
        """A ``results.json`` (or a rank run's ``metrics.json``) read back; ``ranking`` is derived again."""
        known = (
            "dataset", "split", "backbones", "scores", "score_seconds", "ensemble_rank", "ranking", "accuracy",
            "accuracy_target", "accuracy_exact_match", "correlations", "cost", "recommendation", "protocol",
            "wall_time_s",
        )  # fmt: skip
        scores, seconds = d.get("scores") or {}, d.get("score_seconds") or {}
        ensemble, costs = d.get("ensemble_rank") or {}, d.get("cost") or {}
        raw_rec = d.get("recommendation")
        verdicts: Mapping[str, Any] = raw_rec or {}
        candidates = []
        for name, entry in (d.get("backbones") or {}).items():
            facts, extra = _split(CandidateResult, entry, skip=_CANDIDATE_SECTIONS)
            extra.pop("learned", None)  # the learned score, also in ``scores``
            candidates.append(
                CandidateResult(
                    **facts,
                    name=name,
                    scores={m: per[name] for m, per in scores.items() if name in per},
                    score_seconds={m: per[name] for m, per in seconds.items() if name in per},
                    ensemble_rank=ensemble.get(name),
                    cost=CandidateCost.from_dict(costs[name]) if name in costs else None,
                    over_budget=list((verdicts.get("over_budget") or {}).get(name, [])),
                    budget_ties=list((verdicts.get("budget_ties") or {}).get(name, [])),
                    pareto=name in (verdicts.get("pareto") or []),
                    extra=extra,
                )
            )
        accuracy = None
        if d.get("accuracy_target") is not None:
            accuracy = MeasuredAccuracy(
                target=d["accuracy_target"],
                exact_match=bool(d.get("accuracy_exact_match")),
                values=dict(d.get("accuracy") or {}),
                agreement={s: Agreement.from_dict(a) for s, a in (d.get("correlations") or {}).items()},
            )
        recommendation = None
        if raw_rec is not None:
            rec_known = {
                "recommended",
                "over_budget",
                "budget_ties",
                "pareto",
                "latency_interval",
                "by",
                "budget",
            }
            recommendation = Recommendation(
                by=raw_rec.get("by", "ensemble"),
                recommended=raw_rec.get("recommended"),
                budget=Budget(**(raw_rec.get("budget") or {})),
                latency_interval=raw_rec.get("latency_interval", "iqr"),
                extra={k: v for k, v in raw_rec.items() if k not in rec_known},
            )
        return cls(
            dataset=dict(d["dataset"]),
            protocol=RankProtocol.from_dict(d.get("split", "train"), d.get("protocol") or {}),
            methods=list(scores),
            candidates=candidates,
            accuracy=accuracy,
            cost_setup=CostSetup.from_dict(next(iter(costs.values()))) if costs else None,
            recommendation=recommendation,
            wall_time_s=float(d.get("wall_time_s", 0.0)),
            extra={k: v for k, v in d.items() if k not in known},
        )
