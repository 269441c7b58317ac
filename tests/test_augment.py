"""Batched augmentation: right shapes, label-preserving geometry, seeded randomness."""

from __future__ import annotations

import pytest
import torch

from cifar_mlflow.data.augment import BatchTransform, random_crop, random_erasing
from cifar_mlflow.data.loader import DeviceLoader
from cifar_mlflow.data.splits import Split


def images(n: int = 16, c: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("pad", [2, 4])
def test_crop_is_a_shifted_window_of_the_padded_image(dtype, pad) -> None:
    x = images().to(dtype)
    out = random_crop(x, pad, torch.Generator().manual_seed(1))
    assert out.dtype == dtype and out.shape == x.shape
    padded = torch.nn.functional.pad(x.float(), (pad, pad, pad, pad), mode="reflect")
    size = 2 * pad + 1
    offsets = set()
    for i in range(len(x)):
        windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1)  # (C, size, size, 32, 32)
        matches = (windows == out[i].float()[:, None, None]).all(dim=(0, 3, 4))
        assert matches.any(), f"image {i} is not a crop of its padded original"
        offsets.add(int(matches.nonzero()[0, 0]) * size + int(matches.nonzero()[0, 1]))
    assert len(offsets) > 4  # random offsets, not one shift for the whole batch


def test_flip_mirrors_about_half_the_crops() -> None:
    x = images(n=400)
    out = random_crop(x, 0, torch.Generator().manual_seed(0), hflip=True)  # pad 0: the flip alone
    flipped = (out == x.flip(3)).all(dim=(1, 2, 3))
    kept = (out == x).all(dim=(1, 2, 3))
    assert bool((flipped | kept).all())
    assert 150 < int(flipped.sum()) < 250
    # with a crop: the mirror image of the crop the same random numbers give without the flip
    gen = torch.Generator().manual_seed(5)
    both = random_crop(x, 4, gen, hflip=True)
    flip = torch.rand(len(x), generator=torch.Generator().set_state(_after_crop_draws(len(x))))
    crop = random_crop(x, 4, torch.Generator().manual_seed(5))
    expected = torch.where((flip < 0.5)[:, None, None, None], crop.flip(3), crop)
    assert torch.equal(both, expected)


def _after_crop_draws(n: int) -> torch.Tensor:
    """The state of a generator seeded 5 after `random_crop` drew its two offsets for n images."""
    gen = torch.Generator().manual_seed(5)
    torch.randint(0, 9, (n,), generator=gen), torch.randint(0, 9, (n,), generator=gen)
    return gen.get_state()


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
    assert torch.equal(x, images(n=256))  # the data set's own batch is never changed in place
    with pytest.raises(TypeError, match="uint8"):
        BatchTransform("none", mean, std)(x.float())


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


def _mirrored(out: torch.Tensor, originals: torch.Tensor, pad: int) -> torch.Tensor:
    """For each output image: whether it is a crop of its mirrored original (else of the original)."""
    result = []
    for crop, original in zip(out.float(), originals.float()):
        def is_crop_of(image: torch.Tensor) -> bool:
            padded = torch.nn.functional.pad(image[None], (pad,) * 4, mode="reflect")[0]
            windows = padded.unfold(1, image.shape[1], 1).unfold(2, image.shape[2], 1)
            return bool((windows == crop[:, None, None]).all(dim=(0, 3, 4)).any())
        mirrored, plain = is_crop_of(original.flip(2)), is_crop_of(original)
        assert mirrored != plain, "each output is a crop of the image or of its mirror image, not both"
        result.append(mirrored)
    return torch.tensor(result)


def _epoch_flips(loader: DeviceLoader, originals: torch.Tensor) -> torch.Tensor:
    """One pass of `loader` over images labelled by their index: which images came out mirrored."""
    flips = torch.zeros(len(originals), dtype=torch.bool)
    for x, index in loader:
        x = (x * 0.25 + 0.5) * 255  # undo the normalisation: the crops' uint8 values, exactly
        flips[index] = _mirrored(x.round().to(torch.uint8), originals[index], pad=2)
    return flips


def test_alternating_flips_mirror_each_image_in_every_other_epoch() -> None:
    originals = images(n=64)
    split = Split(originals, torch.arange(64))  # labels are the images' indices
    t = BatchTransform("light", (0.5,) * 3, (0.25,) * 3, flip="alternating")
    loader = DeviceLoader(split, 16, t, torch.device("cpu"), shuffle=True, seed=7)
    first, second, third = (_epoch_flips(loader, originals) for _ in range(3))
    assert 16 < int(first.sum()) < 48  # a random half in the first epoch
    assert torch.equal(second, ~first) and torch.equal(third, first)
    # resumed after two epochs: the third epoch's flips, from a new loader with the same seed
    resumed = DeviceLoader(split, 16, t, torch.device("cpu"), shuffle=True, seed=7)
    resumed.epoch = 2
    assert torch.equal(_epoch_flips(resumed, originals), third)
    # random flips: no such pattern between two epochs
    t_random = BatchTransform("light", (0.5,) * 3, (0.25,) * 3)
    loader = DeviceLoader(split, 16, t_random, torch.device("cpu"), shuffle=True, seed=7)
    first, second = _epoch_flips(loader, originals), _epoch_flips(loader, originals)
    assert not torch.equal(second, ~first)
    with pytest.raises(ValueError, match="alternating"):
        t(originals[:4], torch.Generator())  # without the loader's flips


def test_flip_preset_only_mirrors() -> None:
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = BatchTransform("flip", (0.0,) * 3, (1.0,) * 3)(images, torch.Generator().manual_seed(0)) * 255
    same = (out.round() == images.float()).flatten(1).all(1)
    mirrored = (out.round() == images.flip(-1).float()).flatten(1).all(1)
    assert bool((same | mirrored).all())  # no translation, no other change
    assert 16 < int(mirrored.sum()) < 48
