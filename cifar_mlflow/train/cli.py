"""`python -m cifar_mlflow.train`: train one model and track everything in MLflow.

Exit status: 0 done, 1 the run failed (e.g. non-finite loss; marked FAILED), 2 bad input
(nothing created), 130 interrupted (marked KILLED, resumable with --resume RUN_ID).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from cifar_mlflow import distributed
from cifar_mlflow.arguments import add_config_arguments, collect_values, program_name
from cifar_mlflow.config import (
    COMMON_SETTINGS,
    GENERIC_RECOMMENDED,
    RECIPE_SETTINGS,
    TrainConfig,
    build_config,
    config_yaml,
    default_run_name,
    resolve_config,
    with_tracking_uri,
)
from cifar_mlflow.core.checkpoint import checkpoint_path, load_checkpoint
from cifar_mlflow.errors import ConfigError, NonFiniteLossError
from cifar_mlflow.models import list_models, model_description, recommended_settings
from cifar_mlflow.records import SourceRun
from cifar_mlflow.redaction import protect_console, redact
from cifar_mlflow.train.from_run import options_from_params, provenance_warnings

# The command's own flags, not options of the run.
COMMAND_ONLY = ("list_models", "print_config")
# Options that may differ from the interrupted run's own config when resuming it.
RESUME_OVERRIDABLE = {"epochs", "patience", "device", "progress", "tracking_uri", "resume", "checkpoint_dir",
                      "log_model", "register_model", "compile", "precision"}


def _recommended_table() -> str:
    keys = ("optimizer", "lr", "weight_decay", "scheduler", "epochs", "batch_size", "augment", "label_smoothing")
    lines = ["recommended settings per architecture (used for options you leave unset):",
             "  " + "arch".ljust(18) + "".join(k.ljust(13) for k in keys)]
    rows = [(name, rec) for name in list_models() if (rec := recommended_settings(name))]
    for name, rec in [*rows, ("others", GENERIC_RECOMMENDED)]:
        lines.append("  " + name.ljust(18) + "".join(f"{rec[k]:<13g}" if isinstance(rec[k], float)
                                                     else str(rec[k]).ljust(13) for k in keys))
        extra = {k: v for k, v in rec.items() if k not in keys}
        if extra:  # the settings beyond the common columns (airbench's momentum, lookahead, ...)
            lines.append("  " + " " * 18 + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in extra.items()))
    lines.append("  otherwise: " + ", ".join(f"{k} {v}" for k, v in COMMON_SETTINGS.items()))
    lines += ["", "recipes (their settings sit above the architecture's; options you give win):"]
    lines += [f"  {name}: " + ", ".join(f"{k} {v}" for k, v in settings.items())
              for name, settings in RECIPE_SETTINGS.items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("train"),
        description="Train an image classifier and log params, per-epoch metrics, plots and the model to MLflow.",
        epilog=_recommended_table() + "\n\nexamples:\n  python -m cifar_mlflow.train --arch cnn\n"
               "  python -m cifar_mlflow.train --recipe fast\n"
               "  python -m cifar_mlflow.train --arch mobilenetv2 --model-args '{\"width_mult\": 0.5}' --epochs 5\n"
               "  python -m cifar_mlflow.train --config run.yaml --lr 0.02\n"
               "  python -m cifar_mlflow.train --resume RUN_ID\n"
               "  python -m cifar_mlflow.train --from-run RUN_ID --seed 1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="read options from a YAML mapping (same names, snake_case); flags given here win")
    parser.add_argument("--list-models", action="store_true", default=argparse.SUPPRESS,
                        help="print the built-in architectures and exit")
    parser.add_argument("--print-config", action="store_true", default=argparse.SUPPRESS,
                        help="print the options this run would train with (the recipe's and the architecture's "
                             "recommended settings filled in, as its config.yaml artifact records them) and exit")
    add_config_arguments(parser, TrainConfig)
    return parser


def _resume_values(values: dict[str, Any], given: set[str], uri: str, workdir: Path) -> tuple[dict[str, Any], dict]:
    """The interrupted run's config (with the allowed overrides) and its checkpoint state."""
    from cifar_mlflow.tracking import download_checkpoint

    run_id = values["resume"]
    local = checkpoint_path(values.get("checkpoint_dir", TrainConfig.checkpoint_dir), run_id)
    path = local if local.is_file() else download_checkpoint(uri, run_id, workdir)
    state = load_checkpoint(path)
    base = dict(state["config"])
    changed = sorted(k for k in given - RESUME_OVERRIDABLE if values[k] != base.get(k))
    if changed:
        raise ConfigError(f"cannot change {changed[0]} when resuming run {run_id}; only "
                          f"{', '.join(sorted(RESUME_OVERRIDABLE - {'resume'}))} may be set with --resume")
    base.update({k: values[k] for k in given & RESUME_OVERRIDABLE})
    base["tracking_uri"] = values.get("tracking_uri")  # today's (the checkpoint keeps no password)
    if base["epochs"] <= state["epoch"]:
        raise ConfigError(f"run {run_id} already trained {state['epoch']} of {base['epochs']} epochs; "
                          "pass a larger --epochs to train further")
    return base, state


