"""A whole training run: `prepare` (all validation, nothing created), then `run` (open the run, `fit`,
evaluate, report). The training command and every tuning trial call `prepare` and `run` (the command
checks the tracking server and the resume state between the two; the tuner shares one data set
among its trials); `train` is both in one call, for library use.

Nothing here knows MLflow: everything goes through the `RunLogger` it is given.
"""

from __future__ import annotations

import functools
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cifar_mlflow import distributed, metrics, plots
from cifar_mlflow.checkpoint import CheckpointWriter, TrainingState, checkpoint_path
from cifar_mlflow.config import TrainConfig, config_to_dict, resolve_config
from cifar_mlflow.data import BatchTransform, DataSplits, DeviceLoader, load_image_data, split_data
from cifar_mlflow.data.splits import init_sample
from cifar_mlflow.data.sources import SYNTHETIC_TEST, SYNTHETIC_TRAIN
from cifar_mlflow.engine import Evaluation, evaluate, train_one_epoch
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.hardware import select_device, select_precision, use_channels_last
from cifar_mlflow.logger import NullLogger, RunLogger
from cifar_mlflow.models import get_model
from cifar_mlflow.models.inference import with_tta
from cifar_mlflow.optim import Lookahead, build_optimizer, build_schedule
from cifar_mlflow.redaction import redact
from cifar_mlflow.run_record import log_report, log_trained_model, run_datasets, run_params, run_tags

EpochCallback = Callable[[int, dict[str, float]], None]
# Training images a model's `init_from_data` sees: a seeded, class-balanced sample (`init_sample`).
_INIT_IMAGES = 5000


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


@dataclass
class Prepared:
    """Everything checked and built before a run is opened anywhere."""

    config: TrainConfig  # resolved: recommendations filled in
    data: DataSplits
    model: nn.Module  # on `device`, lazy layers materialised, channels-last if it takes such batches
    device: torch.device
    precision: str  # what `--precision` resolved to here: bf16 (autocast) or fp32
    channels_last: bool  # batches are channels-last (the model accepts them)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def synthetic_size(config: TrainConfig) -> tuple[int, int]:
    """The synthetic set's (train, test) sizes: the full 50,000 / 10,000, or just enough for the caps."""
    num_train, num_test = SYNTHETIC_TRAIN, SYNTHETIC_TEST
    val_fraction = config.val_fraction or 0.0
    if config.max_train_samples and val_fraction < 1:
        num_train = min(num_train, math.ceil(config.max_train_samples / (1 - val_fraction)) + 1)
    if config.max_eval_samples:
        num_test = min(num_test, config.max_eval_samples)
    return num_train, num_test


def load_splits(config: TrainConfig) -> DataSplits:
    """The data set `config` names, read and split into train, validation and test."""
    images = load_image_data(config.dataset, config.data_dir, config.image_size, config.seed,
                             synthetic_size=synthetic_size(config))
    return split_data(images, val_fraction=config.val_fraction, seed=config.seed,
                      max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples)


def prepare(config: TrainConfig, data: DataSplits | None = None) -> Prepared:
    """Resolve and validate the config, load and split the data, build the model.

    Raises:
        ConfigError: for any bad input, before anything is created.
    """
    config = resolve_config(config)  # the architecture's name too, before the data set is read
    device = select_device(config.device)
    if device.type == "cuda" and distributed.world_size() > 1 and device.index is None:
        device = torch.device("cuda", distributed.local_rank())  # one GPU per torchrun process
    precision = select_precision(config.precision, device)  # before the data set is read, as the device
    seed_everything(config.seed, config.deterministic)
    if data is None:
        data = load_splits(config)
    model = get_model(config.arch, num_classes=data.num_classes, in_channels=data.image_shape[0],
                      **config.model_args)
    c, h, w = data.image_shape
    example = torch.zeros(2, c, h, w)
    model.eval()
    try:
        with torch.no_grad():  # materialises lazy layers; proves the model takes these images
            out = model(example)
    except Exception as exc:  # noqa: BLE001 - any failure here means the arch does not fit the data
        raise ConfigError(f"{config.arch} cannot take {c}x{h}x{w} images ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160]}); try --image-size or another arch") from None
    if tuple(out.shape) != (2, data.num_classes):
        raise ConfigError(f"{config.arch} returns shape {tuple(out.shape)[1:]} per image, expected "
                          f"({data.num_classes},) for {data.num_classes} classes")
    if config.tta != "none" and not data.hflip_ok:
        raise ConfigError(f"--tta {config.tta} averages over mirror images, which change the label in "
                          f"{config.dataset}; use --tta none")
    init_from_data = getattr(model, "init_from_data", None)
    if callable(init_from_data):  # data-dependent initialisation (airbench's patch whitening)
        sample = init_sample(data.train, _INIT_IMAGES, config.seed)
        init_from_data(BatchTransform("none", data.mean, data.std)(sample))
    channels_last = use_channels_last(model, example)
    model.to(device)
    return Prepared(config, data, model, device, precision, channels_last)


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


