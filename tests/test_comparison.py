"""Comparison maths and the report, on hand-made runs."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from cifar_mlflow.compare.analysis import (
    RunRecord,
    best_per_column,
    confusion_difference,
    largest_confusion_changes,
    params_table,
    per_class_accuracy,
)
from cifar_mlflow.compare.report import build_report

CLASSES = ["cat", "dog", "ship"]
# Run A confuses cats with dogs a lot; run B mostly fixed that but confuses ships with cats a little.
CM_A = np.array([[60, 35, 5], [10, 85, 5], [0, 5, 95]])
CM_B = np.array([[85, 10, 5], [10, 85, 5], [8, 2, 90]])


def record(run_id: str, name: str, cm=CM_A, **metrics) -> RunRecord:
    history = {"val_acc": [(1, 0.5), (2, 0.6)], "val_loss": [(1, 1.0), (2, 0.8)],
               "train_images_per_second": [(1, 1000.0), (2, 1200.0)]}
    return RunRecord(run_id, name, {"arch": name, "lr": "0.05", "seed": "0", "num_parameters": "1000"},
                     {"test_acc": 0.8, "test_loss": 0.5, "epochs_trained": 2.0, **metrics}, history, cm, CLASSES, 90.0)


def test_largest_changes_are_the_right_cells_in_words() -> None:
    changes = largest_confusion_changes(CM_A, CM_B, CLASSES, k=2)
    assert [c.describe() for c in changes] == ["cat->dog: 35.0% -> 10.0%", "ship->cat: 0.0% -> 8.0%"]


def test_difference_is_b_minus_a_row_normalised() -> None:
    diff = confusion_difference(CM_A, CM_B)
    assert diff[0, 0] == pytest.approx(0.25) and diff[0, 1] == pytest.approx(-0.25)
    assert np.allclose(diff.sum(axis=1), 0)  # shares move between cells of a row
    assert np.allclose(diff[1], 0)  # dogs unchanged


def test_params_table_keeps_differing_params_and_marks_the_best() -> None:
    runs = [record("a" * 32, "cnn", test_acc=0.7, test_loss=0.9), record("b" * 32, "mlp", test_acc=0.9, test_loss=0.4)]
    table = params_table(runs)
    assert "arch" in table.columns and "lr" not in table.columns and "seed" not in table.columns
    best = best_per_column(table)
    assert best["test_acc"] == 1 and best["test_loss"] == 1


def test_per_class_accuracy_from_metrics_with_gaps() -> None:
    a = record("a" * 32, "cnn", test_acc_cat=0.6, test_acc_dog=0.85)
    b = record("b" * 32, "mlp", test_acc_cat=0.85)
    table = per_class_accuracy([a, b])
    assert list(table.columns) == ["cat", "dog"]
    assert table.loc[b.label, "cat"] == 0.85 and np.isnan(table.loc[b.label, "dog"])


def test_report_embeds_every_figure_and_notes_what_is_missing() -> None:
    a = record("a" * 32, "cnn", test_acc_cat=0.6)
    b = record("b" * 32, "mlp", cm=CM_B, test_acc_cat=0.85)
    bare = RunRecord("c" * 32, "old-run", {"arch": "lenet"}, {})  # no history, metrics or confusion matrix
    report = build_report([a, b, bare], title="t")
    assert set(report.pngs) == {"learning_curves.png", "per_class_accuracy.png", "pareto.png", "time.png",
                                "confusion_difference_aaaaaaa_bbbbbbb.png"}
    for png in report.pngs.values():
        assert Image.open(__import__("io").BytesIO(png)).size[0] > 300
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", report.html)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(report.pngs.values())  # self-contained
    assert "cat-&gt;dog: 35.0% -&gt; 10.0%" in report.html
    assert "old-run [arch=lenet, lr=-, seed=-] has no per-epoch history, test metrics, confusion matrix" in report.html
    assert '<div class="wide"><table>' in report.html  # a wide table scrolls inside the page
    assert "src='http" not in report.html and 'src="http' not in report.html  # opens offline


def test_runs_are_labelled_by_name_and_the_params_in_which_they_differ() -> None:
    from cifar_mlflow.compare.analysis import label_runs

    a, b = record("a" * 32, "dazzling-skunk-39"), record("b" * 32, "brave-owl-7")
    b.params = {**a.params, "lr": "0.1", "batch_size": "64"}
    label_runs([a, b])
    assert a.label == "dazzling-skunk-39 [lr=0.05, batch_size=-]"
    assert b.label == "brave-owl-7 [lr=0.1, batch_size=64]"
    same = record("c" * 32, "cnn")
    label_runs([same, record("d" * 32, "cnn")])
    assert same.label == "cnn (ccccccc)"  # nothing differs: the id tells them apart


def test_epoch_axes_show_whole_epochs_only() -> None:
    # A 2- or 3-epoch run drew ticks at epoch 1.25, 1.5, ...: no such epoch exists.
    from cifar_mlflow.compare.analysis import learning_curves_figure as compared
    from cifar_mlflow.plots import learning_curves_figure as one_run

    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + e / 10, "val_loss": 1.1 / e,
                "val_acc": 0.45 + e / 10} for e in (1, 2, 3)]
    for fig in (one_run(history, best_epoch=3), compared([record("a" * 32, "cnn"), record("b" * 32, "mlp")])):
        fig.canvas.draw()
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_a_runs_curves_say_when_the_training_loss_is_smoothed() -> None:
    # Training loss with smoothing, validation loss without: the legend must tell them apart.
    from cifar_mlflow.plots import learning_curves_figure

    history = [{"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 0.8, "val_acc": 0.6} for e in (1, 2)]
    smoothed = learning_curves_figure(history, label_smoothing=0.118)
    loss_axis, acc_axis = smoothed.axes
    assert "train (label smoothing 0.118)" in [t.get_text() for t in loss_axis.get_legend().get_texts()]
    assert "train" in [t.get_text() for t in acc_axis.get_legend().get_texts()]
    plain = learning_curves_figure(history)
    assert [t.get_text() for t in plain.axes[0].get_legend().get_texts()][:2] == ["train", "validation"]


def test_the_compared_curves_legend_sits_below_the_plots() -> None:
    # Four runs' labels with their differing params inside the accuracy plot covered its curves.
    from cifar_mlflow.compare.analysis import learning_curves_figure

    fig = learning_curves_figure([record(c * 32, f"run-{c}") for c in "abcd"], with_train=True)
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 4  # each run once (these records have no training curves)
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert all(box.y1 <= ax.get_window_extent().y0 for ax in fig.axes)


def test_long_run_labels_leave_the_time_bars_their_room() -> None:
    # Four runs labelled with three differing params each squeezed both bar charts to a sliver, the
    # labels written twice; the bars must keep most of the figure and say their values.
    from cifar_mlflow.compare.analysis import time_figure

    runs = [record(c * 32, f"cnn_small-adamw-lr0.0142-e3-s{i}") for i, c in enumerate("abcd")]
    for r in runs:
        r.differs_by = "arch=cnn_small, optimizer=adamw, lr=0.0142"
    runs[-1].wall_seconds = None
    fig = time_figure(runs)
    fig.savefig(io.BytesIO(), format="png", dpi=110, bbox_inches="tight")  # as the report draws it
    renderer = fig.canvas.get_renderer()
    width = fig.get_window_extent(renderer).width
    bars, epochs = fig.axes
    assert bars.get_window_extent(renderer).width + epochs.get_window_extent(renderer).width > 0.45 * width
    assert [t.get_text() for t in epochs.get_yticklabels() if t.get_visible() and t.get_text()] == []  # once
    assert [t.get_text() for t in bars.texts] == ["1.5"] * 3 + ["not recorded"]  # 90 s each; none for the last
    assert [t.get_text() for t in epochs.texts] == ["2"] * 4