def _raise_keyboard_interrupt(signum, frame):  # SIGTERM (docker stop, kill) ends a run like Ctrl-C
    raise KeyboardInterrupt


def _close_run(logger, status: str, ckpt: Path | None) -> None:
    """Upload the checkpoint of an unfinished run, then close it; never leaves it RUNNING."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
    try:
        if logger.run_id is None:
            return
        if status != "FINISHED" and ckpt is not None and ckpt.is_file():
            try:
                logger.log_file(ckpt, "checkpoint")
            except Exception as exc:  # noqa: BLE001 - keep the local copy, say where it is
                print(f"warning: could not upload the checkpoint ({exc}); it stays at {ckpt}", file=sys.stderr)
        try:
            logger.end(status)
        except Exception as exc:  # noqa: BLE001
            print(f"warning: could not mark run {logger.run_id} {status}: {exc}", file=sys.stderr)
        if status == "FINISHED" and ckpt is not None:
            shutil.rmtree(ckpt.parent, ignore_errors=True)  # the model is logged; the checkpoint is not needed
    finally:
        signal.signal(signal.SIGINT, previous)


def _announce(logger, uri: str) -> None:
    """The run's id and how to go on if it stops, printed as soon as it exists."""
    for stale in logger.closed_stale:
        print(f"note: run {stale} had stopped sending heartbeats (its process is gone); marked KILLED. "
              f"Continue it with: python -m cifar_mlflow.train --resume {stale}", file=sys.stderr)
    print(f"run {logger.run_id} started at {uri}; if it stops, continue it with: "
          f"python -m cifar_mlflow.train --resume {logger.run_id}", file=sys.stderr)


def _follow(prepared) -> int:
    """A torchrun rank other than 0: train its shard; rank 0 logs and checkpoints for everyone."""
    from cifar_mlflow.core.fit import fit

    try:
        fit(prepared)
        return 0
    except KeyboardInterrupt:
        return 130
    except NonFiniteLossError:
        return 1


def main(argv: list[str] | None = None) -> int:
    protect_console()
    args = build_parser().parse_args(argv)
    if getattr(args, "list_models", False):
        for name in list_models():
            print(f"{name:20s} {model_description(name)}")
        print(f"{'tv:NAME':20s} any torchvision classifier, e.g. tv:resnet50, tv:efficientnet_b0")
        print(f"{'pkg.module:fn':20s} your own builder fn(num_classes=, in_channels=, **model_args)")
        return 0
    if getattr(args, "print_config", False):
        try:
            print(_resolved_config_text(args), end="")
        except ConfigError as exc:
            return _refuse(exc)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="cifar_mlflow-"))
    try:
        try:
            prepared, uri, state = _prepare(args, workdir)
        except ConfigError as exc:
            return _refuse(exc)
        except KeyboardInterrupt:  # while reading data: nothing was created yet
            print("\ninterrupted before the run started; nothing was logged", file=sys.stderr)
            return 130
        if not distributed.is_main():
            return _follow(prepared)
        return _train(prepared, uri, state)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        distributed.shutdown()


