"""The table `mmbench run` ends with: each method's test accuracy over the seeds just run, mean ± sd."""

from __future__ import annotations

import pandas as pd
from rich.table import Table

NOTE = ("audio/visual: each modality's own logits (concat: its half of the fusion layer). *max over epochs = the "
        "papers' test-set selection, optimistic; not for comparisons.")


def mean_sd(values: pd.Series) -> str:
    values = values.dropna().astype(float) * 100
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def seed_summary(rows: pd.DataFrame, dataset: str) -> Table:
    """One line per method of `rows` (run rows): seeds, accuracy at the best-val and final epoch, per modality."""
    table = Table(title=f"{dataset}: test accuracy (%) over seeds, mean ± sd", title_justify="left")
    for column in ("method", "seeds", "acc (best val)", "audio", "visual", "acc (final)", "max over epochs*"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, group in rows.groupby("method", sort=False):
        table.add_row(method, str(len(group)), mean_sd(group["best_val_acc"]), mean_sd(group["best_val_acc_head_a"]),
                      mean_sd(group["best_val_acc_head_v"]), mean_sd(group["final_acc"]),
                      mean_sd(group["paper_max_acc"]))
    return table
