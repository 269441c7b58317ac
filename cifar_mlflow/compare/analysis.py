"""Comparing runs: the maths and the figures, on plain data (no MLflow here).

`RunRecord` (`cifar_mlflow.records`) is what a comparison needs of one run;
`cifar_mlflow.tracking.fetch_run_records` builds them from MLflow. Runs without some metric or artifact are compared
on what they have.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cifar_mlflow.metrics import row_normalised  # noqa: E402
from cifar_mlflow.plots import epoch_ticks  # noqa: E402
from cifar_mlflow.records import RunRecord  # noqa: E402

# Final metrics shown in the table, and whether higher is better.
TABLE_METRICS = {"test_acc": True, "test_loss": False, "test_f1_macro": True, "best_val_acc": True,
                 "best_epoch": None, "epochs_trained": None}
# Params that always differ between runs and say nothing about the recipe.
IGNORED_PARAMS = {"run_name", "resume", "tracking_uri", "checkpoint_dir", "progress", "experiment_name"}


def differing_params(runs: list[RunRecord]) -> list[str]:
    """The params (of the recipe, not of the bookkeeping) whose values are not the same in every run."""
    keys = sorted({k for r in runs for k in r.params} - IGNORED_PARAMS)
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


# The params a label names first when many differ: what people change between runs.
_LABEL_FIRST = ("arch", "optimizer", "lr", "batch_size", "epochs", "augment", "weight_decay", "seed")


def label_runs(runs: list[RunRecord], most: int = 3) -> None:
    """Label each run by its name and up to `most` params in which the runs differ (the random names
    of runs nobody named say nothing)."""
    differing = differing_params(runs)
    shown = [k for k in _LABEL_FIRST if k in differing] + [k for k in differing if k not in _LABEL_FIRST]
    shown = [k for k in shown if not k.startswith(("model_args.", "data_", "num_parameters", "train_size"))][:most]
    for r in runs:
        r.differs_by = ", ".join(f"{k}={r.params.get(k, '-')}" for k in shown)


def params_table(runs: list[RunRecord]) -> pd.DataFrame:
    """Params that differ between the runs, then their final metrics; one row per run."""
    differing = differing_params(runs)
    rows = []
    for r in runs:
        row = {"run": r.label, **{k: r.params.get(k, "") for k in differing}}
        row.update({m: r.metrics.get(m, np.nan) for m in TABLE_METRICS})
        if r.params.get("num_parameters"):
            row["num_parameters"] = int(r.params["num_parameters"])
        row["wall_minutes"] = r.wall_seconds / 60 if r.wall_seconds is not None else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def best_per_column(table: pd.DataFrame) -> dict[str, int]:
    """Row index of the best value of each metric column that has a direction."""
    best = {}
    for column, higher in TABLE_METRICS.items():
        if higher is None or column not in table or table[column].isna().all():
            continue
        best[column] = int(table[column].idxmax() if higher else table[column].idxmin())
    return best


@dataclass(frozen=True)
class ConfusionChange:
    true: str
    predicted: str
    before: float  # share of the true class predicted as `predicted` in run A
    after: float  # the same in run B

    def describe(self) -> str:
        return f"{self.true}->{self.predicted}: {self.before:.1%} -> {self.after:.1%}"


def confusion_difference(cm_a: np.ndarray, cm_b: np.ndarray) -> np.ndarray:
    """Row-normalised B minus row-normalised A: positive where B predicts that cell more often."""
    return row_normalised(cm_b) - row_normalised(cm_a)


def largest_confusion_changes(cm_a: np.ndarray, cm_b: np.ndarray, classes: list[str],
                              k: int = 5) -> list[ConfusionChange]:
    """The `k` off-diagonal cells whose share changed most between run A and run B."""
    a, b = row_normalised(cm_a), row_normalised(cm_b)
    diff = np.abs(b - a)
    np.fill_diagonal(diff, -1.0)  # mistakes only
    order = np.argsort(diff, axis=None)[::-1][:k]
    changes = []
    for flat in order:
        i, j = divmod(int(flat), len(classes))
        if diff[i, j] <= 0:
            break
        changes.append(ConfusionChange(classes[i], classes[j], float(a[i, j]), float(b[i, j])))
    return changes


def learning_curves_figure(runs: list[RunRecord], with_train: bool = False) -> Figure:
    """Validation accuracy and loss per epoch, one line per run (train dashed when asked)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    for ax, key in ((axes[0], "acc"), (axes[1], "loss")):
        for index, r in enumerate(runs):
            color = f"C{index % 10}"
            points = r.history.get(f"val_{key}", [])
            if points:
                ax.plot(*zip(*points), "o-", ms=3, color=color, label=r.label)
            train = r.history.get(f"train_{key}", [])
            if with_train and train:
                ax.plot(*zip(*train), "--", color=color, alpha=0.6, label=f"{r.label} train")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(epoch_ticks())
        ax.set_ylabel(f"validation {'accuracy' if key == 'acc' else 'loss'}")
        ax.grid(alpha=0.3)
    axes[0].set_title("validation accuracy per epoch")
    axes[1].set_title("validation loss per epoch")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # below both plots, where long run labels cover no curve; the figure grows by its rows
        fig.set_figheight(4.5 + 0.22 * -(-len(handles) // 2))
        fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8)
    return fig


def per_class_accuracy(runs: list[RunRecord]) -> pd.DataFrame:
    """Runs x classes test accuracy from the `test_acc_<class>` metrics (NaN where a run has none)."""
    classes: list[str] = []
    for r in runs:
        for key in r.metrics:
            name = key.removeprefix("test_acc_")
            if key.startswith("test_acc_") and name not in classes:
                classes.append(name)
    return pd.DataFrame([[r.metrics.get(f"test_acc_{c}", np.nan) for c in classes] for r in runs],
                        index=[r.label for r in runs], columns=classes)


def per_class_heatmap_figure(table: pd.DataFrame) -> Figure:
    fig, ax = plt.subplots(figsize=(max(7, 0.7 * len(table.columns) + 3), 0.6 * len(table) + 2),
                           constrained_layout=True)
    image = ax.imshow(table.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax, label="test accuracy")
    ax.set_xticks(range(len(table.columns)), table.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(table)), table.index)
    if table.size <= 400:
        for (i, j), value in np.ndenumerate(table.to_numpy(dtype=float)):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if value > 0.6 else "white")
    ax.set_title("per-class test accuracy")
    return fig


