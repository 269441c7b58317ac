"""Data sets as uint8 tensors, read with torchvision's own loaders and file formats.

Every source returns an `ImageData`: decoded train and test images `(N, C, H, W)` uint8 with int64
labels. Nothing falls back to other data: a missing data set is a `ConfigError` that says which
files to put where.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cifar_mlflow.data import folder_cache
from cifar_mlflow.errors import ConfigError


@dataclass
class ImageData:
    """A whole data set, decoded."""

    train_images: torch.Tensor  # (N, C, H, W) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor  # (M, C, H, W) uint8
    test_labels: torch.Tensor  # (M,) int64
    classes: list[str]
    hflip_ok: bool  # whether a horizontal flip keeps the label (not for digits)
    source: str  # where it was read from


# name -> (torchvision class, files to place, whether flips keep labels)
_TORCHVISION = {
    "cifar10": ("CIFAR10", "cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/)", True),
    "cifar100": ("CIFAR100", "cifar-100-python.tar.gz (or its extracted cifar-100-python/)", True),
    "mnist": ("MNIST", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte(.gz)", False),
    "fashion_mnist": ("FashionMNIST",
                      "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte(.gz)", True),
    "svhn": ("SVHN", "train_32x32.mat and test_32x32.mat", False),
}


def _open_torchvision(name: str, data_dir: str, train: bool):
    import torchvision.datasets as tvd

    cls_name, files, _ = _TORCHVISION[name]
    cls = getattr(tvd, cls_name)
    kwargs = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
    try:
        return cls(data_dir, download=False, **kwargs)
    except RuntimeError:
        pass  # not there yet: try to download it
    existed = Path(data_dir).exists()
    try:
        return cls(data_dir, download=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same advice
        if not existed:  # a failed download leaves nothing behind
            shutil.rmtree(data_dir, ignore_errors=True)
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{name} is not in {data_dir} and downloading it failed ({reason}); put {files} in "
            f"{Path(data_dir).resolve()}, or use --dataset imagefolder --data-dir DIR for a folder of "
            "images (docs/data.md)") from None


def _to_nchw(array) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(array))
    if tensor.ndim == 3:  # (N, H, W) grayscale
        return tensor.unsqueeze(1).contiguous()
    return tensor.permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)


def load_torchvision(name: str, data_dir: str) -> ImageData:
    """CIFAR-10/100, MNIST, Fashion-MNIST or SVHN through torchvision's data set classes."""
    splits = []
    for train in (True, False):
        ds = _open_torchvision(name, data_dir, train)
        if name == "svhn":
            images = torch.as_tensor(ds.data).contiguous()  # already (N, 3, 32, 32)
            labels = torch.as_tensor(ds.labels, dtype=torch.int64)
            classes = [str(i) for i in range(10)]
        else:
            images = _to_nchw(ds.data)
            labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
            classes = list(ds.classes)
        splits.append((images, labels))
    (xtr, ytr), (xte, yte) = splits
    return ImageData(xtr, ytr, xte, yte, classes, _TORCHVISION[name][2], str(Path(data_dir).resolve()))


def _scan_folder(root: Path, class_to_idx: dict[str, int] | None):
    """ImageFolder's file list of `root`: (path, label) pairs in its order, its classes and their indices."""
    import torchvision

    folder = torchvision.datasets.ImageFolder(str(root))
    if class_to_idx is not None and folder.class_to_idx != class_to_idx:
        raise ConfigError(f"{root} has classes {folder.classes}, the train folder has {sorted(class_to_idx)}")
    return folder.samples, folder.classes, folder.class_to_idx


def _decode_files(root: Path, samples: list[tuple[str, int]], image_size: int | None, progress: tqdm):
    import torchvision
    from torchvision.io import ImageReadMode, decode_image

    images = []
    for path, _ in samples:
        try:
            image = decode_image(torchvision.io.read_file(path), mode=ImageReadMode.RGB)  # (3, H, W)
        except RuntimeError as exc:
            raise ConfigError(f"cannot decode image {path}: {exc}") from None
        if image_size is not None and tuple(image.shape[1:]) != (image_size, image_size):
            image = F.interpolate(image[None].float(), size=(image_size, image_size), mode="bilinear",
                                  antialias=True, align_corners=False)[0].round().clamp(0, 255).byte()
        images.append(image)
        progress.update()
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise ConfigError(f"images in {root} have different sizes {sorted(shapes)[:3]}...; pass --image-size N "
                          "to resize them all to NxN")
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return torch.stack(images), labels


