"""Every registered model trains on 1- and 3-channel, 28x28 and 32x32 images."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from cifar_mlflow import ConfigError, get_model, list_models, register_model


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32])
def test_forward_backward(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = get_model(name, num_classes=7, in_channels=channels)
    model.train()
    logits = model(torch.randn(2, channels, size, size))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_reference_models_are_registered() -> None:
    expected = {"mlp", "cnn", "cnn_small", "lenet", "mobilenetv2", "mobilenetv3_small", "mobilenetv3_large",
                "resnet18", "resnet9"}
    assert expected <= set(list_models())
    assert list_models("mobilenet*") == ["mobilenetv2", "mobilenetv3_large", "mobilenetv3_small"]


def test_model_args_reach_the_builder() -> None:
    narrow = get_model("mobilenetv2", num_classes=10, width_mult=0.5)
    wide = get_model("mobilenetv2", num_classes=10)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters())
    gelu = get_model("mlp", hidden_sizes=[64], activation="gelu", batch_norm=False, dropout=0.0)
    assert any(isinstance(m, torch.nn.GELU) for m in gelu.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in gelu.modules())


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="valid names: .*cnn.*resnet9"):
        get_model("alexnet9000")


def test_bad_model_args_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="width_mult_typo"):
        get_model("mobilenetv2", width_mult_typo=2)


def test_duplicate_registration_fails() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_model("cnn")(lambda **kw: torch.nn.Identity())


def test_a_model_recommending_a_setting_that_is_no_option_is_refused_when_a_run_resolves() -> None:
    """A typo in a registered model's recommendations (`learning_rate` for `lr`) would otherwise crash
    inside `dataclasses.replace`; the run is refused with the model and the name, before anything starts."""
    from cifar_mlflow import TrainConfig, resolve_config
    from cifar_mlflow.models.registry import _RECOMMENDED, _REGISTRY

    register_model("typo_net", recommended={"learning_rate": 0.1, "epochs": 3})(lambda **kw: torch.nn.Identity())
    try:
        with pytest.raises(ConfigError, match="'typo_net'.*learning_rate.*no training option"):
            resolve_config(TrainConfig(arch="typo_net"))
    finally:
        _REGISTRY.pop("typo_net"), _RECOMMENDED.pop("typo_net", None)


def test_torchvision_models_by_name() -> None:
    model = get_model("tv:resnet18", num_classes=5, in_channels=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    with pytest.raises(ConfigError, match="unknown torchvision model"):
        get_model("tv:not_a_model")


def test_user_builder_from_module(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        from torch import nn
        def build_model(num_classes, in_channels, hidden=16):
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_models", raising=False)
    model = get_model("my_models:build_model", num_classes=4, in_channels=3, hidden=8)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 4)
    assert model[1].out_features == 8
    with pytest.raises(ConfigError, match="no callable 'missing'"):
        get_model("my_models:missing")
    with pytest.raises(ConfigError, match="cannot import"):
        get_model("no_such_module_xyz:build")
