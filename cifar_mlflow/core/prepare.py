"""Before a run opens anywhere: the config resolved and checked, the data read and split, the model built,
initialised from the data where it asks to be, and placed on the device. Any bad input raises
`ConfigError` here, with nothing created."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cifar_mlflow import distributed
from cifar_mlflow.config import TrainConfig, resolve_config
from cifar_mlflow.data.augment import BatchTransform
from cifar_mlflow.data.sources import SYNTHETIC_TEST, SYNTHETIC_TRAIN, load_image_data
from cifar_mlflow.data.splits import DataSplits, init_sample, split_data
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.hardware import keep_freed_memory, select_device, select_precision, use_channels_last
from cifar_mlflow.models import get_model
from cifar_mlflow.models.weights import WeightsReport, load_matching, read_weights_file

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
    precision: str  # what `--precision` resolved to here: bf16 or fp16 (autocast) or fp32
    channels_last: bool  # batches are channels-last (the model accepts them)
    init_report: WeightsReport | None = None  # what --init-from loaded, where it was given

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


def _forward_or_refuse(model: torch.nn.Module, images: torch.Tensor, arch: str, hint: str) -> torch.Tensor:
    """The model's output for `images`, or `ConfigError` saying it cannot take images of their size."""
    try:
        with torch.no_grad():
            return model(images)
    except Exception as exc:  # noqa: BLE001 - any failure here means the arch does not fit images of this size
        size = "x".join(str(n) for n in images.shape[1:])
        raise ConfigError(f"{arch} cannot take {size} images ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160]}); {hint}") from None


def prepare(config: TrainConfig, data: DataSplits | None = None,
            init_weights: Mapping[str, torch.Tensor] | None = None) -> Prepared:
    """Resolve and validate the config, load and split the data, build the model.

    `init_weights`: the state dict `config.init_from` names, read by the caller (an MLflow model is fetched
    at the tracking edge); without it, an `init_from` file is read here.

    Raises:
        ConfigError: for any bad input, before anything is created.
    """
    config = resolve_config(config)  # the architecture's name too, before the data set is read
    device = select_device(config.device)
    if device.type == "cuda" and distributed.world_size() > 1 and device.index is None:
        device = torch.device("cuda", distributed.local_rank())  # one GPU per torchrun process
    if device.type == "cpu":
        keep_freed_memory()  # a CPU step's large blocks reused, not zeroed by the kernel every step
    precision = select_precision(config.precision, device)  # before the data set is read, as the device
    seed_everything(config.seed, config.deterministic)
    if data is None:
        data = load_splits(config)
    model = get_model(config.arch, num_classes=data.num_classes, in_channels=data.image_shape[0],
                      **config.model_args)
    c, h, w = data.image_shape
    example = torch.zeros(2, c, h, w)
    model.eval()
    # materialises lazy layers; proves the model takes these images
    out = _forward_or_refuse(model, example, config.arch, "try --image-size or another arch")
    if config.low_res_epochs > 0:
        if config.low_res_size >= min(h, w):
            raise ConfigError(f"--low-res-size {config.low_res_size} is not below the images' {h}x{w}; "
                              "give a smaller size, or --low-res-epochs 0")
        small = torch.zeros(2, c, config.low_res_size, config.low_res_size)
        _forward_or_refuse(model, small, config.arch, "try a larger --low-res-size")
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
    report = None
    if config.init_from:  # trained weights over it, where name and shape match
        if init_weights is None:
            init_weights = read_weights_file(config.init_from)
        report = load_matching(model, init_weights, config.init_from)
    channels_last = use_channels_last(model, example)
    model.to(device)
    return Prepared(config, data, model, device, precision, channels_last, report)
