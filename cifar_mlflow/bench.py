"""`python -m cifar_mlflow.bench`: how fast this pipeline trains, next to the conventional one.

Prints markdown tables (and writes JSON, and logs to MLflow, when asked):
- training images/s per architecture: this project's device-resident data path against a
  torchvision `DataLoader` + PIL transforms pipeline, same model, batch size and device;
- the data paths alone, no model;
- tracking overhead: the same short training with logging to a live `mlflow server` on and off;
- time to accuracy: the `fast` recipe on real CIFAR-10, over several seeds (GPU).

A benchmark, not a test: numbers depend on the machine; docs/benchmarks.md records them.
Exit status: 0 done, 2 bad input (nothing measured or created), 130 interrupted.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cifar_mlflow.bench_config import BenchConfig, arch_list, resolve_bench_config, section_list
from cifar_mlflow.cli import add_config_arguments, collect_values
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.redaction import protect_console, redact


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cifar_mlflow.bench",
        description="Benchmark the training pipeline: images/s against a conventional DataLoader + PIL pipeline, "
                    "the data path alone, MLflow tracking overhead and the fast recipe's time to 94%% accuracy.",
        epilog="examples:\n  python -m cifar_mlflow.bench --device cpu --archs mlp lenet cnn_small\n"
               "  python -m cifar_mlflow.bench --dataset cifar10 --json bench.json --log   # on a GPU machine\n"
               "  python -m cifar_mlflow.bench --dataset imagefolder --data-dir data/cifar10-jpg "
               "--sections time_to_accuracy\n\nrecorded results: docs/benchmarks.md",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, BenchConfig)
    return parser


def machine_description(device) -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_cores": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --- measurements -------------------------------------------------------------------------------

def _train_config(bench: BenchConfig, **values: Any):
    from cifar_mlflow.config import TrainConfig

    values.setdefault("max_train_samples", bench.max_train_samples)
    values.setdefault("max_eval_samples", bench.max_eval_samples)
    return TrainConfig(dataset=bench.dataset, data_dir=bench.data_dir, device=bench.device,
                       precision=bench.precision, progress=False, **values)


def _our_batches(bench: BenchConfig, data, device, channels_last: bool):
    """An endless batch stream of this project's pipeline over the training split, standard augmentation."""
    from cifar_mlflow.data import BatchTransform, DeviceLoader
    from cifar_mlflow.throughput import forever

    ours = DeviceLoader(data.train, bench.batch_size, BatchTransform("standard", data.mean, data.std, data.hflip_ok),
                        device, shuffle=True, channels_last=channels_last)
    return forever(lambda: iter(ours))


def _baseline_batches(bench: BenchConfig, data, device):
    """The conventional pipeline's endless batch stream over the training split, and its worker count."""
    from cifar_mlflow.baseline_pipeline import conventional_loader, default_num_workers
    from cifar_mlflow.throughput import forever

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
    import itertools

    from cifar_mlflow.throughput import training_images_per_second
    from cifar_mlflow.training import prepare

    baseline, workers = _baseline_batches(bench, data, device)  # its workers serve every architecture
    rows = []
    for arch in arch_list(bench):
        progress.set_description(f"training throughput: {arch}")
        prepared = prepare(_train_config(bench, arch=arch), data)  # built, initialised, on device
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
                     "baseline_images_per_s": round(base_ips, 1), "speedup": round(ours_ips / base_ips, 2),
                     "model_alone_images_per_s": round(alone_ips, 1),
                     # ours as a share of the model's own pace, and the speedup a free data path would give
                     "ours_share_of_model_alone": round(ours_ips / alone_ips, 3),
                     "speedup_bound": round(alone_ips / base_ips, 2),
                     "precision": prepared.precision, "channels_last": prepared.channels_last,
                     "batch_size": bench.batch_size, "baseline_num_workers": workers})
        progress.update(1)
    return rows


def measure_data_path(bench: BenchConfig, data, device, progress) -> dict[str, Any]:
    from cifar_mlflow.throughput import data_images_per_second

    progress.set_description("data path")
    ours = _our_batches(bench, data, device, channels_last=False)
    baseline, workers = _baseline_batches(bench, data, device)
    kwargs = {"steps": bench.steps * 4, "warmup": bench.warmup_steps}  # no model: cheap steps, so more of them
    base_ips, ours_ips = _best_of_turns(bench.rounds, lambda: data_images_per_second(baseline, device, **kwargs),
                                        lambda: data_images_per_second(ours, device, **kwargs))
    progress.update(1)
    return {"device": device.type, "ours_images_per_s": round(ours_ips, 1), "baseline_images_per_s": round(base_ips, 1),
            "speedup": round(ours_ips / base_ips, 2), "batch_size": bench.batch_size, "baseline_num_workers": workers}


