"""airbench's 3x3 convolutions on small maps, their weight gradient taken on a mosaic of the images: the same
gradients as PyTorch's own convolution, taken only where it was measured to pay. The AMX check is forced on where a
test needs the fast path, so that the arithmetic is checked on any CPU (the speed only on one with AMX:
docs/benchmarks.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cifar_mlflow import get_model
from cifar_mlflow.models import small_map_conv
from cifar_mlflow.models.small_map_conv import _MosaicConv3x3, conv3x3, tiles, to_mosaic, uses_mosaic


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture
def amx(monkeypatch) -> None:
    monkeypatch.setattr(small_map_conv, "_has_amx", lambda: True)


def test_the_mosaic_holds_each_image_once_with_zeros_between_and_after() -> None:
    x = torch.arange(1, 1 + 11 * 2 * 3 * 2, dtype=torch.float32).view(11, 2, 3, 2)  # no zero among the pixels
    mosaic = to_mosaic(x, 2, 3)  # 6 images a mosaic: two of them, the second with 5 images and an empty tile
    assert mosaic.shape == (2, 2, 2 * 4, 3 * 3) and mosaic.is_contiguous(memory_format=torch.channels_last)
    for i in range(11):
        m, tile = divmod(i, 6)
        row, col = divmod(tile, 3)
        assert torch.equal(mosaic[m, :, row * 4:row * 4 + 3, col * 3:col * 3 + 2], x[i]), i
    assert (mosaic != 0).sum() == x.numel()  # everything else is zero: the lines between images, the empty tile


@pytest.mark.parametrize("shape", [(3, 3), (7, 7), (5, 8), (1, 4), (4, 1)])
@pytest.mark.parametrize("batch", [1, 20, 130])
@pytest.mark.parametrize("channels_last", [True, False])
def test_the_gradients_are_the_convolutions(shape: tuple[int, int], batch: int, channels_last: bool) -> None:
    """In fp64, whatever the batch (a whole number of mosaics or not) and the layout."""
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 6, *shape, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    weight = torch.randn(4, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(batch, 4, *shape, dtype=torch.float64)
    ours = _MosaicConv3x3.apply(x, weight)
    theirs = F.conv2d(x, weight, padding=1)
    assert torch.equal(ours, theirs)
    ours_x, ours_w = torch.autograd.grad(ours, (x, weight), grad)
    theirs_x, theirs_w = torch.autograd.grad(theirs, (x, weight), grad)
    assert torch.equal(ours_x, theirs_x)
    assert ours_w.shape == (4, 6, 3, 3) and _relative(ours_w, theirs_w) < 1e-12


def test_the_mosaic_is_about_32_pixels_wide() -> None:
    assert tiles(7, 7) == (4, 4) and tiles(3, 3) == (8, 8) and tiles(1, 40) == (16, 1)


def test_in_bf16_the_gradients_reach_the_fp32_weights_and_inputs_as_the_convolutions_do(amx) -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 256, 7, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(256, 256, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert uses_mosaic(x, weight)
        ours, theirs = conv3x3(x, weight), F.conv2d(x, weight, padding=1)
    assert type(ours.grad_fn).__name__ == "_MosaicConv3x3Backward"
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, theirs)  # the forward pass is oneDNN's
    ours_x, ours_w = torch.autograd.grad(ours.float().square().sum(), (x, weight))
    theirs_x, theirs_w = torch.autograd.grad(theirs.float().square().sum(), (x, weight))
    assert ours_w.dtype == torch.float32 and ours_x.dtype == torch.float32
    assert torch.equal(ours_x, theirs_x)  # and so is the input gradient
    assert _relative(ours_w, theirs_w) < 1e-3  # the same sums in another order, each rounded to bf16 once


def test_the_mosaic_is_taken_only_where_it_was_measured_to_pay(amx, monkeypatch) -> None:
    small = torch.randn(2, 256, 7, 7)
    weight = torch.randn(256, 256, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert uses_mosaic(small, weight)
        assert not uses_mosaic(torch.randn(2, 256, 15, 15), weight)  # a larger map: oneDNN is faster
        assert not uses_mosaic(torch.randn(2, 64, 7, 7), torch.randn(64, 64, 3, 3, requires_grad=True))
        assert not uses_mosaic(small, weight.detach())  # nothing to compute
        with torch.no_grad():
            assert not uses_mosaic(small, weight)
    assert not uses_mosaic(small, weight)  # fp32: not measured
    with torch.autocast("cpu", dtype=torch.float16):
        assert not uses_mosaic(small, weight)
    monkeypatch.setattr(small_map_conv, "_has_amx", lambda: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_mosaic(small, weight)  # without AMX: not measured


def test_airbench_takes_the_same_step_with_the_mosaic(amx, monkeypatch) -> None:
    """A training step of airbench's net in bf16: its 7x7 and 3x3 convolutions take the mosaic, and every weight's
    gradient is the one PyTorch's convolution gives, to bf16's rounding."""
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
    assert taken == ["ConvolutionBackward0"] * 3 + ["_MosaicConv3x3Backward"] * 3  # 64 channels or 15x15: oneDNN
    monkeypatch.setattr(small_map_conv, "MAX_PIXELS", 0)
    theirs = gradients()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert _relative(ours[name], theirs[name]) < 2e-2, name
