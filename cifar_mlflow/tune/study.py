"""Optuna at the edge: with `storage.py` (the database the workers share), the only module that talks to
Optuna (which is why it is longer than the others: samplers, pruners, the objective, the parent run's report).

Every trial calls the same `prepare` and `run` as the training command, with a per-epoch callback
that reports the validation metric and prunes. Each trial is an MLflow run nested under the
study's parent run (`cifar_mlflow.tracking.StudyTracker`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from cifar_mlflow.config import TrainConfig, config_params, registered_name_and_alias
from cifar_mlflow.core.prepare import load_splits, prepare
from cifar_mlflow.core.run_logger import ended_run, run_status
from cifar_mlflow.data import DataSplits
from cifar_mlflow.data.splits import merge_train_and_val
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.tracking import MlflowLogger, StudyTracker, set_tags
from cifar_mlflow.train.run import run
from cifar_mlflow.tune.options import TuneConfig
from cifar_mlflow.tune.plots import study_figures, study_page
from cifar_mlflow.tune.search_space import DEFAULT_SPACE_NAME, ParamSpec, sample_config
from cifar_mlflow.tune.storage import RUN_ATTR, is_database_outage

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in practice

PARENT_ATTR = "mlflow_parent_run_id"


def suggest(trial: optuna.Trial, spec: ParamSpec) -> Any:
    if spec.kind == "categorical":
        return trial.suggest_categorical(spec.name, list(spec.choices))
    if spec.kind == "int":
        return trial.suggest_int(spec.name, spec.low, spec.high, step=spec.step or 1, log=spec.log)
    if spec.step:
        return trial.suggest_float(spec.name, spec.low, spec.high, step=spec.step)
    return trial.suggest_float(spec.name, spec.low, spec.high, log=spec.log)


@dataclass
class StudyContext:
    """What every trial of this worker shares."""

    tune: TuneConfig
    base: TrainConfig
    space: list[ParamSpec]
    uri: str
    tracker: StudyTracker
    data_cache: dict[tuple, DataSplits] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    best_run_id: str | None = None
    retry_after_outage: set[int] = field(default_factory=set)  # trials the database's absence failed
    trials_started: int = 0  # by this worker, in this command
    taken_over: int = 0  # this worker's trials another worker failed under it
    failed_in_outage: int = 0  # this worker's trials an outage failed, their settings queued again
    init_weights: dict[str, Any] | None = None  # what --init-from names, fetched once for every trial

    @property
    def failed_by_storage(self) -> int:
        """This worker's trials the storage failed, not their settings: they do not use up --trials, so the
        study gets the complete trials it was asked for."""
        return self.taken_over + self.failed_in_outage

    def data_for(self, config: TrainConfig) -> DataSplits:
        """The split data set, read once per worker (trials differ in hyperparameters, not data)."""
        key = (config.dataset, config.data_dir, config.image_size, config.val_fraction, config.seed,
               config.max_train_samples, config.max_eval_samples)
        with self.lock:
            if key not in self.data_cache:
                self.data_cache[key] = load_splits(config)
            return self.data_cache[key]


class TrialTakenOver(optuna.TrialPruned):
    """This worker's trial was failed by another worker while it ran (its heartbeats came later than the grace
    period allows: a storage unreachable for that long, or a machine too loaded to send them). Raised from the
    objective so that Optuna logs it in one line (as a pruned trial, without a traceback) and then refuses to
    tell the finished trial, which `optimize` answers by going on with the next trial."""


def best_value(history: list[dict[str, float]], metric: str) -> float:
    values = [h[metric] for h in history]
    return max(values) if metric == "val_acc" else min(values)


def make_objective(ctx: StudyContext):
    def objective(trial: optuna.Trial) -> float:
        with ctx.lock:
            ctx.trials_started += 1
        config, _ = sample_config(ctx.space, ctx.base, lambda spec: suggest(trial, spec))
        config = dataclasses.replace(config, run_name=f"trial-{trial.number}", log_model=ctx.tune.log_models,
                                     register_model=None, progress=ctx.tune.n_jobs == 1 and ctx.base.progress)
        logger = MlflowLogger(ctx.uri, ctx.tracker.experiment_name, f"trial-{trial.number}",
                              parent_run_id=ctx.tracker.run_id, params={"trial_number": trial.number},
                              tags={"trial_number": str(trial.number), "optuna.study_name": ctx.tracker.study_name},
                              # the trial knows its run as soon as it exists: a worker that dies closes it
                              on_start=lambda run_id: trial.set_user_attr(RUN_ATTR, run_id),
                              system_metrics=config.system_metrics)
        reported: list[int] = []

        def report(epoch: int, metrics: dict[str, float]) -> None:
            value = metrics[ctx.tune.metric]
            if not math.isfinite(value):
                raise FloatingPointError(f"{ctx.tune.metric} is {value} at epoch {epoch}")
            # A user attribute, unlike `report`, refuses a trial that is no longer running: one another worker
            # failed under this one stops here (`TrialTakenOver`) instead of training on for nothing.
            trial.set_user_attr("epochs_reported", epoch)
            trial.report(value, epoch)
            reported.append(epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({ctx.tune.metric} {value:.4f})")

        error: BaseException | None = None
        try:
            prepared = prepare(config, data=ctx.data_for(config), init_weights=ctx.init_weights)
            result = run(prepared, logger=logger, callbacks=[report])
            value = best_value(result.history, ctx.tune.metric)
            # again after the test pass and the logged model (seconds to minutes), which a takeover may outlast
            trial.set_user_attr("epochs_reported", reported[-1] if reported else 0)
            logger.set_tags({"optuna.state": "COMPLETE", "objective": f"{value:.6g}"})
            return value
        except optuna.TrialPruned as exc:
            error = exc
            epoch = reported[-1] if reported else 0
            trial.set_user_attr("pruned_at_epoch", epoch)
            logger.set_tags({"optuna.state": "PRUNED", "pruned_at_epoch": str(epoch)})
            raise
        except KeyboardInterrupt as exc:
            error = exc
            logger.set_tags({"optuna.state": "FAIL", "optuna.fail_reason": "interrupted (Ctrl-C)"})
            raise
        except optuna.exceptions.UpdateFinishedTrialError as exc:
            error = exc
            logger.set_tags({"optuna.state": "FAIL", "optuna.fail_reason": "failed by another worker: this worker's "
                             "heartbeats came later than the grace period"})
            with ctx.lock:
                ctx.taken_over += 1
            raise TrialTakenOver(f"trial {trial.number} was failed by another worker while this one ran it: its "
                                 "heartbeats came later than the grace period (the storage unreachable or the "
                                 "machine overloaded for that long); this worker runs another trial in its "
                                 "place") from None
        except Exception as exc:
            error = exc
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            if is_database_outage(exc):  # outlasted the storage's own patience: run these settings again
                reason = f"the Optuna storage was unreachable ({reason})"
                ctx.retry_after_outage.add(trial.number)
            trial.set_user_attr("fail_reason", reason)
            logger.set_tags({"optuna.state": "FAIL", "optuna.fail_reason": reason})
            print(f"trial {trial.number} failed: {reason}", file=sys.stderr)
            raise
        finally:  # a pruned trial's run ended as planned: FINISHED, its state in the tags
            logger.end(run_status(error, finished_on=(optuna.TrialPruned,)))

    return objective


def study_summary(study: optuna.Study, epochs: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Counts, best value and trial, epochs saved by pruning; and the best params as `best_<name>`."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    saved = sum(max(0, epochs - int(t.user_attrs.get("pruned_at_epoch", t.last_step or 0))) for t in pruned)
    configurations = {tuple(sorted((k, repr(v)) for k, v in t.params.items())) for t in trials if t.params}
    metrics = {"trials_complete": states.count(TrialState.COMPLETE), "trials_pruned": len(pruned),
               "trials_failed": states.count(TrialState.FAIL), "epochs_saved_by_pruning": saved,
               "distinct_configurations": len(configurations)}
    params: dict[str, Any] = {}
    if metrics["trials_complete"]:
        best = study.best_trial
        metrics.update(best_value=best.value, best_trial=best.number)
        params = {f"best_{k}": v for k, v in best.params.items()}
        metrics.update({k: float(v) for k, v in params.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return metrics, params


def trials_table(study: optuna.Study):
    """All trials as a pandas DataFrame (number, state, value, params, pruned epoch, MLflow run)."""
    return study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))


def publish(ctx: StudyContext, study: optuna.Study, with_artifacts: bool) -> None:
    """Parent-run metrics and best params; with artifacts: the trials table and the plots."""
    import matplotlib.pyplot as plt

    metrics, best_params = study_summary(study, ctx.base.epochs)
    finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    with ctx.lock:
        ctx.tracker.log_progress(metrics, best_params, step=finished)
        if metrics.get("trials_complete"):
            best_run = study.best_trial.user_attrs.get(RUN_ATTR)
            ctx.tracker.mark_best(best_run, ctx.best_run_id)
            ctx.best_run_id = best_run
    if not with_artifacts:
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        trials_table(study).to_csv(out / "trials.csv", index=False)
        (out / "plots").mkdir()
        for name, figure in study_figures(study).items():
            figure.savefig(out / "plots" / f"{name}.png", dpi=110, bbox_inches="tight")
            plt.close(figure)
        try:
            page = study_page(study, f"Study {ctx.tracker.study_name}")
        except Exception as exc:  # noqa: BLE001 - the interactive page is extra: the PNGs and the table still go
            page = None
            tqdm.write(f"warning: no interactive study page ({type(exc).__name__}: {exc})", file=sys.stderr)
        if page:
            (out / "plots" / "study.html").write_text(page)
        ctx.tracker.log_artifact_dir(out)


def open_study(ctx: StudyContext, *, storage: optuna.storages.RDBStorage, sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """The study `ctx` names, created or resumed; `ConfigError` when it optimises the other way."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name, direction = ctx.tracker.study_name, ctx.tune.direction
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {name!r} {study.direction.name.lower()}s; --metric {ctx.tune.metric} "
                          f"{direction}s: use another --study-name")
    study.set_user_attr("metric", ctx.tune.metric)
    return study