def _refuse(exc: ConfigError) -> int:
    """Bad input: one line on stderr, exit status 2, nothing created."""
    print(f"error: {redact(str(exc))}", file=sys.stderr)
    return 2


def _resolved_config_text(args: argparse.Namespace) -> str:
    """`--print-config`: the options a new run would train with, as its config.yaml records them; nothing
    read, nothing created. Raises `ConfigError`."""
    values, _ = collect_values(args, TrainConfig, extra=COMMAND_ONLY)
    if values.get("resume") or values.get("from_run"):
        raise ConfigError("--print-config shows the options of a new run; --resume and --from-run take "
                          "theirs from the run's record (its params, or its config.yaml artifact)")
    return config_yaml(resolve_config(build_config(values)))


def _prepare(args: argparse.Namespace, workdir: Path):
    """The options, the tracking server, torchrun, the resume state, the data and the model: all checked
    before anything is created. Raises `ConfigError`."""
    values, given = collect_values(args, TrainConfig, extra=COMMAND_ONLY)
    config = None  # resolved here where the options are all given; from the run's record after --resume/--from-run
    if not values.get("resume") and not values.get("from_run"):
        config = resolve_config(build_config(values))
    # Imported once the options are checked: `--help` and bad input answer without loading MLflow,
    # scikit-learn and matplotlib (seconds each).
    from cifar_mlflow.core.prepare import prepare
    from cifar_mlflow.tracking import check_tracking_server, refuse_live_run, tracking_uri
    from cifar_mlflow.tracking.run_inputs import read_init_weights

    uri = tracking_uri(values.get("tracking_uri"))
    if values.get("tracking_uri"):
        values["tracking_uri"] = uri  # credentials of an http URI are in the environment now
        config = config and with_tracking_uri(config, uri)
    check_tracking_server(uri)  # before the data is read: an unreachable server fails in seconds
    state = source = None
    if values.get("from_run"):
        values, source = _from_run_values(values, uri)
    if distributed.launched_by_torchrun():
        if values.get("resume"):
            raise ConfigError("--resume is not supported under torchrun yet; resume with a single process")
        import torch

        distributed.init("cuda" if values.get("device", "auto") != "cpu" and torch.cuda.is_available() else "cpu")
    if values.get("resume"):
        run_id = values["resume"]
        values, state = _resume_values(values, given, uri, workdir)
        refuse_live_run(uri, run_id)
    config = config or resolve_config(build_config(values))
    weights = None
    if config.init_from:  # fetched before the data is read; a resumed run's weights are its checkpoint's
        weights = state["model"] if state is not None else read_init_weights(config.init_from, uri)
    prepared = prepare(config, init_weights=weights)
    if prepared.init_report is not None and state is None and distributed.is_main():
        print(prepared.init_report.summary(), file=sys.stderr)
    if state is not None and state.get("data_digest") != prepared.data.digest:
        raise ConfigError(f"the data differs from the data run {values['resume']} was trained on "
                          f"(digest {prepared.data.digest} vs {state.get('data_digest')})")
    if source is not None and distributed.is_main():
        from cifar_mlflow.train.run_contents import git_commit

        for warning in provenance_warnings(source, git_commit(), prepared.data.digest):
            print(f"warning: {warning}", file=sys.stderr)
    return prepared, uri, state


