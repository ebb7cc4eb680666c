"""Render a `Report` as terminal tables (rich), Markdown, LaTeX (booktabs) and one self-contained
HTML file. Every format is drawn from the same `TextTable`s, so they always show the same numbers.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mmbench.analysis.report import Report, protocol_settings

FORMATS = ("terminal", "md", "tex", "html")


@dataclass
class TextTable:
    title: str
    headers: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    caption: str = ""
    appendix: bool = False  # shown after the figures (per-seed values, configuration)


def pp(value: float, digits: int = 2, sign: bool = False) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{100 * value:+.{digits}f}" if sign else f"{100 * value:.{digits}f}"


def num(value: float, digits: int = 3) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def pvalue(value: float) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def tables(report: Report) -> list[TextTable]:
    o = report.options
    out = []
    for dataset, group in report.main.groupby("dataset", sort=True):
        rows, bold = [], set()
        best = _best_mean(group)
        resampled = "delta_low_rt" in group
        bca = "bootstrap_low" in group and group["bootstrap_low"].notna().any()
        # the cost column where some method's training cost differs from the baseline's by 5 % or more
        costly = "cost_x" in group and bool((group["cost_x"].sub(1).abs() >= 0.05).any())
        for i, r in enumerate(group.to_dict("records")):
            rows.append([r["method"], str(r["n"]), _text(r.get("n_used")), f"{pp(r['mean'])} ± {pp(r['sd'])}",
                         f"[{pp(r['ci_low'])}, {pp(r['ci_high'])}]",
                         _delta(r), *([_interval(r, "bootstrap_low", "bootstrap_high")] if bca else []),
                         *([_interval(r, "delta_low_rt", "delta_high_rt")] if resampled else []),
                         pvalue(r.get("p")), pvalue(r.get("p_holm")), num(r.get("d_z"), 2),
                         num(r.get("p_better"), 2), pp(r.get("mde")) if not r.get("significant") else "",
                         _text(r.get("test")), *([_cost(r.get("cost_x"))] if costly else []), r.get("mark") or ""])
            if _finite(best) and r["mean"] == best and r["n"] >= 2 and not r.get("reference"):
                bold.add((i, 3))
        dropped = [f"{r['method']}: {r['dropped']}" for r in group.to_dict("records") if _text(r.get("dropped"))]
        status = ("" if o.tested and not o.exploratory else
                  " (exploratory)" if o.tested else " (test-selected: shown, not tested)")
        out.append(TextTable(
            f"{dataset}: test {o.metric} (%), {o.selection} selection{status}",
            ["method", "n", "n used", "mean ± SD", "95% CI", f"Δ vs {o.baseline} [95% CI]",
             *(["Δ BCa 95% (n ≥ 10)"] if bca else []), *(["Δ [95%, test resampled]"] if resampled else []),
             "p", "p Holm", "d_z",
             f"P(Δ>{pp(o.rope, 0)}pp)", "MDE", "test", *(["cost"] if costly else []), ""], rows, bold,
            "± = one SD over seeds (in every table of this report; intervals are in brackets), bold = the "
            "single best mean among non-reference methods with 2 or more seeds. "
            "Δ in pp; paired t over seeds sharing init and data order (Welch where seeds are not paired); "
            "* p<0.05, † Holm-significant, ≈ equivalent within the ROPE (TOST), ? low power; "
            "MDE = smallest Δ detectable with 80 % power, shown for non-significant rows; n used = seeds in "
            "the comparison (method/baseline). "
            + (f"Cost = training FLOPs per sample (encoder passes counted in training, docs/methods.md) as a "
               f"multiple of {o.baseline}'s. " if costly else "")
            + "Intervals are over seeds: the test set and the train/validation split are held fixed (see "
            "docs/statistics.md)."
            + ("" if not dropped else " Left out: " + " | ".join(dropped))))
    out.append(_imbalance(report))
    out.append(_protocol(report))
    if report.across is not None:
        out.append(_across(report))
    out.append(_per_seed(report))
    out.append(_configuration(report))
    return out


def _per_seed(report: Report) -> TextTable:
    """Every run's value of the reported metric: with 3-10 seeds, the values are the evidence."""
    o = report.options
    column = o.column
    runs = report.runs
    seeds = sorted(runs["seed"].unique().tolist())
    rows = []
    for (dataset, method), cell in runs.groupby(["dataset", "variant"], sort=False):
        by_seed = dict(zip(cell["seed"], cell[column], strict=True)) if column in cell else {}
        rows.append([dataset, method, *(pp(by_seed.get(seed)) for seed in seeds)])
    return TextTable(f"Per seed: test {o.metric} (%), {o.selection} selection", ["dataset", "method",
                     *(f"seed {s}" for s in seeds)], rows, set(),
                     "One run per cell; runs of the same seed share initialisation and data order where the "
                     "results say so (pairing).", appendix=True)


