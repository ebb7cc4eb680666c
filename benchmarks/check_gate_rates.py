"""False-alarm and detection rates of `mmbench check`'s statistical path, by simulation, and the
time of one real `mmbench check`.

    python benchmarks/check_gate_rates.py [--baseline results/baselines/ci] [--trials 4000] [--seeds 5] [--time]

Each simulated CI run draws `seeds` accuracies per method and goes through `check.compare` with
the exact path off (the statistical test, Holm over the methods). Null: drawn from the baseline's
own per-seed accuracies (resampled) and from a normal with the baseline's mean and SD. Regression:
one method's draws shifted down by k σ_eff or by k pp; the rate is how often that method fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mmbench import check


def draws(rng: np.random.Generator, ref: dict, n: int, how: str) -> np.ndarray:
    accs = np.asarray(ref["acc"])
    if how == "resample":
        return rng.choice(accs, size=n, replace=True)
    return accs.mean() + accs.std(ddof=1) * rng.standard_normal(n)


def one_run(rng: np.random.Generator, baseline: dict, n: int, how: str, target: str | None = None,
            drop: float = 0.0) -> list[check.Verdict]:
    current = {}
    for method, ref in baseline["methods"].items():
        accs = draws(rng, ref, n, how) - (drop if method == target else 0.0)
        current[method] = [check.SeedResult(i, float(a), 0, ref["n_test"], "sim") for i, a in enumerate(accs)]
    return check.compare(baseline, current, exact_allowed=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=Path("results/baselines/ci"))
    parser.add_argument("--trials", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--time", action="store_true", help="also time one real `mmbench check` from scratch")
    args = parser.parse_args()
    baseline = json.loads((args.baseline / check.BASELINE_FILE).read_text())
    rng = np.random.default_rng(0)
    methods = list(baseline["methods"])
    print(f"baseline: {len(methods)} methods x {len(baseline['methods'][methods[0]]['acc'])} seeds; "
          f"CI: {args.seeds} seeds; alpha_family {baseline['alpha_family']}; {args.trials} simulated CI runs")
    for method in methods:
        ref = baseline["methods"][method]
        sigma = max(float(np.std(ref["acc"], ddof=1)), check.sigma_floor(float(np.mean(ref["acc"])), ref["n_test"]))
        print(f"  {method:10s} mean {np.mean(ref['acc']) * 100:6.2f} %  SD {np.std(ref['acc'], ddof=1) * 100:5.2f} pp"
              f"  sigma_eff {sigma * 100:5.2f} pp")
    for how in ("resample", "normal"):
        alarms = sum(any(v.failed for v in one_run(rng, baseline, args.seeds, how)) for _ in range(args.trials))
        print(f"false alarms ({how} null): {alarms / args.trials * 100:.2f} % of CI runs fail (target <= 1 %)")
    target = methods[0] if "joint" not in methods else "joint"
    ref = baseline["methods"][target]
    sigma = max(float(np.std(ref["acc"], ddof=1)), check.sigma_floor(float(np.mean(ref["acc"])), ref["n_test"]))
    trials = max(200, args.trials // 4)
    for label, drop in [*[(f"{k} sigma_eff ({k * sigma * 100:.2f} pp)", k * sigma) for k in (1, 2, 3)],
                        *[(f"{pp} pp", pp / 100) for pp in (1, 2, 5)]]:
        caught = sum(next(v for v in one_run(rng, baseline, args.seeds, "normal", target, drop)
                          if v.method == target).failed for _ in range(trials))
        print(f"detection, {target} drops by {label}: {caught / trials * 100:.1f} % of CI runs fail")
    if args.time:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", "from mmbench.cli import main; main()", "check",
                                   "--baseline", str(args.baseline), "--out", tmp], capture_output=True, text=True)
            print(f"mmbench check from scratch: {time.perf_counter() - start:.1f} s, exit {done.returncode}")


if __name__ == "__main__":
    main()
