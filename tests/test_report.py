"""`mmbench report`: the statistics in its tables, and every output format."""

from __future__ import annotations

import json
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from typer.testing import CliRunner

from mmbench.analysis.render import tables
from mmbench.analysis.report import ReportOptions, build_report, load_results
from mmbench.analysis.stats import capability_gap, holm
from mmbench.cli import app
from mmbench.config import resolve

from .conftest import TINY

runner = CliRunner()


def fake_runs(values: dict[tuple[str, str], list[float]], crn: bool = True, seeds: dict | None = None) -> pd.DataFrame:
    """Run rows as results.read_runs returns them, from {(dataset, method): accuracies per seed}."""
    rows = []
    for (dataset, method), accs in values.items():
        for i, acc in enumerate(accs):
            seed = (seeds or {}).get((dataset, method), range(len(accs)))[i]
            config = {"method": method, "dataset": dataset, "seed": seed, "hparams": {}, "data": {}}
            rows.append({"run_id": f"{dataset}-{method}-{seed}", "status": "ok", "dataset": dataset,
                         "method": method, "seed": seed, "pair_key": seed if crn else None, "crn": crn,
                         "config_json": json.dumps(config), "best_val_acc": acc, "final_acc": acc - 0.01,
                         "paper_max_acc": acc + 0.02, "best_val_acc_head_a": 0.6, "best_val_acc_head_v": 0.3,
                         "best_val_rho": 2.0, "best_val_d4_audio_decides": 0.7})
    runs = pd.DataFrame(rows)
    runs["variant"] = runs["method"]
    return runs


BASE = [0.70, 0.72, 0.71, 0.69, 0.73]


def test_paired_comparison_matches_scipy_and_holm_over_the_family():
    a = [0.72, 0.75, 0.73, 0.70, 0.76]
    b = [0.69, 0.73, 0.70, 0.70, 0.72]
    runs = fake_runs({("d1", "joint"): BASE, ("d1", "a"): a, ("d1", "b"): b})
    report = build_report(runs, pd.DataFrame(), ReportOptions())
    main = report.main.set_index("method")
    for name, values in (("a", a), ("b", b)):
        expected = sps.ttest_rel(values, BASE)
        assert main.loc[name, "test"] == "paired-t"
        assert main.loc[name, "p"] == pytest.approx(expected.pvalue)
        assert main.loc[name, "delta"] == pytest.approx(np.mean(np.subtract(values, BASE)))
        ci = expected.confidence_interval()
        assert (main.loc[name, "delta_low"], main.loc[name, "delta_high"]) == pytest.approx((ci.low, ci.high))
    p = main.loc[["a", "b"], "p"].to_numpy()
    assert main.loc[["a", "b"], "p_holm"].to_numpy() == pytest.approx(holm(p))
    assert main.loc["a", "p_holm"] == pytest.approx(min(1, 2 * min(p)) if p[0] < p[1] else max(2 * p[1], p[0]))
    mean = main.loc["joint", "mean"]
    half = sps.t.ppf(0.975, 4) * np.std(BASE, ddof=1) / np.sqrt(5)
    assert (main.loc["joint", "ci_low"], main.loc["joint", "ci_high"]) == pytest.approx((mean - half, mean + half))
    assert np.isnan(main.loc["joint", "p"])


def test_unpaired_seeds_use_welch():
    a = [0.75, 0.78, 0.74]
    runs = fake_runs({("d1", "joint"): BASE, ("d1", "a"): a}, crn=False)
    row = build_report(runs, pd.DataFrame(), ReportOptions()).main.set_index("method").loc["a"]
    expected = sps.ttest_ind(a, BASE, equal_var=False)
    assert row["test"] == "welch" and row["p"] == pytest.approx(expected.pvalue)
    assert "?" in row["mark"]  # n = 3 is flagged as low power


def test_runs_under_different_protocols_are_not_compared():
    """Issue 15.9: a method at 2 epochs on 240 clips was tested against joint at 6 epochs on 600 clips with
    another test set ("-35.83 pp, paired-t, Holm-significant"). Now the row names the differing settings."""
    runs = fake_runs({("d1", "joint"): BASE, ("d1", "a"): [0.40, 0.41, 0.39, 0.42, 0.40],
                      ("d1", "b"): [0.71, 0.72, 0.73, 0.70, 0.72]})
    for i in runs.index[runs["method"] == "a"]:
        config = json.loads(runs.at[i, "config_json"])
        runs.at[i, "config_json"] = json.dumps({**config, "epochs": 2, "data": {"n_train": 240}})
    report = build_report(runs, pd.DataFrame(), ReportOptions())
    rows = report.main.set_index("method")
    assert pd.isna(rows.loc["a", "p"]) and not rows.loc["a", "significant"] and rows.loc["a", "mark"] == ""
    assert rows.loc["a", "dropped"] == 'not compared with joint: epochs 2 vs -; n_train 240 vs -'
    assert any("a was not compared with joint" in note for note in report.notes)
    assert rows.loc["b", "test"] == "paired-t"  # the others still are