# Provenance columns: what a reader needs to know to rerun the table.
_PROVENANCE = ("mmbench_version", "git_sha", "torch_version", "device_name", "code_version")


def _configuration(report: Report) -> TextTable:
    """The protocol every compared run shares (one value) or not (values by method), the chance level,
    and the provenance of the runs."""
    rows = []
    for dataset, group in report.runs.groupby("dataset", sort=True):
        settings: dict[str, dict[str, set[str]]] = {}
        for method, text in zip(group["variant"], group["config_json"], strict=True):
            for key, value in protocol_settings(text, data_prefix="data.").items():
                settings.setdefault(key, {}).setdefault(method, set()).add(str(value))
        for key, by_method in sorted(settings.items()):
            values = set().union(*by_method.values())
            shown = next(iter(values)) if len(values) == 1 else "; ".join(
                f"{m}: {'/'.join(sorted(v))}" for m, v in by_method.items())
            rows.append([dataset, key, shown])
        known = group["classes"].dropna() if "classes" in group else []
        classes = known.iloc[0].split(",") if len(known) else []
        if classes:
            rows.append([dataset, "chance level (1 / classes)", f"{100 / len(classes):.2f} % ({len(classes)} classes)"])
        for column in _PROVENANCE:
            if column in group:
                rows.append([dataset, column, ", ".join(sorted({str(v) for v in group[column].dropna()})) or "–"])
    return TextTable("Configuration and provenance", ["dataset", "setting", "value"], rows, set(),
                     "Settings of the runs in this report (a setting with several values lists them by method), "
                     "the chance level, and the code and machines that produced them.", appendix=True)


def _delta(r: dict) -> str:
    if not _finite(r.get("delta")):
        return "–"
    return f"{pp(r['delta'], sign=True)} [{pp(r['delta_low'], sign=True)}, {pp(r['delta_high'], sign=True)}]"


def _cost(ratio: object) -> str:
    return f"{ratio:.2f}×" if _finite(ratio) else "–"


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _interval(r: dict, low: str, high: str) -> str:
    return f"[{pp(r.get(low), sign=True)}, {pp(r.get(high), sign=True)}]" if _finite(r.get(low)) else "–"


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _imbalance(report: Report) -> TextTable:
    frame = report.imbalance
    has_shapley = "shapley_a" in frame
    has_gap = "d5_gap_a" in frame
    has_kind = "logits" in frame
    headers = ["dataset", "method", "n", *(["per-modality logits"] if has_kind else []), "audio head", "visual head",
               "rho", "D3 audio logit share", "D4 audio decides", "D4 excess audio"] \
        + (["φ audio", "φ visual", "I (mean of runs)", "dominant"] if has_shapley else []) \
        + (["D5 audio gap (worst class)", "D5 visual gap (worst class)"] if has_gap else [])
    rows = []
    for r in frame.to_dict("records"):
        row = [r["dataset"], r["method"], str(r["n"]), *([_text(r.get("logits")) or "–"] if has_kind else []),
               _pm(r, "audio"), _pm(r, "visual"), num(r.get("rho"), 2),
               pp(r.get("d3_audio_logit"), 1), pp(r.get("d4_audio_decides"), 1), pp(r.get("d4_excess_audio"), 1)]
        if has_shapley:
            row += [pp(r.get("shapley_a")), pp(r.get("shapley_v")), num(r.get("imbalance_degree"), 2), _dominant(r)]
        if has_gap:
            row += [_gap(r, "a"), _gap(r, "v")]
        rows.append(row)
    caption = ("Per-modality accuracy (%) of each modality's own logits in the fused model (mean [95 % "
               "t-interval]); rho = audio/visual true-class score ratio (1 = balanced), geometric mean over runs; "
               "D3/D4 = decision-layer diagnostics: audio's share of the logit mass and of the audio-visual "
               "disagreements it decides.")
    if has_kind:
        caption += (" Per-modality logits: what each method's per-modality logits are (fusion-slice = its terms "
                    "of the fused head; late-fusion = heads whose weighted sum is the prediction; auxiliary-head = "
                    "heads the prediction does not use; docs/methods.md).")
    if has_shapley:
        caption += (" φ = Shapley contributions (pp, mean over runs); I = imbalance degree |φa−φv|/(|φa|+|φv|) of each "
                    "run, averaged; dominant = share of runs where audio (a) or visual (v) contributes more.")
    if has_gap:
        caption += (" D5 = class-averaged accuracy of the modality's logits in the fused model minus that of a "
                    "unimodal run of the same seed (pp; worst class in brackets).")
    if not has_shapley:
        caption += (" Shapley contributions need masked-modality evaluations, which these results do not store; "
                    "omitted.")
    return TextTable("Imbalance", headers, rows, set(), caption)


