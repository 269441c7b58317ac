"""What the two reference re-implementations share (tools/airbench94.py, tools/airbench94_muon.py).

Both follow Keller Jordan's published airbench94 and airbench94_muon (github.com/KellerJordan/airbench):
the same net (frozen 2x2 patch whitening, three conv groups 64/256/256, batch norm with its scale fixed
at 1), the same data path (normalised images kept in the compute precision; at the first epoch a
random half pre-flipped and all padded by 2 pixels (reflect); every epoch a random translation of each
image by up to 2 pixels and, every other epoch, every image mirrored; shuffled, whole batches), the
uncentred patch covariance for the whitening and flip-and-translate test-time augmentation.

Changed only where the device or the data forces it, identically for both:
- precision: bf16 autocast where the hardware has native bf16 (a CUDA GPU with bf16, a CPU with
  AVX-512 BF16, AMX or Arm BF16), else fp32, as `cifar_mlflow.train --precision auto` chooses; the
  published code keeps the net in fp16 on the GPU;
- timing: wall clock around each epoch's training (data augmentation included, evaluation excluded),
  plus the whitening's initialisation, as the published code times itself with CUDA events;
- data: an ImageFolder (train/<class>/*, test/<class>/*) instead of the pickled batches. Such a folder is
  read class by class, so the whitening is fitted on a seeded, class-balanced sample of 5,000 training
  images where the published code takes the first 5,000 of CIFAR's (mixed) order.

Nothing of cifar_mlflow is imported, so a comparison with it shares no code.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
WHITEN_IMAGES = 5000
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


# ---------------------------------------------------------------- data

def read_folder(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """`root/<class>/<image>` -> (N, 3, H, W) uint8 images and int64 labels, classes in sorted order."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(label)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def mixed_sample(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices of a seeded sample of `size` images with every class equally represented (as near as
    `size` allows), whatever order the images are stored in."""
    gen = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per_class = -(-size // len(classes))
    picks = [torch.nonzero(labels == c).flatten() for c in classes]
    chosen = torch.cat([p[torch.randperm(len(p), generator=gen)[:per_class]] for p in picks])
    return chosen[torch.randperm(len(chosen), generator=gen)][:size]


def normalise(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return ((images.float() / 255 - mean) / std).to(dtype).contiguous(memory_format=torch.channels_last)


class TrainLoader:
    """The published CifarLoader's training path: alternating flips and 2-pixel translation of the whole
    set at the start of each epoch, then shuffled whole batches."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, translate: int = 2) -> None:
        self.images, self.labels, self.batch_size, self.translate = images, labels, batch_size, translate
        self.epoch = 0
        self.padded: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def _crop(self) -> torch.Tensor:
        r, size = self.translate, self.images.shape[-1]
        shifts = torch.randint(-r, r + 1, (len(self.images), 2), device=self.images.device)
        out = torch.empty_like(self.images)
        for sy in range(-r, r + 1):
            for sx in range(-r, r + 1):
                mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
                out[mask] = self.padded[mask, :, r + sy:r + sy + size, r + sx:r + sx + size]
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.epoch == 0:  # a random half mirrored once; then all of them every other epoch
            flip = (torch.rand(len(self.images), device=self.images.device) < 0.5).view(-1, 1, 1, 1)
            flipped = torch.where(flip, self.images.flip(-1), self.images)
            self.padded = F.pad(flipped, (self.translate,) * 4, mode="reflect")
        images = self._crop()
        if self.epoch % 2 == 1:
            images = images.flip(-1)
        self.epoch += 1
        order = torch.randperm(len(images), device=images.device)
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield images[index].contiguous(memory_format=torch.channels_last), self.labels[index]


# ---------------------------------------------------------------- precision

def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.partition(":")[2].split() for line in text.splitlines()
                  if line.partition(":")[0].strip() in ("flags", "Features")), [])
    return bool(NATIVE_BF16_FLAGS & set(flags))


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


# ---------------------------------------------------------------- the net

class BatchNorm(nn.BatchNorm2d):
    def __init__(self, channels: int, momentum: float = 0.6, eps: float = 1e-12) -> None:
        super().__init__(channels, momentum=1 - momentum, eps=eps)
        self.weight.requires_grad = False  # scale fixed at 1: only the bias learns


