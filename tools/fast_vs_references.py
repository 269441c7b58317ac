"""`--recipe fast` against the two references (tools/airbench94.py, tools/airbench94_muon.py), interleaved.

For each seed, runs airbench94, airbench94_muon and `python -m cifar_mlflow.train --recipe fast` one after
the other on the same image folder (MLflow logging on, to the store given), then the next seed, so a
machine that drifts affects all three alike; each seed starts with the next recipe of the list (seed 0's order
airbench94, airbench94_muon, fast; seed 1's airbench94_muon, fast, airbench94; ...), so none of them always
runs last, after the others have warmed or loaded the machine. The references run with glibc's allocator set
as the product sets it for itself (`cifar_mlflow.hardware.keep_freed_memory`; without it a step's large freed
blocks go back to the system and are zeroed again), so that neither side has a faster allocator.
Each run's result is appended to a JSON-lines file as it ends (a long sitting can be stopped and its runs
kept); the table of means is printed at the end.

    python tools/fast_vs_references.py --data-dir data/cifar10-jpg --seeds 0 1 2 \
        --tracking-uri sqlite:////work/results/mlflow.db --out fast-vs-references.jsonl

Training seconds: the references' own clocks (the epochs and the whitening); for the fast recipe the
sum of its logged `epoch_seconds`. Wall seconds: the whole command, reading the images included. On a machine
whose pace drifts within minutes (a shared virtual machine), whole runs one after another measure the drift:
`tools/interleaved_step_costs.py` times the three taking turns every few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cifar_mlflow.hardware import keep_freed_memory_environment

TOOLS = Path(__file__).resolve().parent
RECIPES = ("airbench94", "airbench94_muon", "fast")


def run_reference(name: str, data_dir: Path, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run([sys.executable, str(TOOLS / f"{name}.py"), "--data-dir", str(data_dir), "--seed", str(seed),
                        "--json", str(out)], check=True, env={**os.environ, **keep_freed_memory_environment()})
        result = json.loads(out.read_text())
    return {"test_acc_tta": result["test_acc_tta"], "test_acc": result["test_acc"],
            "train_seconds": result["train_seconds"], "precision": result["precision"]}


def run_fast(data_dir: Path, seed: int, tracking_uri: str, experiment: str, extra: list[str]) -> dict:
    from mlflow.tracking import MlflowClient

    name = f"fast-vs-references-s{seed}-{int(time.time())}"
    subprocess.run([sys.executable, "-m", "cifar_mlflow.train", "--recipe", "fast", "--dataset", "imagefolder",
                    "--data-dir", str(data_dir), "--seed", str(seed), "--tracking-uri", tracking_uri,
                    "--experiment-name", experiment, "--run-name", name, "--no-progress", *extra], check=True)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    run = client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")[0]
    seconds = sum(m.value for m in client.get_metric_history(run.info.run_id, "epoch_seconds"))
    return {"test_acc_tta": run.data.metrics["test_acc"], "train_seconds": round(seconds, 1),
            "run_id": run.info.run_id, "precision": run.data.params.get("precision", "")}


def table(rows: list[dict]) -> str:
    lines = ["| run | test acc (TTA) per seed | mean | training s per seed | mean | wall s mean |",
             "|---|---|---:|---|---:|---:|"]
    for recipe in RECIPES:
        mine = [r for r in rows if r["recipe"] == recipe]
        if not mine:
            continue
        accs = [100 * r["test_acc_tta"] for r in mine]
        secs = [r["train_seconds"] for r in mine]
        lines.append(f"| {recipe} | {', '.join(f'{a:.2f}' for a in accs)} | {statistics.mean(accs):.2f} | "
                     f"{', '.join(f'{s:.0f}' for s in secs)} | {statistics.mean(secs):.0f} | "
                     f"{statistics.mean(r['wall_seconds'] for r in mine):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="ImageFolder root with train/ and test/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, each run by all three")
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES), help="which to run")
    parser.add_argument("--tracking-uri", required=True, help="where the fast recipe's runs are logged")
    parser.add_argument("--experiment", default="fast-vs-references", help="their MLflow experiment")
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file the results are appended to")
    parser.add_argument("--train-args", default="", help="more options for the fast recipe's command, quoted")
    args = parser.parse_args()
    rows = []
    for turn, seed in enumerate(args.seeds):
        for recipe in args.recipes[turn % len(args.recipes):] + args.recipes[:turn % len(args.recipes)]:
            start = time.perf_counter()
            if recipe == "fast":
                result = run_fast(args.data_dir, seed, args.tracking_uri, args.experiment, args.train_args.split())
            else:
                result = run_reference(recipe, args.data_dir, seed)
            row = {"recipe": recipe, "seed": seed, **result, "wall_seconds": round(time.perf_counter() - start, 1),
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            rows.append(row)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
