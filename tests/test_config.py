"""The typed config, its generated command line, YAML files and per-architecture recommendations."""

from __future__ import annotations

import argparse

import pytest

from cifar_mlflow.arguments import collect_values
from cifar_mlflow.config import GENERIC_RECOMMENDED, TrainConfig, build_config, resolve_config
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.models import list_models, recommended_settings
from cifar_mlflow.train.cli import build_parser


def parse(*argv: str) -> TrainConfig:
    values, _ = collect_values(build_parser().parse_args(list(argv)), TrainConfig, extra=("list_models",))
    return resolve_config(build_config(values))


def test_recommendations_fill_what_the_user_left_unset() -> None:
    config = parse("--arch", "mlp")
    assert (config.optimizer, config.lr, config.augment) == ("adamw", 1e-3, "none")
    config = parse("--arch", "resnet9")
    assert config.batch_size == recommended_settings("resnet9")["batch_size"]


def test_user_values_win_over_recommendations() -> None:
    config = parse("--arch", "mlp", "--optimizer", "sgd", "--lr", "0.2", "--augment", "strong", "--epochs", "3")
    assert (config.optimizer, config.lr, config.augment, config.epochs) == ("sgd", 0.2, "strong", 3)


def test_fast_recipe_fills_everything_left_unset() -> None:
    config = parse("--recipe", "fast")
    assert (config.arch, config.batch_size, config.epochs, config.scheduler, config.augment) == (
        "airbench", 1024, 8, "linear", "light")
    assert (config.optimizer, config.muon_lr, config.lr, config.weight_decay) == ("muon", 0.24, 1.656, 1.208e-3)
    muon = (config.muon_momentum, config.muon_ns_steps, config.muon_renorm)
    assert muon == (0.6, 3, True)  # airbench94_muon's
    assert (config.warmup_epochs, config.lr_end, config.lookahead) == (0.0, 0.0, False)
    settings = (config.val_fraction, config.tta, config.momentum, config.label_smoothing)
    assert settings == (0.0, "flip_translate", 0.85, 0.2)
    assert config.model_args == {"pool_size": 3, "whiten_centred": False, "whiten_bias_epochs": 3,
                                 "decay_biases": True, "whiten_bias_lr_scale": 64}
    widths = parse("--recipe", "fast", "--model-args", '{"widths": [8, 8, 8], "pool_size": null}').model_args
    assert widths["widths"] == [8, 8, 8] and widths["pool_size"] is None and widths["decay_biases"]  # given keys win


def test_options_given_with_a_recipe_win() -> None:
    config = parse("--recipe", "fast", "--epochs", "12", "--tta", "none", "--val-fraction", "0.1", "--arch", "resnet9")
    assert (config.epochs, config.tta, config.val_fraction, config.arch) == (12, "none", 0.1, "resnet9")
    # The rest comes from the recipe, except what it tuned for its own net: that is resnet9's own recommendations.
    assert config.batch_size == recommended_settings("resnet9")["batch_size"]
    assert (config.lr, config.model_args, config.muon_renorm) == (recommended_settings("resnet9")["lr"], {}, False)


def test_without_a_recipe_the_defaults_are_unchanged() -> None:
    config = parse()
    assert (config.arch, config.val_fraction, config.tta, config.momentum) == ("cnn", 0.1, "none", 0.9)


def test_generic_recommendation_for_torchvision_models() -> None:
    assert parse("--arch", "tv:resnet50").optimizer == GENERIC_RECOMMENDED["optimizer"]


