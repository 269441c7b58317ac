"""How a study picks and stops trials: samplers seeded per trial (a study reproducible whatever the
workers' interleaving) and pruners."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import optuna

from cifar_mlflow.errors import ConfigError
from cifar_mlflow.tune.options import TuneConfig
from cifar_mlflow.tune.search_space import ParamSpec


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The seed of one trial's draws: the same for the same study seed and trial number, anywhere."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0])


class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """A sampler whose draws for each trial are seeded by (study seed, trial number).

    Optuna's samplers are seeded once per process, so two workers with the same `--seed`, or a study
    resumed with it, draw the same configurations. Trial numbers are unique in a study's storage,
    so seeding per trial makes every worker and every resumption explore new points, while a
    single-worker study stays reproducible. Each trial gets its own instance of the chosen sampler
    (they keep their state in the study's storage), created at `before_trial` and dropped after it.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make = make
        self._seed = seed
        self._by_trial: dict[int, optuna.samplers.BaseSampler] = {}
        self._lock = threading.Lock()  # trials in parallel threads (--n-jobs)

    def _for(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.BaseSampler:
        with self._lock:
            if trial.number not in self._by_trial:
                self._by_trial[trial.number] = self._make(trial_seed(self._seed, trial.number))
            return self._by_trial[trial.number]

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        try:
            self._for(trial).after_trial(study, trial, state, values)
        finally:
            with self._lock:
                self._by_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:
        """Nothing to do: no two trials share a seed (Optuna calls this for --n-jobs > 1)."""


def build_sampler(tune: TuneConfig, space: list[ParamSpec], seed: int) -> optuna.samplers.BaseSampler:
    """The `--sampler` choice, seeded per trial (`PerTrialSeedSampler`)."""
    make = _sampler_factory(tune, space)
    make(seed)  # a bad grid fails here, before the study exists
    return PerTrialSeedSampler(make, seed)


def _sampler_factory(tune: TuneConfig, space: list[ParamSpec]) -> Callable[[int], optuna.samplers.BaseSampler]:
    if tune.sampler == "grid":
        grid = {}
        for spec in space:
            if spec.kind == "categorical":
                grid[spec.name] = list(spec.choices)
            elif spec.kind == "int" and spec.step:
                grid[spec.name] = list(range(spec.low, spec.high + 1, spec.step))
            else:
                raise ConfigError(f"grid sampler needs categorical or stepped int parameters; "
                                  f"{spec.name!r} is a {spec.kind} range")
            if spec.when:
                raise ConfigError(f"grid sampler cannot search conditional parameters ({spec.name!r} has when:)")
        return lambda seed: optuna.samplers.GridSampler(grid, seed=seed)
    samplers = {
        "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
        "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
        "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
        "gp": lambda seed: optuna.samplers.GPSampler(seed=seed),
    }
    return samplers[tune.sampler]


def build_pruner(tune: TuneConfig, epochs: int) -> optuna.pruners.BasePruner:
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=tune.pruner_startup_trials,
                                                      n_warmup_steps=tune.pruner_warmup_epochs),
        "percentile": lambda: optuna.pruners.PercentilePruner(tune.pruner_percentile,
                                                              n_startup_trials=tune.pruner_startup_trials,
                                                              n_warmup_steps=tune.pruner_warmup_epochs),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    return pruners[tune.pruner]()
