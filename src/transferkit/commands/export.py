"""``transferkit export --run runs/<name> --format onnx|torchscript|hf [--quantize int8]``.

Writes a self-contained artifact directory (default ``<run>/export/<format>/``): the model, ``metadata.json``
(class names, input contract, preprocessing, backbone, parity and quantization results) and, with
``--quantize int8``, the int8 twin plus ``quantization.json``. Prints the parity check (exported vs eager on
real test images at two batch sizes) and the quantization report (accuracy and measured speed, fp32 vs int8).
Exits 1 when the parity check fails (max |diff| above ``--atol``).
"""

from __future__ import annotations

from typing import Literal

from jsonargparse import ArgumentParser
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from transferkit.utils.console import make_console


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="transferkit export",
        description="Export a run to ONNX / TorchScript / an HF-style directory and check it against eager "
        "PyTorch; optionally add a dynamically quantized int8 twin.",
    )
    parser.add_argument("--run", type=str, required=True, help="Run directory written by `transferkit fit`.")
    parser.add_argument(
        "--format", type=Literal["onnx", "torchscript", "hf"], default="onnx", help="Artifact format."
    )
    parser.add_argument(
        "--out", type=str | None, default=None, help="Artifact directory (default <run>/export/<format>)."
    )
    parser.add_argument("--checkpoint", type=str, default="best", help="best, last, or a checkpoint path.")
    parser.add_argument(
        "--quantize",
        type=Literal["none", "int8"],
        default="none",
        help="int8: dynamic quantization (onnxruntime for onnx, torch.ao for torchscript), with accuracy "
        "and speed measured on the test split.",
    )
    parser.add_argument("--atol", type=float, default=1e-4, help="Largest allowed |exported - eager| (fp32).")
    parser.add_argument("--parity_images", type=int, default=8, help="Test images in the parity batch.")
    parser.add_argument("--split", type=str, default="test", help="Split used for parity and quantization.")
    parser.add_argument(
        "--opset", type=int | None, default=None, help="ONNX opset (default: the exporter's)."
    )
    parser.add_argument("--batch_size", type=int, default=64, help="Batch size of the accuracy passes.")
    parser.add_argument(
        "--bench_batch_size", type=int, default=32, help="Batch size of the throughput timing."
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="Timed runs per measurement (median reported)."
    )
    return parser


def main(argv: list[str]) -> int:
    """Run ``transferkit export``; returns 0, or 1 when the parity check fails."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error jsonargparse already printed
        return int(e.code or 0) if not isinstance(e.code, str) else 2

    from transferkit.deploy.export import export_run, load_run
    from transferkit.deploy.quantize import quantize_export
    from transferkit.errors import UserError

    if args.quantize == "int8" and args.format == "hf":
        raise UserError(
            "--quantize int8 needs --format onnx (onnxruntime) or --format torchscript (torch.ao)"
        )
    for name in ("batch_size", "bench_batch_size", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    console = make_console()
    with console.status(f"loading {args.run} ({args.checkpoint} checkpoint)"):
        loaded = load_run(args.run, args.checkpoint)
    with console.status(f"exporting to {args.format} and checking parity"):
        result = export_run(
            args.run,
            args.out,
            args.format,
            checkpoint=args.checkpoint,
            parity_images=args.parity_images,
            atol=args.atol,
            split=args.split,
            opset=args.opset,
            loaded=loaded,
        )
    meta = result.metadata
    console.print(
        f"[bold]{escape(str(result.directory))}[/bold]: {meta.format} ({escape(meta.exporter)}), task "
        f"{meta.task}, {len(meta.class_names)} classes, input (B, 3, {meta.preprocessing.image_size}, "
        f"{meta.preprocessing.image_size}) in [0, 1], export {result.timings['export_s']:.1f}s",
        highlight=False,
        soft_wrap=True,
    )
    print_parity(console, meta.parity)
    if args.quantize == "int8":
        with console.status(f"quantizing to int8 and measuring on the {args.split} split"):
            report = quantize_export(
                result,
                split=args.split,
                batch_size=args.batch_size,
                bench_batch_size=args.bench_batch_size,
                repeats=args.repeats,
            )
        print_quantization(console, report)
    console.print(
        f"metadata: {escape(str(result.directory / 'metadata.json'))}", highlight=False, soft_wrap=True
    )
    if not result.passed:
        console.print(
            f"[red]parity FAILED[/red]: max |exported - eager| = {meta.parity['max_abs_diff']:.3g} > atol "
            f"{args.atol:g}; the artifact was written but does not reproduce the model",
            soft_wrap=True,
        )
        return 1
    return 0


def print_parity(console: Console, parity: dict) -> None:
    table = Table(title=f"parity: exported vs eager ({escape(parity.get('inputs', ''))})")
    for col in ("batch size", "max |diff|", "top-1 agreement", f"< atol {parity['atol']:g}"):
        table.add_column(col, justify="right")
    for c in parity["checks"]:
        ok = c["max_abs_diff"] <= parity["atol"]
        table.add_row(
            str(c["batch_size"]),
            f"{c['max_abs_diff']:.2e}",
            f"{c['top1_agreement']:.3f}",
            "[green]yes[/green]" if ok else "[red]no[/red]",
        )
    console.print(table)


def print_quantization(console: Console, q: dict) -> None:
    table = Table(
        title=f"int8 dynamic quantization ({escape(q['method'])}) on {q['images']} {q['split']} images"
    )
    table.add_column("")
    for col in ("fp32", "int8", "change"):
        table.add_column(col, justify="right")
    fp, i8 = q["fp32"], q["int8"]
    table.add_row("top-1 accuracy", f"{fp['acc1']:.4f}", f"{i8['acc1']:.4f}", f"{q['acc1_change']:+.4f}")
    table.add_row(
        f"throughput (img/s, batch {q['bench_batch_size']})",
        f"{fp['images_per_s']:.1f}",
        f"{i8['images_per_s']:.1f}",
        f"x{q['speedup']:.2f}",
    )
    table.add_row(
        "latency (ms, batch 1)",
        f"{fp['latency_ms_batch1']:.2f}",
        f"{i8['latency_ms_batch1']:.2f}",
        f"x{q['latency_speedup_batch1']:.2f}",
    )
    table.add_row(
        "model size (MiB)", f"{fp['model_mb']:.2f}", f"{i8['model_mb']:.2f}", f"x{q['size_ratio']:.2f}"
    )
    table.add_row("top-1 agreement with fp32", "", f"{q['top1_agreement']:.4f}", "")
    table.add_row("max |int8 - eager| (logits)", "", f"{q['max_abs_diff_vs_eager']:.3g}", "")
    console.print(table)
