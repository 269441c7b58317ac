"""The options of `python -m cifar_mlflow.bench`, and their per-device defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifar_mlflow.config import DATASETS, PRECISIONS, _field, check_choices, unset_in
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.models.registry import check_model_name

SECTIONS = ("training", "data_path", "tracking", "time_to_accuracy")
TRACKING_STORES = ("server", "sqlite")


@dataclass
class BenchConfig:
    """What the benchmark measures, on which device and data."""

    archs: str = _field("mlp lenet cnn_small cnn airbench resnet9 mobilenetv2",
                        "architectures of the training-throughput table (several values)", nargs="+")
    sections: str | None = _field(None, "what to measure, from: training data_path tracking "
                                  "time_to_accuracy (default: all on CUDA; on the CPU all but "
                                  "time_to_accuracy, which takes hours there)", nargs="+")
    device: str = _field("auto", "auto (the machine's accelerator, else the CPU), cpu, cuda, cuda:N, mps, xpu "
                         "or xpu:N")
    dataset: str = _field("synthetic", "data set (synthetic needs no download; time_to_accuracy "
                          "needs real CIFAR-10: cifar10, or imagefolder on its JPEG copy)", choices=DATASETS)
    data_dir: str = _field("./data", "where the data set lives")
    precision: str = _field("auto", "arithmetic of every training step measured, both pipelines "
                            "alike (auto: as the training command picks it)", choices=PRECISIONS)
    max_train_samples: int | None = _field(None, "cap the training images (quick runs)")
    max_eval_samples: int | None = _field(None, "cap the test images the tracking and time_to_accuracy "
                                          "runs evaluate (quick runs)")
    batch_size: int = _field(256, "batch size of the throughput measurements")
    steps: int | None = _field(None, "timed steps per throughput measurement (default: 50 on CUDA, "
                               "20 on the CPU)")
    warmup_steps: int | None = _field(None, "untimed steps before each throughput measurement "
                                      "(default: 10 on CUDA, 3 on the CPU)")
    rounds: int = _field(2, "throughput measurements per pipeline, the two pipelines taking turns; "
                         "the best of each is reported (the others met a busy machine)")
    num_workers: int | None = _field(None, "DataLoader worker processes of the conventional pipeline "
                                     "(default: one per CPU core, at most 8)")
    tracking_arch: str | None = _field(None, "model of the tracking-overhead runs (default: airbench "
                                       "on CUDA, cnn_small on the CPU)")
    tracking_epochs: int = _field(3, "epochs of each tracking-overhead run")
    tracking_samples: int | None = _field(None, "training images of each tracking-overhead run "
                                          "(default: all on CUDA, 5000 on the CPU)")
    tracking_repeats: int = _field(3, "tracking-overhead runs with logging on and as many off; the "
                                   "medians are compared")
    tracking_store: str = _field("server", "where the tracking and time_to_accuracy runs log: server (a "
                                 "live `mlflow server` on loopback, SQLite behind it: a team's setup) or "
                                 "sqlite (MLflow's embedded SQLite store, no server: the default of a "
                                 "training run, and all the mlflow-skinny package can do)",
                                 choices=TRACKING_STORES)
    seeds: int = _field(5, "time_to_accuracy: runs of the fast recipe (seeds 0..N-1)")
    target_accuracy: float = _field(0.94, "time_to_accuracy: the mean test accuracy to reach")
    fast_epochs: int | None = _field(None, "time_to_accuracy: epochs of the fast recipe (default: "
                                     "the recipe's)")
    compile: bool = _field(False, "time_to_accuracy: torch.compile the model (a first, untimed run "
                           "pays the compilation, reported separately)")
    json: str | None = _field(None, "also write the figures as JSON to this file")
    log: bool = _field(False, "log the tables and figures to MLflow as a run tagged "
                       "cifar_mlflow.kind=benchmark")
    tracking_uri: str | None = _field(None, "MLflow tracking URI for --log (default: "
                                      "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    experiment_name: str = _field("benchmarks", "MLflow experiment for --log")
    progress: bool = _field(True, "show progress bars (--no-progress for log files)")


def resolve_bench_config(config: BenchConfig, on_cuda: bool) -> BenchConfig:
    """Fill the per-device defaults and validate; `ConfigError` names the first bad value."""
    defaults = {
        "sections": " ".join(s for s in SECTIONS if on_cuda or s != "time_to_accuracy"),
        "steps": 50 if on_cuda else 20,
        "warmup_steps": 10 if on_cuda else 3,
        "tracking_arch": "airbench" if on_cuda else "cnn_small",
        "tracking_samples": None if on_cuda else 5000,
    }
    config = dataclasses.replace(config, **unset_in(config, defaults))
    check_choices(config)
    for section in section_list(config):
        if section not in SECTIONS:
            raise ConfigError(f"unknown section {section!r}; choose from: {', '.join(SECTIONS)}")
    for arch in arch_list(config) + [config.tracking_arch]:
        check_model_name(arch)
    for name in ("batch_size", "steps", "rounds", "tracking_epochs", "tracking_repeats", "seeds"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(config, name)}")
    for name in ("max_train_samples", "max_eval_samples", "tracking_samples", "fast_epochs"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if config.warmup_steps < 0 or (config.num_workers is not None and config.num_workers < 0):
        raise ConfigError("warmup_steps and num_workers must be at least 0")
    if not 0 < config.target_accuracy <= 1:
        raise ConfigError(f"target_accuracy is a fraction in (0, 1], got {config.target_accuracy}")
    if config.json and not Path(config.json).resolve().parent.is_dir():
        raise ConfigError(f"cannot write --json {config.json}: folder {Path(config.json).parent} does not exist")
    return config


def section_list(config: BenchConfig) -> list[str]:
    return (config.sections or "").replace(",", " ").split()


def arch_list(config: BenchConfig) -> list[str]:
    return config.archs.replace(",", " ").split()


def train_config(bench: BenchConfig, **values: Any):
    """The `TrainConfig` a section trains with: the benchmark's data, caps, device and precision."""
    from cifar_mlflow.config import TrainConfig

    values.setdefault("max_train_samples", bench.max_train_samples)
    values.setdefault("max_eval_samples", bench.max_eval_samples)
    return TrainConfig(dataset=bench.dataset, data_dir=bench.data_dir, device=bench.device,
                       precision=bench.precision, progress=False, **values)
