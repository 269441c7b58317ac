"""airbench94 (Keller Jordan, 2024), the published recipe re-implemented for the CPU or a GPU: a reference
`--recipe fast` is measured against.

From the published airbench94.py: batch 1024, 9.9 epochs, SGD with Nesterov momentum 0.85, lr 11.5 and
weight decay 0.0153 per 1024 summed-loss images, the batch-norm biases (only parameters named `norm`) at
64x the rate and everything else (the whitening bias included) at the base rate, the triangular schedule
(0.2 -> 1 at 23% -> 0.07), label smoothing 0.2, the whitening bias trained for the first 3 epochs,
lookahead towards a running average every 5 steps, the head scaled by 1/9, flip-and-translate
test-time augmentation. What is shared with airbench94_muon and what the device changes:
tools/airbench_reference.py.

    python tools/airbench94.py --data-dir data/cifar10-jpg --seed 0 --json airbench94-s0.json

Prints and writes the test accuracy (with and without TTA) and the training seconds.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from airbench_reference import EpochClock, Net, TrainLoader, main, train_steps
from torch import nn

HYP = {"epochs": 9.9, "batch_size": 1024, "lr": 11.5, "momentum": 0.85, "weight_decay": 0.0153,
       "bias_scaler": 64.0, "label_smoothing": 0.2, "whiten_bias_epochs": 3, "scaling_factor": 1 / 9}


def optimizer_for(model: nn.Module, batch_size: int) -> torch.optim.SGD:
    """The published parameter groups: parameters named `norm` (the batch-norm biases) at 64x the rate;
    all the others, the whitening bias among them, at the base rate."""
    momentum = HYP["momentum"]
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = HYP["lr"] / kilostep_scale, HYP["weight_decay"] * batch_size / kilostep_scale
    lr_biases = lr * HYP["bias_scaler"]
    norm_biases = [p for n, p in model.named_parameters() if "norm" in n and p.requires_grad]
    others = [p for n, p in model.named_parameters() if "norm" not in n and p.requires_grad]
    groups = [{"params": norm_biases, "lr": lr_biases, "weight_decay": wd / lr_biases},
              {"params": others, "lr": lr, "weight_decay": wd / lr}]
    optimizer = torch.optim.SGD(groups, momentum=momentum, nesterov=True)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


class Lookahead:
    """The published LookaheadState: every floating-point tensor of the state dict pulled towards, then set
    to, a running average."""

    def __init__(self, model: nn.Module) -> None:
        self.tensors = [t for t in model.state_dict().values() if t.dtype.is_floating_point]
        self.averages = [t.detach().clone() for t in self.tensors]

    @torch.no_grad()
    def update(self, decay: float) -> None:
        for average, tensor in zip(self.averages, self.tensors):
            average.lerp_(tensor, 1 - decay)
            tensor.copy_(average)


def train(loader: TrainLoader, epochs: float, device: torch.device, precision: str,
          whiten_images: torch.Tensor) -> tuple[nn.Module, float]:
    model = Net(HYP["scaling_factor"]).to(device, memory_format=torch.channels_last)
    clock = EpochClock(device)
    with clock:
        model.init_whiten(whiten_images)
    optimizer = optimizer_for(model, loader.batch_size)
    lookahead = Lookahead(model)
    total = math.ceil(epochs * len(loader))
    schedule = np.interp(np.arange(1 + total), [0, int(0.23 * total), total], [0.2, 1.0, 0.07])
    alpha = 0.95 ** 5 * (torch.arange(total + 1) / total) ** 3

    def update(step: int, total: int, whiten_bias_steps: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * schedule[step]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 5 == 0:
            lookahead.update(alpha[step + 1].item())
        if step + 1 >= total:
            lookahead.update(1.0)  # the averaged weights are the final ones

    train_steps(model, loader, epochs, clock, device, precision, HYP["whiten_bias_epochs"], HYP["label_smoothing"],
                update)
    return model, clock.seconds


if __name__ == "__main__":
    main(__doc__.split("\n\n")[0], train, HYP["epochs"], HYP["batch_size"])
