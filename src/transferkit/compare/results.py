"""The typed results of a compare run, from the probes to the report and to ``results.json``.

:class:`CompareResults` holds one :class:`BackboneResult` per backbone, each with one
:class:`ProtocolResult` per protocol that ran (:class:`GridResult`, :class:`LogisticResult`,
:class:`KnnResult`, :class:`FinetuneResult`), and the cross-backbone results: pretraining gains, pairwise tests,
fair pairs, the strongest linear protocol and the doubts. They become dicts only at the JSON edge:
``CompareResults.to_dict()`` is ``results.json`` and ``CompareResults.from_dict`` reads it back (keys this
version does not type are kept in ``extra`` and written back unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

#: the protocols of a compare run, in report order: their keys in ``results.json`` and their readable names
PROTOCOL_LABELS = {
    "linear": "linear-probe grid",
    "logreg": "logistic regression",
    "knn": "kNN",
    "finetune": "fine-tune",
}
#: the linear probes: the SGD grid and the L-BFGS logistic regression
LINEAR_PROTOCOLS = ("linear", "logreg")
#: protocol names in ``metrics.json`` and the results table (``transferkit.results.PROTOCOLS``)
TABLE_PROTOCOLS = {
    "linear": "linear_probe",
    "logreg": "logistic_regression",
    "knn": "knn",
    "finetune": "finetune",
}


def _plain(value: Any) -> Any:
    """Tuples as lists (what JSON reads back)."""
    return list(value) if isinstance(value, tuple) else value


def _split(
    cls: type, d: Mapping[str, Any], skip: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``d`` cut into the init fields of ``cls`` and the rest (``extra``)."""
    names = {f.name for f in fields(cls) if f.init} - {"extra", *skip}
    return {k: v for k, v in d.items() if k in names}, {k: v for k, v in d.items() if k not in names}


# ---------------------------------------------------------------------------------------------- protocols
#: figures a protocol may not have (kNN has no top-5): left out of ``results.json`` when None
_OPTIONAL = ("test_acc5", "test_ci95", "per_class_acc")


@dataclass(kw_only=True)
class ProtocolResult:
    """One protocol's result on one backbone: chosen on val, reported on test (accuracies in [0, 1])."""

    #: the protocol's key (``linear``, ``logreg``, ``knn``, ``finetune``)
    protocol: ClassVar[str] = ""
    val_acc1: float
    test_acc1: float
    test_acc5: float | None = None
    #: 95% Wilson interval of ``test_acc1``
    test_ci95: tuple[float, float] | None = None
    #: test accuracy per class, in class order
    per_class_acc: list[float] | None = None
    #: keys of ``results.json`` this version does not type (kept as read)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return PROTOCOL_LABELS[self.protocol]

    def to_dict(self) -> dict[str, Any]:
        """The protocol's object in ``results.json`` (optional figures it lacks are left out)."""
        d = {
            f.name: _plain(getattr(self, f.name))
            for f in fields(self)
            if f.name != "extra" and not (f.name in _OPTIONAL and getattr(self, f.name) is None)
        }
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProtocolResult:
        known, extra = _split(cls, d)
        if known.get("test_ci95") is not None:
            known["test_ci95"] = tuple(known["test_ci95"])
        return cls(**known, extra=extra)


@dataclass(kw_only=True)
class GridResult(ProtocolResult):
    """The one-pass linear-probe grid: the head with the best val top-1 (``best_head``) reported on test."""

    protocol: ClassVar[str] = "linear"
    best_head: dict[str, Any]
    poolings: list[str]
    layers: list[int]
    num_heads: int
    epochs: int
    seconds: float
    #: the base learning rates of the final grid (after any automatic extension)
    learning_rates: list[float] = field(default_factory=list)
    #: how many times the grid was extended beyond the given learning rates
    extensions: int = 0
    #: ``'low'`` / ``'high'`` when the chosen head's learning rate is the lowest / highest of the final grid
    lr_edge: str | None = None
    #: every head's row (variant, lr, weight decay, val top-1, ...)
    grid: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True)