def _build_loop(prepared: Prepared) -> _Loop:
    config, data, device, model = prepared.config, prepared.data, prepared.device, prepared.model
    layout = {"channels_last": prepared.channels_last}
    shard = {"rank": distributed.rank(), "world_size": distributed.world_size()}  # under torchrun: this process's part
    augment = BatchTransform(config.augment, data.mean, data.std, data.hflip_ok, flip=config.flip)
    train_loader = DeviceLoader(data.train, config.batch_size, augment, device, shuffle=True, seed=config.seed,
                                **layout, **shard)
    plain = BatchTransform("none", data.mean, data.std)
    eval_batch = max(config.batch_size, 256)
    # No validation split (the tuner's retraining on train + validation): no val metrics, no early
    # stopping, and the last epoch's weights are final.
    val_loader = (DeviceLoader(data.val, eval_batch, plain, device, shuffle=False, **layout, **shard)
                  if len(data.val) > 0 else None)
    test_loader = DeviceLoader(data.test, eval_batch, plain, device, shuffle=False, **layout)
    optimizer = build_optimizer(config, model, prepared.precision)
    schedule = build_schedule(config, optimizer, len(train_loader))
    lookahead = Lookahead(model, config.epochs * len(train_loader)) if config.lookahead else None
    train_model = model
    if distributed.world_size() > 1:  # gradients averaged across ranks; buffers follow rank 0
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        train_model = torch.compile(train_model)
    return _Loop(train_loader, val_loader, test_loader, optimizer, schedule, lookahead,
                 nn.CrossEntropyLoss(label_smoothing=config.label_smoothing), train_model)


def _train_epoch(prepared: Prepared, loop: _Loop, epoch: int) -> tuple[dict[str, float], Evaluation | None]:
    """One epoch of training, then validation; the schedule stepped. Returns the epoch's row."""
    config = prepared.config
    lr = loop.optimizer.param_groups[0]["lr"]
    stats = train_one_epoch(loop.train_model, loop.train_loader, loop.optimizer, loop.schedule, loop.loss_fn,
                            epoch=epoch, epochs=config.epochs, grad_clip=config.grad_clip,
                            progress=config.progress and distributed.is_main(), lookahead=loop.lookahead,
                            precision=prepared.precision)
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
        logger: where params, metrics and artifacts go (`start` must have been called).
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
            row, val = _train_epoch(prepared, loop, epoch)
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


def run(prepared: Prepared, *, logger: RunLogger | None = None, callbacks: Sequence[EpochCallback] = (),
        checkpoint_dir: str | None = None, resume_state: dict[str, Any] | None = None) -> TrainResult:
    """Open the run, fit, evaluate and log the report and the model.

    The caller closes the run (`logger.end`) with the status it saw: FINISHED, FAILED or KILLED.
    """
    logger = logger or NullLogger()
    logger.start(params=run_params(prepared), tags=run_tags(prepared), datasets=run_datasets(prepared))
    ckpt = checkpoint_path(checkpoint_dir, logger.run_id) if checkpoint_dir and logger.run_id else None
    result = fit(prepared, logger=logger, callbacks=callbacks, checkpoint_file=ckpt, resume_state=resume_state)
    log_report(prepared, result, logger)
    if prepared.config.log_model:
        log_trained_model(prepared, result, logger)
    return result


def train(config: TrainConfig, *, logger: RunLogger | None = None, callbacks: Sequence[EpochCallback] = (),
          checkpoint_dir: str | None = None) -> TrainResult:
    """`prepare` then `run`, in one call: the library entry point.

    Raises:
        ConfigError: bad input, raised before `logger.start` (nothing is created).
        NonFiniteLossError: the loss became NaN/inf (the caller marks the run FAILED).
    """
    return run(prepare(config), logger=logger, callbacks=callbacks, checkpoint_dir=checkpoint_dir)
