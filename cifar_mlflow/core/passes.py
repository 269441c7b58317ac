"""The passes over the data: one training pass (an epoch's steps) and one evaluation pass. Tensors in, numbers out."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cifar_mlflow import distributed
from cifar_mlflow.core.optimizers import Lookahead, Schedule
from cifar_mlflow.data.loader import DeviceLoader
from cifar_mlflow.errors import NonFiniteLossError
from cifar_mlflow.hardware import synchronize

# How often (in steps) the loss is read back from the device for the progress bar and the
# non-finite check; reading it every step would make every step wait for the device.
_SYNC_EVERY = 20


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 or fp16 autocast on `device` for precision "bf16" or "fp16", nothing for "fp32"."""
    if precision in _AUTOCAST_DTYPES:
        return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


def gradient_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16's gradient scaler (the loss scaled up before backward so that small gradients survive fp16, a
    step skipped and the scale lowered when a gradient overflows); a pass-through for bf16 and fp32."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def _learning_for_a_while(model: nn.Module) -> list[tuple[nn.Parameter, float]]:
    """The parameters that learn for their first `train_epochs` epochs only (airbench's whitening bias), with
    that number."""
    return [(p, float(p.train_epochs)) for p in model.parameters() if hasattr(p, "train_epochs")]


@dataclass
class EpochStats:
    loss: float
    acc: float
    images: int
    seconds: float


def _check_finite(loss_value: float, epoch: int, step: int, lr: float) -> None:
    if not math.isfinite(loss_value):
        raise NonFiniteLossError(f"training loss became {loss_value} at epoch {epoch}, step {step} "
                                 f"(lr {lr:.3g}); lower --lr or set --grad-clip")


def downscaled(images: torch.Tensor, size: int) -> torch.Tensor:
    """A batch scaled down to `size` x `size`, antialiased (as an image library would shrink it), in its layout."""
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def training_pass(model: nn.Module, loader: DeviceLoader, optimizer: torch.optim.Optimizer,
                    schedule: Schedule, loss_fn: nn.Module, *, epoch: int, epochs: int,
                    grad_clip: float | None = None, progress: bool = True,
                    lookahead: Lookahead | None = None, precision: str = "fp32",
                    scaler: torch.amp.GradScaler | None = None, low_res_epochs: float = 0.0,
                    low_res_size: int | None = None) -> EpochStats:
    """Train for one pass over `loader` in `precision` (fp16: through `scaler`, by default a new one); raises
    `NonFiniteLossError` as soon as the loss is NaN/inf. While fewer than `low_res_epochs` epochs are done,
    batches are scaled down to `low_res_size` (progressive resizing)."""
    model.train()
    device = loader.device
    several_ranks = distributed.world_size() > 1
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    start = time.perf_counter()
    steps = len(loader)  # this pass's (fewer from the epoch that trains on the hardest images only)
    bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", leave=False, disable=not progress,
               unit="batch", dynamic_ncols=True)
    scaler = scaler if scaler is not None else gradient_scaler(device, precision)
    timed = _learning_for_a_while(model)
    for step, (images, labels) in enumerate(loader, start=1):
        epochs_done = epoch - 1 + (step - 1) / steps  # before this step
        if epochs_done < low_res_epochs:
            images = downscaled(images, low_res_size)
        time_up = [param for param, train_epochs in timed if epochs_done >= train_epochs]
        if not several_ranks:  # frozen, so backward skips the gradients only they needed (for airbench's
            # whitening bias, the first convolution's input gradient), as airbench detaches it; under torchrun
            # the set of parameters with gradients stays fixed, and their gradients are dropped below
            for param in time_up:
                param.requires_grad_(False)
        with autocast_for(device, precision):
            logits = model(images)
            loss = loss_fn(logits.float(), labels)
        if loader.hardest is not None:  # each image's loss, for the choice of the hardest ones
            loader.record_losses(F.cross_entropy(logits.detach().float(), labels, reduction="none"))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        for param in time_up:
            param.grad = None  # the optimizer leaves it as it is (no momentum, no decay)
        if grad_clip:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)  # skipped (fp16) where a gradient overflowed
        scaler.update()
        schedule.step_batch()
        if lookahead is not None:
            lookahead.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        bar.update(1)
        if step % _SYNC_EVERY == 0 or step == steps:
            running = loss_sum.item() / seen
            if not several_ranks:  # under torchrun, all ranks check the summed loss together, below
                _check_finite(running, epoch, step, optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{running:.4f}", acc=f"{correct.item() / seen:.4f}", refresh=False)
    bar.close()
    synchronize(device)
    seconds = time.perf_counter() - start
    totals = distributed.sum_across_ranks([loss_sum.item(), correct.item(), seen], device)
    total_loss, total_correct, total_seen = totals
    _check_finite(total_loss / max(total_seen, 1), epoch, steps, optimizer.param_groups[0]["lr"])
    return EpochStats(total_loss / max(total_seen, 1), total_correct / max(total_seen, 1), int(total_seen), seconds)


@dataclass
class Evaluation:
    loss: float
    acc: float
    logits: torch.Tensor  # (N, num_classes) float32, on the CPU
    labels: torch.Tensor  # (N,) int64, on the CPU

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(1)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, precision: str = "fp32") -> Evaluation:
    """Loss, accuracy and the logits of `model` on `loader` (no augmentation), computed in `precision`.

    The loss is the cross-entropy against the true labels, without the training criterion's label
    smoothing (as timm validates): smoothing raises the loss by an amount that grows with it, so
    with it runs and tuning trials that smooth differently could not be compared by their loss.

    Under torchrun, call it on every rank: loss and accuracy are over all ranks' shards of the split,
    the logits are this rank's.
    """
    model.eval()
    logits_all, labels_all = [], []
    for images, labels in loader:
        with autocast_for(loader.device, precision):
            logits = model(images)
        logits_all.append(logits.float())
        labels_all.append(labels)
    logits = torch.cat(logits_all)
    labels = torch.cat(labels_all)
    # Sums, so shards of a split evaluated by several ranks add up to the whole split's numbers.
    loss_sum, correct, count = distributed.sum_across_ranks(
        [F.cross_entropy(logits, labels, reduction="sum").item(), (logits.argmax(1) == labels).sum().item(),
         len(labels)],
        loader.device)
    return Evaluation(loss_sum / max(count, 1), correct / max(count, 1), logits.cpu(), labels.cpu())
