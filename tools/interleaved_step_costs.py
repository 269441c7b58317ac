"""The three recipes' training time, measured taking turns every few seconds: `--recipe fast`, airbench94 and
airbench94_muon (tools/), for machines whose pace drifts within a whole run.

    python tools/interleaved_step_costs.py --data-dir data/cifar10-jpg --rounds 20 --json costs.json

`tools/fast_vs_references.py` runs whole recipes one after the other, minutes each; where the machine's pace
moves by more than the difference being measured within that time (a shared virtual machine), the recipe that
ran in a slow stretch loses. Here each recipe takes short passes of its real training steps (its own net,
data path over the whole training set, loss, optimizers and update; the product's through its training loop)
in turns: per round, each recipe an untimed step (on one batch kept aside, so that its timed passes do not pay
for taking the memory back from the recipe before it), then one pass with the whitening bias learning and one
with it frozen, which of the two first alternating; the recipes' order rotated every round. A round takes
under a minute, so all three see the same machine. Each loader runs on through its epochs from pass to pass,
so an epoch's own work (the references' crop of the whole set, a shuffle) is timed in the pass that begins it.

Each recipe's training time is then projected from its cost per image in each phase (all its passes' seconds
over their images) and the images its published schedule trains in that phase (the fast recipe: 3 epochs of
48 x 1024 images with the whitening bias learning, then 5 of 33 x 1024, the hardest 68%; airbench94: 144 of 476
steps of 1024; airbench94_muon: 75 of 200 steps of 2000), plus, for the references, the whitening's fit, which
their clocks include. The spread is the same ratio per block of rounds. The learning rates stay at their first
value (a schedule does not change a step's cost); the per-epoch logging and checkpoints of the product's runs are
not in its epochs' seconds and not here either.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import airbench94  # noqa: E402
import airbench94_muon  # noqa: E402
from airbench_reference import (  # noqa: E402
    EpochClock,
    Net,
    TrainLoader,
    mixed_sample,
    normalise,
    refuse_folder_without_splits,
    train_steps,
)

from cifar_mlflow import TrainConfig  # noqa: E402
from cifar_mlflow.config import resolve_config  # noqa: E402
from cifar_mlflow.core.fit import _build_loop  # noqa: E402
from cifar_mlflow.core.passes import training_pass  # noqa: E402
from cifar_mlflow.core.prepare import prepare  # noqa: E402
from cifar_mlflow.data.hardest import HardestImages  # noqa: E402

TRAIN_IMAGES = 50_000  # CIFAR-10's training split, which the projections are for
PHASES = ("learning", "frozen")  # the whitening bias


@dataclass
class Recipe:
    name: str
    run_pass: Callable[[bool, bool], int]  # (whitening bias learning, settle) -> images trained
    images: dict[str, int]  # images a whole run trains in each phase
    fixed_seconds: float  # on its training clock once per run (the references' whitening fit)


class Steps:
    """`steps` batches of a loader at a time, the loader running on through its epochs between passes: each
    epoch's own work (a shuffle, the references' crop of the whole set) falls in the pass that starts it."""

    def __init__(self, loader, steps: int) -> None:
        self.loader, self.steps, self._batches = loader, steps, iter(())

    def __len__(self) -> int:
        return self.steps

    def __getattr__(self, name: str):  # the loader's device, epoch
        return getattr(self.loader, name)

    def __iter__(self):
        for _ in range(self.steps):
            batch = next(self._batches, None)
            if batch is None:
                self._batches = iter(self.loader)
                batch = next(self._batches)
            yield batch


class OneBatch:
    """One batch of a loader, again each time: the untimed step a recipe takes when its turn comes, so that its
    timed passes do not pay for taking the memory and caches back from the recipe before it."""

    def __init__(self, loader) -> None:
        self.loader, self.batch = loader, next(iter(loader))

    def __len__(self) -> int:
        return 1

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def __iter__(self):
        yield self.batch


def fast_images(config: TrainConfig | None = None) -> dict[str, int]:
    """The images a whole run of `--recipe fast` (or `config`) trains with the whitening bias learning and
    frozen (its epochs from `--hard-from-epoch` on: the `--hard-fraction` of them)."""
    config = resolve_config(config or TrainConfig(recipe="fast"))
    batch, learning_epochs = config.batch_size, config.model_args["whiten_bias_epochs"]
    # the pools the product's loader draws from, counted by the product's own rule
    pools = HardestImages(TRAIN_IMAGES, config.hard_fraction, config.hard_from_epoch - 1, torch.device("cpu"))

    def images_in(epoch: int) -> int:  # the product's loader drops the last partial batch
        return max(1, pools.pool_size(epoch - 1) // batch) * batch

    return {"learning": sum(images_in(e) for e in range(1, learning_epochs + 1)),
            "frozen": sum(images_in(e) for e in range(learning_epochs + 1, config.epochs + 1))}


def reference_images(hyp: dict) -> dict[str, int]:
    """The same for a reference with these settings (`train_steps`: its steps, the last epoch cut short)."""
    per_epoch = TRAIN_IMAGES // hyp["batch_size"]  # steps; its loader drops the last partial batch
    total, learning = math.ceil(hyp["epochs"] * per_epoch), math.ceil(hyp["whiten_bias_epochs"] * per_epoch)
    return {"learning": learning * hyp["batch_size"], "frozen": (total - learning) * hyp["batch_size"]}


def _fast(data_dir: Path, steps: int, seed: int) -> tuple[Recipe, object]:
    learning_epochs = resolve_config(TrainConfig(recipe="fast")).model_args["whiten_bias_epochs"]
    # the whole training set, as a run has it; many epochs in the config, so that the schedule stays at its
    # first rate however many passes are taken
    config = TrainConfig(recipe="fast", dataset="imagefolder", data_dir=str(data_dir), val_fraction=0.0,
                         max_eval_samples=1000, progress=False, epochs=10_000, seed=seed)
    prepared = prepare(config)
    loop = _build_loop(prepared)
    loader, settle_loader = Steps(loop.train_loader, steps), OneBatch(loop.train_loader)
    timed = [p for p in prepared.model.parameters() if hasattr(p, "train_epochs")]

    def run_pass(learning: bool, settle: bool = False) -> int:
        for p in timed:  # the training loop freezes it once its epochs are done; a learning pass thaws it
            p.requires_grad_(learning)
        stats = training_pass(loop.train_model, settle_loader if settle else loader, loop.optimizer, loop.schedule,
                              loop.loss_fn,
                              epoch=1 if learning else learning_epochs + 1, epochs=10_000, progress=False,
                              lookahead=loop.lookahead, precision=prepared.precision)
        return stats.images

    return Recipe("fast", run_pass, fast_images(), 0.0), prepared  # its whitening's fit is not in its epochs


def _reference(name: str, module, prepared, steps: int, seed: int) -> Recipe:
    hyp, precision, train = module.HYP, prepared.precision, prepared.data.train
    x = normalise(train.images, torch.bfloat16 if precision == "bf16" else torch.float32)
    torch.manual_seed(seed)
    cpu = torch.device("cpu")
    whole = TrainLoader(x, train.labels, hyp["batch_size"])
    settle_loader, loader = OneBatch(whole), Steps(whole, steps)
    model = Net(hyp.get("scaling_factor")).to(memory_format=torch.channels_last)
    start = time.perf_counter()  # on its clock in a whole run
    model.init_whiten(x[mixed_sample(train.labels, 5000, seed)])
    whitening_seconds = time.perf_counter() - start
    if name == "airbench94":
        optimizer, lookahead = airbench94.optimizer_for(model, hyp["batch_size"]), airbench94.Lookahead(model)
        counter = iter(range(1, 1 << 62))

        def update(step: int, total: int, whiten_bias_steps: int) -> None:  # its step at its first rate
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if next(counter) % 5 == 0:
                lookahead.update(0.5)
    else:
        sgd, muon = airbench94_muon.optimizers_for(model, hyp["batch_size"])

        def update(step: int, total: int, whiten_bias_steps: int) -> None:
            sgd.step()
            muon.step()
            model.zero_grad(set_to_none=True)

    def run_pass(learning: bool, settle: bool = False) -> int:
        with contextlib.redirect_stdout(io.StringIO()):  # its per-epoch line
            train_steps(model, settle_loader if settle else loader, 1, EpochClock(cpu), cpu, precision,
                        1 if learning else 0, hyp["label_smoothing"], update)
        return (1 if settle else steps) * hyp["batch_size"]

    return Recipe(name, run_pass, reference_images(hyp), whitening_seconds)


def measure(recipes: list[Recipe], rounds: int) -> list[dict[str, dict[str, list[float]]]]:
    """Per round, each recipe's [seconds, images] in each phase: the recipes in an order rotated each round, each
    taking an untimed step, then its two passes, the phase first in turn."""
    for recipe in recipes:  # untimed: the first passes build oneDNN's kernels
        for phase in PHASES:
            recipe.run_pass(phase == "learning", False)
    results = []
    for turn in range(rounds):
        order = recipes[turn % len(recipes):] + recipes[:turn % len(recipes)]
        row: dict[str, dict[str, list[float]]] = {r.name: {} for r in recipes}
        for recipe in order:
            recipe.run_pass(True, True)
            for phase in (PHASES if turn % 2 == 0 else PHASES[::-1]):
                start = time.perf_counter()
                images = recipe.run_pass(phase == "learning", False)
                row[recipe.name][phase] = [time.perf_counter() - start, images]
        results.append(row)
        print(f"round {turn + 1}/{rounds}: " + ", ".join(
            f"{name} " + "/".join(f"{phases[p][1] / phases[p][0]:.0f}" for p in PHASES) + " img/s"
            for name, phases in row.items()), flush=True)
    return results


def costs(rows: list[dict[str, dict[str, list[float]]]]) -> dict[str, dict[str, float]]:
    """Each recipe's seconds per image in each phase over these rounds: all its passes' seconds over their
    images (a mean, so that the passes that begin an epoch carry its work, and the machine's slow stretches
    weigh on all three as they took turns through them)."""
    return {name: {phase: sum(row[name][phase][0] for row in rows) / sum(row[name][phase][1] for row in rows)
                   for phase in PHASES} for name in rows[0]}


def project(recipes: list[Recipe], cost: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each recipe's whole-run training seconds at these per-image costs."""
    return {r.name: r.fixed_seconds + sum(r.images[phase] * cost[r.name][phase] for phase in PHASES)
            for r in recipes}


