"""airbench94_muon (Keller Jordan, 2024), the published recipe re-implemented for the CPU or a GPU: a
reference `--recipe fast` is measured against.

From the published airbench94_muon.py: batch 2000, 8 epochs, the filter banks (the 3x3 convolutions)
trained with Muon (lr 0.24, Nesterov momentum 0.6, each filter bank renormalised to norm sqrt(out
channels) before its step, the update orthogonalised by 3 quintic Newton-Schulz iterations in bf16),
SGD with Nesterov momentum 0.85 on the whitening bias and batch-norm biases (lr 0.053) and the head
(lr 0.67), decoupled weight decay 2e-6 per image of the batch, every rate decaying linearly to zero
over the run (the whitening bias's over its first 3 epochs, then frozen), label smoothing 0.2 on a
summed loss, the head's weights at unit standard deviation and its output divided by its 256 inputs,
no lookahead, flip-and-translate test-time augmentation. What is shared with airbench94 and what the
device changes: tools/airbench_reference.py. torch.compile is not used (airbench94_muon compiles on the
GPU; on the CPU its compile time would be counted outside the clock, as airbench counts it).

    python tools/airbench94_muon.py --data-dir data/cifar10-jpg --seed 0 --json airbench94_muon-s0.json

Prints and writes the test accuracy (with and without TTA) and the training seconds.
"""

from __future__ import annotations

import torch
from airbench_reference import EpochClock, Net, TrainLoader, main, train_steps
from torch import nn

HYP = {"epochs": 8, "batch_size": 2000, "bias_lr": 0.053, "head_lr": 0.67, "muon_lr": 0.24, "muon_momentum": 0.6,
       "sgd_momentum": 0.85, "weight_decay_per_image": 2e-6, "label_smoothing": 0.2, "whiten_bias_epochs": 3}


def newton_schulz(grad: torch.Tensor, steps: int = 3, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """An approximately orthogonal matrix with `grad`'s singular vectors (singular values about 0.5-1.5):
    the published quintic iteration, coefficients (3.4445, -4.7750, 2.0315), in bf16 as published (`dtype`:
    fp32 for the tests that compare steps)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = grad.to(dtype)
    x = x / (x.norm() + eps)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """The published Muon: Nesterov momentum, weight renormalisation, an orthogonalised update."""

    def __init__(self, params, lr: float, momentum: float, nesterov: bool = True) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.mul_(len(p) ** 0.5 / p.norm())
                p.add_(newton_schulz(g.reshape(len(g), -1)).view(g.shape).to(p.dtype), alpha=-group["lr"])


def optimizers_for(model: nn.Module, batch_size: int) -> tuple[torch.optim.SGD, Muon]:
    wd = HYP["weight_decay_per_image"] * batch_size
    bias_lr, head_lr = HYP["bias_lr"], HYP["head_lr"]
    filters = [p for p in model.parameters() if p.ndim == 4 and p.requires_grad]
    norm_biases = [p for n, p in model.named_parameters() if "norm" in n and p.requires_grad]
    sgd = torch.optim.SGD([{"params": [model.whiten.bias], "lr": bias_lr, "weight_decay": wd / bias_lr},
                           {"params": norm_biases, "lr": bias_lr, "weight_decay": wd / bias_lr},
                           {"params": [model.head.weight], "lr": head_lr, "weight_decay": wd / head_lr}],
                          momentum=HYP["sgd_momentum"], nesterov=True)
    muon = Muon(filters, lr=HYP["muon_lr"], momentum=HYP["muon_momentum"], nesterov=True)
    for optimizer in (sgd, muon):
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    return sgd, muon


def train(loader: TrainLoader, epochs: float, device: torch.device, precision: str,
          whiten_images: torch.Tensor) -> tuple[nn.Module, float]:
    model = Net(None).to(device, memory_format=torch.channels_last)
    clock = EpochClock(device)
    with clock:
        model.init_whiten(whiten_images)
    sgd, muon = optimizers_for(model, loader.batch_size)

    def update(step: int, total: int, whiten_bias_steps: int) -> None:
        sgd.param_groups[0]["lr"] = sgd.param_groups[0]["initial_lr"] * (1 - step / whiten_bias_steps)
        for group in sgd.param_groups[1:] + muon.param_groups:
            group["lr"] = group["initial_lr"] * (1 - step / total)
        sgd.step()
        muon.step()
        model.zero_grad(set_to_none=True)

    train_steps(model, loader, epochs, clock, device, precision, HYP["whiten_bias_epochs"], HYP["label_smoothing"],
                update)
    return model, clock.seconds


if __name__ == "__main__":
    main(__doc__.split("\n\n")[0], train, HYP["epochs"], HYP["batch_size"])
