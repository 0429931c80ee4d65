"""Threads of the probe grid: the OpenMP wait policy on a loaded machine, and the thread count by kernel size.

    python benchmarks/bench_threads.py [--epochs 30] [--burners 2] [--repeats 3] [--part all|policy|sizes]

1. The grid with spinning (ACTIVE) vs sleeping (PASSIVE, what transferkit sets) waiting threads, idle and next to
   CPU-burning processes of our own (bounded in time): wall and CPU seconds, the ratio PASSIVE / ACTIVE.
2. Idle, PASSIVE: the grid at several sizes (features D, classes C; bfloat16 where fast, and float32) and the
   logistic regression (float64, N training rows) with their threads chosen by kernel size
   (``transferkit.utils.devices.threads_for_flops``) vs all of torch's threads and vs one thread: seconds and
   the ratios all / chosen and 1 thread / chosen, measured in the same run (>= 1: the rule is no slower).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

GRID = """
import time, torch
import transferkit.utils.devices as devices
from transferkit.probe.linear import LinearGridConfig, LogRegConfig, Variant, train_linear_grid, train_logistic_regression
devices.MIN_FLOPS_PER_THREAD = @MIN_FLOPS@
g = torch.Generator().manual_seed(0)
feats = {s: torch.randn(n, @DIM@, generator=g) for s, n in (("train", @N@), ("val", 360), ("test", 360))}
labels = {s: torch.randint(0, @CLASSES@, (len(x),), generator=g) for s, x in feats.items()}
t, c = time.perf_counter(), time.process_time()
if @PRECISION@ == "logreg":  # two values of C, 60 L-BFGS iterations at most each, float64
    train_logistic_regression(feats, labels, @CLASSES@, LogRegConfig(c_powers=(-2.0, 0.0), max_iter=60))
else:
    train_linear_grid([Variant(f"v{i}", feats, {}) for i in range(4)],
                      labels, @CLASSES@, LinearGridConfig(epochs=@EPOCHS@, precision=@PRECISION@))
print(time.perf_counter() - t, time.process_time() - c)
"""

BURN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def run(
    policy: str,
    epochs: int,
    dim: int = 1536,
    classes: int = 10,
    rule: bool = False,
    precision: str = "auto",
    n: int = 1077,
) -> tuple[float, float]:
    """Wall and CPU seconds of the grid (``precision``: its matmuls; ``logreg``: the logistic regression instead)
    on ``n`` training rows in a fresh process; ``rule=False``: all threads (no size rule)."""
    from transferkit.utils.devices import MIN_FLOPS_PER_THREAD

    policy, _, threads = policy.partition("/")
    env = {**os.environ, "OMP_WAIT_POLICY": policy, **({"OMP_NUM_THREADS": threads} if threads else {})}
    code = GRID.replace("@EPOCHS@", str(epochs)).replace("@DIM@", str(dim)).replace("@CLASSES@", str(classes))
    code = code.replace("@N@", str(n))
    minimum = MIN_FLOPS_PER_THREAD if rule else dict.fromkeys(MIN_FLOPS_PER_THREAD, 0.0)
    code = code.replace("@MIN_FLOPS@", repr(minimum)).replace("@PRECISION@", repr(precision))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    wall, cpu = (float(v) for v in out.split()[-2:])
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--burners", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--part", choices=["all", "policy", "sizes"], default="all")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")
    if args.part in ("all", "policy"):
        wait_policies(args)
    if args.part in ("all", "sizes"):
        thread_counts(args)


def wait_policies(args: argparse.Namespace) -> None:
    """Part 1: the grid under each OpenMP wait policy, idle and beside burners."""
    rows = []
    for load in ("idle", f"{args.burners} burners"):
        burners = []
        if load != "idle":
            seconds = 40 * args.repeats
            burners = [
                subprocess.Popen([sys.executable, "-c", BURN.format(seconds=seconds)])
                for _ in range(args.burners)
            ]
            time.sleep(1.0)
        try:
            for policy in ("ACTIVE", "PASSIVE", "PASSIVE/1"):
                runs = sorted(run(policy, args.epochs) for _ in range(args.repeats))
                wall, cpu = runs[len(runs) // 2]
                rows.append((load, policy, wall, cpu))
                print(
                    f"{load:10s} {policy:8s} wall {wall:6.2f} s  cpu {cpu:6.2f} s  (median of {args.repeats})"
                )
        finally:
            for b in burners:
                b.kill()
                b.wait()
    for load in ("idle", f"{args.burners} burners"):
        a = next(r for r in rows if r[0] == load and r[1] == "ACTIVE")
        p = next(r for r in rows if r[0] == load and r[1] == "PASSIVE")
        one = next(r for r in rows if r[0] == load and r[1] == "PASSIVE/1")
        print(
            f"{load:10s} PASSIVE / ACTIVE: wall {p[2] / a[2]:.2f}x, cpu {p[3] / a[3]:.2f}x; "
            f"1 thread / ACTIVE: wall {one[2] / a[2]:.2f}x, cpu {one[3] / a[3]:.2f}x"
        )


def thread_counts(args: argparse.Namespace) -> None:
    """Part 2: threads chosen by kernel size against all threads and one thread, idle."""
    from transferkit.utils.devices import resolve_precision, threads_for_flops

    print("\nidle, PASSIVE: threads by kernel size vs all threads (grid: 4 variants x 36 heads, batch 256;")
    print("logistic regression: 2 values of C, 60 L-BFGS iterations at most, float64)")
    cases = [("auto", d, c, 1077) for d, c in ((192, 10), (384, 10), (1536, 10), (3840, 10), (1536, 100))]
    cases += [("float32", d, c, 1077) for d, c in ((192, 10), (384, 10), (768, 10), (1536, 10), (1536, 100))]
    cases += [("logreg", 1537, 10, n) for n in (1077, 5000)]
    for precision, dim, classes, n in cases:
        if precision == "logreg":
            resolved, flops = "float64", 2 * n * (dim + 1) * classes
        else:
            resolved, flops = resolve_precision(precision, "cpu"), 2 * 256 * dim * 36 * classes
        chosen = threads_for_flops(flops, "cpu", resolved)
        kw = {"dim": dim, "classes": classes, "precision": precision, "n": n}
        rule = sorted(run("PASSIVE", args.epochs, rule=True, **kw) for _ in range(args.repeats))
        every = sorted(run("PASSIVE", args.epochs, **kw) for _ in range(args.repeats))
        one = sorted(run("PASSIVE/1", args.epochs, **kw) for _ in range(args.repeats))
        r, e, o = (runs[len(runs) // 2][0] for runs in (rule, every, one))
        what = f"logreg {resolved}" if precision == "logreg" else f"grid {resolved}"
        print(
            f"{what:15s} N {n:5d} D {dim:5d} C {classes:4d}: chosen {chosen} of {os.cpu_count()} threads "
            f"{r:6.2f} s, all threads {e:6.2f} s, 1 thread {o:6.2f} s: all / chosen {e / r:.2f}x, "
            f"1 thread / chosen {o / r:.2f}x"
        )


if __name__ == "__main__":
    main()
