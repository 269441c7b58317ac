"""Optimizers and learning-rate schedules, built from the config by name."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.hardware import select_precision


def _param_groups(model: nn.Module, lr: float, weight_decay: float, leave_out: set[int] = frozenset()) -> list[dict]:
    """Weight decay on weights only: biases and normalisation parameters (ndim <= 1) are not decayed.

    A parameter with an `lr_scale` attribute (airbench's batch-norm biases) trains at `lr * lr_scale`; one
    with a `wd_scale` attribute is decayed at `weight_decay * wd_scale`, whatever its shape (airbench's
    `decay_biases`). Parameters whose `id` is in `leave_out` are left to another optimizer.
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad and id(p) not in leave_out:
            decay = float(getattr(p, "wd_scale", 1.0 if p.ndim > 1 else 0.0))
            groups.setdefault((decay, float(getattr(p, "lr_scale", 1.0))), []).append(p)
    return [{"params": params, "lr": lr * scale, "weight_decay": weight_decay * decay}
            for (decay, scale), params in sorted(groups.items(), key=lambda item: (-item[0][0], item[0][1]))]


_OPTIMIZERS: dict[str, Callable[[list[dict], TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda groups, c: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum,
                                             nesterov=c.nesterov and c.momentum > 0),
    "adam": lambda groups, c: torch.optim.Adam(groups, lr=c.lr),
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c.lr),
}


def _muon(config: TrainConfig, model: nn.Module, precision: str | None) -> torch.optim.Optimizer:
    """Muon at `muon_lr` on the hidden layers' weights, SGD at `lr` on everything else. Its Newton-Schulz
    iteration computes in the run's precision (bf16, as PyTorch's always does, or fp32 where bf16 is
    emulated: an order of magnitude faster there); `precision` None: as `--precision auto` picks it
    for the model's device."""
    if not hasattr(torch.optim, "Muon"):
        raise ConfigError("--optimizer muon needs PyTorch 2.9 or later (torch.optim.Muon); "
                          f"this is {torch.__version__}")
    from cifar_mlflow.core.muon import MuonWithSGD, hidden_weights

    hidden = hidden_weights(model)
    if not hidden:
        raise ConfigError(f"--optimizer muon: {config.arch} has no hidden weight matrices or filter banks to train "
                          "(only a first and a last layer); use sgd, adam or adamw")
    muon_groups = [{"params": hidden, "lr": config.muon_lr, "weight_decay": config.weight_decay}]
    sgd_groups = _param_groups(model, config.lr, config.weight_decay, leave_out={id(p) for p in hidden})
    if precision is None:
        precision = select_precision("auto", hidden[0].device)
    return MuonWithSGD(sgd_groups, muon_groups, momentum=config.momentum, nesterov=config.nesterov,
                       muon_momentum=config.muon_momentum, ns_steps=config.muon_ns_steps, renorm=config.muon_renorm,
                       newton_schulz_dtype=torch.bfloat16 if precision == "bf16" else torch.float32)


def build_optimizer(config: TrainConfig, model: nn.Module, precision: str | None = None) -> torch.optim.Optimizer:
    """The optimizer `config` names for `model`; `precision` (bf16 or fp32) is the run's, which Muon's
    orthogonalisation follows."""
    if config.optimizer == "muon":
        return _muon(config, model, precision)
    return _OPTIMIZERS[config.optimizer](_param_groups(model, config.lr, config.weight_decay), config)


@dataclass
class Schedule:
    """A learning-rate scheduler and when to step it."""

    scheduler: object | None
    per_batch: bool  # step after every batch (onecycle, cosine) or after every epoch
    needs_metric: bool = False  # plateau: step with the validation loss

    def step_batch(self) -> None:
        if self.scheduler is not None and self.per_batch:
            self.scheduler.step()

    def step_epoch(self, val_loss: float) -> None:
        if self.scheduler is None or self.per_batch:
            return
        if self.needs_metric:
            self.scheduler.step(val_loss)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)


def _warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# The linear schedule (airbench's): from 0.2x up to the peak, then straight down to `--lr-end` (airbench94's
# 0.07x by default).
LINEAR_START = 0.2


def _warmup_linear(total: int, warmup: int, end: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return LINEAR_START + (1.0 - LINEAR_START) * step / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 1.0 + (end - 1.0) * min(1.0, progress)

    return factor


def build_schedule(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                   total_steps: int | None = None) -> Schedule:
    """The learning-rate schedule over `total_steps` (default: `--epochs` x `steps_per_epoch`; fewer where later
    epochs train on the hardest images only); warm-up counts in epochs of `steps_per_epoch`."""
    total = config.epochs * steps_per_epoch if total_steps is None else total_steps
    name = config.scheduler
    if name == "onecycle":
        if total < 4:  # too few steps for a rise and a fall (OneCycleLR divides by zero): constant lr
            return Schedule(None, per_batch=False)
        # A quarter of the run rising, and at least two steps, so each phase has a length.
        pct_start = min(0.5, max(0.25, 2 / total))
        peaks = [group["lr"] for group in optimizer.param_groups]  # each group's own (lr_scale)
        sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total,
                                                    pct_start=pct_start, anneal_strategy="linear")
        return Schedule(sched, per_batch=True)
    if name in ("cosine", "linear"):
        warmup = int(round(config.warmup_epochs * steps_per_epoch))
        shape = _warmup_cosine(total, warmup) if name == "cosine" else _warmup_linear(total, warmup, config.lr_end)
        return Schedule(torch.optim.lr_scheduler.LambdaLR(optimizer, shape), per_batch=True)
    if name == "step":
        step_size = config.lr_step_size or max(1, config.epochs // 3)
        return Schedule(torch.optim.lr_scheduler.StepLR(optimizer, step_size, gamma=config.lr_gamma), per_batch=False)
    if name == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.lr_gamma,
                                                           patience=config.lr_patience)
        return Schedule(sched, per_batch=False, needs_metric=True)
    return Schedule(None, per_batch=False)


class Lookahead:
    """airbench's lookahead: every `every` steps, the weights and batch-norm statistics move to a
    running average of themselves, `ema = decay * ema + (1 - decay) * weights; weights = ema`, with
    `decay = base * progress**3` growing from 0 to `base` over the run; `finish` ends on the average.
    """

    def __init__(self, model: nn.Module, total_steps: int, every: int = 5, base: float = 0.95 ** 5) -> None:
        self.tensors = [t for t in model.state_dict().values() if t.dtype.is_floating_point]
        self.ema = [t.detach().clone() for t in self.tensors]
        self.total_steps, self.every, self.base = max(total_steps, 1), every, base
        self.steps = 0

    @torch.no_grad()
    def _update(self, decay: float) -> None:
        for ema, tensor in zip(self.ema, self.tensors):
            ema.lerp_(tensor, 1.0 - decay)
            tensor.copy_(ema)

    def step(self) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            self._update(self.base * min(1.0, self.steps / self.total_steps) ** 3)

    def finish(self) -> None:
        self._update(1.0)

    def state_dict(self) -> dict:
        """References to the averages, as `nn.Module.state_dict` gives (the checkpoint writer copies them)."""
        return {"steps": self.steps, "ema": list(self.ema)}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        for ema, saved in zip(self.ema, state["ema"]):
            ema.copy_(saved)