def test_a_small_seed_overlap_is_not_paired_and_the_row_says_what_entered():
    """Issue 14 item 6: ogm seeds 3-9 against joint 0-4 were paired on 2 seeds while the row said
    n = 7. Now too small an overlap means Welch on every run, and the row names it."""
    runs = fake_runs({("d1", "joint"): BASE, ("d1", "a"): [0.8, 0.81, 0.79]}, seeds={("d1", "a"): [2, 3, 9]})
    row = build_report(runs, pd.DataFrame(), ReportOptions()).main.set_index("method").loc["a"]
    assert row["test"] == "welch" and row["n_pairs"] == 0 and row["n_used"] == "3/5"
    assert "unpaired (only 2 common seeds)" in row["dropped"]


def test_pairs_on_a_large_overlap_list_the_seeds_left_out_and_nan_values():
    runs = fake_runs({("d1", "joint"): BASE, ("d1", "a"): [0.8, 0.81, 0.79, 0.75]},
                     seeds={("d1", "a"): [0, 1, 2, 9]})
    runs.loc[(runs["method"] == "a") & (runs["seed"] == 1), "best_val_acc"] = np.nan
    row = build_report(runs, pd.DataFrame(), ReportOptions()).main.set_index("method").loc["a"]
    assert row["test"] == "paired-t" and row["n_pairs"] == 2 and row["n_used"] == "2/2"
    assert row["delta"] == pytest.approx(np.mean([0.8 - BASE[0], 0.79 - BASE[2]]))
    assert "a seeds 1: best_val_acc is NaN" in row["dropped"]
    assert "a seeds 9: no partner seed" in row["dropped"] and "joint seeds 3,4: no partner seed" in row["dropped"]


def test_a_constant_shift_is_tested_by_sign_flips_and_never_both_significant_and_equivalent():
    """Issue 14 item 5: an identical per-seed shift gave p = 0, CI [Δ, Δ], marked significant and
    equivalent."""
    ten = [0.70, 0.72, 0.71, 0.69, 0.73, 0.70, 0.71, 0.72, 0.70, 0.71]
    runs = fake_runs({("d1", "joint"): BASE, ("d1", "shifted"): [v + 0.005 for v in BASE]})
    row = build_report(runs, pd.DataFrame(), ReportOptions()).main.set_index("method").loc["shifted"]
    assert row["test"] == "sign-flip" and row["p"] == pytest.approx(0.0625) and not row["significant"]
    assert not row["equivalent"] and np.isnan(row["delta_low"])
    noise = np.array([1, -1, 2, -2, 0, 1, -1, 0, 2, -2]) * 1e-4
    runs = fake_runs({("d1", "joint"): ten, ("d1", "tiny"): list(np.add(ten, 0.004 + noise))})
    row = build_report(runs, pd.DataFrame(), ReportOptions()).main.set_index("method").loc["tiny"]
    assert row["significant"] and -0.01 < row["delta_low"] and row["delta_high"] < 0.01  # inside the ROPE
    assert not row["equivalent"] and "≈" not in row["mark"]


def test_bca_intervals_and_the_rope_prior_are_shown():
    from mmbench.analysis import render

    ten = [0.70, 0.72, 0.71, 0.69, 0.73, 0.70, 0.71, 0.72, 0.70, 0.71]
    runs = fake_runs({("d1", "joint"): ten, ("d1", "a"): list(np.add(ten, [0.01, 0.03, 0.0, 0.02, 0.01] * 2))})
    report = build_report(runs, pd.DataFrame(), ReportOptions())
    table = render.tables(report)[0]
    column = table.headers.index("Δ BCa 95% (n ≥ 10)")
    row = report.main.set_index("method").loc["a"]
    assert table.rows[1][column] == f"[{row['bootstrap_low'] * 100:+.2f}, {row['bootstrap_high'] * 100:+.2f}]"
    assert any("posterior probability under a flat prior" in note for note in report.notes)


