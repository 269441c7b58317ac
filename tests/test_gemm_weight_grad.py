"""airbench's 3x3 convolutions with the weight gradient as matrix products: the same gradients as PyTorch's own
convolution, taken only where it was measured to pay. The AMX check is forced on where a test needs the fast
path, so that the arithmetic is checked on any CPU (the speed only on one with AMX: docs/benchmarks.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cifar_mlflow import get_model
from cifar_mlflow.models import gemm_weight_grad
from cifar_mlflow.models.gemm_weight_grad import conv3x3, uses_matrix_products, weight_gradient


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _onednn_weight_gradient(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                               [False, True, False])[1]


@pytest.fixture
def amx(monkeypatch) -> None:
    monkeypatch.setattr(gemm_weight_grad, "_has_amx", lambda: True)


@pytest.mark.parametrize("shape", [(3, 3), (7, 7), (5, 8), (1, 4), (4, 1)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_the_weight_gradient_is_the_convolutions(shape: tuple[int, int], channels_last: bool) -> None:
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(5, 6, *shape).contiguous(memory_format=layout)
    weight = torch.randn(4, 6, 3, 3)
    grad = torch.randn(5, 4, *shape)
    expected = _onednn_weight_gradient(grad, x, weight)
    got = weight_gradient(grad, x)
    assert got.shape == (4, 6, 3, 3)
    assert _relative(got, expected) < 1e-5


def test_in_bf16_the_gradients_reach_the_fp32_weights_and_inputs_as_the_convolutions_do(amx) -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 256, 7, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(256, 256, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert uses_matrix_products(x, weight)
        ours, theirs = conv3x3(x, weight), F.conv2d(x, weight, padding=1)
    assert type(ours.grad_fn).__name__ == "_Conv3x3Backward"
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, theirs)  # the forward pass is oneDNN's
    ours_x, ours_w = torch.autograd.grad(ours.float().square().sum(), (x, weight))
    theirs_x, theirs_w = torch.autograd.grad(theirs.float().square().sum(), (x, weight))
    assert ours_w.dtype == torch.float32 and ours_x.dtype == torch.float32
    assert torch.equal(ours_x, theirs_x)  # and so is the input gradient
    assert _relative(ours_w, theirs_w) < 1e-3  # the same sums in another order, each rounded to bf16 once


def test_the_matrix_products_are_taken_only_where_they_were_measured_to_pay(amx, monkeypatch) -> None:
    small = torch.randn(2, 256, 7, 7)
    weight = torch.randn(256, 256, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert uses_matrix_products(small, weight)
        assert not uses_matrix_products(torch.randn(2, 256, 15, 15), weight)  # a larger map: oneDNN is faster
        assert not uses_matrix_products(torch.randn(2, 64, 7, 7), torch.randn(64, 64, 3, 3, requires_grad=True))
        assert not uses_matrix_products(small, weight.detach())  # nothing to compute
        with torch.no_grad():
            assert not uses_matrix_products(small, weight)
    assert not uses_matrix_products(small, weight)  # fp32: not measured
    with torch.autocast("cpu", dtype=torch.float16):
        assert not uses_matrix_products(small, weight)
    monkeypatch.setattr(gemm_weight_grad, "_has_amx", lambda: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_matrix_products(small, weight)  # without AMX: not measured


def test_airbench_takes_the_same_step_with_the_matrix_products(amx, monkeypatch) -> None:
    """A training step of airbench's net in bf16: its 7x7 and 3x3 convolutions take the matrix products, and every
    weight's gradient is the one PyTorch's convolution gives, to bf16's rounding."""
    torch.manual_seed(0)
    model = get_model("airbench", num_classes=10).to(memory_format=torch.channels_last)
    images = torch.randn(32, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (32,))

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    taken = []
    for group in model.groups:
        for conv in (group.conv1, group.conv2):
            conv.register_forward_hook(lambda m, args, out: taken.append(type(out.grad_fn).__name__))
    ours = gradients()
    assert taken == ["ConvolutionBackward0"] * 3 + ["_Conv3x3Backward"] * 3  # 64 channels or 15x15 and up: oneDNN
    monkeypatch.setattr(gemm_weight_grad, "MAX_PIXELS", 0)
    theirs = gradients()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert _relative(ours[name], theirs[name]) < 2e-2, name
