"""`cifar-mlflow COMMAND ...`: the one console script; each command is also `python -m cifar_mlflow.COMMAND`.

The commands keep their own parsers (`cifar_mlflow.COMMAND.cli.build_parser`), loaded only when called, so
`cifar-mlflow train --help` answers as fast as `python -m cifar_mlflow.train --help`. `cifar-mlflow
completion bash|zsh|tcsh` prints a completion script generated from those same parsers (shtab).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> what it does, in the words of the top-level --help.
COMMANDS = {
    "train": "train one model and log it to MLflow (python -m cifar_mlflow.train)",
    "tune": "an Optuna study, every trial a nested MLflow run (python -m cifar_mlflow.tune)",
    "compare": "an HTML, CSV or Markdown report comparing runs (python -m cifar_mlflow.compare)",
    "bench": "benchmark the training pipeline (python -m cifar_mlflow.bench)",
}
SHELLS = ("bash", "zsh", "tcsh")


def command_cli(name: str):
    """The command's `cli` module (its `build_parser` and `main`), loaded when called."""
    return importlib.import_module(f"cifar_mlflow.{name}.cli")


def build_parser() -> argparse.ArgumentParser:
    """The top level: the commands with their summaries, and the completion command."""
    parser = argparse.ArgumentParser(
        prog="cifar-mlflow",
        description="Train, track, tune and compare image classifiers with PyTorch, MLflow and Optuna.",
        epilog="examples:\n  cifar-mlflow train --arch cnn\n  cifar-mlflow tune --trials 50\n"
               "  cifar-mlflow compare --runs RUN_A RUN_B --format md\n"
               "  cifar-mlflow completion bash > ~/.local/share/bash-completion/completions/cifar-mlflow\n\n"
               "every option of every command: cifar-mlflow COMMAND --help, docs/options.md",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    completion = sub.add_parser("completion", help="print a shell completion script for cifar-mlflow",
                                description="Print a completion script for every command and option of "
                                            "cifar-mlflow. bash: cifar-mlflow completion bash > "
                                            "~/.local/share/bash-completion/completions/cifar-mlflow; zsh: "
                                            "cifar-mlflow completion zsh > ~/.zfunc/_cifar-mlflow (with ~/.zfunc "
                                            "in $fpath)")
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    return parser


# Options that name a file or a folder, completed as paths.
FILE_OPTIONS = {"config", "search_space", "json"}
FOLDER_OPTIONS = {"data_dir", "checkpoint_dir", "output"}


def completion_parser() -> argparse.ArgumentParser:
    """The whole command line in one parser (each command's options under its name), for shtab: the
    options' words (`--precision bf16`) and paths (`--data-dir`) completed. Never used to parse."""
    import shtab

    parser = argparse.ArgumentParser(prog="cifar-mlflow")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        command = sub.add_parser(name, help=summary, parents=[command_cli(name).build_parser()], add_help=False)
        for action in command._actions:
            if getattr(action, "completion_choices", None):
                action.choices = action.completion_choices
            elif action.dest in FILE_OPTIONS:
                action.complete = shtab.FILE
            elif action.dest in FOLDER_OPTIONS:
                action.complete = shtab.DIRECTORY
    sub.add_parser("completion", help="print a shell completion script").add_argument("shell", choices=SHELLS)
    return parser


def completion_script(shell: str) -> str:
    import shtab

    return shtab.complete(completion_parser(), shell=shell)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:  # the command parses its own options
        return command_cli(argv[0]).main(argv[1:])
    args = build_parser().parse_args(argv)  # --help, a completion request, or an unknown command (status 2)
    print(completion_script(args.shell), end="")
    return 0
