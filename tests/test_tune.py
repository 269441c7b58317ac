"""The tuner: search spaces, a pruned study as nested MLflow runs, resume, failed trials."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from cifar_mlflow.config import TrainConfig, resolve_config
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.tune import main
from cifar_mlflow.tune.search_space import default_search_space, parse_search_space, sample_config
from tests.conftest import run_env

BAD_SPACES = [
    ({"lr": {"type": "floaty", "low": 0.1, "high": 1}}, "lr.type"),
    ({"lr": {"type": "float", "low": 1.0, "high": 0.1}}, "lr.low (1.0) is greater than lr.high"),
    ({"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "lr.low must be > 0 with log"),
    ({"learning_rate": {"type": "float", "low": 0.01, "high": 0.1}}, "'learning_rate' is not a training option"),
    ({"batch_size": {"type": "categorical", "choices": []}}, "batch_size.choices"),
    ({"epochs": {"type": "int", "low": 1.5, "high": 4}}, "epochs is an int parameter"),
    ({"momentum": {"type": "float", "low": 0.8, "high": 0.9, "when": {"optimiser": "sgd"}}}, "momentum.when"),
    ({"lr": {"type": "float", "high": 0.1}}, "lr.low is missing"),
    ({"tracking_uri": {"type": "categorical", "choices": ["x"]}}, "'tracking_uri' cannot be tuned"),
]


@pytest.mark.parametrize("space, message", BAD_SPACES, ids=[m.split()[0] for _, m in BAD_SPACES])
def test_malformed_search_spaces_name_the_key(space, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_search_space(space)


def test_conditional_parameters_and_model_args() -> None:
    space = parse_search_space({
        "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
        "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
        "model_args.width_mult": {"type": "categorical", "choices": [0.5], "when": {"arch": ["mobilenetv2"]}},
        "model_args.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    })

    def chooser(pick_optimizer: str):
        def suggest(spec):  # a deterministic chooser standing in for the sampler
            if spec.name == "optimizer":
                return pick_optimizer
            return spec.choices[0] if spec.kind == "categorical" else spec.low
        return suggest

    config, sampled = sample_config(space, TrainConfig(arch="mobilenetv2"), chooser("sgd"))
    assert sampled == {"optimizer": "sgd", "momentum": 0.8, "model_args.width_mult": 0.5, "model_args.dropout": 0.0}
    assert config.optimizer == "sgd" and config.model_args == {"width_mult": 0.5, "dropout": 0.0}
    config, sampled = sample_config(space, TrainConfig(arch="cnn"), chooser("adamw"))
    assert "momentum" not in sampled and "model_args.width_mult" not in sampled
    assert config.model_args == {"dropout": 0.0}


def test_shipped_default_space_is_valid() -> None:
    names = [spec.name for spec in default_search_space()]
    assert {"lr", "weight_decay", "optimizer", "batch_size", "label_smoothing", "augment",
            "model_args.dropout"} <= set(names)


def test_default_space_tries_muon_with_its_own_learning_rate() -> None:
    from cifar_mlflow.core.muon import MuonWithSGD
    from cifar_mlflow.core.optimizers import build_optimizer
    from cifar_mlflow.models import get_model

    def suggest(spec):
        if spec.name == "optimizer":
            assert "muon" in spec.choices  # the fast recipe's optimizer stays in reach of the tuner
            return "muon"
        return spec.choices[0] if spec.kind == "categorical" else spec.low

    for arch in ("cnn_small", "lenet", "mlp", "airbench"):
        base = resolve_config(TrainConfig(arch=arch, dataset="synthetic"))
        config, sampled = sample_config(default_search_space(), base, suggest)
        assert (sampled["muon_lr"], sampled["momentum"]) == (0.01, 0.8) and config.muon_lr == 0.01
        model = get_model(arch, num_classes=10, in_channels=3)
        model(torch.zeros(2, 3, 32, 32))  # lazy layers take their shapes, as training does first
        optimizer = build_optimizer(config, model)
        assert isinstance(optimizer, MuonWithSGD) and optimizer.muon.param_groups[0]["lr"] == 0.01


def tune_args(imagefolder: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--dataset", "imagefolder", "--data-dir", str(imagefolder), "--arch", "cnn_small", "--epochs", "3",
            "--batch-size", "16", "--no-progress", "--device", "cpu", "--study-name", "s",
            "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--experiment-name", "tuning", *extra]


def test_bad_search_space_file_exits_2_and_creates_nothing(imagefolder, tmp_path, capsys) -> None:
    bad = tmp_path / "space.yaml"
    bad.write_text("lr: {type: float, low: 0.5, high: 0.1}\n")
    assert main(tune_args(imagefolder, tmp_path, "--search-space", str(bad))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: search space") and "lr.low" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()
    bad.write_text("lr: {type: float, low: [0.1\n")
    assert main(tune_args(imagefolder, tmp_path, "--search-space", str(bad))) == 2
    assert "not valid YAML" in capsys.readouterr().err


def children_of(client: MlflowClient, experiment_id: str, parent_id: str) -> list:
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                              max_results=100)
    return sorted(runs, key=lambda r: int(r.data.params["trial_number"]))


def test_pruned_study_nested_runs_and_resume(imagefolder, tmp_path) -> None:
    space = tmp_path / "space.yaml"
    # A learning rate that learns nothing next to one that learns: once one good trial finished,
    # the median pruner stops the hopeless ones after their first epoch.
    space.write_text("lr: {type: categorical, choices: [0.05, 1.0e-9]}\n"
                     "label_smoothing: {type: float, low: 0.0, high: 0.1}\n")
    # lr order: good, good, then 4 hopeless
    args = tune_args(imagefolder, tmp_path, "--trials", "6", "--sampler", "random", "--seed", "2",
                     "--pruner", "median", "--pruner-startup-trials", "1", "--pruner-warmup-epochs", "0",
                     "--search-space", str(space), "--augment", "standard")  # fixed: the draws above rely on it
    assert main(args) == 0
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert len(states) == 6 and "PRUNED" in states and "COMPLETE" in states

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tuning")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`optuna.study_name` = 's' "
                                   "and tags.`cifar_mlflow.kind` = 'study'")
    assert parent.info.status == "FINISHED"
    children = children_of(client, experiment.experiment_id, parent.info.run_id)
    assert [c.info.run_name for c in children] == [f"trial-{i}" for i in range(6)]
    for child, trial in zip(children, study.trials):
        assert child.data.tags["optuna.state"] == trial.state.name
        assert child.data.params["lr"] in ("0.05", "1e-09")  # the trial's hyperparameters are params
        history = client.get_metric_history(child.info.run_id, "val_acc")
        if trial.state.name == "PRUNED":
            assert child.data.tags["pruned_at_epoch"] == str(len(history)) and len(history) < 3
            assert child.info.status == "FINISHED"
        else:
            assert len(history) == 3
            assert "plots/confusion_matrix.png" in [a.path for a in client.list_artifacts(child.info.run_id, "plots")]
    best = [c for c in children if c.data.tags.get("best_trial") == "true"]
    assert [int(b.data.params["trial_number"]) for b in best] == [study.best_trial.number]

    metrics = parent.data.metrics
    assert metrics["trials_complete"] + metrics["trials_pruned"] == 6
    assert metrics["best_value"] == study.best_value and metrics["epochs_saved_by_pruning"] > 0
    assert parent.data.tags["best_lr"] == "0.05"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)} | \
        {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"trials.csv", "plots/optimization_history.png", "plots/intermediate_values.png",
            "plots/parallel_coordinate.png", "plots/slice.png", "plots/study.html", "search_space.yaml"} <= artifacts
    # The interactive page: Optuna's plotly figures, plotly.js inlined once (it opens offline), every trial in it.
    page = Path(client.download_artifacts(parent.info.run_id, "plots/study.html", str(tmp_path / "page"))).read_text()
    for figure in ("optimization_history", "parallel_coordinate", "contour", "intermediate_values", "timeline"):
        assert f"id='{figure}'" in page, figure
    assert page.count("Plotly.newPlot(") >= 5 and page.count("https://plot.ly") <= 1 and "<script src=" not in page
    # What the study searched, on the parent run: the space, the code's commit and the data.
    local = client.download_artifacts(parent.info.run_id, "search_space.yaml", str(tmp_path / "dl"))
    assert Path(local).read_text() == space.read_text() and parent.data.params["tune.search_space"] == str(space)
    assert len(parent.data.tags["git_commit"]) == 40
    inputs = {d.dataset.name: d.dataset.digest for d in parent.inputs.dataset_inputs}
    assert set(inputs) == {"imagefolder-train", "imagefolder-val", "imagefolder-test"}
    (child,) = [c for c in children_of(client, experiment.experiment_id, parent.info.run_id)][:1]
    assert {d.dataset.digest for d in child.inputs.dataset_inputs} == set(inputs.values())  # the trials' data

    # Resume: the same command with --trials 2 adds two trials under the same parent.
    assert main(args[:args.index("--trials")] + ["--trials", "2"] + args[args.index("--trials") + 2:]) == 0
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 8
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`cifar_mlflow.kind` = 'study'")
    assert [p.info.run_id for p in parents] == [parent.info.run_id]
    assert len(children_of(client, experiment.experiment_id, parent.info.run_id)) == 8


def test_failed_trials_are_recorded_and_the_study_goes_on(imagefolder, tmp_path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: categorical, choices: [0.05, 1.0e+12]}\n")
    args = tune_args(imagefolder, tmp_path, "--trials", "2", "--sampler", "grid", "--pruner", "none",
                     "--search-space", str(space), "--arch", "mlp", "--model-args", '{"batch_norm": false}',
                     "--optimizer", "sgd", "--scheduler", "none")
    assert main(args) == 0
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tuning")
    failed = client.search_runs([experiment.experiment_id], filter_string="tags.`optuna.state` = 'FAIL'")
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "NonFiniteLossError" in failed[0].data.tags["optuna.fail_reason"]
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`cifar_mlflow.kind` = 'study'")
    assert parent.data.metrics["trials_failed"] == 1 and parent.data.metrics["trials_complete"] == 1


OUTAGE_MODEL = """
import sqlalchemy.exc
from torch import nn

