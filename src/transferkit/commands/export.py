"""``transferkit export --run runs/<name> --format onnx|torchscript|hf [--quantize int8]``.

transferkit export --run runs/lp --format onnx --quantize int8
"""

from __future__ import annotations

from typing import Literal

from rich.console import Console


def export(
    *,
    run: str,
    format: Literal["onnx", "torchscript", "hf"] = "onnx",
    out: str | None = None,
    ckpt_path: str = "best",
    quantize: Literal["none", "int8"] = "none",
    atol: float = 1e-4,
    parity_images: int = 8,
    split: str = "test",
    opset: int | None = None,
    batch_size: int = 64,
    bench_batch_size: int = 32,
    repeats: int = 5,
) -> int:
    """Export a run to ONNX / TorchScript / an HF-style directory and check it against eager PyTorch on real test
    images at two batch sizes; optionally add a dynamically quantized int8 twin, measured for accuracy and speed.
    Writes the artifact (default <run>/export/<format>/), the parity (and quantization) figures under 'export' of
    the run's metrics.json and config.export.yaml. Exits 1 when the parity check fails.

    Args:
        run: run directory written by transferkit fit.
        format: artifact format.
        out: artifact directory (default <run>/export/<format>).
        ckpt_path: best, last or a checkpoint path.
        quantize: int8: dynamic quantization (onnxruntime for onnx, torch.ao for torchscript), with accuracy and
            speed measured on the split.
        atol: largest allowed |exported - eager| (fp32).
        parity_images: images of the split in the parity batch.
        split: split used for parity and quantization.
        opset: ONNX opset (default: the exporter's).
        batch_size: batch size of the accuracy passes.
        bench_batch_size: batch size of the throughput timing.
        repeats: timed runs per measurement (median reported).
    """
    from rich.markup import escape

    from transferkit.deploy.export import export_run
    from transferkit.deploy.quantize import quantize_export
    from transferkit.errors import UserError
    from transferkit.runs import RunDir, load_run
    from transferkit.utils.console import make_console

    if quantize == "int8" and format == "hf":
        raise UserError(
            "--quantize int8 needs --format onnx (onnxruntime) or --format torchscript (torch.ao)"
        )
    for key, value in (
        ("batch_size", batch_size),
        ("bench_batch_size", bench_batch_size),
        ("repeats", repeats),
    ):
        if value < 1:
            raise UserError(f"--{key} must be >= 1, got {value}")
    run_dir = RunDir.open(run)
    console = make_console()
    with console.status(f"loading {run} ({ckpt_path} checkpoint)"):
        loaded = load_run(run, ckpt_path=ckpt_path)
    run_dir.write_config(command="export")
    with console.status(f"exporting to {format} and checking parity"):
        result = export_run(
            run, out, format, ckpt_path=ckpt_path, parity_images=parity_images, atol=atol, split=split,
            opset=opset, loaded=loaded,
        )  # fmt: skip
    meta = result.metadata
    console.print(
        f"[bold]{escape(str(result.directory))}[/bold]: {meta.format} ({escape(meta.exporter)}), task "
        f"{meta.task}, {len(meta.class_names)} classes, input (B, 3, {meta.preprocessing.image_size}, "
        f"{meta.preprocessing.image_size}) in [0, 1], export {result.timings['export_s']:.1f}s",
        highlight=False,
        soft_wrap=True,
    )
    print_parity(console, meta.parity)
    numbers = {"directory": str(result.directory), "parity": meta.parity}
    if quantize == "int8":
        with console.status(f"quantizing to int8 and measuring on the {split} split"):
            report = quantize_export(
                result, split=split, batch_size=batch_size, bench_batch_size=bench_batch_size, repeats=repeats
            )
        print_quantization(console, report)
        numbers["quantization"] = report
    run_dir.update_metrics({"export": {format: numbers}})
    console.print(
        f"metadata: {escape(str(result.directory / 'metadata.json'))}", highlight=False, soft_wrap=True
    )
    if not result.passed:
        console.print(
            f"[red]parity FAILED[/red]: max |exported - eager| = {meta.parity['max_abs_diff']:.3g} > atol "
            f"{atol:g}; the artifact was written but does not reproduce the model",
            soft_wrap=True,
        )
        return 1
    return 0


def print_parity(console: Console, parity: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

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
    from rich.markup import escape
    from rich.table import Table

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
