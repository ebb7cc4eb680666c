"""Sweep throughput on this machine's CPU: runs/hour at 1, 2 and 4 runs at a time (local backend),
and through the SLURM and Ray backends.

    python benchmarks/bench_sweep.py [--runs 8] [--epochs 4] [--jobs 1,2,4] [--backends local,slurm,ray]

Each setting runs the same `runs` synthetic runs (joint, seeds 0..runs-1) into a fresh results
folder with `mmbench sweep`, and prints wall time and runs/hour. Every run is a separate
process (interpreter + torch import included), as in real sweeps. SLURM (a running controller,
e.g. `.ci/slurm-localhost up`) gets one CPU per run, so as many runs at a time as the node has
CPUs; Ray starts a local cluster with one CPU per run. Both are skipped when not available.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--jobs", default="1,2,4")
    parser.add_argument("--backends", default="local,slurm,ray")
    args = parser.parse_args()
    settings = {"local": [("--jobs", str(j)) for j in args.jobs.split(",")],
                "slurm": [("--backend", "slurm", "--slurm", "cpus_per_task=1", "--slurm", "gpus_per_task=0")],
                "ray": [("--backend", "ray")]}
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep.yaml"
        sweep.write_text(yaml.safe_dump({"methods": ["joint"], "datasets": ["synthetic"],
                                         "seeds": list(range(args.runs)), "set": {"epochs": args.epochs}}))
        for backend in args.backends.split(","):
            if not available(backend):
                print(f"{backend}: not available here, skipped")
                continue
            for i, options in enumerate(settings[backend]):
                out = Path(tmp) / f"results-{backend}-{i}"
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-c", "from mmbench.cli import main; main()", "sweep", str(sweep),
                                "--out", str(out), *options], check=True, capture_output=True)
                seconds = time.perf_counter() - t0
                print(f"{' '.join(options):60s} {args.runs} runs in {seconds:6.1f} s = "
                      f"{args.runs / seconds * 3600:7.0f} runs/hour")


def available(backend: str) -> bool:
    if backend == "slurm":
        return shutil.which("sbatch") is not None and subprocess.run(["sinfo"], capture_output=True).returncode == 0
    if backend == "ray":
        return importlib.util.find_spec("ray") is not None
    return True


if __name__ == "__main__":
    main()
