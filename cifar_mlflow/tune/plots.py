"""The study's plots, for its parent run: Optuna's matplotlib figures as PNGs (`plots/*.png`, shown inline by
the MLflow UI), and its plotly figures in one interactive page (`plots/study.html`: hover a trial for its
parameters, zoom, pick axes of the parallel coordinates, the contour of any two parameters, the timeline)."""

from __future__ import annotations

import html
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna


def _drawn(plots: dict[str, Callable[[optuna.Study], Any]], study: optuna.Study) -> dict[str, Any]:
    """Each plot of `study` that can be drawn; one needing more trials than exist (importances need two
    complete trials, a contour two parameters) is left out."""
    drawn = {}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                drawn[name] = plot(study)
        except Exception:  # noqa: BLE001 - too few trials or parameters for this plot
            continue
    return drawn


def study_figures(study: optuna.Study) -> dict[str, Any]:
    """Optuna's matplotlib plots of the study, as figures."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot is first imported (by Optuna's plots): no display needed
    from optuna.visualization import matplotlib as ovm

    plots = {"optimization_history": ovm.plot_optimization_history,
             "param_importances": ovm.plot_param_importances,
             "parallel_coordinate": ovm.plot_parallel_coordinate,
             "intermediate_values": ovm.plot_intermediate_values,
             "slice": ovm.plot_slice}
    figures = {}
    for name, axes in _drawn(plots, study).items():
        figure = np.ravel(axes)[0].figure
        figure.set_size_inches(max(figure.get_size_inches()[0], 9), max(figure.get_size_inches()[1], 5))
        figures[name] = figure
    return figures


# The interactive page's sections, in order: (title, Optuna's plotly function).
_PAGE = {"optimization_history": ("Optimization history", "plot_optimization_history"),
         "param_importances": ("Parameter importances", "plot_param_importances"),
         "parallel_coordinate": ("Parallel coordinates", "plot_parallel_coordinate"),
         "contour": ("Contour of each pair of parameters", "plot_contour"),
         "slice": ("Objective against each parameter", "plot_slice"),
         "intermediate_values": ("Learning curves of the trials (pruning)", "plot_intermediate_values"),
         "timeline": ("Timeline of the trials", "plot_timeline")}


def study_page(study: optuna.Study, title: str) -> str | None:
    """One self-contained HTML page with Optuna's plotly figures of the study (plotly.js inlined once, so it
    opens offline and in the MLflow UI's artifact view); None before any trial can be drawn."""
    from optuna import visualization as ov

    figures = _drawn({name: getattr(ov, function) for name, (_, function) in _PAGE.items()}, study)
    if not figures:
        return None
    sections = []
    for i, (name, figure) in enumerate(figures.items()):
        body = figure.to_html(full_html=False, include_plotlyjs=i == 0)
        sections.append(f"<h2>{html.escape(_PAGE[name][0])}</h2><div id='{name}'>{body}</div>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family: sans-serif'><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>")