class LogisticResult(ProtocolResult):
    """The L-BFGS logistic regression on the grid's chosen feature variant, C chosen on val."""

    protocol: ClassVar[str] = "logreg"
    variant: str
    c: float
    seconds: float
    sweep: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True)
class KnnResult(ProtocolResult):
    """Weighted cosine kNN, k chosen on val; ``acc1[split][str(k)]`` for every k."""

    protocol: ClassVar[str] = "knn"
    pooling: str
    temperature: float
    best_k: int
    acc1: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class EpochRecord:
    """One epoch of a fine-tune: its mean train loss and val top-1 (None when not logged)."""

    epoch: int
    train_loss: float | None
    val_acc1: float | None


@dataclass(kw_only=True)
class FinetuneResult(ProtocolResult):
    """A ``transferkit fit`` of the backbone, reported at its best checkpoint on val."""

    protocol: ClassVar[str] = "finetune"
    epochs: int
    seconds: float
    run_dir: str
    #: the fine-tune's image size (None in results written before it was recorded)
    image_size: int | None = None
    checkpoint: str | None = None
    #: per epoch of training, from the fit run's ``log/*/metrics.csv``
    history: list[EpochRecord] = field(default_factory=list)
    #: the convergence rule's verdict (None: no history to judge) and its reason
    converged: bool | None = None
    convergence: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["history"] = [vars(h).copy() for h in self.history]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FinetuneResult:
        r = super().from_dict({k: v for k, v in d.items() if k != "history"})
        assert isinstance(r, FinetuneResult)
        r.history = [EpochRecord(**h) for h in d.get("history") or []]
        return r


PROTOCOL_CLASSES: dict[str, type[ProtocolResult]] = {
    c.protocol: c for c in (GridResult, LogisticResult, KnnResult, FinetuneResult)
}


# ---------------------------------------------------------------------------------------------- a backbone
@dataclass(kw_only=True)
class BackboneResult:
    """One backbone: what it is, its features and throughput, and its result under every protocol that ran."""

    name: str
    pretrained: bool
    family: str
    modality: str
    #: the parameters an image forward uses (``Backbone.num_params()``)
    num_params: int
    embed_dim: int
    num_blocks: int
    default_pooling: str
    weights_digest: str
    #: what ``num_params`` leaves out: ``'<module> (<why>)' -> count`` (a language model's token-embedding table)
    left_out_params: dict[str, int] = field(default_factory=dict)
    #: per split: cache_hit, path, throughput_img_s, extract_seconds, num_images
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the run's timed forward section (images_per_s, its range, threads, load average); None when not timed
    throughput: dict[str, Any] | None = None
    #: protocol key -> its result (the protocols that ran, in :data:`PROTOCOL_LABELS` order)
    protocols: dict[str, ProtocolResult] = field(default_factory=dict)
    #: with ``seeds`` > 1: the seeds and, per protocol, mean / std / min / max / values of test top-1
    seeds: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def throughput_img_s(self) -> float | None:
        return self.throughput["images_per_s"] if self.throughput else None

    @property
    def linear(self) -> GridResult:
        r = self.protocols["linear"]
        assert isinstance(r, GridResult)
        return r

    @property
    def knn(self) -> KnnResult:
        r = self.protocols["knn"]
        assert isinstance(r, KnnResult)
        return r

    @property
    def logreg(self) -> LogisticResult | None:
        r = self.protocols.get("logreg")
        assert r is None or isinstance(r, LogisticResult)
        return r

    @property
    def finetune(self) -> FinetuneResult | None:
        r = self.protocols.get("finetune")
        assert r is None or isinstance(r, FinetuneResult)
        return r

    def best_linear(self) -> ProtocolResult:
        """This backbone's linear protocol with the higher val top-1 (a tie: the grid)."""
        linear = [self.protocols[p] for p in LINEAR_PROTOCOLS if p in self.protocols]
        return max(linear, key=lambda r: (r.val_acc1, r.protocol == "linear"))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("throughput", "protocols", "seeds", "extra")
        }
        d["throughput_img_s"] = self.throughput_img_s
        d["throughput"] = self.throughput
        for p in PROTOCOL_CLASSES:
            r = self.protocols.get(p)
            d[p] = r.to_dict() if r is not None else None
        if self.seeds is not None:
            d["seeds"] = self.seeds
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BackboneResult:
        known, extra = _split(cls, d, skip=("protocols",))
        for p in (*PROTOCOL_CLASSES, "throughput_img_s"):
            extra.pop(p, None)
        protocols = {p: c.from_dict(d[p]) for p, c in PROTOCOL_CLASSES.items() if d.get(p)}
        return cls(**known, protocols=protocols, extra=extra)


