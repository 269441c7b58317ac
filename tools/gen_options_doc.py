"""Write docs/options.md from the commands' config dataclasses (run after changing them)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gen_mlproject import EXCLUDED, declared, mlproject_default

from cifar_mlflow.bench.options import BenchConfig
from cifar_mlflow.compare.cli import CompareConfig
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.tune.options import TuneConfig


def render() -> str:
    lines = [
        "# Options of the training command",
        "",
        "Generated from `cifar_mlflow.config.TrainConfig` by `tools/gen_options_doc.py`; the tests fail",
        "when this page and the code drift apart. The same names work in three places:",
        "",
        "- on the command line as `--kebab-case` flags: `python -m cifar_mlflow.train --batch-size 64`",
        "  (booleans: `--compile`, `--compile false`, `--no-compile`);",
        "- in a YAML file given with `--config run.yaml`, as `snake_case` keys (flags given on the",
        "  command line win over the file);",
        "- as `mlflow run` parameters: `mlflow run . -P batch_size=64`.",
        "",
        "Options marked *recommended* default to the per-architecture settings in",
        "[architectures.md](architectures.md); leaving them out (or `auto`) selects them, and",
        "anything you set wins. Optional numbers take `none` to mean unset.",
        "",
    ]
    lines += option_table(TrainConfig)
    lines += ["", "Also: `--config FILE.yaml` (read options from YAML), `--list-models` (print the built-in",
              "architectures) and `--print-config` (print the options a run would train with, recommended",
              "settings filled in, and exit). Exit status: 0 finished, 1 the run failed (marked FAILED), 2 bad input",
              "(nothing created), 130 interrupted (marked KILLED; continue with `--resume RUN_ID`)."]
    lines += ["", "## Options of the tuning command", "",
              "`python -m cifar_mlflow.tune` (MLproject entry point `tune`) takes these, and every training",
              "option above as the fixed base of all trials; see [tuning.md](tuning.md).", ""]
    lines += option_table(TuneConfig)
    lines += ["", "## Options of the comparison command", "",
              "`python -m cifar_mlflow.compare` (MLproject entry point `compare`); "
              "see [comparing.md](comparing.md).", ""]
    lines += option_table(CompareConfig)
    lines += ["", "## Options of the benchmark command", "",
              "`python -m cifar_mlflow.bench` (not an MLproject entry point: it starts its own MLflow server",
              "to measure against); see [benchmarks.md](benchmarks.md).", ""]
    lines += option_table(BenchConfig, mlproject=False)
    return "\n".join(lines) + "\n"


def option_table(config_cls: type, mlproject: bool = True) -> list[str]:
    lines = [f"| option | {'MLproject default' if mlproject else 'default'} | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        if not mlproject:
            default = "unset" if f.default is None else f"`{f.default}`"
        else:
            if f.name in EXCLUDED:
                default = "(not a parameter)"
            else:
                default = f"`{mlproject_default(f)}`" if declared(f) else "undeclared: `-P NAME=VALUE` if wanted"
        choices = f.metadata.get("choices")
        meaning = f.metadata["help"] + (f" (one of: {', '.join(choices)})" if choices else "")
        lines.append(f"| `{flag}` | {default} | {meaning.replace('|', '/')} |")
    return lines


if __name__ == "__main__":
    Path(__file__).resolve().parent.parent.joinpath("docs", "options.md").write_text(render())
