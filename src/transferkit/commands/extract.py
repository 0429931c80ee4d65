"""``transferkit extract``: run frozen backbones once over a dataset and cache their features on disk.

    transferkit extract --backbones minilm-l6,vit-tiny:random --data digits
    transferkit extract --backbones facebook/dinov2-small --data path/to/imagefolder --layers 4 \\
        --pooling cls --extra_poolings [mean]

Features land in the cache (``--cache_dir``, default ``$TRANSFERKIT_CACHE_DIR`` or
``~/.cache/transferkit/features``) keyed by backbone, weights, data split and transform; a second run (or
``transferkit compare`` / ``transferkit rank`` on the same data) reads them instead of running the backbone.
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from transferkit.commands.compare import add_data_arguments, build_datamodule, expand_data_shorthand
from transferkit.utils.console import make_console


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="transferkit extract",
        description="Run frozen backbones once over a dataset (no augmentation, inference mode, batched) and "
        "cache the features on disk.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config")
    parser.add_argument(
        "--backbones", type=list[str] | str, default=["minilm-l6"], help="comma-separated backbone names"
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--splits", type=list[str] | str, default=["train", "val", "test"], help="splits to extract"
    )
    parser.add_argument(
        "--layers",
        type=int | None,
        default=None,
        help="None: the final output; k: the last k blocks (N, k, D)",
    )
    parser.add_argument(
        "--pooling", type=str | None, default=None, help="cls, mean, last, cls+mean (default: the backbone's)"
    )
    parser.add_argument(
        "--extra_poolings", type=list[str], default=[], help="more poolings stored in the same pass"
    )
    parser.add_argument("--cache_dir", type=str | None, default=None, help="feature cache root")
    parser.add_argument("--batch_size", type=int | None, default=None, help="extraction batch size")
    parser.add_argument(
        "--device", type=str | None, default=None, help="cpu, cuda (default: cuda if available)"
    )
    parser.add_argument(
        "--dtype", type=str, default="float32", help="float32, bfloat16 or float16 (autocast)"
    )
    parser.add_argument(
        "--patch_size", type=int | None, default=None, help="patch size of language-model backbones"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of random-init weights")
    parser.add_argument("--refresh", type=bool, default=False, help="re-extract even when cached")
    parser.add_argument("--progress", type=bool, default=True, help="show progress bars")
    return parser


def _names(value: str | list[str]) -> list[str]:
    items = [value] if isinstance(value, str) else value
    return [n.strip() for item in items for n in str(item).split(",") if n.strip()]


def main(argv: list[str]) -> int:
    parser = build_parser()
    cfg = parser.parse_args(expand_data_shorthand(argv))

    from rich.table import Table

    from transferkit.compare import parse_backbones
    from transferkit.errors import UserError
    from transferkit.probe.cache import default_cache_dir, get_features, resolve_backbone

    splits = _names(cfg.splits)
    bad = [s for s in splits if s not in ("train", "val", "test")]
    if bad:
        raise UserError(f"unknown split(s) {bad}; choose from train, val, test")
    dm = build_datamodule(cfg.data)
    console = make_console()
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    table = Table(title=f"features of {cfg.data.source} (cache: {root})")
    for col in ("backbone", "split", "shape", "cache", "images/s", "seconds", "entry"):
        table.add_column(col)
    options = {"patch_size": cfg.patch_size} if cfg.patch_size is not None else {}
    for name in parse_backbones(cfg.backbones):
        bb = resolve_backbone(name, dm.image_size, seed=cfg.seed, **options)
        for split in splits:
            fs = get_features(
                bb,
                dm,
                split,
                layers=cfg.layers,
                pooling=cfg.pooling,
                extra_poolings=cfg.extra_poolings,
                cache_dir=cfg.cache_dir,
                batch_size=cfg.batch_size,
                device=cfg.device,
                dtype=cfg.dtype,
                refresh=cfg.refresh,
                progress=cfg.progress,
            )
            m = fs.metadata
            table.add_row(
                name,
                split,
                "x".join(str(d) for d in fs.features.shape),
                "hit" if m["cache_hit"] else "extracted",
                f"{m['throughput_img_s']:,.0f}",
                f"{m['extract_seconds']:.1f}",
                str(fs.path.relative_to(root)) if fs.path is not None else "-",
            )
        del bb
    console.print(table)
    return 0
