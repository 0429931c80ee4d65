"""``transferkit extract``: run frozen backbones once over a dataset and cache their features on disk.

    transferkit extract --backbones minilm-l6,vit-tiny:random --data digits
    transferkit extract --backbones facebook/dinov2-small --data path/to/imagefolder --layers 4 \\
        --pooling cls --extra_poolings [mean]
"""

from __future__ import annotations

from pathlib import Path

from transferkit.compare.options import parse_backbones
from transferkit.data.spec import DataSpec
from transferkit.probe.options import ExtractOptions


def extract(
    data: DataSpec = DataSpec(),
    *,
    backbones: list[str] | str = ["minilm-l6"],
    splits: list[str] | str = ["train", "val", "test"],
    layers: int | None = None,
    pooling: str | None = None,
    extra_poolings: list[str] = [],
    name: str = "extract",
    runs_dir: str = "runs",
    extraction: ExtractOptions = ExtractOptions(),
    patch_size: int | None = None,
    seed: int = 0,
) -> int:
    """Run frozen backbones once over a dataset (no augmentation, inference mode, batched) and cache the
    features; a later extract, compare or rank on the same data reads them instead of running the backbone.
    Writes runs/<name>/{config.yaml, metrics.json} (one entry per backbone and split).

    Args:
        data: the dataset (--data X, or --data.<option>).
        backbones: backbone names, comma-separated or a list.
        splits: splits to extract (comma-separated or a list).
        layers: None: the final output (N, D); k: the last k blocks (N, k, D).
        pooling: cls, mean, last or cls+mean (default: the backbone's).
        extra_poolings: more poolings stored in the same pass.
        name: run name.
        runs_dir: folder holding run directories.
        extraction: feature extraction and cache (--cache_dir, --batch_size, --device, --precision, --storage, ...).
        patch_size: patch size of the language-model backbones among the backbones (default 16).
        seed: seed of random-init weights.
    """
    names = parse_backbones(backbones)  # a bad list fails before anything heavy loads
    extraction.check_distributed()

    from rich.table import Table

    from transferkit.backbones import backbone_options, resolve_backbone
    from transferkit.errors import UserError
    from transferkit.probe.cache import default_cache_dir, get_features
    from transferkit.runs import RunDir
    from transferkit.utils.console import make_console

    splits = [
        x.strip()
        for item in ([splits] if isinstance(splits, str) else splits)
        for x in str(item).split(",")
        if x.strip()
    ]
    bad = [s for s in splits if s not in ("train", "val", "test")]
    if bad or not splits:
        raise UserError(f"unknown split(s) {bad or splits}; choose from train, val, test")
    opts = extraction
    dm = data.build()
    run = RunDir.create(runs_dir, name, "extract")
    run.write_config()
    root = Path(opts.cache_dir).expanduser() if opts.cache_dir else default_cache_dir()
    table = Table(title=f"features of {data.name()} (cache: {root})")
    for col in ("backbone", "split", "shape", "cache", "images/s", "seconds", "entry"):
        table.add_column(col)
    options = backbone_options(names, patch_size)
    entries: dict[str, dict[str, dict]] = {}
    for bname in names:
        bb = resolve_backbone(bname, dm.image_size, seed=seed, **options[bname])
        for split in splits:
            fs = get_features(
                bb, dm, split, layers=layers, pooling=pooling, extra_poolings=extra_poolings, **opts.kwargs()
            )
            m = fs.metadata
            hit = m["cache_hit"]  # a hit measured nothing in this run: no images/s or seconds for it
            entries.setdefault(bname, {})[split] = {
                "shape": list(fs.features.shape),
                "cache_hit": hit,
                "images_per_s": None if hit else m["throughput_img_s"],
                "seconds": None if hit else m["extract_seconds"],
                "entry": str(fs.path),
            }
            table.add_row(
                bname,
                split,
                "x".join(str(d) for d in fs.features.shape),
                "hit" if hit else "extracted",
                "-" if hit else f"{m['throughput_img_s']:,.0f}",
                "-" if hit else f"{m['extract_seconds']:.1f}",
                str(fs.path.relative_to(root)) if fs.path is not None else "-",
            )
        del bb
    run.update_metrics({"command": "extract", "dataset": data.name(), "features": entries})
    console = make_console()
    console.print(table)
    console.print(f"wrote {run.path / 'metrics.json'}")
    return 0
