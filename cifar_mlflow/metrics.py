"""Classification metrics from predictions: confusion matrix, per-class accuracy, report."""

from __future__ import annotations

import re

import numpy as np
import torch
from sklearn.metrics import classification_report, precision_recall_fscore_support


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> np.ndarray:
    """Counts `(num_classes, num_classes)`: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes).numpy()


def row_normalised(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its total (the share of each true class predicted as each class)."""
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    return np.diag(row_normalised(cm))


def metric_safe(name: str) -> str:
    """A class name usable in an MLflow metric key."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name).strip() or "class"


def final_metrics(labels: torch.Tensor, predictions: torch.Tensor, classes: list[str]) -> dict[str, float]:
    """Macro precision/recall/F1 and `test_acc_<class>` for every class."""
    y, p = labels.numpy(), predictions.numpy()
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, p, labels=list(range(len(classes))), average="macro", zero_division=0)
    metrics = {"test_precision_macro": float(precision), "test_recall_macro": float(recall),
               "test_f1_macro": float(f1)}
    accuracy = per_class_accuracy(confusion_matrix(labels, predictions, len(classes)))
    for name, acc in zip(classes, accuracy):
        metrics[f"test_acc_{metric_safe(name)}"] = float(acc)
    return metrics


def report(labels: torch.Tensor, predictions: torch.Tensor, classes: list[str]) -> tuple[dict, str]:
    """sklearn's classification report as a dict and as text."""
    kwargs = dict(labels=list(range(len(classes))), target_names=classes, zero_division=0)
    y, p = labels.numpy(), predictions.numpy()
    return (classification_report(y, p, output_dict=True, **kwargs),
            classification_report(y, p, digits=4, **kwargs))