def test_yaml_config_and_cli_override(tmp_path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("arch: lenet\nlr: 0.01\nepochs: 4\nmodel_args: {}\nnesterov: false\n")
    config = parse("--config", str(file), "--lr", "0.03")
    assert (config.arch, config.lr, config.epochs, config.nesterov) == ("lenet", 0.03, 4, False)


def test_unknown_yaml_key_is_rejected(tmp_path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("arch: cnn\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown option 'learning_rate'"):
        parse("--config", str(file))


def test_boolean_flags_take_values_or_no_prefix() -> None:
    assert parse("--compile").compile is True
    assert parse("--compile", "false").compile is False
    assert parse("--no-nesterov").nesterov is False
    assert parse("--log-model", "no").log_model is False


def test_none_is_a_value_where_it_is_a_choice() -> None:
    assert parse("--scheduler", "none").scheduler == "none"
    assert parse("--recipe", "fast", "--tta", "none").tta == "none"


def test_mlproject_style_unset_words() -> None:
    config = parse("--lr", "auto", "--max-train-samples", "none", "--model-args", "{}")
    assert config.lr == recommended_settings("cnn")["lr"]
    assert config.max_train_samples is None


def test_model_args_json() -> None:
    assert parse("--model-args", '{"width_mult": 0.5}').model_args == {"width_mult": 0.5}
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse("--model-args", "{width_mult: 0.5")
    with pytest.raises(ConfigError, match="JSON object"):
        parse("--model-args", "[1, 2]")


@pytest.mark.parametrize("argv, message", [
    (("--lr", "0"), "lr must be a positive number"),
    (("--lr", "-1"), "lr must be a positive number"),
    (("--batch-size", "0"), "batch_size must be a positive number"),
    (("--epochs", "0"), "epochs must be a positive number"),
    (("--epochs", "two"), "epochs must be an integer"),
    (("--val-fraction", "1.0"), "val_fraction must be at least 0 and below 1"),
    (("--val-fraction", "-0.1"), "val_fraction must be at least 0 and below 1"),
    (("--optimizer", "rmsprop"), "unknown optimizer 'rmsprop'; choose one of: sgd, adam, adamw"),
    (("--scheduler", "triangle"), "unknown scheduler 'triangle'"),
    (("--recipe", "slow"), "unknown recipe 'slow'; choose one of: fast"),
    (("--tta", "rotate"), "unknown tta 'rotate'"),
    (("--dataset", "imagenet"), "unknown dataset 'imagenet'"),
    (("--device", "tpu"), "unknown device 'tpu'"),
])
def test_bad_values_are_config_errors(argv, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(*argv)


def test_help_lists_every_option_with_its_default(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    import dataclasses

    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text
    assert "(default: cnn, or the net the recipe recommends)" in text and "default: 0.1, or the recipe's" in text
    assert "recommended settings per architecture" in text and "mobilenetv2" in text


@pytest.mark.parametrize("arch", list_models())
def test_every_registered_model_recommends_a_complete_valid_recipe(arch) -> None:
    """A model added with `@register_model(name, recommended=...)` is checked here without further ado."""
    own = recommended_settings(arch)
    assert own, f"{arch} registers no recommended settings"
    config = resolve_config(TrainConfig(arch=arch))
    for key, value in own.items():
        assert getattr(config, key) == value  # its own settings are the ones used
    assert config.optimizer and config.lr > 0 and config.epochs > 0 and config.batch_size > 0


def test_help_shows_every_generated_default(monkeypatch) -> None:
    import dataclasses

    from cifar_mlflow.arguments import _format_default

    monkeypatch.setenv("COLUMNS", "400")  # one line per option where argparse allows
    parser = build_parser()
    helps = {a.dest: a.help for a in parser._actions if a.help and a.help != argparse.SUPPRESS}
    checked = 0
    for f in dataclasses.fields(TrainConfig):
        if "default:" in f.metadata["help"]:
            continue  # the help says its default in its own words
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert helps[f.name].endswith(f"(default: {_format_default(default)})"), (f.name, helps[f.name])
        checked += 1
    assert checked >= 10
    text = " ".join(parser.format_help().split())  # as printed, wrapping undone
    assert "--seed SEED random seed for the split, initialisation and augmentation (default: 0)" in text
    assert "(default: unset)" in text and "(default: ./checkpoints)" in text


def test_a_short_run_gets_settings_scaled_to_its_epochs() -> None:
    short = parse("--arch", "cnn_small", "--epochs", "3")  # a tenth of the recommended 30
    assert (short.augment, short.warmup_epochs, short.scheduler) == ("flip", 0.1, "onecycle")
    assert parse("--arch", "cnn_small", "--epochs", "10").augment == "light"  # a third: one step lighter
    assert parse("--arch", "cnn_small", "--epochs", "20").augment == "standard"  # two thirds: as recommended
    assert parse("--arch", "cnn_small").augment == "standard"
    airbench = parse("--arch", "airbench", "--epochs", "5")  # half: the warm-up keeps its share
    assert (airbench.augment, airbench.warmup_epochs) == ("light", 1.15)
    assert parse("--arch", "mlp", "--epochs", "3").augment == "none"  # nothing lighter than none
    assert parse("--arch", "cnn_small", "--epochs", "3", "--augment", "standard").augment == "standard"  # given wins
    assert parse("--arch", "cnn_small", "--epochs", "3", "--warmup-epochs", "2").warmup_epochs == 2
