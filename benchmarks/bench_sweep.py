"""Sweep throughput of the local backend on this machine's CPU: runs/hour at 1, 2 and 4 runs at a time.

    python benchmarks/bench_sweep.py [--runs 8] [--epochs 4] [--jobs 1,2,4]

Each setting runs the same `runs` synthetic runs (joint, seeds 0..runs-1) into a fresh results
folder with `mmbench sweep --jobs J`, and prints wall time and runs/hour. Every run is a separate
process (interpreter + torch import included), as in real sweeps.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep.yaml"
        sweep.write_text(yaml.safe_dump({"methods": ["joint"], "datasets": ["synthetic"],
                                         "seeds": list(range(args.runs)), "set": {"epochs": args.epochs}}))
        for jobs in (int(j) for j in args.jobs.split(",")):
            out = Path(tmp) / f"results-{jobs}"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "from mmbench.cli import main; main()", "sweep", str(sweep),
                            "--out", str(out), "--jobs", str(jobs)], check=True, capture_output=True)
            seconds = time.perf_counter() - t0
            print(f"--jobs {jobs}: {args.runs} runs in {seconds:6.1f} s = {args.runs / seconds * 3600:7.0f} runs/hour")


if __name__ == "__main__":
    main()
