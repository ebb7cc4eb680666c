"""False-alarm and detection rates of `mmbench check`'s statistical path, measured on trained seeds.

    python benchmarks/check_gate_rates.py [--pool 0-39] [--workers 2] [--trials 2000]
    python benchmarks/check_gate_rates.py --methods arm --pool 0-59   # retrain one method, keep the rest

Every method of the `ci` suite is trained on a pool of seeds, and seeds 0-19 once more with
ATEN_CPU_CAPABILITY=default (a numerics change: the vector ISA of torch's CPU kernels), the
situation in which CI leaves the exact path (finished runs in --out are read, not re-run). The
gate's baseline is the pool's seeds 0-19 (what `mmbench check --update` trains). Simulated CI runs,
each going through `check.compare` with each method's CI seeds (`check.ci_seed_count`: N_CI, 12 for arm):

  fresh seeds:      N_CI of the pool's seeds from 20 on, which the baseline has never seen, labelled as
                    N_CI random baseline seeds, so the paired test pairs unrelated runs: the worst
                    case (the issue's test of the gate; the paired test gains nothing here);
  numerics change:  N_CI of seeds 0-19 rerun under the other ISA, paired with their twins: what CI
                    meets on another CPU (exact matches included).

  false alarms: how often an unchanged CI run fails (any method), target <= 1 %;
  detection:    how often a method whose N_CI accuracies are all lowered by 2 pp fails, target >= 80 %.

The per-seed accuracies and hashes are written to --pool-file (committed as
mmbench/baselines/ci/pool.json) so that tests/test_check.py replays the simulation cheaply.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mmbench.analysis import check
from mmbench.config import parse_seeds


def train_one(job: tuple[str, int, str]) -> tuple[str, int, float, str]:
    method, seed, out = job
    configs = check.suite_configs("ci", [seed], [method])
    result = check.run_suite(configs, Path(out), lambda cfg, outcome: None)[method][0]
    return method, seed, result.acc, result.preds_sha256


def train(seeds: list[int], out: Path, workers: int, env: dict[str, str] | None = None,
          methods: list[str] | None = None) -> dict[str, dict[int, tuple[float, str]]]:
    """{method: {seed: (accuracy, predictions hash)}}; `env` is set for fresh worker processes."""
    import multiprocessing
    import os

    jobs = [(m, s, str(out)) for m in check.suite_configs("ci", [0], methods) for s in seeds]
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        pool: dict[str, dict[int, tuple[float, str]]] = {}
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as executor:
            for method, seed, acc, digest in executor.map(train_one, jobs):
                pool.setdefault(method, {})[seed] = (acc, digest)
        return pool
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def rates(data: dict[str, Any], scenario: str, n_ci: int | None = None, trials: int = 2000, drop: float = 0.02,
          seed: int = 0) -> dict[str, Any]:
    """Simulated CI runs of one scenario ("fresh" or "numerics") on the committed pool data; `n_ci` None
    draws each method's own number of CI seeds (`check.ci_seed_count`)."""
    rng = np.random.default_rng(seed)
    n_ref = check.N_REF
    baseline: dict[str, Any] = {"methods": {}}
    for method, by_seed in data["pool"].items():
        baseline["methods"][method] = {"seeds": list(range(n_ref)), "acc": [by_seed[str(s)][0] for s in range(n_ref)],
                                       "preds_sha256": [by_seed[str(s)][1] for s in range(n_ref)]}

    def draw(method: str, lowered: float) -> list[check.SeedResult]:
        n = n_ci or check.ci_seed_count("ci", method)
        labels = sorted(rng.choice(n_ref, size=n, replace=False).tolist())
        if scenario == "fresh":
            fresh = [s for s in data["pool"][method] if int(s) >= n_ref]
            picked = [data["pool"][method][s] for s in rng.choice(fresh, size=n, replace=False)]
        else:
            picked = [data["twins"][method][str(s)] for s in labels]
        return [check.SeedResult(label, acc - lowered, 0, 0, digest if not lowered else "changed")
                for label, (acc, digest) in zip(labels, picked, strict=True)]

    def failed(target: str | None) -> dict[str, bool]:
        current = {m: draw(m, drop if m == target else 0.0) for m in baseline["methods"]}
        return {v.method: v.failed for v in check.compare(baseline, current, exact_allowed=True)}

    methods = list(baseline["methods"])
    alarms = {m: 0 for m in methods}
    any_alarm = 0
    for _ in range(trials):
        verdict = failed(None)
        any_alarm += any(verdict.values())
        for method in methods:
            alarms[method] += verdict[method]
    power_trials = max(1, trials // 4)
    detection = {m: sum(failed(m)[m] for _ in range(power_trials)) / power_trials for m in methods}
    return {"false_alarm": any_alarm / trials, "false_alarm_by_method": {m: a / trials for m, a in alarms.items()},
            "detection": detection, "trials": trials}


def spread(data: dict[str, Any], method: str) -> tuple[float, float, float]:
    """Median and SD (pp) of the method's seeds, and the SD of twin - baseline over seeds 0-19."""
    values = np.array([v[0] for v in data["pool"][method].values()])
    diffs = [data["twins"][method][str(s)][0] - data["pool"][method][str(s)][0] for s in range(check.N_REF)]
    return float(np.median(values) * 100), float(values.std(ddof=1) * 100), float(np.std(diffs, ddof=1) * 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="0-39", help="seeds trained per method (0-19 make the baseline)")
    parser.add_argument("--out", type=Path, default=Path("results/check-pool"), help="runs of the pool")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--pool-file", type=Path, default=check.BASELINES / "ci" / "pool.json")
    parser.add_argument("--methods", help="retrain only these methods (e.g. arm) and keep the others' data "
                        "from --pool-file")
    parser.add_argument("--replay", action="store_true", help="only simulate, from --pool-file")
    args = parser.parse_args()
    if not args.replay:
        started = time.perf_counter()
        methods = args.methods.split(",") if args.methods else None
        pool = train(parse_seeds(args.pool), args.out / "avx", args.workers, methods=methods)
        twins = train(list(range(check.N_REF)), args.out / "isa-default", args.workers,
                      {"ATEN_CPU_CAPABILITY": "default"}, methods)
        print(f"trained {len(pool)} methods x {len(parse_seeds(args.pool))} seeds and {check.N_REF} twins "
              f"({time.perf_counter() - started:.0f} s)")

        def as_json(runs: dict) -> dict:
            return {m: {str(s): list(v) for s, v in sorted(by.items())} for m, by in runs.items()}

        kept = json.loads(args.pool_file.read_text()) if methods else {"pool": {}, "twins": {}}
        args.pool_file.parent.mkdir(parents=True, exist_ok=True)
        args.pool_file.write_text(json.dumps({"suite": "ci", "settings": check.suite_settings("ci"),
                                              "selection": check.SELECTION,
                                              "twins_env": {"ATEN_CPU_CAPABILITY": "default"},
                                              "pool": {**kept["pool"], **as_json(pool)},
                                              "twins": {**kept["twins"], **as_json(twins)}}) + "\n")
    data = json.loads(args.pool_file.read_text())
    results = {scenario: rates(data, scenario, trials=args.trials) for scenario in ("fresh", "numerics")}
    more = {m: check.ci_seed_count("ci", m) for m in data["pool"] if check.ci_seed_count("ci", m) != check.N_CI}
    print(f"baseline: seeds 0-{check.N_REF - 1}; CI: {check.N_CI} seeds per method (more where a method says: "
          f"{more}); margin {check.MARGIN * 100:g} pp; "
          f"alpha_family {check.ALPHA_FAMILY}; {args.trials} simulated CI runs per scenario")
    print(f"{'method':10s} {'median %':>9s} {'SD pp':>6s} {'twin-diff SD':>13s} | {'false alarms':>12s} "
          f"{'caught -2pp':>11s} (fresh) | {'false alarms':>12s} {'caught -2pp':>11s} (numerics change)")
    for method in data["pool"]:
        median, sd, twin_sd = spread(data, method)
        cells = [f"{results[s]['false_alarm_by_method'][method] * 100:11.2f}% "
                 f"{results[s]['detection'][method] * 100:10.1f}%" for s in ("fresh", "numerics")]
        print(f"{method:10s} {median:9.2f} {sd:6.2f} {twin_sd:13.2f} | {cells[0]}         | {cells[1]}")
    for scenario in ("fresh", "numerics"):
        r = results[scenario]
        print(f"{scenario}: false alarms {r['false_alarm'] * 100:.2f} % of CI runs (target <= 1 %); "
              f"2 pp drop caught in >= 80 % for {sum(v >= 0.8 for v in r['detection'].values())} of "
              f"{len(r['detection'])} methods")


if __name__ == "__main__":
    main()