def ratio(projection: dict[str, float]) -> float:
    """The fast recipe's training time over the faster reference's."""
    return projection["fast"] / min(t for name, t in projection.items() if name != "fast")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="ImageFolder root with train/ and test/")
    parser.add_argument("--rounds", type=int, default=20,
                        help="rounds of turns (default 20; a round took about a minute on a 2-core Xeon)")
    parser.add_argument("--steps", type=int, default=4,
                        help="steps per pass (default 4; airbench94_muon's batch is twice the others', so it "
                             "takes half as many)")
    parser.add_argument("--block", type=int, default=5, help="rounds per block for the spread (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights and images (default 0)")
    parser.add_argument("--json", type=Path, help="also write the per-round timings and the projection to this file")
    args = parser.parse_args()
    if args.rounds < 1 or args.steps < 2 or args.block < 1:
        parser.exit(2, "error: --rounds and --block must be at least 1 and --steps at least 2\n")
    refuse_folder_without_splits(parser, args.data_dir)
    fast, prepared = _fast(args.data_dir, args.steps, args.seed)
    recipes = [fast, _reference("airbench94", airbench94, prepared, args.steps, args.seed),
               _reference("airbench94_muon", airbench94_muon, prepared, args.steps // 2, args.seed)]
    rows = measure(recipes, args.rounds)
    cost = costs(rows)
    projection = project(recipes, cost)
    blocks = [ratio(project(recipes, costs(rows[i:i + args.block]))) for i in range(0, len(rows), args.block)]
    print("\n| recipe | images/s, whitening bias learning | images/s, frozen | projected training s |")
    print("|---|---:|---:|---:|")
    for r in recipes:
        print(f"| {r.name} | {1 / cost[r.name]['learning']:.0f} | {1 / cost[r.name]['frozen']:.0f} | "
              f"{projection[r.name]:.0f} |")
    print(f"\nfast / the faster reference: {ratio(projection):.3f} over {len(rows)} rounds; per block of "
          f"{args.block} rounds {min(blocks):.3f}-{max(blocks):.3f} (precision {prepared.precision})")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rows, "projection": projection, "ratio": ratio(projection),
                                         "block_ratios": blocks, "images": {r.name: r.images for r in recipes},
                                         "fixed_seconds": {r.name: r.fixed_seconds for r in recipes},
                                         "precision": prepared.precision, "steps": args.steps,
                                         "torch": torch.__version__}, indent=2) + "\n")


if __name__ == "__main__":
    main()
