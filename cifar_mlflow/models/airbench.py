"""The airbench94 net (Keller Jordan's fast CIFAR-10 baseline): the `fast` recipe's model.

A residual-free conv net: a frozen 2x2 patch-whitening layer computed from the training images,
three conv groups (conv, max-pool, batch norm, GELU, conv, batch norm, GELU) of widths 64, 256
and 256, a max-pool and a linear head scaled by 1/9. Batch norm keeps its scale frozen at 1
and learns only its bias, which trains `BIAS_LR_SCALE` times faster than the other weights.

Five choices the published nets make differently, each a builder argument (`--model-args`) so that
both can be measured: the final max-pool's window (published: 3x3, stride 3, which on a 4x4 map reads
its top-left 3x3), the whitening's covariance (published: uncentred), how long the whitening bias
learns (published: 3 epochs, then frozen; a parameter's `train_epochs`, which the training loop reads)
and whether the biases are decayed (published: yes, as much per step as the weights, so the 64x faster
batch-norm biases at a 64th of the rate; a parameter's `wd_scale`, which the optimizer reads), and
the whitening bias's learning rate (airbench94: the base rate; airbench94_muon: the batch-norm biases',
`BIAS_LR_SCALE` times it; a parameter's `lr_scale`).
"""

from __future__ import annotations

import torch
from torch import nn

from cifar_mlflow.errors import ConfigError
from cifar_mlflow.models.registry import register_model
from cifar_mlflow.models.small_map_conv import conv3x3

# Learning-rate multiplier of the batch-norm biases (airbench's "bias_scaler"); the optimizer reads
# a parameter's `lr_scale` attribute.
BIAS_LR_SCALE = 64.0


class _BatchNorm(nn.BatchNorm2d):
    """Batch norm with its scale frozen at 1 and a fast bias; airbench's momentum and epsilon."""

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = 1e-12) -> None:
        super().__init__(channels, momentum=momentum, eps=eps)
        self.weight.requires_grad_(False)
        self.bias.lr_scale = BIAS_LR_SCALE


class _Conv(nn.Conv2d):
    """3x3 'same' conv without bias; identity (Dirac) initialisation of its first filters. Its weight gradient is
    computed on a mosaic of the images where oneDNN's is slow on small maps (`small_map_conv`)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, kernel_size=3, padding="same", bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv3x3(x, self.weight)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        nn.init.dirac_(w[:w.size(1)])


class _ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.pool = _Conv(cin, cout), nn.MaxPool2d(2)
        self.norm1, self.conv2, self.norm2 = _BatchNorm(cout), _Conv(cout, cout), _BatchNorm(cout)
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.norm1(self.pool(self.conv1(x))))
        return self.activation(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """`(B, C, H, W)` normalised images -> `(B, num_classes)` logits."""

    def __init__(self, num_classes: int, in_channels: int, widths: tuple[int, int, int], scale: float,
                 pool_size: int | None = None, whiten_centred: bool = True,
                 whiten_bias_epochs: float | None = None, decay_biases: bool = False,
                 whiten_bias_lr_scale: float = 1.0) -> None:
        super().__init__()
        whiten_width = 2 * in_channels * 2 * 2  # each eigen-patch and its negative
        self.whiten = nn.Conv2d(in_channels, whiten_width, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from the data by `init_from_data`
        if whiten_bias_epochs is not None:  # learns for this many epochs, then stays (the training loop)
            self.whiten.bias.train_epochs = float(whiten_bias_epochs)
        if whiten_bias_lr_scale != 1.0:
            self.whiten.bias.lr_scale = float(whiten_bias_lr_scale)
        self.whiten_centred = whiten_centred
        self.activation = nn.GELU()
        self.groups = nn.Sequential(_ConvGroup(whiten_width, widths[0]), _ConvGroup(widths[0], widths[1]),
                                    _ConvGroup(widths[1], widths[2]))
        self.pool = nn.AdaptiveMaxPool2d(1) if pool_size is None else nn.MaxPool2d(pool_size)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.scale = scale
        if decay_biases:  # each bias decays as much per step as a weight does: the fast ones at a fraction
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.wd_scale = 1.0 / getattr(p, "lr_scale", 1.0)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from the 2x2 patches of normalised training images `(N, C, H, W)`: the
        eigenvectors of the patches' covariance (centred, or uncentred as published), each scaled to unit
        variance, and their negatives."""
        c = images.shape[1]
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # (N, C, H-1, W-1, 2, 2)
        patches = patches.transpose(1, 3).reshape(-1, c, 2, 2).flatten(1)  # (P, C*4)
        if self.whiten_centred:
            patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).reshape(-1, c, 2, 2)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.activation(self.whiten(x)))
        x = self.pool(x)
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"airbench's final max-pool left a {x.shape[-2]}x{x.shape[-1]} map; pool_size "
                             "suits 32x32 inputs (3) or leave it out to pool the whole map")
        return self.head(x.flatten(1)) * self.scale


# airbench94's settings, for a mean (not summed) loss: lr 11.5 per 1024 images at momentum
# 0.85 is 1.5 here; its decoupled weight decay of 2e-3 per step is 2e-3 / lr. With --optimizer muon the
# filter banks train at muon_lr 0.1 (measured: docs/benchmarks.md).
@register_model("airbench", recommended=dict(
    optimizer="sgd", lr=1.5, muon_lr=0.1, momentum=0.85, weight_decay=2e-3 / 1.5, scheduler="linear", warmup_epochs=2.3,
    epochs=10, batch_size=1024, augment="light", flip="alternating", label_smoothing=0.2, lookahead=True))
def airbench(*, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, int, int] = (64, 256, 256),
             scale: float = 1 / 9, pool_size: int | None = None, whiten_centred: bool = True,
             whiten_bias_epochs: float | None = None, decay_biases: bool = False,
             whiten_bias_lr_scale: float = 1.0) -> nn.Module:
    """airbench94's net: frozen patch whitening and three conv groups (64, 256, 256); the fast recipe.
    `pool_size`: the final max-pool's window (None: the whole map; published: 3); `whiten_centred`: the
    whitening's covariance centred (published: uncentred); `whiten_bias_epochs`: the whitening bias
    learns for this many epochs, then stays (None: all run; published: 3); `decay_biases`: the biases
    decayed as much per step as the weights (published: yes); `whiten_bias_lr_scale`: the whitening bias's
    learning-rate multiplier (airbench94: 1; airbench94_muon: 64, the batch-norm biases')."""
    if whiten_bias_lr_scale <= 0:
        raise ConfigError(f"whiten_bias_lr_scale must be positive, got {whiten_bias_lr_scale}")
    return AirbenchNet(num_classes, in_channels, tuple(widths), scale, pool_size, whiten_centred, whiten_bias_epochs,
                       decay_biases, whiten_bias_lr_scale)
