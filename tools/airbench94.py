"""airbench94 (Keller Jordan, 2024) on the CPU, the baseline `--recipe fast` is measured against.

Re-implemented from its published description (the airbench94 paper and README): the net, its
hyperparameters, alternating flips, 2-pixel translation, lookahead, the whitening bias trained for
3 epochs, the triangular schedule and flip-and-translate test-time augmentation. Changed only where
the device forces it: bf16 autocast instead of fp16 (CPUs with bf16), wall-clock timing, and images
read from an ImageFolder (train/, test/) instead of the pickled batches. It imports nothing of
cifar_mlflow, so the comparison does not share our code.

    python tools/airbench94.py --data-dir data/cifar10-jpg --seed 0 --json airbench94-s0.json

Prints and writes the test accuracy (with and without TTA) and the training seconds (the sum of
the epochs, evaluation excluded, as airbench times itself).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

HYP = {"epochs": 9.9, "batch_size": 1024, "lr": 11.5, "momentum": 0.85, "weight_decay": 0.0153,
       "bias_scaler": 64.0, "label_smoothing": 0.2, "whiten_bias_epochs": 3, "translate": 2,
       "widths": (64, 256, 256), "bn_momentum": 0.6, "scaling_factor": 1 / 9}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def read_folder(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(label)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, channels: int) -> None:
        super().__init__(channels, momentum=1 - HYP["bn_momentum"], eps=1e-12)
        self.weight.requires_grad = False  # scale fixed at 1: only the bias learns


class Conv(nn.Conv2d):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.dirac_(self.weight.data[:self.in_channels])


def conv_group(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(Conv(cin, cout), nn.MaxPool2d(2), BatchNorm(cout), nn.GELU(),
                         Conv(cout, cout), BatchNorm(cout), nn.GELU())


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        w1, w2, w3 = HYP["widths"]
        self.whiten = nn.Conv2d(3, 24, kernel_size=2, padding=0, bias=True)
        self.body = nn.Sequential(nn.GELU(), conv_group(24, w1), conv_group(w1, w2), conv_group(w2, w3),
                                  nn.MaxPool2d(3), nn.Flatten())
        self.head = nn.Linear(w3, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.whiten(x))) * HYP["scaling_factor"]

    @torch.no_grad()
    def init_whiten(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        patches = images.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 3, 2, 2).float()
        patches = patches.flatten(1) - patches.flatten(1).mean(0)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).view(-1, 3, 2, 2)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))


def batches(images: torch.Tensor, labels: torch.Tensor, epoch: int, gen: torch.Generator):
    """Alternating flips (a random half in epoch 0, then every image mirrored in every other epoch) and a
    random translation by up to 2 pixels (reflect padding), shuffled, whole batches only."""
    n, pad = len(images), HYP["translate"]
    if epoch == 0:
        batches.flip_mask = torch.rand(n, generator=gen) < 0.5
    flips = batches.flip_mask if epoch % 2 == 0 else ~batches.flip_mask
    order = torch.randperm(n, generator=gen)
    size = HYP["batch_size"]
    for start in range(0, n - size + 1, size):
        index = order[start:start + size]
        x = images[index]
        x = torch.where(flips[index].view(-1, 1, 1, 1), x.flip(-1), x)
        padded = F.pad(x, (pad,) * 4, mode="reflect")
        shift_y, shift_x = torch.randint(0, 2 * pad + 1, (2, len(x)), generator=gen)  # a shift per image
        out = torch.empty_like(x)
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                chosen = (shift_y == dy) & (shift_x == dx)
                out[chosen] = padded[chosen, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
        yield out.contiguous(memory_format=torch.channels_last), labels[index]


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, tta: bool) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), 2000):
        x = images[start:start + 2000].contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if not tta:
                logits = model(x).float()
            else:
                padded = F.pad(x, (1,) * 4, mode="reflect")
                views = [x, x.flip(-1)]
                shifted = [padded[..., :-2, :-2], padded[..., 2:, 2:]]
                views += shifted + [v.flip(-1) for v in shifted]
                outs = [model(v.contiguous(memory_format=torch.channels_last)).float() for v in views]
                logits = 0.25 * (outs[0] + outs[1]) + 0.125 * sum(outs[2:])
        correct += int((logits.argmax(1) == labels[start:start + 2000]).sum())
    return correct / len(images)


def train(data_dir: Path, seed: int) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_images, train_labels = read_folder(data_dir / "train")
    test_images, test_labels = read_folder(data_dir / "test")
    train_x, test_x = normalise(train_images), normalise(test_images)
    model = Net().to(memory_format=torch.channels_last)
    model.init_whiten(train_x[:5000])
    size, momentum = HYP["batch_size"], HYP["momentum"]
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = HYP["lr"] / kilostep_scale, HYP["weight_decay"] * size / kilostep_scale
    lr_biases = lr * HYP["bias_scaler"]
    norm_biases = [p for n, p in model.named_parameters() if "bias" in n and p.requires_grad and p.ndim == 1
                   and not n.startswith("whiten")] + [model.whiten.bias]
    others = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in norm_biases)]
    optimizer = torch.optim.SGD([{"params": norm_biases, "lr": lr_biases, "weight_decay": wd / lr_biases},
                                 {"params": others, "lr": lr, "weight_decay": wd / lr}],
                                momentum=momentum, nesterov=True)
    steps_per_epoch = len(train_x) // size
    total = math.ceil(HYP["epochs"] * steps_per_epoch)
    schedule = np.interp(np.arange(total + 1), [0, int(0.23 * total), total], [0.2, 1.0, 0.07])
    initial = [group["lr"] for group in optimizer.param_groups]
    averages = [t.detach().clone() for t in model.state_dict().values() if t.dtype.is_floating_point]
    tensors = [t for t in model.state_dict().values() if t.dtype.is_floating_point]
    step, seconds = 0, 0.0
    for epoch in range(math.ceil(HYP["epochs"])):
        model.whiten.bias.requires_grad = epoch < HYP["whiten_bias_epochs"]
        model.train()
        start = time.perf_counter()
        for x, y in batches(train_x, train_labels, epoch, gen):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x).float(), y, label_smoothing=HYP["label_smoothing"], reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group, base in zip(optimizer.param_groups, initial):
                group["lr"] = base * schedule[step]
            optimizer.step()
            step += 1
            if step % 5 == 0:  # lookahead: towards a running average whose weight grows over the run
                decay = 0.95 ** 5 * (step / total) ** 3
                with torch.no_grad():
                    for average, tensor in zip(averages, tensors):
                        average.lerp_(tensor, 1 - decay)
                        tensor.copy_(average)
            if step >= total:
                break
        seconds += time.perf_counter() - start
        print(f"epoch {epoch + 1}: {seconds:.0f} s so far, loss {loss.item() / size:.4f}", flush=True)
        if step >= total:
            break
    with torch.no_grad():
        for average, tensor in zip(averages, tensors):
            tensor.copy_(average)
    return {"seed": seed, "train_seconds": round(seconds, 1), "test_acc": evaluate(model, test_x, test_labels, False),
            "test_acc_tta": evaluate(model, test_x, test_labels, True), "epochs": HYP["epochs"],
            "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="ImageFolder root with train/ and test/")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args()
    result = train(args.data_dir, args.seed)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