failed = []


class Model(nn.Sequential):
    def forward(self, x):
        failed.append(1)
        if len(failed) == 3:  # the first trial, mid-epoch: the database is gone for longer than the storage waits
            raise sqlalchemy.exc.OperationalError("UPDATE trials", {}, ConnectionRefusedError("connection refused"))
        return super().forward(x)


def build(num_classes, in_channels):
    return Model(nn.Flatten(), nn.LazyLinear(num_classes))
"""


def test_a_trial_the_storage_failed_is_queued_again_and_does_not_use_up_the_workers_trials(
        imagefolder, tmp_path, monkeypatch) -> None:
    """A trial that a database outage failed (longer than the storage's own wait) is queued to run again with
    its settings, and the worker runs one trial more than it would have: the study gets the complete trials
    it asked for. (The outage is raised from the model, in place of a database gone for 2 minutes.)"""
    (tmp_path / "outage_model.py").write_text(OUTAGE_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 0.01, high: 0.1}\n")
    args = tune_args(imagefolder, tmp_path, "--trials", "2", "--pruner", "none", "--arch", "outage_model:build",
                     "--epochs", "1", "--optimizer", "sgd", "--search-space", str(space))
    assert main(args) == 0
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[1].user_attrs["retry_of"] == 0 and study.trials[1].params == study.trials[0].params
    assert "the Optuna storage was unreachable" in study.trials[0].user_attrs["fail_reason"]


def test_a_trial_failed_under_its_worker_after_its_last_epoch_is_made_up(imagefolder, tmp_path,
                                                                          monkeypatch) -> None:
    """Another worker fails this worker's trial after its last epoch, while its test pass and model go to
    MLflow (seconds to minutes): the worker goes on instead of crashing in Optuna's tell (its one line is
    Optuna's, tested in a real process in test_tune_interrupts.py), the trial's run ends FAILED with the
    reason, and one more trial runs in its place."""
    import cifar_mlflow.tune.study as study_module

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    real_best_value = study_module.best_value

    def best_value_after_a_takeover(history, metric):
        trials = optuna.load_study(study_name="s", storage=storage).trials
        if len(trials) == 1:  # the first trial, trained: another worker fails it (as a stale check does)
            storage.set_trial_state_values(trials[0]._trial_id, state=optuna.trial.TrialState.FAIL)
        return real_best_value(history, metric)

    monkeypatch.setattr(study_module, "best_value", best_value_after_a_takeover)
    assert main(tune_args(imagefolder, tmp_path, "--trials", "1", "--pruner", "none", "--epochs", "1")) == 0
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    (first,) = client.search_runs([client.get_experiment_by_name("tuning").experiment_id],
                                  filter_string="attributes.run_name = 'trial-0'")
    assert first.info.status == "FAILED" and first.data.tags["optuna.state"] == "FAIL"
    assert "failed by another worker" in first.data.tags["optuna.fail_reason"]


def test_retrain_best_on_train_plus_validation_and_register_champion(imagefolder, tmp_path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: categorical, choices: [0.05, 1.0e-9]}\n")
    args = tune_args(imagefolder, tmp_path, "--trials", "2", "--sampler", "grid", "--pruner", "none",
                     "--search-space", str(space), "--retrain-best", "--register-model", "cifar-champion")
    assert main(args) == 0
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tuning")
    (retrained,) = client.search_runs([experiment.experiment_id],
                                      filter_string="tags.`cifar_mlflow.kind` = 'retrained_best'")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`cifar_mlflow.kind` = 'study'")
    assert retrained.info.status == "FINISHED" and retrained.info.run_name == "s-best"
    assert "mlflow.parentRunId" not in retrained.data.tags  # a normal run, linked by tags
    assert retrained.data.tags["cifar_mlflow.study_run_id"] == parent.info.run_id
    assert parent.data.tags["retrained_run_id"] == retrained.info.run_id
    assert retrained.data.tags["retrained_from_trial"] == str(study.best_trial.number)
    assert retrained.data.params["lr"] == str(study.best_params["lr"])
    assert retrained.data.params["train_size"] == "72" and retrained.data.params["val_size"] == "0"
    assert "test_acc" in retrained.data.metrics and "val_acc" not in retrained.data.metrics
    champion = client.get_model_version_by_alias("cifar-champion", "champion")
    assert champion.run_id == retrained.info.run_id


def test_parallel_trials_in_threads_keep_their_own_runs(imagefolder, tmp_path) -> None:
    args = tune_args(imagefolder, tmp_path, "--trials", "2", "--n-jobs", "2", "--pruner", "none", "--epochs", "2",
                     "--arch", "lenet")
    assert main(args) == 0
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tuning")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`cifar_mlflow.kind` = 'study'")
    children = children_of(client, experiment.experiment_id, parent.info.run_id)
    assert [c.info.run_name for c in children] == ["trial-0", "trial-1"]
    for child in children:  # each thread logged into its own run only
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_acc")) == [1, 2]
        assert child.info.status == "FINISHED"


@pytest.mark.parametrize("name, cls", [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
                                       ("cmaes", optuna.samplers.CmaEsSampler), ("gp", optuna.samplers.GPSampler),
                                       ("grid", optuna.samplers.GridSampler)])
def test_every_sampler_name_builds_its_sampler(name, cls) -> None:
    from cifar_mlflow.tune.options import TuneConfig
    from cifar_mlflow.tune.samplers import build_sampler

    space = parse_search_space({"batch_size": {"type": "categorical", "choices": [64, 128]},
                                "epochs": {"type": "int", "low": 2, "high": 6, "step": 2}})
    sampler = build_sampler(TuneConfig(sampler=name), space, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: t.suggest_categorical("batch_size", [64, 128]) + t.suggest_int("epochs", 2, 6, step=2),
                   n_trials=2)
    assert isinstance(sampler._make(0), cls)  # what each trial is drawn by
    assert len(study.trials) == 2


def _draws(study: optuna.Study, n: int) -> list[tuple[float, int]]:
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1.0, log=True) + t.suggest_int("width", 8, 512), n_trials=n)
    return [(t.params["lr"], t.params["width"]) for t in study.trials]


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "gp"])
def test_workers_and_resumptions_with_one_seed_draw_new_points(sampler, tmp_path) -> None:
    from cifar_mlflow.tune.options import TuneConfig
    from cifar_mlflow.tune.samplers import build_sampler

    def worker(storage: str) -> optuna.Study:  # a process of its own: its own sampler, seeded alike
        return optuna.create_study(study_name="s", storage=storage, load_if_exists=True,
                                   sampler=build_sampler(TuneConfig(sampler=sampler), [], seed=0))

    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = worker(shared), worker(shared)
    for _ in range(3):  # two workers taking turns, as they do on one storage
        _draws(first, 1)
        _draws(second, 1)
    resumed = _draws(worker(shared), 2)
    assert len(resumed) == 8 and len(set(resumed)) == 8  # no configuration drawn twice

    alone = _draws(worker(f"sqlite:///{tmp_path / 'alone.db'}"), 3)
    again = _draws(worker(f"sqlite:///{tmp_path / 'again.db'}"), 3)
    assert alone == again  # one worker, one seed: the same study again


def test_grid_sampler_refuses_continuous_ranges() -> None:
    from cifar_mlflow.tune.options import TuneConfig
    from cifar_mlflow.tune.samplers import build_sampler

    space = parse_search_space({"lr": {"type": "float", "low": 0.01, "high": 0.1}})
    with pytest.raises(ConfigError, match="grid sampler .* 'lr' is a float range"):
        build_sampler(TuneConfig(sampler="grid"), space, seed=0)


@pytest.mark.parametrize("name, cls", [("median", optuna.pruners.MedianPruner),
                                       ("percentile", optuna.pruners.PercentilePruner),
                                       ("hyperband", optuna.pruners.HyperbandPruner),
                                       ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
                                       ("none", optuna.pruners.NopPruner)])
def test_every_pruner_name_builds_its_pruner(name, cls) -> None:
    from cifar_mlflow.tune.options import TuneConfig
    from cifar_mlflow.tune.samplers import build_pruner

    assert isinstance(build_pruner(TuneConfig(pruner=name), epochs=10), cls)


@pytest.mark.parametrize("argv, message", [
    (["--trials", "0"], "trials must be at least 1"),
    (["--sampler", "bayes"], "unknown sampler 'bayes'"),
    (["--pruner-percentile", "150"], "pruner_percentile must be between 0 and 100"),
    (["--storage", "optuna.db"], "storage must be a database URL"),
    (["--arch", "nope"], "unknown architecture 'nope'"),
    (["--val-fraction", "0"], "--val-fraction must be above 0"),
])
def test_bad_tune_options_exit_2_before_anything_exists(argv, message, imagefolder, tmp_path, capsys) -> None:
    assert main(tune_args(imagefolder, tmp_path, *argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_fast_recipe_is_tuned_with_a_validation_split() -> None:
    from cifar_mlflow.tune.cli import parse_configs

    _, base = parse_configs(["--recipe", "fast", "--dataset", "synthetic"])
    assert (base.arch, base.val_fraction, base.batch_size) == ("airbench", 0.1, 1024)
    _, base = parse_configs(["--recipe", "fast", "--val-fraction", "0.2"])
    assert base.val_fraction == 0.2


@pytest.mark.parametrize("argv, module, extra, needed_by", [
    (["--sampler", "cmaes"], "cmaes", "cmaes", "--sampler cmaes"),
    (["--storage", "postgresql://u:secret@127.0.0.1:1/optuna"], "psycopg", "postgres", "a PostgreSQL storage")])
def test_an_option_whose_extra_is_not_installed_says_how_to_install_it(argv, module, extra, needed_by,
                                                                         tmp_path) -> None:
    """A laptop install without the extra: one line naming the extra, exit 2, nothing created."""
    probe = ("import sys; sys.modules[sys.argv[1]] = None\n"  # as if the package were not installed
             "from cifar_mlflow.tune.cli import main\nsys.exit(main(sys.argv[2:]))")
    proc = subprocess.run([sys.executable, "-c", probe, module, "--trials", "1", *argv], capture_output=True,
                          text=True, cwd=tmp_path, env=run_env(), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"error: {needed_by} needs the {module} package, an optional extra: "
                           f"pip install 'cifar_mlflow[{extra}]'\n")
    assert list(tmp_path.iterdir()) == []


def test_the_study_shows_optunas_progress_bar_with_the_best_value(imagefolder, tmp_path, capsys) -> None:
    args = [a for a in tune_args(imagefolder, tmp_path, "--trials", "2", "--epochs", "1") if a != "--no-progress"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "Best trial: " in err and "2/2" in err  # the bar over the trials, the best so far beside it
    assert "trial 0 COMPLETE" in err and "trial 1 COMPLETE" in err  # the per-trial lines, written around it


def test_workers_starting_together_agree_on_one_parent_run_however_slow_one_is(tmp_path) -> None:
    """Three workers of a new study: the first two start 0.5 s apart, the third with the first but 2.2 s slow
    to create its run (a loaded server): every one ends on the same parent run, and it is not deleted. (With
    "the last to write the study's attribute wins", the first adopted the second's run and the second then
    adopted the third's, deleting its own under the first: a test-faults failure under load.)"""
    import threading
    import time
    from types import SimpleNamespace

    from cifar_mlflow.tracking import StudyTracker
    from cifar_mlflow.tune.study import open_parent

    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="together", storage=storage, direction="maximize")
    trackers = [StudyTracker(uri, "tuning", "together") for _ in range(3)]
    MlflowClient(uri).create_experiment("tuning")
    errors = []

    def worker(tracker, delay):
        time.sleep(delay)
        try:
            open_parent(SimpleNamespace(tracker=tracker), optuna.load_study(study_name="together", storage=storage))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    create_run = trackers[2].client.create_run

    def slow_create_run(*args, **kwargs):
        time.sleep(2.2)
        return create_run(*args, **kwargs)

    trackers[2].client.create_run = slow_create_run
    threads = [threading.Thread(target=worker, args=(t, d)) for t, d in zip(trackers, (0.0, 0.5, 0.0))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    (parent,) = {t.run_id for t in trackers}
    client = MlflowClient(uri)
    assert client.get_run(parent).info.lifecycle_stage == "active"
    study_runs = client.search_runs([client.get_experiment_by_name("tuning").experiment_id],
                                    filter_string="tags.`cifar_mlflow.kind` = 'study'")
    assert [r.info.run_id for r in study_runs] == [parent]  # the losers' candidates deleted
    assert optuna.load_study(study_name="together", storage=storage).user_attrs["mlflow_parent_run_id"] == parent
    for tracker in trackers:
        tracker.close("FINISHED")


def test_a_study_named_with_a_quote_finds_its_parent_run_and_compares_its_trials(imagefolder, tmp_path,
                                                                                  capsys) -> None:
    """Runs are found by the study's name in MLflow search filters: a name with an apostrophe must still
    find its one parent run, and `compare --study` its trials."""
    from cifar_mlflow import compare

    name = "anna's study"
    assert main(tune_args(imagefolder, tmp_path, "--trials", "2", "--epochs", "1", "--study-name", name)) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tuning").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("cifar_mlflow.kind") == "study"]
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna.study_name"] == name
    trials = {r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(trials) == 2
    capsys.readouterr()
    assert compare.main(["--study", name, "--tracking-uri", uri, "--format", "csv", "--output",
                         str(tmp_path / "report"), "--log-comparison", "false"]) == 0
    printed = capsys.readouterr().out
    assert all(run_id in printed for run_id in trials)


def test_a_study_name_with_both_kinds_of_quote_exits_2_before_anything_is_created(imagefolder, tmp_path,
                                                                                   capsys) -> None:
    assert main(tune_args(imagefolder, tmp_path, "--study-name", "it's \"ours\"")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: study_name") and "both kinds of quote" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()
