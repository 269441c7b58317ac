"""The benchmark's sections: training throughput of both pipelines, the data paths alone, the
tracking overhead against a live server, and time to accuracy of the fast recipe."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import statistics
import time
from pathlib import Path
from typing import Any

from cifar_mlflow.bench.options import BenchConfig, arch_list, train_config

# The experiments the logged runs of the tracking and time_to_accuracy sections go to.
TRACKING_EXPERIMENT, FAST_EXPERIMENT = "benchmark-tracking", "benchmark-fast"
BENCH_EXPERIMENTS = (TRACKING_EXPERIMENT, FAST_EXPERIMENT)


def _our_batches(bench: BenchConfig, data, device, channels_last: bool):
    """An endless batch stream of this project's pipeline over the training split, standard augmentation."""
    from cifar_mlflow.bench.throughput import forever
    from cifar_mlflow.data import BatchTransform, DeviceLoader

    ours = DeviceLoader(data.train, bench.batch_size, BatchTransform("standard", data.mean, data.std, data.hflip_ok),
                        device, shuffle=True, channels_last=channels_last)
    return forever(lambda: iter(ours))


def _baseline_batches(bench: BenchConfig, data, device):
    """The conventional pipeline's endless batch stream over the training split, and its worker count."""
    from cifar_mlflow.bench.baseline_pipeline import conventional_loader, default_num_workers
    from cifar_mlflow.bench.throughput import forever

    workers = bench.num_workers if bench.num_workers is not None else default_num_workers()
    baseline = conventional_loader(data.train, bench.batch_size, data.mean, data.std, num_workers=workers,
                                   pin_memory=device.type == "cuda", hflip_ok=data.hflip_ok)
    return forever(lambda: iter(baseline)), workers


def _best_of_turns(rounds: int, *measures) -> tuple[float, ...]:
    """The best of `rounds` calls of each measure, the measures taking turns so a slow spell of the
    machine hits them all; in the order given."""
    best = [0.0] * len(measures)
    for _ in range(rounds):
        for i, measure in enumerate(measures):
            best[i] = max(best[i], measure())
    return tuple(best)


def measure_training(bench: BenchConfig, data, device, progress) -> list[dict[str, Any]]:
    """Per architecture: both pipelines, and the model alone on one batch already on the device (its
    own arithmetic, the most any data path can reach)."""

    from cifar_mlflow.bench.throughput import training_images_per_second
    from cifar_mlflow.core.prepare import prepare

    baseline, workers = _baseline_batches(bench, data, device)  # its workers serve every architecture
    rows = []
    for arch in arch_list(bench):
        progress.set_description(f"training throughput: {arch}")
        prepared = prepare(train_config(bench, arch=arch), data)  # built, initialised, on device
        model = prepared.model
        twin, alone = copy.deepcopy(model), copy.deepcopy(model)  # the same weights for each measurement
        ours = _our_batches(bench, data, device, prepared.channels_last)  # in the layout this model takes
        one_batch = itertools.repeat(next(ours))
        kwargs = {"steps": bench.steps, "warmup": bench.warmup_steps, "precision": prepared.precision,
                  "channels_last": prepared.channels_last}
        base_ips, ours_ips, alone_ips = _best_of_turns(
            bench.rounds, lambda: training_images_per_second(twin, baseline, device, **kwargs),
            lambda: training_images_per_second(model, ours, device, **kwargs),
            lambda: training_images_per_second(alone, one_batch, device, **kwargs))
        rows.append({"arch": arch, "device": device.type, "ours_images_per_s": round(ours_ips, 1),
                     "baseline_images_per_s": round(base_ips, 1), "speedup": round(ours_ips / base_ips, 3),
                     "model_alone_images_per_s": round(alone_ips, 1),
                     # ours as a share of the model's own pace, and the speedup a free data path would give
                     "ours_share_of_model_alone": round(ours_ips / alone_ips, 3),
                     "speedup_bound": round(alone_ips / base_ips, 3),
                     "precision": prepared.precision, "channels_last": prepared.channels_last,
                     "batch_size": bench.batch_size, "baseline_num_workers": workers})
        progress.update(1)
    return rows


def measure_data_path(bench: BenchConfig, data, device, progress) -> dict[str, Any]:
    from cifar_mlflow.bench.throughput import data_images_per_second

    progress.set_description("data path")
    ours = _our_batches(bench, data, device, channels_last=False)
    baseline, workers = _baseline_batches(bench, data, device)
    kwargs = {"steps": bench.steps * 4, "warmup": bench.warmup_steps}  # no model: cheap steps, so more of them
    base_ips, ours_ips = _best_of_turns(bench.rounds, lambda: data_images_per_second(baseline, device, **kwargs),
                                        lambda: data_images_per_second(ours, device, **kwargs))
    progress.update(1)
    return {"device": device.type, "ours_images_per_s": round(ours_ips, 1), "baseline_images_per_s": round(base_ips, 1),
            "speedup": round(ours_ips / base_ips, 3), "batch_size": bench.batch_size, "baseline_num_workers": workers}