# ---------------------------------------------------------------------------------------------- across backbones
@dataclass
class PairwiseTest:
    """Backbones ``a`` and ``b`` under one protocol: test top-1 of a minus b and the exact McNemar p on the same
    test images."""

    a: str
    b: str
    protocol: str
    delta: float
    p: float

    def to_dict(self) -> dict[str, Any]:
        return vars(self).copy()


@dataclass
class ProtocolGain:
    """Under one protocol: the pretrained backbone's and its twin's test top-1, the gain and McNemar p (None
    without per-image results)."""

    pretrained: float
    random: float
    gain: float
    p: float | None = None


@dataclass
class PretrainingGain:
    """``backbone`` (pretrained) against ``random_twin`` (``backbone:random``), per protocol that both ran.

    In ``results.json`` each protocol's figures are ``<protocol>_pretrained``, ``_random``, ``_gain``, ``_p``.
    """

    backbone: str
    random_twin: str
    protocols: dict[str, ProtocolGain] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"backbone": self.backbone, "random_twin": self.random_twin}
        for p, g in self.protocols.items():
            d.update({f"{p}_pretrained": g.pretrained, f"{p}_random": g.random, f"{p}_gain": g.gain})
            if g.p is not None:
                d[f"{p}_p"] = g.p
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PretrainingGain:
        protocols = {
            p: ProtocolGain(d[f"{p}_pretrained"], d[f"{p}_random"], d[f"{p}_gain"], d.get(f"{p}_p"))
            for p in PROTOCOL_LABELS
            if f"{p}_pretrained" in d
        }
        return cls(d["backbone"], d["random_twin"], protocols)


@dataclass
class FairPair:
    """A backbone and the closest-size backbone of another modality; ``deltas[protocol]`` is the backbone's test
    top-1 minus the partner's (None when the pair is not fair: too far apart in size). In ``results.json`` the
    deltas are ``<protocol>_delta``."""

    backbone: str
    modality: str
    params: int
    partner: str
    partner_modality: str
    partner_params: int
    size_ratio: float
    size_gap: float
    fair: bool
    deltas: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "deltas"}
        return {**d, **{f"{p}_delta": v for p, v in self.deltas.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FairPair:
        known, _ = _split(cls, d, skip=("deltas",))
        deltas = {p: d[f"{p}_delta"] for p in PROTOCOL_LABELS if f"{p}_delta" in d}
        return cls(**known, deltas=deltas)


@dataclass
class StrongestLinear:
    """The run's strongest linear protocol (``linear`` or ``logreg``), chosen on val by ``rule``, which the
    headline's linear-probe claims use; ``mean_val_acc1`` per linear protocol over the backbones."""

    protocol: str
    rule: str
    mean_val_acc1: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return PROTOCOL_LABELS[self.protocol]

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "mean_val_acc1": self.mean_val_acc1, "rule": self.rule}


@dataclass
class Doubt:
    """A reason to doubt part of the answer: ``kind`` (see ``transferkit.compare.doubts.DOUBT_RULES``), the
    backbone it concerns (None: the run as a whole) and a sentence for the reader."""

    kind: str
    backbone: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "kind": self.kind, "message": self.message}


