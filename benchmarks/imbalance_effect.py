"""Does a method help the slow modality? Paired comparison against a baseline over seeds.

    python benchmarks/imbalance_effect.py --methods ogm-ge,ogm,opm --baseline joint --seeds 0-4

Runs every (method, seed) on the dataset (finished runs in --out are reused), then prints,
per method, the mean difference to the baseline in fused and per-modality test accuracy at
the best-validation epoch, with its 95% t-interval and the paired t-test p-value.
"""

from __future__ import annotations

import argparse

from mmbench.analysis.stats import paired_comparison
from mmbench.config import expand, parse_seeds, parse_sets
from mmbench.results import read_runs
from mmbench.train.dependencies import run_in_process

METRICS = {"fused": "best_val_acc", "audio": "best_val_acc_head_a", "visual": "best_val_acc_head_v",
           "D3 share_a": "best_val_d3_logit_share_a", "D4 audio": "best_val_d4_audio_decides",
           "D4 excess": "best_val_d4_excess_audio"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="ogm-ge,ogm,opm,aug,dlc")
    parser.add_argument("--baseline", default="joint")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--out", default="results")
    parser.add_argument("--set", action="append", default=[], help="key=value for every run")
    args = parser.parse_args()

    methods = [args.baseline] + [m for m in args.methods.split(",") if m != args.baseline]
    seeds = parse_seeds(args.seeds)
    configs = expand(methods, args.dataset, seeds, "benchmark", parse_sets(args.set))
    run_in_process(configs, args.out)  # with the runs a method requires (e.g. umt's teachers) first
    rows = read_runs(args.out).set_index("run_id").loc[[cfg.run_id for cfg in configs]]
    by_method = {m: rows[rows["method"] == m].sort_values("seed") for m in methods}
    baseline = by_method[args.baseline]
    print(f"{args.dataset}, seeds {seeds}, test accuracy (pp) at the best-validation epoch, "
          f"paired by seed against {args.baseline}")
    print("accuracies in pp; D3 = audio's share of the logit norm, D4 = share of audio-visual "
          "disagreements the fused prediction gives to audio, D4 excess = D4 minus audio's share of the "
          "disagreements it gets right (all x100)")
    print(f"{'method':10} {'metric':10} {'baseline':>9} {'method':>9} {'mean diff':>10} {'95% CI':>18} {'p':>8}")
    for method in methods[1:]:
        for label, column in METRICS.items():
            c = paired_comparison(by_method[method][column].to_numpy() * 100, baseline[column].to_numpy() * 100)
            print(f"{method:10} {label:10} {baseline[column].mean() * 100:9.2f} "
                  f"{by_method[method][column].mean() * 100:9.2f} {c.mean_diff:+10.2f} "
                  f"[{c.ci_low:+7.2f}, {c.ci_high:+7.2f}] {c.p_value:8.4f}")


if __name__ == "__main__":
    main()
