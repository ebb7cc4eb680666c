"""Speed and memory of the README's run command and of the training engine.

    python benchmarks/bench_run.py [--method joint] [--dataset synthetic] [--seeds 0,1,2]

Prints: wall time of `mmbench run` (fresh results folder, so nothing is skipped), training
samples/s of the engine (from the stored runs: training samples over time spent in training
steps, evaluation excluded), and the peak resident memory of the run process.
Target on 2 CPU cores: the README command in <= 90 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from mmbench.results import read_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="joint")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], help="extra key=value for mmbench run")
    args = parser.parse_args()

    out = tempfile.mkdtemp(prefix="mmbench-bench-")
    command = [sys.executable, "-m", "mmbench.cli", "run", "--method", args.method, "--dataset",
               args.dataset, "--seeds", args.seeds, "--out", out]
    for pair in args.set:
        command += ["--set", pair]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rows = read_runs(out)
    shutil.rmtree(out, ignore_errors=True)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {rows['num_threads'].iloc[0]} threads, device {rows['device'].iloc[0]}")
    print(f"command: mmbench run --method {args.method} --dataset {args.dataset} --seeds {args.seeds}")
    print(f"wall time of the run command: {wall:.1f} s for {len(rows)} runs "
          f"({rows['wall_s'].mean():.1f} s per run inside the engine)")
    print(f"training throughput: {rows['train_samples_per_s'].mean():.0f} samples/s "
          f"(min {rows['train_samples_per_s'].min():.0f}, max {rows['train_samples_per_s'].max():.0f})")
    print(f"peak resident memory of the run process: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