def _logged_fit(prepared, uri: str, experiment: str, run_name: str, workdir: Path) -> dict[str, float]:
    """One run as the training command runs it (`train.run.run`, MLflow logging on), timed by its phases:
    fitting (the epochs, the final test, the queued metrics stored), and the one-off opening and closing."""
    from cifar_mlflow.core.run_logger import ended_run
    from cifar_mlflow.tracking import MlflowLogger
    from cifar_mlflow.train.run import run

    logger = MlflowLogger(uri, experiment, run_name, tags={"cifar_mlflow.kind": "benchmark-run"})
    with ended_run(logger):
        result = run(prepared, logger=logger, checkpoint_dir=str(workdir))
    phases = result.phase_seconds
    return {"fit_s": phases["fit"], "start_s": phases["start"], "end_s": phases["end"],
            "test_acc": result.test.acc, "train_s": sum(row["epoch_seconds"] for row in result.history)}


def _plain_fit(prepared, workdir: Path) -> float:
    from cifar_mlflow.core.fit import fit

    start = time.perf_counter()
    fit(prepared, checkpoint_file=workdir / "plain" / "last.pt")
    return time.perf_counter() - start


def measure_tracking(bench: BenchConfig, data, device, uri: str, workdir: Path, progress) -> dict[str, Any]:
    """Median wall time of `fit` with MLflow logging to a live server and without, alternating."""
    from cifar_mlflow.core.prepare import prepare
    from cifar_mlflow.data.splits import stratified_subset

    config = train_config(bench, arch=bench.tracking_arch, epochs=bench.tracking_epochs)
    if bench.tracking_samples:
        data = dataclasses.replace(data, train=stratified_subset(data.train, bench.tracking_samples))
    on, off, once = [], [], []
    _plain_fit(prepare(config, data), workdir)  # untimed: first-call costs (kernels, allocator, thread pools)
    for repeat in range(bench.tracking_repeats):
        progress.set_description(f"tracking overhead {repeat + 1}/{bench.tracking_repeats}")
        off.append(_plain_fit(prepare(config, data), workdir))
        logged = _logged_fit(prepare(config, data), uri, TRACKING_EXPERIMENT, f"tracking-{repeat}", workdir)
        on.append(logged["fit_s"])
        once.append(logged["start_s"] + logged["end_s"])
        progress.update(1)
    on_s, off_s = statistics.median(on), statistics.median(off)
    return {"arch": bench.tracking_arch, "device": device.type, "epochs": bench.tracking_epochs,
            "train_images": len(data.train), "store": bench.tracking_store,
            "wall_s_logging_off": round(off_s, 3), "wall_s_logging_on": round(on_s, 3),
            "ratio": round(on_s / off_s, 4), "overhead_percent": round(100 * (on_s / off_s - 1), 2),
            "run_start_and_end_logging_s": round(statistics.median(once), 3), "repeats": bench.tracking_repeats}


def measure_time_to_accuracy(bench: BenchConfig, data, device, uri: str, workdir: Path, progress) -> dict[str, Any]:
    """The fast recipe over `seeds` seeds with MLflow logging on; compilation paid by an untimed first run."""
    from cifar_mlflow.config import resolve_config
    from cifar_mlflow.core.fit import fit
    from cifar_mlflow.core.prepare import prepare

    def config(seed: int):
        return train_config(bench, recipe="fast", seed=seed, epochs=bench.fast_epochs, compile=bench.compile)

    compile_s = None
    if bench.compile:
        progress.set_description("time to accuracy: compiling")
        start = time.perf_counter()
        fit(prepare(config(10_000), data))
        compile_s = time.perf_counter() - start
    runs = []
    for seed in range(bench.seeds):
        progress.set_description(f"time to accuracy: seed {seed}")
        runs.append(_logged_fit(prepare(config(seed), data), uri, FAST_EXPERIMENT, f"fast-s{seed}", workdir))
        progress.update(1)
    accs = [r["test_acc"] for r in runs]
    mean_acc = statistics.mean(accs)
    return {"recipe": "fast", "device": device.type, "dataset": bench.dataset, "data_source": data.source,
            "seeds": bench.seeds, "epochs": resolve_config(config(0)).epochs,
            "test_acc_mean": round(mean_acc, 4), "test_acc_min": round(min(accs), 4),
            "test_acc_max": round(max(accs), 4),
            "target_accuracy": bench.target_accuracy, "reached": mean_acc >= bench.target_accuracy,
            "train_s_mean": round(statistics.mean(r["train_s"] for r in runs), 3),
            "fit_s_mean": round(statistics.mean(r["fit_s"] for r in runs), 3),
            "first_run_with_compilation_s": None if compile_s is None else round(compile_s, 3),
            "mlflow_logging": True}
