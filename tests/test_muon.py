"""`--optimizer muon`: PyTorch's Muon on the hidden layers' weights (filter banks as matrices), SGD on the rest."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from cifar_mlflow.config import TrainConfig, resolve_config
from cifar_mlflow.core.muon import FilterBankMuon, MuonWithSGD, as_matrix, orthogonalise
from cifar_mlflow.core.optimizers import build_optimizer, build_schedule
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.models import get_model
from cifar_mlflow.train.run import train
from tests.test_training import quick


def steps(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[list[torch.Tensor]]) -> None:
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone().to(memory_format=torch.preserve_format)
        optimizer.step()


def test_on_matrices_it_is_pytorchs_muon() -> None:
    torch.manual_seed(0)
    start = torch.randn(16, 24)
    grads = [[torch.randn(16, 24)] for _ in range(3)]
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    steps(FilterBankMuon([ours], lr=0.02, momentum=0.9), [ours], grads)
    steps(torch.optim.Muon([theirs], lr=0.02, momentum=0.9), [theirs], grads)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, start)


NS = ((3.4445, -4.7750, 2.0315), 5, 1e-7)  # PyTorch's default coefficients, steps and eps


@pytest.mark.parametrize("shape", [(16, 24), (24, 16)])  # wide, and tall (orthogonalised transposed)
def test_orthogonalise_is_pytorchs_newton_schulz_in_the_dtype_asked(shape) -> None:
    from torch.optim._muon import _zeropower_via_newtonschulz

    torch.manual_seed(0)
    update = torch.randn(*shape)
    theirs = _zeropower_via_newtonschulz(update, *NS)
    assert torch.equal(orthogonalise(update, *NS, dtype=torch.bfloat16), theirs)  # operation for operation
    exact = orthogonalise(update.double(), *NS, dtype=torch.float64)
    ours = orthogonalise(update, *NS, dtype=torch.float32)
    assert ours.dtype == torch.float32 and ours.shape == shape
    # in fp32 it computes the same iteration, without bf16's rounding
    assert (ours.double() - exact).abs().max() < 1e-4 < (theirs.double() - exact).abs().max()


def test_in_fp32_on_matrices_it_is_pytorchs_muon_but_for_bf16s_rounding() -> None:
    torch.manual_seed(0)
    start = torch.randn(16, 24)
    grads = [[torch.randn(16, 24)] for _ in range(3)]
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    steps(FilterBankMuon([ours], newton_schulz_dtype=torch.float32, lr=0.02, momentum=0.9, weight_decay=0.1,
                         nesterov=True), [ours], grads)
    steps(torch.optim.Muon([theirs], lr=0.02, momentum=0.9, weight_decay=0.1, nesterov=True), [theirs], grads)
    assert ours.dtype == torch.float32 and not torch.equal(ours, theirs)
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=0)  # steps of 0.02 on the same path
    assert (ours - start).abs().max() > 0.01


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_orthogonalisation_follows_the_runs_precision(precision, dtype) -> None:
    optimizer = build_optimizer(muon_config(), cnn_small(), precision)
    assert optimizer.muon.newton_schulz_dtype == dtype


@pytest.mark.parametrize("flags, dtype", [({"avx512f", "avx512_bf16"}, torch.bfloat16),
                                          ({"avx2", "avx512f"}, torch.float32)])
def test_without_a_precision_it_is_the_one_auto_picks_for_the_cpu(flags, dtype, monkeypatch) -> None:
    """A CPU with native bf16 orthogonalises in bf16 (as PyTorch's Muon); one that emulates it, in fp32."""
    from cifar_mlflow import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    assert build_optimizer(muon_config(), cnn_small()).muon.newton_schulz_dtype == dtype


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_filter_bank_is_updated_as_the_matrix_it_is_viewed_as(channels_last) -> None:
    torch.manual_seed(0)
    start = torch.randn(8, 4, 3, 3)
    grads = [torch.randn(8, 4, 3, 3) for _ in range(3)]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    bank = nn.Parameter(start.clone().to(memory_format=layout))
    matrix = nn.Parameter(start.reshape(8, -1).clone())
    steps(FilterBankMuon([bank], lr=0.02, momentum=0.9), [bank],
          [[g.to(memory_format=bank.data.is_contiguous() and torch.contiguous_format or torch.channels_last)]
           for g in grads])
    steps(torch.optim.Muon([matrix], lr=0.02, momentum=0.9), [matrix], [[g.reshape(8, -1)] for g in grads])
    assert bank.is_contiguous(memory_format=torch.channels_last) == channels_last  # updated in place
    # bf16 Newton-Schulz: the column order of a channels-last view changes the rounding, nothing else
    torch.testing.assert_close(bank.detach().reshape(8, -1), matrix.detach(), atol=0 if not channels_last else 2e-3,
                               rtol=0 if not channels_last else 1e-2)


def test_as_matrix_shares_storage() -> None:
    weight = torch.zeros(4, 2, 3, 3).to(memory_format=torch.channels_last)
    as_matrix(weight).add_(1.0)
    assert bool((weight == 1).all())


def cnn_small() -> nn.Module:
    """Built and run once, as training does: its lazy classifier gets its weight."""
    model = get_model("cnn_small", num_classes=10, in_channels=3)
    with torch.no_grad():
        model.eval()(torch.zeros(2, 3, 32, 32))
    return model


def muon_config(**changes) -> TrainConfig:
    return resolve_config(TrainConfig(arch="cnn_small", dataset="synthetic", optimizer="muon", epochs=2, **changes))


def test_muon_trains_the_hidden_weights_and_sgd_the_rest() -> None:
    config = muon_config(muon_lr=0.03)
    model = cnn_small()
    optimizer = build_optimizer(config, model)
    assert isinstance(optimizer, MuonWithSGD)
    in_muon = [p for g in optimizer.muon.param_groups for p in g["params"]]
    in_sgd = [p for g in optimizer.sgd.param_groups for p in g["params"]]
    weights = [p for p in model.parameters() if p.ndim >= 2]
    # not the first conv, not the head
    assert len(weights) == 4 and {id(p) for p in in_muon} == {id(p) for p in weights[1:3]}
    assert {id(p) for p in in_muon} | {id(p) for p in in_sgd} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in in_muon} & {id(p) for p in in_sgd}
    assert optimizer.param_groups[0]["lr"] == config.lr and optimizer.muon.param_groups[0]["lr"] == 0.03
    schedule = build_schedule(config, optimizer, steps_per_epoch=10)  # one-cycle: both rise from a tenth or so
    assert optimizer.muon.param_groups[0]["lr"] < 0.03 and optimizer.sgd.param_groups[0]["lr"] < config.lr
    for _ in range(5):
        optimizer.step()
        schedule.step_batch()
        # one schedule for both: each at the same fraction of its own peak
        assert optimizer.muon.param_groups[0]["lr"] / 0.03 == pytest.approx(optimizer.param_groups[0]["lr"] / config.lr)