def _dominant(row: dict) -> str:
    if not _finite(row.get("audio_dominates")):
        return "–"
    return f"a {row['audio_dominates'] * 100:.0f} % / v {row['visual_dominates'] * 100:.0f} %"


def _gap(row: dict, m: str) -> str:
    value = row.get(f"d5_gap_{m}")
    return f"{pp(value, 1, sign=True)} ({pp(row.get(f'd5_worst_{m}'), 1, sign=True)})" if _finite(value) else "–"


def _pm(row: dict, key: str) -> str:
    """Mean [95 % interval]: in every table '±' is one SD over seeds, never an interval."""
    if not _finite(row.get(key)):
        return "–"
    return f"{pp(row.get(key))} [{pp(row.get(f'{key}_low'))}, {pp(row.get(f'{key}_high'))}]"


def _best_mean(group) -> float:
    """The highest mean among methods with at least 2 seeds that are not a reference point (e.g.
    `unimodal`, one modality alone); NaN on a tie (two methods at 73.33 ± 0.00 are not one best)."""
    candidates = group[(group["n"] >= 2) & ~group["reference"].fillna(False).astype(bool)]["mean"].dropna()
    if candidates.empty or (candidates == candidates.max()).sum() > 1:
        return math.nan
    return float(candidates.max())


def _protocol(report: Report) -> TextTable:
    rows = [[r["dataset"], r["method"], str(r["n"]), pp(r["best_val"]), pp(r["final"]), pp(r["max_over_epochs"]),
             pp(r["optimism"], sign=True)] for r in report.protocol.to_dict("records")]
    return TextTable("Protocol gap: which checkpoint is reported", ["dataset", "method", "n", "best on validation",
                     "final epoch", "max over epochs (test-selected)", "optimism"], rows, set(),
                     "Test accuracy (%) under three checkpoint rules; the papers' max over epochs selects on the "
                     "test set, and its optimism over the validation-selected checkpoint is the last column.")


def _across(report: Report) -> TextTable:
    o = report.options
    rows = []
    for r in report.across.to_dict("records"):
        delta = _delta(r)
        wtl = "–" if not _finite(r.get("wins")) else f"{int(r['wins'])}/{int(r['ties'])}/{int(r['losses'])}"
        rows.append([r["method"], str(r["n_datasets"]), f"{num(r['mean_rank'], 2)} ({r.get('n_ranked', 0)})",
                     f"{delta} ({r.get('n_delta', 0)})" if delta != "–" else delta, wtl])
    return TextTable("Across datasets", ["method", "datasets", "mean rank (datasets)",
                     f"Δ̄ vs {o.baseline} [95% CI] (datasets)", "W/T/L"], rows, set(),
                     "Mean rank (1 = best) over the datasets where every method ran (their count in brackets); "
                     "Δ̄ = fixed-datasets mean of the per-dataset paired differences with a Welch–Satterthwaite "
                     "interval, over the datasets with seed-paired baseline runs (count in brackets); W/T/L vs the "
                     f"baseline with ties inside ±{pp(o.rope, 0)} pp.")


