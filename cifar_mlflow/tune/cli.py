"""`python -m cifar_mlflow.tune`: an Optuna study whose every trial is a nested MLflow run.

Exit status: 0 done, 2 bad input (nothing created), 130 interrupted (the study and its parent run
stay consistent; the same command resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from cifar_mlflow.arguments import add_config_arguments, collect_values, program_name
from cifar_mlflow.config import TrainConfig, build_config, resolve_config
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.redaction import protect_console, redact
from cifar_mlflow.tune.options import TuneConfig, storage_url, validate_tune_config

TRAIN_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))
TUNE_NAMES = tuple(f.name for f in dataclasses.fields(TuneConfig))
# Trials are chosen and pruned by validation metrics, also under a recipe that trains without them.
TUNE_VAL_FRACTION = 0.1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("tune"),
        description="Search hyperparameters with Optuna: bad trials are pruned early, every trial is an MLflow "
                    "run nested under the study's parent run. Running the same command again resumes the study.",
        epilog="examples:\n  python -m cifar_mlflow.tune --trials 50\n"
               "  python -m cifar_mlflow.tune --arch mobilenetv2 --epochs 10 --trials 30 --pruner hyperband\n"
               "  python -m cifar_mlflow.tune --recipe fast --trials 50   # the fast recipe, with a validation split\n"
               "  OPTUNA_STORAGE=postgresql://db/optuna python -m cifar_mlflow.tune "
               "--search-space my_space.yaml --study-name shared   # on every worker (PGUSER, PGPASSWORD set)\n\n"
               "search-space format and shipped defaults: docs/tuning.md",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE.yaml", help="training options (the fixed base) from a YAML file")
    add_config_arguments(parser.add_argument_group("study options"), TuneConfig)
    add_config_arguments(parser.add_argument_group("training options: the fixed base of every trial"), TrainConfig)
    return parser


def parse_configs(argv: list[str] | None) -> tuple[TuneConfig, TrainConfig]:
    args = build_parser().parse_args(argv)
    train_values, _ = collect_values(args, TrainConfig, extra=TUNE_NAMES)
    for name in ("resume", "from_run"):
        if train_values.get(name):
            raise ConfigError(f"--{name.replace('_', '-')} belongs to the training command; a study resumes by its "
                              "--study-name, and a run's settings are tuned from its options")
    if train_values.get("val_fraction") == 0:
        raise ConfigError("tuning compares trials on a validation split: --val-fraction must be above 0")
    if train_values.get("val_fraction") is None:
        train_values["val_fraction"] = TUNE_VAL_FRACTION
    tune_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k in TUNE_NAMES})
    tune_values, _ = collect_values(tune_args, TuneConfig)
    tune = TuneConfig(**tune_values)
    tune.storage = storage_url(tune.storage)
    validate_tune_config(tune)
    return tune, resolve_config(build_config(train_values))


def main(argv: list[str] | None = None) -> int:
    protect_console()
    try:
        ctx, sampler, pruner, storage = _prepare(argv)
        from cifar_mlflow.tune.study import open_study  # loaded by _prepare once the options were checked

        study = open_study(ctx, storage=storage, sampler=sampler, pruner=pruner)
    except ConfigError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    return _run(ctx, study)


def _prepare(argv: list[str] | None):
    """Everything checked and built before the study exists: options, search space, architectures,
    sampler, pruner, the tracking server, the storage and the data. Raises `ConfigError`."""
    from cifar_mlflow.models.registry import check_model_name
    from cifar_mlflow.tune.search_space import default_search_space, load_search_space

    tune, base = parse_configs(argv)
    space = load_search_space(tune.search_space) if tune.search_space else default_search_space()
    for spec in space:  # (the base's architecture was checked with its options)
        if spec.name == "arch":
            for choice in spec.choices:
                check_model_name(str(choice))
    # Imported once the options and the search space are checked: `--help` and bad input answer without
    # loading MLflow, Optuna and the data libraries.
    from cifar_mlflow.tracking import StudyTracker, check_tracking_server, tracking_uri
    from cifar_mlflow.tune.samplers import build_pruner, build_sampler
    from cifar_mlflow.tune.storage import build_storage
    from cifar_mlflow.tune.study import StudyContext

    sampler = build_sampler(tune, space, base.seed)
    pruner = build_pruner(tune, base.epochs)
    study_name = tune.study_name or f"{base.arch.replace(':', '-')}-{base.dataset}"
    uri = tracking_uri(base.tracking_uri)
    if base.tracking_uri:
        base = dataclasses.replace(base, tracking_uri=uri)  # credentials of an http URI: in the environment
    check_tracking_server(uri)
    storage = build_storage(tune.storage, uri=uri, heartbeat_interval=tune.heartbeat_interval,
                            retry_failed=tune.retry_failed)  # both before the data is read
    tracker = StudyTracker(uri, base.experiment_name or base.dataset, study_name)
    ctx = StudyContext(tune, base, space, uri, tracker)
    if base.init_from:
        from cifar_mlflow.tracking.run_inputs import read_init_weights

        ctx.init_weights = read_init_weights(base.init_from, uri)
    ctx.data_for(base)  # a missing data set fails here, before the study exists
    return ctx, sampler, pruner, storage


def _run(ctx, study) -> int:
    """Run the trials (and the retraining), keep the parent run's report current, close it with the
    status seen; returns the exit status."""
    from cifar_mlflow.core.run_logger import EXIT_STATUS, run_status
    from cifar_mlflow.train.run_contents import git_commit, split_inputs
    from cifar_mlflow.tune.search_space import search_space_text
    from cifar_mlflow.tune.study import base_params, open_parent, optimize, publish, retrain_best, top_trials_text

    tune, tracker = ctx.tune, ctx.tracker
    before = len(study.trials)
    open_parent(ctx, study)
    tracker.log_params(base_params(ctx.base, tune))
    commit = git_commit()
    tracker.describe(tags={"git_commit": commit} if commit else {},
                     datasets=split_inputs(ctx.base.dataset, ctx.data_for(ctx.base)),
                     search_space_yaml=search_space_text(tune.search_space))
    print(f"study {tracker.study_name!r}: {before} earlier trials; running {tune.trials} more "
          f"(MLflow parent run {tracker.run_id} at {ctx.uri})", file=sys.stderr)
    error: BaseException | None = None
    try:
        optimize(ctx, study)
        if tune.retrain_best:
            retrain_best(ctx, study)
    except ConfigError as exc:  # retraining the best trial could not rebuild its configuration: the study is whole
        error = exc
        print(f"error: {redact(str(exc))}", file=sys.stderr)
    except KeyboardInterrupt as exc:
        error = exc
        print("\ninterrupted: the current trial is marked failed; run the same command to resume the study",
              file=sys.stderr)
    except BaseException as exc:
        error = exc
        raise
    finally:
        status = run_status(error, finished_on=(ConfigError,))
        try:
            publish(ctx, study, with_artifacts=True)
        except Exception as exc:  # noqa: BLE001 - the study itself is safe in its storage
            print(f"warning: could not update the parent run's report: {redact(str(exc))}", file=sys.stderr)
        tracker.close(status)
    print(top_trials_text(study))
    return 1 if isinstance(error, ConfigError) else EXIT_STATUS[status]