def open_parent(ctx: StudyContext, study: optuna.Study) -> None:
    """The parent run for this study: the one recorded in the study, else a new one (race-safe).

    Workers starting together each create a candidate; after a pause every one of them adopts the candidate
    created first and deletes its own. (The rule had been "the last to write the study's attribute wins",
    which a worker slower than the pause could break after others had adopted the run it then deleted.)"""
    ctx.tracker.open(study.user_attrs.get(PARENT_ATTR))
    if study.user_attrs.get(PARENT_ATTR) == ctx.tracker.run_id:
        return
    time.sleep(2.0)  # workers starting together: every candidate exists by now, or is younger than ours
    winner = ctx.tracker.first_parent()
    if winner != ctx.tracker.run_id:
        ctx.tracker.discard()
        ctx.tracker.run_id = None
        ctx.tracker.open(winner)
    study.set_user_attr(PARENT_ATTR, winner)


def optimize(ctx: StudyContext, study: optuna.Study) -> None:
    """Run `ctx.tune.trials` new trials (or until the timeout), publishing progress after each. A trial that
    the storage failed (`failed_by_storage`) is run again in its place, at most `trials` times in all, so that
    an outage cannot keep a worker going for ever."""

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.number in ctx.retry_after_outage and trial.state == TrialState.FAIL:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            with ctx.lock:
                ctx.failed_in_outage += 1
            tqdm.write(f"trial {trial.number} failed while the Optuna storage was unreachable; its settings are "
                       "queued to run again and this worker runs one more trial", file=sys.stderr)
        publish(ctx, study, with_artifacts=False)
        value = "" if trial.value is None else f" {ctx.tune.metric} {trial.value:.4f}"
        extra = f" at epoch {trial.user_attrs['pruned_at_epoch']}" if "pruned_at_epoch" in trial.user_attrs else ""
        best = ""
        if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            best = f"  (best {study.best_value:.4f}, trial {study.best_trial.number})"
        tqdm.write(f"trial {trial.number} {trial.state.name}{extra}{value}{best}", file=sys.stderr)

    objective = make_objective(ctx)
    deadline = None if ctx.tune.timeout is None else time.monotonic() + ctx.tune.timeout
    trials = ctx.tune.trials
    while (left := trials - ctx.trials_started + min(trials, ctx.failed_by_storage)) > 0:
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            return
        taken_over, failed_by_storage = ctx.taken_over, ctx.failed_by_storage
        try:  # Optuna's progress bar over the trials (or the --timeout), the best value so far beside it
            study.optimize(objective, n_trials=left, timeout=timeout, n_jobs=ctx.tune.n_jobs, catch=(Exception,),
                           callbacks=[after_trial], gc_after_trial=True, show_progress_bar=ctx.base.progress)
            if ctx.failed_by_storage == failed_by_storage:
                return
        except ValueError:  # Optuna cannot tell a trial another worker finished: the trial is that worker's now
            if ctx.taken_over == taken_over:
                raise
            publish(ctx, study, with_artifacts=False)


