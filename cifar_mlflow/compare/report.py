"""The comparison report: PNG figures and one self-contained HTML page (images embedded)."""

from __future__ import annotations

import base64
import html
import io
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cifar_mlflow.compare import analysis
from cifar_mlflow.records import RunRecord

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.best{font-weight:bold;background:#e6f4ea}img{max-width:100%;border:1px solid #eee}
.note{color:#8a5a00}code{background:#f3f3f3;padding:1px 4px}.wide{overflow-x:auto;max-width:100%}"""


@dataclass
class Report:
    html: str
    pngs: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG
    table: pd.DataFrame | None = None  # one row per run: its id, the params that differ, the final metrics


def table_text(table: pd.DataFrame, fmt: str) -> str:
    """The report's table as CSV (a spreadsheet, pandas) or a Markdown table (a paper, a pull request);
    metrics rounded to 4 decimals, a run without a value left blank."""
    if fmt == "csv":
        return table.to_csv(index=False)

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if np.isnan(value) else f"{value:.4f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, table.columns)) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(table[c]) else "---" for c in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _table_html(table, best: dict[str, int]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for index, row in table.iterrows():
        cells = []
        for column, value in row.items():
            text = "" if isinstance(value, float) and np.isnan(value) else (
                f"{value:.4f}" if isinstance(value, float) else str(value))
            mark = ' class="best"' if best.get(column) == index else ""
            cells.append(f"<td{mark}>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class=\"wide\"><table><tr>{head}</tr>{''.join(rows)}</table></div>"  # scrolls, never overflows


def build_report(runs: list[RunRecord], *, title: str = "Run comparison", with_train: bool = False,
                 command: str | None = None) -> Report:
    """Figures and HTML for `runs`; what a run lacks is noted, never an error."""
    analysis.label_runs(runs)
    pngs: dict[str, bytes] = {}
    sections: list[str] = []
    notes: list[str] = []
    for r in runs:
        missing = [what for what, ok in (("per-epoch history", bool(r.history.get("val_acc"))),
                                         ("test metrics", "test_acc" in r.metrics),
                                         ("confusion matrix", r.confusion is not None)) if not ok]
        if missing:
            notes.append(f"{r.label} has no {', '.join(missing)}: it is shown with what it has.")

    table = analysis.params_table(runs)
    best = analysis.best_per_column(table)
    with_ids = table.copy()
    with_ids.insert(1, "run_id", [r.run_id for r in runs])
    sections.append("<h2>Parameters that differ, and final metrics</h2>" + _table_html(table, best)
                    + "<p>Bold: the best value of each metric.</p>")

    def add(name: str, heading: str, figure, text: str = "") -> None:
        pngs[f"{name}.png"] = _png(figure)
        encoded = base64.b64encode(pngs[f"{name}.png"]).decode()
        image = f"<img alt='{name}' src='data:image/png;base64,{encoded}'>"
        sections.append(f"<h2>{html.escape(heading)}</h2>{text}{image}")

    if any(r.history.get("val_acc") for r in runs):
        add("learning_curves", "Learning curves", analysis.learning_curves_figure(runs, with_train))
    per_class = analysis.per_class_accuracy(runs)
    if not per_class.empty:
        add("per_class_accuracy", "Per-class test accuracy", analysis.per_class_heatmap_figure(per_class))
    with_cm = [r for r in runs if r.confusion is not None]
    pairs = list(itertools.combinations(with_cm, 2)) if len(with_cm) <= 4 else [(with_cm[0], r) for r in with_cm[1:]]
    for a, b in pairs:
        if a.confusion.shape != b.confusion.shape:
            notes.append(f"{a.label} and {b.label} have different classes: no confusion difference.")
            continue
        changes = analysis.largest_confusion_changes(a.confusion, b.confusion, a.classes)
        text = "<p>Largest changes, as the share of the true class predicted as another class (" \
               f"{html.escape(a.name)} -> {html.escape(b.name)}):</p><ul>" + \
               "".join(f"<li>{html.escape(c.describe())}</li>" for c in changes) + "</ul>"
        add(f"confusion_difference_{a.run_id[:7]}_{b.run_id[:7]}", f"Confusion: {a.label} vs {b.label}",
            analysis.confusion_difference_figure(a, b), text)
    if any("test_acc" in r.metrics for r in runs):
        add("pareto", "Accuracy against size and speed", analysis.pareto_figure(runs))
    add("time", "Wall time and epochs", analysis.time_figure(runs))

    runs_list = "".join(f"<li><code>{html.escape(r.run_id)}</code> {html.escape(r.name)}</li>" for r in runs)
    note_html = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    made_by = f" by <code>{html.escape(command)}</code>" if command else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>Made {made}{made_by}.</p><h2>Runs</h2><ul>{runs_list}</ul>{note_html}{''.join(sections)}"
            "</body></html>")
    return Report(page, pngs, with_ids)