# ---------------------------------------------------------------------------------------------- the run
@dataclass(kw_only=True)
class CompareResults:
    """Everything a compare run measured (``results.json``)."""

    run: str
    #: :meth:`transferkit.data.spec.DataSpec.describe`: key, name, spec, counts, class names, image size, ...
    dataset: dict[str, Any]
    #: the settings: probe, knn, finetune options, seeds, device, precision, the doubt rules, ...
    protocol: dict[str, Any]
    backbones: list[BackboneResult]
    strongest_linear: StrongestLinear
    doubts: list[Doubt] = field(default_factory=list)
    pretraining_gains: list[PretrainingGain] = field(default_factory=list)
    pairwise: list[PairwiseTest] = field(default_factory=list)
    fair_pairs: list[FairPair] = field(default_factory=list)
    started: str = ""
    finished: str = ""
    wall_time_s: float = 0.0
    torch: str = ""
    #: plot name -> path relative to the run directory
    plots: dict[str, str] = field(default_factory=dict)
    #: the results table this run appended to (not in ``results.json``: known after it is written)
    results_table: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def backbone(self, name: str) -> BackboneResult:
        return next(b for b in self.backbones if b.name == name)

    def protocols_run(self) -> list[str]:
        """The protocols any backbone ran, in :data:`PROTOCOL_LABELS` order."""
        return [p for p in PROTOCOL_LABELS if any(p in b.protocols for b in self.backbones)]

    def to_dict(self) -> dict[str, Any]:
        """``results.json``."""
        return {
            "run": self.run,
            "dataset": self.dataset,
            "protocol": self.protocol,
            "backbones": [b.to_dict() for b in self.backbones],
            "strongest_linear": self.strongest_linear.to_dict(),
            "doubts": [d.to_dict() for d in self.doubts],
            "pretraining_gains": [g.to_dict() for g in self.pretraining_gains],
            "pairwise": [r.to_dict() for r in self.pairwise],
            "fair_pairs": [r.to_dict() for r in self.fair_pairs],
            "started": self.started,
            "finished": self.finished,
            "wall_time_s": self.wall_time_s,
            "torch": self.torch,
            "plots": self.plots,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompareResults:
        """A ``results.json`` read back (one written before the doubts had none: the strongest linear protocol
        is then the grid)."""
        known = (
            "run", "dataset", "protocol", "backbones", "strongest_linear", "doubts", "pretraining_gains",
            "pairwise", "fair_pairs", "started", "finished", "wall_time_s", "torch", "plots", "results_table",
        )  # fmt: skip
        strongest = d.get("strongest_linear") or {"protocol": "linear", "rule": ""}
        return cls(
            run=d["run"],
            dataset=dict(d["dataset"]),
            protocol=dict(d["protocol"]),
            backbones=[BackboneResult.from_dict(b) for b in d["backbones"]],
            strongest_linear=StrongestLinear(
                strongest["protocol"], strongest.get("rule", ""), dict(strongest.get("mean_val_acc1") or {})
            ),
            doubts=[Doubt(x["kind"], x.get("backbone"), x["message"]) for x in d.get("doubts") or []],
            pretraining_gains=[PretrainingGain.from_dict(g) for g in d.get("pretraining_gains") or []],
            pairwise=[PairwiseTest(**r) for r in d.get("pairwise") or []],
            fair_pairs=[FairPair.from_dict(r) for r in d.get("fair_pairs") or []],
            started=d.get("started", ""),
            finished=d.get("finished", ""),
            wall_time_s=d.get("wall_time_s", 0.0),
            torch=d.get("torch", ""),
            plots=dict(d.get("plots") or {}),
            results_table=d.get("results_table"),
            extra={k: v for k, v in d.items() if k not in known},
        )