def _logged_fit(prepared, uri: str, experiment: str, run_name: str, workdir: Path) -> dict[str, float]:
    """One run with MLflow logging: fit timed on its own, then the one-off start and end-of-run logging."""
    from cifar_mlflow.checkpoint import checkpoint_path
    from cifar_mlflow.logger import ended_run
    from cifar_mlflow.tracking import MlflowLogger
    from cifar_mlflow.training import fit, log_report, log_trained_model, run_datasets, run_params, run_tags

    logger = MlflowLogger(uri, experiment, run_name, tags={"cifar_mlflow.kind": "benchmark-run"})
    started = time.perf_counter()
    logger.start(params=run_params(prepared), tags=run_tags(prepared), datasets=run_datasets(prepared))
    fit_start = time.perf_counter()
    with ended_run(logger):
        result = fit(prepared, logger=logger, checkpoint_file=checkpoint_path(str(workdir), logger.run_id))
        logger.flush()  # metrics still queued count towards the training's time
        fit_end = time.perf_counter()
        log_report(prepared, result, logger)
        log_trained_model(prepared, result, logger)
    return {"fit_s": fit_end - fit_start, "start_s": fit_start - started, "end_s": time.perf_counter() - fit_end,
            "test_acc": result.test.acc, "train_s": sum(row["epoch_seconds"] for row in result.history)}


def _plain_fit(prepared, workdir: Path) -> float:
    from cifar_mlflow.training import fit

    start = time.perf_counter()
    fit(prepared, checkpoint_file=workdir / "plain" / "last.pt")
    return time.perf_counter() - start


def measure_tracking(bench: BenchConfig, data, device, uri: str, workdir: Path, progress) -> dict[str, Any]:
    """Median wall time of `fit` with MLflow logging to a live server and without, alternating."""
    from cifar_mlflow.data.splits import stratified_subset
    from cifar_mlflow.training import prepare

    config = _train_config(bench, arch=bench.tracking_arch, epochs=bench.tracking_epochs)
    if bench.tracking_samples:
        data = dataclasses.replace(data, train=stratified_subset(data.train, bench.tracking_samples))
    on, off, once = [], [], []
    _plain_fit(prepare(config, data), workdir)  # untimed: first-call costs (kernels, allocator, thread pools)
    for repeat in range(bench.tracking_repeats):
        progress.set_description(f"tracking overhead {repeat + 1}/{bench.tracking_repeats}")
        off.append(_plain_fit(prepare(config, data), workdir))
        logged = _logged_fit(prepare(config, data), uri, "benchmark-tracking", f"tracking-{repeat}", workdir)
        on.append(logged["fit_s"])
        once.append(logged["start_s"] + logged["end_s"])
        progress.update(1)
    on_s, off_s = statistics.median(on), statistics.median(off)
    return {"arch": bench.tracking_arch, "device": device.type, "epochs": bench.tracking_epochs,
            "train_images": len(data.train),
            "wall_s_logging_off": round(off_s, 3), "wall_s_logging_on": round(on_s, 3),
            "ratio": round(on_s / off_s, 4), "overhead_percent": round(100 * (on_s / off_s - 1), 2),
            "run_start_and_end_logging_s": round(statistics.median(once), 3), "repeats": bench.tracking_repeats}