def top_trials_text(study: optuna.Study, k: int = 10) -> str:
    """A console table of the best trials and the counts."""
    df = trials_table(study)
    if df.empty:
        return "no trials"
    metrics, _ = study_summary(study, 0)
    ascending = study.direction == optuna.study.StudyDirection.MINIMIZE
    done = df[df["state"] == "COMPLETE"].sort_values("value", ascending=ascending).head(k)
    keep = ["number", "value"] + [c for c in df.columns if c.startswith("params_")]
    table = "(none complete)"
    if len(done):
        table = done[keep].rename(columns=lambda c: c.removeprefix("params_")).to_string(index=False)
    counts = (f"{metrics['trials_complete']} complete, {metrics['trials_pruned']} pruned, "
              f"{metrics['trials_failed']} failed; {metrics['distinct_configurations']} distinct configurations")
    return f"top trials ({study.direction.name.lower()} {study.user_attrs.get('metric', '')}):\n{table}\n{counts}"


def base_params(base: TrainConfig, tune: TuneConfig) -> dict[str, Any]:
    """The parent run's params: the fixed training options and the study's options."""
    params = config_params(base)
    params.update({f"tune.{k}": v for k, v in dataclasses.asdict(tune).items()})
    params["tune.search_space"] = tune.search_space or DEFAULT_SPACE_NAME
    return params


