"""What this machine runs a model with: the device, the arithmetic precision and the memory layout."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cifar_mlflow.errors import ConfigError

# CPU feature flags of native bf16 arithmetic: x86 AVX-512 BF16 and AMX, Arm's BF16 extension.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name} requested but CUDA is not available here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (x86 `flags`, Arm `Features`); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def select_precision(name: str, device: torch.device, flags: frozenset[str] | None = None) -> str:
    """The precision a run computes in: "bf16" (autocast) or "fp32".

    auto is bf16 where the hardware has it natively (a CUDA GPU with bf16, a CPU with AVX-512 BF16,
    AMX or Arm BF16: 2-3x faster than fp32 there) and fp32 elsewhere, where emulated bf16 is slower.

    Args:
        name: auto, bf16 or fp32 (`--precision`).
        device: where the run computes.
        flags: the CPU's feature flags (default: this machine's).
    """
    if name == "fp32":
        return "fp32"
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
        if name == "bf16" and not native:
            raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 "
                              "arithmetic; use --precision fp32 or auto")
    else:
        native = bool(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags))
    return "bf16" if name == "bf16" or native else "fp32"


def use_channels_last(model: nn.Module, example: torch.Tensor) -> bool:
    """Put `model` in channels-last layout (faster convolutions on GPUs and CPUs alike) if it takes
    channels-last batches; a model that reshapes with `.view` after a convolution does not, and stays
    as it is. Returns whether batches should be channels-last.

    Args:
        model: with its lazy layers materialised (one forward pass done).
        example: a batch it takes, (B, C, H, W).
    """
    if example.dim() != 4:
        return False
    model.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            model(example.contiguous(memory_format=torch.channels_last))
    except RuntimeError:
        model.to(memory_format=torch.contiguous_format)
        return False
    return True
