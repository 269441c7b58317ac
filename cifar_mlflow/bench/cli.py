"""`python -m cifar_mlflow.bench`: how fast this pipeline trains, next to the conventional one.

Prints markdown tables (and writes JSON, and logs to MLflow, when asked):
- training images/s per architecture: this project's device-resident data path against a
  torchvision `DataLoader` + PIL transforms pipeline, same model, batch size and device;
- the data paths alone, no model;
- tracking overhead: the same short training with logging on (to a live `mlflow server`, or with
  `--tracking-store sqlite` to MLflow's embedded store) and off;
- time to accuracy: the `fast` recipe on real CIFAR-10, over several seeds (GPU).

A benchmark, not a test: numbers depend on the machine; docs/benchmarks.md records them.
Exit status: 0 done, 2 bad input (nothing measured or created), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cifar_mlflow.arguments import add_config_arguments, collect_values, program_name
from cifar_mlflow.bench.options import BenchConfig, arch_list, resolve_bench_config, section_list, train_config
from cifar_mlflow.bench.sections import (
    BENCH_EXPERIMENTS,
    measure_data_path,
    measure_time_to_accuracy,
    measure_tracking,
    measure_training,
)
from cifar_mlflow.bench.tables import markdown_tables
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.redaction import protect_console, redact


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("bench"),
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


@contextlib.contextmanager
def _tracking_store(bench: BenchConfig, workdir: Path) -> Iterator[str]:
    """The URI the logged runs of the tracking and time_to_accuracy sections go to, while they run."""
    if bench.tracking_store == "server":
        from cifar_mlflow.tracking.local_server import ServerStartError, local_mlflow_server

        try:
            with local_mlflow_server(workdir / "mlflow-server") as uri:
                yield uri
        except ServerStartError as exc:
            last = (exc.log.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"mlflow server did not start ({last}); where only mlflow-skinny is installed "
                              "(it has no server), --tracking-store sqlite measures against the embedded "
                              "store instead") from None
        return
    from mlflow.tracking import MlflowClient

    root = workdir / "mlflow-sqlite"
    root.mkdir()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    for experiment in BENCH_EXPERIMENTS:  # artifacts under the workdir, not ./mlruns where the command runs
        client.create_experiment(experiment, artifact_location=(root / "artifacts" / experiment).as_uri())
    yield uri


def _run_sections(bench: BenchConfig, device, data, workdir: Path) -> dict[str, Any]:
    from tqdm.auto import tqdm

    sections = section_list(bench)
    total = (len(arch_list(bench)) * ("training" in sections) + ("data_path" in sections)
             + bench.tracking_repeats * ("tracking" in sections) + bench.seeds * ("time_to_accuracy" in sections))
    results: dict[str, Any] = {}
    # The sections that log to a store run first: a server that does not start ends the benchmark
    # before anything is measured, and it is stopped before the throughput sections (an idle MLflow
    # server and its job workers take a few percent of a small CPU).
    logged = "tracking" in sections or "time_to_accuracy" in sections
    progress = None
    try:
        with _tracking_store(bench, workdir) if logged else contextlib.nullcontext() as uri:
            progress = tqdm(total=total, disable=not bench.progress, file=sys.stderr, dynamic_ncols=True)
            if "tracking" in sections:
                results["tracking_overhead"] = measure_tracking(bench, data, device, uri, workdir, progress)
            if "time_to_accuracy" in sections:
                results["time_to_accuracy"] = measure_time_to_accuracy(bench, data, device, uri, workdir, progress)
        if "training" in sections:
            results["rows"] = measure_training(bench, data, device, progress)
        if "data_path" in sections:
            results["data_path"] = measure_data_path(bench, data, device, progress)
    finally:
        if progress is not None:
            progress.close()
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

    try:
        values, _ = collect_values(args, BenchConfig)
        bench = BenchConfig(**values)
        _resolved_probe(bench)  # validates the device name and the fast recipe's settings
        device = select_device(bench.device)
        bench = resolve_bench_config(bench, device.type == "cuda")
        # Imported once the options are checked: bad input answers without loading MLflow and the data libraries.
        from cifar_mlflow.core.prepare import load_splits
        from cifar_mlflow.tracking import tracking_uri

        # Resolved now: the sections' logged runs point MLflow (and $MLFLOW_TRACKING_URI) at their own
        # temporary store, which is gone by the time the benchmark run is logged.
        log_uri = tracking_uri(bench.tracking_uri) if bench.log else None
        if "time_to_accuracy" in section_list(bench) and bench.dataset == "synthetic":
            print("note: time_to_accuracy on synthetic data measures speed, not CIFAR-10 accuracy", file=sys.stderr)
        # Without a validation split: the fast recipe trains on all of it, and throughput uses it all.
        data = load_splits(train_config(bench, val_fraction=0.0))
        results = _run_sections(bench, device, data, workdir)
    except ConfigError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing written", file=sys.stderr)
        return 130
    given = sys.argv[1:] if argv is None else argv
    command = "python -m cifar_mlflow.bench " + " ".join(shlex.quote(a) for a in given)
    results = {"machine": machine_description(device), "date": datetime.date.today().isoformat(), "command": command,
               "dataset": bench.dataset, "data_source": data.source, "train_images": len(data.train),
               "target_accuracy": bench.target_accuracy, "rounds": bench.rounds, "steps": bench.steps,
               "warmup_steps": bench.warmup_steps, **results}
    table = markdown_tables(results)
    print(table)
    if bench.json:
        Path(bench.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {bench.json}", file=sys.stderr)
    if log_uri is not None:
        from cifar_mlflow.tracking import log_benchmark

        run_id = log_benchmark(log_uri, bench.experiment_name, dataclasses.asdict(bench), results, table)
        print(f"benchmark logged as run {run_id}", file=sys.stderr)
    return 0


def _resolved_probe(bench: BenchConfig):
    """The fast recipe's config as the time_to_accuracy section will run it (validated before any work)."""
    from cifar_mlflow.config import resolve_config

    return resolve_config(train_config(bench, recipe="fast", epochs=bench.fast_epochs))