def test_paper_selection_is_shown_with_a_warning_and_never_tested():
    runs = fake_runs({("d1", "joint"): BASE, ("d1", "a"): [v + 0.05 for v in BASE]})
    report = build_report(runs, pd.DataFrame(), ReportOptions(selection="paper"))
    row = report.main.set_index("method").loc["a"]
    assert row["delta"] == pytest.approx(0.05) and np.isnan(row["p"]) and not row["significant"]
    assert row["mark"] == "" and any(note.startswith("WARNING --selection paper") for note in report.notes)


def test_a_secondary_endpoint_is_exploratory():
    """Issue 14 item 8: one primary (metric, selection) per report; the others are unmarked."""
    a = [0.75, 0.78, 0.75, 0.74, 0.79]
    runs = fake_runs({("d1", "joint"): BASE, ("d1", "a"): a})
    primary = build_report(runs, pd.DataFrame(), ReportOptions()).main.set_index("method").loc["a"]
    final = build_report(runs, pd.DataFrame(), ReportOptions(selection="final"))
    row = final.main.set_index("method").loc["a"]
    assert primary["significant"] and "†" in primary["mark"]
    assert row["p"] == pytest.approx(primary["p"]) and not row["significant"] and "*" not in row["mark"]
    assert any(note.startswith("EXPLORATORY: the primary endpoint is acc@best-val") for note in final.notes)
    registered = build_report(runs, pd.DataFrame(), ReportOptions(selection="final", primary="acc@final"))
    assert registered.main.set_index("method").loc["a", "significant"]


def test_the_holm_family_counts_every_comparison_attempted():
    runs = fake_runs({("d1", "joint"): BASE, ("d1", "a"): [0.75, 0.78, 0.75, 0.74, 0.79], ("d1", "same"): BASE})
    main = build_report(runs, pd.DataFrame(), ReportOptions()).main.set_index("method")
    p = main.loc["a", "p"]
    assert np.isnan(main.loc["same", "p"])  # identical: no p, but it was a comparison
    assert main.loc["a", "p_holm"] == pytest.approx(min(1.0, 2 * p))


def test_imbalance_degree_is_the_mean_of_each_run_and_dominance_is_counted():
    """Issue 14 item 7: two runs at I = 1, one audio- and one visual-dominated, averaged to 0."""
    runs = fake_runs({("d1", "aug"): [0.8, 0.8, 0.8, 0.8]})
    runs["best_val_shapley_a"] = [0.3, 0.0, 0.25, 0.05]
    runs["best_val_shapley_v"] = [0.0, 0.3, 0.05, 0.25]
    row = build_report(runs, pd.DataFrame(), ReportOptions(baseline="aug")).imbalance.iloc[0]
    per_run = [1.0, 1.0, 0.2 / 0.3, 0.2 / 0.3]
    assert row["imbalance_degree"] == pytest.approx(np.mean(per_run))
    assert (row["audio_dominates"], row["visual_dominates"]) == (0.5, 0.5)


def test_rho_is_averaged_on_the_log_scale():
    runs = fake_runs({("d1", "joint"): [0.7, 0.7]})
    runs["best_val_rho"] = [4.0, 0.25]
    row = build_report(runs, pd.DataFrame(), ReportOptions()).imbalance.iloc[0]
    assert row["rho"] == pytest.approx(1.0)  # the arithmetic mean, 2.125, says "audio-dominated"


def test_identical_results_and_zero_variance():
    runs = fake_runs({("d1", "joint"): BASE, ("d1", "same"): BASE, ("d1", "shifted"): [v + 0.02 for v in BASE],
                      ("d1", "flat"): [0.7] * 5})
    main = build_report(runs, pd.DataFrame(), ReportOptions()).main.set_index("method")
    assert main.loc["same", "test"] == "identical" and main.loc["same", "delta"] == 0
    assert np.isnan(main.loc["same", "p"]) and "†" not in main.loc["same", "mark"]
    assert main.loc["shifted", "delta"] == pytest.approx(0.02)
    assert main.loc["flat", "sd"] == 0 and main.loc["flat", "ci_low"] == main.loc["flat", "ci_high"] == 0.7


def test_two_seeds_still_give_an_interval():
    runs = fake_runs({("d1", "joint"): [0.7, 0.72], ("d1", "a"): [0.74, 0.75]})
    row = build_report(runs, pd.DataFrame(), ReportOptions()).main.set_index("method").loc["a"]
    assert row["n"] == 2 and np.isfinite(row["delta_low"]) and row["low_power"]