def test_airbench_trains_every_conv_with_muon_behind_its_frozen_whitening() -> None:
    model = get_model("airbench", num_classes=10, in_channels=3)
    config = resolve_config(TrainConfig(recipe="fast", dataset="synthetic"))
    optimizer = build_optimizer(config, model)
    in_muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    convs = [m.weight for m in model.groups.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6 and in_muon == {id(w) for w in convs}
    assert id(model.head.weight) not in in_muon and not model.whiten.weight.requires_grad


def test_muon_takes_its_own_momentum_and_newton_schulz_steps() -> None:
    optimizer = build_optimizer(muon_config(momentum=0.85, muon_momentum=0.6, muon_ns_steps=3), cnn_small())
    assert {(g["momentum"], g["ns_steps"]) for g in optimizer.muon.param_groups} == {(0.6, 3)}
    assert {g["momentum"] for g in optimizer.sgd.param_groups} == {0.85}
    default = build_optimizer(muon_config(momentum=0.85), cnn_small())  # unset: --momentum, PyTorch's 5 steps
    assert {(g["momentum"], g["ns_steps"]) for g in default.muon.param_groups} == {(0.85, 5)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_renorm_holds_each_weight_at_norm_sqrt_rows_before_its_step(dtype) -> None:
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(8, 4, 3, 3) * 7.0)  # far from norm sqrt(8)
    weight.grad = torch.randn_like(weight)
    before = weight.detach().clone()
    FilterBankMuon([weight], lr=1e-6, momentum=0.6, newton_schulz_dtype=dtype, renorm=True).step()
    assert weight.norm().item() == pytest.approx(8 ** 0.5, rel=1e-4)  # rescaled; the tiny step barely moves it
    cosine = torch.nn.functional.cosine_similarity(weight.flatten(), before.flatten(), dim=0)
    assert cosine.item() > 0.9999  # the same direction
    plain = nn.Parameter(before.clone())
    plain.grad = weight.grad.clone()
    FilterBankMuon([plain], lr=1e-6, momentum=0.6, newton_schulz_dtype=dtype).step()
    assert plain.norm().item() == pytest.approx(before.norm().item(), rel=1e-4)  # without renorm: left as it was


def test_a_model_without_hidden_weights_is_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(ConfigError, match="no hidden weight"):
        build_optimizer(muon_config(), model)


def test_state_dict_continues_the_same_run() -> None:
    torch.manual_seed(0)
    model, twin = cnn_small(), cnn_small()
    twin.load_state_dict(model.state_dict())
    config = muon_config()
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def train_step(net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()

    model.eval(), twin.eval()  # no dropout: the same arithmetic in both
    first = build_optimizer(config, model)
    for _ in range(3):
        train_step(model, first)
    second = build_optimizer(config, twin)
    for _ in range(2):
        train_step(twin, second)
    resumed = build_optimizer(config, twin)
    resumed.load_state_dict(second.state_dict())
    train_step(twin, resumed)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)


def test_a_run_with_muon_learns(imagefolder) -> None:
    result = train(dataclasses.replace(quick(imagefolder, optimizer="muon", muon_lr=0.05), epochs=4))
    assert result.test.acc > 0.8
