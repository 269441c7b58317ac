"""The seeded, stratified train/validation split, the caps for quick runs, and data statistics."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from cifar_mlflow.data.sources import ImageData
from cifar_mlflow.errors import ConfigError


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    @functools.cached_property
    def digest(self) -> str:
        """A short content hash of this split's images and labels: a subset, or another split, differs.
        Hashed once per split (every trial of a study logs it)."""
        return content_digest(self.images, self.labels)


@dataclass
class DataSplits:
    """Train, validation and test splits plus what the run logs about them."""

    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]  # per channel, on the training split, in [0, 1]
    std: tuple[float, ...]
    digest: str  # sha256 prefix of the full data set's pixels and labels
    hflip_ok: bool
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # (C, H, W)


def _stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of `size` items (all of them if size >= len)."""
    if size >= len(labels):
        return np.arange(len(labels))
    counts = np.bincount(labels)
    classes = (counts > 0).sum()  # stratifying needs a class's worth of items on both sides
    stratify = labels if min(size, len(labels) - size) >= classes and counts[counts > 0].min() >= 2 else None
    keep, _ = train_test_split(np.arange(len(labels)), train_size=size, random_state=seed, stratify=stratify)
    return np.sort(keep)


def stratified_subset(split: Split, size: int, seed: int = 0) -> Split:
    """A class-balanced, seeded subset of `size` items of `split` (all of it if size >= len)."""
    keep = torch.as_tensor(_stratified_subset(split.labels.numpy(), size, seed))
    return Split(split.images[keep], split.labels[keep])


def init_sample(split: Split, size: int, seed: int = 0) -> torch.Tensor:
    """The images a data-dependent initialisation (airbench's patch whitening) is fitted on: a seeded,
    class-balanced sample of `size` images of `split`, whatever order its files were read in (an image
    folder is read class by class: its first 5,000 CIFAR-10 images are all airplanes)."""
    return stratified_subset(split, size, seed).images


def content_digest(*tensors: torch.Tensor) -> str:
    """A short hash of the tensors' contents: the same data gives the same digest."""
    h = hashlib.sha256()
    for tensor in tensors:
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def data_digest(data: ImageData) -> str:
    """The digest of a whole data set as read: all its images and labels."""
    return content_digest(data.train_images, data.train_labels, data.test_images, data.test_labels)


def split_profile(split: Split, classes: list[str]) -> dict[str, object]:
    """What a split holds: its number of images and the images per class."""
    counts = torch.bincount(split.labels, minlength=len(classes)).tolist()
    return {"images": len(split), "per_class": dict(zip(classes, counts))}


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (N, C, H, W) uint8 images, scaled to [0, 1]."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].to(torch.float64) / 255.0
        total += part.sum(dim=(0, 2, 3))
        total_sq += (part ** 2).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean ** 2).clamp_min(1e-12).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(max(v, 1e-3), 4) for v in std.tolist())


def split_data(data: ImageData, *, val_fraction: float, seed: int, max_train_samples: int | None = None,
               max_eval_samples: int | None = None) -> DataSplits:
    """Hold out a stratified validation split from the training set (none for `val_fraction` 0); cap
    splits for quick runs."""
    labels = data.train_labels.numpy()
    counts = np.bincount(labels)
    n_val = int(round(val_fraction * len(labels)))
    if val_fraction == 0:
        train_idx, val_idx = np.arange(len(labels)), np.arange(0)
    elif n_val < 1 or len(labels) - n_val < 1:
        raise ConfigError(f"val_fraction {val_fraction} leaves an empty split of {len(labels)} training images")
    else:
        stratify = labels if counts[counts > 0].min() >= 2 and n_val >= (counts > 0).sum() else None
        train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=n_val, random_state=seed,
                                              stratify=stratify)
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    if max_train_samples:
        train_idx = train_idx[_stratified_subset(labels[train_idx], max_train_samples, seed)]
    test_idx = np.arange(len(data.test_labels))
    if max_eval_samples:
        val_idx = val_idx[_stratified_subset(labels[val_idx], max_eval_samples, seed)]
        test_idx = _stratified_subset(data.test_labels.numpy(), max_eval_samples, seed)
    train = Split(data.train_images[train_idx], data.train_labels[train_idx])
    val = Split(data.train_images[val_idx], data.train_labels[val_idx])
    test = Split(data.test_images[test_idx], data.test_labels[test_idx])
    check_classes(list(data.classes), {"training": train, "validation": val, "test": test})
    mean, std = channel_stats(train.images)
    return DataSplits(train=train, val=val, test=test, classes=list(data.classes), mean=mean, std=std,
                      digest=data_digest(data), hflip_ok=data.hflip_ok, source=data.source)


def check_classes(classes: list[str], splits: dict[str, Split]) -> None:
    """Refuse data a classifier cannot honestly learn or be tested on: fewer than two classes, or a class
    with no images in a split (training always; validation and test when they hold at least one image
    per class). Such data otherwise trains to a perfect, meaningless accuracy."""
    if len(classes) < 2:
        raise ConfigError(f"the data set has {len(classes)} class ({', '.join(classes) or 'none'}); a classifier "
                          "needs at least two: add a folder per class under train/ and test/")
    for name, split in splits.items():
        if len(split) == 0 or (name != "training" and len(split) < len(classes)):
            continue
        present = set(split.labels.unique().tolist())
        missing = [c for i, c in enumerate(classes) if i not in present]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ConfigError(f"class {shown} has no images in the {name} split ({len(split)} images); add "
                              f"images of every class, or raise --max-train-samples / --max-eval-samples")


def merge_train_and_val(data: DataSplits) -> DataSplits:
    """The training and validation splits merged into one training split; no validation split."""
    images = torch.cat([data.train.images, data.val.images])
    labels = torch.cat([data.train.labels, data.val.labels])
    mean, std = channel_stats(images)
    return dataclasses.replace(data, train=Split(images, labels), val=Split(images[:0], labels[:0]), mean=mean, std=std)
