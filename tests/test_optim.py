"""Optimizers and learning-rate schedules as the config names them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.core.optimizers import build_optimizer, build_schedule


def lrs(config: TrainConfig, steps_per_epoch: int = 10, val_losses: list[float] | None = None) -> list[float]:
    """The lr at the start of every epoch, stepping the schedule as the training loop does."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    optimizer = build_optimizer(config, model)
    schedule = build_schedule(config, optimizer, steps_per_epoch)
    seen = []
    for epoch in range(config.epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        for _ in range(steps_per_epoch):
            optimizer.step()
            schedule.step_batch()
        schedule.step_epoch(val_losses[epoch] if val_losses else 1.0)
    return seen


def config(**kw) -> TrainConfig:
    return TrainConfig(**{"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "epochs": 8, "momentum": 0.9,
                          "warmup_epochs": 1.0, **kw})


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
def test_optimizers_and_no_decay_on_norm_and_bias(name, cls) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    optimizer = build_optimizer(config(optimizer=name), model)
    assert isinstance(optimizer, cls)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 5e-4 and [p.ndim for p in decay["params"]] == [2]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3  # linear bias, bn weight and bias


def test_sgd_momentum_and_nesterov() -> None:
    optimizer = build_optimizer(config(momentum=0.8, nesterov=True), nn.Linear(2, 2))
    assert optimizer.defaults["momentum"] == 0.8 and optimizer.defaults["nesterov"] is True


def test_onecycle_rises_to_the_peak_then_anneals() -> None:
    seen = lrs(config(scheduler="onecycle"))
    peak = max(seen)
    assert seen[0] < 0.01 and 0.08 < peak <= 0.1 and seen[-1] < 0.02
    assert seen.index(peak) in (2, 3)  # a quarter of the way in


def test_cosine_warms_up_then_decays() -> None:
    seen = lrs(config(scheduler="cosine", warmup_epochs=1))
    assert seen[0] == pytest.approx(0.01)  # first of ten warm-up steps
    assert seen[1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(seen[1:], seen[2:]))


def test_step_decays_every_third_of_the_run() -> None:
    seen = lrs(config(scheduler="step", epochs=9, lr_gamma=0.5))
    assert seen == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3)


def test_plateau_decays_when_validation_loss_stalls() -> None:
    seen = lrs(config(scheduler="plateau", epochs=6, lr_patience=1, lr_gamma=0.1),
               val_losses=[1.0, 0.9, 0.9, 0.9, 0.9, 0.9])
    assert seen[:3] == pytest.approx([0.1, 0.1, 0.1]) and seen[-1] < 0.1


def test_none_keeps_the_lr() -> None:
    assert lrs(config(scheduler="none")) == pytest.approx([0.1] * 8)


@pytest.mark.parametrize("epochs, steps", [(1, 1), (1, 3), (1, 4), (1, 5), (2, 3)])
def test_onecycle_survives_very_short_runs(epochs, steps) -> None:
    seen = lrs(config(scheduler="onecycle", epochs=epochs), steps_per_epoch=steps)
    assert len(seen) == epochs and all(0 < lr <= 0.1 for lr in seen)