def load_imagefolder(data_dir: str, image_size: int | None) -> ImageData:
    """A folder with `train/<class>/*` and `test/<class>/*` images of any format PIL/torchvision reads.

    Decoded once: later runs on the same folder content read the decoded copy (`folder_cache`)."""
    root = Path(data_dir)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise ConfigError(f"imagefolder needs {root / split}/<class>/<image> folders; "
                              f"{root / split} does not exist (see docs/data.md)")
    try:
        train_samples, classes, class_to_idx = _scan_folder(root / "train", None)
        test_samples, _, _ = _scan_folder(root / "test", class_to_idx)
    except FileNotFoundError as exc:  # ImageFolder: a class folder without images
        raise ConfigError(f"imagefolder {root}: {exc}") from None
    files = [(str(Path(path).relative_to(root)), Path(path)) for path, _ in train_samples + test_samples]
    key = folder_cache.folder_key(files, image_size) if folder_cache.cache_dir() else ""
    entry = folder_cache.read_entry(key) if key else None
    if entry is None:
        with tqdm(total=len(files), desc=f"decoding {root}", unit="img", file=sys.stderr, mininterval=1.0,
                  disable=len(files) < 1000) as progress:
            xtr, ytr = _decode_files(root / "train", train_samples, image_size, progress)
            xte, yte = _decode_files(root / "test", test_samples, image_size, progress)
        entry = {"train_images": xtr, "train_labels": ytr, "test_images": xte, "test_labels": yte}
        if key:
            folder_cache.write_entry(key, entry)
    return ImageData(entry["train_images"], entry["train_labels"], entry["test_images"], entry["test_labels"],
                     classes, True, str(root.resolve()))


SYNTHETIC_TRAIN, SYNTHETIC_TEST = 50_000, 10_000


def load_synthetic(image_size: int | None, seed: int, num_train: int = SYNTHETIC_TRAIN,
                   num_test: int = SYNTHETIC_TEST) -> ImageData:
    """Random images whose mean colour depends on the class: learnable, for smoke runs and benchmarks.

    Built straight into uint8, a few thousand images at a time: memory is the images themselves.
    """
    size = image_size or 32
    gen = torch.Generator().manual_seed(seed)
    palette = torch.randint(40, 216, (10, 3, 1, 1), generator=gen, dtype=torch.int16)

    def make(n: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        labels = (torch.arange(n) % 10)[torch.randperm(n, generator=gen)]  # balanced: every class, even in 10
        images = torch.empty((n, 3, size, size), dtype=torch.uint8)
        for start in range(0, n, chunk):
            part = labels[start:start + chunk]
            noise = torch.randint(-40, 41, (len(part), 3, size, size), generator=gen, dtype=torch.int16)
            images[start:start + chunk] = (palette[part] + noise).clamp_(0, 255).to(torch.uint8)
        return images, labels

    xtr, ytr = make(num_train)
    xte, yte = make(num_test)
    return ImageData(xtr, ytr, xte, yte, [f"class_{i}" for i in range(10)], True, "synthetic")


def load_image_data(dataset: str, data_dir: str, image_size: int | None = None, seed: int = 0,
                    synthetic_size: tuple[int, int] = (SYNTHETIC_TRAIN, SYNTHETIC_TEST)) -> ImageData:
    """Load `dataset` (a name from `config.DATASETS`), resized to `image_size` if given.

    `synthetic_size`: the (train, test) images the synthetic set is made of (only what a run uses).
    """
    loaders: dict[str, Callable[[], ImageData]] = {
        "imagefolder": lambda: load_imagefolder(data_dir, image_size),
        "synthetic": lambda: load_synthetic(image_size, seed, *synthetic_size),
    }
    if dataset in _TORCHVISION:
        data = load_torchvision(dataset, data_dir)
        if image_size is not None and data.train_images.shape[-1] != image_size:
            data.train_images = resize_uint8(data.train_images, image_size)
            data.test_images = resize_uint8(data.test_images, image_size)
        return data
    if dataset not in loaders:
        raise ConfigError(f"unknown dataset {dataset!r}")
    return loaders[dataset]()


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize (N, C, H, W) uint8 images to (N, C, size, size), in chunks to bound memory."""
    out = []
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(part.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)
