"""The training loop: epochs of training and validation, checkpoints, early stopping, then the kept
weights on the test set. One epoch reads top to bottom here (`_run_epoch`); the passes over the data
themselves are in `passes.py`.

Nothing here knows MLflow: everything goes through the `RunLogger` it is given.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cifar_mlflow import distributed, metrics, plots
from cifar_mlflow.config import config_to_dict
from cifar_mlflow.core.checkpoint import CheckpointWriter, TrainingState
from cifar_mlflow.core.optimizers import Lookahead, build_optimizer, build_schedule
from cifar_mlflow.core.passes import Evaluation, evaluate, gradient_scaler, training_pass
from cifar_mlflow.core.prepare import Prepared
from cifar_mlflow.core.run_logger import NullLogger, RunLogger
from cifar_mlflow.data.augment import BatchTransform
from cifar_mlflow.data.hardest import HardestImages
from cifar_mlflow.data.loader import DeviceLoader
from cifar_mlflow.models.inference import with_tta
from cifar_mlflow.redaction import redact

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """What a finished run produced."""

    history: list[dict[str, float]]
    best_epoch: int
    best_val_acc: float
    test: Evaluation
    metrics: dict[str, float]  # the final metrics as logged
    stopped_early: bool = False
    model: nn.Module | None = field(default=None, repr=False)
    # Wall seconds of the run's phases, where `train.run` ran it: opening (params, tags, inputs), fitting
    # (epochs, the final test, the queued metrics stored) and the report and model after it.
    phase_seconds: dict[str, float] = field(default_factory=dict)


def _epoch_line(row: dict[str, float], epochs: int) -> str:
    val = f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}  " if "val_acc" in row else ""
    return (f"epoch {int(row['epoch'])}/{epochs}  train_loss {row['train_loss']:.4f}  train_acc "
            f"{row['train_acc']:.4f}  {val}lr {row['lr']:.3g}  {row['epoch_seconds']:.1f}s  "
            f"{row['train_images_per_second']:.0f} img/s")


@dataclass
class _Loop:
    """What one training run iterates with, built from a `Prepared`."""

    train_loader: DeviceLoader
    val_loader: DeviceLoader | None  # None without a validation split
    test_loader: DeviceLoader
    optimizer: torch.optim.Optimizer
    schedule: Any
    lookahead: Lookahead | None
    loss_fn: nn.Module
    train_model: nn.Module  # the model, wrapped for torchrun and torch.compile where asked
    scaler: torch.amp.GradScaler  # fp16's gradient scaler, kept from epoch to epoch; a pass-through otherwise


def _build_loop(prepared: Prepared) -> _Loop:
    config, data, device, model = prepared.config, prepared.data, prepared.device, prepared.model
    layout = {"channels_last": prepared.channels_last}
    shard = {"rank": distributed.rank(), "world_size": distributed.world_size()}  # under torchrun: this process's part
    augment = BatchTransform(config.augment, data.mean, data.std, data.hflip_ok, flip=config.flip)
    hardest = (HardestImages(len(data.train), config.hard_fraction, config.hard_from_epoch - 1, device)
               if config.hard_fraction < 1.0 else None)
    train_loader = DeviceLoader(data.train, config.batch_size, augment, device, shuffle=True, seed=config.seed,
                                hardest=hardest, **layout, **shard)
    plain = BatchTransform("none", data.mean, data.std)
    eval_batch = max(config.batch_size, 256)
    # No validation split (the tuner's retraining on train + validation): no val metrics, no early
    # stopping, and the last epoch's weights are final.
    val_loader = (DeviceLoader(data.val, eval_batch, plain, device, shuffle=False, **layout, **shard)
                  if len(data.val) > 0 else None)
    test_loader = DeviceLoader(data.test, eval_batch, plain, device, shuffle=False, **layout)
    optimizer = build_optimizer(config, model, prepared.precision)
    total_steps = sum(train_loader.steps_in_pass(p) for p in range(config.epochs))
    schedule = build_schedule(config, optimizer, len(train_loader), total_steps)
    lookahead = Lookahead(model, total_steps) if config.lookahead else None
    train_model = model
    if distributed.world_size() > 1:  # gradients averaged across ranks; buffers follow rank 0
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        train_model = torch.compile(train_model)
    return _Loop(train_loader, val_loader, test_loader, optimizer, schedule, lookahead,
                 nn.CrossEntropyLoss(label_smoothing=config.label_smoothing), train_model,
                 gradient_scaler(device, prepared.precision))


def _run_epoch(prepared: Prepared, loop: _Loop, epoch: int) -> tuple[dict[str, float], Evaluation | None]:
    """One epoch of training, then validation; the schedule stepped. Returns the epoch's row."""
    config = prepared.config
    lr = loop.optimizer.param_groups[0]["lr"]
    stats = training_pass(loop.train_model, loop.train_loader, loop.optimizer, loop.schedule, loop.loss_fn,
                          epoch=epoch, epochs=config.epochs, grad_clip=config.grad_clip,
                          progress=config.progress and distributed.is_main(), lookahead=loop.lookahead,
                          precision=prepared.precision, scaler=loop.scaler,
                          low_res_epochs=config.low_res_epochs, low_res_size=config.low_res_size)
    row = {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.acc, "lr": lr,
           "epoch_seconds": stats.seconds, "epoch_images": stats.images,
           "train_images_per_second": stats.images / max(stats.seconds, 1e-9)}
    if loop.val_loader is None:
        loop.schedule.step_epoch(stats.loss)
        return row, None
    val = evaluate(with_tta(loop.train_model, config.tta), loop.val_loader, prepared.precision)
    loop.schedule.step_epoch(val.loss)
    row.update(val_loss=val.loss, val_acc=val.acc)
    return row, val


