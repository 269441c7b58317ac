"""Figures of a run: learning curves, confusion matrix, per-class accuracy, misclassified images."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cifar_mlflow.metrics import per_class_accuracy, row_normalised  # noqa: E402


def epoch_ticks() -> MaxNLocator:
    """Whole epochs only on an epoch axis: a 3-epoch run has no epoch 1.25."""
    return MaxNLocator(integer=True)


def learning_curves_figure(history: list[dict[str, float]], best_epoch: int | None = None,
                           label_smoothing: float = 0.0) -> Figure:
    """Loss and accuracy per epoch, train vs validation (train only when there was no validation split).

    With label smoothing, the training loss is the smoothed criterion and the validation loss the
    plain cross-entropy: the legend says so, since the gap between them is then partly smoothing.
    """
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        train_label = f"train (label smoothing {label_smoothing:g})" if key == "loss" and label_smoothing else "train"
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label=train_label, ms=3)
        if all(f"val_{key}" in h for h in history):
            ax.plot(epochs, [h[f"val_{key}"] for h in history], "o-", label="validation", ms=3)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(epoch_ticks())
        ax.set_ylabel(label)
        ax.set_title(f"{label}: train vs validation")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def confusion_matrix_figure(cm: np.ndarray, classes: list[str]) -> Figure:
    """Counts and row-normalised shares side by side, with class names."""
    n = len(classes)
    size = max(5.0, 0.45 * n + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size), constrained_layout=True)
    annotate = n <= 20
    for ax, values, title, fmt in ((axes[0], cm, "counts", "d"),
                                   (axes[1], row_normalised(cm), "row-normalised (recall)", ".2f")):
        image = ax.imshow(values, cmap="Blues")
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_title(f"confusion matrix: {title}")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ticks = np.arange(n) if n <= 30 else np.arange(0, n, max(1, n // 20))
        ax.set_xticks(ticks, [classes[i] for i in ticks], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(ticks, [classes[i] for i in ticks], fontsize=8)
        if annotate:
            threshold = values.max() / 2 if values.max() > 0 else 1
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="white" if values[i, j] > threshold else "black")
    return fig


def per_class_accuracy_figure(cm: np.ndarray, classes: list[str]) -> Figure:
    """Test accuracy per class as a bar chart, with the overall accuracy as a line."""
    accuracy = per_class_accuracy(cm)
    overall = np.trace(cm) / max(cm.sum(), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(classes) + 2), 4), constrained_layout=True)
    bars = ax.bar(range(len(classes)), accuracy, color="tab:blue")
    ax.axhline(overall, color="tab:red", ls="--", label=f"overall {overall:.3f}")
    if len(classes) <= 30:
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_title("per-class test accuracy")
    ax.legend(loc="lower right")
    return fig


def most_confident_mistakes(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of up to `k` wrongly predicted items, most confident first."""
    probs = logits.softmax(1)
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = confidence[wrong].argsort(descending=True)
    return wrong[order[:k]]


def misclassified_figure(images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                         classes: list[str], k: int = 32) -> Figure:
    """A grid of the most confidently misclassified images, with true and predicted labels.

    Args:
        images: the uint8 test images `(N, C, H, W)` in the same order as `logits`.
    """
    index = most_confident_mistakes(logits, labels, k)
    cols = 8
    rows = max(1, -(-len(index) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9), constrained_layout=True, squeeze=False)
    probs = logits.softmax(1)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, index.tolist()):
        image = images[i].permute(1, 2, 0).numpy()  # (H, W, C)
        ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray" if image.shape[2] == 1 else None)
        pred = int(probs[i].argmax())
        ax.set_title(f"true: {classes[int(labels[i])]}\npred: {classes[pred]} ({probs[i, pred]:.0%})", fontsize=7)
    if len(index) == 0:
        axes.flat[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle("most confidently misclassified test images")
    return fig


def confusion_matrix_image(cm: np.ndarray, classes: list[str], cell: int = 22) -> np.ndarray:
    """The row-normalised confusion matrix as a small RGB image (uint8, H x W x 3), drawn directly
    (no figure: cheap enough for every epoch), with the class names down the side. Dark blue is
    0, white is 1; the diagonal is what was learned."""
    from PIL import Image, ImageDraw

    shares = row_normalised(cm)
    n = len(classes)
    label_width = 8 + 6 * max(len(name) for name in classes)
    image = Image.new("RGB", (label_width + n * cell, n * cell), "white")
    draw = ImageDraw.Draw(image)
    for row in range(n):
        draw.text((2, row * cell + cell // 2 - 5), classes[row], fill="black")
        for col in range(n):
            level = float(shares[row, col])
            colour = (int(255 * level), int(40 + 215 * level), int(120 + 135 * level))
            x, y = label_width + col * cell, row * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=(200, 200, 200))
    return np.asarray(image)