def confusion_difference_figure(a: RunRecord, b: RunRecord) -> Figure:
    diff = confusion_difference(a.confusion, b.confusion)
    classes = a.classes or [str(i) for i in range(len(diff))]
    limit = max(float(np.abs(diff).max()), 1e-6)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(classes) + 3), max(5, 0.5 * len(classes) + 2)),
                           constrained_layout=True)
    image = ax.imshow(diff, cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=ax, label="share in the second run minus share in the first", shrink=0.8)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(textwrap.fill(f"row-normalised confusion: {b.label} minus {a.label}", 60), fontsize=9)
    return fig


def pareto_figure(runs: list[RunRecord]) -> Figure:
    """Test accuracy against parameter count and against training throughput."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for index, r in enumerate(runs):
        acc = r.metrics.get("test_acc")
        if acc is None:
            continue
        params = r.params.get("num_parameters")
        throughput = [v for _, v in r.history.get("train_images_per_second", [])]
        if params:
            axes[0].scatter(int(params), acc, color=f"C{index % 10}", label=r.label)
            axes[0].annotate(r.name, (int(params), acc), fontsize=7, xytext=(4, 4), textcoords="offset points")
        if throughput:
            axes[1].scatter(float(np.median(throughput)), acc, color=f"C{index % 10}")
            axes[1].annotate(r.name, (float(np.median(throughput)), acc), fontsize=7, xytext=(4, 4),
                             textcoords="offset points")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("parameters")
    axes[1].set_xlabel("training images/s (median epoch)")
    for ax in axes:
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy vs model size")
    axes[1].set_title("accuracy vs training throughput")
    return fig


def time_figure(runs: list[RunRecord]) -> Figure:
    """Wall time and epochs trained per run: the run labels once, on the left, wrapped so that long
    ones leave the bars their room; each bar says its value."""
    labels = [textwrap.fill(r.label, 48) for r in runs]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig, axes = plt.subplots(1, 2, sharey=True, figsize=(12, 0.3 * lines + 0.25 * len(runs) + 1.8),
                             constrained_layout=True)
    minutes = [r.wall_seconds / 60 if r.wall_seconds is not None else 0 for r in runs]
    said = [f"{m:.1f}" if r.wall_seconds is not None else "not recorded" for m, r in zip(minutes, runs)]
    epochs = [r.metrics.get("epochs_trained", len(r.history.get("val_acc", []))) for r in runs]
    counted = [f"{e:g}" for e in epochs]
    for ax, values, color, name, texts in ((axes[0], minutes, "tab:blue", "wall time (minutes)", said),
                                           (axes[1], epochs, "tab:orange", "epochs trained", counted)):
        ax.bar_label(ax.barh(range(len(runs)), values, color=color), labels=texts, padding=3, fontsize=8)
        ax.set_xlabel(name)
        ax.margins(x=0.12)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(runs)), labels, fontsize=8)
    axes[0].invert_yaxis()  # shared: the first run on top in both
    return fig
