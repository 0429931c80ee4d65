"""OpenMP wait policy on a loaded machine: the probe grid with spinning (ACTIVE) vs sleeping (PASSIVE, what
transferkit sets) waiting threads, idle and next to CPU-burning processes of our own (bounded in time).

    python benchmarks/bench_threads.py [--epochs 30] [--burners 2]

Prints wall and CPU seconds of each run and the ratio PASSIVE / ACTIVE measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

GRID = """
import time, torch
from transferkit.probe.linear import LinearGridConfig, Variant, train_linear_grid
g = torch.Generator().manual_seed(0)
feats = {s: torch.randn(n, 1536, generator=g) for s, n in (("train", 1077), ("val", 360), ("test", 360))}
labels = {s: torch.randint(0, 10, (len(x),), generator=g) for s, x in feats.items()}
t, c = time.perf_counter(), time.process_time()
train_linear_grid([Variant(f"v{i}", feats, {}) for i in range(4)],
                  labels, 10, LinearGridConfig(epochs=EPOCHS))
print(time.perf_counter() - t, time.process_time() - c)
"""

BURN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def run(policy: str, epochs: int) -> tuple[float, float]:
    policy, _, threads = policy.partition("/")
    env = {**os.environ, "OMP_WAIT_POLICY": policy, **({"OMP_NUM_THREADS": threads} if threads else {})}
    out = subprocess.run([sys.executable, "-c", GRID.replace("EPOCHS", str(epochs))], env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
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


if __name__ == "__main__":
    main()
