"""Figures render headless, are readable images, and are byte-identical when drawn twice."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mmbench.analysis import plots
from mmbench.results import read_epochs, read_runs

from .conftest import TINY

METHODS = ("joint", "ogm-ge", "aug")
SEEDS = (0, 1, 2)
EPOCHS = 4


def fake_results(diag: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """3 methods x 3 seeds x 4 epochs on one dataset; diag_k_a only for ogm-ge."""
    rng = np.random.default_rng(7)
    runs, epochs = [], []
    for m, method in enumerate(METHODS):
        for seed in SEEDS:
            run_id = f"{method}-{seed}"
            acc = 0.70 + 0.02 * m + 0.01 * seed + rng.normal(0, 0.005)
            runs.append({"run_id": run_id, "dataset": "synthetic", "method": method, "seed": seed, "pair_key": seed,
                         "crn": True, "best_val_acc": acc, "final_acc": acc - 0.01,
                         "best_val_acc_head_a": 0.65 + 0.01 * seed, "best_val_acc_head_v": 0.40 + 0.03 * m,
                         "best_val_rho": 1.5 - 0.1 * m, "best_val_d4_audio_decides": 0.7 - 0.1 * m + 0.01 * seed,
                         "paper_max_acc": acc + 0.02})
            for epoch in range(EPOCHS):
                row = {"run_id": run_id, "epoch": epoch, "test_acc": acc - 0.05 * (EPOCHS - 1 - epoch),
                       "test_acc_head_a": 0.5 + 0.04 * epoch, "test_acc_head_v": 0.3 + 0.02 * epoch + 0.01 * m,
                       "val_acc": acc, "train_loss": 2.0 / (epoch + 1), "train_rho": 1.0 + 0.2 * epoch / (m + 1),
                       "test_rho": 1.0 + 0.1 * epoch / (m + 1)}
                if diag and method == "ogm-ge":
                    row["diag_k_a"] = 0.9 - 0.02 * epoch + 0.001 * seed
                epochs.append(row)
    epochs_frame = pd.DataFrame(epochs)
    if diag:
        # A diagnostic logged by a method of another dataset only: all NaN here, so no panel.
        epochs_frame["diag_unused"] = np.nan
    return pd.DataFrame(runs), epochs_frame


def fake_deltas() -> pd.DataFrame:
    return pd.DataFrame({"label": ["ogm-ge · synthetic", "aug · synthetic", "aggregate"],
                         "delta_pp": [2.0, -0.5, 0.8], "ci_low_pp": [0.5, -3.0, -0.4],
                         "ci_high_pp": [3.5, 2.0, 2.0], "significant": [True, False, False],
                         "p_better": [0.93, 0.2, math.nan]})


RANKS = pd.Series({"joint": 3.6, "ogm-ge": 2.2, "aug": 1.4, "opm": 2.8, "arm": 5.0})


def _draw(kind: str, path: Path | str) -> Path | None:
    runs, epochs = fake_results()
    if kind == "strip":
        return plots.strip_plot(runs, "synthetic", "best_val_acc", "joint", path=path)
    if kind == "forest":
        return plots.forest_plot(fake_deltas(), path, rope_pp=1.0)
    if kind == "curves":
        return plots.curves_plot(runs, epochs, "synthetic", path)
    if kind == "diagnostics":
        return plots.diagnostics_plot(runs, epochs, "synthetic", path)
    if kind == "imbalance":
        return plots.imbalance_plot(runs, "synthetic", path)
    if kind == "cd":
        return plots.cd_diagram(RANKS, 2.73, 6, path)
    raise AssertionError(kind)


KINDS = ("strip", "forest", "curves", "diagnostics", "imbalance", "cd")


def assert_image(path: Path) -> np.ndarray:
    """Exists, decodes to an RGB(A) array of a plausible size, and is not one flat colour."""
    assert path.is_file() and path.stat().st_size > 0
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    height, width = image.shape[:2]
    assert 150 <= height <= 4000 and 300 <= width <= 4000, image.shape
    assert float(image[..., :3].var()) > 0
    return image


@pytest.mark.parametrize("kind", KINDS)
def test_every_figure_is_a_readable_png_and_byte_identical_when_drawn_twice(kind, tmp_path):
    first = _draw(kind, tmp_path / "a" / f"{kind}.png")  # parent folder does not exist yet
    second = _draw(kind, str(tmp_path / "b" / f"{kind}.png"))  # str paths too
    assert first == tmp_path / "a" / f"{kind}.png" and isinstance(second, Path)
    assert_image(first)
    assert first.read_bytes() == second.read_bytes()
    assert plt.get_fignums() == []  # every figure closed


def test_svg_and_pdf_carry_no_dates_and_are_byte_stable(tmp_path):
    svg = [_draw("strip", tmp_path / f"s{i}.svg") for i in range(2)]
    text = svg[0].read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "<dc:date>" not in text and "Date" not in text
    assert svg[0].read_bytes() == svg[1].read_bytes()
    pdf = [_draw("forest", tmp_path / f"f{i}.pdf") for i in range(2)]
    data = pdf[0].read_bytes()
    assert data.startswith(b"%PDF") and b"CreationDate" not in data and b"Producer" not in data
    assert data == pdf[1].read_bytes()


def test_unknown_file_type_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        _draw("strip", tmp_path / "x.jpg")


def test_missing_dataset_or_metric_is_one_line_value_error(tmp_path):
    runs, epochs = fake_results()
    calls: list[Callable[[], object]] = [
        lambda: plots.strip_plot(runs, "cremad", path=tmp_path / "s.png"),
        lambda: plots.strip_plot(runs, "synthetic", "best_val_macro_f1", path=tmp_path / "s.png"),
        lambda: plots.curves_plot(runs, epochs, "cremad", tmp_path / "c.png"),
        lambda: plots.diagnostics_plot(runs, epochs, "cremad", tmp_path / "d.png"),
        lambda: plots.imbalance_plot(runs, "cremad", tmp_path / "i.png"),
        lambda: plots.imbalance_plot(runs, "synthetic", tmp_path / "i.png", selection="final"),
        lambda: plots.curves_plot(runs, epochs[["run_id", "epoch"]], "synthetic", tmp_path / "c.png"),
        lambda: plots.forest_plot(fake_deltas().drop(columns="p_better"), tmp_path / "f.png"),
        lambda: plots.cd_diagram(RANKS.iloc[:1], 2.0, 6, tmp_path / "cd.png"),
    ]
    for call in calls:
        with pytest.raises(ValueError) as error:
            call()
        assert "\n" not in str(error.value)
    assert not list(tmp_path.iterdir())
    assert plt.get_fignums() == []


def test_diagnostics_without_diag_data_writes_nothing(tmp_path):
    runs, epochs = fake_results(diag=False)
    assert plots.diagnostics_plot(runs, epochs, "synthetic", tmp_path / "d.png") is None
    runs, epochs = fake_results()
    only_joint = runs[runs["method"] == "joint"]  # diag_k_a belongs to ogm-ge only
    assert plots.diagnostics_plot(only_joint, epochs, "synthetic", tmp_path / "d.png") is None
    assert not (tmp_path / "d.png").exists()


def test_imbalance_with_shapley_columns_and_one_seed_methods(tmp_path):
    runs, _ = fake_results()
    runs = runs.assign(best_val_shapley_a=0.25, best_val_shapley_v=0.05)
    runs = pd.concat([runs, runs.iloc[[0]].assign(run_id="solo", method="opm")], ignore_index=True)
    assert_image(plots.imbalance_plot(runs, "synthetic", tmp_path / "shapley.png"))
    assert_image(plots.strip_plot(runs, "synthetic", "final_acc", None, path=tmp_path / "strip.png"))


def test_method_colours_follow_sorted_names_not_row_order():
    runs, _ = fake_results()
    colours = plots.method_colours(runs)
    assert colours == plots.method_colours(runs.iloc[::-1])
    assert list(colours) == sorted(METHODS) and len(set(colours.values())) == len(METHODS)


def test_t_interval_matches_scipy():
    values = np.array([71.0, 73.5, 70.0, np.nan])
    mean, low, high = plots.t_interval(values)
    interval = sps.t.interval(0.95, 2, loc=np.mean(values[:3]), scale=sps.sem(values[:3]))
    assert mean == pytest.approx(np.mean(values[:3])) and (low, high) == pytest.approx(interval)
    assert plots.t_interval(np.array([5.0])) == (5.0, 5.0, 5.0)


def test_cd_groups_are_maximal_runs_below_the_critical_difference():
    ranks = np.array([1.0, 1.5, 2.9, 3.2, 4.5])
    assert plots._cliques(ranks, 2.0) == [(0, 2), (1, 3), (2, 4)]
    assert plots._cliques(ranks, 1.0) == [(0, 1), (2, 3)]
    assert plots._cliques(ranks, 10.0) == [(0, 4)]
    assert plots._cliques(ranks, 0.1) == []


@pytest.mark.slow
def test_smoke_real_results_folder(tmp_path):
    from mmbench.config import resolve
    from mmbench.train import engine

    out = tmp_path / "results"
    for method in ("joint", "ogm-ge"):  # in this process: `mmbench run` would start one per run
        for seed in (0, 1):
            engine.run(resolve(method, "synthetic", seed, overrides={**TINY, "epochs": 2}), out)
    runs, epochs = read_runs(out), read_epochs(out)
    figures = tmp_path / "figures"
    assert_image(plots.strip_plot(runs, "synthetic", path=figures / "seeds.png"))
    assert_image(plots.curves_plot(runs, epochs, "synthetic", figures / "curves.png"))
    assert_image(plots.diagnostics_plot(runs, epochs, "synthetic", figures / "diagnostics.png"))
    assert_image(plots.imbalance_plot(runs, "synthetic", figures / "imbalance.png", selection="final"))


def test_strip_plot_pairs_each_method_with_the_baseline_not_in_a_chain():
    rows = pd.DataFrame({"method": ["joint", "a", "b"] * 2, "_key": [0, 0, 0, 1, 1, 1],
                         "_x": [0.0, 1.0, 2.0, 0.1, 1.1, 2.1], "_y": [70.0, 72.0, 74.0, 71.0, 73.0, 75.0]})
    segments = plots.pair_segments(rows, "joint")
    assert sorted(segments) == sorted([((0.0, 70.0), (1.0, 72.0)), ((0.0, 70.0), (2.0, 74.0)),
                                       ((0.1, 71.0), (1.1, 73.0)), ((0.1, 71.0), (2.1, 75.0))])


def test_forest_rows_say_which_comparisons_were_unpaired():
    deltas = pd.DataFrame({"label": ["a · d1", "b · d1"], "significant": [True, False], "test": ["paired-t", "welch"]})
    assert plots.forest_labels(deltas) == ["a · d1 †", "b · d1 (unpaired)"]


def test_negative_shapley_contributions_are_not_hidden_by_the_stack():
    """Issue 15.13: a negative contribution was drawn from 0 under (and hidden by) the other bar."""
    assert plots.stacked_bars([0.25, 0.05]) == [(0.0, 0.25), (0.25, 0.05)]
    assert plots.stacked_bars([-0.05, -0.10]) == [(0.0, -0.05), (-0.05, -0.10)]  # both visible, stacked down
    assert plots.stacked_bars([0.20, -0.10]) == [(0.0, 0.20), (0.0, -0.10)]
