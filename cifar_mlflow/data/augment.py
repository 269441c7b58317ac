"""Augmentation of whole batches with tensor operations on the training device.

No per-image PIL work: a batch of uint8 images `(B, C, H, W)` goes in, a normalised float batch
comes out. Random numbers come from a `torch.Generator` on the same device, so runs are seeded
and a checkpoint can restore the exact stream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=device) * (high - low) + low


def _reflect(t: torch.Tensor, size: int) -> torch.Tensor:
    """Indices into an axis of `size` pixels for positions `t` in [-(size-1), 2(size-1)], mirrored at
    the borders as "reflect" padding does (-1 -> 1, size -> size - 2)."""
    t = t.abs()
    return torch.where(t > size - 1, 2 * (size - 1) - t, t)


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator, *, hflip: bool = False,
                flips: torch.Tensor | None = None) -> torch.Tensor:
    """Pad by `pad` pixels (reflect) and crop back to the original size at a random offset per image;
    with `hflip`, then mirror each image left-right with probability 1/2, or where `flips` (a bool
    per image) says so.

    One gather of source pixels, with no padded copy: any dtype (uint8 batches move 4x fewer bytes
    than float ones), the same on every device.
    """
    b, c, h, w = x.shape
    dev = x.device
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=dev)
    cols = torch.arange(w, device=dev).expand(b, w)
    if hflip:
        flip = torch.rand(b, generator=gen, device=dev) < 0.5 if flips is None else flips
        cols = torch.where(flip[:, None], (w - 1) - cols, cols)
    rows = _reflect(dy[:, None] - pad + torch.arange(h, device=dev), h)  # (B, H) source rows
    cols = _reflect(dx[:, None] - pad + cols, w)  # (B, W) source columns
    index = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)


def colour_jitter(x: torch.Tensor, gen: torch.Generator, strength: float = 0.2) -> torch.Tensor:
    """Random brightness, contrast and (for RGB) saturation per image; x in [0, 1]."""
    b = x.shape[0]
    shape = (b, 1, 1, 1)
    x = x * _uniform(shape, 1 - strength, 1 + strength, gen, x.device)
    gray = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    mean = gray.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * _uniform(shape, 1 - strength, 1 + strength, gen, x.device) + mean
    if x.shape[1] == 3:
        gray = x.mean(dim=1, keepdim=True)
        x = (x - gray) * _uniform(shape, 1 - strength, 1 + strength, gen, x.device) + gray
    return x.clamp(0.0, 1.0)


def random_rotation(x: torch.Tensor, gen: torch.Generator, degrees: float = 15.0) -> torch.Tensor:
    """Rotate each image by a random angle in [-degrees, degrees] (reflection at the borders)."""
    angle = _uniform((x.shape[0],), -degrees, degrees, gen, x.device) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_erasing(x: torch.Tensor, gen: torch.Generator, p: float = 0.5,
                   area: tuple[float, float] = (0.02, 0.2)) -> torch.Tensor:
    """Zero a random rectangle (the data mean, after normalisation) in a fraction `p` of the images."""
    b, _, h, w = x.shape
    dev = x.device
    frac = _uniform((b,), *area, gen, dev)
    log_ratio = _uniform((b,), math.log(0.3), math.log(3.3), gen, dev)
    eh = (torch.sqrt(frac * h * w * torch.exp(log_ratio))).clamp(1, h).long()
    ew = (torch.sqrt(frac * h * w / torch.exp(log_ratio))).clamp(1, w).long()
    top = (torch.rand(b, generator=gen, device=dev) * (h - eh + 1)).long()
    left = (torch.rand(b, generator=gen, device=dev) * (w - ew + 1)).long()
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    inside_y = (ys >= top[:, None]) & (ys < (top + eh)[:, None])  # (B, H)
    inside_x = (xs >= left[:, None]) & (xs < (left + ew)[:, None])  # (B, W)
    apply = torch.rand(b, generator=gen, device=dev) < p
    mask = inside_y[:, :, None] & inside_x[:, None, :] & apply[:, None, None]  # (B, H, W)
    return x.masked_fill(mask[:, None], 0.0)


CROP_PADDING = {"flip": 0, "light": 2}  # pixels of translation per preset; standard and strong: 4


class BatchTransform:
    """uint8 batch -> augmented, normalised float batch.

    Args:
        preset: "none", "flip" (horizontal flips only), "light" (reflect-pad-2 crop, i.e. translate by up to 2
            pixels, + horizontal flip), "standard" (reflect-pad-4 crop + horizontal flip) or "strong" (standard plus
            colour jitter, rotation up to 15 degrees and random erasing).
        mean, std: per-channel statistics in [0, 1] used for normalisation.
        hflip_ok: False for data where a mirror image changes the label (digits).
        flip: "random" (each image with probability 1/2) or "alternating": the caller says which
            images to mirror (`flips`); `DeviceLoader` alternates them epoch by epoch.
    """

    def __init__(self, preset: str, mean: tuple[float, ...], std: tuple[float, ...], hflip_ok: bool = True,
                 flip: str = "random") -> None:
        self.preset = preset
        self.hflip_ok = hflip_ok
        # whether batches need the images' flips from the loader
        self.alternating_flips = flip == "alternating" and hflip_ok and preset != "none"
        self._mean = torch.tensor(mean).view(1, -1, 1, 1)
        self._std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor, gen: torch.Generator | None = None,
                 flips: torch.Tensor | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"BatchTransform takes uint8 images, got {images.dtype}")
        if self.alternating_flips and flips is None:
            raise ValueError("alternating flips: pass each image's flip (DeviceLoader does)")
        x = images
        if self.preset != "none":
            assert gen is not None, "augmentation needs a generator"
            if self.preset == "strong":
                x = colour_jitter(x.float().div_(255.0), gen)
            # Crop and flip move pixels without changing them: on uint8 when they come first.
            x = random_crop(x, CROP_PADDING.get(self.preset, 4), gen, hflip=self.hflip_ok,
                            flips=flips if self.alternating_flips else None)
            if self.preset == "strong":
                x = random_rotation(x, gen)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)  # (B, C, H, W) in [0, 1], a new tensor
        mean, std = self._mean.to(x.device), self._std.to(x.device)
        x = x.sub_(mean).div_(std)
        if self.preset == "strong":
            x = random_erasing(x, gen)
        return x
