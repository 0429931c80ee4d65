"""Extraction precision and feature storage: the default compare with float32 compute and storage, float32
compute with float16 storage, and the defaults (``--precision auto``: bfloat16 where the CPU/GPU has it, float16
storage), each on an empty cache, next to the spread of the same figures over seeds. The probe grid's matmuls
run in the setting's compute precision (``--probe.precision``: float32, or auto).

    python benchmarks/bench_precision.py [--seeds 5]

Prints per backbone the linear-probe / logistic-regression / kNN test top-1 of each setting, the extraction
images/s and the wall time, and mean (sd) over ``--seeds`` seeds in float32 (random inits, heads, batch order).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"float32, float32": ("float32", "float32"), "float32, float16": ("float32", "float16"),
            "auto, float16": ("auto", "float16")}  # fmt: skip


def compare(work: Path, precision: str, storage: str, *extra: str) -> tuple[dict, float]:
    from transferkit.cli import main

    start = time.perf_counter()
    argv = ["compare", "--config", str(ROOT / "configs" / "compare" / "default.yaml"), "--runs_dir", str(work),
            "--cache_dir", str(work / "cache"), "--precision", precision, "--probe.precision", precision,
            "--storage", storage, "--record_results",
            "false", "--progress", "false", *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads((work / "compare" / "results.json").read_text()), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    runs = {}
    for label, (precision, storage) in SETTINGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            runs[label] = compare(Path(tmp), precision, storage)
    with tempfile.TemporaryDirectory() as tmp:
        seeded, _ = compare(Path(tmp), "float32", "float32", "--seeds", str(args.seeds))
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    print(
        "| test top-1 % (linear / logreg / kNN) | "
        + " | ".join(SETTINGS)
        + f" | over {args.seeds} seeds, mean (sd) |"
    )
    print("|---|" + "---|" * (len(SETTINGS) + 1))
    for i, e in enumerate(seeded["backbones"]):
        cells = []
        for results, _ in runs.values():
            r = results["backbones"][i]
            cells.append(
                f"{pct(r['linear']['test_acc1'])} / {pct(r['logreg']['test_acc1'])} / {pct(r['knn']['test_acc1'])}"
            )
        sd = e.get("seeds")  # absent with --seeds 1
        cells.append(f"{pct(sd['linear']['mean'])} ({100 * sd['linear']['std']:.2f}) / - / "
                     f"{pct(sd['knn']['mean'])} ({100 * sd['knn']['std']:.2f})" if sd else "-")  # fmt: skip
        print(f"| {e['name']} | " + " | ".join(cells) + " |")
    speeds = [
        " / ".join(f"{r['throughput_img_s']:,.0f}" for r in res["backbones"]) for res, _ in runs.values()
    ]
    print("| forward images/s (per backbone) | " + " | ".join(speeds) + " | |")
    print("| wall time | " + " | ".join(f"{s:.1f} s" for _, s in runs.values()) + " | |")
    for label, (res, _) in runs.items():
        print(f"{label}: precision {res['protocol']['precision']}, storage {res['protocol']['storage']}")


if __name__ == "__main__":
    main()