# --- formats -------------------------------------------------------------------------------------

def markdown(report: Report) -> str:
    parts = [f"# mmbench report\n\n{_header(report)}\n"]
    every = tables(report)
    for table in [t for t in every if not t.appendix]:
        parts += _markdown_table(table)
    parts += [f"- {note}" for note in report.notes]
    for name, path in report.figures.items():
        parts.append(f"\n![{name}]({path.name if path.parent.name != 'figures' else 'figures/' + path.name})")
        parts.append(f"\n*{name}.* {figure_caption(name)}")
    for table in [t for t in every if t.appendix]:
        parts += ["", *_markdown_table(table)]
    return "\n".join(parts) + "\n"


def _markdown_table(table: TextTable) -> list[str]:
    parts = [f"## {table.title}\n", "| " + " | ".join(table.headers) + " |",
             "|" + "|".join("---" for _ in table.headers) + "|"]
    for i, row in enumerate(table.rows):
        cells = [f"**{c}**" if (i, j) in table.bold else c for j, c in enumerate(row)]
        parts.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    parts.append(f"\n{table.caption}\n")
    return parts


def _header(report: Report) -> str:
    o = report.options
    runs = report.runs
    return (f"{len(runs)} runs, {runs['dataset'].nunique()} dataset(s), {runs['variant'].nunique()} method(s); "
            f"metric {o.metric}, selection {o.selection}, baseline {o.baseline}, ROPE ±{pp(o.rope, 0)} pp, "
            f"alpha {o.alpha}.")


_TEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}
_TEX_SYMBOLS = {"±": r"$\pm$", "Δ": r"$\Delta$", "†": r"$^\dagger$", "≈": r"$\approx$", "–": "--", "φ": r"$\phi$",
                "Δ̄": r"$\bar\Delta$", "<": r"$<$", ">": r"$>$", "·": r"$\cdot$", "−": r"$-$", "≥": r"$\geq$",
                "≤": r"$\leq$", "×": r"$\times$", "§": r"\S{}", "š": r"\v{s}"}


# Written in math mode: d_z, and a sign in front of a number (a text hyphen is not a minus).
_TEX_MATH = [(re.compile(r"\bd_z\b"), "\x00d_z\x00"), (re.compile(r"(?<![\w.])([+-])(?=\d)"), "\x00\\1\x00")]


def tex_escape(text: str) -> str:
    for pattern, marked in _TEX_MATH:
        text = pattern.sub(marked, text)
    out = "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)
    for symbol, command in sorted(_TEX_SYMBOLS.items(), key=lambda kv: -len(kv[0])):
        out = out.replace(symbol, command)
    return re.sub("\x00(.*?)\x00", lambda m: "$" + m.group(1).replace("\\_", "_") + "$", out)


def latex_table(table: TextTable) -> str:
    """One table as a fragment a paper can `\\input` (needs booktabs and graphicx); shrunk to the line
    width where it is wider."""
    parts = [r"\begin{table}[htbp]", r"\centering", rf"\caption{{{tex_escape(table.title)}}}",
             r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
             r"\begin{tabular}{" + "l" + "r" * (len(table.headers) - 1) + "}", r"\toprule",
             " & ".join(tex_escape(h) for h in table.headers) + r" \\", r"\midrule"]
    for i, row in enumerate(table.rows):
        cells = [rf"\textbf{{{tex_escape(c)}}}" if (i, j) in table.bold else tex_escape(c)
                 for j, c in enumerate(row)]
        parts.append(" & ".join(cells) + r" \\")
    parts += [r"\bottomrule", r"\end{tabular}}", "", r"\smallskip",
              r"{\footnotesize " + tex_escape(table.caption) + "}", r"\end{table}"]
    return "\n".join(parts) + "\n"


def latex(report: Report) -> str:
    """A whole document (Latin Modern: Type 1 fonts, which PDF checkers such as IEEE PDF eXpress accept)."""
    parts = [r"\documentclass{article}", r"\usepackage[T1]{fontenc}", r"\usepackage{lmodern}",
             r"\usepackage{booktabs}", r"\usepackage{graphicx}", r"\usepackage[margin=1.5cm,landscape]{geometry}",
             r"\begin{document}", r"\small", tex_escape(_header(report)), ""]
    parts += [latex_table(table) for table in tables(report)]
    parts += [r"\begin{itemize}"] + [rf"\item {tex_escape(n)}" for n in report.notes] + [r"\end{itemize}"]
    parts.append(r"\end{document}")
    return "\n".join(parts) + "\n"


