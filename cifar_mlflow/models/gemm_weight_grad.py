"""A 3x3 'same' convolution whose weight gradient is three matrix products, where oneDNN's is slow.

On an Intel CPU with AMX, in bf16, oneDNN computes the weight gradient of a 3x3 convolution with 256 input and
256 output channels on a small map (airbench's 7x7 and 3x3 layers) 3.3 to 4.5 times slower than the same
convolution's forward pass, the same arithmetic (docs/benchmarks.md, "The weight gradient as matrix products").
Written as matrix products it takes 1.1-2.1x the forward pass's time there: with each image's rows padded top and bottom
and its columns copied three times, shifted left, not and right, the gradient of kernel row i is one product
of the output gradient with those copies taken i rows further on.

`conv3x3` takes that path where it was measured to pay (a CPU with AMX, bf16 autocast, training, at least 256
channels in and out, a map of at most 8x8) and is `F.conv2d(x, weight, padding=1)` everywhere else. The input
gradient and the forward pass stay oneDNN's. The weight gradient is the same sum in another order, so it agrees
with oneDNN's to bf16's rounding, not to the bit.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from cifar_mlflow.hardware import cpu_flags

# The largest map (height x width) and the fewest channels (in and out) for which the matrix products are used.
MAX_PIXELS = 64
MIN_CHANNELS = 256


@functools.cache
def _has_amx() -> bool:
    return "amx_bf16" in cpu_flags()


def weight_gradient(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The gradient of a 3x3 'same' convolution's weight `(cout, cin, 3, 3)` from its input `x` `(B, cin, H, W)`
    and the gradient of its output `grad` `(B, cout, H, W)`, in their dtype (the products accumulate in fp32)."""
    b, cin, h, w = x.shape
    cout = grad.shape[1]
    # rows[b, p, c, j] = the input at row p - 1 (zero above and below the image), column c + j - 1 (zero outside)
    rows = x.new_zeros(b, h + 2, w, 3, cin)
    pixels = x.permute(0, 2, 3, 1)  # (B, H, W, cin): a view where x is channels-last
    for j in range(3):
        lo, hi = max(0, 1 - j), min(w, w + 1 - j)
        rows[:, 1:h + 1, lo:hi, j] = pixels[:, :, lo + j - 1:hi + j - 1]
    rows = rows.view(-1, 3 * cin)
    # The output gradient on the same grid of h + 2 rows per image, the last two zero, so that a product taken
    # i rows further on never pairs an output row with the next image's input.
    padded = grad.new_zeros(b, h + 2, w, cout)
    padded[:, :h] = grad.permute(0, 2, 3, 1)
    padded = padded.view(-1, cout)
    n = padded.shape[0]
    out = grad.new_empty(3, cout, 3 * cin)
    for i in range(3):  # kernel row i: output row r reads padded input row r + i, i * w elements further on
        torch.mm(padded[:n - i * w].t(), rows[i * w:], out=out[i])
    return out.view(3, cout, 3, cin).permute(1, 3, 0, 2).contiguous()  # (i, cout, j, cin) -> (cout, cin, i, j)


class _Conv3x3(torch.autograd.Function):
    """`F.conv2d(x, weight, padding=1)`; backward: oneDNN's input gradient, `weight_gradient` for the weight."""

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
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0],
                                                         1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(grad, x)
        return grad_x, grad_weight


def uses_matrix_products(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `conv3x3(x, weight)` takes the matrix-product weight gradient here, now."""
    if x.device.type != "cpu" or not torch.is_grad_enabled() or not weight.requires_grad or x.dim() != 4:
        return False
    if torch.compiler.is_compiling() or not torch.is_autocast_enabled("cpu"):
        return False
    return (torch.get_autocast_dtype("cpu") == torch.bfloat16 and _has_amx()
            and x.shape[-2] * x.shape[-1] <= MAX_PIXELS and min(weight.shape[0], weight.shape[1]) >= MIN_CHANNELS)


def conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution with padding 1 and no bias, its weight gradient by matrix products where that pays."""
    if not uses_matrix_products(x, weight):
        return F.conv2d(x, weight, padding=1)
    dtype = torch.get_autocast_dtype("cpu")
    with torch.autocast("cpu", enabled=False):  # cast as autocast would; the casts' backward returns fp32 gradients
        return _Conv3x3.apply(x.to(dtype), weight.to(dtype))
