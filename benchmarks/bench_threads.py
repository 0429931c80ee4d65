"""Threads of the probe grid: the OpenMP wait policy on a loaded machine, and the thread count by kernel size.

    python benchmarks/bench_threads.py [--epochs 30] [--burners 2] [--repeats 3]

1. The grid with spinning (ACTIVE) vs sleeping (PASSIVE, what transferkit sets) waiting threads, idle and next to
   CPU-burning processes of our own (bounded in time): wall and CPU seconds, the ratio PASSIVE / ACTIVE.
2. Idle, PASSIVE: the grid at several sizes (features D, classes C) with its threads chosen by kernel size
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
from transferkit.probe.linear import LinearGridConfig, Variant, train_linear_grid
devices.MIN_FLOPS_PER_THREAD = @MIN_FLOPS@
g = torch.Generator().manual_seed(0)
feats = {s: torch.randn(n, @DIM@, generator=g) for s, n in (("train", 1077), ("val", 360), ("test", 360))}
labels = {s: torch.randint(0, @CLASSES@, (len(x),), generator=g) for s, x in feats.items()}
t, c = time.perf_counter(), time.process_time()
train_linear_grid([Variant(f"v{i}", feats, {}) for i in range(4)],
                  labels, @CLASSES@, LinearGridConfig(epochs=@EPOCHS@))
print(time.perf_counter() - t, time.process_time() - c)
"""

BURN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def run(
    policy: str, epochs: int, dim: int = 1536, classes: int = 10, rule: bool = False
) -> tuple[float, float]:
    """Wall and CPU seconds of the grid in a fresh process; ``rule=False``: all threads (no size rule)."""
    from transferkit.utils.devices import MIN_FLOPS_PER_THREAD

    policy, _, threads = policy.partition("/")
    env = {**os.environ, "OMP_WAIT_POLICY": policy, **({"OMP_NUM_THREADS": threads} if threads else {})}
    code = GRID.replace("@EPOCHS@", str(epochs)).replace("@DIM@", str(dim)).replace("@CLASSES@", str(classes))
    code = code.replace("@MIN_FLOPS@", repr(MIN_FLOPS_PER_THREAD if rule else 0.0))
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
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")
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
    from transferkit.utils.devices import threads_for_flops

    print("\nidle, PASSIVE: threads by kernel size vs all threads (grid: 4 variants x 36 heads, batch 256)")
    for dim, classes in ((384, 10), (1536, 10), (3840, 10), (1536, 100), (4096, 100)):
        chosen = threads_for_flops(2 * 256 * dim * 36 * classes)
        rule = sorted(run("PASSIVE", args.epochs, dim, classes, rule=True) for _ in range(args.repeats))
        every = sorted(run("PASSIVE", args.epochs, dim, classes) for _ in range(args.repeats))
        one = sorted(run("PASSIVE/1", args.epochs, dim, classes) for _ in range(args.repeats))
        r, e, o = (runs[len(runs) // 2][0] for runs in (rule, every, one))
        print(
            f"D {dim:5d} C {classes:4d}: chosen {chosen} of {os.cpu_count()} threads {r:6.2f} s, all threads "
            f"{e:6.2f} s, 1 thread {o:6.2f} s: all / chosen {e / r:.2f}x, 1 thread / chosen {o / r:.2f}x"
        )


if __name__ == "__main__":
    main()