def test_across_datasets_with_a_method_missing_on_one():
    runs = fake_runs({("d1", "joint"): BASE, ("d1", "a"): [v + 0.03 for v in BASE],
                      ("d2", "joint"): BASE, ("d2", "a"): [v + 0.01 for v in BASE], ("d2", "b"): BASE})
    report = build_report(runs, pd.DataFrame(), ReportOptions())
    across = report.across.set_index("method")
    assert across.loc["a", "delta"] == pytest.approx(0.02)  # fixed-datasets mean of +3 and +1 pp
    assert across.loc["a", "n_datasets"] == 2 and across.loc["b", "n_datasets"] == 1
    assert across.loc["b", "n_ranked"] == across.loc["a", "n_ranked"] == 1  # ranks: complete datasets only (d2)
    assert (across.loc["a", "wins"], across.loc["a", "ties"], across.loc["a", "losses"]) == (1, 1, 0)
    assert any("1 of 2 datasets" in note for note in report.notes)
    assert report.friedman is None and any("omitted" in note for note in report.notes)


def test_training_cost_is_shown_as_a_multiple_of_the_baselines_and_the_logits_kind_per_method():
    runs = fake_runs({("d", "joint"): BASE, ("d", "dgl"): [a + 0.01 for a in BASE], ("d", "old"): BASE})
    runs["train_gflops_per_sample"] = np.where(runs["method"] == "dgl", 3.0, np.where(runs["method"] == "joint", 2.0,
                                                                                        np.nan))
    runs["modality_logits"] = np.where(runs["method"] == "dgl", "fusion-slice", "late-fusion")
    report = build_report(runs, pd.DataFrame(), ReportOptions())
    main = report.main.set_index("method")
    assert main.loc["dgl", "cost_x"] == pytest.approx(1.5) and main.loc["joint", "cost_x"] == pytest.approx(1.0)
    assert np.isnan(main.loc["old", "cost_x"])  # results written before the cost was counted
    assert report.imbalance.set_index("method").loc["dgl", "logits"] == "fusion-slice"
    table = next(t for t in tables(report) if t.title.startswith("d: test"))
    column = table.headers.index("cost")
    assert [row[column] for row in table.rows] == ["1.00×", "1.50×", "–"]
    # with the runs a method stands on (umt's teachers; ume, which trains nothing, costs just those)
    runs["required_gflops_per_sample"] = np.where(runs["method"] == "dgl", 1.0, np.where(runs["method"] == "old",
                                                                                         4.0, np.nan))
    main = build_report(runs, pd.DataFrame(), ReportOptions()).main.set_index("method")
    assert main.loc["dgl", "cost_x"] == pytest.approx(2.0) and main.loc["old", "cost_x"] == pytest.approx(2.0)
    runs = runs.drop(columns="required_gflops_per_sample")
    runs["train_gflops_per_sample"] = 2.0  # every method at the baseline's cost: no cost column
    same = next(t for t in tables(build_report(runs, pd.DataFrame(), ReportOptions())) if t.title.startswith("d: t"))
    assert "cost" not in same.headers


def test_keys_added_later_at_their_defaults_do_not_separate_old_and_new_runs():
    runs = fake_runs({("d", "joint"): BASE, ("d", "new"): [a + 0.01 for a in BASE], ("d", "other"): BASE})
    for method, extra in (("new", {"eval_every": 1, "lr_milestones": [], "drop_last": False}),
                          ("other", {"eval_every": 2})):
        rows = runs["method"] == method
        runs.loc[rows, "config_json"] = [json.dumps({**json.loads(c), **extra}) for c in runs.loc[rows, "config_json"]]
    main = build_report(runs, pd.DataFrame(), ReportOptions()).main.set_index("method")
    assert isinstance(main.loc["new", "test"], str) and not main.loc["new"].get("dropped")
    assert "eval_every 2 vs -" in main.loc["other", "dropped"]  # a value other than the default still counts


def test_protocol_gap_shows_the_optimism_of_test_selection():
    runs = fake_runs({("d1", "joint"): BASE})
    row = build_report(runs, pd.DataFrame(), ReportOptions()).protocol.iloc[0]
    assert row["optimism"] == pytest.approx(0.02) and row["final"] == pytest.approx(np.mean(BASE) - 0.01)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from mmbench.train import engine

    out = tmp_path_factory.mktemp("report") / "results"
    for method in ("joint", "ogm-ge", "opm"):  # in this process: `mmbench run` would start one per run
        for seed in (0, 1, 2):
            engine.run(resolve(method, "synthetic", seed, overrides={**TINY, "epochs": 3}), out)
    return out


