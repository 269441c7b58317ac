"""MobileNetV2 and MobileNetV3 adapted to 32x32 inputs.

As in the usual CIFAR variants, the stem and the first stride-2 stage keep full resolution, so a
32x32 image is down-sampled 8x (to 4x4) instead of 32x, with no upsampling of the images to 224.
"""

from __future__ import annotations

from torch import nn

from cifar_mlflow.models.registry import register_model


# torchvision's building blocks, imported when a MobileNet is built rather than when the registry is
# listed: importing torchvision takes seconds that `--help` and bad input should not wait for.
def _conv_norm_act(*args, **kwargs) -> nn.Module:
    from torchvision.ops.misc import Conv2dNormActivation

    return Conv2dNormActivation(*args, **kwargs)


def _squeeze_excite(*args, **kwargs) -> nn.Module:
    from torchvision.ops.misc import SqueezeExcitation

    return SqueezeExcitation(*args, **kwargs)


def _divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never below 90% of `value` (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> optional squeeze-excitation -> project 1x1, residual if shapes match."""

    def __init__(self, cin: int, expanded: int, cout: int, kernel: int, stride: int,
                 activation: type[nn.Module], squeeze_excite: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(_conv_norm_act(cin, expanded, 1, activation_layer=activation))
        layers.append(_conv_norm_act(expanded, expanded, kernel, stride=stride, groups=expanded,
                                    activation_layer=activation))
        if squeeze_excite:
            layers.append(_squeeze_excite(expanded, _divisible(expanded // 4), scale_activation=nn.Hardsigmoid))
        layers.append(_conv_norm_act(expanded, cout, 1, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):  # (B, cin, H, W) -> (B, cout, H/stride, W/stride)
        out = self.block(x)
        return x + out if self.use_residual else out


# MobileNetV2 stages (expansion t, channels c, repeats n, stride s); CIFAR variant: stage 2 stride 1.
_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))


@register_model("mobilenetv2", recommended=dict(
    optimizer="sgd", lr=0.1, weight_decay=4e-5, scheduler="cosine", epochs=60, batch_size=128,
    augment="standard", label_smoothing=0.1))
def mobilenetv2(*, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                dropout: float = 0.2) -> nn.Module:
    """MobileNetV2 (inverted residuals, linear bottlenecks; width_mult, dropout), CIFAR stem."""
    cin = _divisible(32 * width_mult)
    last = _divisible(1280 * max(1.0, width_mult))
    layers: list[nn.Module] = [_conv_norm_act(in_channels, cin, 3, stride=1, activation_layer=nn.ReLU6)]
    for t, c, n, s in _V2_STAGES:
        cout = _divisible(c * width_mult)
        for i in range(n):
            layers.append(InvertedResidual(cin, cin * t, cout, 3, s if i == 0 else 1, nn.ReLU6, False))
            cin = cout
    layers.append(_conv_norm_act(cin, last, 1, activation_layer=nn.ReLU6))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(last, num_classes))


# MobileNetV3 blocks (kernel, expanded, out, squeeze-excite, hard-swish, stride) from the paper,
# with the first stride-2 block set to stride 1 for 32x32 inputs.
_V3_SMALL = ((3, 16, 16, True, False, 1), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
             (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
             (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
             (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1))
_V3_LARGE = ((3, 16, 16, False, False, 1), (3, 64, 24, False, False, 1), (3, 72, 24, False, False, 1),
             (5, 72, 40, True, False, 2), (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
             (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1), (3, 184, 80, False, True, 1),
             (3, 184, 80, False, True, 1), (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
             (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1), (5, 960, 160, True, True, 1))


def _mobilenetv3(blocks: tuple, last_conv: int, hidden: int, num_classes: int, in_channels: int,
                 width_mult: float, dropout: float) -> nn.Module:
    cin = _divisible(16 * width_mult)
    layers: list[nn.Module] = [_conv_norm_act(in_channels, cin, 3, stride=1, activation_layer=nn.Hardswish)]
    for kernel, expanded, out, se, hswish, stride in blocks:
        cout = _divisible(out * width_mult)
        layers.append(InvertedResidual(cin, _divisible(expanded * width_mult), cout, kernel, stride,
                                       nn.Hardswish if hswish else nn.ReLU, se))
        cin = cout
    last = _divisible(last_conv * width_mult)
    layers.append(_conv_norm_act(cin, last, 1, activation_layer=nn.Hardswish))
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, hidden), nn.Hardswish(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers, *head)


@register_model("mobilenetv3_small", recommended=dict(
    optimizer="sgd", lr=0.1, weight_decay=4e-5, scheduler="cosine", epochs=60, batch_size=128,
    augment="standard", label_smoothing=0.1))
def mobilenetv3_small(*, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                      dropout: float = 0.2) -> nn.Module:
    """MobileNetV3-Small (squeeze-excitation, hard-swish; width_mult, dropout), CIFAR stem."""
    return _mobilenetv3(_V3_SMALL, 576, 1024, num_classes, in_channels, width_mult, dropout)


@register_model("mobilenetv3_large", recommended=dict(
    optimizer="sgd", lr=0.1, weight_decay=4e-5, scheduler="cosine", epochs=60, batch_size=128,
    augment="standard", label_smoothing=0.1))
def mobilenetv3_large(*, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                      dropout: float = 0.2) -> nn.Module:
    """MobileNetV3-Large (squeeze-excitation, hard-swish; width_mult, dropout), CIFAR stem."""
    return _mobilenetv3(_V3_LARGE, 960, 1280, num_classes, in_channels, width_mult, dropout)