def measure_time_to_accuracy(bench: BenchConfig, data, device, uri: str, workdir: Path, progress) -> dict[str, Any]:
    """The fast recipe over `seeds` seeds with MLflow logging on; compilation paid by an untimed first run."""
    from cifar_mlflow.config import resolve_config
    from cifar_mlflow.training import fit, prepare

    def config(seed: int):
        return _train_config(bench, recipe="fast", seed=seed, epochs=bench.fast_epochs, compile=bench.compile)

    compile_s = None
    if bench.compile:
        progress.set_description("time to accuracy: compiling")
        start = time.perf_counter()
        fit(prepare(config(10_000), data))
        compile_s = time.perf_counter() - start
    runs = []
    for seed in range(bench.seeds):
        progress.set_description(f"time to accuracy: seed {seed}")
        runs.append(_logged_fit(prepare(config(seed), data), uri, "benchmark-fast", f"fast-s{seed}", workdir))
        progress.update(1)
    accs = [r["test_acc"] for r in runs]
    mean_acc = statistics.mean(accs)
    return {"recipe": "fast", "device": device.type, "dataset": bench.dataset, "data_source": data.source,
            "seeds": bench.seeds, "epochs": resolve_config(config(0)).epochs,
            "test_acc_mean": round(mean_acc, 4), "test_acc_min": round(min(accs), 4), "test_acc_max": round(max(accs), 4),
            "target_accuracy": bench.target_accuracy, "reached": mean_acc >= bench.target_accuracy,
            "train_s_mean": round(statistics.mean(r["train_s"] for r in runs), 3),
            "fit_s_mean": round(statistics.mean(r["fit_s"] for r in runs), 3),
            "first_run_with_compilation_s": None if compile_s is None else round(compile_s, 3),
            "mlflow_logging": True}


# --- output -------------------------------------------------------------------------------------

def markdown_tables(results: dict[str, Any]) -> str:
    """The figures as markdown, one table per section; sections not measured say why."""
    lines = [f"machine: {results['machine'].get('gpu') or results['machine']['platform']} "
             f"({results['machine']['cpu_cores']} CPU cores), torch {results['machine']['torch']}, "
             f"{results['date']}", f"command: `{results['command']}`", ""]
    rows = results.get("rows")
    if rows:
        lines += [f"### Training throughput (batch {rows[0]['batch_size']}, conventional pipeline with "
                  f"{rows[0]['baseline_num_workers']} DataLoader workers, best of {results['rounds']} turns each)", "",
                  "| arch | device | precision | ours (img/s) | DataLoader + PIL (img/s) | speedup "
                  "| model alone (img/s) | ours, of model alone | speedup bound |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['arch']} | {r['device']} | {r['precision']} | {r['ours_images_per_s']:,.0f} "
                  f"| {r['baseline_images_per_s']:,.0f} | {r['speedup']:.2f}x | {r['model_alone_images_per_s']:,.0f} "
                  f"| {r['ours_share_of_model_alone']:.0%} | {r['speedup_bound']:.2f}x |" for r in rows]
        lines += ["", "model alone: the same training steps on one batch already on the device, no data path; "
                  "speedup bound: model alone against DataLoader + PIL, the most any data path could gain", ""]
    path = results.get("data_path")
    if path:
        lines += ["### Data path alone (augmented images delivered on the device, no model)", "",
                  "| device | ours (img/s) | DataLoader + PIL (img/s) | speedup |", "|---|---:|---:|---:|",
                  f"| {path['device']} | {path['ours_images_per_s']:,.0f} | {path['baseline_images_per_s']:,.0f} "
                  f"| {path['speedup']:.2f}x |", ""]
    tracking = results.get("tracking_overhead")
    if tracking:
        lines += [f"### Tracking overhead ({tracking['arch']}, {tracking['epochs']} epochs, median of "
                  f"{tracking['repeats']}, live `mlflow server` on loopback)", "",
                  "| logging off (s) | logging on (s) | overhead | run start + end-of-run artifacts (s, once) |",
                  "|---:|---:|---:|---:|",
                  f"| {tracking['wall_s_logging_off']:.2f} | {tracking['wall_s_logging_on']:.2f} | "
                  f"{tracking['overhead_percent']:+.1f}% | {tracking['run_start_and_end_logging_s']:.2f} |", ""]
    tta = results.get("time_to_accuracy")
    lines.append(f"### Time to {results['target_accuracy']:.0%} (the fast recipe, MLflow logging on)")
    lines.append("")
    if tta and tta["dataset"] != "cifar10":
        lines += [f"note: measured on `{tta['dataset']}` data at {tta['data_source']}, not the original CIFAR-10 "
                  "files (a JPEG copy costs accuracy)", ""]
    if tta:
        compiled = tta["first_run_with_compilation_s"]
        lines += ["| data | seeds | epochs | test acc (mean, min-max) | reached | training s (mean) | "
                  "fit s incl. logging + eval (mean) | first run with compilation (s) |",
                  "|---|---:|---:|---|---|---:|---:|---:|",
                  f"| {tta['data_source']} | {tta['seeds']} | {tta['epochs']} | {tta['test_acc_mean']:.4f} "
                  f"({tta['test_acc_min']:.4f}-{tta['test_acc_max']:.4f}) | {'yes' if tta['reached'] else 'no'} | "
                  f"{tta['train_s_mean']:.2f} | {tta['fit_s_mean']:.2f} | "
                  f"{'not compiled' if compiled is None else f'{compiled:.1f}'} |"]
    else:
        lines.append(f"not measured: {results.get('time_to_accuracy_note', 'not asked for')}")
    return "\n".join(lines) + "\n"