def test_report_in_every_format(results, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(results), "--format", "terminal,md,tex,html", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "synthetic: test acc (%), best-val selection" in text and "Δ vs joint" in text
    data = json.loads((out / "report.json").read_text())
    assert {r["method"] for r in data["main"]} == {"joint", "ogm-ge", "opm"}
    runs, _ = load_results([results])
    joint = runs[runs["method"] == "joint"].sort_values("seed")["best_val_acc"].to_numpy()
    opm = runs[runs["method"] == "opm"].sort_values("seed")["best_val_acc"].to_numpy()
    row = next(r for r in data["main"] if r["method"] == "opm")
    assert row["delta"] == pytest.approx(np.mean(opm - joint))
    markdown = (out / "report.md").read_text()
    assert "| method | n | n used | mean ± SD |" in markdown and "figures/synthetic-seeds.png" in markdown
    tex = (out / "report.tex").read_text()
    assert r"\toprule" in tex and r"\textbf{" in tex and r"\begin{tabular}" in tex
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "http://" not in page and "https://" not in page
    for png in (out / "figures").glob("*.png"):
        assert matplotlib.image.imread(png).std() > 0
    if shutil.which("pdflatex"):
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "report.tex"], cwd=out, capture_output=True)
        assert done.returncode == 0 and (out / "report.pdf").exists(), done.stdout[-2000:]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_html_report_renders_in_headless_chromium(results, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium)")
    out = tmp_path / "report"
    assert runner.invoke(app, ["report", str(results), "--format", "html", "--out", str(out)]).exit_code == 0
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1400,2400", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (2400, 1400)
    # Tables (dark text on white) and figures (coloured pixels) are both on the page.
    rgb = image[..., :3]
    assert (rgb.mean(axis=2) < 0.3).mean() > 0.002
    assert ((rgb.max(axis=2) - rgb.min(axis=2)) > 0.3).mean() > 0.002


