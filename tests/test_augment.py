"""Batched augmentation: right shapes, label-preserving geometry, seeded randomness."""

from __future__ import annotations

import torch

from cifar_mlflow.data.augment import BatchTransform, random_crop, random_erasing, random_hflip
from cifar_mlflow.data.loader import DeviceLoader
from cifar_mlflow.data.splits import Split


def images(n: int = 16, c: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_crop_is_a_shifted_window_of_the_padded_image() -> None:
    x = images().float()
    out = random_crop(x, 4, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    for i in range(len(x)):
        windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1)  # (C, 9, 9, 32, 32)
        matches = (windows == out[i][:, None, None]).all(dim=(0, 3, 4))
        assert matches.any(), f"image {i} is not a crop of its padded original"


def test_flip_mirrors_about_half_the_images() -> None:
    x = images(n=400).float()
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(3)).all(dim=(1, 2, 3))
    kept = (out == x).all(dim=(1, 2, 3))
    assert bool((flipped | kept).all())
    assert 150 < int(flipped.sum()) < 250


def test_erasing_zeroes_rectangles_in_some_images() -> None:
    x = torch.ones(200, 3, 32, 32)
    out = random_erasing(x, torch.Generator().manual_seed(0), p=0.5)
    erased = (out == 0).any(dim=(1, 2, 3))
    assert 60 < int(erased.sum()) < 140
    assert bool((out[erased] == 0).all(dim=1).any())  # all channels of erased pixels


def test_presets_normalise_and_keep_shape() -> None:
    x = images(n=256)
    mean = tuple((x.float() / 255).mean(dim=(0, 2, 3)).tolist())
    std = tuple((x.float() / 255).std(dim=(0, 2, 3)).tolist())
    for preset in ("none", "standard", "strong"):
        out = BatchTransform(preset, mean, std)(x, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == torch.float32
        assert abs(float(out.mean())) < 0.15
    plain = BatchTransform("none", mean, std)(x)
    assert abs(float(plain.std()) - 1) < 0.05


def test_no_flip_for_digit_data() -> None:
    x = images(n=64, c=1, size=28)
    gen = torch.Generator().manual_seed(0)
    out = BatchTransform("standard", (0.0,), (1.0,), hflip_ok=False)(x, gen)
    crop_only = random_crop(x.float() / 255, 4, torch.Generator().manual_seed(0))
    assert torch.allclose(out, crop_only)  # the same crop, and no flip on top of it


def test_loader_is_seeded_and_covers_the_split() -> None:
    split = Split(images(n=100), torch.arange(100) % 10)
    t = BatchTransform("standard", (0.5,) * 3, (0.25,) * 3)
    a = DeviceLoader(split, 32, t, torch.device("cpu"), shuffle=True, seed=3)
    b = DeviceLoader(split, 32, t, torch.device("cpu"), shuffle=True, seed=3)
    assert len(a) == 3  # the last partial batch is dropped in training
    batches_a, batches_b = list(a), list(b)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(batches_a, batches_b))
    evaluation = DeviceLoader(split, 32, t, torch.device("cpu"), shuffle=False)
    labels = torch.cat([y for _, y in evaluation])
    assert torch.equal(labels, split.labels)  # every image once, in order