class Conv(nn.Conv2d):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.dirac_(self.weight.data[:self.in_channels])


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.pool, self.norm1 = Conv(cin, cout), nn.MaxPool2d(2), BatchNorm(cout)
        self.conv2, self.norm2, self.activ = Conv(cout, cout), BatchNorm(cout), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class Net(nn.Module):
    """airbench's net; `scale` multiplies the head's output (airbench94: 1/9; airbench94_muon: None,
    dividing by the head's 256 inputs, with the head's weights scaled to unit standard deviation)."""

    def __init__(self, scale: float | None, widths: tuple[int, int, int] = (64, 256, 256)) -> None:
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        self.layers = nn.Sequential(nn.GELU(), ConvGroup(24, widths[0]), ConvGroup(widths[0], widths[1]),
                                    ConvGroup(widths[1], widths[2]), nn.MaxPool2d(3))
        self.head = nn.Linear(widths[2], 10, bias=False)
        self.scale = scale
        if scale is None:
            with torch.no_grad():
                self.head.weight.mul_(1 / self.head.weight.std())

    def forward(self, x: torch.Tensor, whiten_bias_grad: bool = True) -> torch.Tensor:
        bias = self.whiten.bias if whiten_bias_grad else self.whiten.bias.detach()
        x = self.layers(F.conv2d(x, self.whiten.weight, bias)).flatten(1)
        return self.head(x) * (self.scale if self.scale is not None else 1 / x.size(-1))

    @torch.no_grad()
    def init_whiten(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """The whitening filters from the uncentred covariance of the images' 2x2 patches."""
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 3 * 2 * 2)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches), UPLO="U")
        filters = eigenvectors.T.reshape(-1, 3, 2, 2) / torch.sqrt(eigenvalues.view(-1, 1, 1, 1) + eps)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, tta: bool, device: torch.device,
             precision: str) -> float:
    """Test accuracy; with `tta`, the published level 2: the image and its mirror, and both translated by
    one pixel up-left and down-right (reflect), weighted 1/4, 1/4 and 1/8 each."""
    model.eval()
    correct = 0

    def mirror(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * model(x).float() + 0.5 * model(x.flip(-1)).float()

    for x, y in zip(images.split(2000), labels.split(2000)):
        with autocast(device, precision):
            if not tta:
                logits = model(x).float()
            else:
                padded = F.pad(x, (1,) * 4, mode="reflect")
                translated = [mirror(padded[..., :-2, :-2]), mirror(padded[..., 2:, 2:])]
                logits = 0.5 * mirror(x) + 0.25 * (translated[0] + translated[1])
        correct += int((logits.argmax(1) == y).sum())
    return correct / len(images)


# ---------------------------------------------------------------- the loop

def train_steps(model: nn.Module, loader: TrainLoader, epochs: float, clock: EpochClock, device: torch.device,
                precision: str, whiten_bias_epochs: float, label_smoothing: float,
                update: Callable[[int, int, int], None]) -> None:
    """The published training loop, shared by both recipes: `epochs` of `loader` (the last one cut short),
    the whitening bias learning for its first `whiten_bias_epochs`, a label-smoothed summed cross-entropy.
    After each backward pass `update(step, total_steps, whiten_bias_steps)` sets the rates and steps the
    optimizers."""
    total = math.ceil(epochs * len(loader))
    whiten_bias_steps = math.ceil(whiten_bias_epochs * len(loader))
    step = 0
    for _ in range(math.ceil(total / len(loader))):
        model.train()
        with clock:
            for x, y in loader:
                with autocast(device, precision):
                    logits = model(x, whiten_bias_grad=step < whiten_bias_steps).float()
                F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction="sum").backward()
                update(step, total, whiten_bias_steps)
                step += 1
                if step >= total:
                    break
        print(f"epoch {loader.epoch}: {clock.seconds:.1f} s so far", flush=True)
        if step >= total:
            break


# ---------------------------------------------------------------- the command

TrainFn = Callable[..., tuple[nn.Module, float]]


def refuse_folder_without_splits(parser: argparse.ArgumentParser, data_dir: Path) -> None:
    """Exit with status 2 and one line where `data_dir` lacks the image folder's train/ or test/."""
    for split in ("train", "test"):
        if not (data_dir / split).is_dir():
            parser.exit(2, f"error: {data_dir / split} is not a folder; --data-dir needs train/<class>/ "
                           "and test/<class>/ (make cifar10-jpg)\n")


def main(description: str, train_fn: TrainFn, epochs: float, batch_size: int) -> None:
    """Parse the command line, read the folder, train with `train_fn`, evaluate, print and write JSON.

    `train_fn(loader, epochs, device, precision, whiten_images)` builds and trains the recipe's net and
    returns it with the training seconds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", type=Path, required=True, help="ImageFolder root with train/ and test/")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda where there is one)")
    parser.add_argument("--epochs", type=float, default=epochs,
                        help=f"training epochs (default: the published {epochs}; other values for quick checks)")
    parser.add_argument("--batch-size", type=int, default=batch_size,
                        help=f"images per step (default: the published {batch_size}; other values for quick checks)")
    args = parser.parse_args()
    refuse_folder_without_splits(parser, args.data_dir)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    precision = "bf16" if native_bf16(device) else "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(args.seed)
    train_images, train_labels = read_folder(args.data_dir / "train")
    test_images, test_labels = read_folder(args.data_dir / "test")
    train_x = normalise(train_images.to(device), dtype)
    test_x = normalise(test_images.to(device), dtype)
    whiten_images = train_x[mixed_sample(train_labels, WHITEN_IMAGES, args.seed).to(device)]
    loader = TrainLoader(train_x, train_labels.to(device), args.batch_size)
    model, seconds = train_fn(loader, args.epochs, device, precision, whiten_images)
    test_y = test_labels.to(device)
    result = {"seed": args.seed, "train_seconds": round(seconds, 1),
              "test_acc": evaluate(model, test_x, test_y, False, device, precision),
              "test_acc_tta": evaluate(model, test_x, test_y, True, device, precision),
              "epochs": args.epochs, "batch_size": args.batch_size, "precision": precision,
              "device": str(device), "torch": torch.__version__}
    print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


class EpochClock:
    """Sums the wall-clock seconds of the timed sections, as airbench sums its CUDA-event intervals."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self._start = device, 0.0, 0.0

    def __enter__(self) -> EpochClock:
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
