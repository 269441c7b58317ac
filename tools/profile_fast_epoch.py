"""Where a training step of `--recipe fast` spends its time, beside airbench94's (tools/airbench94.py), on
the same images: the per-image cost of each and the operators that take it (torch.profiler).

    python tools/profile_fast_epoch.py --data-dir data/cifar10-jpg --steps 12

Both train on the same class-balanced 1024 x `--steps` images of the folder, batch 1024, each pass
after an untimed one, the two taking turns twice; the machine should be quiet. Prints images/s per
recipe and each one's top operators by self CPU time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
import airbench94  # noqa: E402
from airbench_reference import EpochClock, Net, TrainLoader, mixed_sample, normalise, train_steps  # noqa: E402

from cifar_mlflow import TrainConfig  # noqa: E402
from cifar_mlflow.core.fit import _build_loop  # noqa: E402
from cifar_mlflow.core.passes import training_pass  # noqa: E402
from cifar_mlflow.core.prepare import prepare  # noqa: E402


def timed(fn, label: str, images: int, rows: int) -> None:
    fn()  # warm-up: the first steps build oneDNN's kernels
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    print(f"\n== {label}: {images / seconds:.0f} images/s ({seconds:.1f} s for {images} images, profiled)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=12, help="timed steps of 1024 images each")
    parser.add_argument("--rows", type=int, default=14, help="operators shown per recipe")
    args = parser.parse_args()
    n = 1024 * args.steps
    config = TrainConfig(recipe="fast", dataset="imagefolder", data_dir=str(args.data_dir), val_fraction=0.0,
                         max_train_samples=n, max_eval_samples=1000, progress=False, epochs=2)
    prepared = prepare(config)
    loop = _build_loop(prepared)
    epoch = iter(range(1, 100))

    def fast() -> None:
        with record_function("fast: one epoch"):
            training_pass(loop.train_model, loop.train_loader, loop.optimizer, loop.schedule, loop.loss_fn,
                          epoch=next(epoch), epochs=2, progress=False, lookahead=loop.lookahead,
                          precision=prepared.precision)

    train = prepared.data.train
    dtype = torch.bfloat16 if prepared.precision == "bf16" else torch.float32
    x = normalise(train.images, dtype)
    model = Net(airbench94.HYP["scaling_factor"]).to(memory_format=torch.channels_last)
    model.init_whiten(x[mixed_sample(train.labels, 5000, 0)])
    loader = TrainLoader(x, train.labels, 1024)
    cpu = torch.device("cpu")

    optimizer, lookahead = airbench94.optimizer_for(model, 1024), airbench94.Lookahead(model)

    def update(step: int, total: int, whiten_bias_steps: int) -> None:  # airbench94's step at a fixed rate
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 5 == 0:
            lookahead.update(0.5)

    def reference() -> None:
        with record_function("airbench94: one epoch"):
            train_steps(model, loader, 1, EpochClock(cpu), cpu, prepared.precision, 3, 0.2, update)

    for _ in range(2):  # taking turns, as the benchmarks do
        timed(fast, f"--recipe fast ({prepared.precision})", n, args.rows)
        timed(reference, f"airbench94 ({prepared.precision})", n, args.rows)


if __name__ == "__main__":
    main()
