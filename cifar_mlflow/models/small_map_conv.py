"""A 3x3 'same' convolution on small maps whose weight gradient is computed on a mosaic of the batch's images.

On an Intel CPU with AMX, in bf16, oneDNN computes the weight gradient of a 3x3 convolution with 256 input and 256
output channels on a small map (airbench's 7x7 and 3x3 layers) 3 to 5 times slower than the same convolution's
forward pass, the same arithmetic, while on maps of about 32x32 its kernels run at their pace (docs/benchmarks.md,
"The weight gradient on a mosaic of the images"). Laid side by side, k x k images to a mosaic about 32 pixels wide,
each image followed by one row and one column of zeros, the batch becomes k^2 times fewer, larger maps; the zeros
between images are the padding each image would have had, so the weight gradient over the mosaics (the output
gradient laid out the same way) is the sum over the images that the weight gradient is.

`conv3x3` takes the mosaic where it was measured to pay (a CPU with AMX, bf16 autocast, training, at least 256
channels in and out, a map of at most 8x8) and is `F.conv2d(x, weight, padding=1)` everywhere else. The forward
pass and the input gradient stay oneDNN's. The weight gradient is the same sum in another order, so it agrees with
oneDNN's on the images themselves to bf16's rounding, not to the bit.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from cifar_mlflow.hardware import cpu_flags

# The largest map (height x width) whose weight gradient is taken on a mosaic; the fewest channels (in and out);
# the mosaic's side in pixels (about).
MAX_PIXELS = 64
MIN_CHANNELS = 256
MOSAIC_SIDE = 32


@functools.cache
def _has_amx() -> bool:
    return "amx_bf16" in cpu_flags()


def tiles(h: int, w: int) -> tuple[int, int]:
    """Images per mosaic column and row for maps of `h x w`: as many as fit `MOSAIC_SIDE` with a zero line each."""
    return max(1, MOSAIC_SIDE // (h + 1)), max(1, MOSAIC_SIDE // (w + 1))


def to_mosaic(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """`(B, C, h, w)` -> `(ceil(B / (kh * kw)), C, kh * (h + 1), kw * (w + 1))`, channels-last: image `i` of each
    group of `kh * kw` at tile row `i // kw`, column `i % kw`, each followed by a zero row and a zero column; the
    last mosaic's empty tiles zero."""
    b, c, h, w = x.shape
    per = kh * kw
    n = -(-b // per)
    mosaic = x.new_empty(n, kh, h + 1, kw, w + 1, c)
    mosaic[:, :, h].zero_()
    mosaic[:, :, :h, :, w].zero_()
    pixels = x.permute(0, 2, 3, 1)  # (B, h, w, C): a view where x is channels-last
    full = b // per
    if full:
        mosaic[:full, :, :h, :, :w] = pixels[:full * per].reshape(full, kh, kw, h, w, c).permute(0, 1, 3, 2, 4, 5)
    if full < n:
        last = x.new_zeros(per, h, w, c)
        last[:b - full * per] = pixels[full * per:]
        mosaic[full, :, :h, :, :w] = last.view(kh, kw, h, w, c).permute(0, 2, 1, 3, 4)
    return mosaic.view(n, kh * (h + 1), kw * (w + 1), c).permute(0, 3, 1, 2)


def _backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask: list[bool]) -> tuple:
    return torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                               [*mask, False])


class _MosaicConv3x3(torch.autograd.Function):
    """`F.conv2d(x, weight, padding=1)`; backward: oneDNN's input gradient, the weight gradient on a mosaic."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd's context
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, padding=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # noqa: ANN001
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = _backward(grad, x, weight, [True, False])[0]
        if ctx.needs_input_grad[1]:
            kh, kw = tiles(*x.shape[-2:])
            grad_weight = _backward(to_mosaic(grad, kh, kw), to_mosaic(x, kh, kw), weight, [False, True])[1]
        return grad_x, grad_weight


def uses_mosaic(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `conv3x3(x, weight)` takes the mosaic here, now."""
    if x.device.type != "cpu" or not torch.is_grad_enabled() or not weight.requires_grad or x.dim() != 4:
        return False
    if torch.compiler.is_compiling() or not torch.is_autocast_enabled("cpu"):
        return False
    return (torch.get_autocast_dtype("cpu") == torch.bfloat16 and _has_amx()
            and x.shape[-2] * x.shape[-1] <= MAX_PIXELS and min(weight.shape[0], weight.shape[1]) >= MIN_CHANNELS)


def conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution with padding 1 and no bias, its weight gradient on a mosaic of the images where that pays."""
    if not uses_mosaic(x, weight):
        return F.conv2d(x, weight, padding=1)
    dtype = torch.get_autocast_dtype("cpu")
    with torch.autocast("cpu", enabled=False):  # cast as autocast would; the casts' backward returns fp32 gradients
        return _MosaicConv3x3.apply(x.to(dtype), weight.to(dtype))