def fit(prepared: Prepared, *, logger: RunLogger | None = None, callbacks: Sequence[EpochCallback] = (),
        checkpoint_file: Path | None = None, resume_state: dict[str, Any] | None = None) -> TrainResult:
    """Train with per-epoch validation, then evaluate the best epoch's weights on the test set.

    Args:
        prepared: from `prepare`.
        logger: where the epochs' metrics and images and the final metrics go (the run opens on its
            first use, if `start` has not opened it).
        callbacks: called as `callback(epoch, metrics)` after every epoch; may raise to stop
            (the tuner's pruning).
        checkpoint_file: where the resumable checkpoint is written after every epoch.
        resume_state: a checkpoint to continue from.
    """
    logger = logger or NullLogger()
    config = prepared.config
    loop = _build_loop(prepared)
    state = TrainingState(config=redact(config_to_dict(config)), model=prepared.model, optimizer=loop.optimizer,
                          schedule=loop.schedule, lookahead=loop.lookahead, loader=loop.train_loader,
                          data_digest=prepared.data.digest)
    if resume_state is not None:
        state.load_state_dict(resume_state)
        logger.log_past_epochs(state.history)
    main_process = distributed.is_main()
    writer = CheckpointWriter(checkpoint_file) if checkpoint_file is not None and main_process else None
    stopped_early = False
    try:
        for epoch in range(state.epoch + 1, config.epochs + 1):
            row, val = _run_epoch(prepared, loop, epoch)
            state.end_epoch(row, *((val.acc, val.loss) if val is not None else ()))
            # The epoch's metrics go once its checkpoint is on disk: a process killed in between leaves an
            # epoch the checkpoint has and the store lacks (`log_past_epochs` sends it on resume), never
            # one the store has and a resume trains again (two points at one step).
            if writer is not None:
                writer.submit(state.state_dict(), then=functools.partial(logger.log_epoch, epoch, row))
            else:
                logger.log_epoch(epoch, row)
            if val is not None and main_process:  # the classes being learned, epoch by epoch
                data = prepared.data
                cm = metrics.confusion_matrix(val.labels, val.predictions, data.num_classes)
                logger.log_epoch_image(epoch, "confusion_matrix", plots.confusion_matrix_image(cm, data.classes))
            if main_process:
                tqdm.write(_epoch_line(row, config.epochs), file=sys.stderr)
            for callback in callbacks:
                callback(epoch, row)
            if val is not None and config.patience and epoch - state.best.epoch >= config.patience:
                tqdm.write(f"early stopping: val_acc has not improved for {config.patience} epochs "
                           f"(best {state.best.val_acc:.4f} at epoch {state.best.epoch})", file=sys.stderr)
                stopped_early = True
                break
    except BaseException:
        if writer is not None:  # the last checkpoint goes to disk; what stopped training is what is raised
            _close_after(writer)
        raise
    if writer is not None:
        writer.close()  # the last epoch's checkpoint is on disk before the run goes on
    return _final_test(prepared, loop, state, logger, stopped_early)


def _close_after(writer: CheckpointWriter) -> None:
    """Close `writer` while another exception (a Ctrl-C, a crash) is on its way: an error from the writer
    (the store refusing the last epoch's metrics) is said in one line instead of replacing it."""
    try:
        writer.close()
    except Exception as exc:  # noqa: BLE001 - the exception in flight is the one the caller must see
        print(f"warning: training stopped; then the last epoch's checkpoint writer failed too: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)


def _final_test(prepared: Prepared, loop: _Loop, state: TrainingState, logger: RunLogger,
                stopped_early: bool) -> TrainResult:
    """The kept weights (lookahead's average, the best epoch's) on the test set, logged and printed."""
    model, best, data = prepared.model, state.best, prepared.data
    if loop.lookahead is not None:
        loop.lookahead.finish()  # the averaged weights are the final ones
    if best.state is not None:
        model.load_state_dict(best.state)  # the final test uses the best epoch's weights
    # In fp32, as the logged model computes: its predictions give exactly the reported test_acc.
    test = evaluate(with_tta(model, prepared.config.tta), loop.test_loader)
    final = {"test_loss": test.loss, "test_acc": test.acc, "best_epoch": float(best.epoch),
             "epochs_trained": float(len(state.history)),
             **metrics.final_metrics(test.labels, test.predictions, data.classes)}
    has_val = loop.val_loader is not None
    if has_val:
        final["best_val_acc"] = best.val_acc
    logger.log_metrics(final)
    chosen = f"best epoch {best.epoch}, val_acc {best.val_acc:.4f}" if has_val else f"last epoch {best.epoch}"
    if distributed.is_main():
        tqdm.write(f"test_acc {test.acc:.4f}  test_loss {test.loss:.4f}  ({chosen})", file=sys.stderr)
    return TrainResult(state.history, best.epoch, best.val_acc, test, final, stopped_early, model)