def retrain_best(ctx: StudyContext, study: optuna.Study) -> str | None:
    """Train the best trial's configuration on train + validation and log it as a run linked to the study.

    Returns:
        The new run's id, or None when no trial completed.
    """
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        print("no complete trial: nothing to retrain", file=sys.stderr)
        return None
    best = study.best_trial
    fixed = optuna.trial.FixedTrial(best.params)
    try:
        config, _ = sample_config(ctx.space, ctx.base, lambda spec: suggest(fixed, spec))
    except ValueError as exc:  # the search space changed since the best trial ran
        raise ConfigError(f"cannot rebuild trial {best.number}'s configuration from this search space: {exc}") from None
    name = f"{ctx.tracker.study_name}-best"
    registered = None
    if ctx.base.register_model:  # the study's best is the champion, unless the option names an alias
        registered = "@".join(registered_name_and_alias(ctx.base.register_model, default_alias="champion"))
    config = dataclasses.replace(config, run_name=name, log_model=True, register_model=registered)
    prepared = prepare(config, data=merge_train_and_val(ctx.data_for(config)), init_weights=ctx.init_weights)
    logger = MlflowLogger(ctx.uri, ctx.tracker.experiment_name, name,
                          tags={"optuna.study_name": ctx.tracker.study_name, "cifar_mlflow.kind": "retrained_best",
                                "cifar_mlflow.study_run_id": ctx.tracker.run_id,
                                "retrained_from_trial": str(best.number)})
    print(f"retraining trial {best.number}'s configuration on train + validation", file=sys.stderr)
    with ended_run(logger):
        run(prepared, logger=logger)
    set_tags(ctx.tracker.client, ctx.tracker.run_id, {"retrained_run_id": logger.run_id})
    return logger.run_id