def _run_sections(bench: BenchConfig, device, data, workdir: Path) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from cifar_mlflow.local_server import local_mlflow_server

    sections = section_list(bench)
    total = (len(arch_list(bench)) * ("training" in sections) + ("data_path" in sections)
             + bench.tracking_repeats * ("tracking" in sections) + bench.seeds * ("time_to_accuracy" in sections))
    results: dict[str, Any] = {}
    with tqdm(total=total, disable=not bench.progress, file=sys.stderr, dynamic_ncols=True) as progress:
        if "training" in sections:
            results["rows"] = measure_training(bench, data, device, progress)
        if "data_path" in sections:
            results["data_path"] = measure_data_path(bench, data, device, progress)
        if "tracking" in sections or "time_to_accuracy" in sections:
            with local_mlflow_server(workdir / "mlflow-server") as uri:
                if "tracking" in sections:
                    results["tracking_overhead"] = measure_tracking(bench, data, device, uri, workdir, progress)
                if "time_to_accuracy" in sections:
                    results["time_to_accuracy"] = measure_time_to_accuracy(bench, data, device, uri, workdir, progress)
    if "time_to_accuracy" not in sections:
        results["time_to_accuracy_note"] = ("GPU only: not run on the CPU unless --sections names time_to_accuracy"
                                            if device.type != "cuda" else "not in --sections")
    return results


def main(argv: list[str] | None = None) -> int:
    protect_console()
    args = build_parser().parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="cifar_mlflow-bench-"))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return _bench(args, argv, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _bench(args: argparse.Namespace, argv: list[str] | None, workdir: Path) -> int:
    from cifar_mlflow.hardware import select_device
    from cifar_mlflow.training import load_splits

    try:
        values, _ = collect_values(args, BenchConfig)
        bench = BenchConfig(**values)
        _resolved_probe(bench)  # validates the device name and the fast recipe's settings
        device = select_device(bench.device)
        bench = resolve_bench_config(bench, device.type == "cuda")
        if "time_to_accuracy" in section_list(bench) and bench.dataset == "synthetic":
            print("note: time_to_accuracy on synthetic data measures speed, not CIFAR-10 accuracy", file=sys.stderr)
        # Without a validation split: the fast recipe trains on all of it, and throughput uses it all.
        data = load_splits(_train_config(bench, val_fraction=0.0))
        results = _run_sections(bench, device, data, workdir)
    except ConfigError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing written", file=sys.stderr)
        return 130
    command = "python -m cifar_mlflow.bench " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    results = {"machine": machine_description(device), "date": datetime.date.today().isoformat(), "command": command,
               "dataset": bench.dataset, "data_source": data.source, "train_images": len(data.train),
               "target_accuracy": bench.target_accuracy, "rounds": bench.rounds, "steps": bench.steps,
               "warmup_steps": bench.warmup_steps, **results}
    table = markdown_tables(results)
    print(table)
    if bench.json:
        Path(bench.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {bench.json}", file=sys.stderr)
    if bench.log:
        from cifar_mlflow.tracking import log_benchmark, tracking_uri

        run_id = log_benchmark(tracking_uri(bench.tracking_uri), bench.experiment_name, dataclasses.asdict(bench),
                               results, table)
        print(f"benchmark logged as run {run_id}", file=sys.stderr)
    return 0


def _resolved_probe(bench: BenchConfig):
    """The fast recipe's config as the time_to_accuracy section will run it (validated before any work)."""
    from cifar_mlflow.config import resolve_config

    return resolve_config(_train_config(bench, recipe="fast", epochs=bench.fast_epochs))


if __name__ == "__main__":
    sys.exit(main())