def test_json_is_accepted_as_a_format(results, tmp_path):
    result = runner.invoke(app, ["report", str(results), "--format", "terminal,json", "--resample-test",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["options"]["primary"] == "acc@best-val" and "test resampled" in result.output
    assert all(r["delta_low_rt"] is not None for r in data["main"] if r["method"] != "joint")
    bad = runner.invoke(app, ["report", str(results), "--primary", "acc@paper", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--primary acc@paper: expected METRIC@SELECTION" in bad.output


def test_resample_test_varies_the_test_clips_paired_across_methods(results):
    runs, epochs = load_results([results])
    report = build_report(runs, epochs, ReportOptions(resample_test=True))
    row = report.main.set_index("method").loc["opm"]
    assert row["delta_low_rt"] < row["delta"] < row["delta_high_rt"]
    # a copy of joint under another name: the same predictions on the same resampled clips, so
    # every replicate's Δ is exactly 0 (clips resampled independently per method would not be)
    copy = runs[runs["method"] == "joint"].assign(variant="copy", run_id=lambda f: f["run_id"])
    both = pd.concat([runs[runs["method"] == "joint"], copy], ignore_index=True)
    same = build_report(both, epochs, ReportOptions(resample_test=True)).main.set_index("method").loc["copy"]
    assert same["delta_low_rt"] == same["delta_high_rt"] == 0.0
    assert any(note.startswith("Δ [95 %, test resampled]") for note in report.notes)


def test_report_errors_are_one_line(results, tmp_path):
    missing = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no such results folder" in missing.output
    baseline = runner.invoke(app, ["report", str(results), "--baseline", "jiont", "--out", str(tmp_path / "r")])
    assert baseline.exit_code == 2 and "joint" in baseline.output
    paper = runner.invoke(app, ["report", str(results), "--selection", "paper", "--metric", "map",
                                "--out", str(tmp_path / "r")])
    assert paper.exit_code == 2 and "acc only" in " ".join(paper.output.split())


def test_capability_gap_by_hand():
    """D5 per class: accuracy of the modality's logits in the fused model minus the unimodal run's."""
    y = np.array([0, 0, 1, 1, 2])
    head = np.array([0, 1, 1, 1, 0])      # class 0: 1/2, class 1: 2/2, class 2: 0/1
    alone = np.array([0, 0, 1, 0, 2])     # class 0: 2/2, class 1: 1/2, class 2: 1/1
    gap = capability_gap(head, alone, y, 4)
    np.testing.assert_allclose(gap[:3], [-0.5, 0.5, -1.0])
    assert np.isnan(gap[3])  # no test sample of class 3


def test_report_shows_d5_against_unimodal_runs_of_the_same_seed(tmp_path):
    out = tmp_path / "results"
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    for method, extra in (("joint", []), ("unimodal", ["--set", "modality=audio"]),
                          ("unimodal", ["--set", "modality=visual"])):
        result = runner.invoke(app, ["run", "-m", method, "--seeds", "0", "--out", str(out), *sets, *extra])
        assert result.exit_code == 0, result.output
    runs, epochs = load_results([out])
    report = build_report(runs, epochs, ReportOptions())
    row = report.imbalance.set_index("method").loc["joint"]
    preds = pd.read_parquet(next(out.glob("preds/dataset=synthetic/method=joint/*.parquet")))
    preds = preds[preds["selection"] == "best_val"]
    for m, modality in (("a", "audio"), ("v", "visual")):
        uni_id = runs[(runs["method"] == "unimodal") & (runs["hp_modality"] == modality)]["run_id"].item()
        alone = pd.read_parquet(out / "preds/dataset=synthetic/method=unimodal" / f"{uni_id}.parquet")
        alone = alone[alone["selection"] == "best_val"].set_index("sample_id").loc[preds["sample_id"]]
        per_class = [(preds[f"pred_{m}"][preds["y"] == c] == c).mean() - (alone["pred"][alone["y"] == c] == c).mean()
                     for c in range(6)]
        assert row[f"d5_gap_{m}"] == pytest.approx(np.mean(per_class))
        assert row[f"d5_worst_{m}"] == pytest.approx(min(per_class))
    assert not any("D5" in note for note in report.notes)


def test_d5_is_missing_with_a_note_without_unimodal_runs(results):
    runs, epochs = load_results([results])
    report = build_report(runs, epochs, ReportOptions())
    assert report.imbalance["d5_gap_a"].isna().all()
    assert any("D5 capability gap needs a `unimodal` run" in note for note in report.notes)


def test_one_run_with_different_numbers_in_two_folders_is_refused(results, tmp_path):
    """Issue 15.1b: the thread count is not part of a run's identity but changes its last bits; two
    folders holding one run_id with different numbers were merged silently (whichever came first)."""
    from mmbench.analysis.report import ReportError

    copy = tmp_path / "copy"
    shutil.copytree(results, copy)
    once, _ = load_results([results])
    twice, _ = load_results([results, copy])  # identical copies count once
    assert len(twice) == len(once)
    row_file = next(copy.glob("runs/dataset=*/method=joint/*.parquet"))
    row = pd.read_parquet(row_file)
    row["final_acc"] += 0.01
    row.to_parquet(row_file)
    with pytest.raises(ReportError, match=f"run {row['run_id'][0]} .* has different results in .*num_threads"):
        load_results([results, copy])
    result = runner.invoke(app, ["report", str(results), str(copy), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "report one of the folders" in result.output


def test_no_impossible_interval_and_no_false_best():
    """Issue 15.11: n = 2 gave `41.67 ± 35.36 [-275.99, 359.32]`; ties, n = 1 cells and the unimodal
    reference were bolded "best"; '±' meant an SD in one table and half an interval in another."""
    from mmbench.analysis import render

    runs = fake_runs({("d1", "joint"): [0.0833, 0.75], ("d1", "a"): [0.7333, 0.7333, 0.7333],
                      ("d1", "b"): [0.7333, 0.7333, 0.7333], ("d1", "c"): [0.99], ("d1", "unimodal"): [0.95, 0.96]})
    report = build_report(runs, pd.DataFrame(), ReportOptions())
    main = report.main.set_index("method")
    assert main.loc["joint", "ci_low"] == 0.0 and main.loc["joint", "ci_high"] == 1.0  # cut to [0, 100] %
    assert (main["ci_low"].dropna() >= 0).all() and (main["ci_high"].dropna() <= 1).all()
    assert main.loc["a", "delta_low"] >= -1 and main.loc["a", "delta_high"] <= 1
    table = render.tables(report)[0]
    assert table.bold == set()  # a and b tie, c has one seed, unimodal is a reference
    runs.loc[(runs["method"] == "b") & (runs["seed"] == 0), "best_val_acc"] = 0.74
    table = render.tables(build_report(runs, pd.DataFrame(), ReportOptions()))[0]
    assert [table.rows[i][0] for i, _ in table.bold] == ["b"]
    assert "± = one SD over seeds (in every table" in table.caption
    imbalance = render.tables(report)[1]
    assert "±" not in " ".join(" ".join(row) for row in imbalance.rows) and "[" in imbalance.rows[0][3]


def test_the_protocol_gap_of_a_calibrated_method_is_not_computed_from_uncalibrated_epochs():
    """Issue 15.12: dlc's max-over-epochs came from uncalibrated test accuracy while best-val and final
    are calibrated (an 'optimism' of -7.5 pp)."""
    runs = fake_runs({("d1", "joint"): BASE, ("d1", "dlc"): BASE})
    report = build_report(runs, pd.DataFrame(), ReportOptions())
    protocol = report.protocol.set_index("method")
    assert np.isnan(protocol.loc["dlc", "max_over_epochs"]) and np.isnan(protocol.loc["dlc", "optimism"])
    assert protocol.loc["joint", "optimism"] == pytest.approx(0.02)
    assert any(note.startswith("dlc: calibrated on validation") for note in report.notes)


def test_a_report_imports_no_torch(results, tmp_path):
    """Issue 15.2: `report` must not import torch; what it needs to know about a method (a reference
    point? calibrated after training?) is stored in the run rows."""
    import subprocess
    import sys

    probe = ("import sys; from typer.testing import CliRunner; from mmbench.cli import app; "
             f"result = CliRunner().invoke(app, ['report', {str(results)!r}, '--format', 'md,tex', "
             f"'--out', {str(tmp_path / 'r')!r}]); assert result.exit_code == 0, result.output; "
             "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    assert read_runs_flags(results) == {False}


def read_runs_flags(folder) -> set:
    from mmbench.results import read_runs

    runs = read_runs(folder)
    return set(runs["method_reference"]) | set(runs["method_calibrates"])


def test_one_exploratory_run_does_not_rename_the_baseline_and_runs_can_be_filtered(results, tmp_path):
    """Issue 15.10: one joint run with --set lr=0.05 relabelled every joint run `joint[fusion=...,lr=...]`
    and the report had no baseline."""
    from mmbench.analysis.report import ReportError, filter_runs, variant_labels

    runs = fake_runs({("d1", "joint"): BASE + [0.5], ("d1", "a"): BASE})
    odd = runs.index[(runs["method"] == "joint") & (runs["seed"] == 5)][0]
    runs.at[odd, "config_json"] = json.dumps({**json.loads(runs.at[odd, "config_json"]), "lr": 0.05})
    labels = variant_labels(runs)
    assert labels[runs["method"] == "joint"].tolist() == ["joint"] * 5 + ["joint[lr=0.05]"]
    assert len(filter_runs(runs, {}, {"lr": "0.05"})) == len(runs) - 1
    assert set(filter_runs(runs, {"method": "a"}, {})["method"]) == {"a"}
    assert len(filter_runs(runs, {"seed": "2"}, {})) == 2
    with pytest.raises(ReportError, match="--where lrr=...: no run has a setting 'lrr'"):
        filter_runs(runs, {"lrr": "1"}, {})

    result = runner.invoke(app, ["report", str(results), "--exclude", "method=opm", "--where", "epochs=3",
                                 "--format", "md", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r" / "report.md").read_text()
    assert "ogm-ge" in text and "| opm" not in text
    none = runner.invoke(app, ["report", str(results), "--where", "epochs=99", "--out", str(tmp_path / "r2")])
    assert none.exit_code == 2 and "no runs left after --where/--exclude epochs=99" in none.output


def test_the_report_shows_every_seed_the_configuration_chance_and_provenance(results, tmp_path):
    """Issue 15.14: no configuration / provenance section, no chance level, no per-seed table."""
    from mmbench.analysis import render

    runs, epochs = load_results([results])
    tables = {t.title.split(":")[0]: t for t in render.tables(build_report(runs, epochs, ReportOptions()))}
    per_seed = tables["Per seed"]
    assert per_seed.headers == ["dataset", "method", "seed 0", "seed 1", "seed 2"]
    joint = next(row for row in per_seed.rows if row[1] == "joint")
    values = runs[runs["method"] == "joint"].sort_values("seed")["best_val_acc"]
    assert joint[2:] == [f"{100 * v:.2f}" for v in values]
    settings = {row[1]: row[2] for row in tables["Configuration and provenance"].rows}
    assert settings["epochs"] == "3" and settings["data.n_train"] == "240"
    assert settings["chance level (1 / classes)"] == "16.67 % (6 classes)"
    assert settings["torch_version"] and settings["git_sha"] and "hparams" not in settings
    result = runner.invoke(app, ["report", str(results), "--format", "md", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0 and "Configuration and provenance" in (tmp_path / "r" / "report.md").read_text()


def test_latex_tables_are_inputable_fragments_with_math_signs_and_type1_fonts(results, tmp_path):
    """Issue 15.15: only a whole document, text hyphens for minus signs, `d_z` in text mode, tables wider
    than the page, and Type 3 fonts that IEEE PDF eXpress rejects."""
    from mmbench.analysis.render import tex_escape

    assert tex_escape("+0.50 [-1.20, +2.30]") == "$+$0.50 [$-$1.20, $+$2.30]"
    assert tex_escape("d_z") == "$d_z$" and tex_escape("a-b x_y 95%") == r"a-b x\_y 95\%"
    out = tmp_path / "r"
    assert runner.invoke(app, ["report", str(results), "--format", "tex", "--out", str(out)]).exit_code == 0
    fragments = sorted((out / "tables").glob("*.tex"))
    assert fragments and fragments[0].name.startswith("01-synthetic-test-acc")
    first = fragments[0].read_text()
    assert r"\begin{table}" in first and r"\documentclass" not in first and "$d_z$" in first
    assert r"\resizebox{\ifdim\width>\linewidth" in first and "$+$" in first + fragments[1].read_text()
    assert r"\usepackage{lmodern}" in (out / "report.tex").read_text()
    if not (shutil.which("pdflatex") and shutil.which("pdffonts")):
        pytest.skip("pdflatex/pdffonts not installed (CI installs texlive-latex-recommended, lmodern, poppler-utils)")
    (out / "paper.tex").write_text("\\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage{lmodern}"
                                   "\\usepackage{booktabs,graphicx}\\begin{document}\\input{tables/"
                                   f"{fragments[0].name}}}\\end{{document}}\n")
    for document in ("report.tex", "paper.tex"):
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", document], cwd=out, capture_output=True)
        assert done.returncode == 0, done.stdout[-2000:]
        fonts = subprocess.run(["pdffonts", document.replace(".tex", ".pdf")], cwd=out, capture_output=True,
                               text=True, check=True).stdout
        assert "Type 3" not in fonts and "Type 1" in fonts, fonts


def test_figures_in_pdf_and_svg_with_captions_and_percent_axes(results, tmp_path):
    """Issue 15.13: PNG at 150 dpi only, no captions in the HTML, accuracy axes labelled [pp] for %."""
    out = tmp_path / "r"
    result = runner.invoke(app, ["report", str(results), "--format", "md,html", "--figure-formats", "png,pdf,svg",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    for suffix in ("png", "pdf", "svg"):
        assert (out / "figures" / f"synthetic-seeds.{suffix}").stat().st_size > 0
    assert (out / "figures" / "synthetic-seeds.pdf").read_bytes().startswith(b"%PDF")
    page = (out / "report.html").read_text()
    assert page.count("<figcaption>") >= 4 and "Every seed as a dot" in page
    assert "*synthetic: seeds.* Every seed as a dot" in (out / "report.md").read_text()
    bad = runner.invoke(app, ["report", str(results), "--figure-formats", "gif", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--figure-formats gif: choose from png, pdf, svg" in bad.output


def test_accuracy_axes_say_percent_and_differences_say_pp(results, tmp_path, monkeypatch):
    """Issue 15.13: accuracy axes were labelled [pp]; pp is for differences of percentages."""
    import matplotlib.axes

    labels: list[str] = []
    for setter in ("set_ylabel", "set_xlabel"):
        original = getattr(matplotlib.axes.Axes, setter)

        def record(self, text, *args, _original=original, **kwargs):
            labels.append(str(text))
            return _original(self, text, *args, **kwargs)

        monkeypatch.setattr(matplotlib.axes.Axes, setter, record)
    result = runner.invoke(app, ["report", str(results), "--format", "md", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    accuracy = [label for label in labels if "accuracy" in label or label.startswith("acc")]
    assert accuracy and all("[%]" in label for label in accuracy), accuracy
    assert any("Δ" in label and "[pp]" in label for label in labels), labels