def _from_run_values(values: dict[str, Any], uri: str) -> tuple[dict[str, Any], SourceRun]:
    """The recorded run's options under the ones given now, named and placed beside it."""
    from cifar_mlflow.tracking import fetch_source_run

    if values.get("resume"):
        raise ConfigError("--from-run trains a new run and --resume continues one: give one of them")
    source = fetch_source_run(uri, values["from_run"])
    recorded = options_from_params(source)
    changed = sorted(k for k, v in values.items() if k in recorded and recorded[k] != v)
    if changed:
        print(f"note: re-creating run {source.run_id} with {', '.join(f'{k}={values[k]}' for k in changed)} "
              "changed", file=sys.stderr)
    placed = {"run_name": f"{source.name}-rerun"}
    if not os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run`, its experiment wins
        placed["experiment_name"] = source.experiment_name
    return {**recorded, **placed, **values}, source


def _train(prepared, uri: str, state: dict[str, Any] | None) -> int:
    """Rank 0 (or the only process): open the run, train, close it with the status seen; the exit status."""
    from cifar_mlflow.core.run_logger import EXIT_STATUS, FINISHED, run_status
    from cifar_mlflow.tracking import MlflowLogger
    from cifar_mlflow.train.run import run

    config = prepared.config
    if os.environ.get("MLFLOW_RUN_ID") and config.experiment_name:
        print(f"note: experiment_name {config.experiment_name!r} is not used: `mlflow run` logs into the run it "
              "created; choose the experiment with `mlflow run --experiment-name`", file=sys.stderr)
    logger = MlflowLogger(uri, experiment_name=config.experiment_name or config.dataset,
                          run_name=config.run_name or default_run_name(config),
                          run_id=config.resume or os.environ.get("MLFLOW_RUN_ID"),  # resume, or `mlflow run`'s run
                          on_start=lambda run_id: _announce(logger, uri), keep_root=config.checkpoint_dir,
                          system_metrics=config.system_metrics)
    previous_term = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    error: BaseException | None = None
    try:
        run(prepared, logger=logger, checkpoint_dir=config.checkpoint_dir, resume_state=state)
        if logger.upload_error is not None:
            logger.set_tags({"cifar_mlflow.not_uploaded": f"artifacts kept at {logger.kept_dir.resolve()}"})
    except KeyboardInterrupt as exc:
        error = exc
        print(f"\ninterrupted: run {logger.run_id} marked KILLED; continue it with "
              f"python -m cifar_mlflow.train --resume {logger.run_id}", file=sys.stderr)
    except NonFiniteLossError as exc:
        error = exc
        print(f"error: {exc}; run {logger.run_id} marked FAILED", file=sys.stderr)
    except BaseException as exc:  # a crash: the run is closed FAILED, then the traceback goes on
        error = exc
        raise
    finally:
        status = run_status(error, stored_everything=logger.upload_error is None)
        ckpt = checkpoint_path(config.checkpoint_dir, logger.run_id) if logger.run_id else None
        _close_run(logger, status, ckpt)
        signal.signal(signal.SIGTERM, previous_term)
    code = EXIT_STATUS[status]
    if logger.upload_error is not None:
        print(f"error: the artifact store failed ({logger.upload_error}); run {logger.run_id} is marked FAILED and "
              f"its model, reports and checkpoint are kept in {logger.kept_dir}; once the store works, upload them "
              f"with: mlflow artifacts log-artifacts --run-id {logger.run_id} --local-dir {logger.kept_dir}",
              file=sys.stderr)
    if status == FINISHED:
        print(f"run {logger.run_id} FINISHED at {uri}; look at it with: {ui_command(uri)}", file=sys.stderr)
    return code


def ui_command(uri: str) -> str:
    """A command that shows the runs of `uri`: `mlflow ui` opens stores, a server is opened in a browser."""
    from cifar_mlflow.tracking.faults import is_tracking_server

    if is_tracking_server(uri):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"