def latex_fragments(report: Report) -> dict[str, str]:
    """`tables/<n>-<title>.tex`: each table alone, to `\\input` into a paper."""
    fragments = {}
    for n, table in enumerate(tables(report), start=1):
        slug = re.sub(r"[^a-z0-9]+", "-", table.title.lower()).strip("-")[:40]
        fragments[f"{n:02d}-{slug}.tex"] = latex_table(table)
    return fragments


_CSS = """body{font-family:-apple-system,'DejaVu Sans',Arial,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 0.3em;font-size:13px}
th,td{padding:3px 8px;text-align:right;border-bottom:1px solid #ddd}th{border-bottom:2px solid #444}
td:first-child,th:first-child{text-align:left}.caption{color:#555;font-size:12px;max-width:70em}
figure{display:inline-block;max-width:48%;margin:0.5em;vertical-align:top}figure img{max-width:100%;
border:1px solid #eee}figcaption{color:#555;font-size:12px}h2{margin-top:1.5em}"""


def html_page(report: Report) -> str:
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>mmbench report</title>",
             f"<style>{_CSS}</style></head><body>", "<h1>mmbench report</h1>", f"<p>{html.escape(_header(report))}</p>"]
    every = tables(report)
    parts += [_html_table(table) for table in every if not table.appendix]
    parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    if report.figures:
        parts.append("<h2>Figures</h2>")
        for name, path in report.figures.items():
            data = base64.b64encode(Path(path).read_bytes()).decode()
            label = html.escape(name)
            parts.append(f"<figure><img alt='{label}' title='{label}' src='data:image/png;base64,{data}'>"
                         f"<figcaption><b>{label}.</b> {html.escape(figure_caption(name))}</figcaption></figure>")
    parts += [_html_table(table) for table in every if table.appendix]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_table(table: TextTable) -> str:
    parts = [f"<h2>{html.escape(table.title)}</h2><table><tr>"
             + "".join(f"<th>{html.escape(h)}</th>" for h in table.headers) + "</tr>"]
    for i, row in enumerate(table.rows):
        cells = [f"<b>{html.escape(c)}</b>" if (i, j) in table.bold else html.escape(c) for j, c in enumerate(row)]
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append(f"</table><p class='caption'>{html.escape(table.caption)}</p>")
    return "\n".join(parts)


def rich_tables(report: Report) -> list:
    from rich.markup import escape
    from rich.table import Table

    out = []
    for table in tables(report):
        if table.appendix:  # long; in the files (md, html, tex), not on the terminal
            continue
        rich_table = Table(title=table.title, title_justify="left", caption=table.caption, caption_justify="left")
        for j, header in enumerate(table.headers):
            rich_table.add_column(header, justify="left" if j == 0 else "right", overflow="fold")
        for i, row in enumerate(table.rows):
            rich_table.add_row(*[f"[bold]{escape(c)}[/bold]" if (i, j) in table.bold else escape(c)
                                 for j, c in enumerate(row)])
        out.append(rich_table)
    return out


# --- writing -------------------------------------------------------------------------------------

FIGURE_CAPTIONS = {
    "seeds": "Every seed as a dot; mean with its 95 % t-interval (cut to 0-100 %); grey lines join runs of the "
             "same seed; dashed: the baseline's mean.",
    "training curves": "Test accuracy of the fused model and of each modality's head per epoch (mean over seeds, "
                       "band = min to max), and the imbalance ratio rho.",
    "method diagnostics": "What each method logs per epoch (its own modulation coefficients, weights or "
                          "probabilities), mean over seeds.",
    "imbalance": "Per-modality head accuracy and Shapley contributions (positive stacked up, negative down), with "
                 "the imbalance degree I of each method.",
    "Δ vs baseline": "Δ vs the baseline with its 95 % interval per method and dataset; grey band = ROPE; "
                     "(unpaired) marks Welch comparisons.",
    "critical difference": "Mean ranks over datasets; methods joined by a bar are not told apart (Nemenyi).",
}


def draw_figures(report: Report, folder: Path, formats: tuple[str, ...] = ("png",)) -> dict[str, Path]:
    """The report's figures (docs/statistics.md) into `folder`, once per format (png, pdf, svg); the
    returned paths are the first format's. The CD diagram only with >= 5 datasets."""
    from mmbench.analysis import plots

    folder.mkdir(parents=True, exist_ok=True)
    o, figures = report.options, {}

    def draw(name: str, stem: str, plot: Any, *args: Any, **kwargs: Any) -> None:
        paths = [plot(*args, **kwargs, path=folder / f"{stem}.{fmt}") for fmt in formats]
        if paths[0] is not None:
            figures[name] = paths[0]

    for dataset in sorted(report.runs["dataset"].unique()):
        runs = report.runs.assign(method=report.runs["variant"])
        safe = dataset.replace("/", "_")
        draw(f"{dataset}: seeds", f"{safe}-seeds", plots.strip_plot, runs, dataset, o.column, o.baseline)
        if not report.epochs.empty:
            draw(f"{dataset}: training curves", f"{safe}-curves", plots.curves_plot, runs, report.epochs, dataset)
            draw(f"{dataset}: method diagnostics", f"{safe}-diagnostics", plots.diagnostics_plot, runs,
                 report.epochs, dataset)
        selection = "final" if o.selection == "final" else "best_val"
        draw(f"{dataset}: imbalance", f"{safe}-imbalance", plots.imbalance_plot, runs, dataset, selection=selection)
    deltas = forest_rows(report)
    if not deltas.empty:
        draw("Δ vs baseline", "forest", plots.forest_plot, deltas, rope_pp=100 * o.rope)
    if report.friedman is not None and report.across is not None:
        ranks = report.across.set_index("method")["mean_rank"].dropna()
        draw("critical difference", "cd", plots.cd_diagram, ranks, report.friedman["cd"],
             report.friedman["n_datasets"])
    report.figures = figures
    return figures


def figure_caption(name: str) -> str:
    return FIGURE_CAPTIONS.get(name.split(": ")[-1], "")


def forest_rows(report: Report) -> pd.DataFrame:
    main = report.main.dropna(subset=["delta"])
    rows = [{"label": f"{r['method']} · {r['dataset']}", "delta_pp": 100 * r["delta"],
             "ci_low_pp": 100 * r["delta_low"], "ci_high_pp": 100 * r["delta_high"],
             "significant": bool(r["significant"]), "p_better": r.get("p_better", math.nan),
             "test": r.get("test", "")}
            for r in main.to_dict("records")]
    if report.across is not None and "delta" in report.across:
        for r in report.across.dropna(subset=["delta"]).to_dict("records"):
            rows.append({"label": f"{r['method']} · all datasets", "delta_pp": 100 * r["delta"],
                         "ci_low_pp": 100 * r["delta_low"], "ci_high_pp": 100 * r["delta_high"],
                         "significant": False, "p_better": math.nan})
    return pd.DataFrame(rows)


def write_report(report: Report, out: Path, formats: tuple[str, ...], figures: bool = True,
                 figure_formats: tuple[str, ...] = ("png",)) -> dict[str, Path]:
    """report.json always; report.md / .tex / .html as asked; figures under out/figures (png first: the
    HTML embeds it; pdf and svg for papers)."""
    out.mkdir(parents=True, exist_ok=True)
    if figures:
        draw_figures(report, out / "figures", ("png", *[f for f in figure_formats if f != "png"]))
    written = {"json": out / "report.json"}
    _write(written["json"], json.dumps(report.to_json(), indent=2, default=str))
    writers = {"md": ("report.md", markdown), "tex": ("report.tex", latex),
               "html": ("report.html", html_page)}
    for name in formats:
        if name in writers:
            filename, writer = writers[name]
            written[name] = out / filename
            _write(written[name], writer(report))
    if "tex" in formats:  # each table also alone, for \input into a paper
        (out / "tables").mkdir(exist_ok=True)
        for filename, text in latex_fragments(report).items():
            _write(out / "tables" / filename, text)
    return written


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
